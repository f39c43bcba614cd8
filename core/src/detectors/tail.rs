//! Tail calibration: the probability of a raw anomaly score under the key's own recent raw
//! scores, with a fitted exponential tail beyond the observed ones. This is how every detector
//! turns its raw measure (an error, a depth, a statistic) into the shared score scale.
//!
//! Algorithm: peaks over threshold (POT) from extreme value theory, as streamed by SPOT (Siffer,
//! Fouque, Termier and Largouet, "Anomaly detection in streams with extreme value theory", KDD
//! 2017). The last `events` raw scores are kept sorted. Below the `quantile`-th order statistic
//! `u`, `p` is the empirical exceedance `(1 + #{r_i >= x}) / (n + 1)`. Above it, excesses over
//! `u` follow a generalised Pareto distribution; with shape 0 (an exponential tail, the Gumbel
//! domain, fitted by its mean: `sigma = mean(r_i - u | r_i > u)`), `p = (n_u / n) * exp(-(x -
//! u) / sigma)`. Shape 0 is the conservative, stable choice on short windows (SPOT fits the
//! shape by Grimshaw's method on thousands of peaks).

use std::collections::VecDeque;

use super::surprise;

/// Settings of the tail calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct TailConfig {
    /// Raw scores kept (window length).
    pub events: usize,
    /// Quantile where the fitted tail starts, in (0, 1), e.g. 0.98.
    pub quantile: f64,
    /// Raw scores needed before it scores.
    pub min_events: usize,
}

/// Per-key state: the window in arrival order and sorted.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Tail {
    fifo: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl Tail {
    /// Tail probability of `raw` under the window (before `raw` joins it); 1 until `min_events`
    /// raw scores were seen.
    pub fn p_value(&self, cfg: &TailConfig, raw: f64) -> f64 {
        let n = self.sorted.len();
        if n < cfg.min_events.max(2) || raw.is_nan() {
            return 1.0;
        }
        let k = ((n - 1) as f64 * cfg.quantile).floor() as usize;
        let u = self.sorted[k];
        if raw <= u {
            let ge = n - self.sorted.partition_point(|&v| v < raw);
            return (1 + ge) as f64 / (n + 1) as f64;
        }
        let above = &self.sorted[self.sorted.partition_point(|&v| v <= u)..];
        let n_u = above.len().max(1);
        let mean_excess = if above.is_empty() {
            0.0
        } else {
            above.iter().map(|v| v - u).sum::<f64>() / above.len() as f64
        };
        // Scale floor: a tenth of the spread of the window, so a window whose top is one
        // repeated value still has a tail (a window without any spread has none: any other
        // value is then maximally rare).
        let spread = (u - self.sorted[n / 2])
            .abs()
            .max(u.abs() * 1e-6)
            .max(1e-12);
        let sigma = mean_excess.max(0.1 * spread);
        (n_u as f64 / (n + 1) as f64) * (-(raw - u) / sigma).exp()
    }

    /// Adds a raw score to the window.
    pub fn learn(&mut self, cfg: &TailConfig, raw: f64) {
        if raw.is_nan() {
            return;
        }
        if self.fifo.len() >= cfg.events.max(1)
            && let Some(old) = self.fifo.pop_front()
        {
            let i = self.sorted.partition_point(|&v| v < old);
            self.sorted.remove(i);
        }
        self.fifo.push_back(raw);
        let i = self.sorted.partition_point(|&v| v < raw);
        self.sorted.insert(i, raw);
    }

    /// Scores `raw` on the shared scale, then learns it.
    pub fn update(&mut self, cfg: &TailConfig, raw: f64) -> f64 {
        let s = surprise(self.p_value(cfg, raw));
        self.learn(cfg, raw);
        s
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + (self.fifo.capacity() + self.sorted.capacity()) * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(events: usize) -> TailConfig {
        TailConfig {
            events,
            quantile: 0.9,
            min_events: 10,
        }
    }

    #[test]
    fn silent_until_min_events() {
        let c = cfg(100);
        let mut t = Tail::default();
        for i in 0..10 {
            assert_eq!(t.update(&c, f64::from(i)), 0.0);
        }
        assert!(t.update(&c, 1e9) > 0.0);
    }

    #[test]
    fn beyond_the_window_the_fitted_tail_decays_exponentially() {
        let c = cfg(1000);
        let mut t = Tail::default();
        let mut noise = crate::detectors::TestNoise::new(7);
        for _ in 0..1000 {
            t.learn(&c, -noise.uniform().ln()); // Exp(1)
        }
        let top = t.sorted[t.sorted.len() - 1];
        let (p1, p2) = (t.p_value(&c, top + 1.0), t.p_value(&c, top + 2.0));
        assert!(p1 < 1.0 / 1001.0);
        // Exp(1) excesses: the fitted scale is about 1, so one more unit divides p by about e.
        assert!((p1 / p2 - std::f64::consts::E).abs() < 0.6, "{p1} {p2}");
    }

    #[test]
    fn in_a_constant_window_any_other_value_is_maximally_rare() {
        let c = cfg(100);
        let mut t = Tail::default();
        for _ in 0..100 {
            t.learn(&c, 0.0);
        }
        assert!(t.p_value(&c, 0.0) > 0.9);
        let p = t.p_value(&c, 1.0);
        assert!(p < 1.0 / 101.0 && !p.is_nan(), "{p}");
        assert_eq!(surprise(p), 1.0);
    }

    proptest! {
        #[test]
        fn below_the_tail_p_is_the_empirical_exceedance(
            window in proptest::collection::vec(0.0f64..100.0, 20..200),
            x in 0.0f64..100.0,
        ) {
            let c = TailConfig { events: 150, quantile: 0.9, min_events: 10 };
            let mut t = Tail::default();
            for v in &window {
                t.learn(&c, *v);
            }
            let kept = &window[window.len().saturating_sub(150)..];
            prop_assert_eq!(t.sorted.len(), kept.len());
            let mut sorted = kept.to_vec();
            sorted.sort_by(f64::total_cmp);
            let u = sorted[((sorted.len() - 1) as f64 * 0.9).floor() as usize];
            if x <= u {
                let ge = kept.iter().filter(|v| **v >= x).count();
                prop_assert_eq!(t.p_value(&c, x), (1 + ge) as f64 / (kept.len() + 1) as f64);
            }
        }

        #[test]
        fn p_never_grows_with_the_raw_score(
            window in proptest::collection::vec(0.0f64..10.0, 20..100),
            a in 0.0f64..20.0,
            b in 0.0f64..20.0,
        ) {
            let c = cfg(100);
            let mut t = Tail::default();
            for v in &window {
                t.learn(&c, *v);
            }
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(t.p_value(&c, hi) <= t.p_value(&c, lo) + 1e-12);
        }
    }
}
