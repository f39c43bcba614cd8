//! Resources the e2e tests apply, as YAML built from a few parameters.

/// A wide-format pipeline reading `topic` with windows `fast` (30s/15s) and `analysis`
/// (5m/1m), labelled `suite=<label>`.
pub fn pipeline(name: &str, topic: &str, parallelism: i32, label: &str) -> String {
    format!(
        r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: {name}
  labels: {{suite: {label}}}
spec:
  source: {{kafka: {{topics: [{topic}], consumerGroup: {name}}}}}
  format: {{keyField: series, eventTime: {{field: timestamp, format: DateTime}}, wide: {{fields: [{{name: value}}]}}}}
  windows:
  - {{name: fast, size: 30s, slide: 15s, maxOutOfOrderness: 5s}}
  - {{name: analysis, size: 5m, slide: 1m}}
  parallelism: {parallelism}
  sinks: {{alerts: {{topic: {topic}.alerts}}}}
"#
    )
}

/// A threshold rule on `value.max` for pipelines labelled `suite=<label>`.
pub fn threshold_rule(name: &str, label: &str, window: &str, value: f64) -> String {
    format!(
        r#"
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: {name}}}
spec:
  pipelineSelector: {{matchLabels: {{suite: {label}}}}}
  window: {window}
  severity: critical
  threshold: {{field: value, feature: max, operator: ">", value: {value}}}
"#
    )
}

/// A model rule using AnomalyModel `model` on the `analysis` window.
pub fn model_rule(name: &str, label: &str, model: &str) -> String {
    format!(
        r#"
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: {name}}}
spec:
  pipelineSelector: {{matchLabels: {{suite: {label}}}}}
  window: analysis
  model: {{modelRef: {model}}}
"#
    )
}

/// An Isolation Forest AnomalyModel whose artifact is key `model.onnx` of ConfigMap
/// `<name>-onnx`, with the digest of the committed model file.
pub fn model(name: &str, sha256: &str) -> String {
    format!(
        r#"
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {{name: {name}}}
spec:
  revision: "1"
  artifact: {{uri: "configmap://{name}-onnx/model.onnx", sha256: "{sha256}"}}
  input:
    tensor: features
    window: analysis
    features: [value.count, value.sum, value.mean, value.min, value.max, value.stddev, value.last, value.rate, value.p50, value.p95, value.p99]
  output: {{tensor: scores, anomalousWhen: Below, threshold: 0.0}}
"#
    )
}
