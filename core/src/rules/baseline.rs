//! `spec.baseline`: a window feature against its own trailing per-key history (z-score,
//! median/MAD, IQR fences), and the [`History`] of one value with its robust and classical
//! statistics (also what CEL rules read as `baseline`).

use std::collections::VecDeque;

use vigil_api::v1alpha1::{BaselineMethod, BaselineRule, Direction, Feature, duration_ms};

use super::scope::Scope;
use super::{Evaluation, RuleState, WindowView, ratio_score};
use crate::config::InvalidSpec;

/// Windows of history a baseline needs when `minSamples` is absent (the CRD's documented
/// default).
pub const DEFAULT_MIN_SAMPLES: u32 = 10;

/// Smallest spread used as a divisor, so a perfectly flat history still scores a change.
const MIN_SPREAD: f64 = 1e-9;

/// A compiled baseline rule.
#[derive(Debug)]
pub struct Baseline {
    /// Field id.
    pub field: u16,
    /// Feature of the field.
    pub feature: Feature,
    /// Statistic.
    pub method: BaselineMethod,
    /// History span, ms.
    pub history_ms: i64,
    /// Firing score (sigmas, robust sigmas or fence multiplier).
    pub threshold: f64,
    /// Anomalous side.
    pub direction: Direction,
    /// Samples needed before it can fire.
    pub min_samples: usize,
}

/// Checks what needs no pipeline.
///
/// # Errors
/// A history that is not positive, a threshold that is not a positive number.
pub fn validate(b: &BaselineRule) -> Result<(), InvalidSpec> {
    if duration_ms(&b.history) <= 0 {
        return Err(InvalidSpec::new(
            "spec.baseline.history",
            "must be positive",
        ));
    }
    if !(b.threshold > 0.0 && b.threshold.is_finite()) {
        return Err(InvalidSpec::new(
            "spec.baseline.threshold",
            "must be a positive number",
        ));
    }
    Ok(())
}

impl Baseline {
    /// Compiles against a pipeline.
    ///
    /// # Errors
    /// The field or feature is not the pipeline's, or `history` holds fewer windows of the
    /// rule's tier than `minSamples` (the rule could never fire); see [`validate`].
    pub fn compile(b: &BaselineRule, scope: &mut Scope<'_>) -> Result<Self, InvalidSpec> {
        validate(b)?;
        let field = scope.field("spec.baseline.field", &b.field)?;
        scope.feature("spec.baseline.feature", b.feature)?;
        let history_ms = duration_ms(&b.history);
        let min_samples = b.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES).max(2);
        let tier = scope.tier();
        let windows = history_ms / tier.slide_ms.max(1);
        if windows < i64::from(min_samples) {
            return Err(InvalidSpec::new(
                "spec.baseline.history",
                format!(
                    "{} holds {windows} windows of window `{}` (slide {} ms), fewer than minSamples {min_samples}: the rule could never fire",
                    humantime::format_duration(std::time::Duration::from_millis(history_ms as u64)),
                    tier.name,
                    tier.slide_ms
                ),
            ));
        }
        Ok(Baseline {
            field,
            feature: b.feature,
            method: b.method,
            history_ms,
            threshold: b.threshold,
            direction: b.direction,
            min_samples: min_samples as usize,
        })
    }

    /// Scores the window's feature against the key's history (read, not updated).
    pub fn evaluate(&self, w: &WindowView<'_>, state: &mut RuleState) -> Evaluation {
        let Some(x) = w.feature(self.field, self.feature) else {
            return Evaluation::NONE;
        };
        let Some(stats) = state.history.first_mut().and_then(History::stats) else {
            return Evaluation {
                value: x,
                ..Evaluation::NONE
            };
        };
        if stats.samples < self.min_samples {
            return Evaluation {
                value: x,
                ..Evaluation::NONE
            };
        }
        // Signed deviation in units of the method's spread; for IQR, past the fences.
        let (up, down) = match self.method {
            BaselineMethod::ZScore => {
                let d = (x - stats.mean) / stats.stddev.max(MIN_SPREAD);
                (d, -d)
            }
            BaselineMethod::Mad => {
                let d = (x - stats.median) / (1.4826 * stats.mad).max(MIN_SPREAD);
                (d, -d)
            }
            BaselineMethod::Iqr => {
                let iqr = (stats.q3 - stats.q1).max(MIN_SPREAD);
                ((x - stats.q3) / iqr, (stats.q1 - x) / iqr)
            }
        };
        let dev = match self.direction {
            Direction::Above => up,
            Direction::Below => down,
            Direction::Both => up.max(down),
        };
        let r = dev / self.threshold;
        Evaluation {
            matched: r >= 1.0,
            score: ratio_score(r),
            value: x,
        }
    }

    /// Adds the window's feature to the key's history.
    pub fn observe(&self, w: &WindowView<'_>, state: &mut RuleState) {
        if state.history.is_empty() {
            state.history.push(History::default());
        }
        let x = w
            .field(self.field)
            .map_or(f64::NAN, |f| f.get(self.feature));
        state.history[0].push(w.end, x, self.history_ms);
    }
}

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
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct History {
    entries: VecDeque<(i64, f64)>,
    /// A cache, recomputed on demand.
    #[serde(skip)]
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
