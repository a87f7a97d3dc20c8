//! RedisStore over TLS, with a CA and a server certificate generated at test
//! time (rcgen) and a TLS-only client port.

use std::time::Duration;

use leader_core::{Acquire, ErrorKind, HolderId, LeaseEvent, LeaseKey, LeaseStore};
use leader_redis::{RedisConfig, RedisStore};
use leader_testkit::servers::{RedisServer, TlsFiles};

const TTL: Duration = Duration::from_secs(30);

/// A TLS redis-server, its certificate files and its TLS port.
async fn tls_server() -> (RedisServer, TlsFiles, u16) {
    let files = TlsFiles::generate().expect("TLS files");
    let server = RedisServer::start_tls(&files, &[])
        .await
        .expect("redis over TLS");
    let port = server.tls_port().expect("a TLS port");
    (server, files, port)
}

fn key(resource: &str) -> LeaseKey {
    LeaseKey::new(&format!("tls:{:016x}:", rand::random::<u64>()), resource).expect("valid key")
}

#[tokio::test]
async fn leases_and_notifications_work_over_tls_with_a_custom_ca() {
    let (_server, files, port) = tls_server().await;
    let ca = files.ca.display().to_string();
    for connection in [
        format!("rediss://127.0.0.1:{port}"),
        format!("127.0.0.1:{port},ssl=true,sslCaFile={ca},abortConnect=false"),
    ] {
        let store = RedisStore::new(
            RedisConfig::from_url(&connection)
                .expect("valid URL")
                .with_ca_file(&files.ca),
        )
        .expect("store");
        let k = key("svc");
        let a = HolderId::new("a").expect("holder");
        let mut events = store.watch(&k).await.expect("watch over TLS");
        let lease = match store.acquire(&k, &a, TTL).await.expect("acquire over TLS") {
            Acquire::Acquired(lease) => lease,
            other => panic!("{other:?}"),
        };
        store.renew(&lease).await.expect("renew over TLS");
        let info = store.current(&k).await.expect("current").expect("held");
        assert_eq!((info.holder, info.token), (a, lease.token));
        assert!(store.release(&lease).await.expect("release"));
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert_eq!(
            event.expect("event in time"),
            Some(LeaseEvent::Vacated),
            "{connection}"
        );
    }
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_unavailable_not_a_panic() {
    let (_server, _files, port) = tls_server().await;
    // Without the test CA the server's certificate is not trusted.
    let store = RedisStore::new(
        RedisConfig::from_url(&format!("rediss://127.0.0.1:{port}"))
            .expect("valid URL")
            .with_connect_timeout(Duration::from_secs(2)),
    )
    .expect("store");
    let err = store
        .acquire(&key("svc"), &HolderId::new("a").expect("holder"), TTL)
        .await
        .expect_err("untrusted certificate");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[test]
fn a_missing_or_empty_ca_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    let err = RedisStore::new(
        RedisConfig::from_url("rediss://127.0.0.1:6380")
            .expect("valid URL")
            .with_ca_file(&missing),
    )
    .expect_err("missing CA file");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("cannot read the CA file"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").expect("write");
    let err = RedisStore::new(
        RedisConfig::from_url("rediss://127.0.0.1:6380")
            .expect("valid URL")
            .with_ca_file(&empty),
    )
    .expect_err("no certificate in file");
    assert!(
        err.to_string().contains("holds no PEM certificate"),
        "{err}"
    );
}

/// Set by [`a_ca_in_the_system_store_is_trusted_without_a_ca_file`] for the
/// child process it starts: the URL that child connects to.

#[tokio::test]
async fn a_ca_in_the_system_store_is_trusted_without_a_ca_file() {
    let (_server, files, port) = tls_server().await;
    let url = format!("rediss://127.0.0.1:{port}");
    leader_testkit::system_roots::run_child("system_roots_child", &files.ca, &url, &[]).await;
}

/// Not a check on its own: the child process of
/// `a_ca_in_the_system_store_is_trusted_without_a_ca_file`, started with
/// `leader_testkit::system_roots::run_child`.
#[tokio::test]
#[ignore = "run by the system-roots test in a child process with SSL_CERT_FILE set"]
async fn system_roots_child() {
    let url = leader_testkit::system_roots::child_url();
    let store = RedisStore::new(
        RedisConfig::from_url(&url)
            .expect("valid URL")
            .with_connect_timeout(Duration::from_secs(5)),
    )
    .expect("store");
    let a = HolderId::new("a").expect("holder");
    let k = key("system-roots");
    let Acquire::Acquired(lease) = store.acquire(&k, &a, TTL).await.expect("acquire") else {
        panic!("the key is free");
    };
    store.renew(&lease).await.expect("renew over TLS");
    assert!(store.release(&lease).await.expect("release over TLS"));
    println!("{}", leader_testkit::system_roots::CHILD_OK);
}
