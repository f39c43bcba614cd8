//! Trailing per-key history of one value and its robust and classical statistics, for
//! dynamic baselines (z-score, median/MAD, IQR fences).

use std::collections::VecDeque;

/// Statistics of a history.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BaselineStats {
    /// Number of samples.
    pub samples: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation.
    pub stddev: f64,
    /// Median.
    pub median: f64,
    /// Median absolute deviation from the median (unscaled).
    pub mad: f64,
    /// First quartile (linear interpolation, R type 7).
    pub q1: f64,
    /// Third quartile (linear interpolation, R type 7).
    pub q3: f64,
}

/// Values observed at event times, kept for `span_ms`.
#[derive(Debug, Clone, Default)]
pub struct History {
    entries: VecDeque<(i64, f64)>,
    stats: Option<BaselineStats>,
}

/// Quantile with linear interpolation between order statistics (Hyndman & Fan type 7, the
/// default of R and NumPy). `sorted` must be non-empty and ascending.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

impl History {
    /// Appends a value at time `t` and forgets values at or before `t - span_ms`.
    /// Non-finite values are ignored.
    pub fn push(&mut self, t: i64, v: f64, span_ms: i64) {
        if v.is_finite() {
            self.entries.push_back((t, v));
        }
        while self.entries.front().is_some_and(|&(u, _)| u <= t - span_ms) {
            self.entries.pop_front();
        }
        self.stats = None;
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Statistics of the values held (cached until the next push); `None` when empty.
    pub fn stats(&mut self) -> Option<BaselineStats> {
        if self.entries.is_empty() {
            return None;
        }
        if self.stats.is_none() {
            let mut v: Vec<f64> = self.entries.iter().map(|e| e.1).collect();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let stddev = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            v.sort_by(f64::total_cmp);
            let median = quantile_sorted(&v, 0.5);
            let (q1, q3) = (quantile_sorted(&v, 0.25), quantile_sorted(&v, 0.75));
            let mut dev: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
            dev.sort_by(f64::total_cmp);
            let mad = quantile_sorted(&dev, 0.5);
            self.stats = Some(BaselineStats {
                samples: v.len(),
                mean,
                stddev,
                median,
                mad,
                q1,
                q3,
            });
        }
        self.stats
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.entries.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_match_hand_computed_values() {
        let mut h = History::default();
        for (i, v) in [1.0, 2.0, 3.0, 4.0, 100.0].into_iter().enumerate() {
            h.push(i as i64, v, 1_000);
        }
        let s = h.stats().unwrap();
        assert_eq!(s.samples, 5);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.mad, 1.0);
        assert_eq!((s.q1, s.q3), (2.0, 4.0));
        assert!((s.mean - 22.0).abs() < 1e-12);
    }

    #[test]
    fn old_values_expire() {
        let mut h = History::default();
        h.push(0, 1.0, 10);
        h.push(5, 2.0, 10);
        h.push(10, 3.0, 10);
        assert_eq!(h.len(), 2);
        assert_eq!(h.stats().unwrap().median, 2.5);
    }
}
