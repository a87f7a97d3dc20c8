//! The testkit's conformance suite (store and election cases, chosen by the
//! store's capabilities) against a private single-member etcd. Each case is
//! its own test with its own server; the server can be stopped and
//! restarted, so the store-down and store-back cases run too. The cases
//! that do not apply to etcd are pinned below.

use std::sync::Arc;

use etcd_client::GetOptions;
use leader_core::LeaseStore;
use leader_etcd::EtcdStore;
use leader_testkit::servers::EtcdServer;
use leader_testkit::suite::{ResourceCounts, ServerFixture};

async fn fixture() -> ServerFixture<EtcdServer> {
    let server = EtcdServer::from_env_or_start()
        .await
        .expect("a private etcd (Debian package etcd-server)");
    ServerFixture::new("etcd", server, |url| async move {
        // Short request timeouts: a stopped server is noticed quickly.
        let url = format!("{url}?request_timeout=1s&connect_timeout=300ms");
        Ok(Arc::new(EtcdStore::from_url(&url)?) as Arc<dyn LeaseStore>)
    })
    .with_resource_counter(count_resources)
}

/// etcd's server-side resources a client could leak: leases and keys.
async fn count_resources(url: String) -> leader_core::Result<ResourceCounts> {
    let failed = |e: etcd_client::Error| {
        leader_core::Error::unavailable(format!("counting etcd resources: {e}"))
    };
    let mut client = etcd_client::Client::connect([url], None)
        .await
        .map_err(failed)?;
    let leases = client.leases().await.map_err(failed)?.leases().len() as u64;
    let keys = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .map_err(failed)?
        .count();
    Ok(ResourceCounts::from([
        ("leases".to_owned(), leases),
        ("keys".to_owned(), u64::try_from(keys).unwrap_or(0)),
    ]))
}

// etcd is not session-bound, and it notifies.
leader_testkit::conformance_tests!(
    fixture().await,
    not_applicable = [session_loss_frees_the_resource, watch_unsupported_is_typed]
);
