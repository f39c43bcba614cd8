//! Pure validation of a DetectionRule: on its own (its CEL expressions parse and use only the
//! rule variables, its model exists) and against each pipeline it selects. Against a pipeline
//! the rule is compiled with the detector's own compiler (`vigil_core::rules::CompiledRule`),
//! so the operator accepts exactly what detectors can run; the operator adds checks the
//! detector cannot make alone (references inside CEL, a model's feature contract, a baseline's
//! history long enough for `minSamples`). The StreamPipeline controller uses the same checks to
//! decide which rules go into a pipeline's `rules.yaml`, so a rule's `Accepted` condition and
//! the rendered configs always agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use vigil_api::v1alpha1::{
    AnomalyModel, DetectionRule, DetectionRuleSpec, Feature, StreamPipeline,
};
use vigil_core::config::{FieldTable, PipelineConfig};
use vigil_core::rules::CompiledRule;

use crate::controller::FieldError;

/// Variables a rule expression may use (see `ExpressionRule` in vigil-api).
pub const CEL_VARIABLES: [&str; 5] = ["key", "features", "baseline", "event", "window"];
/// Statistics of `baseline.<field>` in rule expressions.
pub const BASELINE_STATS: [&str; 7] = ["mean", "stddev", "median", "mad", "q1", "q3", "samples"];
/// Windows of history a baseline needs when `minSamples` is absent (vigil-api default).
pub const DEFAULT_MIN_SAMPLES: u32 = 10;

/// What rules are checked against: a pipeline's window tiers, numeric fields and features, and
/// the detector's validated form of it.
#[derive(Clone, Debug)]
pub struct PipelineShape {
    /// Pipeline name, for messages.
    pub name: String,
    /// Window tiers: name -> slide in milliseconds.
    pub windows: BTreeMap<String, i64>,
    /// Numeric field names; `None` when any name may occur (narrow events without a parameter
    /// list).
    pub fields: Option<BTreeSet<String>>,
    /// Features computed per field and window.
    pub features: Vec<Feature>,
    /// The pipeline as the detector validates it.
    pub config: PipelineConfig,
}

impl PipelineShape {
    /// The shape of a pipeline's spec.
    ///
    /// # Errors
    /// The detector's verdict when the pipeline spec itself cannot run.
    pub fn of(pipeline: &StreamPipeline) -> Result<Self, FieldError> {
        let config = PipelineConfig::from_resource(pipeline)
            .map_err(|e| FieldError::new(e.field, e.reason))?;
        let spec = &pipeline.spec;
        let fields = match (&spec.format.wide, &spec.format.narrow) {
            (Some(wide), _) => Some(wide.fields.iter().map(|f| f.name.clone()).collect()),
            (None, Some(narrow)) if !narrow.parameters.is_empty() => {
                Some(narrow.parameters.iter().cloned().collect())
            }
            _ => None,
        };
        Ok(PipelineShape {
            name: pipeline.metadata.name.clone().unwrap_or_default(),
            windows: spec
                .windows
                .iter()
                .map(|w| (w.name.clone(), w.slide_ms()))
                .collect(),
            fields,
            features: spec
                .features
                .clone()
                .unwrap_or_else(|| Feature::ALL.to_vec()),
            config,
        })
    }

    fn check_window(&self, field: &str, window: &str) -> Result<i64, FieldError> {
        self.windows.get(window).copied().ok_or_else(|| {
            FieldError::new(
                field,
                format!(
                    "window `{window}` is not a window of pipeline `{}` (windows: {})",
                    self.name,
                    join(self.windows.keys())
                ),
            )
        })
    }

