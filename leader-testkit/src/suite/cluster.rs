//! [`Cluster`]: several electors on one resource, recorded and sampled, for
//! the election cases.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use leader_core::{Elector, FencingToken, LeaderContext, LeaseStore, WorkHandle};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::store::poll;
use super::{CaseResult, Ctx, Failure, Link};
use crate::history::{CheckOptions, FencedResource, History, Op, Outcome, Recording};
use crate::wrap::Wrapped;

/// Several electors on one resource, each with its own client wrapped in a
/// [`Recording`] store, run-while-leader work writing to one
/// [`FencedResource`], and a sampler of `is_leader()` across all of them.
pub(crate) struct Cluster {
    pub(crate) electors: Vec<Elector>,
    pub(crate) ids: Vec<String>,
    pub(crate) history: History,
    pub(crate) resource: Arc<FencedResource>,
    max_leaders: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
    works: Vec<WorkHandle>,
    /// One per elector when started with [`Cluster::start_linked`].
    pub(crate) links: Vec<Box<dyn Link>>,
    validity: Duration,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for work in &self.works {
            work.stop();
        }
        for elector in &self.electors {
            elector.abort();
        }
    }
}

impl Cluster {
    pub(crate) async fn start(
        ctx: &Ctx,
        resource_name: &str,
        n: usize,
    ) -> Result<Cluster, Failure> {
        Self::build(ctx, resource_name, n, false).await
    }

    /// Like [`Cluster::start`], each elector's client behind its own link.
    pub(crate) async fn start_linked(
        ctx: &Ctx,
        resource_name: &str,
        n: usize,
    ) -> Result<Cluster, Failure> {
        Self::build(ctx, resource_name, n, true).await
    }

    async fn build(
        ctx: &Ctx,
        resource_name: &str,
        n: usize,
        linked: bool,
    ) -> Result<Cluster, Failure> {
        let mut clients = Vec::new();
        let mut links = Vec::new();
        for _ in 0..n {
            if linked {
                let (client, link) = ctx.linked_client().await?;
                clients.push(client);
                links.push(link);
            } else {
                clients.push(ctx.client().await?);
            }
        }
        Self::with_clients(ctx, resource_name, clients, links)
    }

    /// Electors over the given clients (built beforehand, e.g. while the
    /// server still runs), with `links` (one per client, or none).
    pub(crate) fn with_clients(
        ctx: &Ctx,
        resource_name: &str,
        clients: Vec<Arc<dyn LeaseStore>>,
        links: Vec<Box<dyn Link>>,
    ) -> Result<Cluster, Failure> {
        let history = History::new();
        let resource = Arc::new(FencedResource::recording(history.clone()));
        let mut electors = Vec::new();
        let mut ids = Vec::new();
        let mut tasks = Vec::new();
        let mut works = Vec::new();
        let mut validity = ctx.profile().lease;
        for (i, client) in clients.into_iter().enumerate() {
            let name = format!("i{i}");
            let store = Arc::new(Wrapped::new(client, Recording::new(history.clone())));
            let config = ctx.election_config(resource_name, &name);
            validity = config.lease_duration.mul_f64(1.0 - config.clock_drift);
            let elector = Elector::start(store, config)?;
            // The holder id (the name plus the library's random part) is
            // what the store shows and what the recorded history names.
            let id = elector.instance_id().to_string();
            works.push(start_work(
                &elector,
                &id,
                &history,
                &resource,
                ctx.profile().interval() / 2,
            ));
            tasks.push(record_step_downs(&elector, &id, &history));
            electors.push(elector);
            ids.push(id);
        }
        let max_leaders = Arc::new(AtomicUsize::new(0));
        tasks.push(tokio::spawn(sample_leaders(
            electors.clone(),
            max_leaders.clone(),
        )));
        Ok(Cluster {
            electors,
            ids,
            history,
            resource,
            max_leaders,
            tasks,
            works,
            links,
            validity,
        })
    }

    pub(crate) fn leaders(&self) -> Vec<usize> {
        (0..self.electors.len())
            .filter(|&i| self.electors[i].is_leader())
            .collect()
    }

    /// Waits until exactly one instance other than `except` leads; returns
    /// it and the time waited.
    pub(crate) async fn wait_for_leader(
        &self,
        within: Duration,
        except: Option<usize>,
    ) -> Result<(usize, Duration), Failure> {
        let started = Instant::now();
        let found = poll(within, Duration::from_millis(1), || async {
            match self.leaders()[..] {
                [one] if Some(one) != except => Some(one),
                _ => None,
            }
        })
        .await;
        match found {
            Some(i) => Ok((i, started.elapsed())),
            None => Err(Failure::new(format!(
                "no new leader within {within:?} (leaders now: {:?})",
                self.leaders()
            ))),
        }
    }

    pub(crate) fn token(&self, i: usize) -> Result<FencingToken, Failure> {
        self.electors[i]
            .token()
            .ok_or_else(|| Failure::new(format!("leader {} has no token", self.ids[i])))
    }

