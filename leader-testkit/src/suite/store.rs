//! Store-level cases: `LeaseStore` calls and their exact semantics.

use std::sync::Arc;
use std::time::Duration;

use leader_core::{
    Acquire, ErrorKind, FencingToken, HolderId, Lease, LeaseEvent, LeaseInfo, LeaseKey, LeaseStore,
    MAX_TTL, NotificationSupport,
};
use tokio::time::{Instant, sleep};

use super::{CaseResult, Ctx, Failure};

/// Acquires and expects success.
pub(crate) async fn acquired(
    store: &dyn LeaseStore,
    key: &LeaseKey,
    holder: &HolderId,
    ttl: Duration,
) -> Result<Lease, Failure> {
    match store.acquire(key, holder, ttl).await? {
        Acquire::Acquired(lease) => {
            ensure!(
                lease.key == *key && lease.holder == *holder,
                "acquire returned a lease for {:?}/{} instead of {key:?}/{holder}",
                lease.key,
                lease.holder
            );
            Ok(lease)
        }
        Acquire::Held(info) => Err(Failure::new(format!(
            "{holder} could not acquire {key:?}: held by {} (token {})",
            info.holder, info.token
        ))),
    }
}

/// Acquires and expects the key to be held by someone else.
async fn held(
    store: &dyn LeaseStore,
    key: &LeaseKey,
    holder: &HolderId,
    ttl: Duration,
) -> Result<LeaseInfo, Failure> {
    match store.acquire(key, holder, ttl).await? {
        Acquire::Held(info) => Ok(info),
        Acquire::Acquired(lease) => Err(Failure::new(format!(
            "{holder} acquired {key:?} (token {}) although it was held",
            lease.token
        ))),
    }
}

/// The current holder, expected present.
pub(crate) async fn holder_of(
    store: &dyn LeaseStore,
    key: &LeaseKey,
) -> Result<LeaseInfo, Failure> {
    store
        .current(key)
        .await?
        .ok_or_else(|| Failure::new(format!("current({key:?}) says free, but it is held")))
}

pub(crate) use crate::wait::poll;

pub(crate) fn step(ctx: &Ctx) -> Duration {
    (ctx.profile().lease / 40).max(Duration::from_millis(5))
}

/// One holder acquires; a second gets `Held` naming the first, with the
/// same token; `current` agrees.
pub async fn exclusivity(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("exclusive")?;
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    let lease = acquired(&**store, &key, &a, ttl).await?;
    let other = ctx.client().await?;
    let info = held(&*other, &key, &b, ttl).await?;
    ensure!(info.holder == a, "Held names {} instead of a", info.holder);
    ensure!(
        info.token == lease.token,
        "Held token {} != the lease's {}",
        info.token,
        lease.token
    );
    if let Some(rem) = info.remaining {
        ensure!(
            rem <= ctx.granted(ttl),
            "Held remaining {rem:?} exceeds the TTL {ttl:?}"
        );
    }
    let cur = holder_of(&*other, &key).await?;
    ensure!(
        cur.holder == a && cur.token == lease.token,
        "current says {}/{}",
        cur.holder,
        cur.token
    );
    ensure!(
        store.release(&lease).await?,
        "the holder's release returned false"
    );
    Ok(())
}

/// The same holder acquiring again starts a new term with a higher token;
/// the old term's lease can no longer renew or release.
pub async fn same_holder_acquires_again_with_a_new_token(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("again")?;
    let a = ctx.holder("a")?;
    let first = acquired(&**store, &key, &a, ttl).await?;
    let second = acquired(&**store, &key, &a, ttl).await?;
    ensure!(
        second.token > first.token,
        "re-acquire by the same holder must mint a higher token: {} then {}",
        first.token,
        second.token
    );
    let err = store.renew(&first).await;
    ensure!(
        matches!(&err, Err(e) if e.kind() == ErrorKind::NotHolder),
        "renewing the superseded term must fail with NotHolder, got {err:?}"
    );
    ensure!(
        !store.release(&first).await?,
        "releasing the superseded term must return false"
    );
    let cur = holder_of(&**store, &key).await?;
    ensure!(
        cur.token == second.token,
        "current token {} != the new term's {}",
        cur.token,
        second.token
    );
    store.renew(&second).await?;
    ensure!(
        store.release(&second).await?,
        "releasing the new term returned false"
    );
    Ok(())
}

