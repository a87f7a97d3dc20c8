//! Section d: scale on every network store (Redis, etcd, Postgres). One
//! process holding many named leases through one store client (each renewed
//! on its own: the `LeaseStore` trait has no batch renewal), and many
//! candidates contending for one resource through one shared client; for
//! each, the server connections the process uses and the server's work.

use std::time::{Duration, Instant};

use futures::StreamExt;
use leader_core::{ElectionConfig, Elector, LockGuard, Locks};

use crate::counting::{self, Counts};
use crate::stats::{Samples, fmt_dur};
use crate::stores::{Factory, Kind, ServerProbe, ServerSample, Servers};
use crate::sys::{core_percent, cpu_time, fmt_mb, rss_bytes};
use crate::{Plan, Result, Verdicts, section};

/// What the server and this process did over a window.
struct Window {
    length: Duration,
    /// This process, % of a core.
    cpu: f64,
    /// The server, % of a core.
    server_cpu: Option<f64>,
    /// Server operations per second (see [`ServerSample::ops`]).
    server_ops: f64,
    /// The server's figures at the end.
    end: ServerSample,
}

/// Measures [`Window`]s on one server.
struct Load {
    start: Instant,
    cpu: Duration,
    at_start: ServerSample,
}

impl Load {
    async fn begin(probe: &mut ServerProbe) -> Result<Load> {
        Ok(Load {
            start: Instant::now(),
            cpu: cpu_time(),
            at_start: probe.sample().await?,
        })
    }

    async fn end(&self, probe: &mut ServerProbe) -> Result<Window> {
        let length = self.start.elapsed();
        let cpu = cpu_time().saturating_sub(self.cpu);
        let end = probe.sample().await?;
        let server_cpu = match (self.at_start.cpu, end.cpu) {
            (Some(a), Some(b)) => Some(core_percent(b.saturating_sub(a), length)),
            _ => None,
        };
        Ok(Window {
            length,
            cpu: core_percent(cpu, length),
            server_cpu,
            server_ops: end.ops.saturating_sub(self.at_start.ops) as f64 / length.as_secs_f64(),
            end,
        })
    }
}

fn pct(p: Option<f64>) -> String {
    p.map(|p| format!("{p:.1}%"))
        .unwrap_or_else(|| "n/a".to_owned())
}

/// What a store's server counts as one operation.
fn ops_unit(kind: Kind) -> &'static str {
    match kind {
        Kind::Redis => "commands",
        Kind::Etcd => "gRPC requests and stream messages",
        Kind::Postgres => "transactions",
        Kind::Memory => "operations",
    }
}

/// The connections in use now and before the test (the idle probes of
/// section c and earlier tests may hold some), and for etcd the gRPC streams
/// the server has open, added since before the test.
fn connections(kind: Kind, now: &ServerSample, baseline: &ServerSample) -> String {
    let what = match kind {
        Kind::Etcd => "TCP connections from this process to etcd",
        _ => "server connections",
    };
    let mut s = format!(
        "{} {what} ({} before the test)",
        now.connections, baseline.connections
    );
    if let (Some((w, wr, k)), Some((w0, wr0, k0))) = (now.etcd_streams, baseline.etcd_streams) {
        s.push_str(&format!(
            "; gRPC streams added: {} watch ({} watchers), {} lease keep-alive",
            w.saturating_sub(w0),
            wr.saturating_sub(wr0),
            k.saturating_sub(k0)
        ));
    }
    s
}

