//! The store-from-URL table: every scheme, every feature-off case, malformed
//! input refused with a clear error that never shows the password.
//!
//! Run with all features (the default test run) and with
//! `--no-default-features` (scripts/test.sh does both) so that both the
//! feature-on and the feature-off arms are exercised.

use leader::{ErrorKind, StoreUrl, connect};

/// (url, store kind, cargo feature) for URLs that must build a store.
const WELL_FORMED: &[(&str, &str, Option<&str>)] = &[
    ("memory://", "memory", None),
    ("memory://shared-name", "memory", None),
    ("redis://127.0.0.1:6379", "redis", Some("redis")),
    (
        "redis://user:s3cret@127.0.0.1:6379/2",
        "redis",
        Some("redis"),
    ),
    (
        "rediss://:s3cret@cache.example:6380",
        "redis",
        Some("redis"),
    ),
    ("localhost:6379", "redis", Some("redis")),
    (
        "redis-host:6380,password=s3cret,ssl=true,abortConnect=false",
        "redis",
        Some("redis"),
    ),
    (
        "sentinel1:26379,sentinel2:26379,serviceName=mymaster,password=s3cret",
        "redis",
        Some("redis"),
    ),
    (
        "node1:6379,node2:6379,node3:6379,password=s3cret",
        "redis",
        Some("redis"),
    ),
    ("etcd://127.0.0.1:2379", "etcd", Some("etcd")),
    (
        "etcd://root:s3cret@h1:2379,h2:2379,h3:2379",
        "etcd",
        Some("etcd"),
    ),
    ("http://127.0.0.1:2379", "etcd", Some("etcd")),
    ("https://etcd.example:2379", "etcd", Some("etcd")),
    (
        "postgres://postgres:s3cret@127.0.0.1:5432/postgres",
        "postgres",
        Some("postgres"),
    ),
    (
        "postgresql://127.0.0.1/app?sslmode=disable",
        "postgres",
        Some("postgres"),
    ),
];

fn enabled(feature: Option<&str>) -> bool {
    match feature {
        None => true,
        Some("redis") => cfg!(feature = "redis"),
        Some("etcd") => cfg!(feature = "etcd"),
        Some("postgres") => cfg!(feature = "postgres"),
        Some(other) => panic!("unknown feature {other}"),
    }
}

#[test]
fn every_scheme_builds_its_store_or_names_the_missing_feature() {
    for (url, kind, feature) in WELL_FORMED {
        match connect(url) {
            Ok(store) => {
                assert!(
                    enabled(*feature),
                    "{url}: built although the feature is off"
                );
                assert_eq!(store.kind(), *kind, "{url}");
            }
            Err(e) => {
                assert!(!enabled(*feature), "{url}: {e}");
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{url}: {e}");
                let feature = feature.expect("memory is always there");
                assert!(
                    e.to_string()
                        .contains(&format!("`{feature}` cargo feature")),
                    "{e}"
                );
                assert!(!e.to_string().contains("s3cret"), "{e}");
            }
        }
        assert_eq!(
            StoreUrl::new(*url).kind().map(|k| k.name()),
            Some(*kind),
            "{url}"
        );
    }
}

#[test]
fn unknown_schemes_and_empty_urls_are_refused() {
    for (url, kind, needle) in [
        (
            "mongodb://user:s3cret@h/db",
            ErrorKind::Unsupported,
            "unknown store URL scheme",
        ),
        (
            "consul://h:8500",
            ErrorKind::Unsupported,
            "unknown store URL scheme",
        ),
        ("", ErrorKind::InvalidConfig, "empty"),
        ("   ", ErrorKind::InvalidConfig, "empty"),
    ] {
        let e = connect(url).expect_err(url);
        assert_eq!(e.kind(), kind, "{url}: {e}");
        assert!(e.to_string().contains(needle), "{url}: {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

/// Malformed input for each enabled store: InvalidConfig, never the password.
#[test]
fn malformed_urls_get_a_clear_error_without_the_password() {
    let cases: &[(&str, Option<&str>)] = &[
        ("redis://:s3cret@h:notaport", Some("redis")),
        ("redis-host:6379,password=s3cret,sll=true", Some("redis")),
        ("redis-host:99999,password=s3cret", Some("redis")),
        ("redis-host:6379,ssl=maybe,password=s3cret", Some("redis")),
        ("etcd://root:s3cret@", Some("etcd")),
        ("etcd://root:s3cret@h:70000", Some("etcd")),
        ("postgres://u:s3cret@h:99999/db", Some("postgres")),
        (
            "postgres://u:s3cret@h/db?sslmode=sometimes",
            Some("postgres"),
        ),
    ];
    for (url, feature) in cases {
        if !enabled(*feature) {
            continue;
        }
        let e = connect(url)
            .err()
            .unwrap_or_else(|| panic!("{url} must be refused"));
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        assert!(!e.to_string().contains("s3cret"), "{url}: {e}");
        assert!(!format!("{e:?}").contains("s3cret"), "{url}: {e:?}");
    }
}

#[test]
fn named_memory_stores_are_shared_within_the_process() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let a = connect("memory://team").expect("memory");
        let b = connect("memory://team").expect("memory");
        let key = leader::LeaseKey::new("t:", "r").expect("key");
        let me = leader::HolderId::new("me").expect("id");
        let got = a
            .acquire(&key, &me, std::time::Duration::from_secs(5))
            .await
            .expect("acquire");
        assert!(matches!(got, leader::Acquire::Acquired(_)));
        let seen = b.current(&key).await.expect("current").expect("shared");
        assert_eq!(seen.holder, me);
    });
}
