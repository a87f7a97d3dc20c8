//! The suite catches broken stores: each deliberately broken wrapper of the
//! memory store must fail the cases that guard the broken rule. A suite
//! that passed these would be a suite that cannot fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leader_core::{
    Acquire, Error, ErrorKind, HolderId, Lease, LeaseEvents, LeaseKey, LeaseStore, MAX_TTL,
    MemoryStore, Metadata, Result,
};
use leader_testkit::suite::{
    CaseOutcome, Fixture, Link, LinkedClient, Profile, ResourceCounts, ServerControl, run_case,
};
use leader_testkit::wrap::{Call, Hooks, Reply, Wrapped};
use tokio::sync::Notify;
use tokio::time::sleep;

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
    /// Leases ignore their TTL, and release answers true but frees nothing.
    LeasesNeverEnd,
    /// Release answers true but frees nothing (the lease expires later).
    ReleaseDoesNothing,
    /// Renew of a key nobody holds answers Ok (a missing "only if it
    /// exists" condition).
    RenewSucceedsOnFreeKey,
    /// Renew extends whatever lease is on the key before checking that it
    /// is the caller's (then reports NotHolder).
    RenewExtendsBeforeCheck,
    /// Acquire takes the key without a TTL and sets the TTL in a second
    /// step (SETNX, then EXPIRE): a call dropped in between holds forever.
    SetThenExpire,
    /// A renewal dropped in flight breaks the client's connection state:
    /// its next release fails.
    CancelledRenewBreaksRelease,
    /// While the store is down, acquisitions are queued by the client and
    /// sent once it is back, even if the caller gave up.
    QueuesWhileDown,
    /// A client-side watchdog re-locks a lock it finds free, forever (it
    /// outlives release and shutdown).
    WatchdogRelocks,
    /// Every acquire leaves a server-side connection behind.
    LeaksPerAcquire,
    /// Declares metadata (the inner store's capabilities) but does not
    /// forward the metadata calls: the trait's defaults answer Unsupported.
    MetadataNotForwarded,
    /// `update_metadata` checks the holder but not the token.
    MetadataUpdateIgnoresToken,
    /// Declares resign requests and answers `true` for the current term,
    /// but the request never reaches the holder.
    ResignRequestLost,
    /// No bug: the wrapper passes every call through (the baseline).
    None,
}

/// State shared by every client of one mutant store ("the server").
#[derive(Debug, Default)]
struct Server {
    down: AtomicBool,
    up: Notify,
    leaked: AtomicU64,
}

/// One client's network link: cut (calls hang) or slowed (calls take
/// longer, inside the call: the request is on the wire).
#[derive(Debug, Default)]
struct LinkState {
    cut: AtomicBool,
    delay_us: AtomicU64,
}

/// The broken client: a hook on a [`Wrapped`] memory store. `inner` is the
/// same memory store, for the commands a bug sends outside the call.
#[derive(Debug)]
struct Mutant {
    inner: MemoryStore,
    bug: Bug,
    server: Arc<Server>,
    link: Arc<LinkState>,
    /// `CancelledRenewBreaksRelease`: this client's connection is broken.
    poisoned: Arc<AtomicBool>,
}

impl Mutant {
    /// What every call goes through: the server being down, then the link.
    async fn wire(&self) -> Result<()> {
        if self.server.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable("mutant server down"));
        }
        if self.link.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let delay = self.link.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            sleep(Duration::from_micros(delay)).await;
        }
        Ok(())
    }
}

/// Sets a flag when dropped before `disarm`.
struct Poison(Option<Arc<AtomicBool>>);

