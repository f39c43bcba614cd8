//! Change-point detection: Bayesian online change-point detection (BOCPD; Adams and MacKay,
//! "Bayesian online changepoint detection", arXiv:0710.3742, 2007) with a normal model of
//! unknown mean and variance (normal-gamma conjugate prior, Student-t predictive; Murphy,
//! "Conjugate Bayesian analysis of the Gaussian distribution", 2007, section 7.6).
//!
//! The posterior over the run length `r` (events since the last change) is updated with every
//! event: each run grows with probability `(1 - h) * pred_r(x)` or restarts with `h *
//! pred_r(x)`, where `h = 1 / hazard_events` is the constant hazard. Values are standardised
//! before they reach the model by a slow exponentially weighted mean and deviation of the key
//! (span `scale_events`), so one prior (`N(0, 1)`-scaled) fits every field. The raw score of an
//! event is the posterior probability that a change happened within the last `recent_events`
//! events, `P(r_t < recent_events)`.
//!
//! State is bounded: at most `max_run` run lengths are tracked; the mass of longer runs is
//! folded into the longest one kept (a common truncation, cf. the `changepoint` crate's
//! `BocpdTruncated`, which instead drops the tail).

use std::collections::VecDeque;

/// Settings of the change-point detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangePointConfig {
    /// Expected events between changes (`1 / hazard`).
    pub hazard_events: f64,
    /// Longest run length tracked.
    pub max_run: usize,
    /// A change this many events back or fewer counts as recent.
    pub recent_events: usize,
    /// Span, in events, of the standardisation mean and deviation.
    pub scale_events: usize,
    /// Events seen before it scores.
    pub min_events: usize,
}

/// Normal-gamma posterior of one run: mean `mu`, pseudo-count `kappa`, shape `alpha`, rate
/// `beta`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Run {
    prob: f64,
    mu: f64,
    kappa: f64,
    alpha: f64,
    beta: f64,
}

/// Prior: mean 0, one pseudo-observation, shape 1 and rate 1 (unit variance expected after
/// standardisation).
const PRIOR: Run = Run {
    prob: 1.0,
    mu: 0.0,
    kappa: 1.0,
    alpha: 1.0,
    beta: 1.0,
};

impl Run {
    /// Log density of the Student-t posterior predictive at `x`.
    fn ln_predictive(&self, x: f64) -> f64 {
        let nu = 2.0 * self.alpha;
        let scale2 = self.beta * (self.kappa + 1.0) / (self.alpha * self.kappa);
        let z2 = (x - self.mu).powi(2) / scale2;
        libm::lgamma((nu + 1.0) / 2.0)
            - libm::lgamma(nu / 2.0)
            - 0.5 * (nu * std::f64::consts::PI * scale2).ln()
            - (nu + 1.0) / 2.0 * (1.0 + z2 / nu).ln()
    }

    fn observe(&self, x: f64, prob: f64) -> Run {
        let kappa = self.kappa + 1.0;
        Run {
            prob,
            mu: (self.kappa * self.mu + x) / kappa,
            kappa,
            alpha: self.alpha + 0.5,
            beta: self.beta + self.kappa * (x - self.mu).powi(2) / (2.0 * kappa),
        }
    }
}

/// Per-key state of the change-point detector.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ChangePoint {
    /// Runs, shortest first (index = run length).
    runs: VecDeque<Run>,
    log_pred: Vec<f64>,
    mean: f64,
    var: f64,
    n: u64,
}

