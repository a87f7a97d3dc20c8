//! `leaderctl`: leader election for operators, on any store by URL.
//!
//! ```text
//! leaderctl status  --store redis://127.0.0.1:6379 --resource honua-server [--json]
//! leaderctl watch   --store etcd://127.0.0.1:2379  --resource honua-server
//! leaderctl release --store postgres://... --resource honua-server --force [--yes]
//! leaderctl run     --store redis://...    --resource nightly -- ./job.sh arg
//! ```
//!
//! Every subcommand takes `--store URL` (or `LEADER_STORE`) and `--resource NAME`.
//! Errors are one line on stderr and a non-zero exit.

mod child;
mod commands;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Leader election for operators: who leads, watch changes, emergency
/// release, and run a command only while this instance leads.
#[derive(Debug, Parser)]
#[command(name = "leaderctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the election lives.
#[derive(Debug, Args)]
struct Target {
    /// Store URL: redis://, rediss://, a StackExchange-style Redis string,
    /// etcd:// or http(s)://, postgres://, memory://.
    #[arg(long, env = "LEADER_STORE", hide_env_values = true)]
    store: String,
    /// The resource (election) name.
    #[arg(long, env = "LeaderElection__ResourceName")]
    resource: String,
    /// Key prefix (store key = prefix + resource).
    #[arg(long, env = "LeaderElection__KeyPrefix", default_value = "leader:")]
    prefix: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Who leads the resource, with the token and the time left.
    /// Exit code 0: there is a leader; 1: there is none; 2: error.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print every leadership change as it happens (and empty seats).
    Watch {
        #[command(flatten)]
        target: Target,
        /// How often to read the holder when the store does not notify.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this long (default: until interrupted).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Emergency release: remove the current lease whoever holds it. The
    /// holder steps down at its next renewal; its fenced writes are refused
    /// once another instance takes over with a higher token.
    Release {
        #[command(flatten)]
        target: Target,
        /// Required: this is an emergency operation.
        #[arg(long, required = true)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Run a command only while this instance leads: start it on acquiring,
    /// send it SIGTERM (then SIGKILL after the grace period) the moment
    /// leadership is lost, start it again on re-acquiring, and release on
    /// exit. The child gets LEADER_FENCING_TOKEN, LEADER_RESOURCE and
    /// LEADER_INSTANCE_ID. When the child exits by itself, leaderctl releases
    /// and exits with the child's status.
    Run {
        #[command(flatten)]
        target: Target,
        /// Lease duration (overrides LeaderElection__LeaseDurationSeconds).
        #[arg(long, value_parser = humantime::parse_duration)]
        lease: Option<Duration>,
        /// Renewal interval (overrides LeaderElection__RenewalIntervalSeconds).
        #[arg(long, value_parser = humantime::parse_duration)]
        renew: Option<Duration>,
        /// Follower retry period (default: the renewal interval).
        #[arg(long, value_parser = humantime::parse_duration)]
        retry: Option<Duration>,
        /// Time between SIGTERM and SIGKILL. The child is killed no later
        /// than the lost lease could expire elsewhere, whatever this says.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// This instance's holder id (default: generated).
        #[arg(long, env = "LeaderElection__InstanceId")]
        instance_id: Option<String>,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEADERCTL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,leader_core=info,leaderctl=info")
            }),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status { target, json } => commands::status(&target, json).await,
        Command::Watch {
            target,
            interval,
            duration,
            json,
        } => commands::watch(&target, interval, duration, json).await,
        Command::Release { target, yes, .. } => commands::release(&target, yes).await,
        Command::Run {
            target,
            lease,
            renew,
            retry,
            grace,
            instance_id,
            command,
        } => {
            let timing = commands::RunTiming {
                lease,
                renew,
                retry,
                grace,
            };
            commands::run(&target, timing, instance_id, command).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leaderctl: {e}");
            ExitCode::from(2)
        }
    }
}
