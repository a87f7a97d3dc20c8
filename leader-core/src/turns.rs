//! [`Turns`]: acquisitions of one key through one store client take turns,
//! and a candidate waiting for its turn may take the answer of the turn
//! before it, for stores to build on.
//!
//! When a holder releases, every follower of the key on the store client is
//! woken at once and calls `acquire`. Without coordination each of them asks
//! the server: a thousand candidates in one process meant a thousand
//! requests per handover, and the winner's own request queued behind them.
//! With [`Turns::run`] one request is in flight per key; a caller whose
//! `acquire` began *before* that request was sent reuses its
//! [`Acquire::Held`] answer instead of asking again, so one handover costs
//! about two requests (the winner's, then one that finds the seat taken)
//! however many followers wait.
//!
//! # Why sharing a `Held` answer is correct
//!
//! The in-flight request was sent after the waiter's call began, and its
//! answer arrived before the waiter returns: the server read the key inside
//! the waiter's call, so answering the waiter with that read is
//! linearizable, as if the waiter had asked itself at that instant. A caller
//! that arrived *after* the request was sent must not reuse it: it may have
//! been woken by a release that the read predates, and would then wait for
//! a release that already happened. Only `Held` answers are shared, and
//! never with the holder the answer names (for it, `acquire` must start a
//! new term). `Acquired` answers and errors are never shared: a lease
//! belongs to one holder, and an error may be the caller's alone.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::{Acquire, HolderId, LeaseInfo, Result};

/// The acquisitions of each key through one store client, taking turns.
///
/// Keep one per store client (shared by its clones) and run every
/// `acquire` through [`Turns::run`], or, where the acquisition has several
/// exits, through [`Turns::take`] and [`Turn::held`]. `K` is whatever
/// identifies the seat on the server: the key string, or (Postgres) the
/// advisory lock number. Acquisitions of different keys never wait for
/// each other, and a key's entry lives only while someone acquires it.
///
/// ```
/// # use leader_core::{Acquire, HolderId, LeaseInfo, FencingToken, Result};
/// use leader_core::turns::Turns;
///
/// # async fn ask_the_server(holder: &HolderId) -> Result<Acquire> {
/// #     Ok(Acquire::Held(LeaseInfo::new(HolderId::new("other")?, FencingToken(1), None)))
/// # }
/// # async fn demo() -> Result<()> {
/// // One per store client, shared by its clones.
/// let turns: Turns = Turns::new();
/// let holder = HolderId::new("me")?;
/// // In `acquire`: ask the server in turn, or share the answer in flight.
/// let answer = turns
///     .run(&"my-key".to_owned(), &holder, || ask_the_server(&holder))
///     .await?;
/// assert!(matches!(answer, Acquire::Held(_)));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Turns<K = String> {
    keys: Mutex<HashMap<K, Arc<Line>>>,
}

/// The queue of one key.
#[derive(Debug, Default)]
struct Line {
    /// Held by the caller whose request is in flight (FIFO).
    turn: Arc<tokio::sync::Mutex<()>>,
    answers: Mutex<Answers>,
}

/// What the turns of one key have asked and been told.
#[derive(Debug, Default)]
struct Answers {
    /// Requests begun so far: a request numbered `n` was sent after every
    /// caller that arrived while `started < n`.
    started: u64,
    /// The latest `Held` answer: the number of its request, when it
    /// arrived, and what it said. Cleared by any other outcome.
    held: Option<(u64, Instant, LeaseInfo)>,
}

