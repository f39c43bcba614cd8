//! Detection rules, pure: compiled from `DetectionRule` specs against a pipeline, evaluated on
//! a window's features per key, with per-(rule, key) state for `for` durations and baselines.
//! Each evaluation yields a match and an anomaly score in [0, 1]. No I/O.

pub mod alert;
pub mod baseline;
mod event;
mod expression;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use vigil_api::v1alpha1::{
    AnomalyModel, BaselineMethod, DetectionRule, Direction, Feature, Operator, Severity,
};

use crate::config::{FieldTable, InvalidSpec, PipelineConfig};
use crate::detectors::{self, Combine, DetectorConfig, DetectorState};
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
    /// An AnomalyModel; its windows are scored by the runtime's scoring stage ([`crate::model`]), not
    /// here.
    Model {
        /// AnomalyModel name.
        model: String,
        /// Threshold override.
        threshold: Option<f64>,
        /// The model's feature contract in this pipeline.
        contract: Arc<crate::model::ModelContract>,
    },
    /// A per-event detector on one field ([`crate::detectors`]).
    Detector(Box<DetectorKind>),
    /// Combines other rules' event scores.
    Ensemble(Box<EnsembleKind>),
}

/// A compiled `spec.detector`.
#[derive(Debug)]
pub struct DetectorKind {
    /// Field id.
    pub field: u16,
    /// Model and calibration.
    pub config: DetectorConfig,
    /// Alarm threshold on the score.
    pub threshold: f64,
    /// Event-time span after an alarm during which the rule reports 0 (0: none).
    pub cooldown_ms: i64,
}

/// One resolved member of an ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleMember {
    /// Member rule name.
    pub rule: String,
    /// Index of the member in the [`RuleSet`] (resolved by [`RuleSet::compile`]).
    pub index: usize,
    /// Weight of its score.
    pub weight: f64,
}

/// A compiled `spec.ensemble`.
#[derive(Debug)]
pub struct EnsembleKind {
    /// Members.
    pub members: Vec<EnsembleMember>,
    /// Combination.
    pub combine: Combine,
    /// Alarm threshold on the score.
    pub threshold: f64,
    /// Event-time span after an alarm during which the rule reports 0 (0: none).
    pub cooldown_ms: i64,
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
    /// The rule is a member of an ensemble of the same set: it raises no alerts and does not
    /// count in event scores (set by [`RuleSet::compile`]).
    pub ensemble_member: bool,
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
    const NONE: Evaluation = Evaluation {
        matched: false,
        score: 0.0,
        value: f64::NAN,
    };
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
    /// Score of the last window evaluated (what a window rule contributes to an ensemble).
    pub last_window_score: Option<f64>,
    history: Vec<History>,
    detector: Option<Box<DetectorState>>,
    /// Per-event rules: (pane start, highest alarm score, value at it) of recent panes, for the
    /// window evaluation; at most [`MAX_PANES`].
    panes: VecDeque<(i64, f64, f64)>,
    /// Per-event rules: no alarm before this event time (cooldown).
    cooldown_until: Option<i64>,
    /// Model rules: the key's window sequence and scoring progress.
    pub model: Option<Box<crate::model::ModelState>>,
}

/// Panes of event scores kept per (rule, key); older ones are dropped first.
pub const MAX_PANES: usize = 4096;

