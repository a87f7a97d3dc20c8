//! The connection and request plumbing of [`EtcdStore`]: connect on first
//! use, bound every request by the request timeout, resend what was
//! certainly not processed, and the reads the operations share.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, KeyValue, Txn, TxnResponse};
use leader_core::{Error, ErrorKind, LeaseInfo, Result};
use tokio::time::Instant;

use super::EtcdStore;
use super::value::term_of;
use crate::error::{classify, from_etcd, is_lease_not_found, timed_out};

impl EtcdStore {
    pub(super) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout()
    }

    /// The shared client, connecting on first use. A failed connection is not
    /// cached: the next call tries again.
    pub(crate) async fn client(&self, op: &'static str, key: &str) -> Result<Client> {
        let config = &self.inner.config;
        let bound = config.connect_timeout() + config.request_timeout();
        let connect = self.inner.client.get_or_try_init(|| async {
            Client::connect(config.endpoint_urls(), Some(config.connect_options())).await
        });
        match tokio::time::timeout(bound, connect).await {
            Ok(Ok(client)) => Ok(client.clone()),
            Ok(Err(e)) => Err(from_etcd(op, key, e)),
            Err(_) => Err(Error::unavailable(format!(
                "could not connect to etcd within {bound:?}"
            ))
            .with_store("etcd")
            .with_operation(op)
            .with_key(key)),
        }
    }

    /// Runs an etcd request under the request timeout, sending it again while
    /// it was certainly not processed ([`ErrorKind::Unavailable`]: a refused
    /// connection or a member without a leader), a few times per endpoint.
    ///
    /// This is what makes a dead cluster member harmless: etcd-client's
    /// balancer keeps picking the dead member's endpoint now and then, and
    /// those requests fail at connect; resending reaches a live member. A
    /// request that may have been processed is never resent.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        client: &Client,
        send: F,
    ) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let t = self.request_timeout();
        let deadline = Instant::now() + t;
        let attempts = 2 * self.inner.config.endpoints().len() + 1;
        let mut pause = Duration::from_millis(2);
        let mut attempt = 1;
        loop {
            match tokio::time::timeout_at(deadline, send(client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let retry = attempt < attempts
                        && classify(&e) == ErrorKind::Unavailable
                        && Instant::now() + pause < deadline;
                    if !retry {
                        return Err(from_etcd(op, key, e));
                    }
                    tracing::trace!(op, attempt, error = %e, "etcd request not sent; resending");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    attempt += 1;
                }
                Err(_) => return Err(timed_out(op, key, t)),
            }
        }
    }

    /// Revokes `id` in the background, ignoring the outcome (the lease expires
    /// on its own if this fails).
    pub(super) fn revoke_in_background(&self, client: &Client, id: i64) {
        if id == 0 || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut client = client.clone();
        let t = self.request_timeout();
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(t, client.lease_revoke(id)).await
                && !is_lease_not_found(&e)
            {
                tracing::debug!(lease = id, error = %e, "etcd lease revoke failed");
            }
        });
    }

    /// Revokes `id` and waits (bounded), ignoring failure.
    pub(super) async fn revoke_now(&self, client: &Client, id: i64) {
        if id == 0 {
            return;
        }
        let mut client = client.clone();
        let revoke = client.lease_revoke(id);
        if let Ok(Err(e)) = tokio::time::timeout(self.request_timeout(), revoke).await
            && !is_lease_not_found(&e)
        {
            tracing::debug!(lease = id, error = %e, "etcd lease revoke failed");
        }
    }

    /// The remaining TTL of lease `id`, if it has one.
    pub(super) async fn remaining(
        &self,
        client: &Client,
        op: &'static str,
        key: &str,
        id: i64,
    ) -> Result<Option<Duration>> {
        if id == 0 {
            return Ok(None);
        }
        let resp = self
            .retrying(op, key, client, |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?;
        // etcd truncates the remaining TTL to whole seconds, so the lease
        // ends within one second after what it reports: report that upper
        // bound, so that a follower waiting for the expiry wakes after it,
        // not once a millisecond while etcd says 0. -1: the lease expired and
        // its key is being deleted, which etcd does within a second too.
        let whole = u64::try_from(resp.ttl()).unwrap_or(0);
        Ok(Some(Duration::from_secs(whole + 1)))
    }

    pub(super) async fn info(
        &self,
        client: &Client,
        op: &'static str,
        key: &str,
        kv: &KeyValue,
    ) -> Result<LeaseInfo> {
        let term = term_of(op, key, kv)?;
        let remaining = self.remaining(client, op, key, kv.lease()).await?;
        Ok(LeaseInfo::new(term.holder, term.token, remaining).with_metadata(term.metadata))
    }

    pub(super) async fn get_kv(
        &self,
        client: &Client,
        op: &'static str,
        key: &str,
    ) -> Result<(Option<KeyValue>, i64)> {
        let mut resp = self
            .retrying(
                op,
                key,
                client,
                |mut c| async move { c.get(key, None).await },
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.take_kvs().into_iter().next(), revision))
    }

    pub(super) async fn send_txn(
        &self,
        op: &'static str,
        key: &str,
        client: &Client,
        txn: Txn,
    ) -> Result<TxnResponse> {
        self.retrying(op, key, client, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }
}
