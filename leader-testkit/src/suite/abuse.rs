//! Store-level cases about misuse over time: a superseded holder that keeps
//! calling, acquisitions dropped half way, and many cycles that must not
//! leak server-side resources.

use std::time::Duration;

use leader_core::{Acquire, ErrorKind, LeaseKey};
use tokio::time::{Instant, sleep, timeout};

use super::store::{acquired, holder_of, poll, step};
use super::{CaseResult, Ctx, Failure};

/// After a lease expired (or, on session-bound stores, was given up by the
/// store for want of renewals) and another holder took over, the old
/// holder's renew fails with `NotHolder`, its release returns `false`, and
/// neither changes the new holder's token or remaining time.
pub async fn takeover_leaves_the_new_holder_untouched(ctx: &Ctx) -> CaseResult {
    let ttl = ctx.profile().lease;
    let long = ttl * 10;
    let key = ctx.key("takeover")?;
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    let old_client = ctx.client().await?;
    let old = acquired(&*old_client, &key, &a, ttl).await?;
    let store = ctx.store();
    let bound = ctx.granted(ttl) + ttl + ctx.profile().slack;
    let new = poll(bound, step(ctx), || async {
        match store.acquire(&key, &b, long).await {
            Ok(Acquire::Acquired(lease)) => Some(lease),
            _ => None,
        }
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the unrenewed lease was not taken over within {bound:?} (expiry broken?)"
        ))
    })?;
    // From before the first read is sent: the server read `before` at some
    // point after this, and `after` before the elapsed time is taken, so
    // the server's interval between the two reads is within `elapsed`.
    let measured = Instant::now();
    let before = holder_of(&**store, &key).await?;
    let renew = old_client.renew(&old).await;
    ensure!(
        matches!(&renew, Err(e) if e.kind() == ErrorKind::NotHolder),
        "the superseded holder's renew must fail with NotHolder, got {renew:?}"
    );
    let release = old_client.release(&old).await?;
    ensure!(
        !release,
        "the superseded holder's release returned true (it released the new holder?)"
    );
    let after = holder_of(&**store, &key).await?;
    ensure!(
        after.holder == b && after.token == new.token,
        "after the old holder's renew and release the key shows {}/{}, expected b/{}",
        after.holder,
        after.token,
        new.token
    );
    if let (Some(was), Some(now)) = (before.remaining, after.remaining) {
        // Time only runs down: the old holder must neither extend (its TTL
        // is a tenth of the new one's) nor shorten the new lease.
        let passed = measured.elapsed() + ctx.capabilities().ttl_granularity;
        ensure!(
            now <= was && now + passed >= was,
            "the new holder's remaining time went from {was:?} to {now:?} in {passed:?} \
             (the old holder's renew or release touched the new lease)"
        );
    }
    ensure!(
        store.release(&new).await?,
        "the new holder's release returned false"
    );
    Ok(())
}

/// Acquisitions whose futures are dropped at random points (before they are
/// sent, in flight, just before the answer) never hold a key forever: each
/// key ends up free, or held by the dropped caller's holder until its lease
/// is given up, within one TTL (plus slack); nobody else holds it.
pub async fn cancelled_acquires_never_hold_forever(ctx: &Ctx) -> CaseResult {
    const KEYS: usize = 24;
    let ttl = ctx.profile().lease;
    let store = ctx.store();
    // One undisturbed cycle tells how long an acquire takes here.
    let probe = ctx.key("cancel-probe")?;
    let a = ctx.holder("a")?;
    let started = Instant::now();
    let lease = acquired(&**store, &probe, &a, ttl).await?;
    let round_trip = started.elapsed().max(Duration::from_millis(1));
    ensure!(store.release(&lease).await?, "release returned false");
    let mut keys: Vec<(LeaseKey, String)> = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let key = ctx.key(&format!("cancelled-{i}"))?;
        let holder = format!("h{i}");
        // From "dropped before the first poll" to "dropped after about two
        // round trips", spread evenly, plus a random part.
        let at = round_trip.mul_f64(2.0 * i as f64 / KEYS as f64 + rand::random::<f64>() * 0.2);
        let h = ctx.holder(&holder)?;
        let client = if i % 2 == 0 {
            store.clone()
        } else {
            ctx.client().await?
        };
        if i == 0 {
            drop(client.acquire(&key, &h, ttl));
        } else {
            let _ = timeout(at, client.acquire(&key, &h, ttl)).await;
        }
        drop(client);
        keys.push((key, holder));
    }
    let bound = ctx.granted(ttl) + ttl + ctx.profile().slack;
    let deadline = Instant::now() + bound;
    for (key, holder) in &keys {
        loop {
            match store.current(key).await? {
                None => break,
                Some(info) => ensure!(
                    info.holder.as_str() == holder,
                    "{key:?} is held by {} although only {holder} ever asked for it",
                    info.holder
                ),
            }
            ensure!(
                Instant::now() < deadline,
                "{key:?} is still held by {holder} {bound:?} after its acquire was dropped: \
                 a cancelled acquisition holds the key forever"
            );
            sleep(step(ctx)).await;
        }
    }
    Ok(())
}

