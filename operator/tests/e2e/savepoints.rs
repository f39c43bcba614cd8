//! `upgradeMode: Savepoint` on the real control plane, with a real detector (`vigil run` with
//! the rendered pod's command, played by the harness) checkpointing to a real S3-compatible
//! store (SeaweedFS) and the operator reaching it over HTTP at its pod IP (a loopback address
//! the harness gives the pod, since pods do not run under kwok):
//! 1. a spec change holds the detectors (StatefulSet and ConfigMap unchanged) until the
//!    Savepoint the operator creates completes, then rolls them with `restoreFrom`; the new
//!    detector restores the savepoint's keys;
//! 2. a savepoint that fails (the detector cannot be reached) blocks the next upgrade with
//!    `Ready=False` reason `SavepointFailed` and rolls nothing.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use vigil_api::v1alpha1::{Savepoint, SavepointPhase, StreamPipeline};

use crate::datapath::LocalDetector;
use crate::harness::{
    Operator, TestNamespace, admin, condition, create_topic, kafka_bootstrap, uuid_like, wait_for,
};

fn s3_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run e2e/tests/operator.sh (it starts scripts/seaweedfs.sh)")
    })
}

fn manifests(sfx: &str, source: &str, alerts: &str, skew: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: s3}}
type: Opaque
stringData:
  AWS_ENDPOINT: "{endpoint}"
  AWS_ALLOW_HTTP: "true"
  AWS_REGION: "{region}"
  AWS_ACCESS_KEY_ID: "{key}"
  AWS_SECRET_ACCESS_KEY: "{secret}"
---
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: durable, labels: {{app.kubernetes.io/part-of: e2e-durable}}}}
spec:
  source: {{kafka: {{topics: [{source}], consumerGroup: e2e-durable-{sfx}}}}}
  format: {{keyField: k, eventTime: {{field: t, maxFutureSkew: {skew}}}, wide: {{fields: [{{name: v}}]}}}}
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s, idleTimeout: 10m}}]
  features: [count, mean, max]
  parallelism: 1
  sinks: {{alerts: {{topic: {alerts}}}}}
  checkpointing: {{interval: 1s, location: "s3://vigil/e2e-{sfx}", credentialsSecret: s3}}
  upgradeMode: Savepoint
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: durable-shift}}
spec:
  pipelineSelector: {{matchLabels: {{app.kubernetes.io/part-of: e2e-durable}}}}
  window: w
  baseline: {{field: v, feature: mean, method: ZScore, history: 30s, threshold: 4, minSamples: 10}}
"#,
        endpoint = s3_env("AWS_ENDPOINT"),
        region = s3_env("AWS_REGION"),
        key = s3_env("AWS_ACCESS_KEY_ID"),
        secret = s3_env("AWS_SECRET_ACCESS_KEY"),
    )
}

fn template_annotation(sts: &StatefulSet, key: &str) -> Option<String> {
    vigil_operator::controller::stream_pipeline::upgrade::template_annotation(sts, key)
        .map(str::to_string)
}

/// The detector pod with the StatefulSet's current template, given `ip` as its pod IP.
async fn pod_with_ip(ns: &TestNamespace, config_hash: &str, ip: &str) -> Pod {
    crate::harness::ready_pod_with_ip(ns, "durable-detector-0", ip, |pod| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("vigil.dev/config-hash"))
            .is_some_and(|h| h == config_hash)
    })
    .await
}

