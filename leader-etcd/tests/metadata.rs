//! Leader metadata on etcd: stored in the key's value with the term, kept
//! across renewals, replaced only by the term's holder and token, gone with
//! the term, any bytes up to the limit, and pushed to watchers as
//! `MetadataUpdated`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::PutOptions;
use leader_core::{
    Acquire, ElectionConfig, Elector, ErrorKind, FencingToken, HolderId, Lease, LeaseEvent,
    LeaseKey, LeaseStore, MAX_METADATA_LEN, Metadata, Observer,
};
use leader_etcd::EtcdStore;
use leader_testkit::servers::EtcdServer;
use support::{PATIENCE, holder, next, raw_client, setup, unique_key};

const TTL: Duration = Duration::from_secs(5);

fn meta(value: impl Into<Vec<u8>>) -> Metadata {
    Metadata::new(value).expect("metadata within the limit")
}

async fn acquired_with(store: &EtcdStore, key: &LeaseKey, who: &HolderId, m: &Metadata) -> Lease {
    match store
        .acquire_with_metadata(key, who, TTL, m)
        .await
        .expect("acquire_with_metadata")
    {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("expected to acquire, held by {info:?}"),
    }
}

async fn acquired(store: &EtcdStore, key: &LeaseKey, who: &HolderId) -> Lease {
    match store.acquire(key, who, TTL).await.expect("acquire") {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("expected to acquire, held by {info:?}"),
    }
}

/// The holder, token and metadata `current` reports.
async fn current(store: &EtcdStore, key: &LeaseKey) -> (HolderId, FencingToken, Option<Metadata>) {
    let info = store.current(key).await.expect("current").expect("held");
    (info.holder, info.token, info.metadata)
}

/// Renewals, before and after `update_metadata`, on a quiet store and after
/// other writes (when renew reads the key and checks it holds the term):
/// the metadata stays, the renewals succeed, the token does not change.
#[tokio::test]
async fn metadata_survives_renewals_and_updates_keep_the_term_renewable() {
    let (server, store) = setup().await;
    let mut raw = raw_client(&server).await;
    let key = unique_key("renewals");
    let a = holder("a");
    let first = meta("10.0.0.1:8080");
    let lease = acquired_with(&store, &key, &a, &first).await;
    for _ in 0..3 {
        raw.put("unrelated", "x", None).await.expect("raw put");
        store
            .renew(&lease)
            .await
            .expect("renew a term with metadata");
    }
    assert_eq!(
        current(&store, &key).await,
        (a.clone(), lease.token, Some(first))
    );

    let second = meta("10.0.0.2:8080");
    store
        .update_metadata(&lease, &second)
        .await
        .expect("update_metadata");
    for _ in 0..3 {
        store
            .renew(&lease)
            .await
            .expect("renew after update_metadata (the key was re-put)");
        raw.put("unrelated", "x", None).await.expect("raw put");
    }
    assert_eq!(
        current(&store, &key).await,
        (a.clone(), lease.token, Some(second.clone())),
        "the token is the term's, not the revision of the update"
    );
    let third = meta("10.0.0.3:8080");
    store
        .update_metadata(&lease, &third)
        .await
        .expect("a second update_metadata");
    store.renew(&lease).await.expect("renew after two updates");
    assert_eq!(current(&store, &key).await, (a, lease.token, Some(third)));
    assert!(
        store.release(&lease).await.expect("release"),
        "a term whose metadata was updated releases"
    );
    assert!(store.current(&key).await.expect("current").is_none());
}

