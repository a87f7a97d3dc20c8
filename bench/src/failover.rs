//! Section b: failover time. A graceful handover (the leader's `shutdown()`
//! releases and followers are notified) and a crash (`abort()`: no release,
//! the lease must expire), many times per store; on Postgres also a holder
//! *process* killed with SIGKILL (the server frees its lock when the socket
//! closes).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leader_core::{ElectionConfig, Elector, HolderId};
use leader_testkit::wrap::{Fault, Faults, Wrapped};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

use crate::stats::{Samples, fmt_dur, header, row};
use crate::stores::{Factory, Kind, Servers};
use crate::{Plan, Result, Verdicts, section};

/// Lease, renewal and retry settings of one failover experiment.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Lease duration.
    pub lease: Duration,
    /// Renewal interval.
    pub renewal: Duration,
    /// Follower retry period (a jitter of up to 20 % is added).
    pub retry: Duration,
}

impl Settings {
    /// The graceful-handover settings: a retry period long enough that a
    /// missed notification would show.
    pub const GRACEFUL: Settings = Settings {
        lease: Duration::from_secs(5),
        renewal: Duration::from_secs(1),
        retry: Duration::from_secs(2),
    };

    /// The crash settings: short, so that many crashes fit in a run.
    pub const CRASH: Settings = Settings {
        lease: Duration::from_secs(2),
        renewal: Duration::from_millis(500),
        retry: Duration::from_millis(500),
    };

    /// An election config for `resource` with these settings.
    pub fn config(&self, resource: &str) -> ElectionConfig {
        let mut c = ElectionConfig::new(resource).with_timing(self.lease, self.renewal);
        c.retry_period = Some(self.retry);
        c
    }

    /// The worst crash failover these settings allow: the whole lease plus
    /// one retry period with its full jitter.
    pub fn crash_bound(&self) -> Duration {
        self.lease + self.retry.mul_f64(1.2)
    }

    /// `lease 2 s, renewal 500 ms, retry 500 ms (+20% jitter)`.
    pub fn describe(&self) -> String {
        format!(
            "lease {:?}, renewal {:?}, retry {:?} (+ up to 20% jitter)",
            self.lease, self.renewal, self.retry
        )
    }
}

/// Waits until `el` leads; `Err` after `limit`.
///
/// # Errors
///
/// When it does not lead within `limit`.
pub async fn wait_leading(el: &Elector, limit: Duration) -> Result<()> {
    let mut rx = el.subscribe();
    timeout(limit, rx.wait_for(|s| s.is_leader))
        .await
        .map_err(|_| format!("no leadership within {limit:?}"))?
        .map_err(|_| "elector stopped")?;
    Ok(())
}

/// Waits until `el` sees `leader` as the leader (so it has subscribed and
/// polled once).
///
/// # Errors
///
/// When it does not within `limit`.
pub async fn wait_sees(el: &Elector, leader: &HolderId, limit: Duration) -> Result<()> {
    let mut rx = el.subscribe();
    timeout(limit, rx.wait_for(|s| s.leader_id.as_ref() == Some(leader)))
        .await
        .map_err(|_| format!("follower did not see the leader within {limit:?}"))?
        .map_err(|_| "elector stopped")?;
    Ok(())
}

/// A pseudo-random duration in `[0, max)` (the crash point within a
/// renewal cycle; no need for a random generator).
fn spread(max: Duration) -> Duration {
    let nanos = Instant::now().elapsed().subsec_nanos() as u64
        ^ u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(nanos % max_ns)
}

