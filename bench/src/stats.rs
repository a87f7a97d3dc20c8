//! Latency samples (an HDR histogram in nanoseconds) and number formatting.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::Result;

/// The longest latency a histogram holds: one hour, in nanoseconds.
const HIGHEST_NS: u64 = 3_600_000_000_000;

/// Recorded latencies of one operation.
#[derive(Debug, Clone)]
pub struct Samples {
    hist: Histogram<u64>,
}

impl Samples {
    /// An empty set: 1 ns to 1 hour, 3 significant digits.
    ///
    /// # Errors
    ///
    /// Never in practice: hdrhistogram refuses only invalid bounds.
    pub fn new() -> Result<Self> {
        let hist =
            Histogram::new_with_bounds(1, HIGHEST_NS, 3).map_err(|e| format!("histogram: {e}"))?;
        Ok(Samples { hist })
    }

    /// Records one latency (clamped to the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_NS);
        self.hist.saturating_record(ns);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at quantile `q` (0.0 to 1.0).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.hist.value_at_quantile(q))
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    /// The largest latency recorded.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.hist.max())
    }
}

/// A duration for a table: `27.1 us`, `3.20 ms`, `1.52 s`.
pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} us")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `a / b` as `1.23x`.
pub fn fmt_ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", ratio(a, b))
}

/// `a / b` (infinite when `b` is zero).
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

/// A markdown table row from cells.
pub fn row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// A markdown table header (titles and the separator line).
pub fn header(titles: &[&str]) -> String {
    let seps: Vec<String> = titles.iter().map(|_| "---".to_owned()).collect();
    format!("| {} |\n| {} |", titles.join(" | "), seps.join(" | "))
}
