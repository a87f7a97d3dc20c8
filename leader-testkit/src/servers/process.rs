//! The one child-process helper behind every test server.
//!
//! Every server runs in its own process group (away from the terminal's
//! Ctrl-C), its signals go to its whole process tree (Postgres backends
//! included), and it runs under `setpriv --pdeathsig KILL`
//! (so the kernel kills it if the test binary dies without running `Drop`).
//! The test binary is made a child subreaper, so grandchildren orphaned by a
//! killed server (Postgres backends) are re-parented to it and reaped here,
//! instead of lingering as zombies under a PID 1 that does not reap.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::binaries::find_binary;
use crate::error::{Error, Result};

/// How long the kit waits for a SIGKILLed process group to be gone.
const REAP_BOUND: Duration = Duration::from_secs(10);

/// How to start a server process; kept so that it can be restarted as-is.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// Run as this user (`postgres`) when the test runs as root.
    pub(crate) run_as: Option<String>,
    pub(crate) cwd: PathBuf,
    pub(crate) log: PathBuf,
}

/// A running server process (the leader of its own process group).
#[derive(Debug)]
pub(crate) struct ChildProcess {
    child: Child,
    pid: Pid,
}

fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Best effort: without it, orphaned grandchildren go to PID 1.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "could not make the test process a child subreaper");
        }
    });
}

impl ChildProcess {
    /// Starts `spec` with stdout and stderr appended to its log file.
    pub(crate) fn spawn(spec: &Spec, env_var: &'static str) -> Result<Self> {
        become_subreaper();
        let setpriv = find_binary("setpriv", "util-linux", env_var)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| Error::io(format!("opening log {}", spec.log.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log file handle", e))?;
        let mut cmd = Command::new(setpriv);
        cmd.arg("--pdeathsig").arg("KILL");
        if let Some(user) = &spec.run_as {
            cmd.arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .arg("--clear-groups");
        }
        cmd.arg("--")
            .arg(&spec.program)
            .args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", spec.program.display()), e))?;
        let pid = Pid::from_raw(child.id() as i32);
        Ok(ChildProcess { child, pid })
    }

    /// The process id of the server (the group leader).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the server and every process it started.
    ///
    /// Postgres puts each backend in its own session, so a process-group
    /// signal would miss them: the tree is walked in /proc instead. For
    /// SIGSTOP and SIGKILL the root is stopped first so that it cannot fork
    /// a process the walk misses.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        self.signal_tree(signal).map(|_| ())
    }

    fn signal_tree(&self, signal: Signal) -> Result<Vec<Pid>> {
        let root = self.pid;
        if signal != Signal::SIGCONT {
            send(root, Signal::SIGSTOP)?;
        }
        let tree = descendants(root);
        for &pid in &tree {
            send(pid, signal)?;
        }
        send(root, signal)?;
        if signal == Signal::SIGSTOP {
            // kill(2) only queues the stop: a thread running on the other
            // core finishes what it is doing first (an etcd member answered
            // one more request that way). A paused server must answer
            // nothing, so wait until every thread is stopped.
            wait_stopped(root, &tree)?;
        }
        Ok(tree)
    }

    /// The exit status, if the process has exited.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the server and its descendants and waits until all are gone
    /// and reaped (orphans are re-parented to this subreaper). Polls without
    /// blocking the runtime.
    pub(crate) async fn kill(mut self) -> Result<ExitStatus> {
        let tree = self.signal_tree(Signal::SIGKILL)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait()
                && reap(&tree)
            {
                return Ok(status);
            }
            if started.elapsed() > REAP_BOUND {
                return Err(Error::Timeout {
                    what: format!(
                        "exit of SIGKILLed server process {} and its children",
                        self.pid
                    ),
                    waited: REAP_BOUND,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The blocking version of [`ChildProcess::kill`] for `Drop`.
    pub(crate) fn kill_blocking(&mut self) {
        let Ok(tree) = self.signal_tree(Signal::SIGKILL) else {
            return;
        };
        // SIGKILL cannot be ignored, so this wait ends promptly.
        let _ = self.child.wait();
        let started = Instant::now();
        while started.elapsed() < REAP_BOUND {
            if reap(&tree) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        tracing::warn!(pid = %self.pid, "processes of a killed test server did not exit");
    }
}

fn send(pid: Pid, signal: Signal) -> Result<()> {
    match nix::sys::signal::kill(pid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(Error::io(
            format!("sending {signal} to process {pid}"),
            e.into(),
        )),
    }
}

/// Reaps those of `pids` that are our zombie children (orphans re-parented
/// to us); `true` once none of them exists any more.
fn reap(pids: &[Pid]) -> bool {
    let me = Pid::this();
    let mut all_gone = true;
    for &pid in pids {
        match parent_of(pid) {
            None => {}
            Some(parent) => {
                if parent == me {
                    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                }
                all_gone &= parent_of(pid).is_none();
            }
        }
    }
    all_gone
}

/// The parent of `pid` from /proc, `None` if it no longer exists.
fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(ppid, _)| ppid)
}

/// `(ppid, pgrp)` from a /proc/PID/stat line.
fn parse_stat(stat: &str) -> Option<(Pid, Pid)> {
    // Fields after the parenthesised command name: state ppid pgrp ...
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(1);
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((Pid::from_raw(ppid), Pid::from_raw(pgrp)))
}

/// How long the threads of a SIGSTOPped server may take to stop.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// Waits until every thread of `root` and `tree` is stopped (or gone).
fn wait_stopped(root: Pid, tree: &[Pid]) -> Result<()> {
    let started = Instant::now();
    while let Some(running) = std::iter::once(&root)
        .chain(tree)
        .find(|&&pid| !all_threads_stopped(pid))
    {
        if started.elapsed() > STOP_BOUND {
            return Err(Error::Timeout {
                what: format!("SIGSTOP of server process {running}"),
                waited: STOP_BOUND,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Whether every thread of `pid` is stopped, a zombie or gone (from
/// /proc/PID/task/TID/stat's state field).
fn all_threads_stopped(pid: Pid) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return true;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        matches!(state, None | Some("T" | "t" | "Z" | "X"))
    })
}

/// Every live or zombie descendant of `root`, from /proc.
fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(Pid, Pid)> = entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((Pid::from_raw(pid), parse_stat(&stat)?.0))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// The last `lines` lines of a log file (at most 16 KiB read), for error
/// messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log)".to_owned();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
