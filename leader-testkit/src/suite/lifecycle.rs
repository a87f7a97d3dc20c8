//! Election cases about an elector's life around its edges: answers that
//! arrive too late, shutdown while a renewal is in flight, renewals after
//! shutdown, and starting while the store is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leader_core::{Elector, LeaseStore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::cluster::{Cluster, follower_reaction, release_reaction};
use super::store::{poll, step};
use super::{CaseResult, Ctx, Failure};
use crate::history::{Op, Outcome};
use crate::wrap::{Op as StoreOp, Stall, Wrapped};

/// What one elector, alone on its key, showed the outside: whether it ever
/// published a state change (`subscribe()`), ever said `is_leader()`, ever
/// started work.
struct Watched {
    published: Arc<AtomicBool>,
    claimed: Arc<AtomicBool>,
    worked: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watched {
    fn start(elector: &Elector) -> Watched {
        let (published, claimed, worked) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut rx = elector.subscribe();
        let flag = published.clone();
        // Alone on its key, an elector that never leads never changes its
        // published state (not leader, no leader known, no token): any
        // change notification means a term began, even one retracted
        // before this task could read it.
        let subscriber = tokio::spawn(async move {
            if rx.borrow_and_update().is_leader {
                flag.store(true, Ordering::SeqCst);
            }
            if rx.changed().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        let (flag, sampled) = (claimed.clone(), elector.clone());
        let sampler = tokio::spawn(async move {
            loop {
                if sampled.is_leader() {
                    flag.store(true, Ordering::SeqCst);
                }
                sleep(Duration::from_millis(1)).await;
            }
        });
        let flag = worked.clone();
        let work = elector.run_while_leader(move |_| {
            flag.store(true, Ordering::SeqCst);
            async {}
        });
        let supervisor = tokio::spawn(work.join());
        Watched {
            published,
            claimed,
            worked,
            tasks: vec![subscriber, sampler, supervisor],
        }
    }

    /// Fails if the elector showed leadership in any way.
    fn never_led(&self, what: &str) -> CaseResult {
        ensure!(
            !self.published.load(Ordering::SeqCst),
            "{what}: the elector published leadership (its subscribe() state changed)"
        );
        ensure!(
            !self.claimed.load(Ordering::SeqCst),
            "{what}: is_leader() was true"
        );
        ensure!(
            !self.worked.load(Ordering::SeqCst),
            "{what}: run-while-leader work was started"
        );
        Ok(())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Waits until `key` is free (released, or expired), for at most `within`.
async fn freed(ctx: &Ctx, key: &leader_core::LeaseKey, within: Duration) -> bool {
    poll(within, step(ctx), || async {
        matches!(ctx.store().current(key).await, Ok(None)).then_some(())
    })
    .await
    .is_some()
}

/// Every acquire is answered after the lease's validity has passed (the
/// elector's process stalled while the answer was on its way): no term
/// begins (nothing published, `is_leader()` never true, no work started),
/// and the late lease does not stay held (released, or left to expire).
pub async fn election_late_answer_starts_no_term(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let stall = p.lease + p.interval();
    let client: Arc<dyn LeaseStore> = Arc::new(Wrapped::new(ctx.client().await?, Stall(stall)));
    let elector = Elector::start(client, ctx.election_config("late", "i0"))?;
    let watched = Watched::start(&elector);
    // Two late answers, and the wait after each.
    sleep(stall * 2 + follower_reaction(ctx)).await;
    elector.shutdown().await;
    watched.never_led(&format!(
        "acquire answers {stall:?} after sending (lease {:?})",
        p.lease
    ))?;
    let key = elector.key().clone();
    let bound = ctx.granted(p.lease) + p.slack;
    ensure!(
        freed(ctx, &key, bound).await,
        "the late-answered lease was still held {bound:?} after shutdown"
    );
    Ok(())
}

/// The leader shuts down while a renewal is in flight (its link is slow, so
/// a renewal is on the wire): when `shutdown()` returns the store no longer
/// holds its term, and a follower leads within the graceful-handover time
/// (a dropped renewal must not turn the release into a wait for expiry or
/// a lock delay).
pub async fn election_shutdown_during_renewal_releases(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start_linked(ctx, "inflight", 2).await?;
    let p = ctx.profile();
    let (old, _) = cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    let old_token = cluster.wait_written(old, p.slack).await?;
    // A round trip of a quarter interval: a renewal is in flight a quarter
    // of the time, and still well within the request timeout.
    cluster.links[old].slow(p.interval() / 4);
    let id = cluster.ids[old].clone();
    let history = cluster.history.clone();
    let bound = p.interval() * 2 + p.slack;
    poll(bound, Duration::from_millis(1), || async {
        history
            .events()
            .iter()
            .any(|e| e.process == id && e.op == Op::Renew && e.completed.is_none())
            .then_some(())
    })
    .await
    .ok_or_else(|| Failure::new(format!("no renewal was in flight within {bound:?}")))?;
    let started = Instant::now();
    cluster.electors[old].shutdown().await;
    let released = started.elapsed();
    if let Some(info) = ctx.store().current(cluster.electors[old].key()).await?
        && info.token == old_token
    {
        return Err(Failure::new(format!(
            "shutdown (during a renewal) returned after {released:?} but the store still holds \
             the old term ({} token {}): the release failed",
            info.holder, info.token
        )));
    }
    let bound = release_reaction(ctx);
    let (new, took) = cluster.wait_for_leader(bound, Some(old)).await?;
    let total = released + took;
    println!("  shutdown during a renewal took {released:?}; new leader {took:?} later");
    if ctx.capabilities().notifies() {
        // A pushed handover takes milliseconds; a release lost to the
        // dropped renewal would leave followers waiting for expiry or a
        // lock delay (a lease or more).
        ensure!(
            total < p.lease,
            "handover took {total:?} after a shutdown during a renewal: no faster than \
             waiting for expiry ({:?}); the release did not happen as one",
            p.lease
        );
    }
    ensure!(
        cluster.token(new)? > old_token,
        "the new token is not above {old_token}"
    );
    cluster.links[old].heal();
    cluster.shutdown().await;
    cluster.check()
}

/// After `shutdown()` returns no renewal and no acquisition reaches the
/// store (the calls are counted), and the key stays free.
pub async fn election_renewals_stop_after_shutdown(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let counted = Arc::new(Wrapped::new(ctx.client().await?, ()));
    let elector = Elector::start(counted.clone(), ctx.election_config("renewals", "i0"))?;
    let bound = follower_reaction(ctx) + p.interval() * 3 + p.slack;
    poll(bound, step(ctx), || async {
        (elector.is_leader() && counted.calls(StoreOp::Renew) >= 2).then_some(())
    })
    .await
    .ok_or_else(|| Failure::new(format!("no leader renewing twice within {bound:?}")))?;
    elector.shutdown().await;
    let (renewals, acquires) = (
        counted.calls(StoreOp::Renew),
        counted.calls(StoreOp::Acquire),
    );
    let key = elector.key().clone();
    let until = Instant::now() + p.interval() * 3;
    while Instant::now() < until {
        ensure!(
            ctx.store().current(&key).await?.is_none(),
            "the key is held again after shutdown() returned"
        );
        sleep(p.interval() / 2).await;
    }
    let (r, a) = (
        counted.calls(StoreOp::Renew),
        counted.calls(StoreOp::Acquire),
    );
    ensure!(
        r == renewals && a == acquires,
        "after shutdown() returned {} renewals and {} acquisitions reached the store",
        r - renewals,
        a - acquires
    );
    Ok(())
}

/// An elector started while its store is down, and shut down before the
/// store returns, leaves nothing behind: no term, and no acquisition that
/// lands once the store is back.
pub async fn election_started_while_down_stopped_leaves_nothing(ctx: &Ctx) -> CaseResult {
    let control = ctx
        .control()
        .ok_or_else(|| Failure::new("no server control"))?;
    let p = ctx.profile();
    let client = ctx.client().await?;
    control.stop().await?;
    let result = async {
        let elector = Elector::start(client, ctx.election_config("down-start", "i0"))?;
        let watched = Watched::start(&elector);
        sleep(follower_reaction(ctx) * 2).await;
        elector.shutdown().await;
        watched.never_led("started and stopped while the store was down")?;
        Ok::<_, Failure>(elector.key().clone())
    }
    .await;
    control.start().await?;
    let key = result?;
    // Anything queued by the client while the store was down lands now.
    let until = Instant::now() + p.interval() * 4 + p.slack;
    while Instant::now() < until {
        if let Ok(Some(info)) = ctx.store().current(&key).await {
            return Err(Failure::new(format!(
                "after the store returned the key is held by {} (token {}), although the \
                 elector was shut down while the store was down",
                info.holder, info.token
            )));
        }
        sleep(step(ctx)).await;
    }
    Ok(())
}

/// Three electors started while the store is down: none leads while it is
/// down; once it is up, exactly one term begins (one successful
/// acquisition) and holds.
pub async fn election_started_while_down_leads_once_up(ctx: &Ctx) -> CaseResult {
    let control = ctx
        .control()
        .ok_or_else(|| Failure::new("no server control"))?;
    let p = ctx.profile();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(ctx.client().await?);
    }
    control.stop().await?;
    let cluster = match Cluster::with_clients(ctx, "down-start", clients, Vec::new()) {
        Ok(cluster) => cluster,
        Err(e) => {
            control.start().await?;
            return Err(e);
        }
    };
    sleep(follower_reaction(ctx) * 2).await;
    let early = cluster.leaders();
    control.start().await?;
    ensure!(early.is_empty(), "{early:?} led while the store was down");
    let bound = follower_reaction(ctx) + p.interval() + p.slack;
    let (leader, took) = cluster.wait_for_leader(bound, None).await?;
    println!("  a leader {took:?} after the store came up");
    let token = cluster.wait_written(leader, p.slack).await?;
    cluster
        .hold_steady(leader, token, p.lease, "after the store came up")
        .await?;
    let terms: std::collections::BTreeSet<_> = cluster
        .history
        .events()
        .iter()
        .filter(|e| e.op == Op::Acquire && e.outcome == Outcome::Ok)
        .filter_map(|e| e.token)
        .collect();
    ensure!(
        terms.len() == 1,
        "{} terms began after the store came up (tokens {terms:?}), expected exactly one",
        terms.len()
    );
    cluster.shutdown().await;
    cluster.check()
}
