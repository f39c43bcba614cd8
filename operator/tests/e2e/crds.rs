//! The CRDs installed by the chart are served with their names, categories, printer columns
//! and subresources, and the API server rejects invalid objects with messages that name the
//! field.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use crate::harness::{TestNamespace, admin};

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn crds_are_served_with_names_columns_and_subresources() {
    let client = admin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (plural, short, columns) in [
        (
            "streampipelines",
            "sp",
            vec!["Topics", "Parallelism", "Ready", "Reason", "Age"],
        ),
        (
            "detectionrules",
            "dr",
            vec!["Severity", "Window", "Accepted", "Age"],
        ),
        (
            "anomalymodels",
            "am",
            vec!["Revision", "Serving", "Ready", "Age"],
        ),
        (
            "savepoints",
            "svp",
            vec!["Pipeline", "Phase", "Bytes", "Age"],
        ),
    ] {
        let crd = crds.get(&format!("{plural}.vigil.dev")).await.unwrap();
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        assert!(established, "{plural} is not Established");
        let names = &crd.spec.names;
        assert_eq!(names.short_names.as_deref(), Some(&[short.to_string()][..]));
        assert_eq!(
            names.categories.as_deref(),
            Some(&["vigil".to_string()][..])
        );
        let version = &crd.spec.versions[0];
        let got: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(got, columns, "{plural} printer columns");
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some(), "{plural} has no status subresource");
        assert_eq!(
            sub.scale.is_some(),
            plural == "streampipelines",
            "{plural} scale subresource"
        );
    }
}

/// Applies `doc` and returns the API server's message, which must be a 422.
async fn rejection(ns: &TestNamespace, doc: &str) -> String {
    let value: serde_json::Value = serde_norway::from_str(doc).unwrap();
    match ns.apply_value(value).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        other => panic!("expected a 422 rejection, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn invalid_objects_are_rejected_with_field_messages() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-crd").await;

    let message = rejection(
        &ns,
        r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: bad}
spec:
  source: {kafka: {topics: [], consumerGroup: g}}
  format: {eventTime: {field: ts}, wide: {fields: [{name: "1x"}]}, narrow: {parameterField: p, valueField: v}}
  windows: [{name: fast, size: 30s, slide: 60s}, {name: fast, size: 0s}]
  parallelism: 0
  sinks: {alerts: {topic: a}}
"#,
    )
    .await;
    for expected in [
        "spec.parallelism: Invalid value: 0",
        "window names must be unique",
        "spec.source.kafka.topics: Invalid value: at least one topic is required",
        "spec.windows[0]: Invalid value: slide must not exceed size",
        "spec.windows[1]: Invalid value: size must be positive",
        "spec.format: Invalid value: exactly one of wide or narrow must be set",
        "spec.format.wide.fields[0].name: Invalid value: \"1x\": field names are identifiers",
    ] {
        assert!(
            message.contains(expected),
            "missing `{expected}` in: {message}"
        );
    }

    let message = rejection(
        &ns,
        r#"
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: bad}
spec:
  window: fast
  threshold: {field: value, feature: max, operator: ">", value: 1}
  baseline: {field: value, method: ZScore, history: 1h, threshold: 3}
"#,
    )
    .await;
    assert!(
        message.contains("exactly one of threshold, baseline, expression, model, detector or ensemble must be set"),
        "{message}"
    );
    let message = rejection(
        &ns,
        r#"
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: bad}
spec:
  window: fast
  severity: urgent
  threshold: {field: value, feature: median, operator: "!=", value: 1}
"#,
    )
    .await;
    for expected in [
        "spec.threshold.operator: Unsupported value: \"!=\"",
        "spec.threshold.feature: Unsupported value: \"median\"",
        "spec.severity: Unsupported value: \"urgent\"",
    ] {
        assert!(
            message.contains(expected),
            "missing `{expected}` in: {message}"
        );
    }

    let message = rejection(
        &ns,
        r#"
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: bad}
spec:
  revision: v1
  artifact: {uri: "configmap://x/y", sha256: "XYZ"}
  input: {tensor: X, window: a, features: []}
  output: {tensor: s, threshold: 0}
"#,
    )
    .await;
    for expected in [
        "spec.revision: Invalid value: \"v1\": revision is a version number",
        "spec.artifact.sha256: Invalid value: \"XYZ\": sha256 is 64 lower-case hex digits",
        "spec.input.features: Invalid value: at least one feature is required",
    ] {
        assert!(
            message.contains(expected),
            "missing `{expected}` in: {message}"
        );
    }
    ns.delete().await;
}
