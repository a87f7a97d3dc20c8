//! Child processes the parent run starts from its own binary: a Postgres
//! holder to be killed with SIGKILL, and the idle-cost probes (one process
//! per elector so that CPU time and memory are its alone).

use std::time::{Duration, Instant};

use leader_core::{ElectionConfig, Elector};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::Result;
use crate::counting::{self, Counts};
use crate::failover::{Settings, wait_leading};
use crate::stores::{Factory, Kind};
use crate::sys::{cpu_time, rss_anon_bytes, rss_bytes};

/// `child-pg-holder URL RESOURCE LOCK_DELAY(0|1)`: leads `RESOURCE` on
/// Postgres with the crash settings, prints `LEADER <holder id>`, then waits
/// (at most a minute) to be killed.
///
/// # Errors
///
/// Bad arguments, or no leadership within 20 s.
pub async fn pg_holder(args: &[String]) -> Result<()> {
    let [url, resource, delay] = args else {
        return Err("usage: child-pg-holder URL RESOURCE 0|1".into());
    };
    let factory = Factory::new(Kind::Postgres, url.as_str()).with_lock_delay(delay == "1");
    let el = Elector::start(factory.open()?, Settings::CRASH.config(resource))?;
    wait_leading(&el, Duration::from_secs(20)).await?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("LEADER {}\n", el.instance_id()).as_bytes())
        .await?;
    out.flush().await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    el.shutdown().await;
    Ok(())
}

async fn say(line: &str) -> Result<()> {
    let mut out = tokio::io::stdout();
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await?;
    Ok(())
}

/// Runs a little work on every runtime worker first, so that the baseline
/// memory includes what any running service already has (worker stacks and
/// allocator arenas touched) and only the elector's own cost is measured.
async fn warm_runtime() {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            tokio::spawn(async move {
                let v = vec![i as u8; 64 * 1024];
                tokio::time::sleep(Duration::from_millis(5)).await;
                v.iter().map(|b| u64::from(*b)).sum::<u64>()
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn fields(prefix: &str, c: &Counts) -> String {
    format!(
        "{prefix}acquire={} {prefix}renew={} {prefix}release={} {prefix}current={} {prefix}watch={}",
        c.acquire, c.renew, c.release, c.current, c.watch
    )
}

/// `child-idle KIND URL ROLE RESOURCE WINDOW_MS` with ROLE `leader`,
/// `follower` or `pair` (both in this process; the memory store).
///
/// Starts the elector(s) with the card's production settings (30 s lease,
/// 10 s renewal), prints `READY` once the role is reached, measures store
/// operations, CPU time and resident memory over the window and prints one
/// `RESULT key=value ...` line. A leader then waits for its stdin to close
/// (the parent closes it once the follower is done) before shutting down.
///
/// # Errors
///
/// Bad arguments, or the role not reached within 30 s.
pub async fn idle(args: &[String]) -> Result<()> {
    let [kind, url, role, resource, window_ms] = args else {
        return Err("usage: child-idle KIND URL ROLE RESOURCE WINDOW_MS".into());
    };
    let window = Duration::from_millis(window_ms.parse()?);
    warm_runtime().await;
    let rss_before = rss_bytes().unwrap_or(0);
    let anon_before = rss_anon_bytes().unwrap_or(0);
    let factory = Factory::new(Kind::parse(kind)?, url.as_str());
    let cfg = ElectionConfig::new(resource.as_str());
    let limit = Duration::from_secs(30);

    let (store, counters) = counting::wrap(factory.open()?);
    let first = Elector::start(store, cfg.clone())?;
    let mut second = None;
    match role.as_str() {
        "leader" => wait_leading(&first, limit).await?,
        "follower" => {
            let mut rx = first.subscribe();
            tokio::time::timeout(
                limit,
                rx.wait_for(|s| !s.is_leader && s.leader_id.is_some()),
            )
            .await
            .map_err(|_| "follower saw no leader within 30 s")??;
        }
        "pair" => {
            wait_leading(&first, limit).await?;
            let (store, c2) = counting::wrap(factory.open()?);
            let f = Elector::start(store, cfg.clone())?;
            crate::failover::wait_sees(&f, first.instance_id(), limit).await?;
            second = Some((f, c2));
        }
        other => return Err(format!("unknown role {other:?}").into()),
    }
    say("READY").await?;

    let c0 = counters.snapshot();
    let c0b = second.as_ref().map(|(_, c)| c.snapshot());
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = cpu_time().saturating_sub(cpu0);
    let elapsed = t0.elapsed();
    let c = counters.snapshot().since(&c0);
    let mut line = format!(
        "RESULT role={role} window_ms={} cpu_us={} rss_before={rss_before} rss_after={} \
         anon_before={anon_before} anon_after={} leader={} {}",
        elapsed.as_millis(),
        cpu.as_micros(),
        rss_bytes().unwrap_or(0),
        rss_anon_bytes().unwrap_or(0),
        first.is_leader(),
        fields("", &c)
    );
    if let (Some((_, c2)), Some(c0b)) = (&second, c0b) {
        line.push(' ');
        line.push_str(&fields("f_", &c2.snapshot().since(&c0b)));
    }
    say(&line).await?;

    if role != "follower" {
        // Keep leading until the parent is done with every follower.
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        let _ = tokio::time::timeout(window * 4 + Duration::from_secs(300), async {
            while let Ok(Some(_)) = stdin.next_line().await {}
        })
        .await;
    }
    if let Some((f, _)) = second {
        f.shutdown().await;
    }
    first.shutdown().await;
    Ok(())
}