    fn check_field(&self, path: &str, name: &str) -> Result<(), FieldError> {
        match &self.fields {
            Some(fields) if !fields.contains(name) => Err(FieldError::new(
                path,
                format!(
                    "field `{name}` is not a field of pipeline `{}` (fields: {})",
                    self.name,
                    join(fields.iter())
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_feature(&self, path: &str, feature: Feature) -> Result<(), FieldError> {
        if self.features.contains(&feature) {
            Ok(())
        } else {
            Err(FieldError::new(
                path,
                format!(
                    "feature `{feature}` is not computed by pipeline `{}` (spec.features: {})",
                    self.name,
                    join(self.features.iter())
                ),
            ))
        }
    }

    /// Checks a `<field>.<feature>` reference such as `value.mean`.
    fn check_field_feature(&self, path: &str, reference: &str) -> Result<(), FieldError> {
        let (field, feature) = reference.rsplit_once('.').ok_or_else(|| {
            FieldError::new(
                path,
                format!("`{reference}` is not of the form <field>.<feature>"),
            )
        })?;
        let feature: Feature = feature
            .parse()
            .map_err(|e: String| FieldError::new(path, format!("`{reference}`: {e}")))?;
        self.check_field(path, field)?;
        self.check_feature(path, feature)
    }
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Checks what can be checked without a pipeline: exactly one kind of rule is set, CEL parses,
/// templates are well formed, and a model rule's AnomalyModel exists in `models` (the rule's
/// namespace, by name).
///
/// # Errors
/// The first problem found, with its field path.
pub fn validate_rule(
    spec: &DetectionRuleSpec,
    models: &BTreeMap<String, Arc<AnomalyModel>>,
) -> Result<(), FieldError> {
    let kinds = [
        spec.threshold.is_some(),
        spec.baseline.is_some(),
        spec.expression.is_some(),
        spec.model.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(FieldError::new(
            "spec",
            "exactly one of threshold, baseline, expression or model must be set",
        ));
    }
    if let Some(expression) = &spec.expression {
        check_cel("spec.expression.expr", &expression.expr, None)?;
        if let Some(score) = &expression.score {
            check_cel("spec.expression.score", score, None)?;
        }
    }
    if let Some(baseline) = &spec.baseline
        && (baseline.history.is_negative()
            || vigil_api::v1alpha1::duration_ms(&baseline.history) == 0)
    {
        return Err(FieldError::new("spec.baseline.history", "must be positive"));
    }
    if let Some(model) = &spec.model
        && !models.contains_key(&model.model_ref)
    {
        return Err(FieldError::new(
            "spec.model.modelRef",
            format!(
                "AnomalyModel `{}` does not exist in this namespace",
                model.model_ref
            ),
        ));
    }
    Ok(())
}

/// Checks a rule against one pipeline it selects: first the detector's own compile (window,
/// fields, features, CEL, templates), then a baseline's history can hold `minSamples` windows,
/// the references inside CEL exist, and a model's feature contract can be computed from the
/// pipeline's windows.
///
/// # Errors
/// The first problem found, with its field path.
pub fn validate_rule_for_pipeline(
    rule: &DetectionRule,
    shape: &PipelineShape,
    models: &BTreeMap<String, Arc<AnomalyModel>>,
) -> Result<(), FieldError> {
    let spec = &rule.spec;
    let mut table = FieldTable::for_layout(&shape.config.layout);
    let model_refs: Vec<&AnomalyModel> = models.values().map(Arc::as_ref).collect();
    CompiledRule::compile(rule, &shape.config, &mut table, &model_refs)
        .map_err(|e| FieldError::new(e.error.field, e.error.reason))?;
    let slide_ms = shape.check_window("spec.window", &spec.window)?;
    if let Some(threshold) = &spec.threshold {
        shape.check_field("spec.threshold.field", &threshold.field)?;
        shape.check_feature("spec.threshold.feature", threshold.feature)?;
    }
    if let Some(baseline) = &spec.baseline {
        shape.check_field("spec.baseline.field", &baseline.field)?;
        shape.check_feature("spec.baseline.feature", baseline.feature)?;
        let history_ms = vigil_api::v1alpha1::duration_ms(&baseline.history);
        let min_samples = baseline.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES);
        let windows = if slide_ms > 0 {
            history_ms / slide_ms
        } else {
            0
        };
        if windows < i64::from(min_samples) {
            return Err(FieldError::new(
                "spec.baseline.history",
                format!(
                    "{} holds {windows} windows of window `{}` (slide {} ms), fewer than minSamples {min_samples}: the rule could never fire",
                    baseline.history, spec.window, slide_ms
                ),
            ));
        }
    }
    if let Some(expression) = &spec.expression {
        check_cel("spec.expression.expr", &expression.expr, Some(shape))?;
        if let Some(score) = &expression.score {
            check_cel("spec.expression.score", score, Some(shape))?;
        }
    }
    if let Some(rule) = &spec.model {
        let model = models.get(&rule.model_ref).ok_or_else(|| {
            FieldError::new(
                "spec.model.modelRef",
                format!(
                    "AnomalyModel `{}` does not exist in this namespace",
                    rule.model_ref
                ),
            )
        })?;
        let contract = &model.spec.input;
        let field = format!(
            "spec.model.modelRef ({}: spec.input.window)",
            rule.model_ref
        );
        shape.check_window(&field, &contract.window)?;
        if contract.window != spec.window {
            return Err(FieldError::new(
                "spec.window",
                format!(
                    "`{}` differs from window `{}` of the feature contract of AnomalyModel `{}`",
                    spec.window, contract.window, rule.model_ref
                ),
            ));
        }
        for (i, feature) in contract.features.iter().enumerate() {
            let field = format!(
                "spec.model.modelRef ({}: spec.input.features[{i}])",
                rule.model_ref
            );
            shape.check_field_feature(&field, feature)?;
        }
    }
    Ok(())
}

/// Parses a CEL expression and checks its variables; with a pipeline shape, also the
/// `features.<field>.<feature>`, `baseline.<field>.<stat>` and `event.<field>` it selects.
fn check_cel(path: &str, source: &str, shape: Option<&PipelineShape>) -> Result<(), FieldError> {
    let program = cel::Program::compile(source).map_err(|e| {
        FieldError::new(
            path,
            format!("CEL does not parse: {}", e.to_string().replace('\n', " ")),
        )
    })?;
    let mut scope = Vec::new();
    walk(program.expression(), &mut scope, &mut |chain| {
        check_chain(path, chain, shape)
    })
}

/// Visits every maximal `ident(.field)*` chain of an expression with its bound comprehension
/// variables excluded.
fn walk<'e>(
    expr: &'e IdedExpr,
    scope: &mut Vec<&'e str>,
    visit: &mut dyn FnMut(&[&'e str]) -> Result<(), FieldError>,
) -> Result<(), FieldError> {
    if let Some(chain) = chain(expr) {
        if !scope.contains(&chain[0]) && !chain[0].starts_with('@') {
            visit(&chain)?;
        }
        return Ok(());
    }
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, scope, visit)?;
            }
            for arg in &call.args {
                walk(arg, scope, visit)?;
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, scope, visit)?;
            walk(&c.accu_init, scope, visit)?;
            let depth = scope.len();
            scope.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                scope.push(v);
            }
            scope.push(&c.accu_var);
            walk(&c.loop_cond, scope, visit)?;
            walk(&c.loop_step, scope, visit)?;
            walk(&c.result, scope, visit)?;
            scope.truncate(depth);
        }
        Expr::List(list) => {
            for e in &list.elements {
                walk(e, scope, visit)?;
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => walk(&f.value, scope, visit)?,
                    EntryExpr::MapEntry(e) => {
                        walk(&e.key, scope, visit)?;
                        walk(&e.value, scope, visit)?;
                    }
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    walk(&f.value, scope, visit)?;
                }
            }
        }
        Expr::Select(select) => walk(&select.operand, scope, visit)?,
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    Ok(())
}

/// `a.b.c` as `[a, b, c]` when the expression is only an identifier and field selections.
fn chain(expr: &IdedExpr) -> Option<Vec<&str>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(select) => {
            let mut c = chain(&select.operand)?;
            c.push(select.field.as_str());
            Some(c)
        }
        _ => None,
    }
}

