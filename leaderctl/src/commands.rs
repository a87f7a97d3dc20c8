//! The subcommands.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leader::{
    ElectionConfig, Elector, Error, LeaderInfo, LeaseKey, LeaseStore, Metadata, Observer, Result,
    Settings, StoreOptions, StoreUrl,
};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

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

/// The config an observer of `target` uses: the resource and prefix, with
/// `interval` as its polling period and the inspection request timeout.
fn observer_config(target: &Target, interval: Duration) -> ElectionConfig {
    let mut config = ElectionConfig::new(&target.resource);
    config.key_prefix = target.prefix.clone();
    config.retry_period = Some(interval);
    config.request_timeout = Some(REQUEST_TIMEOUT.min(config.renew_deadline()));
    config
}

/// Metadata as text when it is UTF-8, otherwise as hex.
fn metadata_text(m: &Metadata) -> String {
    match m.as_str() {
        Some(text) => text.to_owned(),
        None => m.as_bytes().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn holder_json(info: Option<&LeaderInfo>) -> serde_json::Value {
    match info {
        Some(i) => json!({
            "holder": i.holder.as_str(),
            "token": i.token.get(),
            "remaining_ms": i.remaining().map(|r| r.as_millis() as u64),
            "metadata": i.metadata.as_ref().map(metadata_text),
        }),
        None => serde_json::Value::Null,
    }
}

fn describe(info: Option<&LeaderInfo>) -> String {
    match info {
        Some(i) => {
            let left = match i.remaining() {
                Some(r) => format!(", {:.1}s left", r.as_secs_f64()),
                None => String::new(),
            };
            let metadata = match &i.metadata {
                Some(m) => format!(", metadata {:?}", metadata_text(m)),
                None => String::new(),
            };
            format!("leader {} (token {}{left}{metadata})", i.holder, i.token)
        }
        None => "no leader".to_owned(),
    }
}

/// `status`: exit 0 with a leader, 1 without. One `current` read (through
/// an [`Observer`]'s first read).
pub(crate) async fn status(target: &Target, as_json: bool) -> Result<ExitCode> {
    let (store, key) = open(target)?;
    let kind = store.kind();
    let config = observer_config(target, REQUEST_TIMEOUT);
    let observer = bounded("status", Observer::start(store, &config)).await?;
    let info = observer.leader();
    if as_json {
        let doc = json!({
            "resource": key.resource(),
            "key": key.as_str(),
            "store": kind,
            "leader": holder_json(info.as_ref()),
        });
        println!("{doc}");
    } else {
        println!(
            "resource {} (key {:?}, {kind} store)",
            key.resource(),
            key.as_str(),
        );
        println!("{}", describe(info.as_ref()));
    }
    Ok(if info.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `watch`: one line per change of seat (holder, token, metadata, or an
/// empty seat), through an [`Observer`]: woken by the store's
/// notifications where it has them, polling every `interval` otherwise.
pub(crate) async fn watch(
    target: &Target,
    interval: Duration,
    duration: Option<Duration>,
    as_json: bool,
) -> Result<ExitCode> {
    let (store, _) = open(target)?;
    let until = duration.map(|d| tokio::time::Instant::now() + d);
    let observer = bounded(
        "watch",
        Observer::start(store, &observer_config(target, interval)),
    )
    .await?;
    let mut changes = observer.subscribe();
    let mut errors = observer.errors();
    let print = |info: Option<&LeaderInfo>| {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        if as_json {
            println!(
                "{}",
                json!({ "time": time.to_string(), "leader": holder_json(info) })
            );
        } else {
            println!("{time} {}", describe(info));
        }
        let _ = std::io::stdout().flush();
    };
    print(changes.borrow_and_update().as_ref());
    loop {
        let stop = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Err(Error::unavailable("the observer stopped"));
                }
                print(changes.borrow_and_update().as_ref());
            }
            changed = errors.changed() => {
                if changed.is_err() {
                    return Err(Error::unavailable("the observer stopped"));
                }
                // Once per outage: printed when reads start failing.
                if let Some(e) = errors.borrow_and_update().as_ref() {
                    eprintln!("leaderctl: {e}");
                }
            }
            _ = stop => return Ok(ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// `resign`: asks the running holder to end its term and stay a candidate
/// ([`LeaseStore::request_resign`]), then watches the seat until that term
/// is over, repeating the request every [`RESIGN_RESEND`] meanwhile. Exit 0 when it ended within `wait`, 1 when nobody leads (nothing
/// sent), [`RESIGN_NOT_SEEN`] when the request went out but the term did
/// not end in time (the holder was not subscribed, or is not a leader-core
/// elector), [`RESIGN_UNSUPPORTED`] when the store cannot carry the request.
pub(crate) async fn resign(target: &Target, wait: Duration) -> Result<ExitCode> {
    let (store, key) = open(target)?;
    let kind = store.kind();
    let info = bounded("resign", store.current(&key)).await?;
    let Some(info) = info else {
        eprintln!(
            "leaderctl: {:?} has no leader now; nothing was asked",
            key.as_str()
        );
        return Ok(ExitCode::from(1));
    };
    if !store.capabilities().resign_requests {
        eprintln!(
            "leaderctl: the {kind} store cannot carry a resign request to a running holder; \
             nothing was changed"
        );
        eprintln!(
            "leaderctl: {:?} is held by {} (token {}): ask that process to resign through its \
             own API (Elector::resign), or use `release --force` in an emergency",
            key.as_str(),
            info.holder,
            info.token
        );
        return Ok(ExitCode::from(RESIGN_UNSUPPORTED));
    }
    let observer = bounded(
        "resign",
        Observer::start(store.clone(), &observer_config(target, REQUEST_TIMEOUT)),
    )
    .await?;
    let mut seat = observer.subscribe();
    if !bounded("resign", store.request_resign(&key, info.token)).await? {
        println!(
            "the term of {} (token {}) had already ended",
            info.holder, info.token
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "leaderctl: asked {} (token {}) to resign; waiting up to {wait:?}",
        info.holder, info.token
    );
    let term_over = async {
        // The request is a notification: a holder between two subscriptions
        // misses it (its elector watches again within a retry period). Ask
        // again every RESIGN_RESEND while waiting: a request for an ended
        // term finds no match and sends nothing, so repeats are harmless.
        let mut resend = tokio::time::interval_at(Instant::now() + RESIGN_RESEND, RESIGN_RESEND);
        loop {
            tokio::select! {
                over = seat.wait_for(|now| now.as_ref().is_none_or(|l| l.token != info.token)) => {
                    return over.map(|now| now.clone());
                }
                _ = resend.tick() => {
                    let _ = timeout(REQUEST_TIMEOUT, store.request_resign(&key, info.token)).await;
                }
            }
        }
    };
    match timeout(wait, term_over).await {
        Ok(Ok(now)) => {
            println!(
                "{} (token {}) resigned; now: {}",
                info.holder,
                info.token,
                describe(now.as_ref())
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(_)) => Err(Error::unavailable("the observer stopped")),
        Err(_) => {
            eprintln!(
                "leaderctl: {} (token {}) still leads after {wait:?}: it may not be subscribed \
                 to the store's notifications now; `release --force` is the emergency tool",
                info.holder, info.token
            );
            Ok(ExitCode::from(RESIGN_NOT_SEEN))
        }
    }
}

/// How often `resign` repeats its request while it waits.
const RESIGN_RESEND: Duration = Duration::from_secs(1);

/// `resign`'s exit code: the store cannot carry the request.
pub(crate) const RESIGN_UNSUPPORTED: u8 = 3;

/// `resign`'s exit code: the request went out, but the term had not ended
/// when the wait ran out.
pub(crate) const RESIGN_NOT_SEEN: u8 = 4;

/// `run --wait`'s exit code: leadership was not won in time (sysexits'
/// `EX_TEMPFAIL`: try again later).
pub(crate) const NOT_LEADER_IN_TIME: u8 = 75;

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
            describe(Some(&LeaderInfo::from_lease(
                removed,
                tokio::time::Instant::now()
            )))
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
    /// Give up (exit [`NOT_LEADER_IN_TIME`]) unless leading within this long.
    pub(crate) wait: Option<Duration>,
    /// When the command exits by itself sooner than this after it started,
    /// keep leading until then.
    pub(crate) hold_at_least: Option<Duration>,
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
    // When the command last started (None: never, so not yet leading).
    let started: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let work_started = started.clone();
    elector.run_while_leader(move |ctx| {
        let (command, ended_tx, stop) = (command.clone(), ended_tx.clone(), work_stop.clone());
        *work_started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
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
    let give_up_at = timing.wait.map(|w| Instant::now() + w);
    let code = loop {
        let never_led = || started.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        let wait_over = async {
            match give_up_at {
                Some(at) if never_led() => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let stop_signal = tokio::select! {
            _ = wait_over => {
                if never_led() && !elector.is_leader() {
                    eprintln!(
                        "leaderctl: not leading {:?} after --wait {:?}; giving up",
                        target.resource,
                        timing.wait.unwrap_or_default()
                    );
                    break ExitCode::from(NOT_LEADER_IN_TIME);
                }
                continue;
            }
            end = ended.recv() => match end {
                Some(ChildEnd::Exited(status)) => {
                    let since = *started.lock().unwrap_or_else(|e| e.into_inner());
                    if let (Some(at_least), Some(since)) = (timing.hold_at_least, since) {
                        let until = since + at_least;
                        if Instant::now() < until && elector.is_leader() {
                            tracing::info!(
                                "the command ended early; keeping the lease until --hold-at-least passes"
                            );
                            tokio::select! {
                                _ = tokio::time::sleep_until(until) => {}
                                _ = interrupt.recv() => {}
                                _ = terminate.recv() => {}
                            }
                        }
                    }
                    break exit_code(status);
                }
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
    fn status_lines_show_metadata_as_text_or_hex() {
        let info = |m: &[u8]| {
            LeaderInfo::from_lease(
                leader::LeaseInfo::new(
                    leader::HolderId::new("pod-a").expect("holder"),
                    leader::FencingToken(7),
                    None,
                )
                .with_metadata(Some(Metadata::new(m.to_vec()).expect("small"))),
                Instant::now(),
            )
        };
        let text = describe(Some(&info(b"10.0.0.7:8080")));
        assert_eq!(text, "leader pod-a (token 7, metadata \"10.0.0.7:8080\")");
        let json = holder_json(Some(&info(&[0xff, 0x01])));
        assert_eq!(json["metadata"], "ff01");
        assert_eq!(describe(None), "no leader");
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