/// Renewals keep the lease past its original TTL (and keep the token);
/// without them it ends one TTL after the last renewal (stores with
/// server-side expiry).
pub async fn renew_extends_the_lease(ctx: &Ctx) -> CaseResult {
    let store = ctx.store();
    let ttl = ctx.profile().lease;
    let key = ctx.key("renew")?;
    let a = ctx.holder("a")?;
    let lease = acquired(&**store, &key, &a, ttl).await?;
    let until = Instant::now() + ttl * 2;
    let mut last_sent = Instant::now();
    while Instant::now() < until {
        sleep(ttl / 4).await;
        last_sent = Instant::now();
        store.renew(&lease).await?;
    }
    let cur = holder_of(&**store, &key).await?;
    ensure!(
        cur.holder == a && cur.token == lease.token,
        "after renewing for twice the TTL the lease shows {}/{} (renewals must keep the token)",
        cur.holder,
        cur.token
    );
    if let Some(rem) = cur.remaining {
        // The server's clock started the TTL no earlier than the last send.
        let since = last_sent.elapsed();
        ensure!(
            rem + since + ctx.capabilities().ttl_granularity >= ttl.mul_f64(0.99)
                && rem <= ctx.granted(ttl),
            "{since:?} after the last renewal was sent the remaining time is {rem:?}; \
             expected about the TTL {ttl:?}"
        );
    }
    if !ctx.capabilities().server_side_expiry {
        ensure!(
            store.release(&lease).await?,
            "release after renewals returned false"
        );
        return Ok(());
    }
    let bound = ctx.granted(ttl) + ctx.profile().slack;
    let freed = poll(bound, step(ctx), || async {
        match store.current(&key).await {
            Ok(None) => Some(Instant::now()),
            _ => None,
        }
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the lease did not expire within {bound:?} of its last renewal"
        ))
    })?;
    let lived = freed - last_sent;
    ensure!(
        lived >= ttl.mul_f64(0.99),
        "the lease expired {lived:?} after its last renewal, before its TTL {ttl:?}"
    );
    Ok(())
}

/// Renew and release by another holder, or by the right holder with a
/// stale token, fail and leave the lease intact.
pub async fn non_holders_cannot_renew_or_release(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("guarded")?;
    let a = ctx.holder("a")?;
    let stale = acquired(&**store, &key, &a, ttl).await?;
    let lease = acquired(&**store, &key, &a, ttl).await?;
    let mut wrong_holder = lease.clone();
    wrong_holder.holder = ctx.holder("b")?;
    let mut wrong_token = lease.clone();
    wrong_token.token = FencingToken(lease.token.0 + 1);
    for (what, forged) in [
        ("another holder", &wrong_holder),
        ("a stale token", &stale),
        ("a future token", &wrong_token),
    ] {
        let renew = store.renew(forged).await;
        ensure!(
            matches!(&renew, Err(e) if e.kind() == ErrorKind::NotHolder),
            "renew with {what} must fail with NotHolder, got {renew:?}"
        );
        ensure!(
            !store.release(forged).await?,
            "release with {what} must return false"
        );
        let cur = holder_of(&**store, &key).await?;
        ensure!(
            cur.holder == a && cur.token == lease.token,
            "after a renew/release with {what} the lease shows {}/{}",
            cur.holder,
            cur.token
        );
    }
    store.renew(&lease).await?;
    ensure!(
        store.release(&lease).await?,
        "the real holder's release returned false"
    );
    Ok(())
}

/// After a release the key is free, another holder gets it with a higher
/// token, and releasing again is a no-op.
pub async fn release_then_acquire_again(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("cycle")?;
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    let first = acquired(&**store, &key, &a, ttl).await?;
    ensure!(store.release(&first).await?, "release returned false");
    ensure!(
        store.current(&key).await?.is_none(),
        "the key is not free after release"
    );
    ensure!(
        !store.release(&first).await?,
        "a second release must return false"
    );
    let second = acquired(&**store, &key, &b, ttl).await?;
    ensure!(
        second.token > first.token,
        "token {} after {}",
        second.token,
        first.token
    );
    ensure!(
        !store.release(&first).await?,
        "the old lease must not release the new holder"
    );
    ensure!(
        holder_of(&**store, &key).await?.holder == b,
        "b's lease was disturbed"
    );
    ensure!(store.release(&second).await?, "release returned false");
    Ok(())
}

