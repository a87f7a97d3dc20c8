//! Electors whose every store call and step-down goes into one history, for
//! the failover tests (Sentinel, Cluster) that check overlaps and tokens with
//! the testkit's history checker.

use std::sync::Arc;
use std::time::Duration;

use leader_core::{ElectionConfig, Elector, FencingToken, LeaseKey, LeaseStore};
use leader_testkit::history::{CheckOptions, History, Op, Outcome, Recording};
use leader_testkit::wrap::Wrapped;
use tokio::task::JoinHandle;

use leader_testkit::wait::eventually;

/// The election of the failover tests: resource `svc` under `prefix`, a
/// 3 s lease renewed every 500 ms, followers retrying every 250 ms.
pub fn failover_config(prefix: &str, id: &str) -> ElectionConfig {
    let mut c = ElectionConfig::new("svc");
    c.key_prefix = prefix.to_owned();
    c.instance_id = Some(id.to_owned());
    c.lease_duration = Duration::from_secs(3);
    c.renewal_interval = Duration::from_millis(500);
    c.retry_period = Some(Duration::from_millis(250));
    c
}

/// Electors on one resource, each on its own store (own connections, as
/// separate processes would have), recorded in one [`History`].
pub struct RecordedElection {
    pub electors: Vec<Elector>,
    pub history: History,
    /// What `is_leader()` guarantees: `lease * (1 - clock_drift)`.
    pub validity: Duration,
    watchers: Vec<JoinHandle<()>>,
}

impl RecordedElection {
    /// Starts one elector per `(config, store)`. Each elector's step-downs
    /// are recorded when its published state turns false: no earlier than
    /// the real step-down, so a recorded term is never shorter than the
    /// believed one.
    pub fn start(electors: Vec<(ElectionConfig, Arc<dyn LeaseStore>)>) -> RecordedElection {
        let history = History::new();
        let validity = electors.first().map_or(Duration::ZERO, |(config, _)| {
            config.lease_duration.mul_f64(1.0 - config.clock_drift)
        });
        let mut started = Vec::new();
        let mut watchers = Vec::new();
        for (config, store) in electors {
            let recorded = Wrapped::new(store, Recording::new(history.clone()));
            let elector = Elector::start(Arc::new(recorded), config).expect("elector");
            watchers.push(tokio::spawn(record_step_downs(
                elector.clone(),
                history.clone(),
            )));
            started.push(elector);
        }
        RecordedElection {
            electors: started,
            history,
            validity,
            watchers,
        }
    }

    /// The one elector that leads now with its token; `None` unless exactly
    /// one does (all read at the same moment).
    pub fn sole_leader(&self) -> Option<(usize, FencingToken)> {
        let leading: Vec<usize> = (0..self.electors.len())
            .filter(|&i| self.electors[i].is_leader())
            .collect();
        match leading[..] {
            [i] => Some((i, self.electors[i].token()?)),
            _ => None,
        }
    }

    /// The one elector (other than `exclude`) that leads now, when
    /// `observer` reads the same holder id and token from the store.
    pub async fn agreed_leader(
        &self,
        observer: &dyn LeaseStore,
        key: &LeaseKey,
        exclude: Option<usize>,
    ) -> Option<(usize, FencingToken)> {
        let (i, token) = self.sole_leader().filter(|(i, _)| Some(*i) != exclude)?;
        let info = observer.current(key).await.ok()??;
        (&info.holder == self.electors[i].instance_id() && info.token == token)
            .then_some((i, token))
    }

    /// After a failover recovered with elector `leader` leading: shuts it
    /// down so that another takes over (a term minted on the promoted node),
    /// shuts everything down, and asserts that every token minted strictly
    /// increased, past `first`, and that the history checker finds no two
    /// instances believing they led at once. Returns the minted tokens.
    pub async fn hand_over_and_check(
        &self,
        observer: &dyn LeaseStore,
        key: &LeaseKey,
        leader: usize,
        first: FencingToken,
    ) -> Vec<FencingToken> {
        self.electors[leader].shutdown().await;
        eventually(
            Duration::from_secs(15),
            "a handover on the promoted node",
            || self.agreed_leader(observer, key, Some(leader)),
        )
        .await;
        self.shutdown().await;
        let tokens = self.minted_tokens();
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]) && tokens.last() > Some(&first),
            "fencing tokens must strictly increase across the failover: {tokens:?}"
        );
        if let Err(violations) = self.history.check_with(&self.check_options()) {
            panic!("{violations}\n{}", self.history.timeline(60));
        }
        tokens
    }

    /// Tokens of successful acquisitions, in the order they were invoked.
    pub fn minted_tokens(&self) -> Vec<FencingToken> {
        self.history
            .events()
            .iter()
            .filter(|e| e.op == Op::Acquire && e.outcome == Outcome::Ok)
            .filter_map(|e| e.token)
            .collect()
    }

    /// Shuts every elector down (releasing its lease) and stops recording.
    pub async fn shutdown(&self) {
        for elector in &self.electors {
            elector.shutdown().await;
        }
        for watcher in &self.watchers {
            watcher.abort();
        }
    }

    /// Options for the history checker: terms capped at the validity.
    pub fn check_options(&self) -> CheckOptions {
        CheckOptions::with_validity(self.validity)
    }
}

/// Records a step-down of `elector` in `history` each time its published
/// state turns from leader to follower.
async fn record_step_downs(elector: Elector, history: History) {
    let mut state = elector.subscribe();
    let process = elector.instance_id().as_str().to_owned();
    let mut token = None;
    while state.changed().await.is_ok() {
        let now = state.borrow_and_update().clone();
        // A term that ended between two looks shows as a changed token.
        if let Some(t) = token
            && (!now.is_leader || now.token != Some(t))
        {
            history.instant(process.as_str(), Op::StepDown, Outcome::Ok, Some(t));
        }
        token = if now.is_leader { now.token } else { None };
    }
}