/// The metadata is gone with its term, however it ends (release, expiry,
/// force release, a same-holder re-acquisition): a plain acquire after it
/// shows none.
#[tokio::test]
async fn a_plain_acquire_after_a_metadata_term_has_none() {
    let (server, store) = setup().await;
    let key = unique_key("plain-after");
    let (a, b) = (holder("a"), holder("b"));
    let m = meta("a:80");

    // Released.
    let lease = acquired_with(&store, &key, &a, &m).await;
    store
        .update_metadata(&lease, &meta("a:81"))
        .await
        .expect("update");
    assert!(store.release(&lease).await.expect("release"));
    let next = acquired(&store, &key, &b).await;
    assert_eq!(current(&store, &key).await, (b.clone(), next.token, None));
    assert!(store.release(&next).await.expect("release"));

    // The same holder again, without releasing (a re-acquisition after a
    // transient error): a new term, with a new token and no metadata.
    let with = acquired_with(&store, &key, &a, &m).await;
    let again = acquired(&store, &key, &a).await;
    assert!(again.token > with.token);
    assert_eq!(current(&store, &key).await, (a.clone(), again.token, None));
    // And the other way round: the re-acquisition stores the new metadata.
    let third = acquired_with(&store, &key, &a, &m).await;
    assert_eq!(
        current(&store, &key).await,
        (a.clone(), third.token, Some(m.clone()))
    );

    // Force-released: the operator is told the metadata it removed.
    let removed = store
        .force_release(&key)
        .await
        .expect("force_release")
        .expect("held");
    assert_eq!(
        (removed.token, removed.metadata),
        (third.token, Some(m.clone()))
    );
    let next = acquired(&store, &key, &b).await;
    assert_eq!(current(&store, &key).await, (b.clone(), next.token, None));
    assert!(store.release(&next).await.expect("release"));

    // Expired on the server (1 s, the fast test server's minimum TTL).
    let short = match store
        .acquire_with_metadata(&key, &a, Duration::from_secs(1), &m)
        .await
        .expect("acquire_with_metadata")
    {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("held by {info:?}"),
    };
    leader_testkit::wait::eventually(PATIENCE, "the term with metadata expires", || async {
        store.current(&key).await.is_ok_and(|c| c.is_none())
    })
    .await;
    let e = store
        .update_metadata(&short, &m)
        .await
        .expect_err("update after expiry");
    assert_eq!(e.kind(), ErrorKind::NotHolder, "{e}");
    let next = acquired(&store, &key, &b).await;
    assert!(next.token > short.token);
    assert_eq!(current(&store, &key).await, (b, next.token, None));
    // Nothing of the old term is left under another key either.
    let keys = raw_client(&server)
        .await
        .get(
            key.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("raw get");
    assert_eq!(
        keys.kvs().len(),
        1,
        "one key per lease, metadata in its value"
    );
}

/// `update_metadata` replaces the value only for the term's holder and
/// token: a stale term (same holder, older token), a forged token or a
/// forged holder get `NotHolder` and change nothing, before and after the
/// term's metadata was first replaced. The same goes for release.
#[tokio::test]
async fn update_with_a_stale_token_or_another_holder_fails() {
    let (_server, store) = setup().await;
    let key = unique_key("stale");
    let a = holder("a");
    let m = meta("a:80");
    let old = acquired_with(&store, &key, &a, &m).await;
    let lease = acquired_with(&store, &key, &a, &m).await;
    assert!(lease.token > old.token);

    let forged_token = |l: &Lease, t: u64| {
        let mut f = l.clone();
        f.token = FencingToken(t);
        f
    };
    let forged_holder = |l: &Lease| {
        let mut f = l.clone();
        f.holder = holder("b");
        f
    };
    let refused = |what: &'static str, e: leader_core::Error| {
        assert_eq!(e.kind(), ErrorKind::NotHolder, "{what}: {e}");
    };
    for round in ["as acquired", "after an update"] {
        let stale_updates = [
            ("the stale term", old.clone()),
            ("an older token", forged_token(&lease, lease.token.0 - 1)),
            ("a newer token", forged_token(&lease, lease.token.0 + 1)),
            ("token 0", forged_token(&lease, 0)),
            ("another holder", forged_holder(&lease)),
        ];
        for (what, stale) in &stale_updates {
            match store.update_metadata(stale, &meta("stale")).await {
                Err(e) => refused(what, e),
                Ok(()) => panic!("{round}: update_metadata by {what} succeeded"),
            }
            assert!(
                !store.release(stale).await.expect("release"),
                "{round}: release by {what} succeeded"
            );
            let (h, t, now) = current(&store, &key).await;
            assert_eq!((h, t), (a.clone(), lease.token), "{round}: {what}");
            assert_ne!(
                now,
                Some(meta("stale")),
                "{round}: {what} replaced the metadata"
            );
        }
        store
            .update_metadata(&lease, &meta("a:81"))
            .await
            .expect("the term's own update");
    }
    assert!(store.release(&lease).await.expect("release"));
    let e = store
        .update_metadata(&lease, &meta("late"))
        .await
        .expect_err("update after release");
    refused("a released term", e);
    assert!(store.current(&key).await.expect("current").is_none());
}

/// Metadata is bytes: empty, NUL and 0xff bytes (not UTF-8), and exactly
/// `MAX_METADATA_LEN` bytes come back unchanged from `current`, a refused
/// acquire, `force_release` and after `update_metadata`.
#[tokio::test]
async fn arbitrary_bytes_up_to_the_limit_round_trip() {
    let (_server, store) = setup().await;
    let (a, b) = (holder("a"), holder("b"));
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(MAX_METADATA_LEN).collect();
    let values = [
        meta(Vec::new()),
        meta(vec![0u8, 0xff, 0, 1, 0xfe]),
        meta(vec![0u8; MAX_METADATA_LEN]),
        meta(all_bytes.clone()),
        meta(vec![0xffu8; MAX_METADATA_LEN]),
    ];
    assert!(values[1].as_str().is_none(), "not UTF-8");
    for (i, m) in values.iter().enumerate() {
        let key = unique_key(&format!("bytes-{i}"));
        let lease = acquired_with(&store, &key, &a, m).await;
        assert_eq!(
            current(&store, &key).await.2.as_ref(),
            Some(m),
            "current, value {i}"
        );
        match store.acquire(&key, &b, TTL).await.expect("acquire by b") {
            Acquire::Held(info) => assert_eq!(info.metadata.as_ref(), Some(m), "held, value {i}"),
            Acquire::Acquired(l) => panic!("two holders: {l:?}"),
        }
        // Replace it with the next value (the last with the first).
        let other = &values[(i + 1) % values.len()];
        store.update_metadata(&lease, other).await.expect("update");
        assert_eq!(
            current(&store, &key).await,
            (a.clone(), lease.token, Some(other.clone())),
            "after update, value {i}"
        );
        let removed = store
            .force_release(&key)
            .await
            .expect("force_release")
            .expect("held");
        assert_eq!(
            removed.metadata.as_ref(),
            Some(other),
            "force_release, value {i}"
        );
    }
}