    /// Checks every 10 ms for `how_long` that `leader` alone leads and keeps
    /// the term with `token` (renewals must not move or split leadership).
    pub(crate) async fn hold_steady(
        &self,
        leader: usize,
        token: FencingToken,
        how_long: Duration,
        conditions: &str,
    ) -> CaseResult {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let leaders = self.leaders();
            if leaders != vec![leader] {
                return Err(Failure::new(format!(
                    "leadership moved or split {conditions}: {leaders:?}"
                )));
            }
            sleep(Duration::from_millis(10)).await;
        }
        if self.token(leader)? != token {
            return Err(Failure::new(format!(
                "the token changed without a new term {conditions}"
            )));
        }
        Ok(())
    }

    /// Waits until leader `i`'s work has written with its token.
    pub(crate) async fn wait_written(
        &self,
        i: usize,
        within: Duration,
    ) -> Result<FencingToken, Failure> {
        let token = self.token(i)?;
        let res = self.resource.clone();
        poll(within, Duration::from_millis(1), || async {
            (res.highest() >= Some(token)).then_some(())
        })
        .await
        .ok_or_else(|| {
            Failure::new(format!(
                "{}'s work did not write within {within:?}",
                self.ids[i]
            ))
        })?;
        Ok(token)
    }

    /// The term `new_token` was acquired no earlier than the old term's
    /// lease could expire in the store: its last successful acquire or
    /// renew *invocation* plus the lease (1 % clock-rate tolerance). Only for
    /// an old term that ended without a release.
    pub(crate) fn lease_was_respected(
        &self,
        old: usize,
        old_token: FencingToken,
        new_token: FencingToken,
        lease: Duration,
    ) -> CaseResult {
        let events = self.history.events();
        let last_ok = events
            .iter()
            .filter(|e| e.process == self.ids[old] && e.token == Some(old_token))
            .filter(|e| matches!(e.op, Op::Acquire | Op::Renew) && e.outcome == Outcome::Ok)
            .map(|e| e.invoked)
            .max()
            .ok_or_else(|| Failure::new("no successful acquire of the old term was recorded"))?;
        let acquired = events
            .iter()
            .filter(|e| {
                e.op == Op::Acquire && e.outcome == Outcome::Ok && e.token == Some(new_token)
            })
            .find_map(|e| e.completed)
            .ok_or_else(|| Failure::new("no acquisition of the new term was recorded"))?;
        let gap = acquired.saturating_duration_since(last_ok);
        ensure!(
            gap >= lease.mul_f64(0.99),
            "the new term was granted {gap:?} after the old leader's last successful renewal was sent: \
             before its lease ({lease:?}) could expire"
        );
        Ok(())
    }

    pub(crate) async fn shutdown(&self) {
        for elector in &self.electors {
            elector.shutdown().await;
        }
    }

    /// The history check (validity-capped terms) and the sampler's verdict.
    pub(crate) fn check(&self) -> CaseResult {
        let max = self.max_leaders.load(Ordering::SeqCst);
        ensure!(
            max <= 1,
            "{max} instances said is_leader() == true at the same moment"
        );
        self.history
            .check_with(&CheckOptions::with_validity(self.validity))
            .map_err(|v| {
                Failure::new(format!(
                    "history check failed:\n{v}timeline:\n{}",
                    self.history.timeline(200)
                ))
            })?;
        Ok(())
    }
}

/// Run-while-leader work: writes with the term's token at once and every
/// `period`, and records the loss signal when it comes.
fn start_work(
    elector: &Elector,
    id: &str,
    history: &History,
    resource: &Arc<FencedResource>,
    period: Duration,
) -> WorkHandle {
    let (id, history, resource) = (id.to_owned(), history.clone(), resource.clone());
    elector.run_while_leader(move |lctx: LeaderContext| {
        let (id, history, resource) = (id.clone(), history.clone(), resource.clone());
        async move {
            let token = lctx.token();
            resource.write(&id, token);
            loop {
                tokio::select! {
                    () = lctx.cancelled() => {
                        history.instant(&id, Op::LossSignal, Outcome::Ok, Some(token));
                        return;
                    }
                    () = sleep(period) => {
                        if !lctx.is_cancelled() {
                            resource.write(&id, token);
                        }
                    }
                }
            }
        }
    })
}

/// Records a step-down each time the elector's published state goes from
/// leader to not leader (observed: never earlier than the real one).
fn record_step_downs(elector: &Elector, id: &str, history: &History) -> JoinHandle<()> {
    let mut rx = elector.subscribe();
    let (id, history) = (id.to_owned(), history.clone());
    tokio::spawn(async move {
        let (mut was, mut token) = {
            let s = rx.borrow_and_update();
            (s.is_leader, s.token)
        };
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            if was && !s.is_leader {
                history.instant(&id, Op::StepDown, Outcome::Ok, token);
            }
            was = s.is_leader;
            if s.is_leader {
                token = s.token;
            }
        }
    })
}

/// Samples `is_leader()` of every elector back to back (no await between),
/// keeping the highest count seen at one moment.
async fn sample_leaders(electors: Vec<Elector>, max: Arc<AtomicUsize>) {
    loop {
        let n = electors.iter().filter(|e| e.is_leader()).count();
        max.fetch_max(n, Ordering::SeqCst);
        sleep(Duration::from_millis(2)).await;
    }
}

/// How long a follower or waiter may take to notice a release: about one
/// request on stores that push releases, a follower's polling reaction
/// otherwise (each with the profile's slack).
pub(crate) fn release_reaction(ctx: &Ctx) -> Duration {
    let p = ctx.profile();
    if ctx.capabilities().notifies() {
        p.interval() + p.slack
    } else {
        follower_reaction(ctx) + p.slack
    }
}

/// How long a follower may take to notice a free seat: the retry period
/// with its 20 % jitter, plus one request.
pub(crate) fn follower_reaction(ctx: &Ctx) -> Duration {
    let i = ctx.profile().interval();
    i.mul_f64(1.2) + i
}
