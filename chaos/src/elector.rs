//! The elector mode: one process, one `Elector`, reporting every store call,
//! step-down and loss signal on stdout, and writing to the orchestrator's
//! fenced resource while `is_leader()` holds.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leader::{ElectionConfig, Elector, ErrorKind, LeaseStore, Result, StoreOptions, StoreUrl};
use leader_testkit::wrap::{self, Call, Hooks, Reply, Wrapped};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

use crate::clock::mono_ns;
use crate::protocol::{CallOutcome, Moment, Report, StoreOp, WriteAnswer};

/// What an elector process is told on its command line.
#[derive(Debug, Clone)]
pub struct ElectorArgs {
    /// The store URL (through this elector's fault proxy).
    pub url: String,
    /// The resource elected.
    pub resource: String,
    /// The key prefix.
    pub prefix: String,
    /// This incarnation's holder id.
    pub holder: String,
    /// Lease duration.
    pub lease: Duration,
    /// Renewal interval (also the retry period and request timeout).
    pub renewal: Duration,
    /// Pause between two fenced writes of a leader.
    pub write_every: Duration,
    /// The work between the `is_leader()` check and the write.
    pub work: Duration,
}

/// Writes one report line with a single `write` (stdout is line buffered),
/// so a SIGKILL never leaves half a line behind.
fn emit(report: &Report) {
    if let Ok(mut line) = serde_json::to_string(report) {
        line.push('\n');
        let mut out = std::io::stdout().lock();
        // A closed stdout means the orchestrator is gone; the stdin reader
        // ends the process then.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

/// A store hook that reports each acquire, renew and release with its send
/// and return instants (taken inside the call, so the reported interval
/// contains the store's real one).
#[derive(Debug, Default)]
struct Reporting {
    next: AtomicU64,
}

#[async_trait]
impl Hooks for Reporting {
    async fn around(&self, call: Call<'_>, inner: &dyn LeaseStore) -> Reply {
        let op = match call.op() {
            wrap::Op::Acquire => StoreOp::Acquire,
            wrap::Op::Renew => StoreOp::Renew,
            wrap::Op::Release => StoreOp::Release,
            _ => return call.run(inner).await,
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = call.token().map(|t| t.get());
        emit(&Report::Invoke {
            id,
            op,
            at: mono_ns(),
            token,
        });
        let reply = call.run(inner).await;
        let outcome = match reply.error() {
            _ if reply.granted() => CallOutcome::Ok,
            Some(e) if e.kind() == ErrorKind::Indeterminate => CallOutcome::Indeterminate,
            _ => CallOutcome::Fail,
        };
        emit(&Report::Complete {
            id,
            outcome,
            at: mono_ns(),
            token: token.or(reply.acquired_token().map(|t| t.get())),
        });
        reply
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>>;

fn waiters(w: &Waiters) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<bool>>> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the elector until stdin closes (the orchestrator is gone) or the
/// process is killed.
///
/// # Errors
///
/// A bad URL or configuration.
pub async fn run(args: ElectorArgs) -> Result<()> {
    let mut config = ElectionConfig::new(args.resource.clone());
    config.key_prefix = args.prefix.clone();
    config.instance_id = Some(args.holder.clone());
    config.lease_duration = args.lease;
    config.renewal_interval = args.renewal;
    let store = leader::connect_with(
        &StoreUrl::new(args.url.clone()),
        &StoreOptions::with_request_timeout(config.request_timeout()),
    )?;
    let store = Arc::new(Wrapped::new(store, Reporting::default()));
    let elector = Elector::start(store, config)?;
    emit(&Report::Ready {
        holder: args.holder.clone(),
    });

    // Step-downs: every time the published state leaves leadership.
    let mut states = elector.subscribe();
    tokio::spawn(async move {
        let mut held: Option<u64> = None;
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().clone();
            let now = state.token.filter(|_| state.is_leader).map(|t| t.get());
            if let Some(old) = held
                && now != Some(old)
            {
                emit(&Report::Moment {
                    what: Moment::StepDown,
                    at: mono_ns(),
                    token: Some(old),
                });
            }
            held = now;
        }
    });

    // Answers to fenced writes arrive on stdin; EOF means the orchestrator
    // is gone, and so should we be.
    let pending: Waiters = Arc::default();
    let answers = pending.clone();
    let stdin = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(answer) = serde_json::from_str::<WriteAnswer>(&line)
                && let Some(tx) = waiters(&answers).remove(&answer.seq)
            {
                let _ = tx.send(answer.accepted);
            }
        }
    });

    let seq = Arc::new(AtomicU64::new(0));
    let gate = elector.clone();
    let write_every = args.write_every;
    let work = args.work;
    let _work = elector.run_while_leader(move |ctx| {
        let gate = gate.clone();
        let pending = pending.clone();
        let seq = seq.clone();
        async move {
            let token = ctx.token().get();
            loop {
                // A read-modify-write cycle, as an application gating its
                // work on the elector does: check is_leader(), work a little
                // (not interruptible: a SIGSTOP landing here is the GC pause
                // or stopped VM that fencing exists for), then write with
                // the term's token, without checking again.
                if ctx.is_cancelled() || !gate.is_leader() {
                    break;
                }
                tokio::time::sleep(work).await;
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                waiters(&pending).insert(n, tx);
                emit(&Report::Write {
                    seq: n,
                    token,
                    at: mono_ns(),
                });
                // The answer only matters to the orchestrator's record; a
                // slow one must not hold the loop past cancellation.
                tokio::select! {
                    _ = ctx.cancelled() => break,
                    _ = rx => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        waiters(&pending).remove(&n);
                    }
                }
                tokio::select! {
                    _ = ctx.cancelled() => break,
                    _ = tokio::time::sleep(write_every) => {}
                }
            }
            emit(&Report::Moment {
                what: Moment::LossSignal,
                at: mono_ns(),
                token: Some(token),
            });
        }
    });

    let _ = stdin.await;
    elector.abort();
    Ok(())
}
