//! The orchestrator: starts the store, the proxies and the electors, injects
//! random faults for the run's length, then checks what happened.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leader_testkit::history::{FencedResource, History};
use leader_testkit::proxy::{FaultProxy, Mode};
use leader_testkit::servers::{EtcdServer, PostgresServer, RedisServer, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::analysis::{self, Analysis, RunRecord, Timing};
use crate::clock::{Clock, mono_ns};
use crate::cluster::EtcdCluster;
use crate::faults::{Fault, FaultKind, between};
use crate::log::RunLog;
use crate::procs::{ElectorPlan, Slot, log_tail};

/// A store kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A private `redis-server`.
    Redis,
    /// A private single-member etcd.
    Etcd,
    /// A private Postgres.
    Postgres,
    /// A private three-member etcd cluster; store faults hit its leader
    /// member (the store's own failover).
    EtcdCluster,
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// The store.
    pub store: StoreKind,
    /// How long faults are injected.
    pub duration: Duration,
    /// Random seed (printed, so a run can be replayed as far as timing allows).
    pub seed: u64,
    /// How many elector processes.
    pub electors: usize,
    /// Lease duration.
    pub lease: Duration,
    /// Renewal interval (also retry period and request timeout).
    pub renewal: Duration,
    /// Where to keep the electors' logs (a temporary folder otherwise, kept
    /// when the run fails).
    pub log_dir: Option<PathBuf>,
}

enum Store {
    Redis(RedisServer),
    Etcd(EtcdServer),
    Postgres(PostgresServer),
    EtcdCluster(EtcdCluster),
}

impl Store {
    async fn start(kind: StoreKind) -> Result<Store, String> {
        let text = |e: leader_testkit::Error| e.to_string();
        Ok(match kind {
            StoreKind::Redis => Store::Redis(RedisServer::start().await.map_err(text)?),
            StoreKind::Etcd => Store::Etcd(EtcdServer::start().await.map_err(text)?),
            StoreKind::Postgres => Store::Postgres(PostgresServer::start().await.map_err(text)?),
            StoreKind::EtcdCluster => Store::EtcdCluster(EtcdCluster::start().await.map_err(text)?),
        })
    }

    fn server(&self) -> Option<&Server> {
        match self {
            Store::Redis(s) => Some(s),
            Store::Etcd(s) => Some(s),
            Store::Postgres(s) => Some(s),
            Store::EtcdCluster(_) => None,
        }
    }

    /// The client address of every store member.
    fn addrs(&self) -> Vec<SocketAddr> {
        match (self, self.server()) {
            (Store::EtcdCluster(c), _) => c.addrs(),
            (_, Some(s)) => vec![s.addr()],
            _ => Vec::new(),
        }
    }

    /// The URL that reaches the store through `proxies` (one per member).
    fn url_via(&self, proxies: &[SocketAddr]) -> String {
        match (self.server(), proxies.first()) {
            (Some(s), Some(first)) => s.url_via(*first),
            _ => {
                let hosts: Vec<String> = proxies.iter().map(ToString::to_string).collect();
                format!("etcd://{}", hosts.join(","))
            }
        }
    }

    fn describe(&self) -> String {
        match (self, self.server()) {
            (_, Some(s)) => s.url().to_owned(),
            (Store::EtcdCluster(c), _) => format!("{c:?}"),
            _ => String::new(),
        }
    }
}

fn secs(ns: u64, origin: u64) -> f64 {
    ns.saturating_sub(origin) as f64 / 1e9
}

struct Run {
    args: RunArgs,
    plan: ElectorPlan,
    store: Store,
    slots: Vec<Slot>,
    log: RunLog,
    resource: Arc<FencedResource>,
    rng: StdRng,
    origin: u64,
    faults: Vec<Fault>,
    killed: HashMap<String, u64>,
    paused: Vec<(String, u64, u64)>,
    stalls: Vec<u64>,
    paused_member: Option<usize>,
    killed_member: Option<usize>,
}

impl Run {
    fn say(&self, text: &str) {
        println!("[{:>7.2} s] {text}", secs(mono_ns(), self.origin));
    }

