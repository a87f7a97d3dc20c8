//! Settings: the card's keys, the store-neutral key, explicit single-instance
//! mode, and the keys an election cannot do without.

use std::time::Duration;

use leader::{ErrorKind, Settings};

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
async fn election_enabled_without_a_store_is_refused_naming_the_keys() {
    let s = Settings::default()
        .with_env_from([("LeaderElection__ResourceName", "svc")])
        .expect("env");
    assert!(s.store.is_none() && s.election.enabled);
    let elector_err = s.start_elector().expect_err("every replica would lead");
    let locks_err = s.locks().expect_err("every replica would run the job");
    for err in [elector_err, locks_err] {
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        for key in ["Store__ConnectionString", "LeaderElection__Enabled=false"] {
            assert!(err.message().contains(key), "{key} not named: {err}");
        }
    }
}

#[tokio::test]
async fn single_instance_mode_is_explicit_and_shows_in_health() {
    let s = Settings::default()
        .with_env_from([("LeaderElection__Enabled", "false")])
        .expect("env");
    let e = s.start_elector().expect("single-instance mode");
    assert!(e.is_leader());
    assert!(!e.is_enabled());
    let doc = e.health().to_document();
    assert_eq!(
        doc["results"]["leader_election"]["data"]["mode"],
        "single-instance"
    );
    e.shutdown().await;
    let locks = s.locks().expect("process-local locks");
    let guard = locks.try_acquire("job").await.expect("ok").expect("free");
    assert!(locks.try_acquire("job").await.expect("ok").is_none());
    guard.release().await.expect("release");
}

#[tokio::test]
async fn an_election_on_a_store_needs_a_resource_name() {
    let on_store = Settings::default()
        .with_env_from([("Store__ConnectionString", "memory://resource-name")])
        .expect("env");
    let err = on_store.start_elector().expect_err("no ResourceName");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.message().starts_with("ResourceName"), "{err}");
    assert!(
        err.message().contains("LeaderElection__ResourceName"),
        "{err}"
    );
    // Named locks name their own resources.
    on_store.locks().expect("locks need no ResourceName");
    let named = on_store
        .with_env_from([("LeaderElection__ResourceName", "billing")])
        .expect("env");
    let e = named.start_elector().expect("named");
    assert!(e.is_enabled());
    assert_eq!(e.key().resource(), "billing");
    assert_eq!(e.health().data.mode, "election");
    e.shutdown().await;
}
