use super::alert::{AlertStatus, step};
use super::*;
use crate::features::Agg;
use vigil_api::manifest::Manifests;

const PIPELINE: &str = "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {eventTime: {field: t}, wide: {fields: [{name: cpu}]}}\n  windows: [{name: fast, size: 60s}]\n  sinks: {alerts: {topic: a}}\n";

fn compile(rule_spec: &str) -> Result<(CompiledRule, FieldTable), RuleError> {
    let mut m = Manifests::default();
    m.add_str("p", PIPELINE).unwrap();
    m.add_str("r", &format!("apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {{name: r}}\nspec: {rule_spec}\n")).unwrap();
    let cfg = PipelineConfig::from_resource(&m.pipelines[0]).unwrap();
    let mut table = FieldTable::for_layout(&cfg.layout);
    let r = CompiledRule::compile(&m.rules[0], &cfg, &mut table, &[])?;
    Ok((r, table))
}

fn features(values: &[f64]) -> Vec<(u16, FeatureValues)> {
    let mut a = Agg::new(false);
    for (i, v) in values.iter().enumerate() {
        a.add(i as i64, *v);
    }
    vec![(0, a.features(60_000))]
}

fn view<'a>(end: i64, fields: &'a [(u16, FeatureValues)], table: &'a FieldTable) -> WindowView<'a> {
    WindowView {
        key: "k",
        start: end - 60_000,
        end,
        fields,
        table,
        attributes: None,
        kpis: &[],
    }
}

#[test]
fn threshold_with_for_fires_once_and_resolves() {
    let (r, table) = compile(
        "{window: fast, for: 2m, threshold: {field: cpu, feature: mean, operator: '>', value: 85}}",
    )
    .unwrap();
    let mut st = RuleState::default();
    let mut transitions = Vec::new();
    for (i, mean) in [90.0, 91.0, 92.0, 93.0, 94.0, 50.0].into_iter().enumerate() {
        let f = features(&[mean]);
        let end = (i as i64 + 1) * 60_000;
        let e = r.evaluate(&view(end, &f, &table), &mut st);
        transitions.push(step(&r, &mut st, &e, end));
    }
    // Pending at 1m, held 2m at 3m: fires there, stays quiet while firing, resolves at 6m.
    assert_eq!(
        transitions,
        vec![
            None,
            None,
            Some(AlertStatus::Firing),
            None,
            None,
            Some(AlertStatus::Resolved)
        ]
    );
}

#[test]
fn zscore_baseline_needs_history_and_scores_half_at_threshold() {
    let (r, table) = compile("{window: fast, baseline: {field: cpu, method: ZScore, history: 1h, threshold: 3, minSamples: 4}}").unwrap();
    let mut st = RuleState::default();
    // Window means alternate 9 and 11: mean 10, stddev 1.
    for i in 0..4 {
        let f = features(&[if i % 2 == 0 { 9.0 } else { 11.0 }]);
        let w = view((i + 1) * 60_000, &f, &table);
        assert!(!r.evaluate(&w, &mut st).matched, "not enough history yet");
        r.observe(&w, &mut st);
    }
    let f = features(&[13.0]);
    let e = r.evaluate(&view(300_000, &f, &table), &mut st);
    assert!(e.matched);
    assert!((e.score - 0.5).abs() < 1e-9, "score {}", e.score);
    let f = features(&[12.0]);
    let e = r.evaluate(&view(300_000, &f, &table), &mut st);
    assert!(!e.matched && e.score > 0.0 && e.score < 0.5);
}

#[test]
fn iqr_direction_below_ignores_spikes_up() {
    let (r, table) = compile("{window: fast, baseline: {field: cpu, method: Iqr, history: 1h, threshold: 1.5, direction: Below, minSamples: 4}}").unwrap();
    let mut st = RuleState::default();
    for (i, v) in [10.0, 11.0, 12.0, 13.0, 14.0].into_iter().enumerate() {
        let f = features(&[v]);
        r.observe(&view((i as i64 + 1) * 60_000, &f, &table), &mut st);
    }
    let up = features(&[100.0]);
    assert!(!r.evaluate(&view(400_000, &up, &table), &mut st).matched);
    let down = features(&[1.0]);
    assert!(r.evaluate(&view(400_000, &down, &table), &mut st).matched);
}

#[test]
fn cel_expression_over_features_and_baseline() {
    let (r, table) = compile("{window: fast, expression: {expr: \"features.cpu.max > 50.0 && key == 'k' && (!has(baseline.cpu) || features.cpu.mean > baseline.cpu.mean)\"}}").unwrap();
    let mut st = RuleState::default();
    let f = features(&[10.0, 60.0]);
    assert!(r.evaluate(&view(60_000, &f, &table), &mut st).matched);
    r.observe(&view(60_000, &f, &table), &mut st);
    let lower = features(&[51.0, 1.0]);
    assert!(!r.evaluate(&view(120_000, &lower, &table), &mut st).matched);
}

#[test]
fn invalid_rules_name_the_field() {
    let e = |spec: &str| compile(spec).unwrap_err().to_string();
    assert_eq!(
        e("{window: slow, threshold: {field: cpu, feature: mean, operator: '>', value: 1}}"),
        "DetectionRule r: spec.window: window `slow` is not one of the pipeline's windows (fast)"
    );
    assert_eq!(
        e("{window: fast, threshold: {field: mem, feature: mean, operator: '>', value: 1}}"),
        "DetectionRule r: spec.threshold.field: field `mem` is not a field of the pipeline (fields: cpu)"
    );
    assert!(
        e("{window: fast, expression: {expr: 'features.cpu.mean >'}}")
            .starts_with("DetectionRule r: spec.expression.expr: CEL does not parse")
    );
    assert!(
        e("{window: fast, expression: {expr: 'cpu > 1.0'}}").contains("unknown variable `cpu`")
    );
    assert_eq!(
        e("{window: fast, model: {modelRef: lstm}}"),
        "DetectionRule r: spec.model.modelRef: AnomalyModel `lstm` not found"
    );
}

#[test]
fn templates_may_only_name_what_an_alert_has() {
    let ok = "{window: fast, threshold: {field: cpu, feature: mean, operator: '>', value: 85}, annotations: {summary: '{{ key }} at {{ cpu.mean | round(1) }} (score {{ score }}, {{ observed }})'}}";
    assert!(compile(ok).is_ok());
    // A field the pipeline does not have (the mistake the durable-state example had: `value`
    // for a pipeline whose field is `latency_ms`) would render as the template's source.
    let e = compile("{window: fast, threshold: {field: cpu, feature: mean, operator: '>', value: 85}, annotations: {summary: '{{ value.mean }}'}}").unwrap_err();
    assert_eq!(e.error.field, "spec.annotations.summary");
    assert!(e.error.reason.contains("for the fields cpu"), "{e}");
    let e = compile("{window: fast, threshold: {field: cpu, feature: mean, operator: '>', value: 85}, labels: {level: '{{ cpu.median }}'}}").unwrap_err();
    assert_eq!(e.error.field, "spec.labels.level");
}
