//! Tail calibration: the probability of a raw anomaly score under the key's own recent raw
//! scores, with a fitted generalised Pareto tail beyond the observed ones. This is how every detector
//! turns its raw measure (an error, a depth, a statistic) into the shared score scale.
//!
//! Algorithm: peaks over threshold (POT) from extreme value theory, as streamed by SPOT (Siffer,
//! Fouque, Termier and Largouet, "Anomaly detection in streams with extreme value theory", KDD
//! 2017). The last `events` raw scores are kept sorted. Below the tail start `u` (the
//! `quantile`-th order statistic, lowered through tied values until `MIN_PEAKS` (10) values lie
//! above it), `p` is the empirical exceedance `(1 + #{r_i >= x}) / (n + 1)`. Above it, the
//! excesses over `u` follow a generalised Pareto distribution of shape `xi` (fitted by
//! probability-weighted moments, kept in `[0, 0.5]`) and scale `sigma`:
//! `p = (n_u / (n + 1)) * (1 + xi (x - u) / sigma)^(-1 / xi)`, the exponential
//! `exp(-(x - u) / sigma)` at shape 0. A heavy tail is fitted as one, so a heavy-tailed metric's
//! ordinary peaks are not read as extreme (SPOT fits the shape by Grimshaw's method on thousands
//! of peaks; a window of 2000 holds about 40, hence the bounded moment estimator).

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

/// Fewest values above the tail start the tail is fitted to.
const MIN_PEAKS: usize = 10;

/// Largest tail shape fitted: a tail as heavy as a Pareto of index 2 (finite mean). The
/// probability-weighted-moment estimator is unbiased below 0.5 and the window holds too few
/// peaks to tell heavier tails apart.
const MAX_SHAPE: f64 = 0.5;

