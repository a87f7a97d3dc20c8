//! Process measurements: CPU time, resident memory, file limits.

use std::time::Duration;

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// This process's resident set size in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

/// The anonymous part of the resident set (heap, stacks) in bytes
/// (`RssAnon`): `VmRSS` without the executable's code pages first touched.
pub fn rss_anon_bytes() -> Option<u64> {
    status_field("RssAnon:")
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) of process `pid` from /proc/PID/stat (Linux
/// reports it in USER_HZ = 100 ticks per second).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the full line, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Raises the soft open-files limit to the hard limit (the scale tests open
/// a thousand subscriptions; servers started afterwards inherit it).
/// Returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let want = hard.min(65_536);
            if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
                want
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

/// `cpu` over `window` as a percentage of one core.
pub fn core_percent(cpu: Duration, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        cpu.as_secs_f64() / window.as_secs_f64() * 100.0
    }
}

/// Bytes as `1.23 MB` (10^6).
pub fn fmt_mb(bytes: i64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}
