//! Section d: scale on Redis. One process holding many named leases (each
//! renewed on its own: the `LeaseStore` trait has no batch renewal), and a
//! thousand candidates contending for one resource through one shared client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use leader_core::{ElectionConfig, Elector, LockGuard, Locks};
use leader_redis::RedisStore;
use redis::aio::MultiplexedConnection;

use crate::counting;
use crate::stats::fmt_dur;
use crate::stores::Servers;
use crate::sys::{core_percent, cpu_time, fmt_mb, process_cpu, rss_bytes};
use crate::{Plan, Result, Verdicts, section};

async fn redis_commands(conn: &mut MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "INFO stats has no total_commands_processed".into())
}

/// Store-side and client-side load over a window.
struct Load {
    start: Instant,
    cpu: Duration,
    server_cpu: Option<Duration>,
    commands: u64,
}

impl Load {
    async fn begin(servers: &Servers, conn: &mut MultiplexedConnection) -> Result<Load> {
        Ok(Load {
            start: Instant::now(),
            cpu: cpu_time(),
            server_cpu: servers.redis.pid().and_then(process_cpu),
            commands: redis_commands(conn).await?,
        })
    }

    /// `(window, this process % of a core, redis-server % of a core, commands/s)`.
    async fn end(
        &self,
        servers: &Servers,
        conn: &mut MultiplexedConnection,
    ) -> Result<(Duration, f64, Option<f64>, f64)> {
        let window = self.start.elapsed();
        let cpu = cpu_time().saturating_sub(self.cpu);
        let server = match (self.server_cpu, servers.redis.pid().and_then(process_cpu)) {
            (Some(a), Some(b)) => Some(core_percent(b.saturating_sub(a), window)),
            _ => None,
        };
        // Minus the two INFO calls of the measurement itself.
        let commands = redis_commands(conn)
            .await?
            .saturating_sub(self.commands + 1);
        Ok((
            window,
            core_percent(cpu, window),
            server,
            commands as f64 / window.as_secs_f64(),
        ))
    }
}

fn pct(p: Option<f64>) -> String {
    p.map(|p| format!("{p:.1}%"))
        .unwrap_or_else(|| "n/a".to_owned())
}