/// Handovers on one store: `(new leader after shutdown began, shutdown() call)`.
///
/// # Errors
///
/// A follower that never takes over, or a store error.
pub async fn graceful(factory: &Factory, reps: usize) -> Result<(Samples, Samples)> {
    let s = Settings::GRACEFUL;
    let cfg = s.config(&format!("graceful-{}", factory.kind.name()));
    let mut takeover = Samples::new()?;
    let mut shutdown = Samples::new()?;
    let mut leader = Elector::start(factory.open()?, cfg.clone())?;
    wait_leading(&leader, Duration::from_secs(10)).await?;
    for rep in 0..reps + 2 {
        let follower = Elector::start(factory.open()?, cfg.clone())?;
        wait_sees(&follower, leader.instance_id(), Duration::from_secs(10)).await?;
        let t0 = Instant::now();
        let (down, up) = tokio::join!(
            async {
                leader.shutdown().await;
                t0.elapsed()
            },
            async {
                wait_leading(&follower, s.lease * 3)
                    .await
                    .map(|()| t0.elapsed())
            }
        );
        let up = up?;
        // The first two are warm-up (connections, prepared statements).
        if rep >= 2 {
            takeover.record(up);
            shutdown.record(down);
        }
        leader = follower;
    }
    leader.shutdown().await;
    Ok((takeover, shutdown))
}

/// An elector whose store can play dead: once every call is set to
/// [`Fault::Hang`], nothing reaches the store, as if the process had died.
/// Used with `Elector::abort()` so that a crash can never turn into a
/// release.
fn crashable(factory: &Factory, cfg: &ElectionConfig) -> Result<(Elector, Arc<Wrapped<Faults>>)> {
    let store = Arc::new(Wrapped::new(factory.open()?, Faults::new()));
    Ok((Elector::start(store.clone(), cfg.clone())?, store))
}

/// Crashes on one store: time from the leader's crash (its store calls stop
/// reaching the store, then `abort()`) to the follower leading.
///
/// `abort()` alone is not used: on a multi-threaded runtime it can race
/// with the elector task, which may see the stop signal and release before
/// the task is aborted (see docs/benchmarks.md).
///
/// # Errors
///
/// A follower that never takes over, or a store error.
pub async fn crash(factory: &Factory, reps: usize) -> Result<Samples> {
    let s = Settings::CRASH;
    let cfg = s.config(&format!("crash-{}", factory.kind.name()));
    let mut takeover = Samples::new()?;
    let (mut leader, mut dead) = crashable(factory, &cfg)?;
    wait_leading(&leader, Duration::from_secs(10)).await?;
    for _ in 0..reps {
        let (follower, follower_dead) = crashable(factory, &cfg)?;
        wait_sees(&follower, leader.instance_id(), Duration::from_secs(10)).await?;
        // Crash anywhere in the renewal cycle.
        tokio::time::sleep(spread(s.renewal)).await;
        let t0 = Instant::now();
        dead.set_all(Some(Fault::Hang));
        leader.abort();
        wait_leading(&follower, s.crash_bound() + Duration::from_secs(5)).await?;
        takeover.record(t0.elapsed());
        (leader, dead) = (follower, follower_dead);
    }
    leader.shutdown().await;
    Ok(takeover)
}

