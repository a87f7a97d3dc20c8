//! Run-while-leader work at term boundaries: stopping it, work that panics or
//! returns, a term that must not begin (late acquire answer), and shutdown
//! while subscribing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use leader_core::{Elector, FencingToken, LeaseKey, LeaseStore, MemoryStore, OnReturn};
use leader_testkit::wrap::{Call, Fault, Hooks, Op, Reply, Wrapped};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::Instant;

fn key(resource: &str) -> LeaseKey {
    LeaseKey::new("test:", resource).expect("valid key")
}

/// A shared flag the work sets and the test awaits.
#[derive(Clone, Default)]
struct Flag(Arc<AtomicBool>);

impl Flag {
    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Records when it is dropped: the end of the task that owns it, also when
/// the task is aborted.
struct DropClock(Arc<Mutex<Option<Instant>>>);

impl Drop for DropClock {
    fn drop(&mut self) {
        *self.0.lock().expect("lock") = Some(Instant::now());
    }
}

// ---- WorkHandle::stop ----

#[tokio::test(start_paused = true)]
async fn stop_cancels_the_work_but_not_the_term() {
    let (store, _) = faulty();
    let e = start(store, "stop-cancels", "a");
    let (started, cancelled) = (Flag::default(), Flag::default());
    let (s, c) = (started.clone(), cancelled.clone());
    let work = e.run_while_leader(move |ctx| {
        let (s, c) = (s.clone(), c.clone());
        async move {
            s.set();
            ctx.cancelled().await;
            c.set();
        }
    });
    wait_until("work started", LEASE, || started.get()).await;
    work.stop();
    wait_until("work cancelled by stop()", RENEW, || cancelled.get()).await;
    assert!(e.is_leader(), "stop() stops the work, not the term");
}

#[tokio::test(start_paused = true)]
async fn shutdown_after_stop_waits_for_the_work_before_releasing() {
    let (store, memory) = faulty();
    let e = start(store, "stop-wait", "a");
    let started = Flag::default();
    // Whether the lease was still this term's when the work finished.
    let held_at_end: Arc<Mutex<Option<bool>>> = Arc::default();
    let (s, h) = (started.clone(), held_at_end.clone());
    let work = e.run_while_leader(move |ctx| {
        let (s, h, memory) = (s.clone(), h.clone(), memory.clone());
        async move {
            s.set();
            ctx.cancelled().await;
            // Slow clean-up after the cancellation.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let holder = memory.current(&key("stop-wait")).await.expect("current");
            *h.lock().expect("lock") = Some(holder.map(|l| l.token) == Some(ctx.token()));
        }
    });
    wait_until("work started", LEASE, || started.get()).await;
    work.stop();
    e.shutdown().await;
    assert_eq!(
        *held_at_end.lock().expect("lock"),
        Some(true),
        "shutdown released before the stopped work had finished"
    );
}

#[tokio::test(start_paused = true)]
async fn work_that_ignores_stop_is_aborted_at_the_terms_hard_deadline() {
    let (store, memory) = faulty();
    let e = start(store, "stop-abort", "a");
    let ended: Arc<Mutex<Option<Instant>>> = Arc::default();
    let started = Flag::default();
    let (s, end) = (started.clone(), ended.clone());
    let work = e.run_while_leader(move |_ctx| {
        let (s, end) = (s.clone(), end.clone());
        async move {
            let _clock = DropClock(end);
            s.set();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    wait_until("work started", LEASE, || started.get()).await;
    work.stop();
    // While the term lasts the work may run on (it is still the leader's).
    tokio::time::sleep(LEASE).await;
    assert!(e.is_leader());
    let holder = memory
        .current(&key("stop-abort"))
        .await
        .expect("current")
        .expect("held");
    e.shutdown().await;
    let ended = ended.lock().expect("lock").expect("the work was aborted");
    // The work is gone before its lease could expire in the store, and the
    // lease was released only after that.
    assert!(ended < Instant::now() + holder.remaining.expect("ttl"));
    assert_eq!(
        memory.current(&key("stop-abort")).await.expect("current"),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn stop_and_wait_returns_once_the_work_has_finished() {
    let (store, _) = faulty();
    let e = start(store, "stop-and-wait", "a");
    let (started, finished) = (Flag::default(), Flag::default());
    let (s, f) = (started.clone(), finished.clone());
    let work = e.run_while_leader(move |ctx| {
        let (s, f) = (s.clone(), f.clone());
        async move {
            s.set();
            ctx.cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.set();
        }
    });
    wait_until("work started", LEASE, || started.get()).await;
    work.stop_and_wait().await;
    assert!(finished.get());
    assert!(e.is_leader());
    e.shutdown().await;
}

// ---- Term boundaries on a multi-threaded runtime ----

/// Releases flag the key as free; work that starts or still runs after a
/// release of its own term ran beside whoever leads next.
#[derive(Debug, Default)]
struct ReleaseWatch {
    released: AtomicBool,
    running: AtomicU32,
    violations: AtomicU32,
}

#[async_trait]
impl Hooks for ReleaseWatch {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        if call.op() == Op::Release {
            self.released.store(true, Ordering::SeqCst);
            if self.running.load(Ordering::SeqCst) > 0 {
                self.violations.fetch_add(1, Ordering::SeqCst);
            }
        }
        call.run(inner).await
    }
}

/// Decrements the running count when the work ends (also when aborted).
struct Running(Arc<Wrapped<ReleaseWatch>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shutdown right as a term begins, hundreds of times on two worker threads:
/// work either starts in time to be waited for, or never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_work_runs_after_its_term_was_released() {
    for round in 0..300 {
        let store = Arc::new(Wrapped::new(
            Arc::new(MemoryStore::new()),
            ReleaseWatch::default(),
        ));
        let e =
            Elector::start(store.clone(), config(&format!("race-{round}"), "a")).expect("valid");
        let st = store.clone();
        let work = e.run_while_leader(move |_ctx| {
            let st = st.clone();
            async move {
                st.running.fetch_add(1, Ordering::SeqCst);
                let _running = Running(st.clone());
                if st.released.load(Ordering::SeqCst) {
                    st.violations.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut state = e.subscribe();
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| s.is_leader))
            .await
            .expect("leads")
            .expect("alive");
        e.shutdown().await;
        // The supervisor ends with the elector; any work it still starts
        // has run by then.
        work.join().await;
        assert_eq!(
            store.violations.load(Ordering::SeqCst),
            0,
            "round {round}: work ran after the lease was released"
        );
    }
}

// ---- Work that panics or returns ----

/// Captures formatted log lines (the tracing subscriber of this thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines of this test binary. Installed globally: a thread-scoped
/// subscriber can miss events whose callsite another test's thread saw
/// first (tracing caches callsite interest process-wide).
fn global_logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

fn counter(snapshotter: &Snapshotter, name: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == name)
        .map(|(.., v)| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn panicking_work_ends_the_term_and_another_replica_takes_over() {
    let logs = global_logs();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();

    let memory = MemoryStore::new();
    let a = metrics::with_local_recorder(&recorder, || {
        Elector::start(Arc::new(memory.clone()), config("panics", "a")).expect("valid")
    });
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let b = start(Arc::new(memory.clone()), "panics", "b");
    let mut b_state = b.subscribe();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!b.is_leader());

    let panicked = Instant::now();
    let _work = a.run_while_leader(|_ctx| async { panic!("the singleton work broke") });
    tokio::time::timeout(LEASE, b_state.wait_for(|s| s.is_leader))
        .await
        .expect("b takes over")
        .expect("alive");
    // a released: b took over at once, not after a's lease expired.
    assert!(Instant::now() - panicked < Duration::from_millis(10));
    assert!(!a.is_leader());
    assert!(!a.health().data.is_leader);
    assert_eq!(
        counter(&snapshotter, "leader_election_work_panics_total"),
        1
    );
    let text = logs.text();
    let line = text
        .lines()
        // The log capture is global: other tests' panics are in it too.
        .find(|l| l.contains("work panicked") && l.contains("resource=panics"))
        .unwrap_or_else(|| panic!("no panic logged: {text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("the singleton work broke"), "{line}");
    a.shutdown().await;
    b.shutdown().await;
}

/// The pause before competing again after the term `n` (1-based) of a row
/// ended by a panic, with the common config's 500 ms retry period.
fn back_off(n: u32) -> Duration {
    (Duration::from_millis(500) * 2u32.pow(n - 1)).min(Duration::from_millis(500) * 32)
}

#[tokio::test(start_paused = true)]
async fn after_a_panic_the_instance_competes_again_only_after_a_growing_back_off() {
    let (store, _) = faulty();
    let e = start(store.clone(), "backoff", "a");
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s = starts.clone();
    let _work = e.run_while_leader(move |_ctx| {
        s.lock().expect("lock").push(Instant::now());
        async { panic!("always broken") }
    });
    wait_until("eight terms", Duration::from_secs(120), || {
        starts.lock().expect("lock").len() == 8
    })
    .await;
    let starts = starts.lock().expect("lock").clone();
    for (n, pair) in (1u32..).zip(starts.windows(2)) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= back_off(n) && gap < back_off(n) + Duration::from_millis(10),
            "pause {n}: {gap:?}, expected {:?}",
            back_off(n)
        );
    }
    // No acquire was sent during the pauses: one per term.
    assert_eq!(store.calls(Op::Acquire), 8);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn work_that_returns_with_step_down_hands_over_and_competes_again() {
    let (store, memory) = faulty();
    let a = start(store.clone(), "stepdown", "a");
    wait_until("a leads", LEASE, || a.is_leader()).await;
    let first = a.token().expect("token");
    let b = start(Arc::new(memory.clone()), "stepdown", "b");
    let mut b_state = b.subscribe();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!b.is_leader());
    let runs: Arc<Mutex<Vec<FencingToken>>> = Arc::default();
    let r = runs.clone();
    let returned = Instant::now();
    let _work = a.run_while_leader_with(OnReturn::StepDown, move |ctx| {
        r.lock().expect("lock").push(ctx.token());
        async {}
    });
    // a released when the work returned: b took over at once.
    tokio::time::timeout(RENEW, b_state.wait_for(|s| s.is_leader))
        .await
        .expect("b takes over")
        .expect("alive");
    assert!(Instant::now() - returned < Duration::from_millis(10));
    assert!(!a.is_leader());
    assert_eq!(*runs.lock().expect("lock"), vec![first]);
    // a competes again by itself: once b leaves, it leads and runs the work
    // again in a new term.
    b.shutdown().await;
    wait_until("second run", LEASE, || {
        runs.lock().expect("lock").len() == 2
    })
    .await;
    assert!(runs.lock().expect("lock")[1] > first);
    a.shutdown().await;
}

// ---- A term that must not begin ----

/// The first acquire is answered after its validity point (the reply is
/// handled late, as by a starved runtime): the clock jumps by `stall` between
/// the store's answer and the caller seeing it.
#[derive(Debug)]
struct LateFirstAnswer {
    stall: Duration,
    acquires: AtomicU32,
    late_token: Mutex<Option<FencingToken>>,
    released: Mutex<Vec<FencingToken>>,
}

#[async_trait]
impl Hooks for LateFirstAnswer {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        if let Call::Release(lease) = call {
            self.released.lock().expect("lock").push(lease.token);
        }
        let answer = call.run(inner).await;
        if call.op() == Op::Acquire && self.acquires.fetch_add(1, Ordering::SeqCst) == 0 {
            *self.late_token.lock().expect("lock") = answer.acquired_token();
            tokio::time::advance(self.stall).await;
        }
        answer
    }
}

#[tokio::test(start_paused = true)]
async fn an_acquire_answered_after_its_validity_point_begins_no_term() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = Arc::new(Wrapped::new(
        Arc::new(MemoryStore::new()),
        LateFirstAnswer {
            stall: LEASE,
            acquires: AtomicU32::new(0),
            late_token: Mutex::new(None),
            released: Mutex::new(Vec::new()),
        },
    ));
    let e = metrics::with_local_recorder(&recorder, || {
        Elector::start(store.clone(), config("late", "a")).expect("valid")
    });
    let mut state = e.subscribe();
    let runs: Arc<Mutex<Vec<FencingToken>>> = Arc::default();
    let r = runs.clone();
    let _work = e.run_while_leader(move |ctx| {
        r.lock().expect("lock").push(ctx.token());
        async move { ctx.cancelled().await }
    });
    // The elector leads only with a later term.
    state.wait_for(|s| s.is_leader).await.expect("alive");
    let late = store
        .late_token
        .lock()
        .expect("lock")
        .expect("the first acquire won");
    assert!(
        state.borrow().token > Some(late),
        "the late term was published"
    );
    assert_eq!(
        counter(&snapshotter, "leader_election_acquired_total"),
        1,
        "the late term was counted as a term"
    );
    assert!(
        store.released.lock().expect("lock").contains(&late),
        "the late lease was not released"
    );
    wait_until("work runs", RENEW, || {
        !runs.lock().expect("lock").is_empty()
    })
    .await;
    assert!(
        !runs.lock().expect("lock").contains(&late),
        "work ran in the late term"
    );
    e.shutdown().await;
}

// ---- Shutdown ----

#[tokio::test(start_paused = true)]
async fn no_acquire_is_sent_after_shutdown_began_while_subscribing() {
    let (store, _) = faulty();
    // Subscribing hangs until the request timeout.
    store.set(Op::Watch, Some(Fault::Hang));
    let e = start(store.clone(), "subscribing", "a");
    wait_until("subscribing", LEASE, || store.calls(Op::Watch) == 1).await;
    let acquires = store.calls(Op::Acquire);
    let began = Instant::now();
    e.shutdown().await;
    assert_eq!(
        store.calls(Op::Acquire),
        acquires,
        "an acquire was sent after shutdown began"
    );
    assert!(
        Instant::now() - began < RENEW,
        "shutdown waited for the subscription's request timeout"
    );
}