/// Many named leases held by one process.
///
/// # Errors
///
/// Redis failures.
pub async fn held_leases(plan: &Plan, servers: &Servers, verdicts: &mut Verdicts) -> Result<()> {
    let n = plan.scale_leases;
    let (lease, renewal) = plan.scale_timing;
    let url = servers.redis.url();
    let mut probe = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    println!(
        "One process holding {n} named leases on Redis (`Locks::try_acquire`, one shared client), lease {lease:?}, renewal {renewal:?}, window {:?}{}.\n",
        plan.scale_window,
        if plan.quick {
            " (quick mode: scaled down from 10,000 leases, 30 s lease, 10 s renewal)"
        } else {
            ""
        }
    );
    let (store, counters) = counting::wrap(Arc::new(RedisStore::builder(url).build()?));
    let locks = Locks::new(
        store,
        ElectionConfig::new("scale").with_timing(lease, renewal),
    )?;
    let rss0 = rss_bytes().unwrap_or(0);
    let t0 = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let locks = &locks;
            async move { locks.try_acquire(&format!("held-{i}")).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let acquire_all = t0.elapsed();
    let mut guards: Vec<LockGuard> = Vec::with_capacity(n);
    let mut failed = 0usize;
    for r in results {
        match r {
            Ok(Some(g)) => guards.push(g),
            _ => failed += 1,
        }
    }
    // Renewals start one interval after each acquisition.
    tokio::time::sleep(renewal).await;
    let c0 = counters.snapshot();
    let load = Load::begin(servers, &mut probe).await?;
    tokio::time::sleep(plan.scale_window).await;
    let (window, cpu, server, cmds) = load.end(servers, &mut probe).await?;
    let c = counters.snapshot().since(&c0);
    let held = guards.iter().filter(|g| g.is_held()).count();
    let rss = rss_bytes().unwrap_or(0) as i64 - rss0 as i64;
    let t1 = Instant::now();
    let released = futures::stream::iter(guards)
        .map(|g| g.release())
        .buffer_unordered(256)
        .filter(|r| futures::future::ready(matches!(r, Ok(true))))
        .count()
        .await;
    let release_all = t1.elapsed();

    let renew_rate = c.renew as f64 / window.as_secs_f64();
    let expected = n as f64 / renewal.as_secs_f64();
    println!("| measure | value |\n| --- | --- |");
    println!(
        "| leases acquired | {} of {n} in {} ({:.0}/s) |",
        n - failed,
        fmt_dur(acquire_all),
        (n - failed) as f64 / acquire_all.as_secs_f64()
    );
    println!("| still held after the window | {held} |");
    println!("| renewals/s (expected n / renewal interval = {expected:.0}) | {renew_rate:.0} |");
    println!("| this process CPU | {cpu:.1}% of a core |");
    println!("| redis-server CPU | {} of a core |", pct(server));
    println!("| redis commands/s (server side) | {cmds:.0} |");
    println!(
        "| resident memory added | {} ({:.0} bytes per lease) |",
        fmt_mb(rss),
        rss as f64 / n as f64
    );
    println!("| released | {released} in {} |", fmt_dur(release_all));
    verdicts.add(
        format!("{n} held leases on Redis all kept"),
        format!("{held} held, {failed} failed to acquire"),
        held == n && failed == 0,
    );
    Ok(())
}

fn leaders(electors: &[Elector]) -> usize {
    electors.iter().filter(|e| e.is_leader()).count()
}

/// Many candidates for one resource.
///
/// # Errors
///
/// Redis failures, or no leader within a minute.
pub async fn contention(plan: &Plan, servers: &Servers, verdicts: &mut Verdicts) -> Result<()> {
    let n = plan.candidates;
    let url = servers.redis.url();
    let mut probe = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let cfg = ElectionConfig::new("contended");
    println!(
        "\n{n} candidates (electors) for one resource on Redis, one shared client (each elector's subscription has its own connection), card production settings (lease 30 s, renewal 10 s, retry 10 s + 20% jitter), window {:?}{}.\n",
        plan.contention_window,
        if plan.quick {
            " (quick mode: scaled down from 1,000 candidates)"
        } else {
            ""
        }
    );
    let (store, counters) = counting::wrap(Arc::new(RedisStore::builder(url).build()?));
    let t0 = Instant::now();
    let electors = (0..n)
        .map(|_| Elector::start(store.clone(), cfg.clone()))
        .collect::<leader_core::Result<Vec<_>>>()?;
    let limit = Duration::from_secs(60);
    while leaders(&electors) == 0 {
        if t0.elapsed() > limit {
            return Err("no leader within a minute".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = t0.elapsed();
    while counters.snapshot().watch_ok < n as u64 && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribed = t0.elapsed();
    let subs = counters.snapshot();

    let c0 = counters.snapshot();
    let load = Load::begin(servers, &mut probe).await?;
    let (mut min, mut max, mut samples) = (usize::MAX, 0usize, 0usize);
    while load.start.elapsed() < plan.contention_window {
        let l = leaders(&electors);
        min = min.min(l);
        max = max.max(l);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (window, cpu, server, cmds) = load.end(servers, &mut probe).await?;
    let c = counters.snapshot().since(&c0);

    // Handover to one of n - 1 notified followers.
    let idx = electors
        .iter()
        .position(|e| e.is_leader())
        .ok_or("the leader vanished")?;
    let h0 = counters.snapshot();
    let t1 = Instant::now();
    let old = electors[idx].clone();
    let down = tokio::spawn(async move { old.shutdown().await });
    let mut handover = None;
    while t1.elapsed() < Duration::from_secs(30) {
        let others = electors
            .iter()
            .enumerate()
            .filter(|(i, e)| *i != idx && e.is_leader())
            .count();
        if others >= 1 {
            handover = Some(t1.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = down.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let herd = counters.snapshot().since(&h0);
    let after = leaders(&electors);
    let t2 = Instant::now();
    futures::future::join_all(electors.iter().map(|e| e.shutdown())).await;
    let stop_all = t2.elapsed();

    println!("| measure | value |\n| --- | --- |");
    println!("| first leader after start | {} |", fmt_dur(first));
    println!(
        "| subscriptions set up | {} of {n} after {} ({} attempts) |",
        subs.watch_ok,
        fmt_dur(subscribed),
        subs.watch
    );
    println!("| leaders seen in {samples} samples over the window | min {min}, max {max} |");
    println!(
        "| store ops/s over the window (acquire + renew) | {:.1} (acquire {}, renew {}) |",
        (c.acquire + c.renew) as f64 / window.as_secs_f64(),
        c.acquire,
        c.renew
    );
    println!("| redis commands/s (server side, incl. subscription pings) | {cmds:.0} |");
    println!("| this process CPU | {cpu:.1}% of a core |");
    println!("| redis-server CPU | {} of a core |", pct(server));
    println!(
        "| leader shut down: next leader after | {} |",
        handover
            .map(fmt_dur)
            .unwrap_or_else(|| "none within 30 s".to_owned())
    );
    println!(
        "| store ops in the second after that shutdown | acquire {} renew {} release {} |",
        herd.acquire, herd.renew, herd.release
    );
    println!("| leaders one second later | {after} |");
    println!("| all stopped in | {} |", fmt_dur(stop_all));
    verdicts.add(
        format!("{n} candidates: exactly one leader throughout"),
        format!("min {min}, max {max} over {samples} samples; {after} after handover"),
        min == 1 && max == 1 && after == 1,
    );
    Ok(())
}

/// Runs section d.
///
/// # Errors
///
/// Redis failures.
pub async fn run(plan: &Plan, servers: &Servers, verdicts: &mut Verdicts) -> Result<()> {
    section("d. Scale (Redis)");
    held_leases(plan, servers, verdicts).await?;
    contention(plan, servers, verdicts).await
}
