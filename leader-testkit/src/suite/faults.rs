//! Store-level cases with the server down, back, or frozen.

use leader_core::{Acquire, ErrorKind};
use tokio::time::{Instant, timeout};

use super::store::{acquired, holder_of, poll, step};
use super::{CaseResult, Ctx, Failure};

fn typed_down(e: &leader_core::Error) -> bool {
    matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Indeterminate)
}

/// With the server down, every operation fails with `Unavailable` or
/// `Indeterminate` within a bound: no hang, no panic, no other kind.
pub async fn down_store_gives_typed_errors(ctx: &Ctx) -> CaseResult {
    let control = ctx
        .control()
        .ok_or_else(|| Failure::new("no server control"))?;
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("down")?;
    let a = ctx.holder("a")?;
    let lease = acquired(&**store, &key, &a, ttl).await?;
    control.stop().await?;
    let bound = ctx.profile().lease + ctx.profile().slack;
    let session = ctx.capabilities().session_bound;
    let result = async {
        let r = timeout(bound, store.acquire(&ctx.key("other")?, &a, ttl)).await;
        ensure!(matches!(&r, Ok(Err(e)) if typed_down(e)), "acquire on a down store: {r:?} (within {bound:?})");
        let r = timeout(bound, store.renew(&lease)).await;
        ensure!(
            matches!(&r, Ok(Err(e)) if typed_down(e) || (session && e.kind() == ErrorKind::NotHolder)),
            "renew on a down store: {r:?}"
        );
        let r = timeout(bound, store.release(&lease)).await;
        ensure!(
            matches!(&r, Ok(Err(e)) if typed_down(e)) || (session && matches!(r, Ok(Ok(false)))),
            "release on a down store: {r:?}"
        );
        let r = timeout(bound, store.current(&key)).await;
        ensure!(matches!(&r, Ok(Err(e)) if typed_down(e)), "current on a down store: {r:?}");
        let r = timeout(bound, store.force_release(&key)).await;
        ensure!(matches!(&r, Ok(Err(e)) if typed_down(e)), "force_release on a down store: {r:?}");
        Ok(())
    }
    .await;
    control.start().await?;
    result
}

/// After the server comes back, the same client works again (no rebuild).
pub async fn client_recovers_after_restart(ctx: &Ctx) -> CaseResult {
    let control = ctx
        .control()
        .ok_or_else(|| Failure::new("no server control"))?;
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("recover")?;
    let a = ctx.holder("a")?;
    let lease = acquired(&**store, &key, &a, ttl).await?;
    ensure!(store.release(&lease).await?, "release returned false");
    control.stop().await?;
    let down = store.current(&key).await;
    ensure!(
        down.is_err(),
        "current answered {down:?} with the server down"
    );
    control.start().await?;
    let bound = ctx.profile().lease * 2 + ctx.profile().slack;
    let back = poll(bound, step(ctx), || async {
        store.acquire(&key, &a, ttl).await.ok()
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the same client did not work again within {bound:?} of the restart"
        ))
    })?;
    let lease = match back {
        Acquire::Acquired(lease) => lease,
        // The restarted store kept a lease of ours from before (it was
        // released, so this must be someone else's: a bug).
        Acquire::Held(info) => {
            return Err(Failure::new(format!(
                "after the restart the key is held by {}",
                info.holder
            )));
        }
    };
    store.renew(&lease).await?;
    ensure!(
        holder_of(&**store, &key).await?.token == lease.token,
        "current disagrees after restart"
    );
    ensure!(
        store.release(&lease).await?,
        "release after restart returned false"
    );
    Ok(())
}

/// With the server frozen (SIGSTOP: connections open, nothing answers),
/// every call ends with `Indeterminate` or `Unavailable` within the
/// profile's call timeout (the store's own timeouts, no hang), and the same
/// client works again once the server continues.
pub async fn hung_store_calls_time_out(ctx: &Ctx) -> CaseResult {
    let control = ctx
        .control()
        .ok_or_else(|| Failure::new("no server control"))?;
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("hung")?;
    let a = ctx.holder("a")?;
    let lease = acquired(&**store, &key, &a, ttl).await?;
    let other = ctx.key("other")?;
    control.pause().await?;
    let bound = ctx.profile().call_timeout;
    let session = ctx.capabilities().session_bound;
    let started = Instant::now();
    // All at once: the case takes one timeout, not five.
    let (acq, renew, release, current, force) = tokio::join!(
        timeout(bound, store.acquire(&other, &a, ttl)),
        timeout(bound, store.renew(&lease)),
        timeout(bound, store.release(&lease)),
        timeout(bound, store.current(&key)),
        timeout(bound, store.force_release(&other)),
    );
    let took = started.elapsed();
    control.resume().await?;
    let hung = |ok: bool| if ok { "" } else { " (no answer: a hang)" };
    ensure!(
        matches!(&acq, Ok(Err(e)) if typed_down(e)),
        "acquire on a hung store: {acq:?}{}",
        hung(acq.is_ok())
    );
    ensure!(
        matches!(&renew, Ok(Err(e)) if typed_down(e) || (session && e.kind() == ErrorKind::NotHolder)),
        "renew on a hung store: {renew:?}{}",
        hung(renew.is_ok())
    );
    ensure!(
        matches!(&release, Ok(Err(e)) if typed_down(e))
            || (session && matches!(release, Ok(Ok(false)))),
        "release on a hung store: {release:?}{}",
        hung(release.is_ok())
    );
    ensure!(
        matches!(&current, Ok(Err(e)) if typed_down(e)),
        "current on a hung store: {current:?}{}",
        hung(current.is_ok())
    );
    ensure!(
        matches!(&force, Ok(Err(e)) if typed_down(e)),
        "force_release on a hung store: {force:?}{}",
        hung(force.is_ok())
    );
    println!("  calls on a hung store answered within {took:?}");
    let bound = ctx.profile().lease * 2 + ctx.profile().slack;
    poll(bound, step(ctx), || async {
        store.current(&key).await.ok()
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the same client did not work again within {bound:?} of resuming"
        ))
    })?;
    Ok(())
}
