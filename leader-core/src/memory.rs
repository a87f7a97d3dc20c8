//! An in-memory [`LeaseStore`]: a real backend with the same semantics as the
//! networked stores, for single-process use, tests and the demo.
//!
//! TTLs run on tokio's clock, so tests with paused time
//! (`#[tokio::test(start_paused = true)]`) control expiry exactly. Clones
//! share one store, so several electors in a process can compete on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::Result;
use crate::metadata::Metadata;
use crate::names::{FencingToken, HolderId, LeaseKey};
use crate::store::{
    Acquire, Capabilities, FencingSource, Lease, LeaseEvent, LeaseEvents, LeaseInfo, LeaseStore,
    NotificationSupport, check_ttl,
};

#[derive(Debug)]
struct Held {
    holder: HolderId,
    token: FencingToken,
    expires_at: Instant,
    metadata: Option<Metadata>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The highest token ever minted for this key; survives expiry and release
    /// so tokens never repeat.
    counter: u64,
    held: Option<Held>,
    watchers: Vec<mpsc::Sender<LeaseEvent>>,
}

impl Slot {
    /// The live holder, dropping an expired one first (notifying watchers).
    fn live(&mut self, now: Instant) -> Option<&Held> {
        if self.held.as_ref().is_some_and(|h| h.expires_at <= now) {
            self.held = None;
            self.notify(LeaseEvent::Vacated);
        }
        self.held.as_ref()
    }

    fn notify(&mut self, event: LeaseEvent) {
        // A full or closed subscriber is dropped; it sees `None` and polls.
        self.watchers
            .retain(|tx| tx.try_send(event.clone()).is_ok());
    }

    fn info(held: &Held, now: Instant) -> LeaseInfo {
        LeaseInfo::new(
            held.holder.clone(),
            held.token,
            Some(held.expires_at.saturating_duration_since(now)),
        )
        .with_metadata(held.metadata.clone())
    }
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<LeaseKey, Slot>,
}

/// The in-memory store. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave a slot half-updated
        // (every update is a single assignment), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lease with `metadata` (or none) in one step under the lock.
    fn take(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: Option<Metadata>,
    ) -> Result<Acquire> {
        check_ttl(ttl)?;
        let now = Instant::now();
        let expires_at = now + ttl;
        let token = {
            let mut inner = self.lock();
            let slot = inner.slots.entry(key.clone()).or_default();
            if let Some(held) = slot.live(now)
                && &held.holder != holder
            {
                return Ok(Acquire::Held(Slot::info(held, now)));
            }
            slot.counter += 1;
            let token = FencingToken(slot.counter);
            slot.held = Some(Held {
                holder: holder.clone(),
                token,
                expires_at,
                metadata,
            });
            slot.notify(LeaseEvent::Acquired {
                holder: holder.clone(),
                token,
            });
            token
        };
        self.schedule_expiry(key.clone(), token, expires_at);
        Ok(Acquire::Acquired(Lease::new(
            key.clone(),
            holder.clone(),
            token,
            ttl,
        )))
    }

    /// The slot of `lease`'s key while it still holds `lease` (holder and
    /// token), after dropping an expired holder; `NotHolder` otherwise.
    fn holding<'a>(
        inner: &'a mut Inner,
        lease: &Lease,
        now: Instant,
        operation: &'static str,
    ) -> Result<&'a mut Slot> {
        if let Some(slot) = inner.slots.get_mut(&lease.key)
            && slot
                .live(now)
                .is_some_and(|h| h.holder == lease.holder && h.token == lease.token)
        {
            return Ok(slot);
        }
        Err(crate::Error::not_holder(format!(
            "lease with token {} is no longer held by {}",
            lease.token, lease.holder
        ))
        .with_store("memory")
        .with_operation(operation)
        .with_key(lease.key.as_str()))
    }

    /// Arms a timer that removes the lease when it expires, so that watchers
    /// hear of expiry without polling.
    fn schedule_expiry(&self, key: LeaseKey, token: FencingToken, at: Instant) {
        let store = self.clone();
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut inner = store.lock();
            if let Some(slot) = inner.slots.get_mut(&key)
                && slot.held.as_ref().is_some_and(|h| h.token == token)
            {
                slot.live(Instant::now());
            }
        });
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(FencingSource::Counter)
            .with_notifications(NotificationSupport::ReleaseAndExpiry)
            // Expiry timers push every vacancy; a full subscriber is dropped
            // (its recv() ends), so a live subscription misses nothing.
            .with_complete_notifications()
            .with_metadata()
            .with_resign_requests()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        self.take(key, holder, ttl, None)
    }

    async fn acquire_with_metadata(
        &self,
        key: &LeaseKey,
        holder: &HolderId,
        ttl: Duration,
        metadata: &Metadata,
    ) -> Result<Acquire> {
        self.take(key, holder, ttl, Some(metadata.clone()))
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<()> {
        let mut inner = self.lock();
        let slot = Self::holding(&mut inner, lease, Instant::now(), "update_metadata")?;
        if let Some(held) = slot.held.as_mut() {
            held.metadata = Some(metadata.clone());
        }
        slot.notify(LeaseEvent::MetadataUpdated {
            holder: lease.holder.clone(),
            token: lease.token,
        });
        Ok(())
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        check_ttl(lease.ttl)?;
        let now = Instant::now();
        let expires_at = now + lease.ttl;
        {
            let mut inner = self.lock();
            let slot = Self::holding(&mut inner, lease, now, "renew")?;
            if let Some(held) = slot.held.as_mut() {
                held.expires_at = expires_at;
            }
        }
        self.schedule_expiry(lease.key.clone(), lease.token, expires_at);
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(&lease.key) else {
            return Ok(false);
        };
        let ours = slot
            .live(now)
            .is_some_and(|h| h.holder == lease.holder && h.token == lease.token);
        if ours {
            slot.held = None;
            slot.notify(LeaseEvent::Vacated);
        }
        Ok(ours)
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(inner
            .slots
            .get_mut(key)
            .and_then(|slot| slot.live(now).map(|h| Slot::info(h, now))))
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(key) else {
            return Ok(None);
        };
        let removed = slot.live(now).map(|h| Slot::info(h, now));
        if removed.is_some() {
            slot.held = None;
            slot.notify(LeaseEvent::Vacated);
        }
        Ok(removed)
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        let (tx, events) = LeaseEvents::channel(64);
        self.lock()
            .slots
            .entry(key.clone())
            .or_default()
            .watchers
            .push(tx);
        Ok(events)
    }

    async fn request_resign(&self, key: &LeaseKey, token: FencingToken) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(key) else {
            return Ok(false);
        };
        if slot.live(now).is_none_or(|h| h.token != token) {
            return Ok(false);
        }
        slot.notify(LeaseEvent::ResignRequested { token });
        Ok(true)
    }
}