    /// Waits until some elector believes it leads, at most `within`.
    async fn leader(&self, within: Duration) -> Option<(usize, String)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(holder) = self.log.leader_at(mono_ns()) {
                let seat = self.slots.iter().position(|s| s.holder() == Some(&holder));
                if let Some(seat) = seat {
                    return Some((seat, holder));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn random_seat(&mut self, leader: usize) -> usize {
        // The leader's link most of the time: that is where a partition hurts.
        if self.rng.random_bool(0.75) {
            leader
        } else {
            self.rng.random_range(0..self.slots.len())
        }
    }

    async fn inject(&mut self, kind: FaultKind, leader: usize) -> Result<Fault, String> {
        let lease = self.args.lease;
        let retry = self.args.renewal;
        let start = mono_ns();
        let (target, detail) = match kind {
            FaultKind::KillLeader => {
                let holder = self.slots[leader].holder().unwrap_or("?").to_owned();
                self.slots[leader].kill().await;
                self.killed.insert(holder.clone(), start);
                let healed = mono_ns();
                let wait = between(
                    &mut self.rng,
                    Duration::from_millis(200),
                    Duration::from_millis(1000),
                );
                tokio::time::sleep(wait).await;
                let (plan, log, resource) =
                    (self.plan.clone(), self.log.clone(), self.resource.clone());
                self.slots[leader]
                    .spawn(&plan, &log, &resource)
                    .map_err(|e| format!("restarting elector {}: {e}", leader + 1))?;
                let next = self.slots[leader].holder().unwrap_or("?").to_owned();
                return Ok(Fault {
                    kind,
                    target: holder,
                    start,
                    healed,
                    detail: format!("{next} started {:.2} s later", wait.as_secs_f64()),
                });
            }
            FaultKind::PauseLeader => {
                let holder = self.slots[leader].holder().unwrap_or("?").to_owned();
                // Past its lease: long enough for another elector to take over.
                let pause = lease
                    + retry
                    + between(
                        &mut self.rng,
                        Duration::from_millis(300),
                        Duration::from_millis(1500),
                    );
                self.slots[leader].pause();
                tokio::time::sleep(pause).await;
                self.slots[leader].resume();
                self.paused.push((holder.clone(), start, mono_ns()));
                (holder, format!("stopped {:.2} s", pause.as_secs_f64()))
            }
            FaultKind::PauseStore => {
                let pause = between(
                    &mut self.rng,
                    Duration::from_millis(300),
                    lease + Duration::from_secs(1),
                );
                let target = self.pause_store().await?;
                tokio::time::sleep(pause).await;
                self.resume_store()?;
                (target, format!("stopped {:.2} s", pause.as_secs_f64()))
            }
            FaultKind::KillStore => {
                // Redis here runs without persistence: a restart forgets every
                // lease, so a restart within a lease would let a second
                // leader in while the first still trusts its term (the
                // documented data-loss case). Down for longer than a lease,
                // every old term has run out first.
                let down = match self.args.store {
                    StoreKind::Redis => {
                        lease
                            + between(
                                &mut self.rng,
                                Duration::from_millis(300),
                                Duration::from_millis(1000),
                            )
                    }
                    _ => between(
                        &mut self.rng,
                        Duration::from_millis(100),
                        Duration::from_millis(1500),
                    ),
                };
                let target = self.kill_store().await?;
                tokio::time::sleep(down).await;
                self.restart_store().await?;
                (target, format!("down {:.2} s", down.as_secs_f64()))
            }
            FaultKind::Blackhole | FaultKind::Slow => {
                let seat = self.random_seat(leader);
                let holder = self.slots[seat].holder().unwrap_or("?").to_owned();
                let (mode, length, detail) = if kind == FaultKind::Blackhole {
                    let length = between(
                        &mut self.rng,
                        Duration::from_millis(500),
                        lease + Duration::from_secs(2),
                    );
                    (
                        Mode::Blackhole,
                        length,
                        format!("{:.2} s", length.as_secs_f64()),
                    )
                } else {
                    let fixed = between(
                        &mut self.rng,
                        Duration::from_millis(50),
                        Duration::from_millis(400),
                    );
                    let length = between(
                        &mut self.rng,
                        Duration::from_secs(1),
                        Duration::from_secs(4),
                    );
                    (
                        Mode::Latency {
                            fixed,
                            jitter: Duration::from_millis(50),
                        },
                        length,
                        format!(
                            "+{} ms per chunk for {:.2} s",
                            fixed.as_millis(),
                            length.as_secs_f64()
                        ),
                    )
                };
                self.slots[seat].set_mode(mode);
                tokio::time::sleep(length).await;
                self.slots[seat].set_mode(Mode::PassThrough);
                let lead = if seat == leader { " (leader)" } else { "" };
                (format!("link of {holder}{lead}"), detail)
            }
        };
        Ok(Fault {
            kind,
            target,
            start,
            healed: mono_ns(),
            detail,
        })
    }

    /// SIGSTOPs the store (a cluster: its leader member); returns the target.
    async fn pause_store(&mut self) -> Result<String, String> {
        match &mut self.store {
            Store::EtcdCluster(c) => {
                let leader = c
                    .wait_for_leader(Duration::from_secs(10))
                    .await
                    .map_err(|e| e.to_string())?;
                c.member(leader).pause().map_err(|e| e.to_string())?;
                self.paused_member = Some(leader);
                Ok(format!("store leader {}", c.name(leader)))
            }
            other => {
                let server = other.server().ok_or("no server")?;
                server.pause().map_err(|e| e.to_string())?;
                Ok("store".to_owned())
            }
        }
    }

    fn resume_store(&mut self) -> Result<(), String> {
        match &self.store {
            Store::EtcdCluster(c) => match self.paused_member.take() {
                Some(member) => c.member(member).resume().map_err(|e| e.to_string()),
                None => Ok(()),
            },
            other => {
                let server = other.server().ok_or("no server")?;
                server.resume().map_err(|e| e.to_string())
            }
        }
    }

    /// SIGKILLs the store (a cluster: its leader member); returns the target.
    async fn kill_store(&mut self) -> Result<String, String> {
        match &mut self.store {
            Store::EtcdCluster(c) => {
                let leader = c
                    .kill_leader(Duration::from_secs(10))
                    .await
                    .map_err(|e| e.to_string())?;
                self.killed_member = Some(leader);
                Ok(format!("store leader {}", c.name(leader)))
            }
            other => {
                let server = other.server().ok_or("no server")?;
                server.kill().await.map_err(|e| e.to_string())?;
                Ok("store".to_owned())
            }
        }
    }

    async fn restart_store(&mut self) -> Result<(), String> {
        match &mut self.store {
            Store::EtcdCluster(c) => match self.killed_member.take() {
                Some(member) => c.member(member).restart().await.map_err(|e| e.to_string()),
                None => Ok(()),
            },
            other => {
                let server = other.server().ok_or("no server")?;
                server.restart().await.map_err(|e| e.to_string())
            }
        }
    }

    async fn teardown(&mut self) -> u64 {
        for slot in &mut self.slots {
            slot.resume();
            slot.set_mode(Mode::PassThrough);
        }
        let _ = self.resume_store();
        let end = mono_ns();
        for slot in &mut self.slots {
            if let Some(holder) = slot.holder().map(str::to_owned) {
                self.killed.insert(holder, mono_ns());
            }
            slot.kill().await;
        }
        end
    }
}

/// Runs a chaos run and returns its analysis (printed by the caller) and
/// where the electors' logs are (`None`: a temporary folder, removed
/// because the run passed).
///
/// # Errors
///
/// When the store or an elector cannot be started: a setup problem, not a
/// finding.
pub async fn run(args: RunArgs) -> Result<(Analysis, Option<PathBuf>), String> {
    let clock = Clock::new();
    let origin = mono_ns();
    let (log_dir, keep) = match &args.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("leader-chaos-")
                .tempdir()
                .map_err(|e| format!("creating a log folder: {e}"))?;
            (dir.path().to_owned(), Some(dir))
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let store = Store::start(args.store)
        .await
        .map_err(|e| format!("starting the store: {e}"))?;
    let members = store.addrs();
    let history = History::new();
    let resource = Arc::new(FencedResource::recording(history.clone()));
    let validity = args
        .lease
        .mul_f64(1.0 - leader::ElectionConfig::new("x").clock_drift);
    let log = RunLog::new(validity);
    let plan = ElectorPlan {
        exe,
        log_dir: log_dir.clone(),
        resource: "chaos".to_owned(),
        prefix: format!("chaos-{}:", std::process::id()),
        lease: args.lease,
        renewal: args.renewal,
    };
    let mut slots = Vec::new();
    for index in 1..=args.electors {
        let mut proxies = Vec::new();
        for member in &members {
            proxies.push(
                FaultProxy::start(*member)
                    .await
                    .map_err(|e| format!("starting a fault proxy: {e}"))?,
            );
        }
        let addrs: Vec<SocketAddr> = proxies.iter().map(FaultProxy::addr).collect();
        let url = store.url_via(&addrs);
        let mut slot = Slot::new(index, proxies, url);
        slot.spawn(&plan, &log, &resource)
            .map_err(|e| format!("starting elector {index}: {e}"))?;
        slots.push(slot);
    }
    let mut run = Run {
        rng: StdRng::seed_from_u64(args.seed),
        args: args.clone(),
        plan,
        store,
        slots,
        log,
        resource,
        origin,
        faults: Vec::new(),
        killed: HashMap::new(),
        paused: Vec::new(),
        stalls: Vec::new(),
        paused_member: None,
        killed_member: None,
    };
    run.say(&format!(
        "{:?} at {}, {} electors, lease {} ms, renewal {} ms, seed {}, logs in {}",
        args.store,
        run.store.describe(),
        args.electors,
        args.lease.as_millis(),
        args.renewal.as_millis(),
        args.seed,
        log_dir.display()
    ));

    let timing = Timing {
        lease: args.lease,
        renewal: args.renewal,
        validity,
        retry: args.renewal,
        jitter: leader::ElectionConfig::new("x").retry_jitter,
        slack: Duration::from_millis(1500),
    };
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut setup_error = None;
    while tokio::time::Instant::now() < deadline {
        // Each fault starts with a leader in place (or after a bound that
        // the gap check will flag), after a short random calm.
        let within = args.lease + args.renewal * 4 + Duration::from_secs(10);
        let Some((seat, holder)) = run.leader(within).await else {
            run.say("no leader within bound; continuing");
            run.stalls.push(mono_ns());
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let calm = between(
            &mut run.rng,
            Duration::from_millis(300),
            Duration::from_millis(1500),
        );
        tokio::time::sleep(calm).await;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        // The leader may have changed during the calm.
        let seat = run
            .slots
            .iter()
            .position(|s| s.holder() == run.log.leader_at(mono_ns()).as_deref())
            .unwrap_or(seat);
        let kind = FaultKind::pick(&mut run.rng);
        match run.inject(kind, seat).await {
            Ok(fault) => {
                run.say(&format!(
                    "{} {}: {} (leader was {holder})",
                    fault.kind, fault.target, fault.detail
                ));
                run.faults.push(fault);
            }
            Err(e) => {
                setup_error = Some(format!("injecting {kind}: {e}"));
                break;
            }
        }
    }
    // Let the last fault's recovery be observed.
    let _ = run
        .leader(args.lease + args.renewal * 4 + Duration::from_secs(5))
        .await;
    tokio::time::sleep(args.renewal).await;
    let end = run.teardown().await;
    if let Some(e) = setup_error {
        return Err(e);
    }

    let (calls, moments, exits, writes) = run.log.snapshot();
    let record = RunRecord {
        calls,
        moments,
        exits,
        killed: run.killed.clone(),
        paused: run.paused.clone(),
        faults: run.faults.clone(),
        end,
        writes,
        stalls: run.stalls.clone(),
    };
    analysis::feed(&history, &clock, &record);
    let result = analysis::analyse(&history, &clock, &record, &timing);
    for exit in &record.exits {
        if !record.killed.contains_key(&exit.holder) {
            eprintln!(
                "--- {} log tail:\n{}",
                exit.holder,
                log_tail(&log_dir, &exit.holder, 20)
            );
        }
    }
    let kept = match keep {
        Some(dir) if !result.passed() => Some(dir.keep()),
        Some(_) => None,
        None => Some(log_dir),
    };
    Ok((result, kept))
}