/// How far a count may end above where it started after the cycles: a leak
/// of one resource per twenty cycles already exceeds it.
const LEAK_ALLOWANCE: u64 = 10;

/// 200 mixed cycles (acquire and release, `Held` answers, same-holder
/// re-acquires, acquisitions dropped in flight) on two clients leave the
/// server-side connections, locks and leases about where they started
/// (within ten, once dropped leases have had one TTL to expire).
pub async fn no_leaks_over_many_cycles(ctx: &Ctx) -> CaseResult {
    const CYCLES: usize = 200;
    let ttl = ctx.profile().lease;
    let (one, two) = (ctx.client().await?, ctx.client().await?);
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    let keys: Vec<LeaseKey> = (0..4)
        .map(|i| ctx.key(&format!("cycle-{i}")))
        .collect::<Result<_, _>>()?;
    // Warm up both clients (connections, prepared statements), then count.
    let warm = Instant::now();
    for client in [&one, &two] {
        let lease = acquired(&**client, &keys[0], &a, ttl).await?;
        ensure!(client.release(&lease).await?, "release returned false");
    }
    let round_trip = (warm.elapsed() / 4).max(Duration::from_millis(1));
    let baseline = ctx.resource_counts().await?;
    println!("  server-side resources before: {baseline:?}");
    let started = Instant::now();
    for i in 0..CYCLES {
        // Each key sees the four kinds of cycle in turn.
        let key = &keys[(i / 4) % keys.len()];
        match i % 4 {
            // Acquire, a `Held` answer to the other client, release.
            0 => {
                let lease = acquired(&*one, key, &a, ttl).await?;
                match two.acquire(key, &b, ttl).await? {
                    Acquire::Held(_) => {}
                    Acquire::Acquired(l) => {
                        return Err(Failure::new(format!(
                            "b acquired {key:?} (token {}) while a held it",
                            l.token
                        )));
                    }
                }
                ensure!(one.release(&lease).await?, "release returned false");
            }
            // The same holder acquires twice, releases the second term.
            1 => {
                acquired(&*two, key, &b, ttl).await?;
                let again = acquired(&*two, key, &b, ttl).await?;
                ensure!(two.release(&again).await?, "release returned false");
            }
            // An acquisition dropped in flight, then the same holder again.
            2 => {
                let at = round_trip.mul_f64(2.0 * rand::random::<f64>());
                let _ = timeout(at, one.acquire(key, &a, ttl)).await;
                let lease = acquired(&*one, key, &a, ttl).await?;
                ensure!(one.release(&lease).await?, "release returned false");
            }
            // Reads, and a force release of a free key.
            _ => {
                ensure!(
                    two.current(key).await?.is_none(),
                    "{key:?} held between cycles"
                );
                two.force_release(key).await?;
            }
        }
    }
    let took = started.elapsed();
    drop((one, two));
    let bound = ctx.granted(ttl) + ttl + ctx.profile().slack;
    let last = std::sync::Mutex::new(baseline.clone());
    let settled = poll(bound, step(ctx) * 4, || async {
        let now = ctx.resource_counts().await.ok()?;
        let ok = baseline
            .iter()
            .all(|(what, &was)| now.get(what).is_some_and(|&n| n <= was + LEAK_ALLOWANCE));
        *last.lock().unwrap_or_else(|e| e.into_inner()) = now;
        ok.then_some(())
    })
    .await;
    let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
    println!("  {CYCLES} cycles in {took:?}; server-side resources after: {last:?}");
    ensure!(
        settled.is_some(),
        "after {CYCLES} cycles (and {bound:?} to settle) the server-side resources went from \
         {baseline:?} to {last:?}: more than {LEAK_ALLOWANCE} above the start (a leak)"
    );
    for key in &keys {
        ensure!(
            ctx.store().current(key).await?.is_none(),
            "{key:?} is still held after the cycles"
        );
    }
    Ok(())
}
