//! Detection rules, pure: the one rule contract. [`CompiledRule::compile`] makes every check of
//! a DetectionRule against a pipeline (window, fields, features, CEL references, history vs
//! `minSamples`, a model's feature contract, templates) and [`RuleSet::compile`] those across
//! a pipeline's rules (duplicate names, ensemble members); the operator's `Accepted` condition,
//! the rules it renders into a detector's config and the detector's own compile all call these,
//! so they cannot disagree. [`validate_spec`] is the part that needs no pipeline.
//!
//! Each kind lives in its own module with its compile, evaluate/observe and state:
//! [`threshold`], [`baseline`], [`expression`], [`model`], [`detector`], [`ensemble`] (the
//! last two share [`per_event`]); [`RuleKind`] only dispatches. Evaluation yields a match and
//! an anomaly score in [0, 1] per window, with per-(rule, key) state for `for` durations and
//! histories. No I/O.

pub mod alert;
pub mod baseline;
pub mod detector;
pub mod ensemble;
pub mod expression;
pub mod model;
pub mod per_event;
pub mod scope;
pub mod threshold;

use std::collections::{BTreeMap, VecDeque};

use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, DetectionRuleSpec, RuleKindSpec, Severity};

use crate::config::{FieldTable, InvalidSpec, PipelineConfig};
use crate::detectors::DetectorState;
use crate::features::FeatureValues;
pub use baseline::Baseline;
use baseline::History;
pub use detector::Detector;
pub use ensemble::{Ensemble, EnsembleMember};
pub use expression::Expression;
pub use model::Model;
use per_event::Alarm;
use scope::Scope;
pub use threshold::Threshold;

/// A rule that cannot run in this pipeline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("DetectionRule {rule}: {error}")]
pub struct RuleError {
    /// `metadata.name` of the rule.
    pub rule: String,
    /// The offending field and why.
    pub error: InvalidSpec,
}

/// What a rule tests: one variant per kind, each defined in its own module.
#[derive(Debug)]
pub enum RuleKind {
    /// `<field>.<feature> <op> <value>`.
    Threshold(Threshold),
    /// The feature against its own trailing history.
    Baseline(Baseline),
    /// A CEL condition.
    Expression(Box<Expression>),
    /// An AnomalyModel; its windows are scored outside the core ([`crate::model`]).
    Model(Model),
    /// A per-event detector on one field ([`crate::detectors`]).
    Detector(Box<Detector>),
    /// Combines other rules' event scores.
    Ensemble(Box<Ensemble>),
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

/// Checks what can be checked without a pipeline: exactly one kind is set; that kind's own
/// settings (CEL parses and uses only the rule variables, durations and thresholds are in
/// range, a model rule's AnomalyModel is among `models`); `for` is not negative; label and
/// annotation templates parse.
///
/// # Errors
/// The first problem, with its field path.
pub fn validate_spec<'s>(
    spec: &'s DetectionRuleSpec,
    models: &[&AnomalyModel],
) -> Result<RuleKindSpec<'s>, InvalidSpec> {
    let kind = spec
        .kind()
        .map_err(|e| InvalidSpec::new("spec", e.to_string()))?;
    match kind {
        RuleKindSpec::Threshold(t) => threshold::validate(t)?,
        RuleKindSpec::Baseline(b) => baseline::validate(b)?,
        RuleKindSpec::Expression(e) => expression::validate(e)?,
        RuleKindSpec::Model(m) => model::validate(m, models)?,
        RuleKindSpec::Detector(d) => detector::validate(d).map(drop)?,
        RuleKindSpec::Ensemble(e) => ensemble::compile(e).map(drop)?,
    }
    if let Err(e) = spec.selector() {
        return Err(InvalidSpec::new("spec.pipelineSelector", e.to_string()));
    }
    if spec.for_ms() < 0 {
        return Err(InvalidSpec::new("spec.for", "must not be negative"));
    }
    for (k, v) in &spec.labels {
        alert::check_template(v).map_err(|r| InvalidSpec::new(format!("spec.labels.{k}"), r))?;
    }
    for (k, v) in &spec.annotations {
        alert::check_template(v)
            .map_err(|r| InvalidSpec::new(format!("spec.annotations.{k}"), r))?;
    }
    Ok(kind)
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
    /// The key's reference data attributes (`spec.enrichment`), if the pipeline has any.
    pub attributes: Option<&'a std::collections::BTreeMap<String, String>>,
    /// Composite KPIs of a group window (`spec.groups.kpis`): `kpi.<name>` in CEL; empty for
    /// key windows.
    pub kpis: &'a [(String, f64)],
}

