//! Compilation of the per-event rule kinds (`spec.detector`, `spec.ensemble`) into their
//! runtime settings: defaults applied in one place (each with its source in the CRD docs) and
//! cross-field checks the schema cannot express. Errors are `(field path, reason)`.

use vigil_api::v1alpha1::{CombineMethod, DetectorRule, EnsembleRule, duration_ms};

use super::{EnsembleKind, EnsembleMember};
use crate::detectors::changepoint::ChangePointConfig;
use crate::detectors::forest::{ForestConfig, RandomCutForest};
use crate::detectors::seasonal::{MAX_PERIODS, SeasonalConfig};
use crate::detectors::tail::TailConfig;
use crate::detectors::{Combine, DetectorConfig, ModelConfig};

type Invalid = (String, String);

const DAY_MS: i64 = 86_400_000;
/// Largest number of seasonal history bins per key (about 1.5 MiB of state).
const MAX_SEASONAL_BINS: i64 = 100_000;
/// Default alarm threshold: one in 100 000.
const DEFAULT_THRESHOLD: f64 = 0.5;

fn invalid(at: &str, reason: impl Into<String>) -> Invalid {
    (at.to_string(), reason.into())
}

fn positive(at: &str, v: Option<u32>, default: u32) -> Result<usize, Invalid> {
    match v.unwrap_or(default) {
        0 => Err(invalid(at, "must be at least 1")),
        n => Ok(n as usize),
    }
}

/// An alarm threshold in [0, 1] (default 0.5).
pub(super) fn threshold(at: &str, v: Option<f64>) -> Result<f64, Invalid> {
    let t = v.unwrap_or(DEFAULT_THRESHOLD);
    if (0.0..=1.0).contains(&t) {
        Ok(t)
    } else {
        Err(invalid(at, "must be a number in [0, 1]"))
    }
}

/// A cooldown in ms (0 when absent).
pub(super) fn cooldown_ms(at: &str, v: Option<i64>) -> Result<i64, Invalid> {
    let ms = v.unwrap_or(0);
    if ms < 0 {
        Err(invalid(at, "must not be negative"))
    } else {
        Ok(ms)
    }
}

