//! The elector mode: one process, one `Elector`, reporting every store call,
//! step-down and loss signal on stdout, and writing to the orchestrator's
//! fenced resource while `is_leader()` holds.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leader::{
    Acquire, Capabilities, ElectionConfig, Elector, ErrorKind, HolderId, Lease, LeaseEvents,
    LeaseInfo, LeaseKey, LeaseStore, Result, StoreOptions, StoreUrl,
};
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

/// A store wrapper that reports each acquire, renew and release with its
/// send and return instants (taken inside the call, so the reported interval
/// contains the store's real one).
#[derive(Debug)]
struct ReportingStore {
    inner: Arc<dyn LeaseStore>,
    next: AtomicU64,
}

impl ReportingStore {
    fn invoke(&self, op: StoreOp, token: Option<u64>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        emit(&Report::Invoke {
            id,
            op,
            at: mono_ns(),
            token,
        });
        id
    }

    fn complete<T>(id: u64, result: &Result<T>, ok: bool, token: Option<u64>) {
        let outcome = match result {
            Ok(_) if ok => CallOutcome::Ok,
            Ok(_) => CallOutcome::Fail,
            Err(e) if e.kind() == ErrorKind::Indeterminate => CallOutcome::Indeterminate,
            Err(_) => CallOutcome::Fail,
        };
        emit(&Report::Complete {
            id,
            outcome,
            at: mono_ns(),
            token,
        });
    }
}

#[async_trait]
impl LeaseStore for ReportingStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn acquire(&self, key: &LeaseKey, holder: &HolderId, ttl: Duration) -> Result<Acquire> {
        let id = self.invoke(StoreOp::Acquire, None);
        let result = self.inner.acquire(key, holder, ttl).await;
        let token = match &result {
            Ok(Acquire::Acquired(lease)) => Some(lease.token.get()),
            _ => None,
        };
        Self::complete(id, &result, token.is_some(), token);
        result
    }

    async fn renew(&self, lease: &Lease) -> Result<()> {
        let token = Some(lease.token.get());
        let id = self.invoke(StoreOp::Renew, token);
        let result = self.inner.renew(lease).await;
        Self::complete(id, &result, true, token);
        result
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let token = Some(lease.token.get());
        let id = self.invoke(StoreOp::Release, token);
        let result = self.inner.release(lease).await;
        let ok = matches!(result, Ok(true));
        Self::complete(id, &result, ok, token);
        result
    }

    async fn current(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.inner.current(key).await
    }

    async fn force_release(&self, key: &LeaseKey) -> Result<Option<LeaseInfo>> {
        self.inner.force_release(key).await
    }

    async fn watch(&self, key: &LeaseKey) -> Result<LeaseEvents> {
        self.inner.watch(key).await
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
    let store = Arc::new(ReportingStore {
        inner: store,
        next: AtomicU64::new(0),
    });
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
