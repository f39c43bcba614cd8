//! The "presses" scenario of the whole-detector model tests (`model_kafka`, `model_stall`):
//! a threshold rule on a 1-second tier and the reference Isolation Forest on a 5-second tier.

use vigil_api::manifest::Manifests;

/// The reference Isolation Forest's features over field `v`, in its contract order.
pub const FEATURES: &str =
    "[v.count, v.sum, v.mean, v.min, v.max, v.stddev, v.last, v.rate, v.p50, v.p95, v.p99]";

/// The pipeline (tiers `fast` 1 s, `slow` 5 s) with rules `hot` (max of v > 100 on `fast`) and
/// `forest` (the model on `slow`).
pub fn yaml(src: &str, group: &str, alerts: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: presses}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  windows:
    - {{name: fast, size: 1s}}
    - {{name: slow, size: 5s}}
  sinks: {{alerts: {{topic: {alerts}}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: hot}}
spec: {{window: fast, threshold: {{field: v, feature: max, operator: '>', value: 100}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: forest}}
spec: {{window: slow, model: {{modelRef: iforest}}}}
"#
    )
}

/// The reference Isolation Forest as AnomalyModel `iforest` on the `slow` tier; windows
/// scoring below `threshold` are anomalous.
pub fn iforest(threshold: f64) -> Manifests {
    let mut m = Manifests::default();
    m.add_str(
        "model",
        &format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {{name: iforest}}\nspec:\n  revision: \"1\"\n  artifact: {{uri: file://models/repository/iforest/1/model.onnx, sha256: 7e012d6a342083e143034a47c11a6858f749b9866baebfdb9d3965c8dd52e0cb}}\n  input: {{tensor: features, window: slow, features: {FEATURES}}}\n  output: {{tensor: scores, anomalousWhen: Below, threshold: {threshold:?}}}\n"
        ),
    )
    .unwrap();
    m
}

/// Events of `key` every 250 ms of event time in `[from, to)` seconds; the first half of every
/// second second is hot (the threshold rule fires, then resolves).
pub fn events(key: &'static str, from: i64, to: i64) -> Vec<(Option<&'static str>, Vec<u8>)> {
    (from * 4..to * 4)
        .map(|i| {
            let t = i * 250;
            let v = if (t / 1000) % 2 == 0 && t % 1000 < 500 {
                150.0
            } else {
                50.0 + (i % 5) as f64
            };
            (
                Some(key),
                format!(r#"{{"k":"{key}","t":{t},"v":{v}}}"#).into_bytes(),
            )
        })
        .collect()
}
