//! Model rules in the engine, without a model server: compile-time checks of the AnomalyModel
//! contract against the pipeline and the rule, and what the engine does with raw scores handed
//! back (mapping, threshold override, `for`, ordering, stale scores, event scores).

use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule};
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_core::model::ModelInput;
use vigil_core::rules::alert::AlertStatus;

const MIN: i64 = 60_000;

const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: p}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}
  windows:
    - {name: fast, size: 1m}
    - {name: slow, size: 10m}
  features: [count, mean, max]
  sinks: {alerts: {topic: a}}
---
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: recon}
spec:
  revision: "2"
  artifact: {uri: file://recon.onnx, sha256: 0000000000000000000000000000000000000000000000000000000000000000}
  input:
    tensor: X
    window: fast
    features: [v.mean, v.max]
    normalization: {mean: [10, 10], scale: [2, 2]}
  output: {tensor: s, anomalousWhen: Above, threshold: 1.0, scale: 0.5}
"#;

fn rule(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {{name: {name}}}\nspec:\n{body}\n"
    )
}

fn manifests(rules: &str) -> Manifests {
    let mut m = Manifests::default();
    m.add_str("p", PIPELINE).unwrap();
    m.add_str("r", rules).unwrap();
    m
}

fn engine(rules: &str, opts: EngineOptions) -> (Engine, Vec<String>) {
    let m = manifests(rules);
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    let models: Vec<&AnomalyModel> = m.models.iter().collect();
    let (e, errors) = Engine::from_resources(&m.pipelines[0], &refs, &models, opts).unwrap();
    (e, errors.iter().map(ToString::to_string).collect())
}

fn event(k: &str, t: i64, v: f64) -> Vec<u8> {
    format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#).into_bytes()
}

#[test]
fn the_rule_window_and_the_contract_must_fit_the_pipeline() {
    let (_, errors) = engine(
        &rule("wrong-window", "  window: slow\n  model: {modelRef: recon}"),
        EngineOptions::default(),
    );
    assert_eq!(
        errors,
        [
            "DetectionRule wrong-window: spec.window: must be `fast`, the window of AnomalyModel `recon` (spec.input.window)"
        ]
    );
    let (_, errors) = engine(
        &rule("missing", "  window: fast\n  model: {modelRef: nope}"),
        EngineOptions::default(),
    );
    assert_eq!(
        errors,
        ["DetectionRule missing: spec.model.modelRef: AnomalyModel `nope` not found"]
    );
    // A contract naming a feature the pipeline does not compute.
    let mut m = manifests(&rule("r", "  window: fast\n  model: {modelRef: recon}"));
    m.models[0].spec.input.features[1] = "v.p99".into();
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    let models: Vec<&AnomalyModel> = m.models.iter().collect();
    let (_, errors) =
        Engine::from_resources(&m.pipelines[0], &refs, &models, EngineOptions::default()).unwrap();
    assert_eq!(
        errors[0].to_string(),
        "DetectionRule r: spec.model.modelRef: AnomalyModel `recon` does not fit the pipeline: spec.input.features[1]: feature `p99` is not computed by the pipeline (spec.features)"
    );
}

/// Runs one key through minutes `0..minutes` (value `10 + minute`), collecting model inputs;
/// `score(minute_start)` gives each closed window's raw score, applied after each event.
fn run(
    e: &mut Engine,
    minutes: i64,
    score: impl Fn(&ModelInput) -> f32,
) -> (Vec<ModelInput>, Vec<(AlertStatus, i64, f64)>) {
    let mut out = Outputs::default();
    let (mut inputs, mut alerts) = (Vec::new(), Vec::new());
    for i in 0..minutes {
        let t = i * MIN + 30_000;
        e.process(
            &RawRecord {
                partition: 0,
                offset: i,
                key: None,
                payload: &event("a", t, 10.0 + i as f64),
            },
            t,
            &mut out,
        );
        let scored: Vec<(ModelInput, f32)> = out
            .model_inputs
            .drain(..)
            .map(|m| (m.clone(), score(&m)))
            .collect();
        inputs.extend(scored.iter().map(|(m, _)| m.clone()));
        e.apply_model_scores(scored, t, &mut out);
        alerts.extend(
            out.alerts
                .drain(..)
                .map(|a| (a.status, a.window_end, a.score)),
        );
        out.clear();
    }
    (inputs, alerts)
}

