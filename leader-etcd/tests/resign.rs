//! Resign requests on etcd (`LeaseStore::request_resign`): a request for
//! the current term reaches the key's watchers as `ResignRequested`, one for
//! any other token answers `false` and sends nothing, and the request key
//! that carries it (the lease key followed by `\0resign`, under the holder's
//! etcd lease) goes with the term however it ends, so it never leaks.

mod support;

use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchStream};
use leader_core::{FencingToken, LeaseEvent, LeaseKey, LeaseStore, Metadata};
use leader_etcd::EtcdStore;
use leader_testkit::wait::eventually;
use support::{PATIENCE, SLACK, acquired, holder, next, raw_client, setup, unique_key};

// Long: no term of these tests should end by expiry but the one that waits for it.
const TTL: Duration = Duration::from_secs(60);

async fn request(store: &EtcdStore, key: &LeaseKey, token: FencingToken) -> bool {
    store
        .request_resign(key, token)
        .await
        .expect("request_resign")
}

/// The request key of `key`, as the README documents it.
fn request_key(key: &LeaseKey) -> Vec<u8> {
    [key.as_str().as_bytes(), b"\0resign"].concat()
}

/// A raw etcd watch of `key` and its request key.
async fn raw_watch(raw: &mut etcd_client::Client, key: &LeaseKey) -> WatchStream {
    let end = [request_key(key), vec![0]].concat();
    raw.watch(key.as_str(), Some(WatchOptions::new().with_range(end)))
        .await
        .expect("raw watch")
}

/// The revisions at which the raw watch sees the lease key and its request
/// key deleted, waiting up to `within` for both.
async fn deletions(stream: &mut WatchStream, key: &LeaseKey, within: Duration) -> (i64, i64) {
    let (mut of_key, mut of_request) = (None, None);
    tokio::time::timeout(within, async {
        while of_key.is_none() || of_request.is_none() {
            let resp = stream
                .message()
                .await
                .expect("raw watch stream")
                .expect("raw watch open");
            for event in resp.events() {
                let (Some(kv), EventType::Delete) = (event.kv(), event.event_type()) else {
                    continue;
                };
                if kv.key() == key.as_str().as_bytes() {
                    of_key = Some(kv.mod_revision());
                } else if kv.key() == request_key(key).as_slice() {
                    of_request = Some(kv.mod_revision());
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "within {within:?} the key was deleted at {of_key:?}, its request key at \
             {of_request:?}"
        )
    });
    (of_key.unwrap_or(0), of_request.unwrap_or(0))
}

/// The request key's value and etcd lease, if it exists.
async fn request_kv(raw: &mut etcd_client::Client, key: &LeaseKey) -> Option<(Vec<u8>, i64)> {
    let resp = raw.get(request_key(key), None).await.expect("raw get");
    resp.kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.lease()))
}

