//! Pure validation of DetectionRules. The operator adds no check of its own: a rule alone is
//! checked with [`vigil_core::rules::validate_spec`], and against a pipeline the pipeline's
//! whole selection is compiled with [`vigil_core::rules::RuleSet::compile`], the same call a
//! detector makes when it loads `rules.yaml`. So a rule's `Accepted` condition, the rules the
//! StreamPipeline controller renders, and what detectors run cannot disagree (ensemble members,
//! duplicate names, windows, fields, features, CEL references, history vs `minSamples`, model
//! contracts, templates).

use std::collections::BTreeMap;
use std::sync::Arc;

use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, DetectionRuleSpec, StreamPipeline};
use vigil_core::config::{FieldTable, PipelineConfig};
use vigil_core::rules::{RuleSet, validate_spec};

use crate::controller::FieldError;

fn model_refs(models: &BTreeMap<String, Arc<AnomalyModel>>) -> Vec<&AnomalyModel> {
    models.values().map(Arc::as_ref).collect()
}

/// The checks that need no pipeline ([`validate_spec`]): one kind, that kind's settings, CEL,
/// templates, the selector, and a model rule's AnomalyModel among `models` (the rule's
/// namespace, by name).
///
/// # Errors
/// The first problem found, with its field path.
pub fn validate_rule(
    spec: &DetectionRuleSpec,
    models: &BTreeMap<String, Arc<AnomalyModel>>,
) -> Result<(), FieldError> {
    validate_spec(spec, &model_refs(models))
        .map(drop)
        .map_err(|e| FieldError::new(e.field, e.reason))
}

/// A pipeline's spec as the detector validates it.
///
/// # Errors
/// The detector's verdict when the pipeline spec itself cannot run.
pub fn pipeline_config(pipeline: &StreamPipeline) -> Result<PipelineConfig, FieldError> {
    PipelineConfig::from_resource(pipeline).map_err(|e| FieldError::new(e.field, e.reason))
}

/// The verdict on every rule that selects one pipeline: rule name -> accepted or why not.
pub type Verdicts = BTreeMap<String, Result<(), FieldError>>;

/// Compiles the rules that select a pipeline as its detectors will ([`RuleSet::compile`]).
///
/// # Errors
/// The pipeline's own spec cannot run ([`pipeline_config`]).
pub fn validate_rules_for_pipeline(
    pipeline: &StreamPipeline,
    rules: &[Arc<DetectionRule>],
    models: &BTreeMap<String, Arc<AnomalyModel>>,
) -> Result<Verdicts, FieldError> {
    let cfg = pipeline_config(pipeline)?;
    let mut table = FieldTable::for_layout(&cfg.layout);
    let refs: Vec<&DetectionRule> = rules.iter().map(Arc::as_ref).collect();
    let (set, errors) = RuleSet::compile(&refs, &cfg, &mut table, &model_refs(models));
    let mut verdicts: Verdicts = set.rules.iter().map(|r| (r.name.clone(), Ok(()))).collect();
    for e in errors {
        // A duplicate name is reported against the name; the first rule keeps it.
        verdicts
            .entry(e.rule)
            .and_modify(|v| {
                if v.is_ok() && e.error.field != "metadata.name" {
                    *v = Err(FieldError::new(
                        e.error.field.clone(),
                        e.error.reason.clone(),
                    ));
                }
            })
            .or_insert_with(|| Err(FieldError::new(e.error.field, e.error.reason)));
    }
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::manifest::Manifests;

    const DOCS: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: nab}
spec:
  source: {kafka: {topics: [nab], consumerGroup: g}}
  format: {keyField: id, eventTime: {field: timestamp}, wide: {fields: [{name: value}]}}
  windows: [{name: fast, size: 30s, slide: 15s}, {name: analysis, size: 300s, slide: 60s}]
  features: [mean, max, count, p99]
  sinks: {alerts: {topic: alerts}}
