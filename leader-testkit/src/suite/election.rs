//! Election-level cases: the card's scenarios through the real
//! `leader_core::Elector`, with every store call recorded and checked by the
//! history checker.

use std::time::Duration;

use leader_core::HealthStatus;
use tokio::time::{Instant, sleep, sleep_until};

use super::cluster::{Cluster, follower_reaction, release_reaction};
use super::store::poll;
use super::{CaseResult, Ctx, Failure};
use crate::history::{Op, Outcome};

/// Several instances: exactly one leads, stays leader while renewing, the
/// followers know who it is, health says Healthy / Degraded.
pub async fn election_one_leader(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start(ctx, "one-leader", 3).await?;
    let p = ctx.profile();
    let (leader, took) = cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    println!("  first leader after {took:?}");
    let token = cluster.wait_written(leader, p.slack).await?;
    // Hold for two leases: renewals must keep the same leader and term.
    cluster
        .hold_steady(leader, token, p.lease * 2, "while renewing")
        .await?;
    let info = ctx
        .store()
        .current(cluster.electors[leader].key())
        .await?
        .ok_or_else(|| Failure::new("the store shows no holder while an instance leads"))?;
    ensure!(
        info.holder.as_str() == cluster.ids[leader] && info.token == token,
        "the store shows {}/{} but {} leads with token {token}",
        info.holder,
        info.token,
        cluster.ids[leader]
    );
    for (i, elector) in cluster.electors.iter().enumerate() {
        let health = elector.health();
        let expected = if i == leader {
            HealthStatus::Healthy
        } else {
            HealthStatus::Degraded
        };
        ensure!(
            health.status == expected,
            "{} health {:?}, expected {expected:?}",
            cluster.ids[i],
            health.status
        );
        ensure!(
            health.data.leader_id.as_ref().map(|h| h.as_str())
                == Some(cluster.ids[leader].as_str()),
            "{} thinks the leader is {:?}",
            cluster.ids[i],
            health.data.leader_id
        );
    }
    cluster.shutdown().await;
    cluster.check()
}

/// The leader crashes (abort: no release): another instance leads within
/// lease + retry period, with a higher token; the crashed leader's late
/// write is rejected by the fenced resource.
pub async fn election_crash_failover(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start(ctx, "crash", 3).await?;
    let p = ctx.profile();
    let (old, _) = cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    let old_token = cluster.wait_written(old, p.slack).await?;
    cluster.history.instant(
        &cluster.ids[old],
        Op::StepDown,
        Outcome::Ok,
        Some(old_token),
    );
    cluster.electors[old].abort();
    ensure!(
        !cluster.electors[old].is_leader(),
        "an aborted elector still says it leads"
    );
    let bound = ctx.granted(p.lease) + follower_reaction(ctx) + p.slack;
    let (new, took) = cluster.wait_for_leader(bound, Some(old)).await?;
    println!(
        "  crash failover: new leader after {took:?} (lease {:?}, bound {bound:?})",
        p.lease
    );
    let new_token = cluster.wait_written(new, p.slack).await?;
    ensure!(
        new_token > old_token,
        "the new term's token {new_token} is not above {old_token}"
    );
    cluster.lease_was_respected(old, old_token, new_token, p.lease)?;
    // The crashed leader wakes up from its "pause" and writes: fenced off.
    ensure!(
        !cluster.resource.write(&cluster.ids[old], old_token),
        "the fenced resource accepted the crashed leader's stale write"
    );
    cluster.shutdown().await;
    let summary = cluster.check();
    ensure!(
        cluster.resource.rejected() >= 1,
        "the stale write was not counted"
    );
    summary
}

