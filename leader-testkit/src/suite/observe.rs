//! Leader metadata and observing: `LeaseStore::acquire_with_metadata` /
//! `update_metadata` and `leader_core::Observer` on the store under test.

use leader_core::{Acquire, ErrorKind, LeaderInfo, Metadata, Observer};
use tokio::sync::watch;
use tokio::time::timeout;

use super::cluster::follower_reaction;
use super::store::{acquired, holder_of};
use super::{CaseResult, Ctx, Failure};

fn metadata(value: &str) -> Result<Metadata, Failure> {
    Ok(Metadata::new(value)?)
}

/// Metadata travels with its term. On a store that declares
/// `Capabilities::metadata`: it is read back with the same token (by
/// `current` and by a refused acquirer), replaced only by the holder of
/// that token, and gone with the term. On one that does not, both calls
/// fail with `Unsupported` and take nothing.
pub async fn metadata_is_stored_with_the_term(ctx: &Ctx) -> CaseResult {
    let (store, ttl) = (ctx.store(), ctx.profile().lease * 10);
    let key = ctx.key("meta")?;
    let (a, b) = (ctx.holder("meta-a")?, ctx.holder("meta-b")?);
    let first = metadata("10.0.0.1:8080")?;
    if !ctx.capabilities().metadata {
        let e = store
            .acquire_with_metadata(&key, &a, ttl, &first)
            .await
            .err()
            .ok_or_else(|| {
                Failure::new("acquire_with_metadata succeeded on a store that declares no metadata")
            })?;
        ensure!(
            e.kind() == ErrorKind::Unsupported,
            "acquire_with_metadata: {e} instead of Unsupported"
        );
        ensure!(
            store.current(&key).await?.is_none(),
            "an unsupported acquire_with_metadata took the key"
        );
        let lease = acquired(&**store, &key, &a, ttl).await?;
        let e = store
            .update_metadata(&lease, &first)
            .await
            .err()
            .ok_or_else(|| {
                Failure::new("update_metadata succeeded on a store that declares no metadata")
            })?;
        ensure!(
            e.kind() == ErrorKind::Unsupported,
            "update_metadata: {e} instead of Unsupported"
        );
        store.release(&lease).await?;
        return Ok(());
    }
    let lease = match store.acquire_with_metadata(&key, &a, ttl, &first).await? {
        Acquire::Acquired(lease) => lease,
        Acquire::Held(info) => {
            return Err(Failure::new(format!(
                "the free key is held by {}",
                info.holder
            )));
        }
    };
    let info = holder_of(&**store, &key).await?;
    ensure!(
        info.token == lease.token && info.metadata.as_ref() == Some(&first),
        "current shows token {} with {:?}, expected token {} with the acquired metadata",
        info.token,
        info.metadata,
        lease.token
    );
    match store.acquire(&key, &b, ttl).await? {
        Acquire::Held(info) => ensure!(
            info.metadata.as_ref() == Some(&first),
            "a refused acquirer was told {:?}, not the holder's metadata",
            info.metadata
        ),
        Acquire::Acquired(_) => return Err(Failure::new("a second holder took the held key")),
    }
    let second = metadata("10.0.0.2:8080")?;
    store.update_metadata(&lease, &second).await?;
    let info = holder_of(&**store, &key).await?;
    ensure!(
        info.token == lease.token && info.metadata.as_ref() == Some(&second),
        "after update_metadata current shows token {} with {:?}",
        info.token,
        info.metadata
    );
    // A request with another token (a stale term) changes nothing.
    let mut stale = lease.clone();
    stale.token = leader_core::FencingToken(lease.token.0.saturating_sub(1));
    let e = store
        .update_metadata(&stale, &first)
        .await
        .err()
        .ok_or_else(|| Failure::new("update_metadata with a stale token succeeded"))?;
    ensure!(
        e.kind() == ErrorKind::NotHolder,
        "a stale update gave {e}, not NotHolder"
    );
    ensure!(
        holder_of(&**store, &key).await?.metadata.as_ref() == Some(&second),
        "a stale update changed the metadata"
    );
    // Gone with the term: the next term, acquired plainly, has none.
    ensure!(store.release(&lease).await?, "release returned false");
    let next = acquired(&**store, &key, &b, ttl).await?;
    let info = holder_of(&**store, &key).await?;
    ensure!(
        info.token == next.token && info.metadata.is_none(),
        "the next term (token {}) shows the old term's metadata {:?}",
        info.token,
        info.metadata
    );
    let e = store
        .update_metadata(&lease, &first)
        .await
        .err()
        .ok_or_else(|| Failure::new("the released term could still update the metadata"))?;
    ensure!(
        e.kind() == ErrorKind::NotHolder,
        "a released term's update gave {e}, not NotHolder"
    );
    store.release(&next).await?;
    Ok(())
}

