//! `leaderctl`: leader election for operators, on any store by URL.
//!
//! ```text
//! leaderctl status  --store redis://127.0.0.1:6379 --resource honua-server [--json]
//! leaderctl watch   --store etcd://127.0.0.1:2379  --resource honua-server
//! leaderctl release --store postgres://... --resource honua-server --force [--yes]
//! leaderctl resign  --store redis://...    --resource honua-server
//! leaderctl run     --store redis://...    --resource nightly [--wait 30s] [--hold-at-least 2m] -- ./job.sh arg
//! ```
//!
//! Every subcommand takes `--store URL` (or `LEADER_STORE`) and `--resource NAME`.
//! Errors are one line on stderr and a non-zero exit.

mod child;
mod commands;
mod guard;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Leader election for operators: who leads, watch changes, emergency
/// release, and run a command only while this instance leads.
#[derive(Debug, Parser)]
#[command(name = "leaderctl", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The exit codes of every subcommand, for `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  status   0 there is a leader, 1 there is none, 2 error
  watch    0 after --for or Ctrl-C, 2 error
  release  0 released or nothing to release, 1 not confirmed, 2 error
  resign   0 the term ended, 1 there is no leader, 3 the store cannot carry the
           request, 4 the term did not end within --wait, 2 error
  run      75 --wait passed without leading; otherwise the command's exit code when it exits by itself (128 + N if it
           died of signal N); on Ctrl-C 130 and on SIGTERM 143, unless the
           command then exits with its own code; 127 command not found, 126
           not executable, 125 the guard could not start it safely; 2 error
  any      2 invalid arguments";

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
    /// Ask the running holder to resign: end its term and stay a candidate
    /// (it competes again after one follower reaction, so another replica
    /// takes over). The request travels through the store's notifications
    /// to the holder's elector; this command then waits until the term is
    /// over. `release --force` is the emergency tool for a holder that does
    /// not answer.
    Resign {
        #[command(flatten)]
        target: Target,
        /// How long to wait for the term to end.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Run a command only while this instance leads: start it on acquiring,
    /// stop it the moment leadership is lost, start it again on
    /// re-acquiring, and release on exit.
    ///
    /// The command runs in its own process group, behind a small guard
    /// process (`leaderctl-guard`). On loss of leadership the whole group
    /// gets SIGTERM, then SIGKILL after --grace (and in any case at the lost
    /// term's validity point). If leaderctl dies, even by SIGKILL, the guard
    /// SIGKILLs the whole group at once. A process that leaves the group
    /// (setsid, setpgid, a daemon that double-forks into its own session)
    /// escapes this. The command is not in the terminal's foreground group:
    /// reading from the terminal stops it.
    ///
    /// The command gets LEADER_FENCING_TOKEN, LEADER_RESOURCE and
    /// LEADER_INSTANCE_ID. When it exits by itself, what is left of its group
    /// gets SIGTERM (SIGKILL after --grace), leaderctl releases and exits
    /// with the command's status. On Ctrl-C (SIGINT) or SIGTERM, leaderctl
    /// forwards that signal to the group, waits up to --grace, releases and
    /// exits 130 or 143, or with the command's own exit code if it exited
    /// with one.
    #[command(after_help = EXIT_CODES)]
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
        /// Time between the stop signal and SIGKILL for the command's group.
        /// On loss the group is killed no later than the lost lease could
        /// expire elsewhere, whatever this says.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// This instance's holder id (default: generated).
        #[arg(long, env = "LeaderElection__InstanceId")]
        instance_id: Option<String>,
        /// Wait at most this long to lead; if this instance has not led by
        /// then, release anything won meanwhile and exit 75 (EX_TEMPFAIL).
        /// Default: wait as long as it takes.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
        /// If the command exits by itself sooner than this after it started,
        /// keep leading (the lease renewed) until this much time has passed,
        /// then release and exit with the command's code (ShedLock's
        /// lockAtLeastFor: a replica whose schedule fires a little later
        /// does not run the job again). Ctrl-C or SIGTERM end the wait.
        #[arg(long, value_parser = humantime::parse_duration)]
        hold_at_least: Option<Duration>,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Internal: the guard process of `run` (see guard.rs).
    #[command(name = guard::GUARD_COMMAND, hide = true)]
    Guard(guard::GuardArgs),
    /// Internal: the step that execs the command for the guard.
    #[command(name = guard::EXEC_COMMAND, hide = true)]
    Exec(guard::ExecArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // No runtime and no logging in the guard: one thread, plain code.
    let command = match cli.command {
        Command::Guard(args) => return guard::main(args),
        Command::Exec(args) => return guard::exec_main(args),
        command => command,
    };
    // Single-threaded on purpose: the guard's parent-death signal follows
    // the thread that started it, which must be the one that lives as long
    // as leaderctl (the main thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leaderctl: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run_cli(command))
}

async fn run_cli(command: Command) -> ExitCode {
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
    let result = match command {
        Command::Status { target, json } => commands::status(&target, json).await,
        Command::Watch {
            target,
            interval,
            duration,
            json,
        } => commands::watch(&target, interval, duration, json).await,
        Command::Release { target, yes, .. } => commands::release(&target, yes).await,
        Command::Resign { target, wait } => commands::resign(&target, wait).await,
        Command::Run {
            target,
            lease,
            renew,
            retry,
            grace,
            instance_id,
            wait,
            hold_at_least,
            command,
        } => {
            let timing = commands::RunTiming {
                lease,
                renew,
                retry,
                grace,
                wait,
                hold_at_least,
            };
            commands::run(&target, timing, instance_id, command).await
        }
        Command::Guard(_) | Command::Exec(_) => Err(leader::Error::invalid_argument(
            "this subcommand is internal to `run`",
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leaderctl: {e}");
            ExitCode::from(2)
        }
    }
}
