//! One etcd keep-alive stream per store ([`LANES`]), shared by the renewals
//! of every lease held through it.
//!
//! etcd's `LeaseKeepAlive` is a bidirectional stream: every request names a
//! lease id and every answer names the lease it renewed, with the lease's
//! new TTL (0: the lease is gone). etcd handles one stream's requests one
//! at a time, so answers come back in the order the requests went out. The
//! [`KeepAliveHub`] keeps [`LANES`] such streams, and each lease always
//! uses the same one (its [`Lane`]): each renewal queues its lease id on
//! that stream and waits in its lease's line; each answer goes to the
//! oldest request of its lease still in line.
//!
//! An answer is only ever given to the request it answers: a renewal that
//! gave up (cancelled, timed out) keeps its place in the line, and the
//! answer to its request is dropped, never handed to a later renewal of the
//! same lease, whose validity the core counts from when that later request
//! was sent.
//!
//! etcd-client opens a keep-alive stream with one round trip for one lease:
//! the renewal that finds no stream opens it, and that round trip is its
//! answer. Renewals arriving meanwhile wait for that one attempt; after a
//! failed attempt, renewals fail at once until a short back-off has passed,
//! so ten thousand leases re-open their streams once each, not ten thousand
//! times.
//! When the stream breaks or ends, every renewal waiting on it fails (the
//! caller may try again on the next stream). A stream that answers nothing
//! while a renewal waits a whole request timeout is dropped as hung, and the
//! stream is closed once no lease on the store has renewal state left.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// The first pause after a failed attempt to open the stream; it doubles up
/// to [`MAX_BACKOFF`] while attempts keep failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest pause between attempts to open the stream.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// etcd's answer to one keep-alive request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Answer {
    /// The lease's TTL in seconds from now; 0 when the lease is gone.
    pub(super) ttl: i64,
    /// The store revision in the answer's header, if it had one.
    pub(super) revision: Option<i64>,
}

impl Answer {
    /// `None` when the lease is gone, else the revision of the answer (if
    /// known).
    pub(super) fn outcome(self) -> Option<Option<i64>> {
        (self.ttl > 0).then_some(self.revision)
    }
}

/// Keep-alive streams per store, each lease always on the same one. One,
/// as etcd's Go client does. etcd answers a stream's requests one at a
/// time, so a store granting thousands of leases meanwhile may need more;
/// more stays untried until the stall seen with one stream under load is
/// understood (docs/benchmarks.md).
pub(super) const LANES: usize = 1;

/// The store's keep-alive streams, each opened on first use.
#[derive(Default)]
pub(super) struct KeepAliveHub {
    lanes: [Lane; LANES],
}

impl KeepAliveHub {
    /// The lane of lease `id` (always the same one).
    pub(super) fn lane(&self, id: i64) -> &Lane {
        // etcd's lease ids count up: spread neighbours over the lanes.
        let mixed = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.lanes[(mixed % LANES as u64) as usize]
    }

    /// Closes every stream no renewal waits on (no lease has renewal state
    /// left on the store).
    pub(super) fn close_if_idle(&self) {
        for lane in &self.lanes {
            lane.close_if_idle();
        }
    }
}

/// One shared keep-alive stream, and its opening.
#[derive(Default)]
pub(super) struct Lane {
    state: Mutex<HubState>,
    /// Held while the stream is being opened (by the task that opens it):
    /// concurrent renewals wait for that one attempt instead of opening
    /// streams of their own.
    pub(super) opening: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct HubState {
    /// The live stream; `None` before the first renewal and after a break.
    live: Option<Arc<Shared>>,
    /// After a failed open: no new attempt before this instant.
    retry_at: Option<Instant>,
    backoff: Option<Duration>,
}

impl Lane {
    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live stream, if there is one.
    pub(super) fn live(&self) -> Option<Arc<Shared>> {
        let mut state = self.state();
        match &state.live {
            Some(shared) if !shared.is_down() => Some(shared.clone()),
            Some(_) => {
                state.live = None;
                None
            }
            None => None,
        }
    }

