//! Per-lease renewal state (the revision at which the lease's key was last
//! proven ours), and the keep-alive round trip of a renewal on one of the
//! store's shared keep-alive streams (see [`super::keep_alive`]).
//!
//! The state is a cache: dropping it only costs the next renewal a read. It
//! is dropped on release and when a renewal finds the lease gone, and
//! otherwise once no renewal has used it for the lease's TTL plus a request
//! timeout (the lease has expired in etcd by then, unless renewed through
//! another store): a reaper task, running while there is any state, removes
//! such entries, and closes the shared keep-alive streams once none is left,
//! so a store whose holders gave up (renewals timed out, the elector stepped
//! down) keeps no stream open for its life.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::Client;
use leader_core::{Error, ErrorKind, FencingToken, HolderId, Lease, Result};
use tokio::time::Instant;

use super::keep_alive::Shared;
use super::records::ttl_seconds;
use super::{EtcdStore, Inner};
use crate::error::timed_out;

#[derive(Default)]
pub(super) struct RenewState {
    /// The store revision at which the key was last proven to hold this
    /// token and holder (a forged or stale `Lease` with the same etcd lease
    /// id never matches it).
    pub(super) verified: Option<(i64, FencingToken, HolderId)>,
}

/// One lease's renewal state and when it goes stale.
pub(super) struct Slot {
    /// Unused by any renewal until this instant, the entry is dropped.
    stale_at: Mutex<Instant>,
    pub(super) state: tokio::sync::Mutex<RenewState>,
}

/// Every lease's renewal state, by etcd lease id.
#[derive(Default)]
pub(super) struct Renewals {
    slots: Mutex<HashMap<i64, Arc<Slot>>>,
    /// Whether a reaper task is running.
    reaping: AtomicBool,
}

impl Renewals {
    fn slots(&self) -> MutexGuard<'_, HashMap<i64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many leases have renewal state.
    pub(super) fn len(&self) -> usize {
        self.slots().len()
    }

    /// Drops every entry stale at `now` that no renewal is using. Returns
    /// when the next entry goes stale, `None` when none is left.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut slots = self.slots();
        slots.retain(|_, slot| {
            let stale = *slot.stale_at.lock().unwrap_or_else(|e| e.into_inner()) <= now;
            !stale || slot.state.try_lock().is_err()
        });
        slots
            .values()
            .map(|slot| *slot.stale_at.lock().unwrap_or_else(|e| e.into_inner()))
            .min()
    }
}

/// Sweeps `inner`'s renewal state whenever an entry may have gone stale,
/// until none is left or the store is dropped.
async fn reap(inner: Weak<Inner>) {
    loop {
        let Some(store) = inner.upgrade() else { return };
        let renewals = &store.renewals;
        let next = match renewals.sweep(Instant::now()) {
            Some(next) => next,
            None => {
                // No lease left to renew: no stream to keep open.
                store.keep_alives.close_if_idle();
                renewals.reaping.store(false, Ordering::SeqCst);
                // An entry added since the sweep saw a running reaper and
                // started none: carry on for it.
                if renewals.len() == 0 || renewals.reaping.swap(true, Ordering::SeqCst) {
                    return;
                }
                continue;
            }
        };
        // Entries added later go stale no earlier than a TTL from now; one
        // with a shorter TTL than all before it is dropped at `next` at the
        // latest.
        let pause = next.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
        drop(store);
        tokio::time::sleep(pause).await;
    }
}

