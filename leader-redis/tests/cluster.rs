//! RedisStore on a 3-master Redis Cluster: keys spread over every node,
//! hash-tagged keys, notifications across nodes, a slot migrated under a
//! held lease (ASK while migrating, MOVED afterwards), and the failover of
//! the lease's master under two electors (checked by the history checker).

mod support;

use std::sync::Arc;
use std::time::Duration;

use leader_core::{Acquire, ErrorKind, HolderId, Lease, LeaseEvent, LeaseKey, LeaseStore};
use leader_redis::{RedisConfig, RedisStore};
use leader_testkit::servers::{RedisCluster, TlsFiles};
use leader_testkit::wait::eventually;
use redis::cluster_routing::Slot;
use support::election::{RecordedElection, failover_config};
use support::raw;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

fn prefix() -> String {
    format!("cluster:{:016x}:", rand::random::<u64>())
}

async fn acquired(store: &RedisStore, key: &LeaseKey, who: &HolderId) -> Lease {
    match store.acquire(key, who, TTL).await.expect("acquire") {
        Acquire::Acquired(lease) => lease,
        other => panic!("{key}: {other:?}"),
    }
}

/// CLUSTER SLOTS from the first node that answers.
async fn cluster_slots(cluster: &RedisCluster) -> Vec<redis::Value> {
    for node in &cluster.nodes {
        if !node.is_running() {
            continue;
        }
        let Ok(client) = redis::Client::open(node.url()) else {
            continue;
        };
        let attempt = async {
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Vec<redis::Value>>(&mut c)
                .await
                .ok()
        };
        if let Ok(Some(slots)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            return slots;
        }
    }
    panic!("no cluster node answers CLUSTER SLOTS");
}

/// The node id and port that own `slot`.
async fn owner(cluster: &RedisCluster, slot: u16) -> (String, u16) {
    let slots = cluster_slots(cluster).await;
    for range in slots {
        let redis::Value::Array(items) = range else {
            continue;
        };
        let (
            Some(redis::Value::Int(lo)),
            Some(redis::Value::Int(hi)),
            Some(redis::Value::Array(node)),
        ) = (items.first(), items.get(1), items.get(2))
        else {
            continue;
        };
        if (*lo..=*hi).contains(&i64::from(slot)) {
            let port = match node.get(1) {
                Some(redis::Value::Int(p)) => u16::try_from(*p).expect("port"),
                other => panic!("port in CLUSTER SLOTS: {other:?}"),
            };
            let id: String = redis::from_redis_value(node.get(2).cloned().expect("node id"))
                .expect("node id string");
            return (id, port);
        }
    }
    panic!("slot {slot} has no owner");
}