    /// Whether a new attempt to open the stream must wait (the last one
    /// failed less than a back-off ago).
    pub(super) fn backing_off(&self) -> bool {
        self.state().retry_at.is_some_and(|at| Instant::now() < at)
    }

    /// Notes a failed attempt to open the stream.
    pub(super) fn open_failed(&self) {
        let mut state = self.state();
        let backoff = state
            .backoff
            .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
        state.backoff = Some(backoff);
        state.retry_at = Some(Instant::now() + backoff);
    }

    /// Makes the stream etcd-client just opened the live one and starts its
    /// tasks.
    pub(super) fn start(&self, keeper: LeaseKeeper, responses: LeaseKeepAliveStream) {
        let (shared, ids) = Shared::new();
        tokio::spawn(send(keeper, ids, Arc::downgrade(&shared)));
        tokio::spawn(receive(shared.clone(), responses));
        let mut state = self.state();
        if let Some(old) = state.live.replace(shared) {
            old.close();
        }
        state.retry_at = None;
        state.backoff = None;
    }

    /// Drops `shared` if it answered nothing since a request that
    /// `answered_before` was taken for: a hung stream is not waited on by
    /// the next renewals too.
    pub(super) fn drop_if_hung(&self, shared: &Arc<Shared>, answered_before: u64) {
        if shared.answered() != answered_before {
            return;
        }
        tracing::debug!("the shared etcd keep-alive stream answered nothing in time; dropping it");
        let mut state = self.state();
        if state.live.as_ref().is_some_and(|s| Arc::ptr_eq(s, shared)) {
            state.live = None;
        }
        drop(state);
        shared.close();
    }

    /// Closes the stream if no renewal waits on it.
    fn close_if_idle(&self) {
        let mut state = self.state();
        if state.live.as_ref().is_some_and(|s| s.close_if_idle()) {
            state.live = None;
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(shared) = self.state().live.take() {
            shared.close();
        }
    }
}

/// One open keep-alive stream: the queue of lease ids to send on it, and
/// who waits for which answer.
pub(super) struct Shared {
    /// Lease ids to send, in order (see [`send`]).
    requests: mpsc::UnboundedSender<i64>,
    routes: Mutex<Routes>,
    /// Answers received so far.
    answered: AtomicU64,
    /// Turns true once, when the stream is closed; ends its tasks.
    down: watch::Sender<bool>,
}

#[derive(Default)]
struct Routes {
    /// Set under the lock by [`Shared::close`]: no request is queued after.
    closed: bool,
    /// Per lease id, the requests sent and not answered yet, oldest first.
    waiting: HashMap<i64, VecDeque<oneshot::Sender<Answer>>>,
}

/// A keep-alive request sent on a shared stream, waiting for its answer.
pub(super) struct Pending {
    answer: oneshot::Receiver<Answer>,
    /// The stream's answer count when this request was queued.
    pub(super) answered_before: u64,
}

impl Pending {
    /// The answer to this request; `None` if the stream broke or closed
    /// before it came.
    pub(super) async fn answer(self) -> Option<Answer> {
        self.answer.await.ok()
    }
}

impl Shared {
    /// A stream with nothing sent yet, and the receiving end of its request
    /// queue.
    fn new() -> (Arc<Shared>, mpsc::UnboundedReceiver<i64>) {
        let (requests, ids) = mpsc::unbounded_channel();
        let (down, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            requests,
            routes: Mutex::default(),
            answered: AtomicU64::new(0),
            down,
        });
        (shared, ids)
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Queues a keep-alive request for lease `id`. `None` when the stream is
    /// closed (nothing was sent).
    pub(super) fn send(&self, id: i64) -> Option<Pending> {
        let mut routes = self.routes();
        if routes.closed {
            return None;
        }
        let answered_before = self.answered();
        let (tx, answer) = oneshot::channel();
        // Queued under the lock that orders the lines: the wire order of the
        // requests of one lease is the order of its line.
        if self.requests.send(id).is_err() {
            // The writer is gone (the gRPC call ended): so is the stream.
            drop(routes);
            self.close();
            return None;
        }
        routes.waiting.entry(id).or_default().push_back(tx);
        Some(Pending {
            answer,
            answered_before,
        })
    }

