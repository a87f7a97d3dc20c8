//! TLS with a custom CA generated at test time: the right CA connects, a
//! wrong CA is refused, and a client certificate works against an etcd
//! that requires one.

mod support;

use std::time::Duration;

use leader_core::{Acquire, HolderId, LeaseStore};
use leader_etcd::{EtcdConfig, EtcdStore, TlsConfig};
use leader_testkit::wait::eventually;
use support::tls::{TestCa, TlsEtcd};
use support::{PATIENCE, unique_key};

const TTL: Duration = Duration::from_secs(5);

async fn assert_works(store: &EtcdStore) {
    let key = unique_key("tls");
    // The server may still be starting: wait until it answers.
    eventually(PATIENCE, "etcd answers over TLS", || async {
        store.current(&key).await.is_ok()
    })
    .await;
    let me = HolderId::new("me").expect("holder");
    let Acquire::Acquired(lease) = store.acquire(&key, &me, TTL).await.expect("acquire") else {
        panic!("the key is free");
    };
    store.renew(&lease).await.expect("renew over TLS");
    assert!(store.release(&lease).await.expect("release over TLS"));
}

#[tokio::test]
async fn the_right_ca_connects_and_a_wrong_ca_is_refused() {
    let ca = TestCa::new("leader-etcd test CA");
    let server = TlsEtcd::start(&ca, false);
    let url = format!(
        "etcds://127.0.0.1:{}?ca={}&request_timeout=1s&connect_timeout=500ms",
        server.port,
        server.ca_file.display()
    );
    assert_works(&EtcdStore::from_url(&url).expect("store")).await;

    let other = TestCa::new("some other CA");
    let wrong = server.file("wrong-ca.pem", other.pem());
    let store = EtcdStore::from_url(&format!(
        "https://127.0.0.1:{}?ca={}&request_timeout=1s&connect_timeout=500ms",
        server.port,
        wrong.display()
    ))
    .expect("store");
    let err = store
        .current(&unique_key("wrong-ca"))
        .await
        .expect_err("a server certificate from an untrusted CA must be refused");
    assert_eq!(err.kind(), leader_core::ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("TLS handshake"), "{err}");

    // Plain HTTP against a TLS port does not work either.
    let plain = EtcdStore::from_url(&format!(
        "etcd://127.0.0.1:{}?request_timeout=1s&connect_timeout=500ms",
        server.port
    ))
    .expect("store");
    plain
        .current(&unique_key("plain"))
        .await
        .expect_err("plain text against a TLS port");
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    let ca = TestCa::new("leader-etcd mTLS CA");
    let server = TlsEtcd::start(&ca, true);
    let client = ca.sign("leader-etcd client");
    let config = EtcdConfig::new([format!("https://127.0.0.1:{}", server.port)])
        .expect("config")
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_millis(500));
    let tls = TlsConfig::new()
        .with_ca_pem(ca.pem())
        .expect("ca")
        .with_identity_pem(client.cert.clone(), client.key.clone())
        .expect("identity");
    assert_works(&EtcdStore::new(config.clone().with_tls(tls)).expect("store")).await;

    let without = TlsConfig::new().with_ca_pem(ca.pem()).expect("ca");
    let store = EtcdStore::new(config.with_tls(without)).expect("store");
    store
        .current(&unique_key("no-client-cert"))
        .await
        .expect_err("the server requires a client certificate");
    // The private key never shows in Debug.
    let debug = format!("{store:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

/// Set by [`a_ca_in_the_system_store_is_trusted_without_a_ca_option`] for
/// the child process it starts: the URL that child connects to.

#[tokio::test]
async fn a_ca_in_the_system_store_is_trusted_without_a_ca_option() {
    let ca = TestCa::new("leader-etcd system-store CA");
    let server = TlsEtcd::start(&ca, false);
    let url = format!(
        "https://127.0.0.1:{}?request_timeout=1s&connect_timeout=500ms",
        server.port
    );
    // Control: this process's system store does not hold the test CA.
    let store = EtcdStore::from_url(&url).expect("store");
    eventually(
        PATIENCE,
        "etcd is up (its port accepts connections)",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", server.port))
                .await
                .is_ok()
        },
    )
    .await;
    let err = store
        .current(&unique_key("system-roots-control"))
        .await
        .expect_err("the test CA is not in this process's system store");
    assert!(err.to_string().contains("TLS handshake"), "{err}");

    leader_testkit::system_roots::run_child("system_roots_child", &server.ca_file, &url, &[]).await;
}

/// Not a check on its own: the child process of
/// `a_ca_in_the_system_store_is_trusted_without_a_ca_option`, started with
/// `leader_testkit::system_roots::run_child`.
#[tokio::test]
#[ignore = "run by the system-roots test in a child process with SSL_CERT_FILE set"]
async fn system_roots_child() {
    let url = leader_testkit::system_roots::child_url();
    assert_works(&EtcdStore::from_url(&url).expect("store")).await;
    println!("{}", leader_testkit::system_roots::CHILD_OK);
}
