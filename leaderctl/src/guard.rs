//! The guard of `leaderctl run`: a small process between leaderctl and the
//! command that ties the command's whole process group to leaderctl's life.
//!
//! leaderctl starts its own binary again (`/proc/self/exe __guard ...`) as
//! the leader of a new process group; the guard starts the command, which
//! inherits that group, as do the command's children unless they leave it
//! (`setsid`, `setpgid`). The guard
//!
//! - asks the kernel for a signal when leaderctl dies (`PR_SET_PDEATHSIG`,
//!   even when leaderctl is SIGKILLed) and then SIGKILLs the whole group,
//!   itself included;
//! - forwards a stop signal from leaderctl (SIGTERM on loss, SIGINT on
//!   Ctrl-C) to the whole group and SIGKILLs the group after the grace period;
//! - when the command exits by itself, sends SIGTERM to what is left of the
//!   group (background children) and SIGKILLs it after the grace period;
//! - reports the command's exit status to leaderctl on a pipe (its own exit
//!   status is lost when it SIGKILLs its own group).
//!
//! It is a child subreaper, so the command's orphaned descendants become its
//! children: it exits only when none is left, which tells leaderctl that the
//! command and everything it started are gone.
//!
//! No async runtime here: one thread that waits on a signalfd, so that every
//! signal is handled by plain code instead of a handler (and without unsafe).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp, getpid, getppid};

/// The signal the kernel sends the guard when leaderctl dies.
const PARENT_DEATH_SIGNAL: Signal = Signal::SIGUSR1;

/// Signals leaderctl may send the guard to stop the command; forwarded to
/// the group.
const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Exit code of a guard that could not do its job (it never started the
/// command, or lost track of it after killing the group).
const GUARD_FAILED: u8 = 125;

/// What leaderctl passes to the guard.
#[derive(Debug, clap::Args)]
pub(crate) struct GuardArgs {
    /// leaderctl's pid: the guard's parent.
    #[arg(long)]
    parent: i32,
    /// The inherited write end of the status pipe.
    #[arg(long)]
    status_fd: RawFd,
    /// Time between the stop signal and SIGKILL, in milliseconds.
    #[arg(long)]
    grace_ms: u64,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

impl GuardArgs {
    /// The arguments that start a guard for `command` (after the binary).
    pub(crate) fn to_args(
        parent: Pid,
        status_fd: RawFd,
        grace: Duration,
        command: &[String],
    ) -> Vec<String> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut args = vec![
            GUARD_COMMAND.to_owned(),
            "--parent".to_owned(),
            parent.as_raw().to_string(),
            "--status-fd".to_owned(),
            status_fd.to_string(),
            "--grace-ms".to_owned(),
            grace_ms.to_string(),
            "--".to_owned(),
        ];
        args.extend(command.iter().cloned());
        args
    }
}

/// The hidden subcommand that runs the guard.
pub(crate) const GUARD_COMMAND: &str = "__guard";

/// The hidden subcommand that execs the command for the guard.
pub(crate) const EXEC_COMMAND: &str = "__exec";

/// What the guard passes to the `__exec` step.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// The guard's pid: the parent.
    #[arg(long)]
    parent: i32,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// The `__exec` step between the guard and the command: it clears the
/// signal mask inherited from the guard (std's spawn keeps it), makes the
/// kernel SIGKILL the command if the guard dies, and execs the command
/// (std's exec also restores SIGPIPE). It never returns on success; on
/// failure it exits 127 (command not found) or 126 (found, cannot run), as
/// shells do.
pub(crate) fn exec_main(args: ExecArgs) -> ExitCode {
    let fail = |what: String| {
        eprintln!("leaderctl: {what}");
        ExitCode::from(GUARD_FAILED)
    };
    if let Err(e) = SigSet::empty().thread_set_mask() {
        return fail(format!("cannot clear the signal mask: {e}"));
    }
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail(format!("cannot ask for the parent-death signal: {e}"));
    }
    if getppid() != Pid::from_raw(args.parent) {
        return fail("the guard exited before the command started".to_owned());
    }
    let Some((program, rest)) = args.command.split_first() else {
        return fail("no command given".to_owned());
    };
    let error = Command::new(program).args(rest).exec();
    eprintln!("leaderctl: cannot start {program:?}: {error}");
    match error.kind() {
        std::io::ErrorKind::NotFound => ExitCode::from(127),
        _ => ExitCode::from(126),
    }
}

/// What the guard reports on the status pipe, one line each.
pub(crate) mod report {
    /// The command exited with this code: `exit <code>`.
    pub(crate) const EXIT: &str = "exit";
    /// The command was killed by this signal: `signal <number>`.
    pub(crate) const SIGNAL: &str = "signal";
    /// The command could not be started: `spawn-failed <error>`.
    pub(crate) const SPAWN_FAILED: &str = "spawn-failed";
}

/// Runs the guard; the process exits with the returned code.
pub(crate) fn main(args: GuardArgs) -> ExitCode {
    match Guard::start(args) {
        Ok(Some(mut guard)) => match guard.supervise() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Never leave the group without a guard.
                eprintln!("leaderctl guard: {e}; killing the command's process group");
                let _ = killpg(guard.group, Signal::SIGKILL);
                ExitCode::from(GUARD_FAILED)
            }
        },
        Ok(None) => ExitCode::from(GUARD_FAILED),
        Err(e) => {
            eprintln!("leaderctl guard: {e}");
            ExitCode::from(GUARD_FAILED)
        }
    }
}

