//! Section c: the idle cost of one elector with the card's production
//! settings (30 s lease, 10 s renewal). Each elector runs in a child process
//! of its own (the memory store's leader and follower share one, as the
//! store lives in-process), so its CPU time and memory are measured alone.
//! The children run in the background while the other sections run: their
//! cost does not depend on what the parent does.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::time::timeout;

use crate::stats::{header, row};
use crate::stores::{Kind, Servers};
use crate::sys::{core_percent, fmt_mb};
use crate::{Plan, Result, Verdicts, section};

/// One running probe.
#[derive(Debug)]
struct Probe {
    kind: Kind,
    role: &'static str,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

/// The probes started by [`start`], to be read by [`finish`].
#[derive(Debug)]
pub struct IdleRun {
    probes: Vec<Probe>,
    window: Duration,
}

async fn spawn(kind: Kind, url: &str, role: &'static str, window: Duration) -> Result<Probe> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["child-idle", kind.name(), url, role])
        .arg(format!("idle-{}", kind.name()))
        .arg(window.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = timeout(Duration::from_secs(40), lines.next_line())
        .await
        .map_err(|_| format!("idle {role} on {} not ready within 40 s", kind.name()))??;
    if line.as_deref() != Some("READY") {
        return Err(format!("idle {role} on {}: unexpected {line:?}", kind.name()).into());
    }
    Ok(Probe {
        kind,
        role,
        child,
        lines,
    })
}

/// Starts the probes: per store a leader, then (once it leads) a follower.
///
/// # Errors
///
/// A probe that does not reach its role.
pub async fn start(plan: &Plan, servers: &Servers) -> Result<IdleRun> {
    let mut probes = Vec::new();
    for kind in plan.stores.iter().copied() {
        let url = servers.url(kind);
        if kind == Kind::Memory {
            probes.push(spawn(kind, &url, "pair", plan.idle_window).await?);
        } else {
            probes.push(spawn(kind, &url, "leader", plan.idle_window).await?);
            probes.push(spawn(kind, &url, "follower", plan.idle_window).await?);
        }
    }
    Ok(IdleRun {
        probes,
        window: plan.idle_window,
    })
}

fn parse(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn num(m: &HashMap<String, String>, k: &str) -> f64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Waits for every probe's result, prints the table and stops the probes.
///
/// # Errors
///
/// A probe that fails or does not answer in time.
pub async fn finish(mut run: IdleRun, plan: &Plan, verdicts: &mut Verdicts) -> Result<()> {
    section(&format!(
        "c. Idle cost of one elector (card production settings: lease 30 s, renewal 10 s, retry 10 s + up to 20% jitter; window {:?}, each elector in its own process)",
        run.window
    ));
    if plan.quick {
        println!(
            "Quick mode: the window is shorter than a minute, so ops/min are rough (a leader renews once per 10 s).\n"
        );
    }
    let mut results = Vec::new();
    for p in &mut run.probes {
        let line = timeout(run.window + Duration::from_secs(120), p.lines.next_line())
            .await
            .map_err(|_| format!("idle {} on {}: no result", p.role, p.kind.name()))??
            .ok_or_else(|| format!("idle {} on {} exited", p.role, p.kind.name()))?;
        results.push((p.kind, p.role, parse(&line)));
    }
    // Closing stdin lets the leaders shut down (release) and exit.
    for p in &mut run.probes {
        drop(p.child.stdin.take());
    }
    for p in &mut run.probes {
        let _ = timeout(Duration::from_secs(30), p.child.wait()).await;
    }

    println!(
        "{}",
        header(&[
            "store",
            "role",
            "still in role",
            "store ops/min (acquire + renew + release)",
            "counted ops in window",
            "CPU (% of a core)",
            "VmRSS added",
            "of which anonymous (RssAnon)"
        ])
    );
    for (kind, role, m) in &results {
        let minutes = num(m, "window_ms") / 60_000.0;
        let cpu = Duration::from_micros(num(m, "cpu_us") as u64);
        let window = Duration::from_millis(num(m, "window_ms") as u64);
        let pct = core_percent(cpu, window);
        let rss = num(m, "rss_after") as i64 - num(m, "rss_before") as i64;
        let anon = num(m, "anon_after") as i64 - num(m, "anon_before") as i64;
        let sides: Vec<(&str, &str)> = if *role == "pair" {
            vec![("leader", ""), ("follower", "f_")]
        } else {
            vec![(role, "")]
        };
        for (side, prefix) in sides {
            let ops = num(m, &format!("{prefix}acquire"))
                + num(m, &format!("{prefix}renew"))
                + num(m, &format!("{prefix}release"));
            let per_min = ops / minutes.max(1e-9);
            let still = match side {
                "leader" => m.get("leader").map(|v| v == "true").unwrap_or(false),
                _ => m.get("leader").map(|v| v == "false").unwrap_or(false) || *role == "pair",
            };
            let counted = format!(
                "acquire={} renew={} release={} watch={}",
                num(m, &format!("{prefix}acquire")),
                num(m, &format!("{prefix}renew")),
                num(m, &format!("{prefix}release")),
                num(m, &format!("{prefix}watch"))
            );
            let (cpu_s, rss_s, anon_s) = if *role == "pair" {
                (
                    format!("{pct:.4}% (both)"),
                    format!("{} (both)", fmt_mb(rss)),
                    format!("{} (both)", fmt_mb(anon)),
                )
            } else {
                (format!("{pct:.4}%"), fmt_mb(rss), fmt_mb(anon))
            };
            println!(
                "{}",
                row(&[
                    kind.name().to_owned(),
                    side.to_owned(),
                    if still { "yes" } else { "NO" }.to_owned(),
                    format!("{per_min:.1}"),
                    counted,
                    cpu_s,
                    rss_s,
                    anon_s
                ])
            );
            if side == "leader" {
                verdicts.add(
                    format!("{} idle leader at most 7 store ops/min", kind.name()),
                    format!("{per_min:.1}/min"),
                    per_min <= 7.0,
                );
            } else {
                verdicts.add(
                    format!(
                        "{} notified follower: no store ops beyond its subscription",
                        kind.name()
                    ),
                    format!("{per_min:.1}/min"),
                    ops == 0.0,
                );
            }
        }
        verdicts.add(
            format!("{} idle {role} under 0.1% of a core", kind.name()),
            format!("{pct:.4}%"),
            pct < 0.1,
        );
        verdicts.add(
            format!(
                "{} idle {role} under 2 MB resident memory added (VmRSS)",
                kind.name()
            ),
            format!("{} (anonymous: {})", fmt_mb(rss), fmt_mb(anon)),
            rss < 2_000_000,
        );
    }
    println!(
        "\nNot counted above (no LeaseStore call): a Redis follower's subscription connection is pinged every 5 s (the store's watch heartbeat); etcd and Postgres subscriptions are server-pushed streams."
    );
    Ok(())
}
