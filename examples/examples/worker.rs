//! Pattern 1: a background worker that only the leader runs, gated by
//! `is_leader()` before each unit of work.
//!
//! ```text
//! LEADER_STORE=redis://127.0.0.1:6379 LeaderElection__ResourceName=build-queue \
//!     cargo run --example worker
//! ```
//! Without a store it refuses to start; `LeaderElection__Enabled=false`
//! runs it in single-instance mode (always leader).

use std::time::Duration;

#[tokio::main]
async fn main() -> leader::Result<()> {
    leader_examples::init_logging();
    let settings = leader_examples::settings()?;
    let elector = settings.start_elector()?;
    println!(
        "worker {} on {} (store: {})",
        elector.instance_id(),
        elector.key(),
        settings
            .store
            .as_ref()
            .map_or("none, single-instance mode".to_owned(), |s| s.to_string())
    );
    for item in 1..=20 {
        // Instant, never wrong in the unsafe direction: false as soon as the
        // lease could have expired, whatever the background task is doing.
        match elector.token() {
            Some(token) if elector.is_leader() => {
                println!("leader: processing item {item} with fencing token {token}");
            }
            _ => println!("follower: skipping item {item}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    elector.shutdown().await;
    Ok(())
}