impl EtcdStore {
    /// The renewal state of lease `id` (made fresh if there is none), marked
    /// as used now by a renewal of `ttl`.
    pub(super) fn renew_slot(&self, id: i64, ttl: Duration) -> Arc<Slot> {
        let renewals = &self.inner.renewals;
        let stale_at = Instant::now()
            + Duration::from_secs(ttl_seconds(ttl).unsigned_abs())
            + self.request_timeout();
        let slot = renewals
            .slots()
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Slot {
                    stale_at: Mutex::new(stale_at),
                    state: tokio::sync::Mutex::default(),
                })
            })
            .clone();
        *slot.stale_at.lock().unwrap_or_else(|e| e.into_inner()) = stale_at;
        if !renewals.reaping.swap(true, Ordering::SeqCst) {
            tokio::spawn(reap(Arc::downgrade(&self.inner)));
        }
        slot
    }

    pub(super) fn forget_renewal(&self, id: i64) {
        self.inner.renewals.slots().remove(&id);
    }

    /// One keep-alive round trip for lease `id` on its shared keep-alive
    /// stream: `Some(revision)` of the answer when known, `None`
    /// when the lease is gone. Only the answer to a request sent by this call
    /// counts. Opens the stream when there is none; when it breaks before
    /// answering, sends once more on the next one, within the same deadline.
    pub(super) async fn keep_alive(
        &self,
        client: &Client,
        lease: &Lease,
        id: i64,
    ) -> Result<Option<Option<i64>>> {
        let key = lease.key.as_str();
        let deadline = Instant::now() + self.request_timeout();
        let mut waited_on = None;
        let round = self.keep_alive_round(client, key, id, &mut waited_on);
        match tokio::time::timeout_at(deadline, round).await {
            Ok(outcome) => outcome,
            Err(_) => {
                if let Some((shared, answered_before)) = waited_on {
                    self.inner
                        .keep_alives
                        .lane(id)
                        .drop_if_hung(&shared, answered_before);
                }
                Err(timed_out("renew", key, self.request_timeout()))
            }
        }
    }

    /// [`Self::keep_alive`] without its deadline; `waited_on` is the stream
    /// the last request was sent on.
    async fn keep_alive_round(
        &self,
        client: &Client,
        key: &str,
        id: i64,
        waited_on: &mut Option<(Arc<Shared>, u64)>,
    ) -> Result<Option<Option<i64>>> {
        let hub = self.inner.keep_alives.lane(id);
        let mut broke = false;
        // Bounded, so that no state of a stream can make this spin: each
        // pass either waits (opening, answer) or finds a closed stream,
        // which `live` no longer returns.
        for _ in 0..MAX_PASSES {
            let shared = match hub.live() {
                Some(shared) => shared,
                None => match self.open_keep_alive(client, key, id).await? {
                    Opened::Answered(outcome) => return Ok(outcome),
                    Opened::Live(shared) => shared,
                },
            };
            // Closed since: nothing was sent; take the next stream.
            let Some(pending) = shared.send(id) else {
                continue;
            };
            *waited_on = Some((shared, pending.answered_before));
            match pending.answer().await {
                Some(answer) => return Ok(answer.outcome()),
                // A keep-alive is idempotent: resend once on a new stream.
                None if !broke => broke = true,
                None => return Err(broken(key)),
            }
        }
        Err(broken(key))
    }

    /// Opens the shared keep-alive stream with a first request for `id`,
    /// unless another renewal did meanwhile.
    ///
    /// The attempt runs in a task of its own, which holds the opening lock
    /// until it is over: a renewal that gives up (its deadline passed) does
    /// not cancel the attempt every other renewal waits for. Cancelled
    /// attempts, each restarted by the next waiter, could otherwise keep a
    /// store under load from ever re-opening its stream.
    async fn open_keep_alive(&self, client: &Client, key: &str, id: i64) -> Result<Opened> {
        let hub = self.inner.keep_alives.lane(id);
        let opening = hub.opening.clone().lock_owned().await;
        if let Some(shared) = hub.live() {
            return Ok(Opened::Live(shared));
        }
        if hub.backing_off() {
            return Err(Error::unavailable(
                "the shared etcd keep-alive stream is down; the last attempt to re-open it failed",
            )
            .with_store("etcd")
            .with_operation("renew")
            .with_key(key));
        }
        let (store, client, owned_key) = (self.clone(), client.clone(), key.to_owned());
        let attempt = tokio::spawn(async move {
            let _opening = opening;
            store.open_now(&client, &owned_key, id).await
        });
        attempt.await.unwrap_or_else(|e| {
            Err(Error::indeterminate(format!(
                "opening the shared etcd keep-alive stream failed: {e}"
            ))
            .with_store("etcd")
            .with_operation("renew")
            .with_key(key))
        })
    }

    /// One attempt to open the shared keep-alive stream with a first request
    /// for `id`.
    async fn open_now(&self, client: &Client, key: &str, id: i64) -> Result<Opened> {
        let hub = self.inner.keep_alives.lane(id);
        let open = self.retrying("renew", key, client, |mut c| async move {
            c.lease_keep_alive(id).await
        });
        match open.await {
            // etcd: "requested lease not found" (expired or revoked). Only
            // this lease is concerned: the next renewal opens the stream.
            Err(e) if e.kind() == ErrorKind::NotHolder => Ok(Opened::Answered(None)),
            Err(e) => {
                hub.open_failed();
                Err(e)
            }
            Ok((keeper, responses)) => {
                hub.start(keeper, responses);
                // The opening answer's header is not exposed: force a check.
                Ok(Opened::Answered(Some(None)))
            }
        }
    }
}

