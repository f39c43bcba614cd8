//! Model rules end to end against a real model server (ONNX Runtime, the committed reference
//! models, gRPC on 127.0.0.1:0): the engine's feature vectors equal the features the models
//! were trained on, windows are scored in batches across keys, and scores become alerts.
//!
//! Needs `eval "$(scripts/setup-onnxruntime.sh)"` (ORT_DYLIB_PATH) and the NAB data in
//! the repository's `data/nab`.

mod model_support;

use std::collections::BTreeSet;
use std::time::Duration;

use model_support::{Driver, Seen, TestServer, manifests, nab_rows};
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule};
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_core::rules::alert::AlertStatus;
use vigil_detector::scoring::{ModelScorer, ScorerConfig, ScoringMetrics};

const MACHINE_TEMPERATURE: &str = "data/realKnownCause/machine_temperature_system_failure.csv";
const HOUR: i64 = 3_600_000;

/// A pipeline with the models' `analysis` tier (tumbling 1 h, as trained), both reference
/// models and a rule for each.
const MANIFESTS: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: machines}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {eventTime: {field: timestamp, format: DateTime}, wide: {fields: [{name: value}]}}
  windows:
    - {name: analysis, size: 1h, maxOutOfOrderness: 0s}
  sinks: {alerts: {topic: a}}
---
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: iforest}
spec:
  revision: "1"
  artifact: {uri: file://models/repository/iforest/1/model.onnx, sha256: 7e012d6a342083e143034a47c11a6858f749b9866baebfdb9d3965c8dd52e0cb}
  input:
    tensor: features
    window: analysis
    features: [value.count, value.sum, value.mean, value.min, value.max, value.stddev, value.last, value.rate, value.p50, value.p95, value.p99]
  output: {tensor: scores, anomalousWhen: Below, threshold: 0.0, scale: 0.05}
---
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: lstm-ae}
spec:
  revision: "1"
  artifact: {uri: file://models/repository/lstm-ae/1/model.onnx, sha256: fd2cfedd9b000fa84c2ec02c961f3eab17d246017a058bff88820afaa57ed4cb}
  input:
    tensor: windows
    window: analysis
    lookback: 6
    features: [value.count, value.sum, value.mean, value.min, value.max, value.stddev, value.last, value.rate, value.p50, value.p95, value.p99]
  output: {tensor: score, anomalousWhen: Above, threshold: 0.0858117073426599, scale: 0.1}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: iforest-window}
spec:
  window: analysis
  severity: warning
  # The global model rates this series normal everywhere (decision_function > 0.12); the rule
  # moves the threshold to its lowest windows.
  model: {modelRef: iforest, threshold: 0.125}
  annotations: {summary: "{{ key }}: Isolation Forest score {{ observed }}"}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: lstm-sequence}
spec:
  window: analysis
  model: {modelRef: lstm-ae}
"#;

fn engine(only: &[&str]) -> Engine {
    let m = manifests(MANIFESTS);
    let rules: Vec<&DetectionRule> = m
        .rules
        .iter()
        .filter(|r| only.contains(&r.metadata.name.as_deref().unwrap()))
        .collect();
    let models: Vec<&AnomalyModel> = m.models.iter().collect();
    let (e, errors) =
        Engine::from_resources(&m.pipelines[0], &rules, &models, EngineOptions::default()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    e
}

fn scorer(uri: &str) -> ModelScorer {
    let m = manifests(MANIFESTS);
    let models: Vec<&AnomalyModel> = m.models.iter().collect();
    let mut s = ModelScorer::new(ScorerConfig::default(), ScoringMetrics::default()).unwrap();
    s.route_models(&models, Some(uri)).unwrap();
    s
}

/// The features the models were trained on (models/testdata/window-features.json, written by
/// models/vigil_models/features.py): window start (ms) -> 11 values.
fn training_features() -> Vec<(i64, Vec<f64>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/testdata/window-features.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    doc["series"]["realKnownCause/machine_temperature_system_failure.csv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let values = w["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            (w["start"].as_i64().unwrap() * 1000, values)
        })
        .collect()
}