/// The model and calibration settings of a detector rule, with defaults applied.
pub(super) fn detector_config(d: &DetectorRule) -> Result<DetectorConfig, Invalid> {
    let model = match (&d.seasonal, &d.random_cut_forest, &d.change_point) {
        (Some(s), None, None) => {
            let resolution_ms = s.resolution.as_ref().map_or(300_000, duration_ms);
            if resolution_ms <= 0 {
                return Err(invalid(
                    "spec.detector.seasonal.resolution",
                    "must be positive",
                ));
            }
            let periods_ms: Vec<i64> = match &s.periods {
                Some(p) => p.iter().map(duration_ms).collect(),
                None => vec![DAY_MS, 7 * DAY_MS],
            };
            if periods_ms.len() > MAX_PERIODS {
                return Err(invalid(
                    "spec.detector.seasonal.periods",
                    format!("at most {MAX_PERIODS} periods"),
                ));
            }
            for (i, p) in periods_ms.iter().enumerate() {
                if *p <= 0 || p % resolution_ms != 0 {
                    return Err(invalid(
                        &format!("spec.detector.seasonal.periods[{i}]"),
                        "must be a positive multiple of the resolution",
                    ));
                }
            }
            let seasons = positive("spec.detector.seasonal.seasons", s.seasons, 3)?;
            let longest = periods_ms.iter().copied().max().unwrap_or(0);
            if longest / resolution_ms * seasons as i64 > MAX_SEASONAL_BINS {
                return Err(invalid(
                    "spec.detector.seasonal",
                    format!(
                        "longest period * seasons / resolution must be at most {MAX_SEASONAL_BINS} bins"
                    ),
                ));
            }
            ModelConfig::Seasonal(SeasonalConfig {
                periods_ms,
                seasons,
                resolution_ms,
                level_events: s.level_events.unwrap_or(6) as usize,
                error_events: positive("spec.detector.seasonal.errorEvents", s.error_events, 288)?,
                min_events: s.min_events.unwrap_or(100) as usize,
            })
        }
        (None, Some(f), None) => {
            let sample_size = f.sample_size.unwrap_or(256) as usize;
            let cfg = ForestConfig {
                shingle_size: positive(
                    "spec.detector.randomCutForest.shingleSize",
                    f.shingle_size,
                    8,
                )?,
                trees: positive("spec.detector.randomCutForest.trees", f.trees, 50)?,
                sample_size,
                min_events: f.min_events.map_or(sample_size, |n| n as usize),
            };
            RandomCutForest::check(&cfg)
                .map_err(|e| invalid("spec.detector.randomCutForest", format!("{e}: {}", e.0)))?;
            ModelConfig::RandomCutForest(cfg)
        }
        (None, None, Some(c)) => {
            let hazard_events = c.hazard_events.unwrap_or(1000.0);
            if !(hazard_events >= 2.0 && hazard_events.is_finite()) {
                return Err(invalid(
                    "spec.detector.changePoint.hazardEvents",
                    "must be a number of at least 2",
                ));
            }
            ModelConfig::ChangePoint(ChangePointConfig {
                hazard_events,
                max_run: positive(
                    "spec.detector.changePoint.maxRunLength",
                    c.max_run_length,
                    200,
                )?
                .max(2),
                recent_events: positive(
                    "spec.detector.changePoint.recentEvents",
                    c.recent_events,
                    5,
                )?,
                scale_events: positive(
                    "spec.detector.changePoint.scaleEvents",
                    c.scale_events,
                    2000,
                )?,
                min_events: 100,
            })
        }
        _ => {
            return Err(invalid(
                "spec.detector",
                "exactly one of seasonal, randomCutForest or changePoint must be set",
            ));
        }
    };
    let c = d.calibration.clone().unwrap_or_default();
    let quantile = c.quantile.unwrap_or(0.98);
    if !(quantile > 0.0 && quantile < 1.0) {
        return Err(invalid(
            "spec.detector.calibration.quantile",
            "must be in (0, 1)",
        ));
    }
    let calibration = TailConfig {
        events: positive("spec.detector.calibration.events", c.events, 2000)?.max(2),
        quantile,
        min_events: c.min_events.unwrap_or(200) as usize,
    };
    Ok(DetectorConfig { model, calibration })
}

/// An ensemble with its members by name (indices are resolved by `RuleSet::compile`).
pub(super) fn ensemble(e: &EnsembleRule) -> Result<EnsembleKind, Invalid> {
    if e.members.is_empty() {
        return Err(invalid(
            "spec.ensemble.members",
            "at least one member is required",
        ));
    }
    let mut members = Vec::with_capacity(e.members.len());
    for (i, m) in e.members.iter().enumerate() {
        let weight = m.weight.unwrap_or(1.0);
        if !(weight >= 0.0 && weight.is_finite()) {
            return Err(invalid(
                &format!("spec.ensemble.members[{i}].weight"),
                "must be a non-negative number",
            ));
        }
        if e.members[..i].iter().any(|x| x.rule == m.rule) {
            return Err(invalid(
                &format!("spec.ensemble.members[{i}].rule"),
                "duplicate member",
            ));
        }
        members.push(EnsembleMember {
            rule: m.rule.clone(),
            index: usize::MAX,
            weight,
        });
    }
    let combine = match e.combine {
        CombineMethod::Max => Combine::Max,
        CombineMethod::WeightedMean => Combine::WeightedMean,
        CombineMethod::Vote => {
            let k = e.votes.map_or(members.len() / 2 + 1, |v| v as usize);
            if k == 0 || k > members.len() {
                return Err(invalid(
                    "spec.ensemble.votes",
                    "must be between 1 and the number of members",
                ));
            }
            Combine::Vote(k)
        }
    };
    if e.votes.is_some() && e.combine != CombineMethod::Vote {
        return Err(invalid(
            "spec.ensemble.votes",
            "only applies to `combine: Vote`",
        ));
    }
    Ok(EnsembleKind {
        members,
        combine,
        threshold: threshold("spec.ensemble.threshold", e.threshold)?,
        cooldown_ms: cooldown_ms(
            "spec.ensemble.cooldown",
            e.cooldown.as_ref().map(duration_ms),
        )?,
    })
}
