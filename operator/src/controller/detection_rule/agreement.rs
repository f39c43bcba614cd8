//! The operator's verdict on a rule (its `Accepted` condition, via [`super::check`], and what
//! the StreamPipeline controller renders) equals the detector's (`Engine::from_resources`, what
//! `vigil run` does with `rules.yaml`): one accepted, both accepted; one rejected, both rejected
//! with the same field path. The cases come from an exhaustive `match` over
//! [`RuleKindName::ALL`], so a new rule kind does not compile until it has cases here.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{
    AnomalyModel, DetectionRule, DetectionRuleSpec, RuleKindName, StreamPipeline,
};
use vigil_core::engine::{Engine, EngineOptions};

use super::dereference::Dereferenced;
use super::status::Outcome;

const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: p, namespace: ns}
spec:
  source: {kafka: {topics: [t], consumerGroup: g, bootstrapServers: "k:9092"}}
  format: {keyField: id, eventTime: {field: timestamp}, wide: {fields: [{name: value}]}}
  windows: [{name: fast, size: 30s, slide: 15s}, {name: analysis, size: 300s, slide: 60s}]
  features: [mean, max, count, p99]
  sinks: {alerts: {topic: alerts}}
---
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: iforest, namespace: ns}
spec:
  revision: "1"
  artifact: {uri: "configmap://iforest/model.onnx", sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
  input: {tensor: X, window: analysis, features: [value.mean, value.max]}
  output: {tensor: scores, anomalousWhen: Below, threshold: 0.0}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: member, namespace: ns}
spec: {window: fast, detector: {field: value, changePoint: {}}}
"#;

/// `(spec of rule "r", the field path the verdict names; None: accepted)`.
fn cases(kind: RuleKindName) -> Vec<(&'static str, Option<&'static str>)> {
    match kind {
        RuleKindName::Threshold => vec![
            (
                "{window: fast, threshold: {field: value, feature: mean, operator: '>', value: 1}}",
                None,
            ),
            (
                "{window: slow, threshold: {field: value, feature: mean, operator: '>', value: 1}}",
                Some("spec.window"),
            ),
            (
                "{window: fast, threshold: {field: cpu, feature: mean, operator: '>', value: 1}}",
                Some("spec.threshold.field"),
            ),
            (
                "{window: fast, threshold: {field: value, feature: stddev, operator: '>', value: 1}}",
                Some("spec.threshold.feature"),
            ),
            (
                "{window: fast, threshold: {field: value, feature: mean, operator: '>', value: .inf}}",
                Some("spec.threshold.value"),
            ),
            (
                "{window: fast, threshold: {field: value, feature: mean, operator: '>', value: 1}, annotations: {summary: '{{ value.mean'}}",
                Some("spec.annotations.summary"),
            ),
        ],
        RuleKindName::Baseline => vec![
            (
                "{window: analysis, baseline: {field: value, method: ZScore, history: 1h, threshold: 3}}",
                None,
            ),
            (
                "{window: analysis, baseline: {field: value, method: Mad, history: 5m, threshold: 3}}",
                Some("spec.baseline.history"),
            ),
            (
                "{window: analysis, baseline: {field: value, feature: p99, method: Iqr, history: 2h, threshold: 1.5, minSamples: 200}}",
                Some("spec.baseline.history"),
            ),
            (
                "{window: analysis, baseline: {field: nope, method: Iqr, history: 2h, threshold: 1.5}}",
                Some("spec.baseline.field"),
            ),
        ],
        RuleKindName::Expression => vec![
            (
                "{window: fast, expression: {expr: 'features.value.mean > 2.0 && baseline.value.mad > 0.0 && event.value > 1.0 && key != \"\"'}}",
                None,
            ),
            (
                "{window: fast, expression: {expr: '[1, 2].exists(x, x > 1) && features.value.max > 0.0'}}",
                None,
            ),
            (
                "{window: fast, expression: {expr: 'features.value.mean >'}}",
                Some("spec.expression.expr"),
            ),
            (
                "{window: fast, expression: {expr: 'feature.value.mean > 1.0'}}",
                Some("spec.expression.expr"),
            ),
            (
                "{window: fast, expression: {expr: 'features.cpu.mean > 1.0'}}",
                Some("spec.expression.expr"),
            ),
            (
                "{window: fast, expression: {expr: 'features.value.stddev > 1.0'}}",
                Some("spec.expression.expr"),
            ),
            (
                "{window: fast, expression: {expr: 'true', score: 'baseline.value.p5'}}",
                Some("spec.expression.score"),
            ),
        ],
        RuleKindName::Model => vec![
            ("{window: analysis, model: {modelRef: iforest}}", None),
            (
                "{window: analysis, model: {modelRef: lstm}}",
                Some("spec.model.modelRef"),
            ),
            (
                "{window: fast, model: {modelRef: iforest}}",
                Some("spec.window"),
            ),
        ],
        RuleKindName::Detector => vec![
            (
                "{window: fast, detector: {field: value, seasonal: {}}}",
                None,
            ),
            (
                "{window: fast, detector: {field: value, randomCutForest: {shingleSize: 4}, threshold: 0.4, cooldown: 1h}}",
                None,
            ),
            (
                "{window: fast, detector: {field: nope, changePoint: {}}}",
                Some("spec.detector.field"),
            ),
            (
                "{window: fast, detector: {field: value, changePoint: {}, threshold: 2}}",
                Some("spec.detector.threshold"),
            ),
            (
                "{window: fast, detector: {field: value, contextual: {levels: 8, order: 1}}}",
                None,
            ),
            (
                "{window: fast, detector: {field: value, contextual: {order: 5}}}",
                Some("spec.detector.contextual.order"),
            ),
            (
                "{window: fast, detector: {field: value}}",
                Some("spec.detector"),
            ),
        ],
        RuleKindName::Ensemble => vec![
            (
                "{window: fast, ensemble: {members: [{rule: member}], combine: Max}}",
                None,
            ),
            (
                "{window: fast, ensemble: {members: [{rule: ghost}], combine: Max}}",
                Some("spec.ensemble.members[0].rule"),
            ),
            (
                "{window: fast, ensemble: {members: [{rule: member}], combine: Max, votes: 1}}",
                Some("spec.ensemble.votes"),
            ),
        ],
    }
}

