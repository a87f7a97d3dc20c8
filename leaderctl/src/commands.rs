//! The subcommands.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leader::{
    ElectionConfig, Elector, Error, LeaseEvent, LeaseInfo, LeaseKey, LeaseStore, Result, Settings,
    StoreOptions, StoreUrl,
};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::Target;
use crate::child::{ChildEnd, StopSignal, run_child};

/// Bound on one store request of the inspection commands.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn open(target: &Target) -> Result<(Arc<dyn LeaseStore>, LeaseKey)> {
    let key = LeaseKey::new(&target.prefix, &target.resource)?;
    let url = StoreUrl::new(target.store.clone());
    let store = leader::connect_with(&url, &StoreOptions::with_request_timeout(REQUEST_TIMEOUT))?;
    Ok((store, key))
}

async fn bounded<T>(what: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
    timeout(REQUEST_TIMEOUT, f).await.map_err(|_| {
        Error::indeterminate(format!(
            "{what}: the store did not answer within {REQUEST_TIMEOUT:?}"
        ))
    })?
}

fn holder_json(info: Option<&LeaseInfo>) -> serde_json::Value {
    match info {
        Some(i) => json!({
            "holder": i.holder.as_str(),
            "token": i.token.get(),
            "remaining_ms": i.remaining.map(|r| r.as_millis() as u64),
        }),
        None => serde_json::Value::Null,
    }
}

fn describe(info: Option<&LeaseInfo>) -> String {
    match info {
        Some(i) => {
            let left = match i.remaining {
                Some(r) => format!(", {:.1}s left", r.as_secs_f64()),
                None => String::new(),
            };
            format!("leader {} (token {}{left})", i.holder, i.token)
        }
        None => "no leader".to_owned(),
    }
}

/// `status`: exit 0 with a leader, 1 without.
pub(crate) async fn status(target: &Target, as_json: bool) -> Result<ExitCode> {
    let (store, key) = open(target)?;
    let info = bounded("status", store.current(&key)).await?;
    if as_json {
        let doc = json!({
            "resource": key.resource(),
            "key": key.as_str(),
            "store": store.kind(),
            "leader": holder_json(info.as_ref()),
        });
        println!("{doc}");
    } else {
        println!(
            "resource {} (key {:?}, {} store)",
            key.resource(),
            key.as_str(),
            store.kind()
        );
        println!("{}", describe(info.as_ref()));
    }
    Ok(if info.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `watch`: one line per change of holder or token.
pub(crate) async fn watch(
    target: &Target,
    interval: Duration,
    duration: Option<Duration>,
    as_json: bool,
) -> Result<ExitCode> {
    let (store, key) = open(target)?;
    let until = duration.map(|d| tokio::time::Instant::now() + d);
    let mut events = match store.capabilities().notifies() {
        true => store.watch(&key).await.ok(),
        false => None,
    };
    let mut last: Option<Option<(String, u64)>> = None;
    let mut failing = false;
    loop {
        match bounded("watch", store.current(&key)).await {
            Ok(info) => {
                failing = false;
                let now = info.as_ref().map(|i| (i.holder.to_string(), i.token.get()));
                if last.as_ref() != Some(&now) {
                    let time = humantime::format_rfc3339_millis(SystemTime::now());
                    if as_json {
                        println!(
                            "{}",
                            json!({ "time": time.to_string(), "leader": holder_json(info.as_ref()) })
                        );
                    } else {
                        println!("{time} {}", describe(info.as_ref()));
                    }
                    let _ = std::io::stdout().flush();
                    last = Some(now);
                }
            }
            Err(e) if !failing => {
                eprintln!("leaderctl: {e}");
                failing = true;
            }
            Err(_) => {}
        }
        let sleep = tokio::time::sleep(interval);
        let stop = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = stop => return Ok(ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            ev = next_event(&mut events) => {
                if ev.is_none() {
                    events = None; // subscription down: keep polling
                }
            }
        }
    }
}

async fn next_event(events: &mut Option<leader::LeaseEvents>) -> Option<LeaseEvent> {
    match events {
        Some(ev) => ev.recv().await,
        None => std::future::pending().await,
    }
}

/// `release --force`.
pub(crate) async fn release(target: &Target, yes: bool) -> Result<ExitCode> {
    let (store, key) = open(target)?;
    let info = bounded("release", store.current(&key)).await?;
    let Some(info) = info else {
        println!("no lease on {:?}: nothing to release", key.as_str());
        return Ok(ExitCode::SUCCESS);
    };
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::invalid_argument(
                "refusing to force a release without confirmation: stdin is not a terminal; pass --yes",
            ));
        }
        eprint!(
            "Force-release {:?}, held by {} (token {})? The holder will step down. Type 'yes': ",
            key.as_str(),
            info.holder,
            info.token
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| Error::invalid_argument(format!("cannot read the confirmation: {e}")))?;
        if answer.trim() != "yes" {
            println!("not released");
            return Ok(ExitCode::from(1));
        }
    }
    match bounded("release", store.force_release(&key)).await? {
        Some(removed) => println!(
            "released {:?} (was {})",
            key.as_str(),
            describe(Some(&removed))
        ),
        None => println!("no lease on {:?}: nothing to release", key.as_str()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Timing flags of `run`.
pub(crate) struct RunTiming {
    pub(crate) lease: Option<Duration>,
    pub(crate) renew: Option<Duration>,
    pub(crate) retry: Option<Duration>,
    pub(crate) grace: Duration,
}

fn run_config(
    target: &Target,
    timing: &RunTiming,
    instance_id: Option<String>,
) -> Result<ElectionConfig> {
    let mut config = Settings::from_env()?.election;
    config.resource_name = target.resource.clone();
    config.key_prefix = target.prefix.clone();
    if let Some(lease) = timing.lease {
        config.lease_duration = lease;
    }
    if let Some(renew) = timing.renew {
        config.renewal_interval = renew;
    }
    if timing.lease.is_some() || timing.renew.is_some() {
        config.renew_deadline = None;
    }
    if timing.retry.is_some() {
        config.retry_period = timing.retry;
    }
    if instance_id.is_some() {
        config.instance_id = instance_id;
    }
    config.validate()?;
    Ok(config)
}

/// `run -- CMD`. Exit codes: see [`run_exit_code`] and `--help`.
pub(crate) async fn run(
    target: &Target,
    timing: RunTiming,
    instance_id: Option<String>,
    command: Vec<String>,
) -> Result<ExitCode> {
    let config = run_config(target, &timing, instance_id)?;
    let url = StoreUrl::new(target.store.clone());
    let store = leader::connect_with(
        &url,
        &StoreOptions::with_request_timeout(config.request_timeout()),
    )?;
    // Listen before the first child starts: a signal must never take the
    // default action (leaderctl dying without stopping the command).
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Error::unsupported(format!("cannot listen for {name}: {e}")))
    };
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
    let elector = Elector::start(store, config)?;
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let resource = target.resource.clone();
    let instance = elector.instance_id().to_string();
    let grace = timing.grace;
    let stop = StopSignal::new();
    let work_stop = stop.clone();
    let program = command.first().cloned().unwrap_or_default();
    let command = Arc::new(command);
    elector.run_while_leader(move |ctx| {
        let (command, ended_tx, stop) = (command.clone(), ended_tx.clone(), work_stop.clone());
        let env = [
            ("LEADER_FENCING_TOKEN", ctx.token().to_string()),
            ("LEADER_RESOURCE", resource.clone()),
            ("LEADER_INSTANCE_ID", instance.clone()),
        ];
        async move {
            tracing::info!(token = ctx.token().get(), "starting the command");
            let end = run_child(&command, &env, &ctx, grace, &stop).await;
            if let ChildEnd::Stopped(_) = end {
                tracing::info!("leadership lost or stopping: the command was stopped");
            }
            let _ = ended_tx.send(end);
        }
    });
    let code = loop {
        let stop_signal = tokio::select! {
            end = ended.recv() => match end {
                Some(ChildEnd::Exited(status)) => break exit_code(status),
                Some(ChildEnd::SpawnFailed(e)) => {
                    eprintln!("leaderctl: cannot start {program:?}: {e}");
                    break ExitCode::from(127);
                }
                Some(ChildEnd::GuardFailed(e)) => {
                    eprintln!("leaderctl: {e}");
                    break ExitCode::from(2);
                }
                // Leadership lost: wait to lead again.
                Some(ChildEnd::Stopped(_)) => continue,
                None => break ExitCode::from(2),
            },
            _ = interrupt.recv() => Signal::SIGINT,
            _ = terminate.recv() => Signal::SIGTERM,
        };
        // Stopping on a signal: forward it to the command's group, wait for
        // the group (up to the grace period), release.
        stop.set(stop_signal);
        elector.shutdown().await;
        let mut last = None;
        while let Ok(end) = ended.try_recv() {
            last = Some(end);
        }
        break run_exit_code(stop_signal, last.as_ref());
    };
    elector.shutdown().await;
    Ok(code)
}