    /// Hands an answer for lease `id` to the oldest request of that lease
    /// still in line (dropped if that renewal gave up on it).
    fn dispatch(&self, id: i64, answer: Answer) {
        self.answered.fetch_add(1, Ordering::SeqCst);
        let mut routes = self.routes();
        let Some(line) = routes.waiting.get_mut(&id) else {
            // Nobody asked on this stream: not ours to route.
            return;
        };
        let first = line.pop_front();
        if line.is_empty() {
            routes.waiting.remove(&id);
        }
        drop(routes);
        if let Some(tx) = first {
            let _ = tx.send(answer);
        }
    }

    /// Marks the stream down and fails every request waiting on it.
    fn close(&self) {
        self.down.send_replace(true);
        let waiting = {
            let mut routes = self.routes();
            routes.closed = true;
            std::mem::take(&mut routes.waiting)
        };
        // Dropping the senders wakes every waiter with `None`.
        drop(waiting);
    }

    /// Closes the stream if no request waits on it; whether it did.
    fn close_if_idle(&self) -> bool {
        let mut routes = self.routes();
        if !routes.waiting.is_empty() {
            return false;
        }
        routes.closed = true;
        drop(routes);
        self.down.send_replace(true);
        true
    }
}

/// Writes the queued lease ids on the gRPC stream, in order, until the
/// stream is dropped (the queue closes) or the gRPC call ended.
async fn send(
    mut keeper: LeaseKeeper,
    mut ids: mpsc::UnboundedReceiver<i64>,
    shared: Weak<Shared>,
) {
    while let Some(id) = ids.recv().await {
        // etcd-client binds a keeper to one lease; its id is public with
        // the `pub-response-field` feature, and etcd takes any id on the
        // stream.
        keeper.id = id;
        if let Err(e) = keeper.keep_alive().await {
            // The call ended: nothing more can be sent on this stream, so
            // nothing more waits on it either.
            tracing::debug!(error = %e, "the shared etcd keep-alive stream stopped taking requests");
            if let Some(shared) = shared.upgrade() {
                shared.close();
            }
            return;
        }
    }
}

/// Routes every answer of the stream until it breaks, ends or is closed,
/// then fails whatever still waits.
async fn receive(shared: Arc<Shared>, mut responses: LeaseKeepAliveStream) {
    let mut down = shared.down.subscribe();
    loop {
        let message = tokio::select! {
            _ = async { down.wait_for(|d| *d).await.map(|_| ()) } => break,
            m = responses.message() => m,
        };
        match message {
            Ok(Some(resp)) => shared.dispatch(
                resp.id(),
                Answer {
                    ttl: resp.ttl(),
                    revision: resp.header().map(|h| h.revision()),
                },
            ),
            Ok(None) => {
                tracing::debug!("the shared etcd keep-alive stream ended");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "the shared etcd keep-alive stream broke");
                break;
            }
        }
    }
    shared.close();
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn alive(revision: i64) -> Answer {
        Answer {
            ttl: 10,
            revision: Some(revision),
        }
    }

