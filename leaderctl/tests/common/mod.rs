//! Helpers shared by the end-to-end tests of the `leaderctl` binary.

#![allow(dead_code, unreachable_pub)] // each test file uses a subset

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// The binary under test (rebuild it before running: it is shared).
pub const BIN: &str = env!("CARGO_BIN_EXE_leaderctl");

/// Runs `leaderctl ARGS` to completion.
pub fn leaderctl(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("LEADER_STORE")
        .stdin(Stdio::null())
        .output()
        .expect("leaderctl runs")
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Timing of one `leaderctl run`: lease 2 s, renewal 500 ms, retry 250 ms.
pub const LEASE: Duration = Duration::from_secs(2);

/// A running `leaderctl run`, SIGKILLed when dropped (a failing test must
/// not leave it running).
pub struct Run(pub Child);

impl std::ops::Deref for Run {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Run {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `leaderctl run --grace GRACE -- sh -c SCRIPT` as `instance`.
pub fn run_sh(url: &str, resource: &str, instance: &str, grace: &str, script: &str) -> Run {
    run_with(
        url,
        resource,
        &["--grace", grace, "--instance-id", instance],
        script,
    )
}

/// `leaderctl run` with the tests' short timing and `extra` flags before
/// `--`, running `sh -c script`.
pub fn run_with(url: &str, resource: &str, extra: &[&str], script: &str) -> Run {
    let child = Command::new(BIN)
        .args(["run", "--store", url, "--resource", resource])
        .args(["--lease", "2s", "--renew", "500ms", "--retry", "250ms"])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .env_remove("LEADER_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("leaderctl run starts");
    Run(child)
}

/// Whether `pid` is a live process (a zombie counts as dead: it no longer
/// runs, it only waits to be reaped).
pub fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) STATE ...": comm may contain spaces, so split at the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Polls every millisecond until `pid` no longer runs; returns how long that
/// took, or `None` if it still ran after `within`.
pub async fn time_until_gone(pid: i32, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while is_running(pid) {
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(start.elapsed())
}

/// The whitespace-separated numbers in `path` (empty while it does not exist).
pub fn numbers_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// SIGKILLs the given processes when dropped, so a failing test leaves no
/// stray writer behind.
#[derive(Default)]
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Waits (polling every 20 ms) for `child` to exit within `within`.
pub async fn exit_status(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "leaderctl did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