impl WindowView<'_> {
    /// Features of a field, if it had events in the window.
    pub fn field(&self, id: u16) -> Option<&FeatureValues> {
        self.fields.iter().find(|(f, _)| *f == id).map(|(_, v)| v)
    }

    /// One feature of a field, if the field had events in the window and the feature is
    /// defined (not NaN).
    pub fn feature(&self, id: u16, feature: vigil_api::v1alpha1::Feature) -> Option<f64> {
        self.field(id)
            .map(|f| f.get(feature))
            .filter(|x| !x.is_nan())
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
    /// No match, score 0, no value.
    pub const NONE: Evaluation = Evaluation {
        matched: false,
        score: 0.0,
        value: f64::NAN,
    };
}

/// Per-(rule, key) state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RuleState {
    /// Event time (window end) since which the condition has held.
    pub pending_since: Option<i64>,
    /// Event time since which the alert has been firing.
    pub firing_since: Option<i64>,
    /// End of the last window evaluated (windows are evaluated in end order).
    pub last_end: Option<i64>,
    /// Score of the last window evaluated (what a window rule contributes to an ensemble).
    pub last_window_score: Option<f64>,
    pub(crate) history: Vec<History>,
    pub(crate) detector: Option<Box<DetectorState>>,
    /// Per-event rules: (pane start, highest alarm score, value at it) of recent panes, for the
    /// window evaluation; at most [`MAX_PANES`].
    pub(crate) panes: VecDeque<(i64, f64, f64)>,
    /// Per-event rules: no alarm before this event time (cooldown).
    pub(crate) cooldown_until: Option<i64>,
    /// Model rules: the key's window sequence and scoring progress.
    pub model: Option<Box<crate::model::ModelState>>,
}

/// Panes of event scores kept per (rule, key); older ones are dropped first.
pub const MAX_PANES: usize = 4096;

impl RuleState {
    /// Whether it holds nothing (a rule that has not seen the key yet).
    pub fn is_empty(&self) -> bool {
        self.pending_since.is_none()
            && self.firing_since.is_none()
            && self.last_end.is_none()
            && self.last_window_score.is_none()
            && self.history.is_empty()
            && self.detector.is_none()
            && self.panes.is_empty()
            && self.cooldown_until.is_none()
            && self.model.is_none()
    }

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

impl CompiledRule {
    /// Compiles a rule against a pipeline: [`validate_spec`], then the window tier and each
    /// kind's pipeline checks. Fields named by the rule are interned into `table` when it is
    /// open (narrow events), so they resolve before their first event. Ensemble members are
    /// resolved by [`RuleSet::compile`].
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
        Self::compile_spec(&rule.spec, cfg, table, models)
            .map_err(|error| RuleError {
                rule: name.clone(),
                error,
            })
            .map(|mut c| {
                c.name = name;
                c
            })
    }

