//! Named locks that wait and hold bounds: `Locks::acquire`,
//! `LockOptions::hold_at_least` and `LockOptions::hold_at_most` on the
//! store under test.

use std::time::Duration;

use leader_core::LockOptions;
use tokio::time::{Instant, sleep, timeout};

use super::cluster::release_reaction;
use super::locks::locks;
use super::store::{poll, step};
use super::{CaseResult, Ctx, Failure};

/// A waiter blocks while the lock is held and takes it soon after the
/// release (not at expiry), with a higher token.
pub async fn lock_waiter_takes_the_released_lock(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let lease = p.lease * 10;
    let a = locks(ctx, ctx.client().await?, "pod-a", lease)?;
    let b = locks(ctx, ctx.client().await?, "pod-b", lease)?;
    let held = a
        .try_acquire("job")
        .await?
        .ok_or_else(|| Failure::new("pod-a could not take the free lock"))?;
    let token = held.token();
    let waiter = tokio::spawn(async move { b.acquire("job", lease).await });
    sleep(p.interval()).await;
    ensure!(
        !waiter.is_finished(),
        "the waiter returned while the lock was held"
    );
    let released = Instant::now();
    ensure!(held.release().await?, "the holder's release returned false");
    let bound = release_reaction(ctx);
    let got = timeout(bound, waiter)
        .await
        .map_err(|_| {
            Failure::new(format!(
                "the waiter did not get the released lock within {bound:?}"
            ))
        })?
        .map_err(|e| Failure::new(format!("the waiter panicked: {e}")))??
        .ok_or_else(|| Failure::new("the waiter gave up although the lock was released"))?;
    let took = released.elapsed();
    ensure!(
        took < lease / 2,
        "the waiter got the lock {took:?} after the release: that is expiry"
    );
    ensure!(got.token() > token, "token {} after {token}", got.token());
    ensure!(got.release().await?, "release returned false");
    Ok(())
}

/// Waits dropped at several points around a release (before it, while the
/// waiter's acquire is in flight, after) leave nothing held: the lock is
/// free again long before it could expire.
pub async fn lock_dropped_waits_leave_nothing_held(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let lease = p.lease * 10;
    let a = locks(ctx, ctx.client().await?, "pod-a", lease)?;
    let b = locks(ctx, ctx.client().await?, "pod-b", lease)?;
    let key = ctx.key("job")?;
    let points = [0, 1, 2, 5, 10, 20, 50].map(Duration::from_millis);
    for (i, after) in points.into_iter().enumerate() {
        let held = a
            .acquire("job", lease)
            .await?
            .ok_or_else(|| Failure::new(format!("round {i}: pod-a could not take the lock")))?;
        let wait = b.acquire("job", lease);
        let got = timeout(after, async {
            held.release().await?;
            wait.await
        })
        .await;
        if let Ok(got) = got {
            drop(got?);
        }
        let dropped = Instant::now();
        let bound = p.interval() + p.slack;
        poll(bound, step(ctx), || async {
            matches!(ctx.store().current(&key).await, Ok(None)).then_some(())
        })
        .await
        .ok_or_else(|| {
            Failure::new(format!(
                "round {i}: the lock was still held {bound:?} after a wait dropped {after:?} \
                 into the release (lease {lease:?})"
            ))
        })?;
        ensure!(
            dropped.elapsed() < lease / 2,
            "round {i}: the lock came free only at expiry"
        );
    }
    Ok(())
}

/// `hold_at_least` longer than the lease: a release right after the
/// acquire returns at once, the lock stays held (renewed in the
/// background) until the bound, and is free soon after it.
pub async fn lock_hold_at_least_outlives_an_early_release(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let a = locks(ctx, ctx.client().await?, "pod-a", p.lease)?;
    let b = locks(ctx, ctx.client().await?, "pod-b", p.lease)?;
    let at_least = p.lease * 2;
    let started = Instant::now();
    let guard = a
        .acquire_with("job", &LockOptions::new().hold_at_least(at_least))
        .await?
        .ok_or_else(|| Failure::new("pod-a could not take the free lock"))?;
    let returned = Instant::now();
    ensure!(
        guard.release().await?,
        "release of a held lock returned false"
    );
    ensure!(
        returned.elapsed() < p.interval(),
        "release() blocked for {:?} (hold_at_least must not block the caller)",
        returned.elapsed()
    );
    // Held all along until the bound (past the lease: renewed meanwhile).
    let until = started + at_least - p.interval();
    while Instant::now() < until {
        if let Some(stolen) = b.try_acquire("job").await? {
            return Err(Failure::new(format!(
                "pod-b took the lock (token {}) {:?} after it was taken with hold_at_least \
                 {at_least:?}",
                stolen.token(),
                started.elapsed()
            )));
        }
        sleep(p.interval() / 2).await;
    }
    let bound = at_least + release_reaction(ctx);
    let got = b.acquire("job", bound).await?.ok_or_else(|| {
        Failure::new(format!(
            "the lock was not free {bound:?} after it was taken"
        ))
    })?;
    ensure!(
        started.elapsed() >= at_least,
        "the lock came free {:?} after it was taken, before hold_at_least {at_least:?}",
        started.elapsed()
    );
    ensure!(got.release().await?, "release returned false");
    Ok(())
}

/// `hold_at_most` longer than the lease: a holder that never releases
/// keeps the lock (renewed) until the bound, then `lost()` fires and the
/// lock is released for the next holder.
pub async fn lock_hold_at_most_gives_up_a_stuck_holder(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let a = locks(ctx, ctx.client().await?, "pod-a", p.lease)?;
    let b = locks(ctx, ctx.client().await?, "pod-b", p.lease)?;
    let at_most = p.lease * 2;
    let started = Instant::now();
    let stuck = a
        .acquire_with("job", &LockOptions::new().hold_at_most(at_most))
        .await?
        .ok_or_else(|| Failure::new("pod-a could not take the free lock"))?;
    let bound = at_most + p.lease + release_reaction(ctx);
    let got = b
        .acquire("job", bound)
        .await?
        .ok_or_else(|| Failure::new(format!("the stuck lock was not given up within {bound:?}")))?;
    ensure!(
        started.elapsed() >= at_most,
        "pod-b took the lock {:?} after it was taken, before hold_at_most {at_most:?}",
        started.elapsed()
    );
    ensure!(
        !stuck.is_held() && stuck.cancellation_token().is_cancelled(),
        "another holder has the lock but the stuck guard was not told (lost() did not fire)"
    );
    ensure!(
        !stuck.release().await?,
        "release of a lock given up returned true"
    );
    ensure!(got.release().await?, "release returned false");
    Ok(())
}