/// Graceful shutdown of the leader: a follower leads quickly (the time is
/// printed), without waiting for the lease to expire.
pub async fn election_graceful_handover(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start(ctx, "graceful", 3).await?;
    let p = ctx.profile();
    let (old, _) = cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    let old_token = cluster.wait_written(old, p.slack).await?;
    let started = Instant::now();
    cluster.electors[old].shutdown().await;
    let released = started.elapsed();
    ensure!(
        !cluster.electors[old].is_leader(),
        "a shut-down elector still says it leads"
    );
    // Load-independent proof of a release: the old term is gone from the
    // store as soon as shutdown returns (not left to expire).
    if let Some(info) = ctx.store().current(cluster.electors[old].key()).await?
        && info.token == old_token
    {
        return Err(Failure::new(format!(
            "shutdown returned but the store still holds the old term ({} token {})",
            info.holder, info.token
        )));
    }
    // Notifying stores wake followers at once; others within a retry period.
    let bound = release_reaction(ctx);
    let (new, took) = cluster.wait_for_leader(bound, Some(old)).await?;
    let total = released + took;
    println!(
        "  graceful handover: shutdown took {released:?}, new leader {total:?} after shutdown began (notifications: {:?})",
        ctx.capabilities().notifications
    );
    if ctx.capabilities().notifies() {
        // Pushed handovers take milliseconds: far below the lease.
        ensure!(
            total < p.lease,
            "handover took {total:?}: no faster than waiting for expiry ({:?})",
            p.lease
        );
    }
    ensure!(
        cluster.token(new)? > old_token,
        "the new token is not above {old_token}"
    );
    sleep(p.interval() * 2).await;
    ensure!(
        !cluster.electors[old].is_leader(),
        "the shut-down elector leads again"
    );
    cluster.shutdown().await;
    cluster.check()
}

/// Run-while-leader work is cancelled when leadership is lost (here: an
/// operator's force_release) and starts again with the next term's token.
pub async fn election_work_cancelled_on_loss(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start(ctx, "work", 1).await?;
    let p = ctx.profile();
    let (leader, _) = cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    let token = cluster.wait_written(leader, p.slack).await?;
    let started = Instant::now();
    ctx.store()
        .force_release(cluster.electors[leader].key())
        .await?
        .ok_or_else(|| Failure::new("force_release found no holder"))?;
    // Noticed at the next renewal (one interval), answered within a request.
    let bound = p.interval() * 2 + p.slack;
    let history = cluster.history.clone();
    let id = cluster.ids[leader].clone();
    poll(bound, Duration::from_millis(1), || async {
        history
            .events()
            .iter()
            .any(|e| e.process == id && e.op == Op::LossSignal && e.token == Some(token))
            .then_some(())
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the work was not told of the loss within {bound:?}"
        ))
    })?;
    println!(
        "  loss signalled {:?} after force_release",
        started.elapsed()
    );
    let bound = follower_reaction(ctx) + p.interval() + p.slack;
    let res = cluster.resource.clone();
    poll(bound, Duration::from_millis(1), || async {
        (res.highest() > Some(token)).then_some(())
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the work did not start again with a new term within {bound:?}"
        ))
    })?;
    cluster.shutdown().await;
    cluster.check()
}

/// The store stops: by the time the old lease could have expired, no
/// instance believes it leads, the work was cancelled, and health says
/// Unhealthy.
pub async fn election_store_down_steps_down(ctx: &Ctx) -> CaseResult {
    let control = ctx
        .control()
        .ok_or_else(|| Failure::new("no server control"))?;
    let cluster = Cluster::start(ctx, "down", 3).await?;
    let p = ctx.profile();
    let (leader, _) = cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    let token = cluster.wait_written(leader, p.slack).await?;
    // Every successful renewal was sent before this instant.
    let stopped = Instant::now();
    control.stop().await?;
    let result = async {
        sleep_until(stopped + p.lease).await;
        let leaders = cluster.leaders();
        ensure!(
            leaders.is_empty(),
            "{leaders:?} still believe they lead {:?} after the store stopped (the lease could have expired)",
            stopped.elapsed()
        );
        let history = cluster.history.clone();
        let id = cluster.ids[leader].clone();
        poll(p.slack, Duration::from_millis(1), || async {
            history
                .events()
                .iter()
                .any(|e| e.process == id && e.op == Op::LossSignal && e.token == Some(token))
                .then_some(())
        })
        .await
        .ok_or_else(|| Failure::new("the leader's work was not cancelled"))?;
        // Unhealthy once the store has been silent for the renew deadline.
        let bound = p.lease + p.slack;
        poll(bound.saturating_sub(stopped.elapsed()), Duration::from_millis(5), || async {
            cluster
                .electors
                .iter()
                .all(|e| e.health().status == HealthStatus::Unhealthy)
                .then_some(())
        })
        .await
        .ok_or_else(|| {
            let statuses: Vec<_> = cluster.electors.iter().map(|e| e.health().status).collect();
            Failure::new(format!("health is {statuses:?} {bound:?} after the store stopped; expected Unhealthy"))
        })?;
        Ok(())
    }
    .await;
    control.start().await?;
    cluster.shutdown().await;
    result?;
    cluster.check()
}

