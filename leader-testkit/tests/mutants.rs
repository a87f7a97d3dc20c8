//! The suite catches broken stores: each deliberately broken wrapper of the
//! memory store must fail the cases that guard the broken rule. A suite
//! that passed these would be a suite that cannot fail.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leader_core::testing::FaultyStore;
use leader_core::{
    Acquire, Capabilities, HolderId, Lease, LeaseEvents, LeaseInfo, LeaseKey, LeaseStore,
    MemoryStore, Result,
};
use leader_testkit::suite::{CaseOutcome, FaultyLink, Fixture, LinkedClient, Profile, run_case};

#[derive(Debug, Clone, Copy)]
enum Bug {
    /// Acquire takes the lease even when someone else holds it.
    StealsHeldLeases,
    /// A re-acquire by the same holder keeps the old token.
    ReacquireKeepsToken,
    /// Renew checks the holder but not the token.
    RenewIgnoresToken,
    /// Release frees the key whoever asks.
    ReleaseIgnoresHolder,
    /// The server keeps leases for half their TTL.
    ExpiresEarly,
    /// Declares notifications but never sends any.
    SilentWatch,
    /// No bug: the wrapper passes every call through (the baseline).
    None,
}

#[derive(Debug)]
struct Mutant {
    inner: MemoryStore,
    bug: Bug,
}

#[async_trait]
impl LeaseStore for Mutant {
    fn kind(&self) -> &'static str {
        "mutant"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        match self.bug {
            Bug::StealsHeldLeases => match self.inner.acquire(key, holder, ttl).await? {
                Acquire::Held(_) => {
                    self.inner.force_release(key).await?;
                    self.inner.acquire(key, holder, ttl).await
                }
                acquired => Ok(acquired),
            },
            Bug::ReacquireKeepsToken => match self.inner.current(key).await? {
                Some(cur) if &cur.holder == holder => {
                    let lease = Lease::new(key.clone(), holder.clone(), cur.token, ttl);
                    self.inner.renew(&lease).await?;
                    Ok(Acquire::Acquired(lease))
                }
                _ => self.inner.acquire(key, holder, ttl).await,
            },
            Bug::ExpiresEarly if !ttl.is_zero() => {
                let got = self
                    .inner
                    .acquire(key, holder, (ttl / 2).max(Duration::from_millis(1)))
                    .await?;
                Ok(match got {
                    Acquire::Acquired(mut lease) => {
                        lease.ttl = ttl;
                        Acquire::Acquired(lease)
                    }
                    held => held,
                })
            }
            _ => self.inner.acquire(key, holder, ttl).await,
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        match self.bug {
            Bug::RenewIgnoresToken => match self.inner.current(&lease.key).await? {
                Some(cur) if cur.holder == lease.holder => {
                    let mut real = lease.clone();
                    real.token = cur.token;
                    self.inner.renew(&real).await
                }
                _ => self.inner.renew(lease).await,
            },
            Bug::ExpiresEarly => {
                let mut half = lease.clone();
                half.ttl = (lease.ttl / 2).max(Duration::from_millis(1));
                self.inner.renew(&half).await
            }
            _ => self.inner.renew(lease).await,
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        match self.bug {
            Bug::ReleaseIgnoresHolder => Ok(self.inner.force_release(&lease.key).await?.is_some()),
            _ => self.inner.release(lease).await,
        }
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.inner.current(key).await
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.inner.force_release(key).await
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        match self.bug {
            Bug::SilentWatch => {
                let (tx, events) = LeaseEvents::channel(1);
                // Keep the sender alive so the subscription looks up.
                tokio::spawn(async move {
                    tx.closed().await;
                });
                Ok(events)
            }
            _ => self.inner.watch(key).await,
        }
    }
}

struct MutantFixture(Arc<Mutant>);

#[async_trait]
impl Fixture for MutantFixture {
    fn name(&self) -> String {
        format!("mutant {:?}", self.0.bug)
    }
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(self.0.clone())
    }
    fn profile(&self) -> Profile {
        Profile::paused_time()
    }
    fn links(&self) -> bool {
        true
    }
    async fn linked_client(&self) -> Result<Option<LinkedClient>> {
        let link = Arc::new(FaultyStore::new(self.0.clone()));
        Ok(Some((link.clone(), Box::new(FaultyLink(link)))))
    }
}

async fn assert_caught(bug: Bug, cases: &[&str]) {
    for case in cases {
        let fixture = Arc::new(MutantFixture(Arc::new(Mutant {
            inner: MemoryStore::new(),
            bug,
        })));
        let report = run_case(fixture, case).await;
        assert!(
            matches!(report.outcome, CaseOutcome::Failed(_)),
            "{case} did not catch {bug:?}: {report}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_steals_held_leases_is_caught() {
    assert_caught(
        Bug::StealsHeldLeases,
        &[
            "exclusivity",
            "concurrent_acquirers_one_wins",
            "election_one_leader",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_keeps_the_token_on_reacquire_is_caught() {
    assert_caught(
        Bug::ReacquireKeepsToken,
        &[
            "same_holder_acquires_again_with_a_new_token",
            "tokens_strictly_increase",
            "non_holders_cannot_renew_or_release",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_renew_ignores_the_token_is_caught() {
    assert_caught(
        Bug::RenewIgnoresToken,
        &[
            "same_holder_acquires_again_with_a_new_token",
            "non_holders_cannot_renew_or_release",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_release_ignores_the_holder_is_caught() {
    assert_caught(
        Bug::ReleaseIgnoresHolder,
        &[
            "non_holders_cannot_renew_or_release",
            "release_then_acquire_again",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_expires_early_is_caught() {
    assert_caught(
        Bug::ExpiresEarly,
        &[
            "expiry_frees_the_resource",
            "renew_extends_the_lease",
            "current_reports_holder_token_and_remaining",
            // The partitioned leader still believes when the store already
            // gave the lease away: the history checker must see the overlap.
            "election_partitioned_leader_steps_down",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_declares_notifications_but_sends_none_is_caught() {
    assert_caught(
        Bug::SilentWatch,
        &[
            "release_notifications_arrive",
            // Followers trust a subscription that claims to push expiries
            // and stop polling; a silent one leaves the seat empty.
            "election_partitioned_leader_steps_down",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_unbroken_wrapper_passes_the_same_cases() {
    // Guards the mutants themselves: without the bug, each case passes.
    for (bug, case) in [
        (Bug::None, "exclusivity"),
        (Bug::None, "tokens_strictly_increase"),
        (Bug::None, "expiry_frees_the_resource"),
        (Bug::None, "election_one_leader"),
        (Bug::None, "election_partitioned_leader_steps_down"),
        (Bug::None, "release_notifications_arrive"),
        (Bug::SilentWatch, "exclusivity"),
    ] {
        let fixture = Arc::new(MutantFixture(Arc::new(Mutant {
            inner: MemoryStore::new(),
            bug,
        })));
        let report = run_case(fixture, case).await;
        assert!(matches!(report.outcome, CaseOutcome::Passed(_)), "{report}");
    }
}
