//! EtcdStore against a private etcd: acquisition, fencing tokens, renewal,
//! release, inspection, expiry, lease hygiene and error classes.

mod support;

use std::time::Duration;

use leader_core::{Acquire, ErrorKind, Lease, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::servers::EtcdServer;
use leader_testkit::wait::eventually;
use support::{PATIENCE, acquired, holder, raw_client, setup, unique_key};

const TTL: Duration = Duration::from_secs(5);

#[tokio::test]
async fn acquire_hold_inspect_release() {
    let (_server, store) = setup().await;
    let key = unique_key("basic");
    let (a, b) = (holder("a"), holder("b"));

    let lease = acquired(&store, &key, &a, TTL).await;
    assert!(lease.token.0 > 0);
    assert!(lease.handle > 0, "the etcd lease id is kept in the handle");

    match store.acquire(&key, &b, TTL).await.expect("acquire by b") {
        Acquire::Held(info) => {
            assert_eq!(info.holder, a);
            assert_eq!(info.token, lease.token);
            let left = info.remaining.expect("etcd leases have a TTL");
            assert!(left <= TTL && left >= Duration::from_secs(1), "{left:?}");
        }
        Acquire::Acquired(l) => panic!("two holders: {l:?}"),
    }

    let info = store.current(&key).await.expect("current").expect("held");
    assert_eq!((info.holder, info.token), (a.clone(), lease.token));

    store.renew(&lease).await.expect("renew while held");
    assert!(store.release(&lease).await.expect("release"), "was ours");
    assert!(store.current(&key).await.expect("current").is_none());
    assert!(!store.release(&lease).await.expect("second release"));
    let err = store.renew(&lease).await.expect_err("renew after release");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");

    let next = acquired(&store, &key, &b, TTL).await;
    assert!(next.token > lease.token, "tokens grow across terms");
}

#[tokio::test]
async fn same_holder_reacquire_is_a_new_term_and_revokes_the_old_lease() {
    let (_server, store) = setup().await;
    let key = unique_key("reacquire");
    let a = holder("a");
    let first = acquired(&store, &key, &a, TTL).await;
    let second = acquired(&store, &key, &a, TTL).await;
    assert!(second.token > first.token, "{second:?} after {first:?}");
    assert_ne!(second.handle, first.handle);

    let err = store.renew(&first).await.expect_err("old term is over");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");
    store.renew(&second).await.expect("new term renews");
    assert!(!store.release(&first).await.expect("release old term"));
    let info = store
        .current(&key)
        .await
        .expect("current")
        .expect("still held");
    assert_eq!(
        info.token, second.token,
        "releasing the old term kept the new one"
    );

    let mut raw = raw_client(&_server).await;
    eventually(PATIENCE, "the old etcd lease is revoked", || {
        let mut raw = raw.clone();
        let id = first.handle as i64;
        async move {
            raw.lease_time_to_live(id, None)
                .await
                .is_ok_and(|r| r.ttl() <= 0)
        }
    })
    .await;
    let leases = raw.leases().await.expect("list leases");
    assert_eq!(
        leases.leases().len(),
        1,
        "only the live term's lease remains"
    );
}

#[tokio::test]
async fn a_failed_acquire_leaves_no_lease_behind() {
    let (_server, store) = setup().await;
    let key = unique_key("noleak");
    let lease = acquired(&store, &key, &holder("a"), TTL).await;
    for i in 0..5 {
        let outcome = store
            .acquire(&key, &holder(&format!("other-{i}")), TTL)
            .await
            .expect("acquire");
        assert!(matches!(outcome, Acquire::Held(_)));
    }
    let mut raw = raw_client(&_server).await;
    let leases = raw.leases().await.expect("list leases");
    let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    assert_eq!(ids, [lease.handle as i64], "losers revoked their grants");
}

#[tokio::test]
async fn the_lease_expires_on_the_server_when_not_renewed() {
    let (_server, store) = setup().await;
    let key = unique_key("expiry");
    let a = holder("a");
    // 300 ms rounds up to etcd's 1 s (the fast test server's minimum TTL).
    let lease = acquired(&store, &key, &a, Duration::from_millis(300)).await;
    let info = store.current(&key).await.expect("current").expect("held");
    assert!(info.remaining.expect("ttl") <= Duration::from_secs(1));
    eventually(PATIENCE, "the key expires", || async {
        store.current(&key).await.is_ok_and(|c| c.is_none())
    })
    .await;
    let err = store.renew(&lease).await.expect_err("renew after expiry");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");
    let next = acquired(&store, &key, &holder("b"), TTL).await;
    assert!(next.token > lease.token);
}

#[tokio::test]
async fn renew_sees_a_key_deleted_or_replaced_behind_its_back() {
    let (_server, store) = setup().await;
    let key = unique_key("deleted");
    let a = holder("a");
    let lease = acquired(&store, &key, &a, TTL).await;
    store.renew(&lease).await.expect("first renew");
    store
        .renew(&lease)
        .await
        .expect("second renew (quiet store)");

    // An operator deletes the key with etcdctl: the lease itself lives on.
    let mut raw = raw_client(&_server).await;
    raw.delete(key.as_str(), None).await.expect("raw delete");
    let err = store.renew(&lease).await.expect_err("key gone");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");

    // Someone re-creates it without a lease: not ours either.
    let lease = acquired(&store, &key, &a, TTL).await;
    store.renew(&lease).await.expect("renew");
    raw.delete(key.as_str(), None).await.expect("raw delete");
    raw.put(key.as_str(), "a", None).await.expect("raw put");
    let err = store.renew(&lease).await.expect_err("key replaced");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");
}

#[tokio::test]
async fn force_release_removes_any_holder_and_ends_its_lease() {
    let (_server, store) = setup().await;
    let key = unique_key("force");
    let a = holder("a");
    assert!(
        store
            .force_release(&key)
            .await
            .expect("force on free key")
            .is_none()
    );
    let lease = acquired(&store, &key, &a, TTL).await;
    let removed = store
        .force_release(&key)
        .await
        .expect("force")
        .expect("was held");
    assert_eq!((removed.holder, removed.token), (a.clone(), lease.token));
    assert!(store.current(&key).await.expect("current").is_none());
    let err = store
        .renew(&lease)
        .await
        .expect_err("renew after force release");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");
    let b = acquired(&store, &key, &holder("b"), TTL).await;
    assert!(!store.release(&lease).await.expect("stale release"));
    let info = store
        .current(&key)
        .await
        .expect("current")
        .expect("b holds");
    assert_eq!(info.token, b.token, "a stale release did not remove b");
}

#[tokio::test]
async fn contenders_get_exactly_one_winner() {
    let (_server, store) = setup().await;
    let key = unique_key("race");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                store
                    .acquire(&key, &holder(&format!("c{i}")), TTL)
                    .await
                    .expect("acquire")
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if matches!(t.await.expect("task"), Acquire::Acquired(_)) {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn construction_works_while_etcd_is_down_and_errors_are_classified() {
    // A port nobody listens on: construction succeeds, use is Unavailable.
    let port = support::free_port();
    let store = EtcdStore::from_url(&format!(
        "etcd://127.0.0.1:{port}?connect_timeout=300ms&request_timeout=1s"
    ))
    .expect("construction does not connect");
    let key = unique_key("down");
    let err = store
        .acquire(&key, &holder("a"), TTL)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable),
        "connection refused must be Unavailable: {err}"
    );

    // A hung server: the request's outcome is unknown.
    let (server, _) = setup().await;
    let store =
        EtcdStore::from_url(&format!("{}?request_timeout=500ms", server.url())).expect("store");
    let lease = acquired(&store, &key, &holder("a"), TTL).await;
    // `pause` returns once every thread of etcd is stopped.
    server.pause().expect("SIGSTOP etcd");
    let err = store.renew(&lease).await.expect_err("hung server");
    server.resume().expect("SIGCONT etcd");
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");
    assert!(err.is_retryable());
    eventually(
        PATIENCE,
        "renew works again after the server resumes",
        || async { store.renew(&lease).await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn a_store_built_before_etcd_starts_works_once_it_is_up() {
    let server = EtcdServer::start().await.expect("etcd");
    let url = format!("{}?connect_timeout=300ms&request_timeout=1s", server.url());
    server.kill().await.expect("kill etcd");
    let store = EtcdStore::from_url(&url).expect("lazy store");
    let key = unique_key("late");
    let err = store.current(&key).await.expect_err("etcd is down");
    assert!(err.is_retryable(), "{err}");
    server.restart().await.expect("restart etcd");
    eventually(PATIENCE, "the store reaches etcd once it is up", || async {
        store.current(&key).await.is_ok()
    })
    .await;
    acquired(&store, &key, &holder("a"), TTL).await;
}

#[tokio::test]
async fn invalid_input_is_refused_before_contacting_etcd() {
    let store = EtcdStore::from_url("etcd://127.0.0.1:1").expect("lazy store");
    let key = unique_key("input");
    let err = store
        .acquire(&key, &holder("a"), Duration::ZERO)
        .await
        .expect_err("zero ttl");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let foreign = Lease::new(key, holder("a"), leader_core::FencingToken(1), TTL);
    let err = store.renew(&foreign).await.expect_err("no etcd lease id");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

/// etcd's count of `Range` (get) requests served, from its metrics page.
async fn range_requests(server: &EtcdServer) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect to etcd's metrics");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .await
        .expect("request metrics");
    let mut page = String::new();
    conn.read_to_string(&mut page).await.expect("read metrics");
    page.lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total{") && l.contains("grpc_method=\"Range\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn renewals_on_a_quiet_store_are_one_keep_alive_each() {
    let (server, store) = setup().await;
    let key = unique_key("quiet");
    let lease = acquired(&store, &key, &holder("a"), TTL).await;
    store
        .renew(&lease)
        .await
        .expect("first renew proves the key");
    let before = range_requests(&server).await;
    for _ in 0..10 {
        store.renew(&lease).await.expect("renew");
    }
    let after = range_requests(&server).await;
    assert_eq!(
        after, before,
        "no write happened since the key was proven ours: renewals need no get"
    );

    // Any write to etcd makes the next renewal check the key again.
    let mut raw = raw_client(&server).await;
    raw.put("unrelated", "x", None).await.expect("raw put");
    store.renew(&lease).await.expect("renew after a write");
    assert_eq!(range_requests(&server).await, after + 1);
}

#[tokio::test]
async fn a_store_can_use_a_client_the_application_built() {
    let server = EtcdServer::start().await.expect("etcd");
    let raw = raw_client(&server).await;
    let config = leader_etcd::EtcdConfig::new([server.url()]).expect("config");
    let store = EtcdStore::with_client(raw, config).expect("store over an existing client");
    let key = unique_key("own-client");
    let lease = acquired(&store, &key, &holder("a"), TTL).await;
    store.renew(&lease).await.expect("renew");
    assert!(store.release(&lease).await.expect("release"));
}
