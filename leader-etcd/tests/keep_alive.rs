//! Shared keep-alive streams: the renewals of every lease held through one
//! `EtcdStore` share [`LANES`] etcd `LeaseKeepAlive` stream(s), however many
//! leases, a lost lease fails only its own renewal, and a broken stream is
//! re-opened once for all its leases.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use leader_core::{Acquire, ErrorKind, Lease, LeaseKey, LeaseStore};
use leader_etcd::EtcdStore;
use leader_testkit::metrics::Metrics;
use leader_testkit::proxy::{FaultProxy, Mode};
use leader_testkit::servers::EtcdServer;
use support::{PATIENCE, SLACK, holder, raw_client, unique_key};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The store's keep-alive streams (lanes): leases are spread over at most
/// this many.
const LANES: f64 = 1.0;

/// Keep-alive streams etcd has accepted so far, and those still open.
async fn keep_alive_streams(server: &EtcdServer) -> (f64, f64) {
    let m = Metrics::scrape(server.addr()).await.expect("etcd metrics");
    let method = [("grpc_method", "LeaseKeepAlive")];
    let started = m.sum("grpc_server_started_total", &method);
    (
        started,
        started - m.sum("grpc_server_handled_total", &method),
    )
}

async fn acquired(store: &EtcdStore, key: &LeaseKey, ttl: Duration) -> Lease {
    match store
        .acquire(key, &holder("h"), ttl)
        .await
        .expect("acquire")
    {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => panic!("a fresh key is held by {info:?}"),
    }
}

/// Acquires `n` fresh keys, a few at a time.
async fn acquire_many(store: &EtcdStore, what: &str, n: usize, ttl: Duration) -> Vec<Lease> {
    futures::stream::iter(0..n)
        .map(|i| {
            let key = unique_key(&format!("{what}-{i}"));
            async move { acquired(store, &key, ttl).await }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// 2,000 leases on one store, each renewed on its own rhythm for two TTLs
/// from its acquisition: every renewal succeeds, every key still holds its
/// term at the end, and etcd saw at most [`LANES`] keep-alive streams from
/// the store, none of them re-opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_leases_are_kept_on_one_keep_alive_stream() {
    const LEASES: usize = 2_000;
    // Renewed every second, a lease survives a renewal up to 4 s late: the
    // margin a loaded 2-core machine needs.
    const TTL: Duration = Duration::from_secs(5);
    const EVERY: Duration = Duration::from_secs(1);
    const ROUNDS: u32 = 10;
    let server = EtcdServer::start().await.expect("etcd");
    let store = EtcdStore::from_url(server.url()).expect("store");
    // Acquisitions a few at a time; each lease's renewals start right after
    // its own acquisition.
    let gate = Arc::new(Semaphore::new(64));
    let holders = (0..LEASES).map(|i| {
        let store = store.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let key = unique_key(&format!("many-{i}"));
            let lease = {
                let _turn = gate.acquire().await.expect("gate");
                acquired(&store, &key, TTL).await
            };
            let mut rhythm = tokio::time::interval(EVERY);
            rhythm.tick().await;
            let mut last_sent = Instant::now();
            for round in 0..ROUNDS {
                rhythm.tick().await;
                last_sent = Instant::now();
                if let Err(e) = store.renew(&lease).await {
                    return Err(format!("{key}: renewal {round} failed: {e}"));
                }
            }
            // Still held in etcd, unless this check came a TTL after the
            // last renewal (a stalled test task, not a lost lease).
            let now = store.current(&key).await;
            match now {
                Ok(Some(info)) if info.holder == lease.holder && info.token == lease.token => {
                    Ok(())
                }
                _ if last_sent.elapsed() >= TTL => Ok(()),
                other => Err(format!(
                    "{key}: no longer held after the renewals: {other:?}"
                )),
            }
        })
    });
    let outcomes = futures::future::join_all(holders).await;
    let failed: Vec<String> = outcomes
        .into_iter()
        .filter_map(|o| o.expect("holder task").err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {LEASES} leases were not kept, first: {}",
        failed.len(),
        failed[0]
    );
    let (started, open) = keep_alive_streams(&server).await;
    assert!(
        started <= LANES && open == started,
        "keep-alive streams for {LEASES} leases on one store: {started} started, {open} open"
    );
}