/// A guard that has started the command.
struct Guard {
    parent: Pid,
    group: Pid,
    command: Pid,
    grace: Duration,
    signals: SignalFd,
    status: File,
    /// When the group gets SIGKILL (set once a stop began).
    kill_at: Option<Instant>,
    /// Whether the command itself has exited (and was reported).
    command_done: bool,
}

impl Guard {
    /// Arms the guard and starts the command. `None` when the command could
    /// not be started (reported on the pipe).
    fn start(args: GuardArgs) -> Result<Option<Guard>, String> {
        let _ = prctl::set_name(c"leaderctl-guard");
        let mut status = open_status_pipe(args.status_fd)?;
        let mut mask: SigSet = STOP_SIGNALS.into_iter().collect();
        mask.add(Signal::SIGCHLD);
        mask.add(PARENT_DEATH_SIGNAL);
        // Blocked signals stay pending for the signalfd instead of running
        // their default action (which would kill the guard, not the group).
        mask.thread_block()
            .map_err(|e| format!("cannot block signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("cannot open a signalfd: {e}"))?;
        prctl::set_pdeathsig(PARENT_DEATH_SIGNAL)
            .map_err(|e| format!("cannot ask for the parent-death signal: {e}"))?;
        let parent = Pid::from_raw(args.parent);
        // leaderctl may have died before the death signal was armed: then
        // the guard was already re-parented and no signal will come.
        if getppid() != parent {
            return Err("leaderctl exited before the command started".to_owned());
        }
        prctl::set_child_subreaper(true)
            .map_err(|e| format!("cannot become a child subreaper: {e}"))?;
        let group = getpgrp();
        if group != getpid() {
            return Err("the guard does not lead its own process group".to_owned());
        }
        // Through the `__exec` step: std's spawn would pass the guard's
        // blocked signals on to the command.
        let command = match Command::new("/proc/self/exe")
            .arg0("leaderctl")
            .args([
                EXEC_COMMAND,
                "--parent",
                &getpid().as_raw().to_string(),
                "--",
            ])
            .args(&args.command)
            .spawn()
        {
            Ok(child) => child.id(),
            Err(e) => {
                let _ = writeln!(status, "{} {e}", report::SPAWN_FAILED);
                return Ok(None);
            }
        };
        let command = i32::try_from(command)
            .map(Pid::from_raw)
            .map_err(|_| "the command's pid is out of range".to_owned())?;
        Ok(Some(Guard {
            parent,
            group,
            command,
            grace: Duration::from_millis(args.grace_ms),
            signals,
            status,
            kill_at: None,
            command_done: false,
        }))
    }

    /// Waits for signals until the command and all its descendants are gone
    /// (returns) or the group is SIGKILLed (the guard dies with it).
    fn supervise(&mut self) -> Result<(), String> {
        loop {
            self.wait_for_signal()?;
            if getppid() != self.parent {
                self.kill_group();
            }
            while let Some(info) = self
                .signals
                .read_signal()
                .map_err(|e| format!("cannot read the signalfd: {e}"))?
            {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                let from = Pid::from_raw(i32::try_from(info.ssi_pid).unwrap_or(0));
                match Signal::try_from(signo) {
                    Ok(PARENT_DEATH_SIGNAL) if getppid() != self.parent => self.kill_group(),
                    // Only leaderctl's requests count: the group's own
                    // signals (our forwarding, the command's `kill 0`) reach
                    // the guard too.
                    Ok(s) if STOP_SIGNALS.contains(&s) && from == self.parent => self.stop(s),
                    _ => {}
                }
            }
            if self.reap()? {
                return Ok(());
            }
            if self.kill_at.is_some_and(|t| Instant::now() >= t) {
                self.kill_group();
            }
        }
    }

    /// Blocks until a signal is pending or the kill deadline passes.
    fn wait_for_signal(&self) -> Result<(), String> {
        let timeout = match self.kill_at {
            None => PollTimeout::NONE,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Round up: waking a millisecond early would spin.
                PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(format!("cannot wait for signals: {e}")),
        }
    }

    /// Sends `signal` to the group and starts the grace period (once).
    fn stop(&mut self, signal: Signal) {
        if self.kill_at.is_none() {
            self.kill_at = Some(Instant::now() + self.grace);
            let _ = killpg(self.group, signal);
        }
    }

    /// SIGKILLs the whole group, the guard included.
    fn kill_group(&self) {
        let _ = killpg(self.group, Signal::SIGKILL);
    }

    /// Reaps every child that ended, reports the command's status, and
    /// returns whether no child is left.
    fn reap(&mut self) -> Result<bool, String> {
        loop {
            let (pid, line) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("{} {code}", report::EXIT)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, format!("{} {}", report::SIGNAL, signal as i32))
                }
                Ok(WaitStatus::StillAlive) => return Ok(false),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return Ok(true),
                Err(e) => return Err(format!("cannot wait for children: {e}")),
            };
            if pid == self.command && !self.command_done {
                self.command_done = true;
                // Reported at once: the guard may die with its group later.
                let _ = writeln!(self.status, "{line}");
                // Whatever the command left running must not outlive it.
                self.stop(Signal::SIGTERM);
            }
        }
    }
}

/// Takes the inherited write end of the status pipe.
///
/// It is reopened through /proc (a new, close-on-exec descriptor; reopening
/// needs no unsafe code, unlike adopting a raw descriptor) and the inherited
/// one is closed, so the command does not inherit it.
fn open_status_pipe(fd: RawFd) -> Result<File, String> {
    let file = File::options()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("cannot open the status pipe (fd {fd}): {e}"))?;
    nix::unistd::close(fd).map_err(|e| format!("cannot close fd {fd}: {e}"))?;
    Ok(file)
}
