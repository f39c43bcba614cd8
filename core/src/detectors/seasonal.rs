//! Robust seasonal baseline: forecasts each event from the same phase of earlier seasons and
//! from the recent level, and scores the forecast error against the typical error.
//!
//! Forecasters ("candidates"), each robust to outliers in its own history:
//! - *level*: the median of the last `level_events` values (a robust persistence forecast);
//! - one per configured period `P` (e.g. 1 day, 1 week): the history is kept in bins of
//!   `resolution` (bin mean); for each of the last `seasons` seasons `k`, the error against the
//!   bins at `t - k*P` (+/- one bin of phase tolerance, the closest of the three) is taken,
//!   and the forecast error is the median of those errors over `k` (seasonal naive forecast
//!   with a median over seasons, as in Skyline's and Twitter's seasonal ESD baselines; Hochenbaum,
//!   Vallis and Kejariwal, "Automatic anomaly detection in the cloud via statistical learning",
//!   arXiv:1704.07706, 2017).
//!
//! Each candidate tracks its mean absolute error (MAE) with an exponentially weighted mean over
//! `error_events` events; errors are winsorised at `6 * MAE` so one outlier does not inflate the
//! scale. The candidate with the lowest MAE is the key's model (model selection by recent
//! forecast accuracy, so a seasonal key uses its season and a non-seasonal one its level). The
//! raw output is the absolute forecast error, calibrated into a score by [`super::tail`].
//!
//! State per key is bounded: `max(P) * seasons / resolution` bins of 16 bytes, plus
//! `level_events` values.

use std::collections::VecDeque;

use super::median_in_place;

/// Most periods a seasonal baseline compares.
pub const MAX_PERIODS: usize = 4;

/// Settings of the seasonal baseline (validated: at most [`MAX_PERIODS`] periods, each a
/// positive multiple of `resolution_ms`; every count is at least 1).
#[derive(Debug, Clone, PartialEq)]
pub struct SeasonalConfig {
    /// Candidate season lengths, ms (e.g. one day and one week).
    pub periods_ms: Vec<i64>,
    /// Seasons of history each period looks back over.
    pub seasons: usize,
    /// Width of the history bins, ms.
    pub resolution_ms: i64,
    /// Values in the level forecast (0: no level candidate).
    pub level_events: usize,
    /// Span, in events, of the exponentially weighted MAE of each candidate.
    pub error_events: usize,
    /// Events a candidate must have forecast before it can score.
    pub min_events: usize,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Bin {
    slot: i64,
    mean: f32,
    n: u32,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct ErrorScale {
    mae: f64,
    n: u64,
}

impl ErrorScale {
    fn update(&mut self, abs_err: f64, span: usize) {
        self.n += 1;
        let e = if self.n > 1 && self.mae > 0.0 {
            abs_err.min(6.0 * self.mae)
        } else {
            abs_err
        };
        let alpha = (1.0 / self.n as f64).max(1.0 / span as f64);
        self.mae += alpha * (e - self.mae);
    }
}

/// The forecast error of one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastError {
    /// Value minus forecast, in the field's unit.
    pub error: f64,
    /// Mean absolute error of the forecaster so far (positive).
    pub mae: f64,
    /// The forecaster: 0 the level, `i` the `i`-th configured period.
    pub candidate: usize,
}

/// Per-key state of the seasonal baseline.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Seasonal {
    bins: Vec<Bin>,
    recent: VecDeque<f64>,
    scales: Vec<ErrorScale>,
    scratch: Vec<f64>,
}

/// Smallest error scale used as a divisor, relative to the magnitude of the forecast.
const MIN_SCALE: f64 = 1e-9;

impl Seasonal {
    /// Forecasts the value `x` at event time `t_ms` with the key's best candidate, then learns
    /// it. Returns the forecast error and the candidate's MAE, or `None` while no candidate has
    /// forecast `min_events` events (or for a non-finite `x`, which is not learned).
    pub fn update(&mut self, cfg: &SeasonalConfig, t_ms: i64, x: f64) -> Option<ForecastError> {
        if !x.is_finite() {
            return None;
        }
        if self.bins.is_empty() {
            let longest = cfg.periods_ms.iter().copied().max().unwrap_or(0);
            let n = (longest * cfg.seasons as i64 / cfg.resolution_ms) as usize + 2;
            self.bins = vec![
                Bin {
                    slot: i64::MIN,
                    ..Bin::default()
                };
                n
            ];
            self.scales = vec![ErrorScale::default(); 1 + cfg.periods_ms.len()];
        }
        let slot = t_ms.div_euclid(cfg.resolution_ms);
        let mut errors = [None; 1 + MAX_PERIODS];
        errors[0] = self.level_error(cfg, x);
        for (e, &p) in errors[1..].iter_mut().zip(&cfg.periods_ms) {
            *e = self.seasonal_error(cfg, slot, p / cfg.resolution_ms, x);
        }
        let mut best: Option<(f64, f64, usize)> = None;
        for (i, (e, s)) in errors.iter().zip(&self.scales).enumerate() {
            if let Some(e) = e
                && s.n as usize >= cfg.min_events
                && best.is_none_or(|(mae, _, _)| s.mae < mae)
            {
                best = Some((s.mae, *e, i));
            }
        }
        let out = best.map(|(mae, error, candidate)| ForecastError {
            error,
            mae: mae.max(MIN_SCALE * (1.0 + x.abs())),
            candidate,
        });
        for (e, s) in errors.iter().zip(&mut self.scales) {
            if let Some(e) = e {
                s.update(e.abs(), cfg.error_events);
            }
        }
        self.learn(cfg, slot, x);
        out
    }

