//! Elector processes: spawning an incarnation through its fault proxy,
//! reading its reports, answering its fenced writes, signals.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use leader::FencingToken;
use leader_testkit::history::FencedResource;
use leader_testkit::proxy::{FaultProxy, Mode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::clock::mono_ns;
use crate::log::RunLog;
use crate::protocol::{Report, WriteAnswer};

/// What every elector of a run shares.
#[derive(Debug, Clone)]
pub struct ElectorPlan {
    /// This program (run in `elector` mode).
    pub exe: PathBuf,
    /// Where each process's stderr goes (`<holder>.log`).
    pub log_dir: PathBuf,
    /// The elected resource.
    pub resource: String,
    /// The key prefix.
    pub prefix: String,
    /// Lease duration.
    pub lease: Duration,
    /// Renewal interval.
    pub renewal: Duration,
}

/// One elector seat: its proxy and its current process.
#[derive(Debug)]
pub struct Slot {
    /// 1-based seat number.
    pub index: usize,
    /// The proxies between this seat's processes and the store (one per
    /// store member).
    pub proxies: Vec<FaultProxy>,
    /// The store URL through the proxy.
    pub url: String,
    /// How many processes this seat has started.
    pub incarnation: u32,
    /// The running process's holder id and pid.
    pub current: Option<(String, u32)>,
    /// Whether the current process is SIGSTOPped.
    pub paused: bool,
    reader: Option<JoinHandle<()>>,
}

/// Where `setpriv` is (it makes the kernel SIGKILL an elector when the
/// orchestrator dies, even a SIGSTOPped one).
fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Slot {
    /// A seat whose processes reach the store through `proxy` at `url`.
    pub fn new(index: usize, proxies: Vec<FaultProxy>, url: String) -> Self {
        Slot {
            index,
            proxies,
            url,
            incarnation: 0,
            current: None,
            paused: false,
            reader: None,
        }
    }

    /// Starts a new incarnation (a new holder id, as a restarted service
    /// instance would have).
    ///
    /// # Errors
    ///
    /// When the process cannot be spawned.
    pub fn spawn(
        &mut self,
        plan: &ElectorPlan,
        log: &RunLog,
        resource: &Arc<FencedResource>,
    ) -> std::io::Result<()> {
        self.incarnation += 1;
        let holder = format!("e{}.{}", self.index, self.incarnation);
        let stderr = std::fs::File::create(plan.log_dir.join(format!("{holder}.log")))?;
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.arg("--pdeathsig").arg("KILL").arg("--").arg(&plan.exe);
                c
            }
            None => Command::new(&plan.exe),
        };
        command
            .arg("elector")
            .arg("--url")
            .arg(&self.url)
            .arg("--resource")
            .arg(&plan.resource)
            .arg("--prefix")
            .arg(&plan.prefix)
            .arg("--holder")
            .arg(&holder)
            .arg("--lease-ms")
            .arg(plan.lease.as_millis().to_string())
            .arg("--renewal-ms")
            .arg(plan.renewal.as_millis().to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = command.spawn()?;
        let pid = child.id().unwrap_or(0);
        self.current = Some((holder.clone(), pid));
        self.paused = false;
        self.reader = Some(tokio::spawn(serve(
            child,
            holder,
            log.clone(),
            resource.clone(),
        )));
        Ok(())
    }

    /// Switches every proxy of this seat to `mode`.
    pub fn set_mode(&self, mode: Mode) {
        for proxy in &self.proxies {
            proxy.set_mode(mode);
        }
    }

    /// The current process's holder id.
    pub fn holder(&self) -> Option<&str> {
        self.current.as_ref().map(|(h, _)| h.as_str())
    }

    fn signal(&self, signal: Signal) -> bool {
        match &self.current {
            Some((_, pid)) if *pid > 0 => {
                kill(Pid::from_raw(i32::try_from(*pid).unwrap_or(0)), signal).is_ok()
            }
            _ => false,
        }
    }

    /// SIGKILLs the current process and waits until its reports are drained.
    pub async fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.current = None;
        self.paused = false;
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        }
    }

    /// SIGSTOPs the current process.
    pub fn pause(&mut self) -> bool {
        self.paused = self.signal(Signal::SIGSTOP);
        self.paused
    }

    /// SIGCONTs the current process.
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(Signal::SIGCONT);
            self.paused = false;
        }
    }
}

/// Reads one process's reports until it ends, answering fenced writes.
async fn serve(mut child: Child, holder: String, log: RunLog, resource: Arc<FencedResource>) {
    let (Some(stdout), Some(mut stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return;
    };
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(report) = serde_json::from_str::<Report>(&line) else {
            continue;
        };
        if let Report::Write { seq, token, .. } = report {
            // The resource's check-and-set is the linearization point; it
            // records the write in the history with its own instants.
            let accepted = resource.write(&holder, FencingToken(token));
            log.write_answered();
            if let Ok(mut answer) = serde_json::to_string(&WriteAnswer { seq, accepted }) {
                answer.push('\n');
                // A paused process's pipe may fill; never block the reader.
                let _ = tokio::time::timeout(
                    Duration::from_millis(200),
                    stdin.write_all(answer.as_bytes()),
                )
                .await;
            }
        }
        log.report(&holder, &report);
    }
    let status = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => "did not exit".to_owned(),
    };
    log.exited(&holder, mono_ns(), status);
}

/// The last `n` lines of a process's stderr log.
pub fn log_tail(dir: &Path, holder: &str, n: usize) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{holder}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