---
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: iforest}
spec:
  revision: "1"
  artifact: {uri: "configmap://iforest/model.onnx", sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
  input: {tensor: X, window: analysis, features: [value.mean, value.max]}
  output: {tensor: scores, anomalousWhen: Below, threshold: 0.0}
"#;

    fn fixture() -> (StreamPipeline, BTreeMap<String, Arc<AnomalyModel>>) {
        let mut m = Manifests::default();
        m.add_str("fixture", DOCS).unwrap();
        let models = m
            .models
            .into_iter()
            .map(|m| (m.metadata.name.clone().unwrap(), Arc::new(m)))
            .collect();
        (m.pipelines.remove(0), models)
    }

    fn rule(spec: &str) -> DetectionRule {
        DetectionRule::new(
            "r",
            serde_norway::from_str::<DetectionRuleSpec>(spec).unwrap(),
        )
    }

    fn alone(pipeline: &StreamPipeline, rule: DetectionRule) -> Result<(), FieldError> {
        let models = fixture().1;
        validate_rules_for_pipeline(pipeline, &[Arc::new(rule)], &models).unwrap()["r"].clone()
    }

    fn check(spec: &str) -> Result<(), FieldError> {
        let (pipeline, models) = fixture();
        let rule = rule(spec);
        validate_rule(&rule.spec, &models)?;
        alone(&pipeline, rule)
    }

    #[test]
    fn valid_rules_pass() {
        check("{window: fast, threshold: {field: value, feature: mean, operator: '>', value: 1}}")
            .unwrap();
        check("{window: fast, expression: {expr: 'features.value.mean > 2.0 && features.value.p99 < 100.0'}}").unwrap();
        check("{window: fast, expression: {expr: 'baseline.value.mad > 0.0 && event.value > 1.0 && key != \"\"'}}").unwrap();
        check("{window: analysis, baseline: {field: value, method: ZScore, history: 1h, threshold: 3}}").unwrap();
        check("{window: analysis, model: {modelRef: iforest}, labels: {mean: '{{ value.mean }} on {{ key }}'}}").unwrap();
    }

    #[test]
    fn missing_window_names_field_and_choices() {
        let e = check(
            "{window: slow, threshold: {field: value, feature: mean, operator: '>', value: 1}}",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.window");
        assert!(
            e.message.contains("`slow`") && e.message.contains("fast, analysis"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_and_uncomputed_feature() {
        let e = check(
            "{window: fast, threshold: {field: cpu, feature: mean, operator: '>', value: 1}}",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.threshold.field");
        assert!(e.message.contains("`cpu`"), "{e}");
        let e = check(
            "{window: fast, threshold: {field: value, feature: stddev, operator: '>', value: 1}}",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.threshold.feature");
    }

    #[test]
    fn cel_parse_error_and_unknown_references() {
        let e = check("{window: fast, expression: {expr: 'features.value.mean >'}}").unwrap_err();
        assert_eq!(e.field, "spec.expression.expr");
        assert!(e.message.starts_with("CEL does not parse"), "{e}");
        assert!(!e.message.contains('\n'));
        let e =
            check("{window: fast, expression: {expr: 'feature.value.mean > 1.0'}}").unwrap_err();
        assert!(e.message.contains("unknown variable `feature`"), "{e}");
        let e = check("{window: fast, expression: {expr: 'features.cpu.mean > 1.0'}}").unwrap_err();
        assert!(e.message.contains("`cpu`"), "{e}");
        let e =
            check("{window: fast, expression: {expr: 'features.value.avg > 1.0'}}").unwrap_err();
        assert!(e.message.contains("unknown feature `avg`"), "{e}");
        let e = check("{window: fast, expression: {expr: 'true', score: 'baseline.value.p5'}}")
            .unwrap_err();
        assert_eq!(e.field, "spec.expression.score");
    }

    #[test]
    fn model_must_exist_and_match_window() {
        let e = check("{window: analysis, model: {modelRef: lstm}}").unwrap_err();
        assert_eq!(e.field, "spec.model.modelRef");
        assert!(e.message.contains("`lstm` not found"), "{e}");
        let e = check("{window: fast, model: {modelRef: iforest}}").unwrap_err();
        assert_eq!(e.field, "spec.window");
    }

    #[test]
    fn baseline_history_must_hold_min_samples() {
        let e = check(
            "{window: analysis, baseline: {field: value, method: Mad, history: 5m, threshold: 3}}",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.baseline.history");
        assert!(e.message.contains("fewer than minSamples 10"), "{e}");
    }

    #[test]
    fn templates_are_checked() {
        let e = check("{window: fast, threshold: {field: value, feature: mean, operator: '>', value: 1}, annotations: {summary: '{{ value.mean'}}").unwrap_err();
        assert!(e.field.contains("summary"), "{e}");
        check("{window: fast, threshold: {field: value, feature: mean, operator: '>', value: 1}, annotations: {summary: '{{ key }} at {{ value.mean | round(1) }}'}}").unwrap();
    }

    #[test]
    fn narrow_pipelines_without_parameter_list_accept_any_field() {
        let mut p: StreamPipeline = serde_norway::from_str(
            r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: gt}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {eventTime: {field: ts}, narrow: {parameterField: parameter, valueField: value.value}}
  windows: [{name: fast, size: 30s}]
  sinks: {alerts: {topic: alerts}}
"#,
        )
        .unwrap();
        let spec = rule(
            "{window: fast, threshold: {field: anything, feature: p99, operator: '>', value: 1}}",
        );
        alone(&p, spec.clone()).unwrap();
        p.spec.format.narrow.as_mut().unwrap().parameters = vec!["CurrentDownstream".into()];
        assert!(alone(&p, spec).is_err());
    }

    #[test]
    fn group_rules_are_judged_against_the_pipelines_groupings() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/cdn-regions.yaml"
        );
        let mut m = Manifests::default();
        m.add_file(std::path::Path::new(path)).unwrap();
        let p = m.pipelines[0].clone();
        let rules: Vec<Arc<DetectionRule>> = m.rules.iter().cloned().map(Arc::new).collect();
        let v = validate_rules_for_pipeline(&p, &rules, &BTreeMap::new()).unwrap();
        assert!(v.values().all(Result::is_ok), "{v:?}");
        assert!(v.contains_key("region-error-rate"));
        // A grouping the pipeline does not declare, and `keys` on a per-key rule.
        let bad = rule(
            "{window: minute, group: site, threshold: {field: errors, feature: sum, operator: '>', value: 1}}",
        );
        let e = alone(&p, bad).unwrap_err();
        assert_eq!(e.field, "spec.group");
        assert!(
            e.message.contains("not one of the pipeline's (region)"),
            "{e:?}"
        );
        let keys = rule(
            "{window: minute, threshold: {field: keys, feature: count, operator: '>', value: 1}}",
        );
        assert!(alone(&p, keys).is_err());
    }
}