fn check_chain(
    path: &str,
    chain: &[&str],
    shape: Option<&PipelineShape>,
) -> Result<(), FieldError> {
    let root = chain[0];
    if !CEL_VARIABLES.contains(&root) {
        return Err(FieldError::new(
            path,
            format!(
                "undeclared variable `{root}` (variables: {})",
                CEL_VARIABLES.join(", ")
            ),
        ));
    }
    let Some(shape) = shape else { return Ok(()) };
    match (root, chain.get(1), chain.get(2)) {
        ("features", Some(field), feature) => {
            shape.check_field(path, field)?;
            if let Some(feature) = feature {
                let feature: Feature = feature.parse().map_err(|e: String| {
                    FieldError::new(path, format!("features.{field}.{feature}: {e}"))
                })?;
                shape.check_feature(path, feature)?;
            }
        }
        ("baseline", Some(field), stat) => {
            shape.check_field(path, field)?;
            if let Some(stat) = stat
                && !BASELINE_STATS.contains(stat)
            {
                return Err(FieldError::new(
                    path,
                    format!(
                        "baseline.{field}.{stat}: unknown statistic `{stat}`, expected one of {}",
                        BASELINE_STATS.join(", ")
                    ),
                ));
            }
        }
        ("event", Some(field), _) => shape.check_field(path, field)?,
        _ => {}
    }
    Ok(())
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

    fn fixture() -> (PipelineShape, BTreeMap<String, Arc<AnomalyModel>>) {
        let mut m = Manifests::default();
        m.add_str("fixture", DOCS).unwrap();
        let models = m
            .models
            .into_iter()
            .map(|m| (m.metadata.name.clone().unwrap(), Arc::new(m)))
            .collect();
        (PipelineShape::of(&m.pipelines[0]).unwrap(), models)
    }

    fn rule(spec: &str) -> DetectionRule {
        DetectionRule::new(
            "r",
            serde_norway::from_str::<DetectionRuleSpec>(spec).unwrap(),
        )
    }

    fn check(spec: &str) -> Result<(), FieldError> {
        let (shape, models) = fixture();
        let rule = rule(spec);
        validate_rule(&rule.spec, &models)?;
        validate_rule_for_pipeline(&rule, &shape, &models)
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
        assert!(e.message.contains("undeclared variable `feature`"), "{e}");
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
        assert!(e.message.contains("`lstm` does not exist"), "{e}");
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
        validate_rule_for_pipeline(&spec, &PipelineShape::of(&p).unwrap(), &BTreeMap::new())
            .unwrap();
        p.spec.format.narrow.as_mut().unwrap().parameters = vec!["CurrentDownstream".into()];
        assert!(
            validate_rule_for_pipeline(&spec, &PipelineShape::of(&p).unwrap(), &BTreeMap::new())
                .is_err()
        );
    }
}
