//! The alert lifecycle per (rule, key) — inactive -> pending -> firing -> resolved, with `for`
//! measured in event time — and the alert record written to the alerts topic as a CloudEvents
//! 1.0 JSON event (structured mode).

use std::collections::BTreeMap;

use cloudevents::{EventBuilder, EventBuilderV10};
use serde::Serialize;
use vigil_api::v1alpha1::Severity;

use super::{CompiledRule, Evaluation, RuleState};

/// Alert status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The condition has held for the rule's `for` duration.
    Firing,
    /// A firing condition stopped holding.
    Resolved,
}

/// One alert transition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Stable id of the (pipeline, rule, key) series: UUID v5 of `pipeline/rule/key`.
    pub fingerprint: String,
    /// StreamPipeline name.
    pub pipeline: String,
    /// DetectionRule name.
    pub rule: String,
    /// Entity key.
    pub key: String,
    /// Severity.
    pub severity: Severity,
    /// Window tier name.
    pub window: String,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Window end (exclusive), epoch ms.
    pub window_end: i64,
    /// The tested value (NaN-free: absent when undefined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Anomaly score in [0, 1].
    pub score: f64,
    /// Features of the window, `<field>.<feature>` -> value.
    pub features: BTreeMap<String, f64>,
    /// Rendered labels (rule labels plus `severity`, `rule`, `key`).
    pub labels: BTreeMap<String, String>,
    /// Rendered annotations.
    pub annotations: BTreeMap<String, String>,
    /// Event time since which the condition held, epoch ms.
    pub active_since: i64,
    /// Event time of the alert: the window end, epoch ms.
    pub event_time: i64,
    /// Processing time when the alert was produced, epoch ms.
    pub detection_time: i64,
    /// The trace of a traced event in the alert's window (not part of the record: the sink
    /// writes it as the `traceparent` header and CloudEvents extension).
    #[serde(skip)]
    pub trace: Option<crate::TraceParent>,
}

/// Stable fingerprint of a (pipeline, rule, key) alert series.
pub fn fingerprint(pipeline: &str, rule: &str, key: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("vigil:{pipeline}/{rule}/{key}").as_bytes(),
    )
    .to_string()
}

/// Advances the lifecycle of one (rule, key) with the evaluation of the window ending at
/// `window_end`. Returns the transition to emit, if any. Firing is emitted once; while firing,
/// further matches emit nothing (no re-fire storm).
pub fn step(
    rule: &CompiledRule,
    state: &mut RuleState,
    eval: &Evaluation,
    window_end: i64,
) -> Option<AlertStatus> {
    if eval.matched {
        let since = *state.pending_since.get_or_insert(window_end);
        if state.firing_since.is_none() && window_end - since >= rule.for_ms {
            state.firing_since = Some(window_end);
            return Some(AlertStatus::Firing);
        }
        None
    } else {
        state.pending_since = None;
        state.firing_since.take().map(|_| AlertStatus::Resolved)
    }
}

/// Checks that a label or annotation template parses.
///
/// # Errors
/// The template engine's message.
pub fn check_template(t: &str) -> Result<(), String> {
    minijinja::Environment::new()
        .template_from_str(t)
        .map(|_| ())
        .map_err(|e| format!("template does not parse: {e}"))
}

/// Stands for the reference data attributes when templates are checked: every name exists.
#[derive(Debug)]
struct AnyAttribute;

impl minijinja::value::Object for AnyAttribute {
    fn get_value(self: &std::sync::Arc<Self>, _key: &minijinja::Value) -> Option<minijinja::Value> {
        Some(minijinja::Value::from("x"))
    }
}

