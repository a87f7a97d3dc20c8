//! Per-lease renewal state: one keep-alive stream per etcd lease, and the
//! revision at which the lease's key was last proven ours.

use std::sync::Arc;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use leader_core::{ErrorKind, FencingToken, HolderId, Lease, Result};
use tokio::time::Instant;

use super::EtcdStore;
use crate::error::timed_out;

#[derive(Default)]
pub(super) struct RenewState {
    pub(super) stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// The store revision at which the key was last proven to hold this
    /// token and holder (a forged or stale `Lease` with the same etcd lease
    /// id never matches it).
    pub(super) verified: Option<(i64, FencingToken, HolderId)>,
}

impl EtcdStore {
    pub(super) fn renew_slot(&self, id: i64) -> Arc<tokio::sync::Mutex<RenewState>> {
        let mut map = self
            .inner
            .renewals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(id).or_default().clone()
    }

    pub(super) fn forget_renewal(&self, id: i64) {
        self.inner
            .renewals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// One keep-alive round trip for lease `id`: `Some(revision)` of the answer
    /// when known, `None` when the lease is gone. Reuses the lease's stream,
    /// opening a new one when there is none or the old one broke.
    pub(super) async fn keep_alive(
        &self,
        client: &Client,
        state: &mut RenewState,
        lease: &Lease,
        id: i64,
    ) -> Result<Option<Option<i64>>> {
        let key = lease.key.as_str();
        let deadline = Instant::now() + self.request_timeout();
        // Taken out, so that a cancelled renewal drops the stream instead of
        // leaving an unread answer in it for the next renewal.
        if let Some((mut keeper, mut stream)) = state.stream.take() {
            let round = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout_at(deadline, round).await {
                Err(_) => return Err(timed_out("renew", key, self.request_timeout())),
                Ok(Ok(Some(resp))) => {
                    if resp.ttl() <= 0 {
                        return Ok(None);
                    }
                    let revision = resp.header().map(|h| h.revision());
                    state.stream = Some((keeper, stream));
                    return Ok(Some(revision));
                }
                // The stream broke or ended (a reconnect, a member change):
                // open a new one below, within the same deadline.
                Ok(Ok(None)) | Ok(Err(_)) => {}
            }
        }
        let open = self.retrying("renew", key, client, |mut c| async move {
            c.lease_keep_alive(id).await
        });
        match tokio::time::timeout_at(deadline, open).await {
            Err(_) => Err(timed_out("renew", key, self.request_timeout())),
            // etcd: "requested lease not found" (expired or revoked).
            Ok(Err(e)) if e.kind() == ErrorKind::NotHolder => Ok(None),
            Ok(Err(e)) => Err(e),
            Ok(Ok(pair)) => {
                state.stream = Some(pair);
                // The opening answer's header is not exposed: force a check.
                Ok(Some(None))
            }
        }
    }
}
