//! Fixtures for the pure steps' unit tests: the NAB pipeline with three rules (two valid, one
//! reading a window the pipeline lacks) and an Isolation Forest model.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vigil_api::conditions::{READY, set_condition};
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{AnomalyModel, AnomalyModelStatus, StreamPipeline};

use super::stream_pipeline::dereference::{Dereferenced, Partitions};

/// The pipeline document (namespace `anomaly`, parallelism 4, two windows).
pub const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata:
  name: nab
  namespace: anomaly
  uid: 6d1f2b8e-0000-4000-8000-000000000001
  generation: 3
  labels: {dataset: nab}
  annotations: {note: dropped-when-rendered}
spec:
  source: {kafka: {bootstrapServers: "127.0.0.1:9092", topics: [nab], consumerGroup: nab}}
  format: {keyField: series, eventTime: {field: timestamp, format: DateTime}, wide: {fields: [{name: value}]}}
  windows:
  - {name: fast, size: 30s, slide: 15s}
  - {name: analysis, size: 300s, slide: 60s}
  parallelism: 4
  sinks: {alerts: {topic: nab-alerts}}
"#;

const OTHERS: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: spike, namespace: anomaly}
spec:
  pipelineSelector: {matchLabels: {dataset: nab}}
  window: fast
  threshold: {field: value, feature: max, operator: ">", value: 90}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: iforest-score, namespace: anomaly}
spec:
  window: analysis
  model: {modelRef: iforest}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: wrong-window, namespace: anomaly}
spec:
  window: slow
  threshold: {field: value, feature: mean, operator: ">", value: 1}
---
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: iforest, namespace: anomaly, generation: 1, uid: 6d1f2b8e-0000-4000-8000-000000000002}
spec:
  revision: "1"
  artifact: {uri: "configmap://iforest-onnx/model.onnx", sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
  input: {tensor: X, window: analysis, features: [value.mean, value.stddev]}
  output: {tensor: scores, anomalousWhen: Below, threshold: 0.0}
"#;

/// The pipeline after `edit` is applied to its YAML.
pub fn parse_pipeline(edit: impl Fn(&str) -> String) -> Arc<StreamPipeline> {
    Arc::new(serde_norway::from_str(&edit(PIPELINE)).unwrap())
}

/// The NAB pipeline and what its dereference step would find (8 partitions).
pub fn nab_fixture() -> (Arc<StreamPipeline>, Dereferenced) {
    let mut m = Manifests::default();
    m.add_str("others", OTHERS).unwrap();
    let models = m
        .models
        .into_iter()
        .map(|m| (m.metadata.name.clone().unwrap(), Arc::new(m)))
        .collect();
    (
        parse_pipeline(str::to_string),
        Dereferenced {
            rules: m.rules.into_iter().map(Arc::new).collect(),
            models,
            partitions: Partitions::Known(BTreeMap::from([("nab".into(), 8)])),
        },
    )
}

/// The fixture's model.
pub fn model() -> AnomalyModel {
    let mut m = Manifests::default();
    m.add_str("others", OTHERS).unwrap();
    m.models.remove(0)
}

/// The fixture's model with a `Ready=True` condition.
pub fn ready_model() -> AnomalyModel {
    let mut m = model();
    let mut status = AnomalyModelStatus::default();
    set_condition(
        &mut status.conditions,
        READY,
        true,
        "Serving",
        "revision 1",
        Some(1),
        time(1),
    );
    m.status = Some(status);
    m
}

/// A timestamp `secs` after the epoch.
pub fn time(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
}