#[test]
fn raw_scores_become_alerts_with_the_model_threshold_and_for() {
    let (mut e, errors) = engine(
        &rule("r", "  window: fast\n  for: 2m\n  model: {modelRef: recon}"),
        EngineOptions::default(),
    );
    assert!(errors.is_empty(), "{errors:?}");
    // Windows 3..=6 are past the threshold (1.0, higher is anomalous).
    let (inputs, alerts) = run(&mut e, 10, |m| {
        if (3..=6).contains(&(m.window_start / MIN)) {
            2.0
        } else {
            0.5
        }
    });
    // One input per closed minute; the row is the contract features, normalised.
    assert_eq!(inputs.len(), 9);
    assert_eq!(inputs[2].values, [(12.0 - 10.0) / 2.0, (12.0 - 10.0) / 2.0]);
    assert_eq!(inputs[2].raw_features, [12.0, 12.0]);
    assert_eq!(
        (
            inputs[2].contract.model.as_str(),
            inputs[2].contract.version.as_str()
        ),
        ("recon", "2")
    );
    // Matching since window end 4m; `for: 2m` fires at 6m; resolves at window end 8m.
    let s = 0.5 + 0.5 * (1.0f64 / 0.5).tanh();
    assert_eq!(
        alerts,
        [
            (AlertStatus::Firing, 6 * MIN, s),
            (
                AlertStatus::Resolved,
                8 * MIN,
                0.5 + 0.5 * (-0.5f64 / 0.5).tanh()
            )
        ]
    );
}

#[test]
fn the_rule_threshold_overrides_the_model_threshold() {
    let (mut e, _) = engine(
        &rule(
            "r",
            "  window: fast\n  model: {modelRef: recon, threshold: 3.0}",
        ),
        EngineOptions::default(),
    );
    let (_, alerts) = run(&mut e, 6, |m| {
        if m.window_start == 2 * MIN {
            2.0
        } else if m.window_start == 3 * MIN {
            3.5
        } else {
            0.0
        }
    });
    // 2.0 is past the model's threshold but not the rule's; 3.5 is past both.
    assert_eq!(
        alerts.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(),
        [
            (AlertStatus::Firing, 4 * MIN),
            (AlertStatus::Resolved, 5 * MIN)
        ]
    );
}

#[test]
fn scores_out_of_order_for_a_changed_rule_or_a_revoked_key_are_dropped() {
    let (mut e, _) = engine(
        &rule("r", "  window: fast\n  model: {modelRef: recon}"),
        EngineOptions::default(),
    );
    let (inputs, _) = run(&mut e, 5, |_| 0.0);
    let mut out = Outputs::default();
    // Already applied windows (scores apply in window-end order per key).
    assert_eq!(
        e.apply_model_scores(
            [(inputs[3].clone(), 9.0), (inputs[1].clone(), 9.0)],
            0,
            &mut out
        ),
        0
    );
    assert!(out.alerts.is_empty());
    let close_next = |e: &mut Engine, minute: i64| {
        let mut o = Outputs::default();
        e.process(
            &RawRecord {
                partition: 0,
                offset: 100 + minute,
                key: None,
                payload: &event("a", minute * MIN, 10.0),
            },
            minute * MIN,
            &mut o,
        );
        o.model_inputs.pop().expect("a window closed")
    };
    // A NaN score is not applied; a number is.
    let next = close_next(&mut e, 6);
    assert_eq!(
        e.apply_model_scores([(next.clone(), f32::NAN)], 0, &mut out),
        0
    );
    assert_eq!(e.apply_model_scores([(next, 0.0)], 0, &mut out), 1);
    // The rule stops being a model rule while a window is being scored.
    let pending = close_next(&mut e, 7);
    let m = manifests(&rule(
        "r",
        "  window: fast\n  threshold: {field: v, feature: max, operator: \">\", value: 1}",
    ));
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    assert!(e.replace_rules(&refs, &[]).is_empty());
    assert_eq!(e.apply_model_scores([(pending, 9.0)], 0, &mut out), 0);
    // The key's partition is revoked while a window is being scored.
    let (mut e, _) = engine(
        &rule("r", "  window: fast\n  model: {modelRef: recon}"),
        EngineOptions::default(),
    );
    let _ = run(&mut e, 3, |_| 0.0);
    let pending = close_next(&mut e, 4);
    e.revoke_partitions(&[0]);
    assert_eq!(e.apply_model_scores([(pending, 9.0)], 0, &mut out), 0);
    assert!(out.alerts.is_empty());
}

#[test]
fn a_model_rule_event_score_is_its_last_window_score() {
    let (mut e, _) = engine(
        &rule("r", "  window: fast\n  model: {modelRef: recon}"),
        EngineOptions {
            event_scores: true,
            ..Default::default()
        },
    );
    let mut out = Outputs::default();
    let mut scores = Vec::new();
    for i in 0..4 {
        let t = i * MIN + 30_000;
        e.process(
            &RawRecord {
                partition: 0,
                offset: i,
                key: None,
                payload: &event("a", t, 10.0),
            },
            t,
            &mut out,
        );
        scores.append(&mut out.event_scores);
        let scored: Vec<_> = out.model_inputs.drain(..).map(|m| (m, 1.5)).collect();
        e.apply_model_scores(scored, t, &mut out);
        out.clear();
    }
    // No window scored before row 1 closes minute 0; rows after it carry its score.
    let s = 0.5 + 0.5 * (0.5f64 / 0.5).tanh();
    assert_eq!(scores, [0.0, 0.0, s, s]);
}