/// Only the current term's token is sent, to this key's watchers only, as
/// `ResignRequested`; the term goes on (a request is no release), also once
/// its metadata was replaced; the request key's deletion with the term is
/// no second `Vacated`.
#[tokio::test]
async fn a_watch_gets_the_request_for_the_current_term_only() {
    let (_server, store) = setup().await;
    let key = unique_key("request");
    let (a, b) = (holder("a"), holder("b"));
    let first = acquired(&store, &key, &a, TTL).await;
    assert!(store.release(&first).await.expect("release"));
    let second = acquired(&store, &key, &b, TTL).await;
    let mut events = store.watch(&key).await.expect("watch");

    for stale in [
        first.token,
        FencingToken(second.token.0 + 1_000_000),
        FencingToken(0),
        FencingToken(u64::MAX),
    ] {
        assert!(
            !request(&store, &key, stale).await,
            "a request for token {stale} was sent while {} is the term's",
            second.token
        );
    }
    // A key right next to it, asked too: not this watch's business.
    let next_door =
        LeaseKey::new(key.prefix(), &format!("{}-2", key.resource())).expect("valid key");
    let other = acquired(&store, &next_door, &a, TTL).await;
    assert!(request(&store, &next_door, other.token).await);

    assert!(
        request(&store, &key, second.token).await,
        "the request for the current term {} found nothing",
        second.token
    );
    // Events come in revision order: anything sent for the stale tokens or
    // the other key would come first.
    assert_eq!(
        next(&mut events).await,
        Some(LeaseEvent::ResignRequested {
            token: second.token
        })
    );
    let info = store.current(&key).await.expect("current").expect("held");
    assert_eq!((info.holder, info.token), (b.clone(), second.token));
    store.renew(&second).await.expect("renew after a request");

    // After update_metadata the value names the token: still recognised.
    let m = Metadata::new("10.0.0.2:80").expect("metadata");
    store.update_metadata(&second, &m).await.expect("update");
    assert_eq!(
        next(&mut events).await,
        Some(LeaseEvent::MetadataUpdated {
            holder: b,
            token: second.token
        })
    );
    assert!(request(&store, &key, second.token).await);
    assert_eq!(
        next(&mut events).await,
        Some(LeaseEvent::ResignRequested {
            token: second.token
        })
    );

    // One `Vacated`, then the next term: the request key's deletion is not
    // reported.
    assert!(store.release(&second).await.expect("release"));
    assert_eq!(next(&mut events).await, Some(LeaseEvent::Vacated));
    let third = acquired(&store, &key, &a, TTL).await;
    assert_eq!(
        next(&mut events).await,
        Some(LeaseEvent::Acquired {
            holder: a,
            token: third.token
        })
    );
    assert!(
        !request(&store, &key, second.token).await,
        "a request for the ended term {} was sent",
        second.token
    );
    assert!(request(&store, &key, third.token).await);
    assert_eq!(
        next(&mut events).await,
        Some(LeaseEvent::ResignRequested { token: third.token })
    );
}

/// The request key lives under the holder's etcd lease and holds the token;
/// expiry deletes it in the same revision as the lease key, release and
/// force release by revoking the lease, a same-holder re-acquisition by
/// revoking the old lease: nothing is left behind.
#[tokio::test]
async fn the_request_key_goes_with_the_term() {
    let (server, store) = setup().await;
    let mut raw = raw_client(&server).await;
    let key = unique_key("request-key");
    let a = holder("a");
    let mut stream = raw_watch(&mut raw, &key).await;

    for how in ["release", "force_release", "expiry"] {
        // 1 s: the fast test server's minimum TTL, so expiry comes soon.
        let ttl = if how == "expiry" {
            Duration::from_secs(1)
        } else {
            TTL
        };
        let lease = acquired(&store, &key, &a, ttl).await;
        assert!(request(&store, &key, lease.token).await, "{how}");
        assert_eq!(
            request_kv(&mut raw, &key).await,
            Some((
                lease.token.0.to_string().into_bytes(),
                i64::try_from(lease.handle).expect("etcd lease id")
            )),
            "{how}: the request key's value and etcd lease"
        );
        match how {
            "release" => assert!(store.release(&lease).await.expect("release")),
            "force_release" => {
                store.force_release(&key).await.expect("force_release");
            }
            _ => {}
        }
        // Release revokes in the background, force release at once: well
        // within the patience bound, itself well below the 60 s TTL.
        let within = if how == "expiry" {
            ttl + PATIENCE
        } else {
            PATIENCE
        };
        let (of_key, of_request) = deletions(&mut stream, &key, within).await;
        if how == "expiry" {
            assert_eq!(
                of_key, of_request,
                "expiry: the request key was not deleted with the lease key"
            );
        }
        assert_eq!(request_kv(&mut raw, &key).await, None, "{how}");
    }

    // A same-holder re-acquisition moves the key to a new etcd lease and
    // revokes the old one, which takes the old term's request key along.
    let old = acquired(&store, &key, &a, TTL).await;
    assert!(request(&store, &key, old.token).await);
    let new = acquired(&store, &key, &a, TTL).await;
    assert!(new.token > old.token);
    eventually(TTL + SLACK, "the old term's request key to go", || async {
        request_kv(&mut raw.clone(), &key)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        !request(&store, &key, old.token).await,
        "the re-acquired term's old token was asked"
    );
    assert!(store.release(&new).await.expect("release"));
}
