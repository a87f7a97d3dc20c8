//! Named-lock cases: `leader_core::Locks` on the store under test.

use std::sync::Arc;
use std::time::Duration;

use leader_core::{LeaseStore, LockGuard, Locks};
use tokio::time::{Instant, sleep, timeout};

use super::store::{poll, step};
use super::{CaseResult, Ctx, Failure};
use crate::wrap::{Op, Stall, Wrapped};

/// Locks for `instance` on `store`, with the profile's timing and `lease`.
pub(crate) fn locks(
    ctx: &Ctx,
    store: Arc<dyn LeaseStore>,
    instance: &str,
    lease: Duration,
) -> Result<Locks, Failure> {
    let mut config = ctx.election_config("locks", instance);
    config.lease_duration = lease;
    Ok(Locks::new(store, config)?)
}

/// Takes `name` or fails naming who could not.
async fn take(locks: &Locks, name: &str, who: &str) -> Result<LockGuard, Failure> {
    locks
        .try_acquire(name)
        .await?
        .ok_or_else(|| Failure::new(format!("{who} could not take the free lock {name:?}")))
}

/// A held name gives `None` to another process and to a second caller in
/// the same process; after a release the other process gets it with a
/// higher token.
pub async fn lock_held_name_gives_none(ctx: &Ctx) -> CaseResult {
    let lease = ctx.profile().lease * 10;
    let a = locks(ctx, ctx.client().await?, "pod-a", lease)?;
    let b = locks(ctx, ctx.client().await?, "pod-b", lease)?;
    let guard = take(&a, "job", "pod-a").await?;
    ensure!(guard.is_held(), "a fresh guard says it is not held");
    ensure!(
        b.try_acquire("job").await?.is_none(),
        "another process got the held lock \"job\""
    );
    ensure!(
        a.try_acquire("job").await?.is_none(),
        "a second caller in the holding process got the held lock \"job\""
    );
    let token = guard.token();
    ensure!(
        guard.release().await?,
        "the holder's release returned false"
    );
    let next = take(&b, "job", "pod-b after the release").await?;
    ensure!(next.token() > token, "token {} after {token}", next.token());
    ensure!(next.release().await?, "release returned false");
    Ok(())
}

/// Dropping a guard releases the lock (in the background, one request),
/// long before its lease could expire.
pub async fn lock_guard_drop_releases(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let lease = p.lease * 10;
    let a = locks(ctx, ctx.client().await?, "pod-a", lease)?;
    let b = locks(ctx, ctx.client().await?, "pod-b", lease)?;
    let guard = take(&a, "job", "pod-a").await?;
    let dropped = Instant::now();
    drop(guard);
    let bound = p.interval() + p.slack;
    let next = poll(bound, step(ctx), || async {
        b.try_acquire("job").await.ok().flatten()
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the lock was not free within {bound:?} of dropping its guard (lease {lease:?}): \
                 drop must release"
        ))
    })?;
    let took = dropped.elapsed();
    ensure!(
        took < lease / 2,
        "the lock came free {took:?} after the drop: that is expiry, not a release"
    );
    ensure!(next.release().await?, "release returned false");
    Ok(())
}

/// An operator's `force_release` makes `lost()` fire (at the next renewal)
/// long before the lease could expire, and the guard says it is not held.
pub async fn lock_forced_release_fires_lost(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let lease = p.lease * 10;
    let a = locks(ctx, ctx.client().await?, "pod-a", lease)?;
    let guard = take(&a, "job", "pod-a").await?;
    let forced = Instant::now();
    ctx.store()
        .force_release(&ctx.key("job")?)
        .await?
        .ok_or_else(|| Failure::new("force_release found no holder of the held lock"))?;
    // Noticed by the next renewal (one interval), answered within a request.
    let bound = p.interval() * 2 + p.slack;
    timeout(bound, guard.lost()).await.map_err(|_| {
        Failure::new(format!(
            "lost() did not fire within {bound:?} of a force_release (lease {lease:?})"
        ))
    })?;
    let took = forced.elapsed();
    ensure!(
        took < lease / 2,
        "lost() fired {took:?} after the force_release: only at expiry"
    );
    ensure!(
        !guard.is_held(),
        "lost() fired but the guard still says it is held"
    );
    ensure!(
        guard.cancellation_token().is_cancelled(),
        "lost() fired but the guard's cancellation token is not cancelled"
    );
    Ok(())
}

/// After `release()` no renewal reaches the store (the calls are counted)
/// and the lock stays free.
pub async fn lock_renewals_stop_after_release(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let counted = Arc::new(Wrapped::new(ctx.client().await?, ()));
    let a = locks(ctx, counted.clone(), "pod-a", p.lease)?;
    let guard = take(&a, "job", "pod-a").await?;
    let bound = p.interval() * 3 + p.slack;
    poll(bound, step(ctx), || async {
        (counted.calls(Op::Renew) >= 2).then_some(())
    })
    .await
    .ok_or_else(|| Failure::new(format!("the lock was not renewed twice within {bound:?}")))?;
    ensure!(guard.release().await?, "release returned false");
    let renewals = counted.calls(Op::Renew);
    let key = ctx.key("job")?;
    let until = Instant::now() + p.interval() * 3;
    while Instant::now() < until {
        ensure!(
            ctx.store().current(&key).await?.is_none(),
            "the released lock is held again"
        );
        sleep(p.interval() / 2).await;
    }
    let later = counted.calls(Op::Renew);
    ensure!(
        later == renewals,
        "{} renewals reached the store after release() returned",
        later - renewals
    );
    Ok(())
}

/// An acquire answered after the lock's validity has passed (a stalled
/// process) gives no guard, and the lock it took does not stay held: it is
/// released, or expires within its TTL.
pub async fn lock_late_answer_gives_no_guard(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    // Past the validity (lease less the clock drift) by a renewal interval.
    let stall = p.lease + p.interval();
    let stalling = Arc::new(Wrapped::new(ctx.client().await?, Stall(stall)));
    let a = locks(ctx, stalling, "pod-a", p.lease)?;
    let got = a.try_acquire("job").await;
    if let Ok(Some(guard)) = &got {
        return Err(Failure::new(format!(
            "try_acquire answered {stall:?} after it was sent (lease {:?}) and still gave a \
             guard (token {}, is_held {}): a lock whose validity had passed",
            p.lease,
            guard.token(),
            guard.is_held()
        )));
    }
    let key = ctx.key("job")?;
    let bound = ctx.granted(p.lease) + p.slack;
    poll(bound, step(ctx), || async {
        matches!(ctx.store().current(&key).await, Ok(None)).then_some(())
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the late-answered lock was still held {bound:?} later (neither released nor expired)"
        ))
    })?;
    Ok(())
}
