//! Per-event streaming detectors. Each keeps bounded state per (rule, key), is updated with
//! every event of one field in arrival order, and returns the event's anomaly score in [0, 1]
//! computed from the events before it (score first, then learn: row `i` is scored from rows
//! `0..i` and then added to the model). Pure: no I/O, no clock; time is the event time in ms.
//!
//! What this module leaves to others: choosing the field and the key (the engine), the alert
//! lifecycle (`rules::alert`), combining detectors ([`combine`], used by ensemble rules).
//!
//! Models ([`seasonal`], [`forest`], [`changepoint`], [`contextual`]) produce a raw output per
//! event; the key's [`tail`] calibration turns it into a probability `p` of an output at least
//! as extreme under the key's recent outputs. Every detector reports on one scale, the
//! *surprise* of the event: `s = min(1, -log10(p) / 10)`; `s = 0.3` means "one in a thousand",
//! `0.5` "one in 100 000", `1` "one in 10^10 or rarer". This is the log scale of Numenta's
//! anomaly likelihood (Ahmad, Lavin, Purdy and Agha, "Unsupervised real-time anomaly detection
//! for streaming data", Neurocomputing 262, 2017; `computeLogLikelihood` in numenta/nupic), so
//! one threshold means the same rarity for every detector and every key.

pub mod changepoint;
pub mod contextual;
pub mod forest;
pub mod seasonal;
pub mod tail;

use changepoint::{ChangePoint, ChangePointConfig};
use contextual::{Contextual, ContextualConfig};
use forest::{ForestConfig, RandomCutForest};
use seasonal::{Seasonal, SeasonalConfig};
use tail::{Tail, TailConfig};

/// The model of a detector and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// Robust seasonal baseline; raw output: absolute forecast error.
    Seasonal(SeasonalConfig),
    /// Random cut forest over shingles; raw output: RCF score.
    RandomCutForest(ForestConfig),
    /// Bayesian online change points; raw output: probability of a recent change.
    ChangePoint(ChangePointConfig),
    /// Sequence memory of coarse levels; raw output: surprise of the level after its context.
    Contextual(ContextualConfig),
}

/// A detector ready to run: its model and the calibration of the model's raw output.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// The model.
    pub model: ModelConfig,
    /// Raw output to score.
    pub calibration: TailConfig,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum ModelState {
    Seasonal(Seasonal),
    RandomCutForest(RandomCutForest),
    ChangePoint(ChangePoint),
    Contextual(Contextual),
}

/// Per-(rule, key) state of a detector: the model, built on the first event, and the
/// calibration window.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DetectorState {
    model: Option<ModelState>,
    tail: Tail,
}

impl DetectorState {
    /// Scores the value `x` of an event at `t_ms` from the events before it, then learns it.
    /// `seed` makes randomised models reproducible per key. Returns `None` while the model is
    /// warming up and for non-finite values (not learned).
    pub fn update(&mut self, cfg: &DetectorConfig, seed: u64, t_ms: i64, x: f64) -> Option<f64> {
        let model = self.model.get_or_insert_with(|| match cfg.model {
            ModelConfig::Seasonal(_) => ModelState::Seasonal(Seasonal::default()),
            ModelConfig::RandomCutForest(_) => {
                ModelState::RandomCutForest(RandomCutForest::default())
            }
            ModelConfig::ChangePoint(_) => ModelState::ChangePoint(ChangePoint::default()),
            ModelConfig::Contextual(_) => ModelState::Contextual(Contextual::default()),
        });
        let raw = match (model, &cfg.model) {
            (ModelState::Seasonal(m), ModelConfig::Seasonal(c)) => {
                m.update(c, t_ms, x).map(|e| e.error.abs())
            }
            (ModelState::RandomCutForest(m), ModelConfig::RandomCutForest(c)) => {
                m.update(c, seed, x)
            }
            (ModelState::ChangePoint(m), ModelConfig::ChangePoint(c)) => m.update(c, x),
            (ModelState::Contextual(m), ModelConfig::Contextual(c)) => m.update(c, x),
            // The settings changed kind: start over (a changed rule normally gets fresh state).
            _ => {
                self.model = None;
                self.tail = Tail::default();
                return None;
            }
        }?;
        Some(self.tail.update(&cfg.calibration, raw))
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        let model = match &self.model {
            Some(ModelState::Seasonal(m)) => m.state_bytes(),
            Some(ModelState::RandomCutForest(m)) => m.state_bytes(),
            Some(ModelState::ChangePoint(m)) => m.state_bytes(),
            Some(ModelState::Contextual(m)) => m.state_bytes(),
            None => 0,
        };
        std::mem::size_of::<Self>() + model + self.tail.state_bytes()
    }
}

/// Maps a tail probability `p` to the shared score scale: `min(1, -log10(p) / 10)`; 0 for
/// `p >= 1` (or NaN), 1 for `p <= 1e-10`.
pub fn surprise(p: f64) -> f64 {
    if p.is_nan() || p >= 1.0 {
        0.0
    } else if p <= 1e-10 {
        1.0
    } else {
        (-p.log10() / 10.0).clamp(0.0, 1.0)
    }
}

