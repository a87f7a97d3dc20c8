//! User/password authentication against an etcd with auth enabled: the
//! right credentials work, wrong or missing ones fail with `Auth`, and the
//! password never shows in errors.

mod support;

use std::time::Duration;

use leader_core::{Acquire, ErrorKind, HolderId, LeaseStore};
use leader_etcd::{EtcdConfig, EtcdStore};
use leader_testkit::servers::EtcdServer;
use support::{raw_client, unique_key};

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