fn slot_of(key: &str) -> u16 {
    // The crate's Slot has no accessor; its Debug is `Slot(n)`.
    let shown = format!("{:?}", Slot::for_key(key));
    shown
        .trim_start_matches("Slot(")
        .trim_end_matches(')')
        .parse()
        .expect("slot number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_work_on_every_node_and_with_hash_tags() {
    let cluster = RedisCluster::start(0, None).await.expect("redis cluster");
    let store = RedisStore::from_url(&cluster.connection_string()).expect("store");
    let prefix = prefix();
    let a = HolderId::new("a").expect("holder");
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..24 {
        let k = LeaseKey::new(&prefix, &format!("job-{i}")).expect("key");
        ports.insert(owner(&cluster, slot_of(k.as_str())).await.1);
        let lease = acquired(&store, &k, &a).await;
        store.renew(&lease).await.expect("renew");
        let info = store.current(&k).await.expect("current").expect("held");
        assert_eq!(info.token, lease.token);
        assert!(store.release(&lease).await.expect("release"));
    }
    assert_eq!(ports.len(), 3, "the keys should have covered every master");

    let tagged = LeaseKey::new("app:{orders}:", "leader").expect("key");
    let lease = acquired(&store, &tagged, &a).await;
    assert!(store.release(&lease).await.expect("release tagged"));

    let stray = LeaseKey::new(&prefix, "odd}name").expect("key");
    let err = store
        .acquire(&stray, &a, TTL)
        .await
        .expect_err("cannot share a slot");
    assert_eq!(err.kind(), ErrorKind::InvalidName, "{err}");

    // WAIT is routed to the key's master, which has no replica here.
    let waiting = RedisStore::new(
        RedisConfig::from_url(&cluster.connection_string())
            .expect("valid URL")
            .with_wait_replicas(1, Duration::from_millis(100)),
    )
    .expect("store");
    let k = LeaseKey::new(&prefix, "wait").expect("key");
    let err = waiting.acquire(&k, &a, TTL).await.expect_err("no replicas");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(store.current(&k).await.expect("current"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_reach_watchers_connected_to_other_nodes() {
    let cluster = RedisCluster::start(0, None).await.expect("redis cluster");
    let store = RedisStore::from_url(&cluster.connection_string()).expect("store");
    let prefix = prefix();
    // Find a key whose slot is not on the first seed node (where the
    // subscription connects), so the PUBLISH has to cross nodes.
    let first_seed = cluster.nodes[0].addr().port();
    let mut k = None;
    for i in 0..64 {
        let candidate = LeaseKey::new(&prefix, &format!("svc-{i}")).expect("key");
        if owner(&cluster, slot_of(candidate.as_str())).await.1 != first_seed {
            k = Some(candidate);
            break;
        }
    }
    let k = k.expect("a key on another node");
    let mut events = store.watch(&k).await.expect("watch");
    let lease = acquired(&store, &k, &HolderId::new("a").expect("holder")).await;
    assert!(store.release(&lease).await.expect("release"));
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(event.expect("event in time"), Some(LeaseEvent::Vacated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_its_slot_moving_to_another_node() {
    let cluster = RedisCluster::start(0, None).await.expect("redis cluster");
    let store = RedisStore::from_url(&cluster.connection_string()).expect("store");
    let k = LeaseKey::new(&prefix(), "migrating").expect("key");
    let a = HolderId::new("a").expect("holder");
    let lease = acquired(&store, &k, &a).await;
    let slot = slot_of(k.as_str());
    let (src_id, src_port) = owner(&cluster, slot).await;
    let dst = cluster
        .nodes
        .iter()
        .find(|n| n.addr().port() != src_port)
        .expect("another node");
    let mut src = raw(&format!("redis://127.0.0.1:{src_port}")).await;
    let mut dstc = raw(dst.url()).await;
    let dst_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut dstc)
        .await
        .expect("MYID");

    // Migrate: IMPORTING / MIGRATING, move every key of the slot.
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&src_id)
        .query_async(&mut dstc)
        .await
        .expect("IMPORTING");
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&dst_id)
        .query_async(&mut src)
        .await
        .expect("MIGRATING");
    let keys: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(100)
        .query_async(&mut src)
        .await
        .expect("GETKEYSINSLOT");
    assert_eq!(
        keys.len(),
        3,
        "lease, term and counter share the slot: {keys:?}"
    );
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(dst.addr().port())
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(&keys)
        .query_async(&mut src)
        .await
        .expect("MIGRATE");

    // Mid-migration the source answers ASK: the crate follows it.
    store
        .renew(&lease)
        .await
        .expect("renew while the slot is migrating (ASK)");
    let info = store.current(&k).await.expect("current").expect("held");
    assert_eq!(info.token, lease.token);

    // Finish: every node learns the new owner; stale routes get MOVED.
    for n in &cluster.nodes {
        let mut c = raw(n.url()).await;
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&dst_id)
            .query_async(&mut c)
            .await
            .expect("SETSLOT NODE");
    }
    store
        .renew(&lease)
        .await
        .expect("renew after the move (MOVED)");
    assert_eq!(owner(&cluster, slot).await.1, dst.addr().port());
    let next = match store
        .acquire(&k, &HolderId::new("b").expect("holder"), TTL)
        .await
        .expect("acquire")
    {
        Acquire::Held(info) => info,
        other => panic!("still held by a: {other:?}"),
    };
    assert_eq!(next.holder, a);
    assert!(
        store
            .release(&lease)
            .await
            .expect("release on the new owner")
    );
    let again = acquired(&store, &k, &a).await;
    assert!(
        again.token > lease.token,
        "the counter moved with the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_notifications_work_on_a_tls_cluster() {
    let files = TlsFiles::generate().expect("TLS files");
    let cluster = RedisCluster::start(0, Some(&files))
        .await
        .expect("redis cluster over TLS");
    let store = RedisStore::new(
        RedisConfig::from_url(&cluster.connection_string())
            .expect("valid URL")
            .with_ca_file(&files.ca),
    )
    .expect("store");
    let prefix = prefix();
    let a = HolderId::new("a").expect("holder");
    for i in 0..12 {
        let k = LeaseKey::new(&prefix, &format!("job-{i}")).expect("key");
        let lease = acquired(&store, &k, &a).await;
        store.renew(&lease).await.expect("renew over TLS");
        assert!(store.release(&lease).await.expect("release over TLS"));
    }
    let k = LeaseKey::new(&prefix, "watched").expect("key");
    let mut events = store.watch(&k).await.expect("watch over TLS");
    let lease = acquired(&store, &k, &a).await;
    assert!(store.release(&lease).await.expect("release"));
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(event.expect("event in time"), Some(LeaseEvent::Vacated));
}

/// Whether a replica of the slot's master already holds `key` with
/// `holder`: asked of every node but the master with READONLY (a node that
/// does not replicate the slot answers MOVED).
async fn replicated(cluster: &RedisCluster, master_port: u16, key: &str, holder: &str) -> bool {
    for node in cluster
        .nodes
        .iter()
        .filter(|n| n.addr().port() != master_port)
    {
        let mut c = raw(node.url()).await;
        let _: Result<(), _> = redis::cmd("READONLY").query_async(&mut c).await;
        let seen: Result<Option<String>, _> = redis::cmd("GET").arg(key).query_async(&mut c).await;
        if seen.ok().flatten().as_deref() == Some(holder) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lease_masters_node_keeps_one_leader_and_increasing_tokens() {
    let cluster = RedisCluster::start(1, None)
        .await
        .expect("redis cluster with replicas");
    // Every replica must be in sync before a failover can promote it.
    for node in &cluster.nodes {
        let url = node.url().to_owned();
        eventually(Duration::from_secs(20), "replicas in sync", || {
            let url = url.clone();
            async move {
                let mut c = raw(&url).await;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (info.contains("role:master") || info.contains("master_link_status:up"))
                    .then_some(())
            }
        })
        .await;
    }
    let connection = cluster.connection_string();
    let prefix = prefix();
    let store = || -> Arc<dyn LeaseStore> {
        Arc::new(
            RedisStore::new(
                RedisConfig::from_url(&connection)
                    .expect("valid URL")
                    .with_request_timeout(Duration::from_millis(500))
                    .with_connect_timeout(Duration::from_secs(1)),
            )
            .expect("store"),
        )
    };
    let election = RecordedElection::start(vec![
        (failover_config(&prefix, "instance-a"), store()),
        (failover_config(&prefix, "instance-b"), store()),
    ]);
    let observer = store();
    let key = LeaseKey::new(&prefix, "svc").expect("key");
    let (first, first_token) = eventually(Duration::from_secs(15), "a first leader", || async {
        election.sole_leader()
    })
    .await;
    let holder = election.electors[first].instance_id().clone();
    let slot = slot_of(key.as_str());
    let (_, old_port) = owner(&cluster, slot).await;
    // README: the lease survives a failover when the promoted replica had
    // received it. Make that the case, then check what it promises.
    eventually(
        Duration::from_secs(10),
        "the lease on a replica",
        || async {
            replicated(&cluster, old_port, key.as_str(), holder.as_str())
                .await
                .then_some(())
        },
    )
    .await;

    let killed_at = Instant::now();
    cluster
        .nodes
        .iter()
        .find(|n| n.addr().port() == old_port)
        .expect("the owner is one of ours")
        .kill()
        .await
        .expect("kill the slot's master");
    let (after, _) = eventually(
        Duration::from_secs(40),
        "the election to recover on the promoted replica",
        || async {
            if owner(&cluster, slot).await.1 == old_port {
                return None;
            }
            election.agreed_leader(&*observer, &key, None).await
        },
    )
    .await;
    let recovered_after = killed_at.elapsed();
    // With the lease replicated, the README promises no overlap.
    let tokens = election
        .hand_over_and_check(&*observer, &key, after, first_token)
        .await;
    eprintln!(
        "cluster failover: election recovered {recovered_after:?} after killing the slot's master; tokens {tokens:?}"
    );
}