/// A lease that is not renewed stays held for its TTL and then frees the
/// resource; the next holder gets a higher token.
pub async fn expiry_frees_the_resource(ctx: &Ctx) -> CaseResult {
    let store = ctx.store();
    let ttl = ctx.profile().lease;
    let key = ctx.key("expiry")?;
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    let sent = Instant::now();
    let first = acquired(&**store, &key, &a, ttl).await?;
    sleep(ttl / 2).await;
    // Half way through the TTL the lease must still hold. Judged by when
    // the call completed, so that a stalled test machine cannot fail it.
    if let Acquire::Acquired(_) = store.acquire(&key, &b, ttl).await? {
        let after = sent.elapsed();
        ensure!(
            after >= ttl.mul_f64(0.99),
            "b acquired {after:?} after a's acquisition was sent, before its TTL {ttl:?}"
        );
    }
    let bound = ctx.granted(ttl) + ctx.profile().slack;
    let (second, at) = poll(bound, step(ctx), || async {
        match store.acquire(&key, &b, ttl).await {
            Ok(Acquire::Acquired(lease)) => Some((lease, Instant::now())),
            _ => None,
        }
    })
    .await
    .ok_or_else(|| Failure::new(format!("the lease did not expire within {bound:?}")))?;
    ensure!(
        at - sent >= ttl.mul_f64(0.99),
        "the lease expired after {:?}, before its TTL {ttl:?}",
        at - sent
    );
    ensure!(
        second.token > first.token,
        "token {} after {}",
        second.token,
        first.token
    );
    let renew = store.renew(&first).await;
    ensure!(
        matches!(&renew, Err(e) if e.kind() == ErrorKind::NotHolder),
        "the expired lease must not renew, got {renew:?}"
    );
    Ok(())
}

/// (Session-bound stores.) When the holding client goes away, its lock is
/// freed without waiting for anything else.
pub async fn session_loss_frees_the_resource(ctx: &Ctx) -> CaseResult {
    let ttl = ctx.profile().lease;
    let key = ctx.key("session")?;
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    let holder_client = ctx.client().await?;
    let first = acquired(&*holder_client, &key, &a, ttl).await?;
    held(&**ctx.store(), &key, &b, ttl).await?;
    drop(holder_client);
    let bound = ttl + ctx.profile().slack;
    let second = poll(bound, step(ctx), || async {
        match ctx.store().acquire(&key, &b, ttl).await {
            Ok(Acquire::Acquired(lease)) => Some(lease),
            _ => None,
        }
    })
    .await
    .ok_or_else(|| {
        Failure::new(format!(
            "the lock of a dropped client was not freed within {bound:?} (a crashed process must not hold it)"
        ))
    })?;
    ensure!(
        second.token > first.token,
        "token {} after {}",
        second.token,
        first.token
    );
    Ok(())
}