    /// Lease ids sent so far, in wire order.
    fn sent(ids: &mut mpsc::UnboundedReceiver<i64>) -> Vec<i64> {
        std::iter::from_fn(|| ids.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn answers_go_to_the_oldest_waiting_request_of_their_lease() {
        let (shared, mut ids) = Shared::new();
        let first_of_1 = shared.send(1).expect("open");
        let of_2 = shared.send(2).expect("open");
        let second_of_1 = shared.send(1).expect("open");
        assert_eq!(sent(&mut ids), [1, 2, 1]);

        shared.dispatch(2, alive(10));
        shared.dispatch(1, alive(11));
        shared.dispatch(1, alive(12));
        assert_eq!(of_2.answer().await, Some(alive(10)));
        assert_eq!(first_of_1.answer().await, Some(alive(11)));
        assert_eq!(second_of_1.answer().await, Some(alive(12)));
        assert!(
            shared.routes().waiting.is_empty(),
            "answered lines are gone"
        );
    }

    #[tokio::test]
    async fn the_answer_to_a_request_given_up_on_never_reaches_a_later_renewal() {
        let (shared, _ids) = Shared::new();
        // A renewal sends, then is cancelled (or times out) before etcd answers.
        drop(shared.send(1).expect("open"));
        let later = shared.send(1).expect("open");
        shared.dispatch(1, alive(20));
        let mut later = Box::pin(later.answer());
        assert_eq!(
            (&mut later).now_or_never(),
            None,
            "the stale answer (to the earlier request) was handed to the later renewal"
        );
        shared.dispatch(1, alive(21));
        assert_eq!(later.await, Some(alive(21)));
    }

    #[tokio::test]
    async fn a_ttl_of_zero_answers_the_request_as_lost() {
        let (shared, _ids) = Shared::new();
        let pending = shared.send(7).expect("open");
        let gone = Answer {
            ttl: 0,
            revision: Some(30),
        };
        shared.dispatch(7, gone);
        let answer = pending.answer().await.expect("answered");
        assert_eq!(answer.outcome(), None, "a TTL of 0 means the lease is gone");
        assert_eq!(alive(31).outcome(), Some(Some(31)));
    }

    #[tokio::test]
    async fn closing_fails_every_waiting_request_and_refuses_new_ones() {
        let (shared, _ids) = Shared::new();
        let a = shared.send(1).expect("open");
        let b = shared.send(2).expect("open");
        shared.close();
        assert_eq!(a.answer().await, None);
        assert_eq!(b.answer().await, None);
        assert!(shared.send(1).is_none(), "queued on a closed stream");
        // A late answer from the dead stream goes nowhere.
        shared.dispatch(1, alive(40));
    }

    #[tokio::test]
    async fn a_stream_whose_writer_is_gone_closes_instead_of_taking_requests() {
        let (shared, ids) = Shared::new();
        let waiting = shared.send(1).expect("open");
        drop(ids);
        assert!(shared.send(2).is_none(), "queued where nothing is sent");
        assert!(
            shared.is_down(),
            "a renewal would pick the dead stream again"
        );
        assert_eq!(waiting.answer().await, None);
    }

    #[tokio::test]
    async fn an_answer_nobody_waits_for_is_dropped() {
        let (shared, _ids) = Shared::new();
        shared.dispatch(5, alive(50));
        let pending = shared.send(5).expect("open");
        shared.dispatch(5, alive(51));
        assert_eq!(pending.answer().await, Some(alive(51)));
    }

    #[tokio::test]
    async fn only_an_idle_stream_is_closed_for_idleness() {
        let (shared, _ids) = Shared::new();
        let pending = shared.send(1).expect("open");
        assert!(!shared.close_if_idle(), "closed with a request in flight");
        shared.dispatch(1, alive(60));
        assert_eq!(pending.answer().await, Some(alive(60)));
        assert!(shared.close_if_idle());
        assert!(shared.is_down());
        assert!(shared.send(1).is_none());
    }

    #[tokio::test]
    async fn a_stream_is_hung_only_if_it_answered_nothing_since_the_request() {
        let hub = Lane::default();
        let (shared, _ids) = Shared::new();
        hub.state().live = Some(shared.clone());
        let slow = shared.send(1).expect("open");
        let other = shared.send(2).expect("open");
        shared.dispatch(2, alive(70));
        assert_eq!(other.answer().await, Some(alive(70)));
        // Request 1 timed out, but the stream answered others meanwhile.
        hub.drop_if_hung(&shared, slow.answered_before);
        assert!(hub.live().is_some(), "a busy stream was dropped as hung");

        let stuck = shared.send(3).expect("open");
        hub.drop_if_hung(&shared, stuck.answered_before);
        assert!(hub.live().is_none(), "a silent stream was kept");
        assert_eq!(stuck.answer().await, None);
        assert_eq!(slow.answer().await, None);
    }
}