    fn compile_spec(
        s: &DetectionRuleSpec,
        cfg: &PipelineConfig,
        table: &mut FieldTable,
        models: &[&AnomalyModel],
    ) -> Result<Self, InvalidSpec> {
        let kind = validate_spec(s, models)?;
        let tier = cfg.tier(&s.window).ok_or_else(|| {
            let names: Vec<_> = cfg.tiers.iter().map(|t| t.name.as_str()).collect();
            InvalidSpec::new(
                "spec.window",
                format!(
                    "window `{}` is not one of the pipeline's windows ({})",
                    s.window,
                    names.join(", ")
                ),
            )
        })?;
        if let Some(g) = &s.group {
            let names: Vec<&str> = cfg
                .groups
                .iter()
                .flat_map(|c| &c.by)
                .map(|b| b.name.as_str())
                .collect();
            if !names.contains(&g.as_str()) {
                return Err(InvalidSpec::new(
                    "spec.group",
                    if names.is_empty() {
                        format!("grouping `{g}`: the pipeline declares no groups (spec.groups)")
                    } else {
                        format!(
                            "grouping `{g}` is not one of the pipeline's ({})",
                            names.join(", ")
                        )
                    },
                ));
            }
            if !matches!(
                kind,
                RuleKindSpec::Threshold(_)
                    | RuleKindSpec::Baseline(_)
                    | RuleKindSpec::Expression(_)
            ) {
                return Err(InvalidSpec::new(
                    "spec.group",
                    format!(
                        "group windows are read by threshold, baseline and expression rules, not {} rules",
                        kind.name().field()
                    ),
                ));
            }
        }
        // Group windows also have `keys` (member count): a group rule compiled against the
        // key stage's table (the operator's and the supervisor's checks) sees it too.
        let mut with_keys;
        let table = if s.group.is_some() && table.get(crate::groups::KEYS_FIELD).is_none() {
            with_keys = table.clone();
            with_keys.intern_always(crate::groups::KEYS_FIELD);
            &mut with_keys
        } else {
            table
        };
        let mut scope = Scope {
            cfg,
            table,
            models,
            tier,
        };
        let kind = match kind {
            RuleKindSpec::Threshold(t) => RuleKind::Threshold(Threshold::compile(t, &mut scope)?),
            RuleKindSpec::Baseline(b) => RuleKind::Baseline(Baseline::compile(b, &mut scope)?),
            RuleKindSpec::Expression(e) => {
                RuleKind::Expression(Box::new(Expression::compile(e, &mut scope)?))
            }
            RuleKindSpec::Model(m) => RuleKind::Model(Model::compile(m, &s.window, &mut scope)?),
            RuleKindSpec::Detector(d) => {
                RuleKind::Detector(Box::new(Detector::compile(d, &mut scope)?))
            }
            RuleKindSpec::Ensemble(e) => RuleKind::Ensemble(Box::new(ensemble::compile(e)?)),
        };
        // Template names against the pipeline's fields (unknown for narrow events that keep
        // every parameter).
        let fields: Option<Vec<&str>> = match &cfg.layout {
            crate::config::Layout::Wide { fields } => {
                Some(fields.iter().map(|f| f.0.as_str()).collect())
            }
            crate::config::Layout::Narrow { allowed, .. } if !allowed.is_empty() => {
                Some(allowed.iter().map(String::as_str).collect())
            }
            crate::config::Layout::Narrow { .. } => None,
        };
        let fields = fields.map(|mut f| {
            if s.group.is_some() {
                f.push(crate::groups::KEYS_FIELD);
            }
            f
        });
        if let Some(fields) = fields {
            for (what, map) in [("labels", &s.labels), ("annotations", &s.annotations)] {
                for (k, v) in map {
                    alert::check_template_names(v, &fields, &cfg.features)
                        .map_err(|r| InvalidSpec::new(format!("spec.{what}.{k}"), r))?;
                }
            }
        }
        Ok(Self {
            name: String::new(),
            tier,
            for_ms: s.for_ms(),
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
            RuleKind::Threshold(t) => t.evaluate(w),
            RuleKind::Baseline(b) => b.evaluate(w, state),
            RuleKind::Expression(e) => e.evaluate(w, &mut state.history),
            RuleKind::Model(m) => m.evaluate(state),
            RuleKind::Detector(d) => d.alarm.evaluate(w, state),
            RuleKind::Ensemble(e) => e.alarm.evaluate(w, state),
        }
    }

    /// Records the window in the rule's history (after [`Self::evaluate`], so a window is never
    /// part of its own baseline).
    pub fn observe(&self, w: &WindowView<'_>, state: &mut RuleState) {
        match &self.kind {
            RuleKind::Baseline(b) => b.observe(w, state),
            RuleKind::Expression(e) => e.observe(w, &mut state.history),
            RuleKind::Threshold(_) | RuleKind::Model(_) => {}
            RuleKind::Detector(d) => d.alarm.observe(w, state),
            RuleKind::Ensemble(e) => e.alarm.observe(w, state),
        }
    }

    /// The field whose features an alert of this rule carries, if the rule has one.
    pub fn field(&self) -> Option<u16> {
        match &self.kind {
            RuleKind::Threshold(t) => Some(t.field),
            RuleKind::Baseline(b) => Some(b.field),
            RuleKind::Detector(d) => Some(d.field),
            RuleKind::Expression(_) | RuleKind::Model(_) | RuleKind::Ensemble(_) => None,
        }
    }

    /// Whether the rule scores events one by one (detectors and ensembles) rather than windows.
    pub fn is_per_event(&self) -> bool {
        self.alarm().is_some()
    }

    fn alarm(&self) -> Option<&Alarm> {
        match &self.kind {
            RuleKind::Detector(d) => Some(&d.alarm),
            RuleKind::Ensemble(e) => Some(&e.alarm),
            _ => None,
        }
    }

    /// The alarm threshold of a per-event rule.
    pub fn alarm_threshold(&self) -> Option<f64> {
        self.alarm().map(|a| a.threshold)
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
        match &self.kind {
            RuleKind::Detector(d) => d.observe_event(state, seed, t_ms, x),
            _ => None,
        }
    }

    /// An ensemble rule: combines its members' scores for the current event (`scores` indexed
    /// like the rule set; `None`: no score). `None` for other rules.
    pub fn combine(&self, scores: &[Option<f64>]) -> Option<f64> {
        match &self.kind {
            RuleKind::Ensemble(e) => Some(e.combine(scores)),
            _ => None,
        }
    }

    /// A per-event rule: turns the event's score into its alarm score and records it for the
    /// window evaluation ([`per_event::Alarm::record`]). Other rules return `score`.
    pub fn record_event_score(
        &self,
        state: &mut RuleState,
        pane_ms: i64,
        t_ms: i64,
        score: f64,
        value: f64,
    ) -> f64 {
        match self.alarm() {
            Some(a) => a.record(state, pane_ms, t_ms, score, value),
            None => score,
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
    /// Compiles every rule of a pipeline; invalid ones are returned as errors and left out, so
    /// one bad rule does not stop the others. Besides each rule's own compile: a duplicate name
    /// is an error, and so is an ensemble whose member is absent, invalid or an ensemble.
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
