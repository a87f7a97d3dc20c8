//! Settings: the card's keys, the store-neutral key, optional election.

use std::time::Duration;

use leader::Settings;

#[test]
fn the_cards_appsettings_and_env_keys_work() {
    let s = Settings::from_json(
        r#"{ "LeaderElection": { "ResourceName": "honua-server", "LeaseDurationSeconds": 30 },
             "Redis": { "ConnectionString": "redis-host:6379,password=s3cret" } }"#,
    )
    .expect("loads");
    assert_eq!(s.election.resource_name, "honua-server");
    assert_eq!(
        s.store.as_ref().map(|u| u.expose()),
        Some("redis-host:6379,password=s3cret")
    );
    assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");

    let s = s
        .with_env_from([
            ("Redis__ConnectionString", "redis://other:6379"),
            ("LeaderElection__LeaseDurationSeconds", "15"),
        ])
        .expect("env");
    assert_eq!(
        s.store.as_ref().map(|u| u.expose()),
        Some("redis://other:6379")
    );
    assert_eq!(s.election.lease_duration, Duration::from_secs(15));
}

#[test]
fn the_store_neutral_key_wins_over_the_redis_key() {
    let s = Settings::default()
        .with_env_from([
            ("Redis__ConnectionString", "redis://r:6379"),
            ("Store__ConnectionString", "etcd://e:2379"),
        ])
        .expect("env");
    assert_eq!(s.store.as_ref().map(|u| u.expose()), Some("etcd://e:2379"));
    let s = Settings::from_json(
        r#"{ "Store": { "ConnectionString": "memory://x" },
                                      "Redis": { "ConnectionString": "redis://r" } }"#,
    )
    .expect("json");
    assert_eq!(s.store.as_ref().map(|u| u.expose()), Some("memory://x"));
}

#[tokio::test]
async fn without_a_store_the_elector_always_leads() {
    let s = Settings::default();
    assert!(s.store.is_none());
    let e = s.start_elector().expect("single-instance mode");
    assert!(e.is_leader());
    assert!(!e.is_enabled());
    e.shutdown().await;
}
