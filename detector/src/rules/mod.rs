//! Detection rules, pure: compiled from `DetectionRule` specs against a pipeline, evaluated on
//! a window's features per key, with per-(rule, key) state for `for` durations and baselines.
//! Each evaluation yields a match and an anomaly score in [0, 1]. No I/O.

pub mod alert;
pub mod baseline;
mod expression;

use std::collections::BTreeMap;

use vigil_api::v1alpha1::{BaselineMethod, DetectionRule, Direction, Feature, Operator, Severity};

use crate::config::{FieldTable, InvalidSpec, PipelineConfig};
use crate::features::FeatureValues;
use baseline::History;
pub use expression::Expression;

/// A rule that cannot run in this pipeline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("DetectionRule {rule}: {error}")]
pub struct RuleError {
    /// `metadata.name` of the rule.
    pub rule: String,
    /// The offending field and why.
    pub error: InvalidSpec,
}

/// What a rule tests.
#[derive(Debug)]
pub enum RuleKind {
    /// `<field>.<feature> <op> <value>`.
    Threshold {
        /// Field id.
        field: u16,
        /// Feature of the field.
        feature: Feature,
        /// Comparison.
        operator: Operator,
        /// Threshold.
        value: f64,
    },
    /// The feature against its own trailing history.
    Baseline {
        /// Field id.
        field: u16,
        /// Feature of the field.
        feature: Feature,
        /// Statistic.
        method: BaselineMethod,
        /// History span.
        history_ms: i64,
        /// Firing score (sigmas, robust sigmas or fence multiplier).
        threshold: f64,
        /// Anomalous side.
        direction: Direction,
        /// Samples needed before it can fire.
        min_samples: usize,
    },
    /// A CEL condition.
    Expression(Box<Expression>),
    /// An AnomalyModel; scored by the scoring stage, not here.
    Model {
        /// AnomalyModel name.
        model: String,
        /// Threshold override.
        threshold: Option<f64>,
    },
}

/// A rule ready to evaluate in one pipeline.
#[derive(Debug)]
pub struct CompiledRule {
    /// `metadata.name`.
    pub name: String,
    /// Index of the window tier it reads.
    pub tier: usize,
    /// `for` duration.
    pub for_ms: i64,
    /// Alert severity.
    pub severity: Severity,
    /// Label templates.
    pub labels: BTreeMap<String, String>,
    /// Annotation templates.
    pub annotations: BTreeMap<String, String>,
    /// The test.
    pub kind: RuleKind,
}

/// The window a rule is evaluated on.
#[derive(Debug, Clone, Copy)]
pub struct WindowView<'a> {
    /// Entity key.
    pub key: &'a str,
    /// Window start (epoch ms).
    pub start: i64,
    /// Window end, exclusive (epoch ms).
    pub end: i64,
    /// Features per field id (fields without events are absent).
    pub fields: &'a [(u16, FeatureValues)],
    /// Field names.
    pub table: &'a FieldTable,
}

impl WindowView<'_> {
    /// Features of a field, if it had events in the window.
    pub fn field(&self, id: u16) -> Option<&FeatureValues> {
        self.fields.iter().find(|(f, _)| *f == id).map(|(_, v)| v)
    }
}

/// Result of evaluating a rule on one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The condition holds.
    pub matched: bool,
    /// Anomaly score in [0, 1]; 0.5 at the rule's threshold for baselines.
    pub score: f64,
    /// The observed value (the feature tested; NaN for expressions).
    pub value: f64,
}

impl Evaluation {
    const NONE: Evaluation = Evaluation { matched: false, score: 0.0, value: f64::NAN };
}

/// Per-(rule, key) state.
#[derive(Debug, Clone, Default)]
pub struct RuleState {
    /// Event time (window end) since which the condition has held.
    pub pending_since: Option<i64>,
    /// Event time since which the alert has been firing.
    pub firing_since: Option<i64>,
    /// End of the last window evaluated (windows are evaluated in end order).
    pub last_end: Option<i64>,
    history: Vec<History>,
}