impl Poison {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Poison {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Hooks for Mutant {
    fn kind(&self, _inner: &dyn LeaseStore) -> &'static str {
        "mutant"
    }

    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        match call {
            Call::Acquire {
                key,
                holder,
                ttl,
                metadata: None,
            } => Reply::Acquire(self.acquire(key, holder, ttl).await),
            Call::Acquire {
                key,
                holder,
                ttl,
                metadata: Some(metadata),
            } => Reply::Acquire(self.acquire_with_metadata(key, holder, ttl, metadata).await),
            Call::UpdateMetadata(lease, metadata) => {
                Reply::UpdateMetadata(self.update_metadata(lease, metadata).await)
            }
            Call::Renew(lease) => Reply::Renew(self.renew(lease).await),
            Call::Release(lease) => Reply::Release(self.release(lease).await),
            Call::Watch(key) => Reply::Watch(self.watch(key).await),
            Call::RequestResign(key, token) if matches!(self.bug, Bug::ResignRequestLost) => {
                Reply::RequestResign(match self.wire().await {
                    Ok(()) => self
                        .inner
                        .current(key)
                        .await
                        .map(|held| held.is_some_and(|h| h.token == token)),
                    Err(e) => Err(e),
                })
            }
            _ => match self.wire().await {
                Ok(()) => call.run(inner).await,
                Err(e) => Reply::failed(call.op(), e),
            },
        }
    }
}

impl Mutant {
    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        if let Bug::QueuesWhileDown = self.bug
            && self.server.down.load(Ordering::SeqCst)
        {
            let (inner, server, key, holder) = (
                self.inner.clone(),
                self.server.clone(),
                key.clone(),
                holder.clone(),
            );
            // The queued command outlives its caller.
            let queued = tokio::spawn(async move {
                while server.down.load(Ordering::SeqCst) {
                    server.up.notified().await;
                }
                inner.acquire(&key, &holder, ttl).await
            });
            return queued
                .await
                .map_err(|e| Error::indeterminate(format!("queued acquire: {e}")))?;
        }
        self.wire().await?;
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
            Bug::LeasesNeverEnd => {
                leader_core::check_ttl(ttl)?;
                Ok(match self.inner.acquire(key, holder, MAX_TTL).await? {
                    Acquire::Acquired(mut lease) => {
                        lease.ttl = ttl;
                        Acquire::Acquired(lease)
                    }
                    held => held,
                })
            }
            Bug::SetThenExpire => {
                leader_core::check_ttl(ttl)?;
                match self.inner.acquire(key, holder, MAX_TTL).await? {
                    Acquire::Acquired(mut lease) => {
                        // The second round trip.
                        sleep(Duration::from_millis(10)).await;
                        lease.ttl = ttl;
                        self.inner.renew(&lease).await?;
                        Ok(Acquire::Acquired(lease))
                    }
                    held => Ok(held),
                }
            }
            Bug::WatchdogRelocks => {
                let got = self.inner.acquire(key, holder, ttl).await?;
                if let Acquire::Acquired(_) = &got {
                    let (inner, key, holder) = (self.inner.clone(), key.clone(), holder.clone());
                    tokio::spawn(async move {
                        loop {
                            sleep(ttl / 4).await;
                            if let Ok(None) = inner.current(&key).await {
                                let _ = inner.acquire(&key, &holder, ttl).await;
                            }
                        }
                    });
                }
                Ok(got)
            }
            Bug::LeaksPerAcquire => {
                self.server.leaked.fetch_add(1, Ordering::SeqCst);
                self.inner.acquire(key, holder, ttl).await
            }
            _ => self.inner.acquire(key, holder, ttl).await,
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        let poison = Poison(
            matches!(self.bug, Bug::CancelledRenewBreaksRelease).then(|| self.poisoned.clone()),
        );
        self.wire().await?;
        let result = match self.bug {
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
            Bug::LeasesNeverEnd => {
                let mut forever = lease.clone();
                forever.ttl = MAX_TTL;
                self.inner.renew(&forever).await
            }
            Bug::RenewSucceedsOnFreeKey => match self.inner.current(&lease.key).await? {
                None => Ok(()),
                Some(_) => self.inner.renew(lease).await,
            },
            Bug::RenewExtendsBeforeCheck => match self.inner.current(&lease.key).await? {
                Some(cur) if cur.holder != lease.holder || cur.token != lease.token => {
                    let theirs = Lease::new(lease.key.clone(), cur.holder, cur.token, lease.ttl);
                    self.inner.renew(&theirs).await?;
                    Err(Error::new(ErrorKind::NotHolder, "not the holder"))
                }
                _ => self.inner.renew(lease).await,
            },
            _ => self.inner.renew(lease).await,
        };
        poison.disarm();
        result
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.wire().await?;
        match self.bug {
            Bug::ReleaseIgnoresHolder => Ok(self.inner.force_release(&lease.key).await?.is_some()),
            Bug::ReleaseDoesNothing | Bug::LeasesNeverEnd => Ok(self
                .inner
                .current(&lease.key)
                .await?
                .is_some_and(|c| c.holder == lease.holder && c.token == lease.token)),
            Bug::CancelledRenewBreaksRelease if self.poisoned.load(Ordering::SeqCst) => Err(
                Error::indeterminate("the connection is in an unknown state after a dropped call"),
            ),
            _ => self.inner.release(lease).await,
        }
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        self.wire().await?;
        match self.bug {
            Bug::MetadataNotForwarded => Err(Error::unsupported("not forwarded")),
            _ => {
                self.inner
                    .acquire_with_metadata(key, holder, ttl, metadata)
                    .await
            }
        }
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        self.wire().await?;
        match self.bug {
            Bug::MetadataNotForwarded => Err(Error::unsupported("not forwarded")),
            Bug::MetadataUpdateIgnoresToken => match self.inner.current(&lease.key).await? {
                Some(cur) if cur.holder == lease.holder => {
                    let mut real = lease.clone();
                    real.token = cur.token;
                    self.inner.update_metadata(&real, metadata).await
                }
                _ => self.inner.update_metadata(lease, metadata).await,
            },
            _ => self.inner.update_metadata(lease, metadata).await,
        }
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        self.wire().await?;
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

/// The mutant store as a suite fixture: a client per call (sharing one
/// memory store and one "server"), linked clients, server control, and a
/// count of leaked server-side connections.
struct MutantFixture {
    inner: MemoryStore,
    bug: Bug,
    server: Arc<Server>,
}

impl MutantFixture {
    fn new(bug: Bug) -> Self {
        MutantFixture {
            inner: MemoryStore::new(),
            bug,
            server: Arc::new(Server::default()),
        }
    }

