//! Holder identity: instances given the same `InstanceId` (a reused pod
//! name, a copied config file) must never pass for one another in the store.
//!
//! Every store treats an acquire by the current holder as that holder's
//! re-acquisition (a new term, see `same_holder_acquires_again_with_a_new_token`),
//! so this holds only because the library makes every holder id unique.

use leader_core::{Elector, Locks};
use tokio::time::{Instant, sleep};

use super::cluster::follower_reaction;
use super::store::{poll, step};
use super::{CaseResult, Ctx, Failure};

/// The `InstanceId` both instances are given.
const SHARED: &str = "pod-a";

/// Two electors and two lock factories configured with the same
/// `InstanceId`, each on its own client as two processes would be: exactly
/// one leads and keeps its term, one gets the lock, and the store shows a
/// holder that starts with the instance id.
pub async fn identity_shared_instance_id_one_holder(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let config = ctx.election_config("identity", SHARED);
    let electors = [
        Elector::start(ctx.client().await?, config.clone())?,
        Elector::start(ctx.client().await?, config.clone())?,
    ];
    let leaders = || -> Vec<usize> { (0..2).filter(|&i| electors[i].is_leader()).collect() };
    let leader = poll(follower_reaction(ctx) + p.slack, step(ctx), || async {
        match leaders()[..] {
            [one] => Some(one),
            _ => None,
        }
    })
    .await
    .ok_or_else(|| Failure::new(format!("no single leader; leading: {:?}", leaders())))?;
    let token = electors[leader].token();
    // Sharing a holder id, the two took the lease from each other at every
    // retry: watch for two leases' time that leadership neither moves nor
    // is shared.
    let until = Instant::now() + p.lease * 2;
    while Instant::now() < until {
        let now = leaders();
        ensure!(
            now == [leader] && electors[leader].token() == token,
            "with a shared InstanceId leadership moved or was shared: leading {now:?}, \
             token {:?} then {:?}",
            token,
            electors[leader].token()
        );
        sleep(step(ctx)).await;
    }
    let info = ctx
        .store()
        .current(electors[leader].key())
        .await?
        .ok_or_else(|| Failure::new("the store shows no holder while an instance leads"))?;
    let holder = electors[leader].instance_id();
    ensure!(
        &info.holder == holder && Some(info.token) == token,
        "the store shows {}/{} but {holder} leads with {token:?}",
        info.holder,
        info.token
    );
    ensure!(
        holder.as_str().starts_with(&format!("{SHARED}/")),
        "the holder {holder} does not start with the instance id {SHARED}"
    );
    for elector in &electors {
        elector.shutdown().await;
    }

    let first = Locks::new(ctx.client().await?, config.clone())?;
    let second = Locks::new(ctx.client().await?, config)?;
    let guard = first
        .try_acquire("identity-lock")
        .await?
        .ok_or_else(|| Failure::new("a free lock could not be taken"))?;
    let stolen = second.try_acquire("identity-lock").await?;
    ensure!(
        stolen.is_none(),
        "a second lock factory with the same InstanceId took the held lock"
    );
    ensure!(guard.is_held(), "the first guard lost its lock");
    let key = ctx.key("identity-lock")?;
    let info = ctx
        .store()
        .current(&key)
        .await?
        .ok_or_else(|| Failure::new("the store shows no holder of a held lock"))?;
    ensure!(
        &info.holder == guard.holder() && info.holder.as_str().starts_with(&format!("{SHARED}/")),
        "the store shows {} for the lock held by {}",
        info.holder,
        guard.holder()
    );
    ensure!(
        guard.release().await?,
        "releasing the held lock was not confirmed"
    );
    Ok(())
}