fn close(a: f32, b: f64) -> bool {
    (f64::from(a) - b).abs() <= 1e-6 * (1.0 + b.abs())
}

#[test]
fn feature_vectors_equal_the_training_features_in_contract_order() {
    let mut e = engine(&["iforest-window", "lstm-sequence"]);
    let want = training_features();
    let last_start = want.last().unwrap().0;
    let mut out = Outputs::default();
    let (mut iforest, mut lstm) = (Vec::new(), Vec::new());
    for (i, (t, payload)) in nab_rows(MACHINE_TEMPERATURE).into_iter().enumerate() {
        if t >= last_start + 2 * HOUR {
            break;
        }
        e.process(
            &RawRecord {
                partition: 0,
                offset: i as i64,
                key: Some(b"m1"),
                payload: &payload,
            },
            t,
            &mut out,
        );
        for input in out.model_inputs.drain(..) {
            match input.contract.model.as_str() {
                "iforest" => iforest.push(input),
                _ => lstm.push(input),
            }
        }
    }
    assert!(want.len() >= 20, "{} training windows", want.len());
    for (start, values) in &want {
        let got = iforest
            .iter()
            .find(|i| i.window_start == *start)
            .unwrap_or_else(|| panic!("no input for window {start}"));
        assert_eq!(got.window_end, start + HOUR);
        assert_eq!(got.values.len(), 11);
        for (k, (g, w)) in got.values.iter().zip(values).enumerate() {
            assert!(close(*g, *w), "window {start} feature {k}: {g} vs {w}");
        }
        // Without a normalization the row is the raw features, in f32.
        for (g, w) in got.raw_features.iter().zip(values) {
            assert!(
                (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                "window {start}: raw {g} vs {w}"
            );
        }
    }
    // Sequences: the six consecutive windows ending at each window, oldest first.
    let mut checked = 0;
    for seq in &lstm {
        let Some(end_idx) = want.iter().position(|(s, _)| *s == seq.window_start) else {
            continue;
        };
        if end_idx < 5 {
            continue;
        }
        assert_eq!(seq.values.len(), 66);
        for (j, (_, values)) in want[end_idx - 5..=end_idx].iter().enumerate() {
            for (k, w) in values.iter().enumerate() {
                assert!(
                    close(seq.values[j * 11 + k], *w),
                    "sequence ending {}: window {j} feature {k}",
                    seq.window_start
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "{checked} sequences checked");
    // The first sequence closes with the sixth consecutive window.
    assert_eq!(lstm[0].window_start, want[5].0);
}

#[test]
fn model_rules_score_every_window_on_the_server_and_raise_alerts() {
    let server = TestServer::start(0);
    let rows = nab_rows(MACHINE_TEMPERATURE);
    let mut d = Driver::new(
        engine(&["iforest-window", "lstm-sequence"]),
        scorer(&server.uri),
    );
    let mut seen = Seen::default();
    for (t, payload) in &rows {
        d.process("machine-1", payload, *t, &mut seen);
    }
    d.flush(rows.last().unwrap().0, &mut seen);

    // Every hour with data is one iforest window; every run of six consecutive hours is one
    // LSTM sequence. All are scored.
    let hours: BTreeSet<i64> = rows.iter().map(|(t, _)| t - t.rem_euclid(HOUR)).collect();
    let sequences = hours
        .iter()
        .filter(|h| (1..6).all(|k| hours.contains(&(*h - k * HOUR))))
        .count();
    let scored = |model: &str| {
        seen.reports
            .iter()
            .flat_map(|r| &r.scored)
            .filter(|(i, _)| i.contract.model == model)
            .count()
    };
    assert_eq!(scored("iforest"), hours.len());
    assert_eq!(scored("lstm-ae"), sequences);
    assert!(
        seen.reports
            .iter()
            .all(|r| r.failed + r.skipped + r.unrouted == 0)
    );
    assert_eq!(d.inner.engine.counters().model_windows_undefined, 0);

    // Alerts follow the raw scores: iforest fires below the rule's threshold, the LSTM above
    // its model's.
    let alerts = |rule: &str| {
        seen.alerts
            .iter()
            .filter(|a| a.rule == rule)
            .collect::<Vec<_>>()
    };
    for (rule, model) in [("iforest-window", "iforest"), ("lstm-sequence", "lstm-ae")] {
        let list = alerts(rule);
        assert!(!list.is_empty(), "{rule} raised no alert");
        for (k, a) in list.iter().enumerate() {
            let want = if k % 2 == 0 {
                AlertStatus::Firing
            } else {
                AlertStatus::Resolved
            };
            assert_eq!(a.status, want, "{rule}: transitions alternate");
            assert_eq!(a.labels["model"], model);
            assert_eq!(a.window_end - a.window_start, HOUR);
            let raw = a.value.unwrap();
            let anomalous = if model == "iforest" {
                raw < 0.125
            } else {
                raw > 0.0858117073426599
            };
            assert_eq!(anomalous, a.status == AlertStatus::Firing, "{rule} {a:?}");
            assert_eq!(a.score > 0.5, anomalous);
            assert_eq!(a.features.len(), 11);
        }
    }
    let firing = alerts("iforest-window")
        .into_iter()
        .find(|a| a.status == AlertStatus::Firing)
        .unwrap();
    assert_eq!(
        firing.annotations["summary"],
        format!(
            "machine-1: Isolation Forest score {}",
            firing.value.unwrap()
        )
    );
    eprintln!(
        "iforest: {} windows, {} firing alerts; lstm-ae: {} sequences, {} firing alerts",
        hours.len(),
        alerts("iforest-window")
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
            .count(),
        sequences,
        alerts("lstm-sequence")
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
            .count(),
    );
}

#[test]
fn windows_of_many_keys_are_scored_in_one_batch() {
    const KEYS: usize = 256;
    let server = TestServer::start(0);
    let rows = nab_rows(MACHINE_TEMPERATURE);
    let start = rows[0].0;
    let mut d = Driver::new(engine(&["iforest-window"]), scorer(&server.uri));
    let mut seen = Seen::default();
    let keys: Vec<String> = (0..KEYS).map(|k| format!("machine-{k}")).collect();
    // 48 hours of the series per key, each key scaled differently, events interleaved.
    for (t, payload) in rows.iter().take_while(|(t, _)| *t < start + 48 * HOUR) {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        for (k, key) in keys.iter().enumerate() {
            let mut v = v.clone();
            v["value"] = (v["value"].as_f64().unwrap() * (1.0 + k as f64 / 100.0)).into();
            d.process(key, &serde_json::to_vec(&v).unwrap(), *t, &mut seen);
        }
    }
    let batches: Vec<_> = seen.reports.iter().flat_map(|r| &r.batches).collect();
    assert!(batches.len() >= 45, "{} batches", batches.len());
    // One watermark step closes the hour for every key: one request carries all of them.
    assert!(
        batches.iter().all(|b| b.ok && b.rows == KEYS),
        "{batches:?}"
    );
    let mut ms: Vec<f64> = batches
        .iter()
        .map(|b| b.elapsed.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    let total: Duration = batches.iter().map(|b| b.elapsed).sum();
    eprintln!(
        "SCORING batches={} keys_per_batch={} mean_ms={:.3} p50_ms={:.3} max_ms={:.3} rows_per_s={:.0}",
        batches.len(),
        KEYS,
        total.as_secs_f64() * 1e3 / batches.len() as f64,
        ms[ms.len() / 2],
        ms[ms.len() - 1],
        (batches.len() * KEYS) as f64 / total.as_secs_f64()
    );
    // Each key gets its own row's score: scored alone, a row scores as it did in the batch.
    let batch = &seen
        .reports
        .iter()
        .find(|r| !r.scored.is_empty())
        .unwrap()
        .scored;
    let distinct: BTreeSet<u32> = batch.iter().map(|(_, s)| s.to_bits()).collect();
    assert!(
        distinct.len() > 1,
        "the scaled copies do not all score alike"
    );
    for (input, score) in batch.iter().step_by(17) {
        let alone = d.inner.scorer.as_mut().unwrap().score(vec![input.clone()]);
        assert_eq!(alone.scored[0].1, *score, "key {}", input.key);
    }
}
