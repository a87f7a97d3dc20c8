//! The testkit's conformance suite (store and election cases, chosen by the
//! store's capabilities) against a private single-member etcd. Each case is
//! its own test with its own server; the server can be stopped and
//! restarted, so the store-down and store-back cases run too.

use std::sync::Arc;

use leader_core::LeaseStore;
use leader_etcd::EtcdStore;
use leader_testkit::servers::EtcdServer;
use leader_testkit::suite::ServerFixture;

async fn fixture() -> ServerFixture<EtcdServer> {
    let server = EtcdServer::from_env_or_start()
        .await
        .expect("a private etcd (Debian package etcd-server)");
    ServerFixture::new("etcd", server, |url| async move {
        // Short request timeouts: a stopped server is noticed quickly.
        let url = format!("{url}?request_timeout=1s&connect_timeout=300ms");
        Ok(Arc::new(EtcdStore::from_url(&url)?) as Arc<dyn LeaseStore>)
    })
}

leader_testkit::conformance_tests!(fixture().await);
