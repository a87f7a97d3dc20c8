//! `leader-bench`: the benchmark program behind `scripts/bench.sh`.
//!
//! ```text
//! leader-bench [--quick] [--only latency,failover,peers,scale,idle]
//!              [--stores memory,redis,etcd,postgres] [--idle-window SECONDS]
//! ```
//!
//! Starts private Redis, etcd and Postgres servers on free loopback ports and
//! prints markdown tables: latency beside the raw store operations, failover
//! times, idle cost, scale, and peer crates; then a summary of the targets.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use leader_bench::stores::{Kind, Servers};
use leader_bench::{Plan, Result, Verdicts, child, failover, idle, latency, peers, scale, sys};
use sqlx::Connection;

const SECTIONS: [&str; 5] = ["latency", "failover", "peers", "scale", "idle"];

fn usage() -> String {
    format!(
        "usage: leader-bench [--quick] [--only SECTION,...] [--stores STORE,...] [--idle-window SECONDS]   (sections: {}; --stores applies to latency, scale and idle; --idle-window to idle)",
        SECTIONS.join(", ")
    )
}

fn first_line(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{cmd}: unknown version"))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(args: &[String]) -> Result<()> {
    let mut plan = Plan::full();
    let mut only: Option<Vec<String>> = None;
    let mut stores: Option<Vec<Kind>> = None;
    let mut idle_window: Option<Duration> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => plan = Plan::quick(),
            "--only" => {
                let list = it.next().ok_or_else(usage)?;
                only = Some(list.split(',').map(str::to_owned).collect());
            }
            "--stores" => {
                let list = it.next().ok_or_else(usage)?;
                stores = Some(list.split(',').map(Kind::parse).collect::<Result<_>>()?);
            }
            "--idle-window" => {
                let secs: u64 = it
                    .next()
                    .ok_or_else(usage)?
                    .parse()
                    .map_err(|_| format!("--idle-window takes whole seconds\n{}", usage()))?;
                idle_window = Some(Duration::from_secs(secs.max(1)));
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage()).into()),
        }
    }
    if let Some(stores) = stores {
        plan.stores = stores;
    }
    if let Some(window) = idle_window {
        plan.idle_window = window;
    }
    if let Some(list) = &only
        && let Some(bad) = list.iter().find(|s| !SECTIONS.contains(&s.as_str()))
    {
        return Err(format!("unknown section {bad:?}\n{}", usage()).into());
    }
    let wants = |s: &str| only.as_ref().is_none_or(|l| l.iter().any(|x| x == s));
    let began = Instant::now();
    let nofile = sys::raise_nofile_limit();

    println!(
        "# leader-bench ({})\n",
        if plan.quick { "quick" } else { "full" }
    );
    println!("- machine: {}", machine());
    println!("- load average at start: {}", loadavg());
    println!("- open-files limit: {nofile}");
    let servers = Servers::start().await?;
    let mut pg = sqlx::PgConnection::connect(servers.postgres.url()).await?;
    let pg_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut pg)
        .await?;
    drop(pg);
    println!(
        "- servers (private, loopback): {}; {}; PostgreSQL {pg_version}",
        first_line("redis-server", "--version"),
        first_line("etcd", "--version")
    );

    let mut verdicts = Verdicts::default();
    // The idle probes run in their own processes while the other sections run.
    let idle_run = if wants("idle") {
        Some(idle::start(&plan, &servers).await?)
    } else {
        None
    };
    if wants("latency") {
        latency::run(&plan, &servers, &mut verdicts).await?;
    }
    if wants("failover") {
        failover::run(&plan, &servers, &mut verdicts).await?;
    }
    if wants("peers") {
        peers::run(&plan, &servers).await?;
    }
    if wants("scale") {
        scale::run(&plan, &servers, &mut verdicts).await?;
    }
    if let Some(run) = idle_run {
        idle::finish(run, &plan, &mut verdicts).await?;
    }

    leader_bench::section("Targets");
    println!("| target | measured | |\n| --- | --- | --- |");
    for v in &verdicts.0 {
        println!("{v}");
    }
    let missed = verdicts.0.iter().filter(|v| !v.met).count();
    println!(
        "\n{} targets met, {missed} missed. Load average at end: {}. Run took {:.0} s.",
        verdicts.0.len() - missed,
        loadavg(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leader-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match args.first().map(String::as_str) {
        Some("child-idle") => rt.block_on(child::idle(&args[1..])),
        Some("child-pg-holder") => rt.block_on(child::pg_holder(&args[1..])),
        _ => rt.block_on(run(&args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leader-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