/// Passes of a keep-alive round over streams that closed under it.
const MAX_PASSES: usize = 4;

fn broken(key: &str) -> Error {
    Error::indeterminate("the shared etcd keep-alive stream broke before answering")
        .with_store("etcd")
        .with_operation("renew")
        .with_key(key)
}

/// What opening the shared keep-alive stream gave a renewal.
enum Opened {
    /// This renewal opened it: the opening round trip answered it.
    Answered(Option<Option<i64>>),
    /// Another renewal had opened it: send on it.
    Live(Arc<Shared>),
}

#[cfg(test)]
mod tests {
    use leader_core::{Acquire, HolderId, LeaseKey, LeaseStore};
    use leader_testkit::metrics::Metrics;
    use leader_testkit::servers::EtcdServer;

    use super::*;

    /// Keep-alive streams open on the server (started minus finished).
    async fn live_keep_alive_streams(server: &EtcdServer) -> f64 {
        let m = Metrics::scrape(server.addr()).await.expect("etcd metrics");
        let method = [("grpc_method", "LeaseKeepAlive")];
        m.sum("grpc_server_started_total", &method) - m.sum("grpc_server_handled_total", &method)
    }

    /// A lease whose holder stops renewing without releasing (its renewals
    /// timed out, its elector stepped down or aborted) loses its renewal
    /// state and keep-alive stream once it has certainly expired.
    #[tokio::test]
    async fn an_abandoned_lease_loses_its_keep_alive_stream_after_it_expired() {
        let server = EtcdServer::start().await.expect("etcd");
        let request_timeout = Duration::from_millis(500);
        let store = EtcdStore::from_url(&format!(
            "{}?request_timeout={}ms",
            server.url(),
            request_timeout.as_millis()
        ))
        .expect("store");
        let key = LeaseKey::new("leader-etcd-unit:", "abandoned").expect("key");
        let holder = HolderId::new("h").expect("holder");
        let ttl = Duration::from_secs(1);
        let Acquire::Acquired(lease) = store.acquire(&key, &holder, ttl).await.expect("acquire")
        else {
            panic!("a fresh key is free");
        };
        store.renew(&lease).await.expect("renew");
        assert_eq!(store.inner.renewals.len(), 1);
        assert_eq!(live_keep_alive_streams(&server).await, 1.0);
        let abandoned = Instant::now();

        // No renewal from now on; the lease expires in etcd after its TTL.
        let bound = ttl + request_timeout + Duration::from_secs(10);
        loop {
            if store.inner.renewals.len() == 0 && live_keep_alive_streams(&server).await == 0.0 {
                break;
            }
            assert!(
                abandoned.elapsed() < bound,
                "state of an expired lease still kept after {:?}: {} entries, {} streams",
                abandoned.elapsed(),
                store.inner.renewals.len(),
                live_keep_alive_streams(&server).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The state was not dropped early: the lease's TTL had passed.
        assert!(
            abandoned.elapsed() >= ttl,
            "dropped after {:?}",
            abandoned.elapsed()
        );
        assert!(
            store.renew(&lease).await.is_err(),
            "the expired lease cannot be renewed"
        );
    }
}