/// Upper tail probability of the standard normal distribution, `Q(z) = P(Z > z)`.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// Median of a small slice, reordering it (`select_nth_unstable`, O(n)); NaN when empty.
pub fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let (_, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        hi
    } else {
        let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    }
}

/// How an ensemble combines its members' scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Combine {
    /// `sum(w_i * s_i) / sum(w_i)` over the members that have a score.
    WeightedMean,
    /// The highest member score, each first multiplied by its weight.
    Max,
    /// The k-th highest weighted member score: at or above a threshold exactly when at least
    /// `k` members are (k-out-of-n voting).
    Vote(usize),
}

/// Combines member scores `(score, weight)` into one score in [0, 1]. Members without a score
/// yet (`None`) are left out; with no member left the score is 0.
pub fn combine(method: Combine, members: impl IntoIterator<Item = (Option<f64>, f64)>) -> f64 {
    let present = members
        .into_iter()
        .filter_map(|(s, w)| s.map(|s| (s.clamp(0.0, 1.0), w.max(0.0))));
    let out = match method {
        Combine::WeightedMean => {
            let (num, den) = present.fold((0.0, 0.0), |(n, d), (s, w)| (n + s * w, d + w));
            if den > 0.0 { num / den } else { 0.0 }
        }
        Combine::Max => present.map(|(s, w)| s * w).fold(0.0, f64::max),
        Combine::Vote(k) => {
            let mut v: Vec<f64> = present.map(|(s, w)| s * w).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            v.get(k.max(1) - 1).copied().unwrap_or(0.0)
        }
    };
    out.clamp(0.0, 1.0)
}

/// Deterministic noise for tests (xorshift64*; no `rand` dependency needed).
#[cfg(test)]
pub(crate) struct TestNoise(u64);

#[cfg(test)]
impl TestNoise {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal (sum of 12 uniforms minus 6).
    pub(crate) fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn surprise_is_the_log_scale_of_rarity() {
        assert_eq!(surprise(1.0), 0.0);
        assert!((surprise(1e-3) - 0.3).abs() < 1e-12);
        assert!((surprise(1e-5) - 0.5).abs() < 1e-12);
        assert_eq!(surprise(1e-12), 1.0);
        assert_eq!(surprise(f64::NAN), 0.0);
    }

    #[test]
    fn normal_tail_matches_tables() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-12);
        assert!((normal_upper_tail(1.96) - 0.024_997_9).abs() < 1e-6);
        assert!((normal_upper_tail(3.0) - 0.001_349_9).abs() < 1e-6);
    }

    #[test]
    fn combine_methods() {
        let m = [
            (Some(0.2), 1.0),
            (Some(0.8), 1.0),
            (None, 5.0),
            (Some(0.5), 2.0),
        ];
        assert!((combine(Combine::WeightedMean, m) - (0.2 + 0.8 + 1.0) / 4.0).abs() < 1e-12);
        assert_eq!(combine(Combine::Max, m), 1.0f64.min(0.5 * 2.0));
        assert_eq!(
            combine(
                Combine::Vote(2),
                [(Some(0.2), 1.0), (Some(0.8), 1.0), (Some(0.5), 1.0)]
            ),
            0.5
        );
        assert_eq!(
            combine(Combine::Vote(3), [(Some(0.2), 1.0), (None, 1.0)]),
            0.0
        );
        assert_eq!(combine(Combine::Max, []), 0.0);
    }

    proptest! {
        #[test]
        fn median_matches_sorting(mut v in proptest::collection::vec(-1e6f64..1e6, 1..50)) {
            let mut sorted = v.clone();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len();
            let want = if n % 2 == 1 { sorted[n / 2] } else { 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]) };
            prop_assert_eq!(median_in_place(&mut v), want);
        }

        #[test]
        fn vote_reaches_a_threshold_exactly_when_k_members_do(
            scores in proptest::collection::vec(0.0f64..1.0, 1..8),
            k in 1usize..8,
            t in 0.0f64..1.0,
        ) {
            let m: Vec<(Option<f64>, f64)> = scores.iter().map(|s| (Some(*s), 1.0)).collect();
            let agree = scores.iter().filter(|s| **s >= t).count();
            prop_assert_eq!(combine(Combine::Vote(k), m) >= t && t > 0.0, agree >= k && t > 0.0);
        }

        #[test]
        fn weighted_mean_lies_between_the_members(
            m in proptest::collection::vec((0.0f64..1.0, 0.01f64..10.0), 1..8),
        ) {
            let members: Vec<(Option<f64>, f64)> = m.iter().map(|(s, w)| (Some(*s), *w)).collect();
            let c = combine(Combine::WeightedMean, members);
            let lo = m.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
            let hi = m.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(c >= lo - 1e-12 && c <= hi + 1e-12);
        }
    }
}