impl RuleState {
    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.history.iter().map(History::state_bytes).sum::<usize>()
    }
}

/// Maps a deviation ratio `r = deviation / threshold` to a score: `r^2 / (1 + r^2)`,
/// 0 at no deviation, 0.5 at the threshold, towards 1 beyond.
pub fn ratio_score(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        0.0
    } else if r.is_infinite() {
        1.0
    } else {
        r * r / (1.0 + r * r)
    }
}

/// Smallest spread used as a divisor, so a perfectly flat history still scores a change.
const MIN_SPREAD: f64 = 1e-9;

impl CompiledRule {
    /// Compiles a rule against a pipeline. Fields named by the rule are interned into `table`
    /// when it is open (narrow events), so they resolve before their first event.
    ///
    /// # Errors
    /// [`RuleError`] naming the rule field that does not fit the pipeline.
    pub fn compile(
        rule: &DetectionRule,
        cfg: &PipelineConfig,
        table: &mut FieldTable,
        models: &[String],
    ) -> Result<Self, RuleError> {
        let name = rule.metadata.name.clone().unwrap_or_else(|| "rule".into());
        let err = |field: &str, reason: String| RuleError { rule: name.clone(), error: InvalidSpec::new(field, reason) };
        let s = &rule.spec;
        let tier = cfg.tier(&s.window).ok_or_else(|| {
            let names: Vec<_> = cfg.tiers.iter().map(|t| t.name.as_str()).collect();
            err("spec.window", format!("window `{}` is not one of the pipeline's windows ({})", s.window, names.join(", ")))
        })?;
        let field_id = |at: &str, f: &str, table: &mut FieldTable| {
            table.get(f).or_else(|| table.intern(f)).ok_or_else(|| err(at, format!("field `{f}` is not a field of the pipeline")))
        };
        let has_feature = |at: &str, feat: Feature| {
            if cfg.features.contains(&feat) {
                Ok(())
            } else {
                Err(err(at, format!("feature `{feat}` is not computed by the pipeline (spec.features)")))
            }
        };
        let kind = match (&s.threshold, &s.baseline, &s.expression, &s.model) {
            (Some(t), None, None, None) => {
                has_feature("spec.threshold.feature", t.feature)?;
                if !t.value.is_finite() {
                    return Err(err("spec.threshold.value", "must be a finite number".into()));
                }
                RuleKind::Threshold {
                    field: field_id("spec.threshold.field", &t.field, table)?,
                    feature: t.feature,
                    operator: t.operator,
                    value: t.value,
                }
            }
            (None, Some(b), None, None) => {
                has_feature("spec.baseline.feature", b.feature)?;
                let history_ms = vigil_api::v1alpha1::duration_ms(&b.history);
                if history_ms <= 0 {
                    return Err(err("spec.baseline.history", "must be positive".into()));
                }
                if !(b.threshold > 0.0 && b.threshold.is_finite()) {
                    return Err(err("spec.baseline.threshold", "must be a positive number".into()));
                }
                RuleKind::Baseline {
                    field: field_id("spec.baseline.field", &b.field, table)?,
                    feature: b.feature,
                    method: b.method,
                    history_ms,
                    threshold: b.threshold,
                    direction: b.direction,
                    min_samples: b.min_samples.unwrap_or(10).max(2) as usize,
                }
            }
            (None, None, Some(e), None) => RuleKind::Expression(Box::new(
                Expression::compile(e, cfg).map_err(|reason| err(&reason.0, reason.1))?,
            )),
            (None, None, None, Some(m)) => {
                if !models.contains(&m.model_ref) {
                    return Err(err("spec.model.modelRef", format!("AnomalyModel `{}` not found", m.model_ref)));
                }
                RuleKind::Model { model: m.model_ref.clone(), threshold: m.threshold }
            }
            _ => return Err(err("spec", "exactly one of threshold, baseline, expression or model must be set".into())),
        };
        let for_ms = s.for_ms();
        if for_ms < 0 {
            return Err(err("spec.for", "must not be negative".into()));
        }
        for (k, v) in s.labels.iter().chain(&s.annotations) {
            alert::check_template(v).map_err(|reason| err(&format!("spec.labels/annotations[{k}]"), reason))?;
        }
        Ok(Self {
            name,
            tier,
            for_ms,
            severity: s.severity,
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
            kind,
        })
    }