/// Checks that a label or annotation template only names what an alert of a pipeline with
/// these `fields` and `features` has (a misspelt field would otherwise render as the template's
/// source at run time): it is rendered with every `<field>.<feature>` and the alert variables
/// set, undefined names being errors.
///
/// # Errors
/// The template engine's message, with the fields the pipeline has.
pub fn check_template_names(
    t: &str,
    fields: &[&str],
    features: &[vigil_api::v1alpha1::Feature],
) -> Result<(), String> {
    let mut ctx = serde_json::Map::new();
    for f in fields {
        let values: serde_json::Map<String, serde_json::Value> = features
            .iter()
            .map(|x| (x.as_str().to_string(), 1.0.into()))
            .collect();
        ctx.insert((*f).to_string(), values.into());
    }
    for k in ["key", "rule", "pipeline", "window", "severity"] {
        ctx.insert(k.into(), "x".into());
    }
    ctx.insert("observed".into(), 1.0.into());
    ctx.insert("score".into(), 1.0.into());
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Reference data attributes are whatever the data holds: any name is accepted.
    let mut ctx = minijinja::Value::from_serialize(serde_json::Value::Object(ctx));
    ctx = minijinja::context! { attributes => minijinja::Value::from_object(AnyAttribute), ..ctx };
    env.render_str(t, ctx)
        .map(drop)
        .map_err(|e| {
            format!(
                "template names something an alert does not have ({e}); it has key, rule, pipeline, window, severity, observed, score, attributes.<name> and <field>.<feature> for the fields {}",
                fields.join(", ")
            )
        })
}

/// Renders label/annotation templates with `key`, `rule`, `pipeline`, `window`, `severity`,
/// `observed`, `score` and `<field>.<feature>`. A template that fails renders as its source.
pub fn render(templates: &BTreeMap<String, String>, alert: &Alert) -> BTreeMap<String, String> {
    render_with(templates, alert, None)
}

/// [`render`] with the key's reference data as `attributes` (`{{ attributes.site }}`).
pub fn render_with(
    templates: &BTreeMap<String, String>,
    alert: &Alert,
    attributes: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut fields: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (k, v) in &alert.features {
        if let Some((field, feature)) = k.split_once('.') {
            fields
                .entry(field.to_string())
                .or_default()
                .insert(feature.to_string(), *v);
        }
    }
    let mut ctx = serde_json::to_value(&fields).unwrap_or_default();
    if let Some(m) = ctx.as_object_mut() {
        m.insert("key".into(), alert.key.clone().into());
        m.insert("rule".into(), alert.rule.clone().into());
        m.insert("pipeline".into(), alert.pipeline.clone().into());
        m.insert("window".into(), alert.window.clone().into());
        m.insert("severity".into(), alert.severity.as_str().into());
        m.insert("observed".into(), alert.value.into());
        m.insert("score".into(), alert.score.into());
        m.insert(
            "attributes".into(),
            serde_json::to_value(attributes.cloned().unwrap_or_default()).unwrap_or_default(),
        );
    }
    let env = minijinja::Environment::new();
    templates
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                env.render_str(t, &ctx).unwrap_or_else(|_| t.clone()),
            )
        })
        .collect()
}

/// CloudEvents `type` of an alert.
pub fn event_type(status: AlertStatus) -> &'static str {
    match status {
        AlertStatus::Firing => "dev.vigil.alert.firing",
        AlertStatus::Resolved => "dev.vigil.alert.resolved",
    }
}

impl Alert {
    /// Deterministic event id: the same transition of the same window always gets the same id,
    /// so consumers can drop duplicates after an at-least-once replay.
    pub fn event_id(&self) -> String {
        format!(
            "{}-{}-{}",
            self.fingerprint,
            self.window_end,
            event_type(self.status).rsplit('.').next().unwrap_or("")
        )
    }

    /// The alert as a CloudEvents 1.0 structured-mode JSON document, with the `traceparent`
    /// extension (CloudEvents Distributed Tracing) of its trace, if it has one.
    pub fn to_cloudevent_json(&self) -> Vec<u8> {
        self.to_cloudevent_json_traced(self.trace.as_deref())
    }

    /// [`Self::to_cloudevent_json`] with `traceparent` as the trace extension (the sink's
    /// producer span).
    pub fn to_cloudevent_json_traced(&self, traceparent: Option<&str>) -> Vec<u8> {
        let time = chrono::DateTime::from_timestamp_millis(self.detection_time).unwrap_or_default();
        let mut builder = EventBuilderV10::new();
        if let Some(tp) = traceparent {
            builder = builder.extension("traceparent", tp);
        }
        let event = builder
            .id(self.event_id())
            .source(format!("/vigil/pipelines/{}", self.pipeline))
            .ty(event_type(self.status))
            .subject(self.key.clone())
            .time(time)
            .data(
                "application/json",
                serde_json::to_value(self).unwrap_or_default(),
            )
            .build()
            .expect("id, source and type are always set");
        serde_json::to_vec(&event).unwrap_or_default()
    }
}
