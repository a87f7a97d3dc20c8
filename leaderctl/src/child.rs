//! The command of `leaderctl run`, in its own process group behind a guard
//! process (see `guard.rs`).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use leader::LeaderContext;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpid, pipe2};
use tokio::process::Command;

use crate::guard::{GuardArgs, report};

/// How one run of the command ended.
#[derive(Debug)]
pub(crate) enum ChildEnd {
    /// It exited by itself.
    Exited(ExitStatus),
    /// Leadership was lost or leaderctl is stopping: its group was stopped.
    /// Holds the command's status when it ended before the group was killed.
    Stopped(Option<ExitStatus>),
    /// It could not be started.
    SpawnFailed(std::io::Error),
    /// The guard process failed (it says why on stderr) or was killed; the
    /// group was killed.
    GuardFailed(String),
}

/// The signal that stops the group when the term ends: SIGTERM, unless
/// leaderctl itself is stopping on a signal, which is then forwarded.
#[derive(Debug, Clone)]
pub(crate) struct StopSignal(Arc<AtomicI32>);

impl StopSignal {
    /// SIGTERM until [`StopSignal::set`] is called.
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicI32::new(Signal::SIGTERM as i32)))
    }

    /// Forward `signal` instead of SIGTERM from now on.
    pub(crate) fn set(&self, signal: Signal) {
        self.0.store(signal as i32, Ordering::SeqCst);
    }

    fn get(&self) -> Signal {
        Signal::try_from(self.0.load(Ordering::SeqCst)).unwrap_or(Signal::SIGTERM)
    }
}

/// SIGKILLs the process group when dropped: when the run ends (anything the
/// command left behind), and when the elector aborts the work at the lost
/// term's validity point (the future is dropped).
struct GroupKiller(Pid);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        // The group id cannot be reused while any member lives, and this
        // runs right after the guard (the group leader) ended.
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// Runs `argv` in its own process group until it exits or `ctx` is
/// cancelled; then the stop signal to the group, and SIGKILL after `grace`.
pub(crate) async fn run_child(
    argv: &[String],
    env: &[(&str, String)],
    ctx: &LeaderContext,
    grace: Duration,
    stop: &StopSignal,
) -> ChildEnd {
    let (status_pipe, guard_end) = match status_pipe() {
        Ok(pipe) => pipe,
        Err(e) => return ChildEnd::SpawnFailed(e),
    };
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("leaderctl")
        .args(GuardArgs::to_args(
            getpid(),
            guard_end.as_raw_fd(),
            grace,
            argv,
        ))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .process_group(0);
    let spawned = command.spawn();
    drop(guard_end);
    let mut guard = match spawned {
        Ok(guard) => guard,
        Err(e) => {
            return ChildEnd::SpawnFailed(std::io::Error::new(
                e.kind(),
                format!("cannot start leaderctl's guard process (/proc/self/exe): {e}"),
            ));
        }
    };
    let Some(group) = guard.id().and_then(|p| i32::try_from(p).ok()) else {
        return ChildEnd::SpawnFailed(std::io::Error::other("the guard has no pid"));
    };
    let group = GroupKiller(Pid::from_raw(group));
    let (stopped, guard_status) = tokio::select! {
        status = guard.wait() => (false, status.ok()),
        _ = ctx.cancelled() => {
            // The guard forwards the signal to the group and SIGKILLs it
            // after the grace period; this is the backstop if it cannot.
            let _ = kill(group.0, stop.get());
            let status = match tokio::time::timeout(grace, guard.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    let _ = killpg(group.0, Signal::SIGKILL);
                    guard.wait().await.ok()
                }
            };
            (true, status)
        }
    };
    drop(group);
    let outcome = read_report(status_pipe);
    match (outcome, stopped) {
        (Report::Status(s), true) => ChildEnd::Stopped(Some(s)),
        (Report::Status(s), false) => ChildEnd::Exited(s),
        (Report::SpawnFailed(e), _) => ChildEnd::SpawnFailed(std::io::Error::other(e)),
        (Report::Nothing, true) => ChildEnd::Stopped(None),
        (Report::Nothing, false) => ChildEnd::GuardFailed(format!(
            "the guard process ended ({}) without reporting the command's status",
            guard_status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
        )),
    }
}

/// A pipe whose write end (the second) survives exec, for the guard.
fn status_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // Inherited only by the guard: leaderctl's runtime is single-threaded,
    // so no other process is spawned before `write` is closed.
    fcntl(&write, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok((read, write))
}

/// What the guard reported.
enum Report {
    Status(ExitStatus),
    SpawnFailed(String),
    Nothing,
}

/// Reads the guard's report; the guard has ended, so this does not block.
fn read_report(pipe: OwnedFd) -> Report {
    let mut text = String::new();
    let _ = std::fs::File::from(pipe).read_to_string(&mut text);
    let mut last = Report::Nothing;
    for line in text.lines() {
        let (kind, value) = line.split_once(' ').unwrap_or((line, ""));
        last = match (kind, value.parse::<i32>()) {
            (report::EXIT, Ok(code)) => Report::Status(ExitStatus::from_raw((code & 0xff) << 8)),
            (report::SIGNAL, Ok(signal)) => Report::Status(ExitStatus::from_raw(signal & 0x7f)),
            (report::SPAWN_FAILED, _) => Report::SpawnFailed(value.to_owned()),
            _ => continue,
        };
    }
    last
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn report_of(text: &str) -> Report {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        std::fs::File::from(write)
            .write_all(text.as_bytes())
            .expect("write");
        read_report(read)
    }

    #[test]
    fn the_guard_report_gives_the_command_status() {
        let Report::Status(s) = report_of("exit 3\n") else {
            panic!("an exit code is a status");
        };
        assert_eq!(s.code(), Some(3));
        let Report::Status(s) = report_of("signal 15\n") else {
            panic!("a signal is a status");
        };
        assert_eq!(s.signal(), Some(15));
        let Report::SpawnFailed(e) = report_of("spawn-failed No such file\n") else {
            panic!("a spawn failure");
        };
        assert_eq!(e, "No such file");
        assert!(matches!(report_of(""), Report::Nothing));
        assert!(matches!(report_of("garbage\n"), Report::Nothing));
    }
}