    fn level_error(&mut self, cfg: &SeasonalConfig, x: f64) -> Option<f64> {
        if cfg.level_events == 0 || self.recent.len() < cfg.level_events {
            return None;
        }
        self.scratch.clear();
        self.scratch.extend(self.recent.iter().copied());
        Some(x - median_in_place(&mut self.scratch))
    }

    fn bin(&self, slot: i64) -> Option<f64> {
        let b = &self.bins[slot.rem_euclid(self.bins.len() as i64) as usize];
        (b.slot == slot && b.n > 0).then_some(f64::from(b.mean))
    }

    fn seasonal_error(
        &mut self,
        cfg: &SeasonalConfig,
        slot: i64,
        shift: i64,
        x: f64,
    ) -> Option<f64> {
        let mut errs = std::mem::take(&mut self.scratch);
        errs.clear();
        for k in 1..=cfg.seasons as i64 {
            let base = slot - k * shift;
            let closest = [base - 1, base, base + 1]
                .into_iter()
                .filter_map(|s| self.bin(s))
                .map(|v| x - v)
                .min_by(|a, b| a.abs().total_cmp(&b.abs()));
            if let Some(e) = closest {
                errs.push(e);
            }
        }
        let e = (!errs.is_empty()).then(|| median_in_place(&mut errs));
        self.scratch = errs;
        e
    }

    fn learn(&mut self, cfg: &SeasonalConfig, slot: i64, x: f64) {
        let n = self.bins.len() as i64;
        let b = &mut self.bins[slot.rem_euclid(n) as usize];
        if b.slot != slot {
            *b = Bin {
                slot,
                mean: 0.0,
                n: 0,
            };
        }
        b.n += 1;
        b.mean += ((x as f32) - b.mean) / b.n as f32;
        if cfg.level_events > 0 {
            if self.recent.len() == cfg.level_events {
                self.recent.pop_front();
            }
            self.recent.push_back(x);
        }
    }

    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.bins.capacity() * std::mem::size_of::<Bin>()
            + (self.recent.capacity() + self.scratch.capacity()) * 8
            + self.scales.capacity() * std::mem::size_of::<ErrorScale>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::TestNoise;

    const MIN: i64 = 60_000;
    const DAY: i64 = 1440 * MIN;

    fn cfg() -> SeasonalConfig {
        SeasonalConfig {
            periods_ms: vec![DAY, 7 * DAY],
            seasons: 3,
            resolution_ms: 5 * MIN,
            level_events: 6,
            error_events: 288,
            min_events: 100,
        }
    }

    /// A square wave: high from 08:00 to 18:00, low otherwise, with small noise.
    fn square(t: i64, noise: &mut TestNoise) -> f64 {
        let h = t.rem_euclid(DAY) / (60 * MIN);
        (if (8..18).contains(&h) { 80.0 } else { 20.0 }) + noise.normal()
    }

    #[test]
    fn a_daily_pattern_is_forecast_from_earlier_days() {
        let c = cfg();
        let mut s = Seasonal::default();
        let mut noise = TestNoise::new(3);
        let mut last = None;
        for i in 0..(5 * 288) {
            let t = i * 5 * MIN;
            last = s.update(&c, t, square(t, &mut noise));
        }
        let e = last.expect("warmed up");
        assert_eq!(
            e.candidate, 1,
            "the daily season forecasts a square wave best"
        );
        assert!(e.mae < 2.0, "{e:?}");
        // The plateau is missing at noon of day 5: a large error in units of the MAE, although
        // the value itself is an ordinary one (the night level).
        let noon = 5 * DAY + 12 * 60 * MIN;
        let e = s.update(&c, noon, 20.0).expect("scored");
        assert!(e.error.abs() / e.mae > 20.0, "{e:?}");
    }

    #[test]
    fn a_series_without_season_is_forecast_from_its_level() {
        let c = cfg();
        let mut s = Seasonal::default();
        let mut noise = TestNoise::new(5);
        let mut x = 0.0;
        let mut last = None;
        for i in 0..(4 * 288) {
            x += noise.normal();
            last = s.update(&c, i * 5 * MIN, x);
        }
        assert_eq!(
            last.expect("warmed up").candidate,
            0,
            "a random walk is best forecast by its level"
        );
    }

    #[test]
    fn state_is_bounded() {
        let c = cfg();
        let mut s = Seasonal::default();
        let mut noise = TestNoise::new(9);
        for i in 0..(30 * 288) {
            s.update(&c, i * 5 * MIN, noise.normal());
        }
        let bytes = s.state_bytes();
        for i in (30 * 288)..(60 * 288) {
            s.update(&c, i * 5 * MIN, noise.normal());
        }
        assert_eq!(s.state_bytes(), bytes);
        assert_eq!(s.bins.len(), (7 * 288 * 3 + 2) as usize);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut s = Seasonal::default();
        assert_eq!(s.update(&cfg(), 0, f64::NAN), None);
        assert!(s.recent.is_empty());
    }
}