/// Many named leases held by one process through one store client.
///
/// # Errors
///
/// A server the probe cannot reach.
pub async fn held_leases(
    plan: &Plan,
    servers: &Servers,
    kind: Kind,
    verdicts: &mut Verdicts,
) -> Result<()> {
    let n = plan.scale_leases;
    let (lease, renewal) = plan.scale_timing;
    let mut probe = ServerProbe::connect(kind, servers).await?;
    let baseline = probe.sample().await?;
    println!(
        "\n### {}: {n} named leases held by one process\n\n`Locks::try_acquire` on one shared store client, lease {lease:?}, renewal {renewal:?}, window {:?}{}.\n",
        kind.name(),
        plan.scale_window,
        if plan.quick {
            " (quick mode: scaled down from 10,000 leases, 30 s lease, 10 s renewal)"
        } else {
            ""
        }
    );
    let factory = Factory::new(kind, servers.url(kind));
    let (store, counters) = counting::wrap(factory.open()?);
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
    let mut first_error = None;
    let mut failed = 0usize;
    for r in results {
        match r {
            Ok(Some(g)) => guards.push(g),
            Ok(None) => failed += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    // Renewals start one interval after each acquisition.
    tokio::time::sleep(renewal).await;
    let c0 = counters.snapshot();
    let load = Load::begin(&mut probe).await?;
    tokio::time::sleep(plan.scale_window).await;
    let w = load.end(&mut probe).await?;
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

    let renew_rate = c.renew as f64 / w.length.as_secs_f64();
    let expected = (n - failed) as f64 / renewal.as_secs_f64();
    let per_renewal = |x: f64| {
        if renew_rate > 0.0 {
            format!("{:.2}", x / renew_rate)
        } else {
            "n/a".to_owned()
        }
    };
    println!("| measure | value |\n| --- | --- |");
    println!(
        "| leases acquired | {} of {n} in {} ({:.0}/s) |",
        n - failed,
        fmt_dur(acquire_all),
        (n - failed) as f64 / acquire_all.as_secs_f64()
    );
    if let Some(e) = &first_error {
        println!("| first acquire error | {} |", e.replace('|', "/"));
    }
    println!("| still held after the window | {held} |");
    println!(
        "| server connections used (during the window) | {} |",
        connections(kind, &w.end, &baseline)
    );
    println!("| renewals/s (expected held / renewal interval = {expected:.0}) | {renew_rate:.0} |");
    println!(
        "| server {}/s | {:.0} ({} per renewal) |",
        ops_unit(kind),
        w.server_ops,
        per_renewal(w.server_ops)
    );
    println!(
        "| this process CPU | {:.1}% of a core ({} ms per 1000 renewals) |",
        w.cpu,
        per_renewal(w.cpu * 10.0 * 1000.0)
    );
    println!(
        "| server CPU | {} of a core ({} ms per 1000 renewals) |",
        pct(w.server_cpu),
        w.server_cpu
            .map(|p| per_renewal(p * 10.0 * 1000.0))
            .unwrap_or_else(|| "n/a".to_owned())
    );
    println!(
        "| resident memory added | {} ({:.0} bytes per lease) |",
        fmt_mb(rss),
        rss as f64 / n as f64
    );
    println!("| released | {released} in {} |", fmt_dur(release_all));
    verdicts.add(
        format!("{n} held leases on {} all kept", kind.name()),
        format!(
            "{held} held, {failed} failed to acquire; {}",
            connections(kind, &w.end, &baseline)
        ),
        held == n && failed == 0,
    );
    Ok(())
}

fn leaders(electors: &[Elector]) -> usize {
    electors.iter().filter(|e| e.is_leader()).count()
}

/// Waits until some elector other than `old` leads; its index.
async fn next_leader(electors: &[Elector], old: usize, within: Duration) -> Option<usize> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(i) = electors
            .iter()
            .enumerate()
            .position(|(i, e)| i != old && e.is_leader())
        {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    None
}

/// Many candidates for one resource through one store client.
///
/// # Errors
///
/// A server the probe cannot reach, or no leader within a minute.
pub async fn contention(
    plan: &Plan,
    servers: &Servers,
    kind: Kind,
    verdicts: &mut Verdicts,
) -> Result<()> {
    let n = plan.candidates;
    let mut probe = ServerProbe::connect(kind, servers).await?;
    let baseline = probe.sample().await?;
    let cfg = ElectionConfig::new(format!("contended-{}", kind.name()));
    println!(
        "\n### {}: {n} candidates for one resource\n\nOne shared store client, card production settings (lease 30 s, renewal 10 s, retry 10 s + 20% jitter), window {:?}{}.\n",
        kind.name(),
        plan.contention_window,
        if plan.quick {
            " (quick mode: scaled down from 1,000 candidates)"
        } else {
            ""
        }
    );
    let factory = Factory::new(kind, servers.url(kind));
    let (store, counters) = counting::wrap(factory.open()?);
    let t0 = Instant::now();
    let electors = (0..n)
        .map(|_| Elector::start(store.clone(), cfg.clone()))
        .collect::<leader_core::Result<Vec<_>>>()?;
    let limit = Duration::from_secs(60);
    while leaders(&electors) == 0 {
        if t0.elapsed() > limit {
            return Err(format!("{}: no leader within a minute", kind.name()).into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = t0.elapsed();
    let subscribe_limit = first + Duration::from_secs(15);
    while counters.snapshot().watch_ok < n as u64 && t0.elapsed() < subscribe_limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribed = t0.elapsed();
    let subs = counters.snapshot();

    let c0 = counters.snapshot();
    let load = Load::begin(&mut probe).await?;
    let (mut min, mut max, mut samples) = (usize::MAX, 0usize, 0usize);
    while load.start.elapsed() < plan.contention_window {
        let l = leaders(&electors);
        min = min.min(l);
        max = max.max(l);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let w = load.end(&mut probe).await?;
    let c = counters.snapshot().since(&c0);

    // Graceful handovers: the leader shuts down with the others waiting.
    let mut handovers = Samples::new()?;
    let mut herd = Vec::new();
    let mut after_each = Vec::new();
    let mut server_ops = Vec::new();
    let mut stopped = vec![false; n];
    for _ in 0..plan.handovers {
        let Some(idx) = electors.iter().position(|e| e.is_leader()) else {
            break;
        };
        let s0 = probe.sample().await?;
        let h0 = counters.snapshot();
        let t1 = Instant::now();
        let old = electors[idx].clone();
        let down = tokio::spawn(async move { old.shutdown().await });
        let next = next_leader(&electors, idx, Duration::from_secs(30)).await;
        let took = t1.elapsed();
        let _ = down.await;
        stopped[idx] = true;
        let Some(_) = next else { break };
        handovers.record(took);
        herd.push(counters.snapshot().since(&h0));
        after_each.push(leaders(&electors));
        // Every woken follower has asked by then.
        tokio::time::sleep(HERD_SETTLES.saturating_sub(t1.elapsed())).await;
        server_ops.push(probe.sample().await?.ops.saturating_sub(s0.ops));
    }
    // The herd of the last handover settles within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = leaders(&electors);
    let t2 = Instant::now();
    futures::future::join_all(
        electors
            .iter()
            .zip(&stopped)
            .filter(|(_, s)| !**s)
            .map(|(e, _)| e.shutdown()),
    )
    .await;
    let stop_all = t2.elapsed();

    println!("| measure | value |\n| --- | --- |");
    println!("| first leader after start | {} |", fmt_dur(first));
    println!(
        "| subscriptions set up | {} of {n} after {} ({} attempts) |",
        subs.watch_ok,
        fmt_dur(subscribed),
        subs.watch
    );
    println!(
        "| server connections used (during the window) | {} |",
        connections(kind, &w.end, &baseline)
    );
    println!("| leaders seen in {samples} samples over the window | min {min}, max {max} |");
    println!(
        "| store calls/s over the window (acquire + renew) | {:.1} (acquire {}, renew {}) |",
        (c.acquire + c.renew) as f64 / w.length.as_secs_f64(),
        c.acquire,
        c.renew
    );
    println!(
        "| server {}/s over the window | {:.0} |",
        ops_unit(kind),
        w.server_ops
    );
    println!("| this process CPU | {:.1}% of a core |", w.cpu);
    println!("| server CPU | {} of a core |", pct(w.server_cpu));
    handover_rows(&handovers, &herd, plan.handovers);
    server_ops_row(kind, &server_ops);
    println!(
        "| leaders right after each handover | min {}, max {} |",
        after_each.iter().min().copied().unwrap_or(0),
        after_each.iter().max().copied().unwrap_or(0)
    );
    println!("| leaders one second after the last | {after} |");
    println!("| all stopped in | {} |", fmt_dur(stop_all));
    verdicts.add(
        format!(
            "{n} candidates on {}: exactly one leader throughout, one after each handover",
            kind.name()
        ),
        format!(
            "min {min}, max {max} over {samples} samples; {} of {} handovers; {after} after the last; {}",
            handovers.count(),
            plan.handovers,
            connections(kind, &w.end, &baseline)
        ),
        min == 1
            && max == 1
            && after == 1
            && handovers.count() == plan.handovers as u64
            && after_each.iter().all(|l| *l == 1),
    );
    if handovers.count() > 0 {
        let p99 = handovers.p99();
        verdicts.add(
            format!(
                "{} graceful handover p99 under 5 ms with {} waiting candidates",
                kind.name(),
                n - 1
            ),
            fmt_dur(p99),
            p99 < Duration::from_millis(5),
        );
    }
    Ok(())
}

/// Prints the handover rows: next leader p50/p99/max, and the store calls
/// in the handover (the herd of woken followers).
fn handover_rows(handovers: &Samples, herd: &[Counts], planned: usize) {
    println!(
        "| graceful handovers: next leader after (p50 / p99 / max of {} of {planned}) | {} / {} / {} |",
        handovers.count(),
        fmt_dur(handovers.p50()),
        fmt_dur(handovers.p99()),
        fmt_dur(handovers.max())
    );
    let acquires: Vec<u64> = herd.iter().map(|c| c.acquire).collect();
    println!(
        "| store calls until the next leader led (acquire, mean / max) | {:.0} / {} |",
        acquires.iter().sum::<u64>() as f64 / acquires.len().max(1) as f64,
        acquires.iter().max().copied().unwrap_or(0)
    );
}

/// How long after a graceful handover began its server operations are
/// counted: the woken followers have all asked by then.
const HERD_SETTLES: Duration = Duration::from_millis(500);

/// Prints the server operations per handover (the release, the woken
/// followers' acquisitions, the new leader's first renewal if due, the
/// probe's own reads).
fn server_ops_row(kind: Kind, ops: &[u64]) {
    let value = if kind == Kind::Postgres {
        // pg_stat_database lags: backends flush their counts once a second.
        "n/a (Postgres flushes its statistics once a second)".to_owned()
    } else {
        format!(
            "{:.0} / {}",
            ops.iter().sum::<u64>() as f64 / ops.len().max(1) as f64,
            ops.iter().max().copied().unwrap_or(0)
        )
    };
    println!(
        "| server {} per handover, within {HERD_SETTLES:?} of its start (mean / max) | {value} |",
        ops_unit(kind)
    );
}

/// Prints and records a test that failed, so that one store failing does
/// not hide the other stores' figures.
fn note_failure(kind: Kind, test: &str, outcome: Result<()>, verdicts: &mut Verdicts) {
    if let Err(e) = outcome {
        println!("\n{} {test}: FAILED: {e}", kind.name());
        verdicts.add(format!("{test} on {}", kind.name()), e.to_string(), false);
    }
}

/// Runs section d on every network store of the plan.
///
/// # Errors
///
/// A server the probe cannot reach, or no leader within a minute.
pub async fn run(plan: &Plan, servers: &Servers, verdicts: &mut Verdicts) -> Result<()> {
    section("d. Scale");
    for kind in plan.stores.iter().copied().filter(|k| *k != Kind::Memory) {
        let held = held_leases(plan, servers, kind, verdicts).await;
        note_failure(kind, "held leases", held, verdicts);
        let contended = contention(plan, servers, kind, verdicts).await;
        note_failure(kind, "candidates", contended, verdicts);
    }
    Ok(())
}