/// leaderctl's exit code when it stopped on `signal` (SIGINT or SIGTERM):
/// the command's own exit code if the last run ended with one (it handled
/// the signal, or had exited just before it), otherwise 128 + the signal
/// (130 for SIGINT, 143 for SIGTERM): the command died of a signal, was
/// killed after the grace period, or was not running (a follower).
fn run_exit_code(signal: Signal, last: Option<&ChildEnd>) -> ExitCode {
    let own_code = match last {
        Some(ChildEnd::Exited(status) | ChildEnd::Stopped(Some(status))) => status.code(),
        _ => None,
    };
    match own_code {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(128 + signal as u8),
    }
}

/// The exit code that reports the command's `status`: its exit code, or 128
/// + the signal that killed it (as a shell does).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        _ => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn code(c: ExitCode) -> String {
        format!("{c:?}")
    }

    #[test]
    fn a_stop_signal_gives_128_plus_the_signal_unless_the_command_exited_with_a_code() {
        let exited_3 = ExitStatus::from_raw(3 << 8);
        let killed = ExitStatus::from_raw(Signal::SIGTERM as i32);
        let cases = [
            (Signal::SIGINT, None, 130),
            (Signal::SIGTERM, None, 143),
            (Signal::SIGTERM, Some(ChildEnd::Stopped(None)), 143),
            (Signal::SIGINT, Some(ChildEnd::Stopped(Some(killed))), 130),
            (Signal::SIGTERM, Some(ChildEnd::Stopped(Some(exited_3))), 3),
            (Signal::SIGINT, Some(ChildEnd::Exited(exited_3)), 3),
        ];
        for (signal, last, want) in cases {
            assert_eq!(
                code(run_exit_code(signal, last.as_ref())),
                code(ExitCode::from(want)),
                "{signal:?} after {last:?}"
            );
        }
    }
}
