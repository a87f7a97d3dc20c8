//! Hostile-but-valid resource names and holder ids (quotes, braces, SQL and
//! Lua metacharacters, Unicode, very long) round-trip through every real
//! store: acquire, `current` shows the same holder and token, release frees
//! it. Names the core refuses (control characters, blank, too long) are
//! refused before any store sees them, with `InvalidName` and a message.

use std::sync::Arc;
use std::time::Duration;

use leader::{Acquire, ErrorKind, HolderId, LeaseKey, LeaseStore};
use leader_testkit::servers::{EtcdServer, PostgresServer, RedisServer};

const PREFIX: &str = "hostile:";

fn valid_names() -> Vec<String> {
    vec![
        "plain".to_owned(),
        r#"double"quote"#.to_owned(),
        "single'quote".to_owned(),
        "'; DROP TABLE leader_fencing; --".to_owned(),
        "\"; DROP TABLE \"leader_fencing\"; --".to_owned(),
        "$1 $$ $tag$ E'\\x41' ::regclass".to_owned(),
        "{braces}".to_owned(),
        "}{".to_owned(),
        "{a}:b:{c}".to_owned(),
        "lua ]] .. [[ %s %d %% \\ return redis.call('FLUSHALL') --[[".to_owned(),
        "KEYS[1] ARGV[2] nil true #".to_owned(),
        "back\\slash/forward/slash".to_owned(),
        "percent%20and+plus&amp=eq?q#frag".to_owned(),
        "spaces in the middle and at the end ".to_owned(),
        "ünïcødé 选举 🚀 \u{200b}zero-width \u{202e}bidi".to_owned(),
        "x".repeat(1500),
    ]
}

fn holder_for(i: usize) -> HolderId {
    let hostile = [
        "holder\"'; DROP TABLE leader_fencing; --",
        "holder {braces} ]] lua",
        "holder ünïcødé 🚀",
    ];
    HolderId::new(format!("{} #{i}", hostile[i % hostile.len()])).expect("a valid holder id")
}

/// Names every store must refuse, through the core's validation.
#[test]
fn control_characters_blank_and_oversized_names_are_refused() {
    let long = "y".repeat(leader::MAX_KEY_LEN + 1);
    for bad in [
        "new\nline",
        "carriage\rreturn",
        "tab\there",
        "nul\0byte",
        "escape\u{1b}[31mred",
        "delete\u{7f}",
        "",
        "   ",
        long.as_str(),
    ] {
        let err = LeaseKey::new(PREFIX, bad).expect_err("a hostile name must be refused");
        assert_eq!(err.kind(), ErrorKind::InvalidName, "{bad:?}: {err}");
        assert!(!err.message().is_empty());
        let err = HolderId::new(bad).expect_err("a hostile holder id must be refused");
        assert_eq!(err.kind(), ErrorKind::InvalidName, "{bad:?}: {err}");
        assert!(!err.message().is_empty());
    }
}

async fn round_trip(store: Arc<dyn LeaseStore>) {
    let ttl = Duration::from_secs(10);
    // Every name is held at the same time: two names that collide in the
    // store (one key, one lock id) make the second acquire answer `Held`.
    let mut leases = Vec::new();
    for (i, name) in valid_names().iter().enumerate() {
        let key = LeaseKey::new(PREFIX, name).expect("a valid name");
        let holder = holder_for(i);
        let outcome = store
            .acquire(&key, &holder, ttl)
            .await
            .unwrap_or_else(|e| panic!("acquire {name:?}: {e}"));
        let Acquire::Acquired(lease) = outcome else {
            panic!("{name:?} is free, yet (does it collide with an earlier name?): {outcome:?}");
        };
        leases.push((name.clone(), holder, lease));
    }
    for (name, holder, lease) in &leases {
        let info = store
            .current(&lease.key)
            .await
            .unwrap_or_else(|e| panic!("current {name:?}: {e}"))
            .unwrap_or_else(|| panic!("{name:?} is held, current says free"));
        assert_eq!(
            info.holder, *holder,
            "{name:?}: holder changed in the store"
        );
        assert_eq!(
            info.token, lease.token,
            "{name:?}: token changed in the store"
        );
        store
            .renew(lease)
            .await
            .unwrap_or_else(|e| panic!("renew {name:?}: {e}"));
    }
    for (name, _, lease) in &leases {
        assert!(
            store
                .release(lease)
                .await
                .unwrap_or_else(|e| panic!("release {name:?}: {e}")),
            "{name:?}: release found the lease gone"
        );
        let after = store
            .current(&lease.key)
            .await
            .unwrap_or_else(|e| panic!("current after release {name:?}: {e}"));
        assert!(
            after.is_none(),
            "{name:?}: still held after release: {after:?}"
        );
    }
}

fn connect(url: &str) -> Arc<dyn LeaseStore> {
    leader::connect(url).expect("a store for the test server's URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_round_trip_on_redis() {
    let server = RedisServer::start()
        .await
        .expect("redis-server (Debian: redis-server)");
    round_trip(connect(server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_round_trip_on_etcd() {
    let server = EtcdServer::start()
        .await
        .expect("etcd (Debian: etcd-server)");
    round_trip(connect(server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_round_trip_on_postgres() {
    let server = PostgresServer::start()
        .await
        .expect("postgres (Debian: postgresql)");
    round_trip(connect(server.url())).await;
}