/// The store comes back: a leader within about one renewal interval (plus
/// whatever lease the store kept across the restart, plus slack).
pub async fn election_store_returns(ctx: &Ctx) -> CaseResult {
    let control = ctx
        .control()
        .ok_or_else(|| Failure::new("no server control"))?;
    let cluster = Cluster::start(ctx, "returns", 3).await?;
    let p = ctx.profile();
    cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    control.stop().await?;
    let none = poll(p.lease + p.slack, Duration::from_millis(5), || async {
        cluster.leaders().is_empty().then_some(())
    })
    .await;
    if none.is_none() {
        control.start().await?;
        return Err(Failure::new(
            "instances still lead long after the store stopped",
        ));
    }
    control.start().await?;
    let back = Instant::now();
    // A store that persisted the old lease (etcd) makes everyone wait for it.
    let key = cluster.electors[0].key().clone();
    let kept = poll(p.slack, Duration::from_millis(20), || async {
        ctx.store().current(&key).await.ok()
    })
    .await
    .flatten()
    .and_then(|info| info.remaining)
    .unwrap_or_default();
    let bound = kept + follower_reaction(ctx) + p.interval() + p.slack;
    cluster
        .wait_for_leader(bound.saturating_sub(back.elapsed()), None)
        .await?;
    println!(
        "  store back: a leader {:?} after the restart (old lease kept: {kept:?}, renewal interval {:?})",
        back.elapsed(),
        p.interval()
    );
    cluster.shutdown().await;
    cluster.check()
}

/// The leader alone is cut off from the store (a partition, no errors,
/// just silence): it stops believing it leads before anyone else can take
/// over, another instance leads within lease + retry, the old leader's late
/// write is fenced off, and after healing it rejoins as a follower.
pub async fn election_partitioned_leader_steps_down(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start_linked(ctx, "partition", 3).await?;
    let p = ctx.profile();
    let (old, _) = cluster
        .wait_for_leader(follower_reaction(ctx) + p.slack, None)
        .await?;
    let old_token = cluster.wait_written(old, p.slack).await?;
    let cut_at = Instant::now();
    // The server notices the dead client after one lease (a session-bound
    // store's tuned keepalive); its lock may then be held back for up to
    // another lease (a lock delay after a term that ended without release).
    cluster.links[old].cut(p.lease);
    // `wait_for_leader` requires exactly one leader: the new one appearing
    // while the old one still believes would not count.
    let session_extra = if ctx.capabilities().session_bound {
        p.lease
    } else {
        Duration::ZERO
    };
    let bound = ctx.granted(p.lease) + session_extra + follower_reaction(ctx) + p.slack;
    let (new, _) = cluster.wait_for_leader(bound, Some(old)).await?;
    println!(
        "  partitioned leader replaced {:?} after the cut",
        cut_at.elapsed()
    );
    let new_token = cluster.wait_written(new, p.slack).await?;
    cluster.lease_was_respected(old, old_token, new_token, p.lease)?;
    ensure!(
        new_token > old_token,
        "the new token {new_token} is not above {old_token}"
    );
    ensure!(
        !cluster.resource.write(&cluster.ids[old], old_token),
        "the fenced resource accepted the partitioned leader's stale write"
    );
    cluster.links[old].heal();
    let healthy = poll(
        follower_reaction(ctx) + p.slack,
        Duration::from_millis(5),
        || async {
            (cluster.electors[old].health().status == HealthStatus::Degraded).then_some(())
        },
    )
    .await;
    ensure!(
        healthy.is_some(),
        "after healing the old leader's health is {:?}, expected Degraded (a follower)",
        cluster.electors[old].health().status
    );
    ensure!(
        cluster.leaders() == vec![new],
        "after healing the leaders are {:?}",
        cluster.leaders()
    );
    cluster.shutdown().await;
    cluster.check()
}

/// Every client's link is slow (a tenth of the renewal interval per round
/// trip): one leader is elected and keeps its term through renewals.
pub async fn election_slow_store_keeps_one_leader(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start_linked(ctx, "slow", 3).await?;
    let p = ctx.profile();
    for link in &cluster.links {
        link.slow(p.interval() / 10);
    }
    let (leader, took) = cluster
        .wait_for_leader(follower_reaction(ctx) * 2 + p.slack, None)
        .await?;
    println!("  leader on a slow store after {took:?}");
    let token = cluster.wait_written(leader, p.slack).await?;
    cluster
        .hold_steady(leader, token, p.lease * 2, "on a slow store")
        .await?;
    for link in &cluster.links {
        link.heal();
    }
    cluster.shutdown().await;
    cluster.check()
}
