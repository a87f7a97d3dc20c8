//! The demo: four replicas elect a leader on the in-memory store, the leader
//! crashes, another takes over when its lease runs out, then that leader shuts
//! down gracefully and a third takes over at once. Needs no external service.
//!
//! ```text
//! cargo run --example demo
//! ```

use std::sync::Arc;
use std::time::Duration;

use leader::{ElectionConfig, Elector, LeaseStore, MemoryStore};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(2);
const RENEW: Duration = Duration::from_millis(500);

struct Timeline(Instant);

impl Timeline {
    fn say(&self, what: impl std::fmt::Display) {
        println!("[{:>6.2}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

fn replica(store: Arc<dyn LeaseStore>, name: &str) -> leader::Result<Elector> {
    let mut config = ElectionConfig::new("demo-queue").with_timing(LEASE, RENEW);
    config.instance_id = Some(name.to_owned());
    config.retry_period = Some(Duration::from_millis(250));
    Elector::start(store, config)
}

/// Waits until one of `replicas` leads, for at most `within`.
async fn leader_of(replicas: &[(String, Elector)], within: Duration) -> Option<usize> {
    let deadline = Instant::now() + within;
    let mut states: Vec<_> = replicas.iter().map(|(_, e)| e.subscribe()).collect();
    loop {
        if let Some(i) = replicas.iter().position(|(_, e)| e.is_leader()) {
            return Some(i);
        }
        let changes = states.iter_mut().map(|s| Box::pin(s.changed()));
        let any_change = futures::future::select_all(changes);
        if tokio::time::timeout_at(deadline, any_change).await.is_err() {
            return None;
        }
    }
}

#[tokio::main]
async fn main() -> leader::Result<()> {
    let t = Timeline(Instant::now());
    let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
    println!(
        "leader election demo: 4 replicas, in-memory store, lease {LEASE:?}, renewal {RENEW:?}\n"
    );

    let mut replicas = Vec::new();
    for name in ["replica-1", "replica-2", "replica-3", "replica-4"] {
        let elector = replica(store.clone(), name)?;
        let (who, clock) = (name.to_owned(), t.0);
        elector.run_while_leader(move |ctx| {
            let who = who.clone();
            async move {
                let say = |what: String| {
                    println!("[{:>6.2}s] {what}", clock.elapsed().as_secs_f64());
                };
                say(format!("{who}: leading, work started with fencing token {}", ctx.token()));
                let mut ticks = tokio::time::interval(Duration::from_millis(700));
                loop {
                    tokio::select! {
                        _ = ctx.cancelled() => break,
                        _ = ticks.tick() => say(format!("{who}: processing queue (token {})", ctx.token())),
                    }
                }
                say(format!("{who}: leadership ended, work stopped"));
            }
        });
        replicas.push((name.to_owned(), elector));
    }
    t.say("started 4 replicas");

    let Some(first) = leader_of(&replicas, LEASE * 2).await else {
        t.say("no leader elected: this is a bug");
        std::process::exit(1);
    };
    t.say(format!(
        "{} is the leader; the others follow",
        replicas[first].0
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    t.say(format!(
        "CRASH: {} dies without releasing its lease",
        replicas[first].0
    ));
    let crashed = Instant::now();
    let (name, dead) = replicas.remove(first);
    dead.abort();
    let Some(second) = leader_of(&replicas, LEASE * 3).await else {
        t.say("no new leader after the crash: this is a bug");
        std::process::exit(1);
    };
    t.say(format!(
        "{} took over {:.2}s after {name} crashed (lease {LEASE:?}: the crashed lease had to expire)",
        replicas[second].0,
        crashed.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    t.say(format!(
        "SHUTDOWN: {} leaves gracefully and releases its lease",
        replicas[second].0
    ));
    let left = Instant::now();
    let (name, leaving) = replicas.remove(second);
    leaving.shutdown().await;
    let Some(third) = leader_of(&replicas, LEASE * 3).await else {
        t.say("no new leader after the graceful shutdown: this is a bug");
        std::process::exit(1);
    };
    t.say(format!(
        "{} took over {:.0}ms after {name} left (release notification, no waiting)",
        replicas[third].0,
        left.elapsed().as_secs_f64() * 1000.0
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let health = replicas[third].1.health();
    println!("\nhealth of the leader: {}", health.to_document());
    for (_, e) in &replicas {
        e.shutdown().await;
    }
    t.say("all replicas shut down; done");
    Ok(())
}