    fn client(&self, link: Arc<LinkState>) -> Arc<Wrapped<Mutant>> {
        let mutant = Mutant {
            inner: self.inner.clone(),
            bug: self.bug,
            server: self.server.clone(),
            link,
            poisoned: Arc::new(AtomicBool::new(false)),
        };
        Arc::new(Wrapped::new(Arc::new(self.inner.clone()), mutant))
    }
}

struct MutantLink(Arc<LinkState>);

impl Link for MutantLink {
    fn cut(&self, _server_notices_after: Duration) {
        self.0.cut.store(true, Ordering::SeqCst);
    }
    fn heal(&self) {
        self.0.cut.store(false, Ordering::SeqCst);
        self.0.delay_us.store(0, Ordering::SeqCst);
    }
    fn slow(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.0.delay_us.store(us, Ordering::SeqCst);
    }
}

#[async_trait]
impl Fixture for MutantFixture {
    fn name(&self) -> String {
        format!("mutant {:?}", self.bug)
    }
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(self.client(Arc::default()))
    }
    fn control(&self) -> Option<&dyn ServerControl> {
        Some(self)
    }
    fn profile(&self) -> Profile {
        Profile::paused_time()
    }
    fn links(&self) -> bool {
        true
    }
    async fn linked_client(&self) -> Result<Option<LinkedClient>> {
        let link = Arc::new(LinkState::default());
        Ok(Some((
            self.client(link.clone()),
            Box::new(MutantLink(link)),
        )))
    }
    fn counts_resources(&self) -> bool {
        true
    }
    async fn resource_counts(&self) -> Result<ResourceCounts> {
        let leaked = self.server.leaked.load(Ordering::SeqCst);
        Ok(ResourceCounts::from([(
            "connections".to_owned(),
            1 + leaked,
        )]))
    }
}