impl ChangePoint {
    /// Adds `x` and returns `P(r_t < recent_events)` after it (0 until `min_events` events),
    /// or `None` for a non-finite `x` (ignored).
    pub fn update(&mut self, cfg: &ChangePointConfig, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        // Standardise with the statistics before this event.
        let sd = self.var.sqrt();
        let z = if self.n < 2 || sd <= 0.0 {
            0.0
        } else {
            (x - self.mean) / sd
        };
        self.n += 1;
        let alpha = (1.0 / self.n as f64).max(1.0 / cfg.scale_events.max(1) as f64);
        let d = x - self.mean;
        self.mean += alpha * d;
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        if !(self.mean.is_finite() && self.var.is_finite()) {
            // Values beyond f64 range: start over rather than carry infinities.
            *self = Self::default();
            return Some(0.0);
        }
        if self.runs.is_empty() {
            self.runs.push_back(PRIOR.observe(z, 1.0));
            return Some(0.0);
        }
        let h = 1.0 / cfg.hazard_events.max(1.0);
        // Log predictive per run, normalised against the largest for stability; the buffers are
        // reused so an event allocates nothing once the runs reached their bound.
        self.log_pred.clear();
        self.log_pred
            .extend(self.runs.iter().map(|r| r.ln_predictive(z)));
        let top = self
            .log_pred
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let mut change = 0.0;
        let mut total = 0.0;
        for (r, l) in self.runs.iter_mut().zip(&self.log_pred) {
            let w = r.prob * (l - top).exp();
            change += w * h;
            *r = r.observe(z, w * (1.0 - h));
            total += r.prob;
        }
        total += change;
        self.runs.push_front(PRIOR.observe(z, change));
        if self.runs.len() > cfg.max_run.max(2)
            && let Some(last) = self.runs.pop_back()
            && let Some(prev) = self.runs.back_mut()
        {
            prev.prob += last.prob;
        }
        if total > 0.0 && total.is_finite() {
            for r in &mut self.runs {
                r.prob /= total;
            }
        } else {
            self.runs.clear();
            self.runs.push_back(PRIOR.observe(z, 1.0));
        }
        if (self.n as usize) < cfg.min_events {
            return Some(0.0);
        }
        Some(
            self.runs
                .iter()
                .take(cfg.recent_events.max(1))
                .map(|r| r.prob)
                .sum::<f64>()
                .clamp(0.0, 1.0),
        )
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.runs.capacity() * std::mem::size_of::<Run>()
            + self.log_pred.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::TestNoise;

    fn cfg() -> ChangePointConfig {
        ChangePointConfig {
            hazard_events: 250.0,
            max_run: 100,
            recent_events: 5,
            scale_events: 2000,
            min_events: 50,
        }
    }

    #[test]
    fn a_shift_of_the_mean_is_a_recent_change() {
        let c = cfg();
        let mut d = ChangePoint::default();
        let mut noise = TestNoise::new(11);
        let mut before = 0.0f64;
        for _ in 0..500 {
            before = before.max(d.update(&c, noise.normal()).unwrap_or(0.0));
        }
        let after = (0..3)
            .map(|_| d.update(&c, 6.0 + noise.normal()).unwrap_or(0.0))
            .fold(0.0, f64::max);
        assert!(before < 0.5, "stable noise: {before}");
        assert!(after > 0.9, "after the shift: {after}");
    }

    #[test]
    fn runs_are_bounded_and_probabilities_sum_to_one() {
        let c = cfg();
        let mut d = ChangePoint::default();
        let mut noise = TestNoise::new(13);
        for i in 0..2000 {
            let level = if (i / 300) % 2 == 0 { 0.0 } else { 4.0 };
            d.update(&c, level + noise.normal());
            assert!(d.runs.len() <= c.max_run);
            let total: f64 = d.runs.iter().map(|r| r.prob).sum();
            assert!((total - 1.0).abs() < 1e-9, "{total}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_stream_keeps_a_bounded_normalised_posterior(
            xs in proptest::collection::vec(proptest::prelude::any::<f64>(), 1..300),
            max_run in 2usize..40,
        ) {
            let c = ChangePointConfig { max_run, min_events: 0, ..cfg() };
            let mut d = ChangePoint::default();
            for x in xs {
                let s = d.update(&c, x);
                proptest::prop_assert_eq!(s.is_some(), x.is_finite());
                if let Some(s) = s {
                    proptest::prop_assert!((0.0..=1.0).contains(&s), "{}", s);
                }
                proptest::prop_assert!(d.runs.len() <= max_run);
                if !d.runs.is_empty() {
                    let total: f64 = d.runs.iter().map(|r| r.prob).sum();
                    proptest::prop_assert!((total - 1.0).abs() < 1e-9, "{}", total);
                }
            }
        }
    }

    #[test]
    fn student_t_predictive_integrates_to_one() {
        let r = Run {
            prob: 1.0,
            mu: 0.5,
            kappa: 3.0,
            alpha: 2.5,
            beta: 1.7,
        };
        let step = 0.01;
        let total: f64 = (-4000..4000)
            .map(|i| r.ln_predictive(f64::from(i) * step).exp() * step)
            .sum();
        assert!((total - 1.0).abs() < 1e-3, "{total}");
    }
}