/// Tokens strictly increase across many terms and holders, and never repeat.
pub async fn tokens_strictly_increase(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("tokens")?;
    let holders = [ctx.holder("a")?, ctx.holder("b")?, ctx.holder("c")?];
    let mut tokens: Vec<FencingToken> = Vec::new();
    for round in 0..24 {
        let h = &holders[round % holders.len()];
        let mut lease = acquired(&**store, &key, h, ttl).await?;
        tokens.push(lease.token);
        if round % 4 == 1 {
            lease = acquired(&**store, &key, h, ttl).await?;
            tokens.push(lease.token);
        }
        if round % 5 == 2 {
            ensure!(
                store.force_release(&key).await?.is_some(),
                "force_release found nothing"
            );
        } else {
            ensure!(
                store.release(&lease).await?,
                "release returned false in round {round}"
            );
        }
    }
    for pair in tokens.windows(2) {
        ensure!(
            pair[1] > pair[0],
            "tokens went {} then {} (all: {tokens:?})",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

/// 32 concurrent acquirers with their own clients: exactly one wins, the
/// others are told who holds it.
pub async fn concurrent_acquirers_one_wins(ctx: &Ctx) -> CaseResult {
    const N: usize = 32;
    let ttl = ctx.profile().lease * 10;
    let key = ctx.key("contended")?;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let client = ctx.client().await?;
        // Connect before the race (stores connect lazily): the case is about
        // contended acquires, and 32 simultaneous TLS handshakes on a loaded
        // machine can outlast one request's timeout.
        client.current(&key).await?;
        clients.push(client);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let (client, key, barrier) = (client.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                let holder = HolderId::new(format!("h{i}"))?;
                barrier.wait().await;
                client.acquire(&key, &holder, ttl).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut told = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(Acquire::Acquired(lease))) => winners.push((i, lease)),
            Ok(Ok(Acquire::Held(info))) => told.push(info.holder),
            Ok(Err(e)) => return Err(Failure::new(format!("acquirer {i} failed: {e}"))),
            Err(e) => return Err(Failure::new(format!("acquirer {i} panicked: {e}"))),
        }
    }
    ensure!(
        winners.len() == 1,
        "{} of {N} concurrent acquirers won",
        winners.len()
    );
    let (_, lease) = &winners[0];
    ensure!(
        told.iter().all(|h| *h == lease.holder),
        "losers were told of holders other than the winner {}: {told:?}",
        lease.holder
    );
    ensure!(
        holder_of(&**ctx.store(), &key).await?.holder == lease.holder,
        "current disagrees"
    );
    Ok(())
}

/// `current` says free for a free key, and holder, token and the right
/// remaining time for a held one.
pub async fn current_reports_holder_token_and_remaining(ctx: &Ctx) -> CaseResult {
    let store = ctx.store();
    let ttl = ctx.profile().lease * 15;
    let key = ctx.key("current")?;
    ensure!(
        store.current(&key).await?.is_none(),
        "a never-used key is reported held"
    );
    let a = ctx.holder("a")?;
    let sent = Instant::now();
    let lease = acquired(&**store, &key, &a, ttl).await?;
    let info = holder_of(&**store, &key).await?;
    let elapsed = sent.elapsed();
    ensure!(info.holder == a, "holder {} != a", info.holder);
    ensure!(
        info.token == lease.token,
        "token {} != {}",
        info.token,
        lease.token
    );
    match info.remaining {
        Some(rem) => ensure!(
            rem <= ctx.granted(ttl) && rem + elapsed + ctx.capabilities().ttl_granularity >= ttl,
            "remaining {rem:?} for a {ttl:?} lease acquired {elapsed:?} ago (wrong unit?)"
        ),
        None => ensure!(
            !ctx.capabilities().server_side_expiry,
            "a store with server-side expiry must report the remaining time"
        ),
    }
    ensure!(store.release(&lease).await?, "release returned false");
    ensure!(
        store.current(&key).await?.is_none(),
        "current says held after release"
    );
    Ok(())
}

/// Leases on different resources, and on the same resource under another
/// prefix, do not affect each other.
pub async fn resources_are_isolated(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    let one = ctx.key("one")?;
    let two = ctx.key("two")?;
    let other_prefix = LeaseKey::new(&format!("{}other:", ctx.prefix()), "one")?;
    let la = acquired(&**store, &one, &a, ttl).await?;
    let lb = acquired(&**store, &two, &b, ttl).await?;
    let lc = acquired(&**store, &other_prefix, &b, ttl).await?;
    ensure!(store.release(&lb).await?, "release of two returned false");
    ensure!(
        store.force_release(&other_prefix).await?.is_some(),
        "force_release found nothing"
    );
    let cur = holder_of(&**store, &one).await?;
    ensure!(
        cur.holder == a && cur.token == la.token,
        "releasing other keys disturbed `one`"
    );
    store.renew(&la).await?;
    ensure!(store.current(&two).await?.is_none(), "two still held");
    drop(lc);
    ensure!(store.release(&la).await?, "release returned false");
    Ok(())
}

/// Resource names with colons, braces, spaces, Unicode and 1 KiB length
/// either work fully (and stay distinct) or are refused with `InvalidName`.
pub async fn odd_names_work_or_are_refused(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let long = "x".repeat(1024);
    let names = [
        "a:b:c",
        "{tag}x",
        "x",
        "with space",
        "ключ-名前-🔑",
        "quote\"'back\\slash",
        "%s%n*?[]",
        long.as_str(),
    ];
    let mut taken = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = ctx.key(name)?;
        let holder = ctx.holder(&format!("h{i}"))?;
        match store.acquire(&key, &holder, ttl).await {
            Ok(Acquire::Acquired(lease)) => taken.push(lease),
            Ok(Acquire::Held(info)) => {
                return Err(Failure::new(format!(
                    "{name:?} is held by {} before anyone took it (names collide?)",
                    info.holder
                )));
            }
            Err(e) if e.kind() == ErrorKind::InvalidName => {
                println!("  store refuses resource name {name:?}: {e}");
            }
            Err(e) => return Err(Failure::new(format!("acquire of {name:?} failed: {e}"))),
        }
    }
    for lease in &taken {
        let cur = holder_of(&**store, &lease.key).await?;
        ensure!(
            cur.holder == lease.holder && cur.token == lease.token,
            "{:?} shows {}/{} instead of {}/{}",
            lease.key.resource(),
            cur.holder,
            cur.token,
            lease.holder,
            lease.token
        );
        store.renew(lease).await?;
        ensure!(
            store.release(lease).await?,
            "release of {:?} returned false",
            lease.key.resource()
        );
    }
    Ok(())
}

