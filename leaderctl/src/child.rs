//! The child process of `leaderctl run`.

use std::process::ExitStatus;
use std::time::Duration;

use leader::LeaderContext;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;

/// How one run of the child ended.
pub(crate) enum ChildEnd {
    /// It exited by itself.
    Exited(ExitStatus),
    /// Leadership was lost (or leaderctl is stopping): it was terminated.
    Stopped,
    /// It could not be started.
    SpawnFailed(std::io::Error),
}

/// Runs `argv` until it exits or `ctx` is cancelled; then SIGTERM, and
/// SIGKILL after `grace`. If this future is dropped (the elector aborts work
/// that outlives the lease), the child is killed too.
pub(crate) async fn run_child(
    argv: &[String],
    env: &[(&str, String)],
    ctx: &LeaderContext,
    grace: Duration,
) -> ChildEnd {
    let Some((program, args)) = argv.split_first() else {
        return ChildEnd::SpawnFailed(std::io::Error::other("no command given"));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return ChildEnd::SpawnFailed(e),
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) => ChildEnd::Exited(status),
            Err(e) => ChildEnd::SpawnFailed(e),
        },
        _ = ctx.cancelled() => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            ChildEnd::Stopped
        }
    }
}

/// Makes the kernel SIGKILL the child if leaderctl dies (even by SIGKILL), so
/// an orphaned child can never keep working while another instance leads.
/// The death signal follows the thread that forked: leaderctl runs on a
/// single-threaded runtime, so that is the main thread.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec. It only makes
    // the prctl and getppid system calls, which are async-signal-safe, and
    // touches no shared state.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "leaderctl exited before the child started",
                ));
            }
            Ok(())
        });
    }
}