impl<K> Default for Turns<K> {
    fn default() -> Self {
        Turns {
            keys: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single assignments under the lock: a panic cannot leave it half done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: Eq + Hash + Clone> Turns<K> {
    /// No acquisitions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `attempt` (one acquisition of `key` by `holder`) in its turn,
    /// or answers with the `Held` answer of a request sent after this call
    /// began (see the module documentation).
    ///
    /// Call it first thing in `acquire`, before anything is sent: `attempt`
    /// must send its request(s) only after it is called.
    ///
    /// # Errors
    ///
    /// Whatever `attempt` returns.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a caller dropped while waiting leaves the line; one
    /// dropped during `attempt` lets the next in line ask for itself.
    pub async fn run<F, Fut>(&self, key: &K, holder: &HolderId, attempt: F) -> Result<Acquire>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Acquire>>,
    {
        let turn = self.take(key, holder).await;
        if let Some(info) = turn.shared() {
            return Ok(Acquire::Held(info));
        }
        let outcome = attempt().await;
        turn.answer(&outcome);
        outcome
    }

    /// Waits for the turn to acquire `key` for `holder`. Check
    /// [`Turn::shared`] first: when it has an answer, return it without
    /// asking the server. Otherwise send the request(s), and pass a `Held`
    /// answer through [`Turn::held`] (or any outcome through
    /// [`Turn::answer`]) so the callers waiting behind may share it. The
    /// next in line goes when the turn is dropped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait leaves the line.
    pub async fn take(&self, key: &K, holder: &HolderId) -> Turn<'_, K> {
        let line = lock(&self.keys).entry(key.clone()).or_default().clone();
        let mut turn = Turn {
            turns: self,
            key: key.clone(),
            line,
            guard: None,
            number: None,
        };
        let arrived = lock(&turn.line.answers).started;
        turn.guard = Some(Arc::clone(&turn.line.turn).lock_owned().await);
        let mut answers = lock(&turn.line.answers);
        let shareable = answers
            .held
            .as_ref()
            .is_some_and(|(n, _, info)| *n > arrived && info.holder != *holder);
        if !shareable {
            answers.started += 1;
            turn.number = Some(answers.started);
        }
        drop(answers);
        turn
    }

    /// How many keys have an acquisition running or waiting.
    pub fn len(&self) -> usize {
        lock(&self.keys).len()
    }

    /// Whether no acquisition is running or waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One caller's turn to acquire a key (see [`Turns::take`]); the next in
/// line goes when it is dropped.
#[derive(Debug)]
pub struct Turn<'a, K: Eq + Hash = String> {
    turns: &'a Turns<K>,
    key: K,
    line: Arc<Line>,
    guard: Option<OwnedMutexGuard<()>>,
    /// The number of this turn's request; `None` when it shares an answer.
    number: Option<u64>,
}

impl<K: Eq + Hash> Turn<'_, K> {
    /// The `Held` answer of a request sent after this caller arrived, which
    /// it returns instead of asking the server. Its `remaining` is
    /// shortened by the time since the answer arrived.
    pub fn shared(&self) -> Option<LeaseInfo> {
        if self.number.is_some() {
            return None;
        }
        let answers = lock(&self.line.answers);
        let (_, at, info) = answers.held.as_ref()?;
        let mut info = info.clone();
        info.remaining = info.remaining.map(|r| r.saturating_sub(at.elapsed()));
        Some(info)
    }

    /// Records this turn's outcome: a `Held` answer is offered to the
    /// callers that arrived before the request was sent; any other outcome
    /// withdraws the previous offer.
    pub fn answer(&self, outcome: &Result<Acquire>) {
        let Some(number) = self.number else { return };
        lock(&self.line.answers).held = match outcome {
            Ok(Acquire::Held(info)) => Some((number, Instant::now(), info.clone())),
            _ => None,
        };
    }

    /// Records a `Held` answer (see [`Turn::answer`]) and returns it.
    pub fn held(&self, info: LeaseInfo) -> Acquire {
        if let Some(number) = self.number {
            lock(&self.line.answers).held = Some((number, Instant::now(), info.clone()));
        }
        Acquire::Held(info)
    }
}

impl<K: Eq + Hash> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        let mut keys = lock(&self.turns.keys);
        drop(self.guard.take());
        // Only the map's copy and ours: nobody else is in line (a newcomer
        // clones under the map lock, which we hold).
        if Arc::strong_count(&self.line) == 2 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::{FencingToken, Lease, LeaseKey};

    fn holder(name: &str) -> HolderId {
        HolderId::new(name).expect("valid holder")
    }

    fn held_by(name: &str) -> Acquire {
        Acquire::Held(LeaseInfo::new(
            holder(name),
            FencingToken(7),
            Some(Duration::from_secs(30)),
        ))
    }

    fn acquired(name: &str) -> Acquire {
        let key = LeaseKey::new("t/", "k").expect("valid key");
        Acquire::Acquired(Lease::new(
            key,
            holder(name),
            FencingToken(8),
            Duration::from_secs(30),
        ))
    }