/// An `Observer` publishes a holder (with token and, where kept, metadata),
/// the empty seat after a release, and the next holder, each within a
/// follower's reaction time, and never takes the seat itself.
pub async fn observer_follows_the_seat(ctx: &Ctx) -> CaseResult {
    let p = ctx.profile();
    let (store, ttl) = (ctx.store(), p.lease * 10);
    let config = ctx.election_config("seat", "watcher");
    let key = ctx.key("seat")?;
    let observer = Observer::start(ctx.client().await?, &config).await?;
    ensure!(
        observer.leader().is_none(),
        "the observer sees a leader of a fresh key"
    );
    let mut rx = observer.subscribe();
    let bound = follower_reaction(ctx) + p.slack;
    let a = ctx.holder("seat-a")?;
    let m = metadata("seat-a:80")?;
    let first = if ctx.capabilities().metadata {
        match store.acquire_with_metadata(&key, &a, ttl, &m).await? {
            Acquire::Acquired(lease) => lease,
            Acquire::Held(_) => return Err(Failure::new("the fresh key is held")),
        }
    } else {
        acquired(&**store, &key, &a, ttl).await?
    };
    let seen = change(&mut rx, bound, "the first holder").await?;
    let seen =
        seen.ok_or_else(|| Failure::new("the observer published an empty seat while held"))?;
    ensure!(
        seen.holder == a && seen.token == first.token,
        "the observer saw {} token {}, not seat-a token {}",
        seen.holder,
        seen.token,
        first.token
    );
    if ctx.capabilities().metadata {
        ensure!(
            seen.metadata.as_ref() == Some(&m),
            "the observer saw {:?}, not the holder's metadata",
            seen.metadata
        );
    }
    ensure!(store.release(&first).await?, "release returned false");
    let seen = change(&mut rx, bound, "the empty seat").await?;
    ensure!(
        seen.is_none(),
        "after the release the observer saw {:?}",
        seen.map(|s| s.holder)
    );
    let b = ctx.holder("seat-b")?;
    let second = acquired(&**store, &key, &b, ttl).await?;
    let seen = change(&mut rx, bound, "the second holder").await?;
    ensure!(
        seen.as_ref().map(|s| (&s.holder, s.token)) == Some((&b, second.token)),
        "the observer saw {:?}, not seat-b token {}",
        seen.map(|s| (s.holder, s.token)),
        second.token
    );
    ensure!(
        store.release(&second).await?,
        "release returned false: the observer touched the lease"
    );
    Ok(())
}

/// Waits for the observer's next change.
async fn change(
    rx: &mut watch::Receiver<Option<LeaderInfo>>,
    within: std::time::Duration,
    what: &str,
) -> Result<Option<LeaderInfo>, Failure> {
    timeout(within, rx.changed())
        .await
        .map_err(|_| {
            Failure::new(format!(
                "the observer did not publish {what} within {within:?}"
            ))
        })?
        .map_err(|_| Failure::new("the observer stopped"))?;
    Ok(rx.borrow_and_update().clone())
}