/// Empty names are refused by `LeaseKey`, and zero, sub-millisecond and
/// absurd TTLs by the store, with `InvalidArgument`; nothing is taken.
pub async fn invalid_arguments_are_refused(ctx: &Ctx) -> CaseResult {
    let store = ctx.store();
    for bad in ["", "   "] {
        let err = LeaseKey::new(ctx.prefix(), bad).err();
        ensure!(
            err.as_ref()
                .is_some_and(|e| e.kind() == ErrorKind::InvalidName),
            "resource name {bad:?} must be refused with InvalidName, got {err:?}"
        );
    }
    ensure!(
        HolderId::new("").is_err(),
        "an empty holder id must be refused"
    );
    let key = ctx.key("ttl")?;
    let a = ctx.holder("a")?;
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(500),
        MAX_TTL + Duration::from_secs(1),
        Duration::MAX,
    ] {
        let result = store.acquire(&key, &a, ttl).await;
        ensure!(
            matches!(&result, Err(e) if e.kind() == ErrorKind::InvalidArgument),
            "acquire with TTL {ttl:?} must fail with InvalidArgument, got {result:?}"
        );
    }
    ensure!(
        store.current(&key).await?.is_none(),
        "a refused acquire took the key"
    );
    Ok(())
}

/// Waits for a `Vacated` event, skipping others, for at most `within`.
async fn vacated(events: &mut leader_core::LeaseEvents, within: Duration) -> Result<bool, Failure> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return Ok(false),
            Ok(None) => return Err(Failure::new("the subscription ended")),
            Ok(Some(LeaseEvent::Vacated)) => return Ok(true),
            Ok(Some(_)) => {}
        }
    }
}

/// A watcher on another client hears of a release (and, when the store
/// says so, of an expiry) within a bound.
pub async fn release_notifications_arrive(ctx: &Ctx) -> CaseResult {
    let ttl = ctx.profile().lease;
    let slack = ctx.profile().slack;
    let key = ctx.key("watched")?;
    let a = ctx.holder("a")?;
    let watcher = ctx.client().await?;
    let mut events = watcher.watch(&key).await?;
    // A subscription may take a moment to be active on the server: allow a
    // few release cycles, each waited on for a third of the slack.
    let mut heard = false;
    for _ in 0..3 {
        let lease = acquired(&**ctx.store(), &key, &a, ttl * 10).await?;
        ensure!(ctx.store().release(&lease).await?, "release returned false");
        if vacated(&mut events, slack / 3).await? {
            heard = true;
            break;
        }
    }
    ensure!(heard, "no Vacated event within {slack:?} of three releases");
    if ctx.capabilities().notifications == NotificationSupport::ReleaseAndExpiry {
        let started = Instant::now();
        acquired(&**ctx.store(), &key, &a, ttl).await?;
        let bound = ctx.granted(ttl) + slack;
        ensure!(
            vacated(&mut events, bound).await?,
            "no Vacated event within {bound:?} of an expiry"
        );
        ensure!(
            started.elapsed() >= ttl.mul_f64(0.99),
            "Vacated arrived {:?} after acquiring, before the TTL {ttl:?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// A store without notifications says so with `Unsupported`.
pub async fn watch_unsupported_is_typed(ctx: &Ctx) -> CaseResult {
    let key = ctx.key("unwatched")?;
    let result = ctx.store().watch(&key).await;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Unsupported),
        "watch on a store without notifications must fail with Unsupported, got {result:?}"
    );
    Ok(())
}

/// `force_release` removes any holder's lease and reports it; the old
/// holder's renew fails; the next holder gets a higher token.
pub async fn force_release_frees_any_holder(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("forced")?;
    let (a, b) = (ctx.holder("a")?, ctx.holder("b")?);
    ensure!(
        store.force_release(&key).await?.is_none(),
        "force_release of a free key found a holder"
    );
    let holder_client = ctx.client().await?;
    let lease = acquired(&*holder_client, &key, &a, ttl).await?;
    let removed = store
        .force_release(&key)
        .await?
        .ok_or_else(|| Failure::new("force_release found no holder"))?;
    ensure!(
        removed.holder == a && removed.token == lease.token,
        "force_release reported {}/{}",
        removed.holder,
        removed.token
    );
    ensure!(
        store.current(&key).await?.is_none(),
        "the key is held after force_release"
    );
    let renew = holder_client.renew(&lease).await;
    ensure!(
        matches!(&renew, Err(e) if e.kind() == ErrorKind::NotHolder),
        "the removed holder's renew must fail with NotHolder, got {renew:?}"
    );
    let next = acquired(&**store, &key, &b, ttl).await?;
    ensure!(
        next.token > lease.token,
        "token {} after {}",
        next.token,
        lease.token
    );
    Ok(())
}