impl RuleState {
    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.history.iter().map(History::state_bytes).sum::<usize>()
            + self.detector.as_ref().map_or(0, |d| d.state_bytes())
            + self.panes.capacity() * 24
            + self.model.as_ref().map_or(0, |m| m.state_bytes())
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
        models: &[&AnomalyModel],
    ) -> Result<Self, RuleError> {
        let name = rule.metadata.name.clone().unwrap_or_else(|| "rule".into());
        let err = |field: &str, reason: String| RuleError {
            rule: name.clone(),
            error: InvalidSpec::new(field, reason),
        };
        let s = &rule.spec;
        let tier = cfg.tier(&s.window).ok_or_else(|| {
            let names: Vec<_> = cfg.tiers.iter().map(|t| t.name.as_str()).collect();
            err(
                "spec.window",
                format!(
                    "window `{}` is not one of the pipeline's windows ({})",
                    s.window,
                    names.join(", ")
                ),
            )
        })?;
        let field_id = |at: &str, f: &str, table: &mut FieldTable| {
            table
                .get(f)
                .or_else(|| table.intern(f))
                .ok_or_else(|| err(at, format!("field `{f}` is not a field of the pipeline")))
        };
        let has_feature = |at: &str, feat: Feature| {
            if cfg.features.contains(&feat) {
                Ok(())
            } else {
                Err(err(
                    at,
                    format!("feature `{feat}` is not computed by the pipeline (spec.features)"),
                ))
            }
        };
        let kind = match (
            &s.threshold,
            &s.baseline,
            &s.expression,
            &s.model,
            &s.detector,
            &s.ensemble,
        ) {
            (Some(t), None, None, None, None, None) => {
                has_feature("spec.threshold.feature", t.feature)?;
                if !t.value.is_finite() {
                    return Err(err(
                        "spec.threshold.value",
                        "must be a finite number".into(),
                    ));
                }
                RuleKind::Threshold {
                    field: field_id("spec.threshold.field", &t.field, table)?,
                    feature: t.feature,
                    operator: t.operator,
                    value: t.value,
                }
            }
            (None, Some(b), None, None, None, None) => {
                has_feature("spec.baseline.feature", b.feature)?;
                let history_ms = vigil_api::v1alpha1::duration_ms(&b.history);
                if history_ms <= 0 {
                    return Err(err("spec.baseline.history", "must be positive".into()));
                }
                if !(b.threshold > 0.0 && b.threshold.is_finite()) {
                    return Err(err(
                        "spec.baseline.threshold",
                        "must be a positive number".into(),
                    ));
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
            (None, None, Some(e), None, None, None) => RuleKind::Expression(Box::new(
                Expression::compile(e, cfg).map_err(|reason| err(&reason.0, reason.1))?,
            )),
            (None, None, None, Some(m), None, None) => {
                let Some(am) = models
                    .iter()
                    .find(|x| x.metadata.name.as_deref() == Some(m.model_ref.as_str()))
                else {
                    return Err(err(
                        "spec.model.modelRef",
                        format!("AnomalyModel `{}` not found", m.model_ref),
                    ));
                };
                let contract =
                    crate::model::ModelContract::compile(am, cfg, table).map_err(|e| {
                        err(
                            "spec.model.modelRef",
                            format!(
                                "AnomalyModel `{}` does not fit the pipeline: {}: {}",
                                m.model_ref, e.field, e.reason
                            ),
                        )
                    })?;
                if am.spec.input.window != s.window {
                    return Err(err(
                        "spec.window",
                        format!(
                            "must be `{}`, the window of AnomalyModel `{}` (spec.input.window)",
                            am.spec.input.window, m.model_ref
                        ),
                    ));
                }
                if m.threshold.is_some_and(|t| !t.is_finite()) {
                    return Err(err(
                        "spec.model.threshold",
                        "must be a finite number".into(),
                    ));
                }
                RuleKind::Model {
                    model: m.model_ref.clone(),
                    threshold: m.threshold,
                    contract: Arc::new(contract),
                }
            }
            (None, None, None, None, Some(d), None) => {
                let config = event::detector_config(d).map_err(|(at, reason)| err(&at, reason))?;
                RuleKind::Detector(Box::new(DetectorKind {
                    field: field_id("spec.detector.field", &d.field, table)?,
                    config,
                    threshold: event::threshold("spec.detector.threshold", d.threshold)
                        .map_err(|(at, r)| err(&at, r))?,
                    cooldown_ms: event::cooldown_ms(
                        "spec.detector.cooldown",
                        d.cooldown.as_ref().map(vigil_api::v1alpha1::duration_ms),
                    )
                    .map_err(|(at, r)| err(&at, r))?,
                }))
            }
            (None, None, None, None, None, Some(e)) => RuleKind::Ensemble(Box::new(
                event::ensemble(e).map_err(|(at, reason)| err(&at, reason))?,
            )),
            _ => {
                return Err(err(
                    "spec",
                    "exactly one of threshold, baseline, expression, model, detector or ensemble must be set".into(),
                ));
            }
        };
        let for_ms = s.for_ms();
        if for_ms < 0 {
            return Err(err("spec.for", "must not be negative".into()));
        }
        for (k, v) in s.labels.iter().chain(&s.annotations) {
            alert::check_template(v)
                .map_err(|reason| err(&format!("spec.labels/annotations[{k}]"), reason))?;
        }
        Ok(Self {
            name,
            tier,
            for_ms,
            severity: s.severity,
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
            kind,
            ensemble_member: false,
        })
    }

    /// Evaluates the rule on a window without changing state (history is read, not updated).
    pub fn evaluate(&self, w: &WindowView<'_>, state: &mut RuleState) -> Evaluation {
        match &self.kind {
            RuleKind::Threshold {
                field,
                feature,
                operator,
                value,
            } => {
                let Some(x) = w
                    .field(*field)
                    .map(|f| f.get(*feature))
                    .filter(|x| !x.is_nan())
                else {
                    return Evaluation::NONE;
                };
                let matched = operator.holds(x, *value);
                Evaluation {
                    matched,
                    score: if matched { 1.0 } else { 0.0 },
                    value: x,
                }
            }
            RuleKind::Baseline {
                field,
                feature,
                method,
                threshold,
                direction,
                min_samples,
                ..
            } => {
                let Some(x) = w
                    .field(*field)
                    .map(|f| f.get(*feature))
                    .filter(|x| !x.is_nan())
                else {
                    return Evaluation::NONE;
                };
                let Some(stats) = state.history.first_mut().and_then(History::stats) else {
                    return Evaluation {
                        value: x,
                        ..Evaluation::NONE
                    };
                };
                if stats.samples < *min_samples {
                    return Evaluation {
                        value: x,
                        ..Evaluation::NONE
                    };
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
                Evaluation {
                    matched: r >= 1.0,
                    score: ratio_score(r),
                    value: x,
                }
            }
            RuleKind::Expression(e) => e.evaluate(w, &mut state.history),
            // Scored asynchronously ([`crate::engine::Engine::apply_model_scores`]): the score
            // of the last scored window.
            RuleKind::Model { .. } => Evaluation {
                score: state.last_window_score.unwrap_or(0.0),
                ..Evaluation::NONE
            },
            RuleKind::Detector(_) | RuleKind::Ensemble(_) => {
                let threshold = self.alarm_threshold().unwrap_or(1.0);
                let top = state
                    .panes
                    .iter()
                    .filter(|(p, _, _)| *p >= w.start && *p < w.end)
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                match top {
                    Some(&(_, score, value)) => Evaluation {
                        matched: score >= threshold,
                        score,
                        value,
                    },
                    None => Evaluation::NONE,
                }
            }
        }
    }

    /// Records the window in the rule's history (after [`Self::evaluate`], so a window is never
    /// part of its own baseline).
    pub fn observe(&self, w: &WindowView<'_>, state: &mut RuleState) {
        match &self.kind {
            RuleKind::Baseline {
                field,
                feature,
                history_ms,
                ..
            } => {
                if state.history.is_empty() {
                    state.history.push(History::default());
                }
                let x = w.field(*field).map_or(f64::NAN, |f| f.get(*feature));
                state.history[0].push(w.end, x, *history_ms);
            }
            RuleKind::Expression(e) => e.observe(w, &mut state.history),
            RuleKind::Threshold { .. } | RuleKind::Model { .. } => {}
            // Windows are evaluated in end order: panes before this window's start are done.
            RuleKind::Detector(_) | RuleKind::Ensemble(_) => {
                state.panes.retain(|(p, _, _)| *p >= w.start)
            }
        }
    }

    /// The field whose features an alert of this rule carries, if the rule has one.
    pub fn field(&self) -> Option<u16> {
        match &self.kind {
            RuleKind::Threshold { field, .. } | RuleKind::Baseline { field, .. } => Some(*field),
            RuleKind::Detector(d) => Some(d.field),
            RuleKind::Expression(_) | RuleKind::Model { .. } | RuleKind::Ensemble(_) => None,
        }
    }

    /// Whether the rule scores events one by one (detectors and ensembles) rather than windows.
    pub fn is_per_event(&self) -> bool {
        matches!(self.kind, RuleKind::Detector(_) | RuleKind::Ensemble(_))
    }

    /// The alarm threshold of a per-event rule.
    pub fn alarm_threshold(&self) -> Option<f64> {
        match &self.kind {
            RuleKind::Detector(d) => Some(d.threshold),
            RuleKind::Ensemble(e) => Some(e.threshold),
            _ => None,
        }
    }

    /// A detector rule: scores the value `x` of an event at `t_ms` of its field from the key's
    /// earlier events, then learns it. `None` for other rules and while the detector warms up.
    pub fn observe_event(
        &self,
        state: &mut RuleState,
        seed: u64,
        t_ms: i64,
        x: f64,
    ) -> Option<f64> {
        let RuleKind::Detector(d) = &self.kind else {
            return None;
        };
        state
            .detector
            .get_or_insert_with(Default::default)
            .update(&d.config, seed, t_ms, x)
    }

    /// An ensemble rule: combines its members' scores for the current event (`scores` indexed
    /// like the rule set; `None`: no score). `None` for other rules.
    pub fn combine(&self, scores: &[Option<f64>]) -> Option<f64> {
        let RuleKind::Ensemble(e) = &self.kind else {
            return None;
        };
        let members = e
            .members
            .iter()
            .map(|m| (scores.get(m.index).copied().flatten(), m.weight));
        Some(detectors::combine(e.combine, members))
    }

    /// A per-event rule: turns the event's score into its alarm score (0 within a cooldown
    /// after an alarm; an alarm at or above the threshold starts one) and records it in the pane
    /// of `t_ms` (panes of `pane_ms`) for the window evaluation. Returns the alarm score.
    pub fn record_event_score(
        &self,
        state: &mut RuleState,
        pane_ms: i64,
        t_ms: i64,
        score: f64,
        value: f64,
    ) -> f64 {
        let (threshold, cooldown_ms) = match &self.kind {
            RuleKind::Detector(d) => (d.threshold, d.cooldown_ms),
            RuleKind::Ensemble(e) => (e.threshold, e.cooldown_ms),
            _ => return score,
        };
        let score = if state.cooldown_until.is_some_and(|u| t_ms < u) {
            0.0
        } else {
            score
        };
        if score >= threshold && cooldown_ms > 0 {
            state.cooldown_until = Some(t_ms.saturating_add(cooldown_ms));
        }
        let pane = t_ms - t_ms.rem_euclid(pane_ms.max(1));
        match state.panes.iter_mut().rev().find(|(p, _, _)| *p == pane) {
            Some(entry) if score > entry.1 => *entry = (pane, score, value),
            Some(_) => {}
            None => {
                // Usually the newest pane; out-of-order events insert in place.
                let at = state
                    .panes
                    .iter()
                    .rposition(|(p, _, _)| *p < pane)
                    .map_or(0, |i| i + 1);
                state.panes.insert(at, (pane, score, value));
                if state.panes.len() > MAX_PANES {
                    state.panes.pop_front();
                }
            }
        }
        score
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
        models: &[&AnomalyModel],
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
        set.resolve_ensembles(&mut errors);
        (set, errors)
    }

    /// Resolves ensemble members to rule indices and marks the members. An ensemble naming a
    /// rule that is absent (or did not compile), itself, or another ensemble is an error and
    /// is left out.
    fn resolve_ensembles(&mut self, errors: &mut Vec<RuleError>) {
        let bad: Vec<(usize, RuleError)> = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let RuleKind::Ensemble(e) = &r.kind else {
                    return None;
                };
                e.members.iter().enumerate().find_map(|(j, m)| {
                    let reason = match self.rules.iter().find(|x| x.name == m.rule) {
                        None => format!("rule `{}` is not a valid rule of this pipeline", m.rule),
                        Some(x) if matches!(x.kind, RuleKind::Ensemble(_)) => {
                            format!("rule `{}` is an ensemble", m.rule)
                        }
                        Some(_) => return None,
                    };
                    let error =
                        InvalidSpec::new(format!("spec.ensemble.members[{j}].rule"), reason);
                    Some((
                        i,
                        RuleError {
                            rule: r.name.clone(),
                            error,
                        },
                    ))
                })
            })
            .collect();
        for (i, e) in bad.into_iter().rev() {
            self.rules.remove(i);
            errors.push(e);
        }
        let names: Vec<String> = self.rules.iter().map(|r| r.name.clone()).collect();
        let mut members = vec![false; self.rules.len()];
        for r in &mut self.rules {
            if let RuleKind::Ensemble(e) = &mut r.kind {
                for m in &mut e.members {
                    m.index = names
                        .iter()
                        .position(|n| *n == m.rule)
                        .expect("checked above");
                    members[m.index] = true;
                }
            }
        }
        for (r, m) in self.rules.iter_mut().zip(members) {
            r.ensemble_member = m;
        }
    }

    /// Indices of the rules reading tier `tier`.
    pub fn for_tier(&self, tier: usize) -> impl Iterator<Item = usize> + '_ {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.tier == tier)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests;