#[async_trait]
impl ServerControl for MutantFixture {
    async fn stop(&self) -> leader_testkit::Result<()> {
        self.server.down.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn start(&self) -> leader_testkit::Result<()> {
        self.server.down.store(false, Ordering::SeqCst);
        self.server.up.notify_waiters();
        Ok(())
    }
}

async fn assert_caught(bug: Bug, cases: &[&str]) {
    for case in cases {
        let report = run_case(Arc::new(MutantFixture::new(bug)), case).await;
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
            // So does an observer: it would not see the release in time.
            "observer_follows_the_seat",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_leases_never_end_is_caught_by_the_late_answer_cases() {
    // Until the core refuses late answers (issue 12) these cases also fail
    // on the unbroken store; afterwards this mutant still fails them: the
    // lease taken by the late answer must be released or expire.
    assert_caught(
        Bug::LeasesNeverEnd,
        &[
            "election_late_answer_starts_no_term",
            "lock_late_answer_gives_no_guard",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_release_does_nothing_is_caught() {
    assert_caught(
        Bug::ReleaseDoesNothing,
        &[
            "lock_guard_drop_releases",
            "election_resign_hands_over",
            "lock_waiter_takes_the_released_lock",
            "lock_dropped_waits_leave_nothing_held",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_renew_succeeds_on_a_free_key_is_caught() {
    assert_caught(
        Bug::RenewSucceedsOnFreeKey,
        &["lock_forced_release_fires_lost"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_renew_extends_before_checking_is_caught() {
    assert_caught(
        Bug::RenewExtendsBeforeCheck,
        &["takeover_leaves_the_new_holder_untouched"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_sets_the_ttl_in_a_second_step_is_caught() {
    assert_caught(
        Bug::SetThenExpire,
        &["cancelled_acquires_never_hold_forever"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_broken_by_a_dropped_renewal_is_caught() {
    assert_caught(
        Bug::CancelledRenewBreaksRelease,
        &["election_shutdown_during_renewal_releases"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_queues_acquires_while_down_is_caught() {
    assert_caught(
        Bug::QueuesWhileDown,
        &["election_started_while_down_stopped_leaves_nothing"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_steals_is_caught_by_the_lock_and_restart_cases() {
    assert_caught(
        Bug::StealsHeldLeases,
        &[
            "lock_held_name_gives_none",
            "election_started_while_down_leads_once_up",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_watchdog_outlives_release_is_caught() {
    assert_caught(
        Bug::WatchdogRelocks,
        &[
            "lock_renewals_stop_after_release",
            "election_renewals_stop_after_shutdown",
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_leaks_a_connection_per_acquire_is_caught() {
    assert_caught(Bug::LeaksPerAcquire, &["no_leaks_over_many_cycles"]).await;
}

#[tokio::test(start_paused = true)]
async fn a_wrapper_that_does_not_forward_metadata_is_caught() {
    assert_caught(
        Bug::MetadataNotForwarded,
        &["metadata_is_stored_with_the_term"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_whose_metadata_update_ignores_the_token_is_caught() {
    assert_caught(
        Bug::MetadataUpdateIgnoresToken,
        &["metadata_is_stored_with_the_term"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_loses_resign_requests_is_caught() {
    assert_caught(
        Bug::ResignRequestLost,
        &["election_resign_request_hands_over"],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_unbroken_wrapper_passes_the_same_cases() {
    // Guards the mutants themselves: without the bug, each case passes.
    let mut cases = vec![
        (Bug::None, "exclusivity"),
        (Bug::None, "tokens_strictly_increase"),
        (Bug::None, "expiry_frees_the_resource"),
        (Bug::None, "election_one_leader"),
        (Bug::None, "election_partitioned_leader_steps_down"),
        (Bug::None, "release_notifications_arrive"),
        (Bug::SilentWatch, "exclusivity"),
    ];
    for case in [
        "lock_held_name_gives_none",
        "lock_guard_drop_releases",
        "lock_forced_release_fires_lost",
        "lock_renewals_stop_after_release",
        "takeover_leaves_the_new_holder_untouched",
        "cancelled_acquires_never_hold_forever",
        "no_leaks_over_many_cycles",
        "election_shutdown_during_renewal_releases",
        "election_renewals_stop_after_shutdown",
        "election_started_while_down_stopped_leaves_nothing",
        "election_started_while_down_leads_once_up",
        "election_resign_hands_over",
        "election_resign_request_hands_over",
        "metadata_is_stored_with_the_term",
        "observer_follows_the_seat",
        "lock_waiter_takes_the_released_lock",
        "lock_dropped_waits_leave_nothing_held",
        "lock_hold_at_least_outlives_an_early_release",
        "lock_hold_at_most_gives_up_a_stuck_holder",
    ] {
        cases.push((Bug::None, case));
    }
    for (bug, case) in cases {
        let report = run_case(Arc::new(MutantFixture::new(bug)), case).await;
        assert!(matches!(report.outcome, CaseOutcome::Passed(_)), "{report}");
    }
}
