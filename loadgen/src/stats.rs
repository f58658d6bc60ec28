//! Latency histograms (HDR, microsecond resolution) and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly: ten minutes. Anything longer is clamped (and shows as the max).
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds, three significant figures.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self { histogram: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds") }
    }

    /// Two significant figures (±1 %) instead of three: a seventh of the memory (~25 KB), for the one-per-second
    /// histograms of a run's timeline.
    pub fn coarse() -> Self {
        Self { histogram: Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds") }
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS));
    }

    /// Records a latency in microseconds; zero counts as one (the histogram's floor), over ten minutes as ten.
    pub fn record_micros(&mut self, micros: u64) {
        let _ = self.histogram.record(micros.clamp(1, MAX_MICROS));
    }

    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    pub fn add(&mut self, other: &Latency) {
        let _ = self.histogram.add(&other.histogram);
    }

    pub fn summary(&self) -> Summary {
        if self.histogram.is_empty() {
            return Summary::default();
        }
        let ms = |micros: u64| round3(micros as f64 / 1000.0);
        Summary {
            count: self.histogram.len(),
            mean_ms: round3(self.histogram.mean() / 1000.0),
            p50_ms: ms(self.histogram.value_at_quantile(0.50)),
            p90_ms: ms(self.histogram.value_at_quantile(0.90)),
            p99_ms: ms(self.histogram.value_at_quantile(0.99)),
            p999_ms: ms(self.histogram.value_at_quantile(0.999)),
            max_ms: ms(self.histogram.max()),
        }
    }
}

/// What a histogram says, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// `p50 1.23ms p99 4.56ms p99.9 7.89ms max 12.3ms`, or `-` when nothing was recorded.
    pub fn short(&self) -> String {
        if self.count == 0 {
            return "-".to_owned();
        }
        format!(
            "p50 {} p99 {} p99.9 {} max {}",
            millis(self.p50_ms),
            millis(self.p99_ms),
            millis(self.p999_ms),
            millis(self.max_ms)
        )
    }
}

/// A duration in milliseconds, with fewer decimals as it grows.
pub fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_out_in_milliseconds() {
        let mut latency = Latency::new();
        for micros in 1..=1000u64 {
            latency.record_micros(micros * 10); // 10 µs .. 10 ms, uniform
        }
        let summary = latency.summary();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_ms - 5.0).abs() < 0.01, "{summary:?}");
        assert!((summary.p99_ms - 9.9).abs() < 0.01, "{summary:?}");
        assert!((summary.max_ms - 10.0).abs() < 0.01, "{summary:?}");
        assert!((summary.mean_ms - 5.005).abs() < 0.01, "{summary:?}");
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut latency = Latency::new();
        latency.record(Duration::ZERO);
        latency.record(Duration::from_secs(3600));
        assert_eq!(latency.len(), 2);
        assert!(latency.summary().max_ms >= 599_000.0);
    }

    #[test]
    fn histograms_merge_and_an_empty_one_summarises_as_a_dash() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.add(&b);
        assert_eq!(a.len(), 2);
        assert_eq!(Latency::new().summary().short(), "-");
        assert!(a.summary().short().starts_with("p50 1.00ms"), "{}", a.summary().short());
    }

    #[test]
    fn durations_print_compactly() {
        assert_eq!(millis(1.234), "1.23ms");
        assert_eq!(millis(12.34), "12.3ms");
        assert_eq!(millis(1234.0), "1.23s");
    }
}