/// The pipeline, the other rules of its namespace and the models.
type Fixture = (
    Arc<StreamPipeline>,
    Vec<Arc<DetectionRule>>,
    BTreeMap<String, Arc<AnomalyModel>>,
);

fn fixture() -> Fixture {
    let mut m = Manifests::default();
    m.add_str("agreement", PIPELINE).unwrap();
    let models = m
        .models
        .into_iter()
        .map(|x| (x.name_any(), Arc::new(x)))
        .collect();
    (
        Arc::new(m.pipelines.remove(0)),
        m.rules.into_iter().map(Arc::new).collect(),
        models,
    )
}

/// The operator's verdict on rule `r` for pipeline `p`: `Accepted` and the rendered config.
fn operator_verdict(rule: &DetectionRule) -> Result<(), String> {
    let (pipeline, others, models) = fixture();
    let mut all = others.clone();
    all.push(Arc::new(rule.clone()));
    let deref = Dereferenced {
        pipelines: vec![pipeline.clone()],
        rules: all.clone(),
        models: models.clone(),
    };
    let accepted = match super::check(rule, &deref) {
        Outcome::Invalid(e) => Err(e.field),
        Outcome::Checked(per) => {
            assert_eq!(per.len(), 1);
            per[0].1.clone().map_err(|e| e.field)
        }
    };
    // The StreamPipeline controller renders the rule exactly when it is accepted.
    let sp = crate::controller::stream_pipeline::dereference::Dereferenced {
        rules: all,
        models,
        partitions: crate::controller::stream_pipeline::dereference::Partitions::Unknown(
            "not looked up".into(),
        ),
    };
    let v = crate::controller::stream_pipeline::validate::validate(&pipeline, &sp, None).unwrap();
    let rendered = v.rules.iter().any(|x| x.name_any() == "r");
    let rejected = v.rejected_rules.iter().find(|x| x.name == "r");
    assert_eq!(
        rendered,
        accepted.is_ok(),
        "rendered vs Accepted for {:?}",
        rule.spec
    );
    if let (Err(field), Some(rej)) = (&accepted, rejected) {
        assert_eq!(&rej.error.field, field);
    }
    accepted
}

/// The detector's verdict: what `vigil run` compiles from the same files.
fn detector_verdict(rule: &DetectionRule) -> Result<(), String> {
    let (pipeline, others, models) = fixture();
    let mut rules: Vec<&DetectionRule> = others.iter().map(Arc::as_ref).collect();
    rules.push(rule);
    let models: Vec<&AnomalyModel> = models.values().map(Arc::as_ref).collect();
    let (_, errors) =
        Engine::from_resources(&pipeline, &rules, &models, EngineOptions::default()).unwrap();
    match errors.into_iter().find(|e| e.rule == "r") {
        Some(e) => Err(e.error.field),
        None => Ok(()),
    }
}

#[test]
fn operator_and_detector_agree_on_every_rule_kind() {
    for kind in RuleKindName::ALL {
        let cases = cases(kind);
        assert!(cases.iter().any(|c| c.1.is_none()), "{kind}: no valid case");
        assert!(
            cases.iter().any(|c| c.1.is_some()),
            "{kind}: no invalid case"
        );
        for (spec, want) in cases {
            let spec: DetectionRuleSpec = serde_norway::from_str(spec).unwrap();
            assert_eq!(spec.kind().unwrap().name(), kind, "{spec:?}");
            let mut rule = DetectionRule::new("r", spec);
            rule.metadata.namespace = Some("ns".into());
            let operator = operator_verdict(&rule);
            let detector = detector_verdict(&rule);
            assert_eq!(operator, detector, "{kind}: {:?}", rule.spec);
            assert_eq!(operator.err().as_deref(), want, "{kind}: {:?}", rule.spec);
        }
    }
}
