//! A leadership sampler: reads `is_leader()` of every elector at once, many
//! times a second, and records overlaps and the order of fencing tokens;
//! and recorded electors for the cluster tests (every store call in the
//! testkit's history, checked by its history checker).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leader_core::{ElectionConfig, Elector, LeaseStore};
use leader_testkit::history::{History, Recording};
use leader_testkit::wrap::Wrapped;
use tokio::task::JoinHandle;

/// Starts one elector per config, each on its own store from `store` with
/// every call recorded in `history`, and a sampler over them; returns once
/// exactly one leads.
pub async fn start_recorded<S: LeaseStore + 'static>(
    configs: Vec<ElectionConfig>,
    history: &History,
    store: impl Fn() -> S,
) -> (Vec<Elector>, Sampler) {
    let electors: Vec<Elector> = configs
        .into_iter()
        .map(|config| {
            let recorded = Wrapped::new(Arc::new(store()), Recording::new(history.clone()));
            Elector::start(Arc::new(recorded), config).expect("elector")
        })
        .collect();
    let sampler = Sampler::start(electors.clone());
    leader_testkit::wait::eventually(super::PATIENCE, "one elector leads", || async {
        electors.iter().filter(|e| e.is_leader()).count() == 1
    })
    .await;
    (electors, sampler)
}

/// What the sampler saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// How many sampling rounds ran.
    pub samples: u64,
    /// Rounds in which two or more electors believed they led.
    pub overlaps: u64,
    /// Distinct fencing tokens, in the order they were first seen.
    pub tokens: Vec<u64>,
}

impl Report {
    /// Panics unless no round saw two leaders and tokens only grew.
    pub fn assert_safe(&self) {
        assert!(self.samples > 0, "the sampler never ran");
        assert_eq!(
            self.overlaps, 0,
            "two electors believed they led at the same time: {self:?}"
        );
        assert!(
            self.tokens.windows(2).all(|w| w[0] < w[1]),
            "fencing tokens did not strictly increase: {:?}",
            self.tokens
        );
    }
}

/// A running sampler.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Report>,
}

impl Sampler {
    /// Samples `electors` every millisecond until stopped.
    pub fn start(electors: Vec<Elector>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = Report::default();
            while !flag.load(Ordering::SeqCst) {
                let mut leaders = 0;
                for elector in &electors {
                    // The token is read first: a term that ends between the
                    // two reads is then simply not counted.
                    let token = elector.token();
                    if elector.is_leader() {
                        leaders += 1;
                        if let Some(t) = token
                            && report.tokens.last() != Some(&t.0)
                            && !report.tokens.contains(&t.0)
                        {
                            report.tokens.push(t.0);
                        }
                    }
                }
                report.samples += 1;
                if leaders > 1 {
                    report.overlaps += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            report
        });
        Sampler { stop, task }
    }

    /// Stops sampling and returns the report.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("sampler task")
    }
}
