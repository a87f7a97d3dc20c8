//! Pattern 2: a one-shot job under a named lock. Exactly one replica runs the
//! nightly report; the others skip it. If the process dies mid-job, the lock
//! expires by itself.
//!
//! ```text
//! LEADER_STORE=redis://127.0.0.1:6379 cargo run --example nightly
//! ```
//!
//! Without a store it refuses to start: a lock private to each process
//! would let every replica run the job.

use std::time::Duration;

#[tokio::main]
async fn main() -> leader::Result<()> {
    leader_examples::init_logging();
    let locks = leader_examples::settings()?.locks()?;
    let Some(guard) = locks.try_acquire("nightly-report").await? else {
        println!("another instance is running the nightly report: skipping");
        return Ok(());
    };
    println!(
        "running the nightly report with fencing token {}",
        guard.token()
    );
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(2)) => println!("report done"),
        _ = guard.lost() => println!("lost the lock mid-job: stopping"),
    }
    let released = guard.release().await?;
    println!("lock released: {released}");
    Ok(())
}
