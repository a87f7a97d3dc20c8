//! User/password authentication against an etcd with auth enabled: the
//! right credentials work, wrong or missing ones fail with `Auth`, the
//! password never shows in errors, and a user granted only the keys' prefix
//! can do everything, resign requests and their watch included.

mod support;

use std::time::Duration;

use etcd_client::Permission;
use leader_core::{Acquire, ErrorKind, HolderId, LeaseEvent, LeaseStore};
use leader_etcd::{EtcdConfig, EtcdStore};
use leader_testkit::servers::EtcdServer;
use support::{PATIENCE, raw_client, unique_key};

const PASSWORD: &str = "s3cret-p@ss,word";

async fn etcd_with_auth() -> EtcdServer {
    let server = EtcdServer::start().await.expect("etcd");
    let mut raw = raw_client(&server).await;
    // `root` must exist and hold the root role before auth can be enabled.
    let _ = raw.role_add("root").await;
    raw.user_add("root", PASSWORD, None)
        .await
        .expect("add user root");
    raw.user_grant_role("root", "root")
        .await
        .expect("grant root");
    // `app` may read and write the test keys' prefix, nothing else.
    raw.role_add("app").await.expect("add role app");
    let prefix = unique_key("prefix").prefix().to_owned();
    raw.role_grant_permission("app", Permission::read_write(prefix).with_prefix())
        .await
        .expect("grant the prefix to app");
    raw.user_add("app", PASSWORD, None)
        .await
        .expect("add user app");
    raw.user_grant_role("app", "app").await.expect("grant app");
    raw.auth_enable().await.expect("enable auth");
    server
}

#[tokio::test]
async fn right_credentials_work_wrong_ones_are_auth_errors() {
    let server = etcd_with_auth().await;
    let key = unique_key("auth");
    let me = HolderId::new("me").expect("holder");
    let ttl = Duration::from_secs(5);
    let hostport = server.addr().to_string();

    // Credentials in the URL (percent-encoded) and as options.
    let encoded = "s3cret-p%40ss%2Cword";
    for url in [
        format!("etcd://root:{encoded}@{hostport}"),
        format!("etcd://{hostport}?user=root&password={encoded}"),
    ] {
        let store = EtcdStore::from_url(&url).expect("store");
        let outcome = store
            .acquire(&key, &me, ttl)
            .await
            .expect("acquire with credentials");
        let Acquire::Acquired(lease) = outcome else {
            panic!("the key is free: {outcome:?}");
        };
        store.renew(&lease).await.expect("renew with credentials");
        assert!(store.release(&lease).await.expect("release"));
    }

    // Wrong password, and none at all.
    let wrong = EtcdStore::new(
        EtcdConfig::new([hostport.as_str()])
            .expect("config")
            .with_user("root", "not-the-password"),
    )
    .expect("store");
    let err = wrong
        .acquire(&key, &me, ttl)
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    assert!(!format!("{err:?}").contains("not-the-password"), "{err:?}");
    assert!(!format!("{wrong:?}").contains("not-the-password"));

    let anonymous = EtcdStore::from_url(&format!("etcd://{hostport}")).expect("store");
    let err = anonymous
        .acquire(&key, &me, ttl)
        .await
        .expect_err("no credentials");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
}

/// The request key lies under the lease key's prefix, and the key's watch
/// covers only the key and its request key: a user granted the prefix can
/// acquire, watch, send a resign request and hear it.
#[tokio::test]
async fn a_user_granted_the_key_prefix_sends_and_hears_resign_requests() {
    let server = etcd_with_auth().await;
    let key = unique_key("auth-resign");
    let store = EtcdStore::new(
        EtcdConfig::new([server.addr().to_string()])
            .expect("config")
            .with_user("app", PASSWORD),
    )
    .expect("store");
    let me = HolderId::new("me").expect("holder");
    let Acquire::Acquired(lease) = store
        .acquire(&key, &me, Duration::from_secs(60))
        .await
        .expect("acquire as app")
    else {
        panic!("the key is free");
    };
    let mut events = store.watch(&key).await.expect("watch as app");
    assert!(
        store
            .request_resign(&key, lease.token)
            .await
            .expect("request_resign as app")
    );
    let event = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event within the patience bound");
    assert_eq!(
        event,
        Some(LeaseEvent::ResignRequested { token: lease.token })
    );
    assert!(store.release(&lease).await.expect("release as app"));
}

/// What the README says of a narrower grant: the exact lease key alone does
/// not cover the watched range (the key and its request key), so etcd
/// refuses the watch and electors poll; acquire still works. (etcd 3.4's
/// refusal does not name the watch, so the subscription ends at the
/// request timeout as `Indeterminate`, not at once as `Auth`.)
#[tokio::test]
async fn a_user_granted_only_the_exact_key_cannot_watch_it() {
    let server = etcd_with_auth().await;
    let key = unique_key("auth-exact");
    let mut root = etcd_client::Client::connect(
        [server.url()],
        Some(etcd_client::ConnectOptions::new().with_user("root", PASSWORD)),
    )
    .await
    .expect("root client");
    root.role_add("exact").await.expect("add role exact");
    root.role_grant_permission("exact", Permission::read_write(key.as_str()))
        .await
        .expect("grant the exact key");
    root.user_add("exact", PASSWORD, None)
        .await
        .expect("add user exact");
    root.user_grant_role("exact", "exact")
        .await
        .expect("grant exact");
    let store = EtcdStore::new(
        EtcdConfig::new([server.addr().to_string()])
            .expect("config")
            .with_user("exact", PASSWORD),
    )
    .expect("store");
    let me = HolderId::new("me").expect("holder");
    let Acquire::Acquired(lease) = store
        .acquire(&key, &me, Duration::from_secs(60))
        .await
        .expect("acquire with the exact key granted")
    else {
        panic!("the key is free");
    };
    let err = store
        .watch(&key)
        .await
        .expect_err("a watch beyond the grant");
    assert!(
        matches!(err.kind(), ErrorKind::Auth | ErrorKind::Indeterminate),
        "{err}"
    );
    assert!(store.release(&lease).await.expect("release"));
}
