//! `leader-chaos`: `run` orchestrates a chaos run, `elector` is one elector
//! process of it (started by `run`, not by hand).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use leader_chaos::elector::{self, ElectorArgs};
use leader_chaos::orchestrator::{self, RunArgs, StoreKind};

#[derive(Debug, Parser)]
#[command(about = "Chaos runs: electors as separate processes under random faults")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run electors against a private store under random faults and check
    /// the history; exits 1 on any violation, 2 when setup fails.
    Run {
        /// The store.
        #[arg(long, value_enum)]
        store: StoreKind,
        /// How long to inject faults, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Random seed (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Elector processes.
        #[arg(long, default_value_t = 5)]
        electors: usize,
        /// Lease duration in milliseconds.
        #[arg(long, default_value_t = 2000)]
        lease_ms: u64,
        /// Renewal interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        renewal_ms: u64,
        /// Keep the electors' logs here.
        #[arg(long)]
        log_dir: Option<PathBuf>,
    },
    /// One elector process (started by `run`).
    Elector {
        /// Store URL.
        #[arg(long)]
        url: String,
        /// Resource name.
        #[arg(long)]
        resource: String,
        /// Key prefix.
        #[arg(long)]
        prefix: String,
        /// Holder id.
        #[arg(long)]
        holder: String,
        /// Lease duration in milliseconds.
        #[arg(long)]
        lease_ms: u64,
        /// Renewal interval in milliseconds.
        #[arg(long)]
        renewal_ms: u64,
        /// Pause between fenced writes, in milliseconds.
        #[arg(long, default_value_t = 10)]
        write_every_ms: u64,
        /// Work between the is_leader() check and the write, in milliseconds.
        #[arg(long, default_value_t = 50)]
        work_ms: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leader-chaos: cannot start a runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run {
                store,
                seconds,
                seed,
                electors,
                lease_ms,
                renewal_ms,
                log_dir,
            } => {
                let seed = seed.unwrap_or_else(|| {
                    leader_chaos::clock::mono_ns() ^ u64::from(std::process::id())
                });
                let args = RunArgs {
                    store,
                    duration: Duration::from_secs(seconds),
                    seed,
                    electors,
                    lease: Duration::from_millis(lease_ms),
                    renewal: Duration::from_millis(renewal_ms),
                    log_dir,
                };
                match orchestrator::run(args).await {
                    Ok((analysis, logs)) => {
                        println!("{analysis}");
                        match logs {
                            Some(dir) => println!("elector logs: {}", dir.display()),
                            None => println!(
                                "elector logs: removed (the run passed; keep them with --log-dir)"
                            ),
                        }
                        println!("{}", analysis.checker_line);
                        i32::from(!analysis.passed())
                    }
                    Err(e) => {
                        eprintln!("leader-chaos: setup failed: {e}");
                        2
                    }
                }
            }
            Command::Elector {
                url,
                resource,
                prefix,
                holder,
                lease_ms,
                renewal_ms,
                write_every_ms,
                work_ms,
            } => {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                    .with_writer(std::io::stderr)
                    .init();
                let args = ElectorArgs {
                    url,
                    resource,
                    prefix,
                    holder,
                    lease: Duration::from_millis(lease_ms),
                    renewal: Duration::from_millis(renewal_ms),
                    write_every: Duration::from_millis(write_every_ms),
                    work: Duration::from_millis(work_ms),
                };
                match elector::run(args).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("leader-chaos elector: {e}");
                        3
                    }
                }
            }
        }
    });
    std::process::exit(code);
}