/// Watchers see an update as `MetadataUpdated` with the term's holder and
/// token (not the update's revision), between the term's `Acquired` and
/// its `Vacated`.
#[tokio::test]
async fn watch_delivers_metadata_updated() {
    let (_server, store) = setup().await;
    let key = unique_key("watch");
    let mut events = store.watch(&key).await.expect("watch");
    let a = holder("a");
    let lease = acquired_with(&store, &key, &a, &meta("a:80")).await;
    let term = (a.clone(), lease.token);
    assert_eq!(
        next(&mut events).await,
        Some(LeaseEvent::Acquired {
            holder: term.0.clone(),
            token: term.1
        })
    );
    for m in ["a:81", "a:82"] {
        store
            .update_metadata(&lease, &meta(m))
            .await
            .expect("update");
        assert_eq!(
            next(&mut events).await,
            Some(LeaseEvent::MetadataUpdated {
                holder: term.0.clone(),
                token: term.1
            }),
            "after the update to {m}"
        );
    }
    assert!(store.release(&lease).await.expect("release"));
    assert_eq!(next(&mut events).await, Some(LeaseEvent::Vacated));
}

/// Values written by earlier versions (the holder id alone) still read as a
/// term without metadata; a value this version cannot read is a `Protocol`
/// error that says what is wrong, not a holder.
#[tokio::test]
async fn older_values_read_and_unreadable_ones_are_named() {
    let (server, store) = setup().await;
    let mut raw = raw_client(&server).await;
    let key = unique_key("compat");
    let id = raw.lease_grant(30, None).await.expect("grant").id();
    let put = raw
        .put(
            key.as_str(),
            "old-holder",
            Some(PutOptions::new().with_lease(id)),
        )
        .await
        .expect("raw put");
    let revision = put.header().expect("header").revision();
    let info = store.current(&key).await.expect("current").expect("held");
    assert_eq!(
        (info.holder, info.token, info.metadata),
        (holder("old-holder"), FencingToken(revision as u64), None)
    );

    // A newer record format.
    let mut newer = b"new-holder\0".to_vec();
    newer.extend_from_slice(&0u64.to_be_bytes());
    newer.extend_from_slice(b"\x02future");
    raw.put(key.as_str(), newer, Some(PutOptions::new().with_lease(id)))
        .await
        .expect("raw put");
    let e = store.current(&key).await.expect_err("unreadable value");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("record format 2"), "{e}");
    match store.acquire(&key, &holder("c"), TTL).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Protocol, "{e}"),
        Ok(outcome) => panic!("an unreadable holder record gave {outcome:?}"),
    }
}

/// End to end: `Elector::start_with_metadata` stores the value with the
/// term, and after `proclaim` an `Observer` on another store shows the new
/// value well before its next poll (with a live subscription on etcd it
/// polls every four lease durations): the `MetadataUpdated` event woke it.
#[tokio::test]
async fn an_observer_sees_a_proclaimed_value_through_the_watch() {
    let server = EtcdServer::start().await.expect("etcd");
    let store =
        || -> Arc<dyn LeaseStore> { Arc::new(EtcdStore::from_url(server.url()).expect("store")) };
    let lease = Duration::from_secs(10);
    let mut config = ElectionConfig::new(format!("proclaim-{}", std::process::id()))
        .with_timing(lease, Duration::from_secs(2));
    config.key_prefix = "leader-etcd-test:".to_owned();
    let elector =
        Elector::start_with_metadata(store(), config.clone(), meta("a:80")).expect("elector");
    let observer = Observer::start(store(), &config).await.expect("observer");
    let shows = |m: &'static str| {
        let observer = &observer;
        move || async move {
            observer
                .leader()
                .is_some_and(|l| l.metadata == Some(meta(m)))
        }
    };
    leader_testkit::wait::eventually(PATIENCE, "the observer shows a:80", shows("a:80")).await;
    let token = observer.leader().expect("a leader").token;

    elector.proclaim(meta("a:81")).await.expect("proclaim");
    // The lease duration: far above an event's delivery on loopback, far
    // below the observer's poll interval.
    leader_testkit::wait::eventually(lease, "the observer shows a:81", shows("a:81")).await;
    assert_eq!(
        observer.leader().expect("a leader").token,
        token,
        "same term"
    );
    elector.shutdown().await;
}