/// Produces `n` events per key (one per second of event time from `from`), keys k0..k3.
fn produce(source: &str, from: i64, n: i64) {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let base = 1_700_000_000_000_i64;
    for s in from..from + n {
        for k in 0..4 {
            let v = 10 + (s * 7 + k) % 5;
            let payload = format!(r#"{{"k":"k{k}","t":{},"v":{v}}}"#, base + s * 1000);
            p.send(
                BaseRecord::<str, str>::to(source)
                    .key(&format!("k{k}"))
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn an_upgrade_waits_for_its_savepoint_and_a_failed_one_rolls_nothing() {
    // Plain HTTP to the detector's metrics port; reqwest's rustls still wants a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-savepoint").await;
    let sfx = &uuid_like()[..8];
    let (source, alerts) = (format!("e2e-sp-{sfx}"), format!("e2e-sp-{sfx}.alerts"));
    create_topic(&source, 1).await;
    create_topic(&alerts, 1).await;
    // A loopback address of its own for the detector "pod" (127.0.0.2..254).
    let ip = crate::harness::pod_ip(
        u8::from_str_radix(&sfx[..2], 16).unwrap(),
        vigil_api::contract::detector::METRICS_PORT,
    );
    let op = Operator::start(&client, &ns.name, &[]).await;
    ns.apply_yaml(&manifests(sfx, &source, &alerts, "5m")).await;
    let sts_api = ns.api::<StatefulSet>();
    let sts = wait_for("the StatefulSet", Duration::from_secs(30), || async {
        sts_api.get_opt("durable-detector").await.ok()?
    })
    .await;
    let first_spec = template_annotation(&sts, "vigil.dev/spec-hash").unwrap();
    let first_config = template_annotation(&sts, "vigil.dev/config-hash").unwrap();
    let pod = pod_with_ip(&ns, &first_config, &ip).await;
    let detector = LocalDetector::start_at(&ns, &pod, Some(&ip)).await;

    // Some history, checkpointed.
    produce(&source, 0, 60);
    let metrics_url = format!("http://{ip}:9090/metrics");
    wait_for(
        "a completed checkpoint",
        Duration::from_secs(60),
        || async {
            let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| {
                    l.starts_with("vigil_checkpoints_total{")
                        && l.contains("result=\"completed\"")
                        && !l.ends_with(" 0")
                })
                .then_some(())
        },
    )
    .await;

    // The operator takes a savepoint only for running detectors (ready replicas).
    wait_for(
        "the StatefulSet to report its ready detector",
        Duration::from_secs(60),
        || async {
            let sts = sts_api.get("durable-detector").await.ok()?;
            (sts.status?.ready_replicas? >= 1).then_some(())
        },
    )
    .await;

    // 1. A spec change: held until the savepoint completes, then rolled restoring it.
    ns.apply_yaml(&manifests(sfx, &source, &alerts, "10m"))
        .await;
    let savepoint = wait_for(
        "the upgrade's Savepoint",
        Duration::from_secs(30),
        || async {
            ns.api::<Savepoint>()
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|s| s.spec.pipeline == "durable")
        },
    )
    .await;
    let name = savepoint.metadata.name.clone().unwrap();
    let rolled = wait_for(
        "the detectors rolled to the new spec",
        Duration::from_secs(60),
        || async {
            let sts = sts_api.get("durable-detector").await.ok()?;
            let spec = template_annotation(&sts, "vigil.dev/spec-hash")?;
            if spec == first_spec {
                // Not rolled yet: the savepoint must not be complete for long.
                return None;
            }
            Some(sts)
        },
    )
    .await;
    let sp = ns.api::<Savepoint>().get(&name).await.unwrap();
    let status = sp.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        Some(SavepointPhase::Completed),
        "rolled before the savepoint completed: {status:?}\n{}",
        op.log_text()
    );
    assert_eq!(status.parts.len(), 1, "{status:?}");
    assert_eq!(status.parts[0].pod, "durable-detector-0");
    assert!(
        status.parts[0].keys == 4 && status.size_bytes.unwrap_or(0) > 0,
        "{status:?}"
    );
    let log = detector.log_text();
    assert_eq!(
        log.matches("Savepoint part complete").count(),
        1,
        "the savepoint was taken once\n{log}\n{}",
        op.log_text()
    );
    assert_eq!(
        template_annotation(&rolled, "vigil.dev/restore-from").as_deref(),
        Some(name.as_str())
    );
    let cm = ns
        .api::<k8s_openapi::api::core::v1::ConfigMap>()
        .get("durable-detector-config")
        .await
        .unwrap();
    assert!(
        cm.data.unwrap()["pipeline.yaml"].contains(&format!("restoreFrom: {name}")),
        "the rendered pipeline restores the savepoint"
    );
    // The new detector (the pod of the new template) restores it.
    assert!(detector.terminate().await.success());
    let new_config = template_annotation(&rolled, "vigil.dev/config-hash").unwrap();
    let pod = pod_with_ip(&ns, &new_config, &ip).await;
    let detector = LocalDetector::start_at(&ns, &pod, Some(&ip)).await;
    produce(&source, 60, 5);
    wait_for(
        "the new detector restored the savepoint",
        Duration::from_secs(60),
        || async {
            let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| l == "vigil_restored_keys_total 4")
                .then_some(())
        },
    )
    .await;
    let log = detector.log_text();
    assert!(
        log.contains("State restored from checkpoint") && log.contains(&name),
        "{log}"
    );

    // 2. The detector goes away (the pod still looks ready): the next upgrade's savepoint
    // fails and nothing is rolled.
    assert!(detector.terminate().await.success());
    ns.apply_yaml(&manifests(sfx, &source, &alerts, "20m"))
        .await;
    let pipelines = ns.api::<StreamPipeline>();
    let message = wait_for(
        "Ready=False SavepointFailed",
        Duration::from_secs(90),
        || async {
            let p = pipelines.get("durable").await.ok()?;
            let (status, reason, message) = condition(&p.status?.conditions, "Ready")?;
            (status == "False" && reason == "SavepointFailed").then_some(message)
        },
    )
    .await;
    assert!(message.contains("durable-detector-0"), "{message}");
    assert!(message.contains("no detector was rolled"), "{message}");
    let after = sts_api.get("durable-detector").await.unwrap();
    assert_eq!(
        template_annotation(&after, "vigil.dev/config-hash"),
        Some(new_config),
        "a failed savepoint rolled the detectors"
    );
}

/// The savepoint controller's claim (`InProgress`) is a write conditional on the
/// resourceVersion it read: from a stale copy (its cache lagging its own `Completed`) the
/// API server refuses it, so a finished savepoint is never taken again.
#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn a_status_write_from_a_stale_copy_is_refused() {
    use vigil_api::v1alpha1::SavepointStatus;
    use vigil_operator::apply::{apply_status_if_unchanged, is_conflict};
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-stale").await;
    ns.apply_yaml("apiVersion: vigil.dev/v1alpha1\nkind: Savepoint\nmetadata: {name: sp}\nspec: {pipeline: absent}\n")
        .await;
    let api = ns.api::<Savepoint>();
    let read = api.get("sp").await.unwrap();
    let status = |phase| SavepointStatus {
        phase: Some(phase),
        ..SavepointStatus::default()
    };
    apply_status_if_unchanged(&client, &read, &status(SavepointPhase::Completed))
        .await
        .expect("the copy is current: the write is taken");
    let e = apply_status_if_unchanged(&client, &read, &status(SavepointPhase::InProgress))
        .await
        .expect_err("the copy is stale: the write is refused");
    assert!(is_conflict(&e), "{e:?}");
    let now = api.get("sp").await.unwrap();
    assert_eq!(
        now.status.and_then(|s| s.phase),
        Some(SavepointPhase::Completed)
    );
}
