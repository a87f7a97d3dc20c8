//! RedisStore on a 3-master Redis Cluster: keys spread over every node,
//! hash-tagged keys, notifications across nodes, and a slot migrated under a
//! held lease (ASK while migrating, MOVED afterwards).

mod support;

use std::time::Duration;

use std::sync::Arc;

use leader_core::{
    Acquire, ElectionConfig, Elector, ErrorKind, HolderId, Lease, LeaseEvent, LeaseKey, LeaseStore,
};
use leader_redis::RedisStore;
use leader_testkit::wait::eventually;
use redis::cluster_routing::Slot;
use support::{Cluster, raw};
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
async fn cluster_slots(cluster: &Cluster) -> Vec<redis::Value> {
    for node in &cluster.nodes {
        if node.pid().is_none() {
            continue;
        }
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", node.port)) else {
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
async fn owner(cluster: &Cluster, slot: u16) -> (String, u16) {
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
    let cluster = Cluster::start().await;
    let store = RedisStore::new(&cluster.connection_string()).expect("store");
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
    let waiting = RedisStore::builder(&cluster.connection_string())
        .wait_replicas(1, Duration::from_millis(100))
        .build()
        .expect("store");
    let k = LeaseKey::new(&prefix, "wait").expect("key");
    let err = waiting.acquire(&k, &a, TTL).await.expect_err("no replicas");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(store.current(&k).await.expect("current"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_reach_watchers_connected_to_other_nodes() {
    let cluster = Cluster::start().await;
    let store = RedisStore::new(&cluster.connection_string()).expect("store");
    let prefix = prefix();
    // Find a key whose slot is not on the first seed node (where the
    // subscription connects), so the PUBLISH has to cross nodes.
    let first_seed = cluster.nodes[0].port;
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
    let cluster = Cluster::start().await;
    let store = RedisStore::new(&cluster.connection_string()).expect("store");
    let k = LeaseKey::new(&prefix(), "migrating").expect("key");
    let a = HolderId::new("a").expect("holder");
    let lease = acquired(&store, &k, &a).await;
    let slot = slot_of(k.as_str());
    let (src_id, src_port) = owner(&cluster, slot).await;
    let dst = cluster
        .nodes
        .iter()
        .find(|n| n.port != src_port)
        .expect("another node");
    let mut src = raw(&format!("redis://127.0.0.1:{src_port}")).await;
    let mut dstc = raw(&format!("redis://127.0.0.1:{}", dst.port)).await;
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
        .arg(dst.port)
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
        let mut c = raw(&format!("redis://127.0.0.1:{}", n.port)).await;
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
    assert_eq!(owner(&cluster, slot).await.1, dst.port);
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
    let files = support::tls_files();
    let cluster = Cluster::start_with(Some(&files)).await;
    let store = RedisStore::builder(&cluster.connection_string())
        .ca_file(&files.ca)
        .build()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_masters_node_while_an_elector_leads_recovers_the_election() {
    let mut cluster = Cluster::start_with_replicas().await;
    // Every replica must be in sync before a failover can promote it.
    for node in &cluster.nodes {
        let url = format!("redis://127.0.0.1:{}", node.port);
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
    let config = |id: &str| {
        let mut c = ElectionConfig::new("svc");
        c.key_prefix = prefix.clone();
        c.instance_id = Some(id.to_owned());
        c.lease_duration = Duration::from_secs(3);
        c.renewal_interval = Duration::from_millis(500);
        c.retry_period = Some(Duration::from_millis(250));
        c
    };
    let store = || -> Arc<dyn LeaseStore> {
        Arc::new(
            RedisStore::builder(&connection)
                .response_timeout(Duration::from_millis(500))
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("store"),
        )
    };
    let a = Elector::start(store(), config("instance-a")).expect("elector a");
    let b = Elector::start(store(), config("instance-b")).expect("elector b");
    let observer = store();
    let key = LeaseKey::new(&prefix, "svc").expect("key");
    let (first, first_token) = eventually(Duration::from_secs(15), "a first leader", || async {
        match (a.is_leader(), b.is_leader()) {
            (true, false) => Some(("instance-a", a.token()?)),
            (false, true) => Some(("instance-b", b.token()?)),
            _ => None,
        }
    })
    .await;

    let slot = slot_of(key.as_str());
    let (_, old_port) = owner(&cluster, slot).await;
    let killed_at = Instant::now();
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.port == old_port)
        .expect("the owner is one of ours")
        .kill();
    let mut overlap_samples = 0u32;
    let deadline = Instant::now() + Duration::from_secs(40);
    let (after_holder, after_token) = loop {
        assert!(Instant::now() < deadline, "the election did not recover");
        let (la, lb) = (a.is_leader(), b.is_leader());
        if la && lb {
            overlap_samples += 1;
        }
        if la ^ lb {
            let (id, tok) = if la {
                ("instance-a", a.token())
            } else {
                ("instance-b", b.token())
            };
            if owner(&cluster, slot).await.1 != old_port
                && let Ok(Some(info)) = observer.current(&key).await
                && info.holder.as_str().starts_with(&format!("{id}/"))
                && Some(info.token) == tok
            {
                break (id, info.token);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "cluster failover record: leader before = {first} (token {first_token}); leader after = \
         {after_holder} (token {after_token}, {}); recovered {:?} after killing the slot's \
         master; samples with two believed leaders = {overlap_samples}",
        if after_token == first_token {
            "same term"
        } else {
            "new term"
        },
        killed_at.elapsed(),
    );
    assert!(after_token >= first_token);
    a.shutdown().await;
    b.shutdown().await;
}
