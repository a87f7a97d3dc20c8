//! Reading a server's Prometheus text endpoint (etcd serves one on its
//! client port at `/metrics`), so tests and benchmarks can count what the
//! server saw: streams opened and closed, requests by method.
//!
//! ```no_run
//! # async fn demo(etcd: std::net::SocketAddr) -> std::io::Result<()> {
//! use leader_testkit::metrics::Metrics;
//!
//! let m = Metrics::scrape(etcd).await?;
//! let watch_streams = m.sum("etcd_debugging_mvcc_watch_stream_total", &[]);
//! let grants = m.sum("grpc_server_msg_received_total", &[("grpc_method", "LeaseGrant")]);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a scrape may take before it fails.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// One scrape of a `/metrics` endpoint: its samples, unparsed.
#[derive(Debug, Clone)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    /// Fetches `http://addr/metrics` (plain HTTP/1.0, no TLS).
    ///
    /// # Errors
    ///
    /// The server cannot be reached, does not answer within 10 s, or answers
    /// with something other than `200`.
    pub async fn scrape(addr: SocketAddr) -> std::io::Result<Metrics> {
        tokio::time::timeout(SCRAPE_TIMEOUT, fetch(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{addr}/metrics did not answer within {SCRAPE_TIMEOUT:?}"),
                )
            })?
    }

    /// The sum of every sample of metric `name` whose labels include all of
    /// `labels` (`0.0` when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let rest = series.strip_prefix(name)?;
                // `name` exactly, not a longer metric that starts with it.
                if !(rest.is_empty() || rest.starts_with('{')) {
                    return None;
                }
                let matches = labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
                matches.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }
}

async fn fetch(addr: SocketAddr) -> std::io::Result<Metrics> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, samples) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return Err(std::io::Error::other(format!(
            "{addr}/metrics answered: {}",
            head.lines().next().unwrap_or("nothing")
        )));
    }
    Ok(Metrics {
        text: samples.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_of_one_metric_matching_labels() {
        let m = Metrics {
            text: "# HELP x_total a counter\n\
                   x_total{method=\"A\",code=\"OK\"} 3\n\
                   x_total{method=\"A\",code=\"Canceled\"} 2\n\
                   x_total{method=\"B\",code=\"OK\"} 7\n\
                   x_total_more{method=\"A\"} 100\n\
                   gauge 4\n"
                .to_owned(),
        };
        assert_eq!(m.sum("x_total", &[("method", "A")]), 5.0);
        assert_eq!(m.sum("x_total", &[]), 12.0);
        assert_eq!(m.sum("x_total", &[("method", "C")]), 0.0);
        assert_eq!(m.sum("gauge", &[]), 4.0);
    }
}
