//! `spec.detector`: a streaming detector ([`crate::detectors`]: seasonal baseline, random cut
//! forest, change point, contextual memory) scores every event of one field from the key's
//! earlier events; its settings are compiled here with defaults applied in one place (each with
//! its source in the CRD docs) and cross-field checks the schema cannot express.

use vigil_api::v1alpha1::{DetectorRule, duration_ms};

use super::RuleState;
use super::per_event::{self, Alarm};
use super::scope::Scope;
use crate::config::InvalidSpec;
use crate::detectors::changepoint::ChangePointConfig;
use crate::detectors::contextual::{ContextualConfig, MAX_ORDER};
use crate::detectors::forest::{ForestConfig, RandomCutForest};
use crate::detectors::seasonal::{MAX_PERIODS, SeasonalConfig};
use crate::detectors::tail::TailConfig;
use crate::detectors::{DetectorConfig, ModelConfig};

const DAY_MS: i64 = 86_400_000;
/// Largest number of seasonal history bins per key (about 1.5 MiB of state).
const MAX_SEASONAL_BINS: i64 = 100_000;

/// A compiled detector rule.
#[derive(Debug)]
pub struct Detector {
    /// Field id.
    pub field: u16,
    /// Model and calibration.
    pub config: DetectorConfig,
    /// Alarm threshold and cooldown.
    pub alarm: Alarm,
}

fn invalid(at: &str, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec::new(at, reason)
}

fn positive(at: &str, v: Option<u32>, default: u32) -> Result<usize, InvalidSpec> {
    match v.unwrap_or(default) {
        0 => Err(invalid(at, "must be at least 1")),
        n => Ok(n as usize),
    }
}

/// Checks what needs no pipeline: the model and calibration settings, threshold, cooldown.
///
/// # Errors
/// The first problem, with its field path.
pub fn validate(d: &DetectorRule) -> Result<(Alarm, DetectorConfig), InvalidSpec> {
    let config = detector_config(d)?;
    let alarm = Alarm {
        threshold: per_event::threshold("spec.detector.threshold", d.threshold)?,
        cooldown_ms: per_event::cooldown_ms(
            "spec.detector.cooldown",
            d.cooldown.as_ref().map(duration_ms),
        )?,
    };
    Ok((alarm, config))
}

impl Detector {
    /// Compiles against a pipeline.
    ///
    /// # Errors
    /// See [`validate`]; the field is not the pipeline's.
    pub fn compile(d: &DetectorRule, scope: &mut Scope<'_>) -> Result<Self, InvalidSpec> {
        let (alarm, config) = validate(d)?;
        Ok(Detector {
            field: scope.field("spec.detector.field", &d.field)?,
            config,
            alarm,
        })
    }

    /// Scores the value `x` of an event at `t_ms` from the key's earlier events, then learns
    /// it. `None` while the detector warms up.
    pub fn observe_event(
        &self,
        state: &mut RuleState,
        seed: u64,
        t_ms: i64,
        x: f64,
    ) -> Option<f64> {
        state
            .detector
            .get_or_insert_with(Default::default)
            .update(&self.config, seed, t_ms, x)
    }
}

/// The model and calibration settings of a detector rule, with defaults applied.
fn detector_config(d: &DetectorRule) -> Result<DetectorConfig, InvalidSpec> {
    let model = match (
        &d.seasonal,
        &d.random_cut_forest,
        &d.change_point,
        &d.contextual,
    ) {
        (Some(s), None, None, None) => {
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
        (None, Some(f), None, None) => {
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
        (None, None, Some(c), None) => {
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
        (None, None, None, Some(c)) => {
            let levels = positive("spec.detector.contextual.levels", c.levels, 12)?;
            if levels > 256 {
                return Err(invalid(
                    "spec.detector.contextual.levels",
                    "must be at most 256",
                ));
            }
            let order = c.order.unwrap_or(2) as usize;
            if order > MAX_ORDER {
                return Err(invalid(
                    "spec.detector.contextual.order",
                    format!("must be at most {MAX_ORDER}"),
                ));
            }
            let warmup_events = c.warmup_events.unwrap_or(150) as usize;
            if warmup_events < 2 {
                return Err(invalid(
                    "spec.detector.contextual.warmupEvents",
                    "must be at least 2",
                ));
            }
            ModelConfig::Contextual(ContextualConfig {
                levels: levels as u32,
                order,
                warmup_events,
            })
        }
        _ => {
            return Err(invalid(
                "spec.detector",
                "exactly one of seasonal, randomCutForest, changePoint or contextual must be set",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contextual_settings_reach_the_model_and_defaults_fill_the_rest() {
        let rule = |contextual: serde_json::Value| -> DetectorRule {
            serde_json::from_value(serde_json::json!({"field": "v", "contextual": contextual}))
                .unwrap()
        };
        let model = |d: &DetectorRule| validate(d).unwrap().1.model;
        assert_eq!(
            model(&rule(
                serde_json::json!({"levels": 5, "order": 3, "warmupEvents": 40})
            )),
            ModelConfig::Contextual(ContextualConfig {
                levels: 5,
                order: 3,
                warmup_events: 40
            })
        );
        assert_eq!(
            model(&rule(serde_json::json!({}))),
            ModelConfig::Contextual(ContextualConfig {
                levels: 12,
                order: 2,
                warmup_events: 150
            })
        );
    }
}