/// Generalised Pareto shape and scale of the excesses of `peaks` (ascending, all above `u`)
/// over `u`. The shape is estimated by probability-weighted moments (Hosking and Wallis,
/// "Parameter and quantile estimation for the generalized Pareto distribution", Technometrics
/// 29, 1987; plotting positions `(i - 0.35) / m`): `a0 = mean(y)`, `a1 = mean((1 - p_i) y_(i))`,
/// shape `2 - a0 / (a0 - 2 a1)`, kept in `[0, MAX_SHAPE]` (a light, bounded tail is treated as
/// exponential, the conservative side for alarms); the largest peak is left out of it, so one
/// earlier anomaly in the window does not make the tail look heavy, and the next anomaly
/// ordinary, for the window's length. The scale is fitted to the mean of all excesses for that
/// shape (`mean = scale / (1 - shape)`; shape 0 is the exponential tail fitted by its mean).
/// `(0, 0)` without peaks.
fn gpd_pwm(peaks: &[f64], u: f64) -> (f64, f64) {
    let m = peaks.len();
    if m == 0 {
        return (0.0, 0.0);
    }
    let mean = peaks.iter().map(|v| v - u).sum::<f64>() / m as f64;
    let fit = &peaks[..m - 1];
    let mf = fit.len() as f64;
    let (mut a0, mut a1) = (0.0, 0.0);
    for (i, v) in fit.iter().enumerate() {
        let y = v - u;
        a0 += y;
        a1 += (1.0 - (i as f64 + 0.65) / mf) * y;
    }
    a0 /= mf;
    a1 /= mf;
    let d = a0 - 2.0 * a1;
    let shape = if fit.len() >= MIN_PEAKS && d > 0.0 {
        (2.0 - a0 / d).clamp(0.0, MAX_SHAPE)
    } else {
        0.0
    };
    (shape, mean * (1.0 - shape))
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
        let u = self.tail_start(k);
        if raw <= u {
            let ge = n - self.sorted.partition_point(|&v| v < raw);
            return (1 + ge) as f64 / (n + 1) as f64;
        }
        let peaks = &self.sorted[self.sorted.partition_point(|&v| v <= u)..];
        // Scale floor: a tenth of the spread of the window, so a window whose top half is one
        // repeated value still has a tail (a window without any spread has none: any other
        // value is then maximally rare).
        let spread = (u - self.sorted[n / 2])
            .abs()
            .max(u.abs() * 1e-6)
            .max(1e-12);
        let (shape, scale) = gpd_pwm(peaks, u);
        let scale = scale.max(0.1 * spread);
        let excess = (raw - u) / scale;
        let survival = if shape > 0.0 {
            (1.0 + shape * excess).powf(-1.0 / shape)
        } else {
            (-excess).exp()
        };
        (peaks.len().max(1) as f64 / (n + 1) as f64) * survival
    }

    /// The value where the fitted tail starts: the `k`-th order statistic, or, when fewer than
    /// [`MIN_PEAKS`] values lie strictly above it (ties: counts, rounded values, a saturated
    /// detector), the next lower distinct value with enough above it, but not below the median.
    /// Without this a repeated top value leaves no peaks to fit and a value one step above it
    /// looks impossibly rare.
    fn tail_start(&self, k: usize) -> f64 {
        let n = self.sorted.len();
        let above = |v: f64| n - self.sorted.partition_point(|&x| x <= v);
        let mut i = k;
        while above(self.sorted[i]) < MIN_PEAKS.min(n - n / 2) && i > n / 2 {
            // The last index holding a smaller value than sorted[i].
            let lower = self.sorted.partition_point(|&x| x < self.sorted[i]);
            if lower == 0 {
                break;
            }
            i = (lower - 1).max(n / 2);
        }
        self.sorted[i]
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

    /// Rates at which stationary noise of a given kind reaches `p <= 1e-3` and `p <= 1e-5`
    /// under a 2000-event window with the tail from its 98th percentile (the detectors'
    /// defaults), after the window filled.
    fn null_rates(mut draw: impl FnMut() -> f64) -> (f64, usize) {
        let c = TailConfig {
            events: 2000,
            quantile: 0.98,
            min_events: 200,
        };
        let mut t = Tail::default();
        for _ in 0..2000 {
            t.learn(&c, draw());
        }
        let trials = 40_000;
        let (mut milli, mut rare) = (0, 0);
        for _ in 0..trials {
            let x = draw();
            let p = t.p_value(&c, x);
            milli += usize::from(p <= 1e-3);
            rare += usize::from(p <= 1e-5);
            t.learn(&c, x);
        }
        (milli as f64 / trials as f64, rare)
    }

    type Draw = Box<dyn FnMut(&mut crate::detectors::TestNoise) -> f64>;

    #[test]
    fn the_threshold_means_the_same_rarity_for_light_heavy_and_discrete_noise() {
        let mut r = crate::detectors::TestNoise::new(11);
        let poisson = |lambda: f64, r: &mut crate::detectors::TestNoise| {
            // Knuth's multiplication method.
            let (limit, mut k, mut prod) = ((-lambda).exp(), 0.0, r.uniform());
            while prod > limit {
                k += 1.0;
                prod *= r.uniform();
            }
            k
        };
        let kinds: Vec<(&str, Draw)> = vec![
            ("exponential", Box::new(|r| -(1.0 - r.uniform()).ln())),
            ("half-normal", Box::new(|r| r.normal().abs())),
            // Generalised Pareto, shape 0.3 (a tail like request latencies').
            (
                "pareto",
                Box::new(|r| ((1.0 - r.uniform()).powf(-0.3) - 1.0) / 0.3),
            ),
            ("lognormal", Box::new(|r| (1.3 * r.normal()).exp())),
            ("poisson counts", Box::new(move |r| poisson(0.7, r))),
            (
                "rounded",
                Box::new(|r| (2.0 + 0.3 * r.normal() * 10.0).round() / 10.0),
            ),
        ];
        for (name, mut draw) in kinds {
            let (milli, rare) = null_rates(|| draw(&mut r));
            // One in a thousand within a factor of 3 (counts and rounded values can only
            // alarm a whole step up, where the rarity jumps: within a factor of 10 below);
            // one in 100 000 at most 4 times in 40 000 (0.4 expected). An exponential tail
            // fitted to the Pareto noise reached 1e-5 9 times.
            let lowest = if name == "poisson counts" || name == "rounded" {
                0.1e-3
            } else {
                0.33e-3
            };
            assert!(
                (lowest..=3e-3).contains(&milli),
                "{name}: p <= 1e-3 at rate {milli}"
            );
            assert!(rare <= 4, "{name}: p <= 1e-5 {rare} times in 40 000");
        }
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
            // The tail starts at the 90th percentile, lowered through the distinct values
            // (not below the median) until 10 values (at most half the window) lie above it.
            let n = sorted.len();
            let need = 10.min(n - n / 2);
            let mut u = sorted[((n - 1) as f64 * 0.9).floor() as usize];
            while sorted.iter().filter(|v| **v > u).count() < need {
                match sorted[n / 2..].iter().rev().find(|v| **v < u) {
                    Some(lower) => u = *lower,
                    None => break,
                }
            }
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