/// A lease revoked behind the store's back fails its own renewal as lost;
/// the other leases renew on the same stream.
#[tokio::test]
async fn a_lost_lease_fails_its_renewal_and_the_others_renew_on_the_same_stream() {
    const TTL: Duration = Duration::from_secs(30);
    let server = EtcdServer::start().await.expect("etcd");
    let store = EtcdStore::from_url(server.url()).expect("store");
    let leases = acquire_many(&store, "lost", 40, TTL).await;
    for lease in &leases {
        store.renew(lease).await.expect("renew");
    }
    let (started, open) = keep_alive_streams(&server).await;
    assert!(
        started <= LANES && open == started,
        "keep-alive streams for 40 leases: {started} started, {open} open"
    );
    let mut raw = raw_client(&server).await;
    let id = raw
        .get(leases[1].key.as_str(), None)
        .await
        .expect("raw get")
        .kvs()
        .first()
        .expect("the key")
        .lease();
    raw.lease_revoke(id).await.expect("revoke behind its back");

    let err = store
        .renew(&leases[1])
        .await
        .expect_err("renew a revoked lease");
    assert_eq!(err.kind(), ErrorKind::NotHolder, "{err}");
    for (i, lease) in leases.iter().enumerate().filter(|(i, _)| *i != 1) {
        store
            .renew(lease)
            .await
            .unwrap_or_else(|e| panic!("renew lease {i} after another was lost: {e}"));
    }
    assert_eq!(
        keep_alive_streams(&server).await,
        (started, open),
        "a lost lease closed or re-opened a shared stream"
    );
}

/// The connection under the shared stream is reset: renewals fail with a
/// retryable error (never as lost), and once it heals one new stream serves
/// every lease.
#[tokio::test]
async fn a_broken_keep_alive_stream_fails_renewals_retryably_and_is_reopened_once_for_all() {
    const LEASES: usize = 20;
    const TTL: Duration = Duration::from_secs(30);
    let server = EtcdServer::start().await.expect("etcd");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let store = EtcdStore::from_url(&format!(
        "{}?request_timeout=2s&connect_timeout=500ms",
        server.url_via(proxy.addr())
    ))
    .expect("store via proxy");
    let leases = acquire_many(&store, "reset", LEASES, TTL).await;
    for lease in &leases {
        store.renew(lease).await.expect("renew");
    }
    let (before, _) = keep_alive_streams(&server).await;
    assert!(
        before <= LANES,
        "{before} keep-alive streams for {LEASES} leases"
    );

    proxy.set_mode(Mode::Reset);
    let during = futures::future::join_all(leases.iter().map(|l| store.renew(l))).await;
    for outcome in during {
        if let Err(e) = outcome {
            assert!(e.is_retryable(), "renewal during the reset: {e}");
        }
    }
    // The old stream is gone on the server too.
    leader_testkit::wait::eventually(PATIENCE, "the broken stream ends on etcd", || async {
        keep_alive_streams(&server).await.1 == 0.0
    })
    .await;
    let (started, _) = keep_alive_streams(&server).await;
    proxy.set_mode(Mode::PassThrough);

    // Everyone renews again at once, retrying as the elector does.
    let again = futures::future::join_all(leases.iter().map(|lease| {
        let store = store.clone();
        async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                match store.renew(lease).await {
                    Ok(()) => return,
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{}: could not renew after the reset: {e}", lease.key),
                }
            }
        }
    }));
    tokio::time::timeout(PATIENCE + SLACK, again)
        .await
        .expect("renewals after the reset");
    let (now, open) = keep_alive_streams(&server).await;
    assert_eq!(
        (now - started, open),
        (before, before),
        "keep-alive streams (opened after the reset, open now): each stream once"
    );
}