    fn holder_of(a: &Acquire) -> (&'static str, String) {
        match a {
            Acquire::Acquired(l) => ("acquired", l.holder.as_str().to_owned()),
            Acquire::Held(i) => ("held", i.holder.as_str().to_owned()),
        }
    }

    /// An attempt that counts itself and answers what `answer` receives.
    fn gated(
        calls: &AtomicUsize,
        answer: oneshot::Receiver<Acquire>,
    ) -> impl Future<Output = Result<Acquire>> + '_ {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok(answer.await.expect("answer sent")) }
    }

    /// Lets every spawned task run until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_turn_per_key_at_a_time_and_no_entry_left_behind() {
        let turns: Arc<Turns> = Arc::new(Turns::new());
        let (tx_a, rx_a) = oneshot::channel();
        let (tx_b, rx_b) = oneshot::channel();
        let calls = Arc::new(AtomicUsize::new(0));
        let spawn = |key: &'static str, name: &'static str, rx| {
            let (turns, calls) = (turns.clone(), calls.clone());
            tokio::spawn(async move {
                turns
                    .run(&key.to_owned(), &holder(name), || gated(&calls, rx))
                    .await
            })
        };
        let first = spawn("a", "x", rx_a);
        settle().await;
        // Another key does not wait.
        let other = spawn("b", "y", rx_b);
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The same key waits until the first turn ends.
        let (tx_c, rx_c) = oneshot::channel();
        let second = spawn("a", "z", rx_c);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "two turns on one key at once"
        );
        tx_a.send(acquired("x")).expect("first waits");
        first.await.expect("joins").expect("ok");
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "the next in line asks");
        assert_eq!(turns.len(), 2);
        tx_c.send(held_by("x")).expect("second waits");
        tx_b.send(acquired("y")).expect("other waits");
        second.await.expect("joins").expect("ok");
        other.await.expect("joins").expect("ok");
        assert!(turns.is_empty());
    }

    /// Callers that arrived before a request was sent share its `Held`
    /// answer; callers that arrived after it was sent ask for themselves.
    #[tokio::test(start_paused = true)]
    async fn a_held_answer_is_shared_only_with_callers_that_arrived_before_it_was_sent() {
        let turns: Arc<Turns> = Arc::new(Turns::new());
        let key = "k".to_owned();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut gates = Vec::new();
        let mut spawn = |name: &'static str| {
            let (tx, rx) = oneshot::channel();
            gates.push(tx);
            let (turns, calls, key) = (turns.clone(), calls.clone(), key.clone());
            tokio::spawn(async move { turns.run(&key, &holder(name), || gated(&calls, rx)).await })
        };
        // `first`'s request is in flight; `early` arrives before the second
        // request is sent, `late` after it.
        let first = spawn("first");
        settle().await;
        let early = spawn("early");
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let mut gates = gates.into_iter();
        // The first turn wins: nobody may take that answer.
        gates
            .next()
            .expect("gate")
            .send(acquired("first"))
            .expect("waits");
        assert_eq!(
            holder_of(&first.await.expect("joins").expect("ok")),
            ("acquired", "first".into())
        );
        settle().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "early asks for itself after an Acquired"
        );
        // `early`'s request is in flight now; `late` arrives after its send.
        let (tx_late, rx_late) = oneshot::channel();
        let late = {
            let (turns, calls, key) = (turns.clone(), calls.clone(), key.clone());
            tokio::spawn(async move {
                turns
                    .run(&key, &holder("late"), || gated(&calls, rx_late))
                    .await
            })
        };
        settle().await;
        gates
            .next()
            .expect("gate")
            .send(held_by("first"))
            .expect("waits");
        assert_eq!(
            holder_of(&early.await.expect("joins").expect("ok")),
            ("held", "first".into())
        );
        settle().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "a caller that arrived after the request was sent reused its answer"
        );
        tx_late.send(held_by("first")).expect("waits");
        late.await.expect("joins").expect("ok");
        assert!(turns.is_empty());
    }

    /// Many callers waiting behind one request all take its `Held` answer;
    /// the holder it names and callers after an error ask for themselves.
    #[tokio::test(start_paused = true)]
    async fn waiting_callers_share_one_held_answer_but_not_its_holder_or_an_error() {
        let turns: Arc<Turns> = Arc::new(Turns::new());
        let key = "k".to_owned();
        let calls = Arc::new(AtomicUsize::new(0));
        let gated_run = |name: &'static str, rx: oneshot::Receiver<Acquire>| {
            let (turns, calls, key) = (turns.clone(), calls.clone(), key.clone());
            tokio::spawn(async move { turns.run(&key, &holder(name), || gated(&calls, rx)).await })
        };
        let (tx_first, rx) = oneshot::channel();
        let first = gated_run("first", rx);
        settle().await;
        // Arrive while the first request is in flight: the second asks
        // next, and the others may share the second's answer.
        let (tx_second, rx) = oneshot::channel();
        let second = gated_run("second", rx);
        settle().await;
        let waiting: Vec<_> = (0..50)
            .map(|i| {
                let (turns, key) = (turns.clone(), key.clone());
                tokio::spawn(async move {
                    let name = format!("w{i}");
                    turns
                        .run(&key, &holder(&name), || async {
                            panic!("{name} asked although it could share")
                        })
                        .await
                })
            })
            .collect();
        settle().await;
        // The holder the answer names must ask: it would re-acquire.
        let (tx_own, rx) = oneshot::channel();
        let own = gated_run("leader", rx);
        settle().await;
        tx_first.send(held_by("leader")).expect("waits");
        first.await.expect("joins").expect("ok");
        settle().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the second asks for itself"
        );
        tx_second.send(held_by("leader")).expect("waits");
        second.await.expect("joins").expect("ok");
        for w in waiting {
            assert_eq!(
                holder_of(&w.await.expect("joins").expect("ok")),
                ("held", "leader".into())
            );
        }
        settle().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "the named holder asks for itself"
        );
        tx_own.send(acquired("leader")).expect("waits");
        own.await.expect("joins").expect("ok");

        // An error is not shared.
        let failing = {
            let (turns, key) = (turns.clone(), key.clone());
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                turns
                    .run(&key, &holder("f"), || async move {
                        let _ = rx.await;
                        Err(crate::Error::unavailable("down"))
                    })
                    .await
            });
            (task, tx)
        };
        settle().await;
        let (tx_after, rx_after) = oneshot::channel();
        let after = {
            let (turns, calls, key) = (turns.clone(), calls.clone(), key.clone());
            tokio::spawn(async move {
                turns
                    .run(&key, &holder("g"), || gated(&calls, rx_after))
                    .await
            })
        };
        settle().await;
        failing.1.send(()).expect("waits");
        assert!(failing.0.await.expect("joins").is_err());
        settle().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "a caller behind an error asks"
        );
        tx_after.send(held_by("leader")).expect("waits");
        after.await.expect("joins").expect("ok");
        assert!(turns.is_empty());
    }

    /// A caller dropped in its turn lets the next one ask, whose answer the
    /// others in line share.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_turn_passes_on_to_the_next_in_line() {
        let turns: Arc<Turns> = Arc::new(Turns::new());
        let key = "k".to_owned();
        let calls = Arc::new(AtomicUsize::new(0));
        let (_never, rx) = oneshot::channel::<Acquire>();
        let dropped = {
            let (turns, calls, key) = (turns.clone(), calls.clone(), key.clone());
            tokio::spawn(async move { turns.run(&key, &holder("d"), || gated(&calls, rx)).await })
        };
        settle().await;
        let (tx, rx) = oneshot::channel();
        let next = {
            let (turns, calls, key) = (turns.clone(), calls.clone(), key.clone());
            tokio::spawn(async move { turns.run(&key, &holder("n"), || gated(&calls, rx)).await })
        };
        settle().await;
        // Arrives before `next` asks.
        let slow = {
            let (turns, key) = (turns.clone(), key.clone());
            tokio::spawn(async move {
                // Stays in line behind `next`, which has not asked yet.
                turns
                    .run(&key, &holder("s"), || async {
                        panic!("s asked although it could share")
                    })
                    .await
            })
        };
        settle().await;
        dropped.abort();
        settle().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the next in line asks once the turn is dropped"
        );
        tx.send(held_by("leader")).expect("waits");
        next.await.expect("joins").expect("ok");
        let Acquire::Held(info) = slow.await.expect("joins").expect("ok") else {
            panic!("not held");
        };
        assert_eq!(info.remaining, Some(Duration::from_secs(30)));
        assert!(turns.is_empty());
    }
}