    /// Evaluates the rule on a window without changing state (history is read, not updated).
    pub fn evaluate(&self, w: &WindowView<'_>, state: &mut RuleState) -> Evaluation {
        match &self.kind {
            RuleKind::Threshold { field, feature, operator, value } => {
                let Some(x) = w.field(*field).map(|f| f.get(*feature)).filter(|x| !x.is_nan()) else {
                    return Evaluation::NONE;
                };
                let matched = operator.holds(x, *value);
                Evaluation { matched, score: if matched { 1.0 } else { 0.0 }, value: x }
            }
            RuleKind::Baseline { field, feature, method, threshold, direction, min_samples, .. } => {
                let Some(x) = w.field(*field).map(|f| f.get(*feature)).filter(|x| !x.is_nan()) else {
                    return Evaluation::NONE;
                };
                let Some(stats) = state.history.first_mut().and_then(History::stats) else {
                    return Evaluation { value: x, ..Evaluation::NONE };
                };
                if stats.samples < *min_samples {
                    return Evaluation { value: x, ..Evaluation::NONE };
                }
                // Signed deviation in units of the method's spread; for IQR, past the fences.
                let (up, down) = match method {
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
                let dev = match direction {
                    Direction::Above => up,
                    Direction::Below => down,
                    Direction::Both => up.max(down),
                };
                let r = dev / threshold;
                Evaluation { matched: r >= 1.0, score: ratio_score(r), value: x }
            }
            RuleKind::Expression(e) => e.evaluate(w, &mut state.history),
            RuleKind::Model { .. } => Evaluation::NONE,
        }
    }

    /// Records the window in the rule's history (after [`Self::evaluate`], so a window is never
    /// part of its own baseline).
    pub fn observe(&self, w: &WindowView<'_>, state: &mut RuleState) {
        match &self.kind {
            RuleKind::Baseline { field, feature, history_ms, .. } => {
                if state.history.is_empty() {
                    state.history.push(History::default());
                }
                let x = w.field(*field).map_or(f64::NAN, |f| f.get(*feature));
                state.history[0].push(w.end, x, *history_ms);
            }
            RuleKind::Expression(e) => e.observe(w, &mut state.history),
            RuleKind::Threshold { .. } | RuleKind::Model { .. } => {}
        }
    }

    /// The field whose features an alert of this rule carries, if the rule has one.
    pub fn field(&self) -> Option<u16> {
        match &self.kind {
            RuleKind::Threshold { field, .. } | RuleKind::Baseline { field, .. } => Some(*field),
            RuleKind::Expression(_) | RuleKind::Model { .. } => None,
        }
    }
}

/// The rules of one pipeline.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Compiled rules, in input order.
    pub rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// Compiles every rule; invalid ones are returned as errors and left out, so one bad rule
    /// does not stop the others.
    pub fn compile(
        rules: &[&DetectionRule],
        cfg: &PipelineConfig,
        table: &mut FieldTable,
        models: &[String],
    ) -> (Self, Vec<RuleError>) {
        let mut set = Self::default();
        let mut errors = Vec::new();
        for r in rules {
            match CompiledRule::compile(r, cfg, table, models) {
                Ok(c) if set.rules.iter().any(|x| x.name == c.name) => errors.push(RuleError {
                    rule: c.name,
                    error: InvalidSpec::new("metadata.name", "duplicate rule name"),
                }),
                Ok(c) => set.rules.push(c),
                Err(e) => errors.push(e),
            }
        }
        (set, errors)
    }

    /// Indices of the rules reading tier `tier`.
    pub fn for_tier(&self, tier: usize) -> impl Iterator<Item = usize> + '_ {
        self.rules.iter().enumerate().filter(move |(_, r)| r.tier == tier).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests;