/// Kill -9 of a Postgres holder process: time from SIGKILL to an in-process
/// follower leading, with the store's lock delay on or off (the acquirer's
/// setting decides).
///
/// # Errors
///
/// A child that does not lead, or a follower that never takes over.
pub async fn process_kill(url: &str, lock_delay: bool, reps: usize) -> Result<Samples> {
    let s = Settings::CRASH;
    let resource = format!("kill-{}", if lock_delay { "delay" } else { "nodelay" });
    let factory = Factory::new(Kind::Postgres, url).with_lock_delay(lock_delay);
    let exe = std::env::current_exe()?;
    let mut takeover = Samples::new()?;
    for _ in 0..reps {
        let mut child = tokio::process::Command::new(&exe)
            .args(["child-pg-holder", url, &resource])
            .arg(if lock_delay { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| "the holder process did not lead within 20 s")??
            .ok_or("the holder process exited")?;
        let holder = line
            .strip_prefix("LEADER ")
            .ok_or_else(|| format!("unexpected child output {line:?}"))?;
        let holder = HolderId::new(holder)?;
        let follower = Elector::start(factory.open()?, s.config(&resource))?;
        wait_sees(&follower, &holder, Duration::from_secs(10)).await?;
        tokio::time::sleep(spread(s.renewal)).await;
        let pid = child.id().ok_or("child already gone")?;
        let t0 = Instant::now();
        kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
        wait_leading(&follower, s.crash_bound() + Duration::from_secs(5)).await?;
        takeover.record(t0.elapsed());
        let _ = child.wait().await;
        follower.shutdown().await;
    }
    Ok(takeover)
}

fn stat_cells(s: &Samples) -> [String; 3] {
    [fmt_dur(s.p50()), fmt_dur(s.p99()), fmt_dur(s.max())]
}

/// Runs section b and prints its tables.
///
/// # Errors
///
/// A store that fails or a follower that never takes over.
pub async fn run(plan: &Plan, servers: &Servers, verdicts: &mut Verdicts) -> Result<()> {
    section("b. Failover time");
    println!(
        "Graceful handover: `shutdown()` of the leader with one follower waiting; {} repetitions per store (after 2 warm-up). Settings: {}.\n",
        plan.graceful_reps,
        Settings::GRACEFUL.describe()
    );
    println!(
        "{}",
        header(&[
            "store",
            "new leader p50",
            "p99",
            "max",
            "shutdown() p50",
            "p99",
            "max"
        ])
    );
    for kind in Kind::ALL {
        let factory = Factory::new(kind, servers.url(kind));
        let (up, down) = graceful(&factory, plan.graceful_reps).await?;
        let mut cells = vec![kind.name().to_owned()];
        cells.extend(stat_cells(&up));
        cells.extend(stat_cells(&down));
        println!("{}", row(&cells));
        verdicts.add(
            format!("{} graceful handover p99 under 50 ms", kind.name()),
            fmt_dur(up.p99()),
            up.p99() < Duration::from_millis(50),
        );
    }

    let s = Settings::CRASH;
    println!(
        "\nCrash: at a random point of its renewal cycle the leader's store calls stop reaching the store (a wrapper plays dead), then `abort()` (no release); {} repetitions per store, the four stores concurrently. Settings: {}; bound lease + retry + jitter = {}.\n",
        plan.crash_reps,
        s.describe(),
        fmt_dur(s.crash_bound())
    );
    let factories: Vec<Factory> = Kind::ALL
        .into_iter()
        .map(|k| Factory::new(k, servers.url(k)))
        .collect();
    let results =
        futures::future::join_all(factories.iter().map(|f| crash(f, plan.crash_reps))).await;
    println!(
        "{}",
        header(&["store", "new leader p50", "p99", "max", "within bound"])
    );
    for (kind, res) in Kind::ALL.into_iter().zip(results) {
        let t = res?;
        let ok = t.max() <= s.crash_bound();
        let mut cells = vec![kind.name().to_owned()];
        cells.extend(stat_cells(&t));
        cells.push(if ok { "yes" } else { "NO" }.to_owned());
        println!("{}", row(&cells));
        verdicts.add(
            format!(
                "{} crash failover within lease + retry ({})",
                kind.name(),
                fmt_dur(s.crash_bound())
            ),
            format!("max {}", fmt_dur(t.max())),
            ok,
        );
    }

    println!(
        "\nPostgres holder process killed with SIGKILL (the server frees the lock when the socket closes); {} repetitions each. Settings: {}.\n",
        plan.process_kill_reps,
        s.describe()
    );
    println!(
        "{}",
        header(&["lock delay", "new leader p50", "p99", "max"])
    );
    for delay in [false, true] {
        let t = process_kill(&servers.url(Kind::Postgres), delay, plan.process_kill_reps).await?;
        let mut cells = vec![if delay { "on (default)" } else { "off" }.to_owned()];
        cells.extend(stat_cells(&t));
        println!("{}", row(&cells));
        if !delay {
            verdicts.add(
                "postgres kill -9 of the holder process: far less than a lease (lock delay off)",
                format!("p99 {}", fmt_dur(t.p99())),
                t.p99() < s.lease,
            );
        }
    }
    Ok(())
}
