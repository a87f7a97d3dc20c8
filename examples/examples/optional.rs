//! Pattern 3: optional election. The same code runs as a single instance
//! (`LeaderElection__Enabled=false`: always leader, with a warning) and as a
//! cluster (a store and a resource name configured). Enabled with no store
//! is refused: every replica would lead.
//!
//! ```text
//! LeaderElection__Enabled=false cargo run --example optional    # single instance
//! LEADER_STORE=redis://127.0.0.1:6379 LeaderElection__ResourceName=optional-demo \
//!     cargo run --example optional                              # elected
//! ```

use std::time::Duration;

#[tokio::main]
async fn main() -> leader::Result<()> {
    leader_examples::init_logging();
    let elector = leader_examples::settings()?.start_elector()?;
    println!(
        "election {}",
        if elector.is_enabled() {
            "enabled"
        } else {
            "disabled: single-instance mode"
        }
    );
    let work = elector.run_while_leader(|ctx| async move {
        println!("processing with token {}", ctx.token());
        ctx.cancelled().await;
        println!("stopped");
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    elector.shutdown().await;
    work.join().await;
    Ok(())
}
