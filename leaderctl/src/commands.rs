//! The subcommands.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leader::{
    ElectionConfig, Elector, Error, LeaseEvent, LeaseInfo, LeaseKey, LeaseStore, Result, Settings,
    StoreOptions, StoreUrl,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::Target;
use crate::child::{ChildEnd, run_child};

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

/// `run -- CMD`.
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
    let elector = Elector::start(store, config)?;
    let (exited_tx, mut exited) = mpsc::channel(1);
    let resource = target.resource.clone();
    let instance = elector.instance_id().to_string();
    let grace = timing.grace;
    let program = command.first().cloned().unwrap_or_default();
    let command = Arc::new(command);
    elector.run_while_leader(move |ctx| {
        let (command, exited_tx) = (command.clone(), exited_tx.clone());
        let env = [
            ("LEADER_FENCING_TOKEN", ctx.token().to_string()),
            ("LEADER_RESOURCE", resource.clone()),
            ("LEADER_INSTANCE_ID", instance.clone()),
        ];
        async move {
            tracing::info!(token = ctx.token().get(), "starting the command");
            match run_child(&command, &env, &ctx, grace).await {
                ChildEnd::Exited(status) => {
                    let _ = exited_tx.send(Ok(status)).await;
                }
                ChildEnd::SpawnFailed(e) => {
                    let _ = exited_tx.send(Err(e)).await;
                }
                ChildEnd::Stopped => tracing::info!("leadership lost: the command was stopped"),
            }
        }
    });
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::unsupported(format!("cannot listen for SIGTERM: {e}")))?;
    let code = tokio::select! {
        ended = exited.recv() => match ended {
            Some(Ok(status)) => exit_code(status),
            Some(Err(e)) => {
                eprintln!("leaderctl: cannot start {program:?}: {e}");
                ExitCode::from(127)
            }
            None => ExitCode::from(2),
        },
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        _ = terminate.recv() => ExitCode::SUCCESS,
    };
    elector.shutdown().await;
    Ok(code)
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        _ => ExitCode::from(1),
    }
}
