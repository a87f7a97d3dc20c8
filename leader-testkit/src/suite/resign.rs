//! Resigning: `leader_core::Elector::resign` on the store under test, and
//! resign requests sent through it (`LeaseStore::request_resign`).

use leader_core::ErrorKind;

use super::cluster::{Cluster, follower_reaction};
use super::{CaseResult, Ctx, Failure};

/// The leader resigns: its term ends and its lease is gone from the store
/// when `resign` returns, the other instance leads within a follower's
/// reaction time (not at expiry) with a higher token, and the resigned one
/// is still a candidate: it leads again when the other one leaves.
pub async fn election_resign_hands_over(ctx: &Ctx) -> CaseResult {
    let cluster = Cluster::start(ctx, "resign", 2).await?;
    let p = ctx.profile();
    let reaction = follower_reaction(ctx) + p.slack;
    let (old, _) = cluster.wait_for_leader(reaction, None).await?;
    let old_token = cluster.wait_written(old, p.slack).await?;
    ensure!(
        cluster.electors[old].resign(None).await,
        "resign() of the leader says it ended no term"
    );
    ensure!(
        !cluster.electors[old].is_leader(),
        "the resigned elector still says it leads"
    );
    if let Some(info) = ctx.store().current(cluster.electors[old].key()).await?
        && info.token == old_token
    {
        return Err(Failure::new(format!(
            "resign returned but the store still holds the resigned term ({} token {})",
            info.holder, info.token
        )));
    }
    let (new, took) = cluster.wait_for_leader(reaction, Some(old)).await?;
    ensure!(
        took < p.lease,
        "the other instance led {took:?} after the resign: no faster than expiry ({:?})",
        p.lease
    );
    let new_token = cluster.wait_written(new, p.slack).await?;
    ensure!(
        new_token > old_token,
        "the new token {new_token} is not above the resigned {old_token}"
    );
    // Still a candidate: once the other leaves, the resigned one leads
    // (after what is left of its hold-off, one follower reaction).
    cluster.electors[new].shutdown().await;
    let (back, _) = cluster.wait_for_leader(reaction * 2, Some(new)).await?;
    ensure!(
        back == old && cluster.token(back)? > new_token,
        "the resigned instance did not lead again with a higher token"
    );
    cluster.shutdown().await;
    cluster.check()
}

/// A resign request sent through the store (what `leaderctl resign` does)
/// ends the leader's term: the other instance leads within a follower's
/// reaction time of a request (sent up to three times while the term lasts:
/// a holder hears only the requests sent while it is subscribed) with a
/// higher token, and a request naming
/// the ended term finds nothing. On a store without
/// `Capabilities::resign_requests` the request fails as `Unsupported` and
/// the leader keeps leading.
pub async fn election_resign_request_hands_over(ctx: &Ctx) -> CaseResult {
    /// Requests sent before the case gives up (see below).
    const REQUESTS: usize = 3;

    let cluster = Cluster::start(ctx, "resign-request", 2).await?;
    let p = ctx.profile();
    let reaction = follower_reaction(ctx) + p.slack;
    let (old, _) = cluster.wait_for_leader(reaction, None).await?;
    let old_token = cluster.wait_written(old, p.slack).await?;
    let key = cluster.electors[old].key().clone();
    let asked = ctx.store().request_resign(&key, old_token).await;
    if !ctx.capabilities().resign_requests {
        let e = asked.err().ok_or_else(|| {
            Failure::new("request_resign succeeded on a store that declares no resign requests")
        })?;
        ensure!(
            e.kind() == ErrorKind::Unsupported,
            "request_resign: {e} instead of Unsupported"
        );
        ensure!(
            cluster.token(old)? == old_token,
            "an unsupported resign request ended the term"
        );
        cluster.shutdown().await;
        return cluster.check();
    }
    ensure!(
        asked?,
        "request_resign did not find the current term (token {old_token})"
    );
    // Rule 10: a request reaches only a holder subscribed at that moment,
    // and the requester learns the outcome from the seat. A leader whose
    // watch before the term timed out (a TLS handshake on a loaded
    // machine) watches again within a retry period, so the request is sent
    // again while the term lasts, a bounded number of times.
    let mut handed = cluster.wait_for_leader(reaction, Some(old)).await;
    for _ in 0..REQUESTS - 1 {
        if handed.is_ok() {
            break;
        }
        if !ctx.store().request_resign(&key, old_token).await? {
            // The term ended meanwhile: the handover is under way.
            handed = cluster.wait_for_leader(reaction, Some(old)).await;
            break;
        }
        handed = cluster.wait_for_leader(reaction, Some(old)).await;
    }
    let (new, took) = handed?;
    ensure!(
        took < p.lease,
        "the other instance led {took:?} after the resign request: no faster than expiry ({:?})",
        p.lease
    );
    let new_token = cluster.wait_written(new, p.slack).await?;
    ensure!(
        new_token > old_token,
        "the new token {new_token} is not above the resigned {old_token}"
    );
    ensure!(
        !ctx.store().request_resign(&key, old_token).await?,
        "a resign request naming the ended term {old_token} was sent"
    );
    cluster.shutdown().await;
    cluster.check()
}
