//! Alert construction, in one place for window rules and model rules: the alert record of a
//! lifecycle transition with its labels (the rule's templates, then `severity`, `rule`, `key`
//! and any extra ones such as `model`) and annotations.

use super::Counters;
use crate::rules::alert::{self, Alert, AlertStatus};
use crate::rules::{CompiledRule, Evaluation, RuleState};

/// Where and when a transition happened.
pub(super) struct Transition<'a> {
    /// Pipeline name.
    pub pipeline: &'a str,
    /// Tier name.
    pub window: &'a str,
    /// Entity key.
    pub key: &'a str,
    /// Window start, epoch ms.
    pub start: i64,
    /// Window end (exclusive), epoch ms: the transition's event time.
    pub end: i64,
    /// Processing time, epoch ms.
    pub now_ms: i64,
    /// The key's reference data attributes, for the templates.
    pub attributes: Option<&'a std::collections::BTreeMap<String, String>>,
}

/// Advances `rule`'s alert lifecycle for `key` with `eval` at the window's end; on a
/// transition builds its alert (features and extra labels from the caller) and counts it.
/// Ensemble members only feed their ensemble and never alert.
pub(super) fn step(
    rule: &CompiledRule,
    state: &mut RuleState,
    eval: &Evaluation,
    at: &Transition<'_>,
    counters: &mut Counters,
    features: impl FnOnce() -> Vec<(String, f64)>,
    extra_labels: &[(&str, &str)],
) -> Option<Alert> {
    if rule.ensemble_member {
        return None;
    }
    let status = alert::step(rule, state, eval, at.end)?;
    match status {
        AlertStatus::Firing => counters.alerts_firing += 1,
        AlertStatus::Resolved => counters.alerts_resolved += 1,
    }
    let mut a = Alert {
        status,
        fingerprint: alert::fingerprint(at.pipeline, &rule.name, at.key),
        pipeline: at.pipeline.to_string(),
        rule: rule.name.clone(),
        key: at.key.to_string(),
        severity: rule.severity,
        window: at.window.to_string(),
        window_start: at.start,
        window_end: at.end,
        value: Some(eval.value).filter(|v| !v.is_nan()),
        score: eval.score,
        features: features().into_iter().collect(),
        labels: Default::default(),
        annotations: Default::default(),
        active_since: state.pending_since.unwrap_or(at.end),
        event_time: at.end,
        detection_time: at.now_ms,
        trace: None,
    };
    let mut labels = alert::render_with(&rule.labels, &a, at.attributes);
    labels.insert("severity".into(), rule.severity.as_str().into());
    labels.insert("rule".into(), rule.name.clone());
    labels.insert("key".into(), a.key.clone());
    for (k, v) in extra_labels {
        labels.insert((*k).into(), (*v).into());
    }
    a.annotations = alert::render_with(&rule.annotations, &a, at.attributes);
    a.labels = labels;
    Some(a)
}
