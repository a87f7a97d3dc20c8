//! One acquisition of a key at a time per store.
//!
//! When a holder releases, every follower of the key on this store is woken
//! at once. Taking turns, the first one reads the key, finds it free and
//! takes it; the others, reading after it, find it held and return without
//! granting a lease. Without turns, each would grant a lease, lose the
//! transaction and revoke it: a thousand candidates in one process meant a
//! thousand grants and revokes (raft writes) per handover, slowing the
//! winner's own grant. Acquisitions of different keys do not wait for each
//! other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

/// The keys being acquired now, each with the lock its acquirers queue on.
#[derive(Default)]
pub(super) struct Turns {
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The turn to acquire one key; the next in line goes when it is dropped.
pub(super) struct Turn<'a> {
    turns: &'a Turns,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the turn to acquire `key`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait leaves the queue.
    pub(super) async fn take(&self, key: &str) -> Turn<'_> {
        let lock = self.keys().entry(key.to_owned()).or_default().clone();
        let guard = lock.lock_owned().await;
        Turn {
            turns: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }

    /// How many keys have an acquisition running or queued.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.keys().len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut keys = self.turns.keys();
        if let Some(guard) = self.guard.take() {
            // The map and this guard are the only owners: nobody is queued
            // (a newcomer clones under the map lock, which we hold).
            let alone = Arc::strong_count(OwnedMutexGuard::mutex(&guard)) == 2;
            drop(guard);
            if alone {
                keys.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_turn_per_key_at_a_time_and_no_entry_left_behind() {
        let turns = Turns::default();
        let first = turns.take("a").await;
        // Another key does not wait.
        let other = turns.take("b").await;
        // The same key waits until the first turn ends.
        let mut second = Box::pin(turns.take("a"));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut second)
                .await
                .is_err(),
            "a second turn on a key began while the first was running"
        );
        drop(first);
        let second = second.await;
        assert_eq!(turns.len(), 2);
        drop(second);
        drop(other);
        assert_eq!(turns.len(), 0);
    }
}
