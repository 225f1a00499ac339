//! Latency samples and the percentiles the figures are quoted in.

use std::time::Duration;

/// A set of latency samples.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `p`-quantile (0 < p <= 1) by the nearest-rank method; zero when there are no samples.
    pub fn pct(&mut self, p: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let n = self.samples.len();
        let rank = ((n as f64 * p).ceil() as usize).clamp(1, n);
        self.samples[rank - 1]
    }

    pub fn p50(&mut self) -> Duration {
        self.pct(0.50)
    }

    pub fn p99(&mut self) -> Duration {
        self.pct(0.99)
    }

    pub fn max(&mut self) -> Duration {
        self.pct(1.0)
    }

    /// `n=… p50=… p99=… max=…` in milliseconds.
    pub fn summary(&mut self) -> String {
        format!(
            "n={} p50={:.3}ms p99={:.3}ms max={:.3}ms",
            self.len(),
            ms(self.p50()),
            ms(self.p99()),
            ms(self.max())
        )
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Self {
        Latencies {
            samples: iter.into_iter().collect(),
            sorted: false,
        }
    }
}

/// A duration in (fractional) milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l: Latencies = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(l.p50(), Duration::from_millis(50));
        assert_eq!(l.p99(), Duration::from_millis(99));
        assert_eq!(l.max(), Duration::from_millis(100));
        l.push(Duration::from_millis(1000));
        assert_eq!(l.max(), Duration::from_millis(1000));
        assert_eq!(Latencies::new().p99(), Duration::ZERO);
    }
}
