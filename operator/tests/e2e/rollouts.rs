//! Analysed model rollouts (`spec.rollout.analysis`) on the real control plane, with a real
//! detector process, real model servers on ONNX Runtime and a real Kafka broker. One pipeline
//! runs two model rules; each model serves a constant-score revision 1 that never alerts and
//! a canary candidate at 50 % of keys:
//! - `flooding`: the candidate flags every window. The operator's analysis fails it: the
//!   detector stops sending it windows (measured: from its first scored window to its last),
//!   the status says why, `Degraded=True RolloutFailed`, a Warning Event; the spec is not
//!   touched (GitOps).
//! - `steady`: the candidate behaves like revision 1 and is promoted after 3 intervals: it
//!   scores every key, `servingRevision` and the history say so, a `RolloutPromoted` Event.
//!
//! Then `kubectl vigil rollback am/steady` (the real kubectl running the plugin) serves
//! revision 1 again: measured from the command to the detector scoring every key with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use sha2::{Digest, Sha256};
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{AnomalyModel, RolloutPhase};

use crate::datapath::LocalDetector;
use crate::harness::{
    Operator, TEST_MANAGER, TestNamespace, admin, condition, create_topic, http_get,
    kafka_bootstrap, repo_root, uuid_like, wait_for,
};
use crate::kubelet::LocalPod;

const KEYS: usize = 40;

fn onnx(name: &str) -> (Vec<u8>, String) {
    let bytes =
        std::fs::read(repo_root().join(format!("models/testdata/constant/{name}.onnx"))).unwrap();
    let sha = format!("{:x}", Sha256::digest(&bytes));
    (bytes, sha)
}

fn manifests(topic: &str, calm: &str, candidates: &[(&str, &str)]) -> String {
    let mut out = format!(
        r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: rolling, labels: {{suite: rolling}}}}
spec:
  source: {{kafka: {{topics: [{topic}], consumerGroup: {topic}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: value}}]}}}}
  windows: [{{name: w, size: 2s}}]
  sinks: {{alerts: {{topic: {topic}.alerts}}}}
"#
    );
    for (model, sha) in candidates {
        out.push_str(&format!(
            r#"---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: {model}-rule}}
spec:
  pipelineSelector: {{matchLabels: {{suite: rolling}}}}
  window: w
  model: {{modelRef: {model}}}
---
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {{name: {model}}}
spec:
  revision: "1"
  artifact: {{uri: "configmap://calm-onnx/model.onnx", sha256: "{calm}"}}
  input:
    tensor: features
    window: w
    features: [value.count, value.sum, value.mean, value.min, value.max, value.stddev, value.last, value.rate, value.p50, value.p95, value.p99]
  output: {{tensor: scores, anomalousWhen: Below, threshold: 0.0}}
  rollout:
    candidate: {{revision: "2", artifact: {{uri: "configmap://{model}-onnx/model.onnx", sha256: "{sha}"}}}}
    strategy: Canary
    weight: 50
    analysis: {{interval: 5s, iterations: 3, minSamples: 20, maxAnomalyRateRatio: 3}}
"#
        ));
    }
    out
}

async fn config_map(ns: &TestNamespace, name: &str, bytes: Vec<u8>) {
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            "model.onnx".to_string(),
            ByteString(bytes),
        )])),
        ..Default::default()
    };
    ns.api::<ConfigMap>()
        .patch(name, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&cm))
        .await
        .unwrap();
}

/// Starts the rendered model server of `model` once its Deployment exists; it listens on
/// loopback ports, returned as the gRPC address.
async fn model_server(ns: &TestNamespace, model: &str) -> (LocalPod, String) {
    let name = format!("{model}-model-server");
    let deployment = wait_for(
        "the model server Deployment",
        Duration::from_secs(60),
        || async { ns.api::<Deployment>().get_opt(&name).await.ok()? },
    )
    .await;
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let server = LocalPod::start(ns, &spec).await;
    let metrics = server.listen["0.0.0.0:8002"].clone();
    wait_for(
        "the model server to serve both revisions",
        Duration::from_secs(60),
        || {
            let metrics = metrics.clone();
            async move {
                let body = http_get(&metrics, "/metrics").await.ok()?;
                (body.contains(&format!(
                    "vigil_model_ready{{model=\"{model}\",version=\"1\"}} 1"
                )) && body.contains(&format!(
                    "vigil_model_ready{{model=\"{model}\",version=\"2\"}} 1"
                )))
                .then_some(())
            }
        },
    )
    .await;
    let grpc = server.listen["0.0.0.0:8001"].clone();
    (server, grpc)
}

/// `vigil_model_scoring_revision_windows_total` of `model` `revision` (served, scored) on
/// the detector's metrics endpoint.
async fn served(metrics: &str, model: &str, revision: &str) -> u64 {
    let Ok(body) = http_get(metrics, "/metrics").await else {
        return 0;
    };
    body.lines()
        .filter(|l| {
            l.starts_with("vigil_model_scoring_revision_windows_total{")
                && l.contains(&format!("model=\"{model}\""))
                && l.contains(&format!("revision=\"{revision}\""))
                && l.contains("role=\"served\"")
                && l.contains("outcome=\"scored\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Produces one event per key every 250 ms with the current time as event time, until
/// `stop`.
fn producer(topic: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use rdkafka::ClientConfig;
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis();
            for k in 0..KEYS {
                let payload = format!(r#"{{"k":"key-{k}","t":{now},"value":{}}}"#, 50 + k % 7);
                let key = format!("key-{k}");
                let _ = p.send(
                    BaseRecord::<str, str>::to(&topic)
                        .key(&key)
                        .payload(&payload),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = p.flush(Duration::from_secs(10));
    })
}

/// The AnomalyModel `name` as rendered into the pipeline's `rules.yaml`.
async fn rendered_model(ns: &TestNamespace, name: &str) -> Option<AnomalyModel> {
    let cm = ns
        .api::<ConfigMap>()
        .get("rolling-detector-config")
        .await
        .ok()?;
    let mut m = Manifests::default();
    m.add_str("rules.yaml", &cm.data?["rules.yaml"]).ok()?;
    m.models
        .into_iter()
        .find(|m| m.metadata.name.as_deref() == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn a_flooding_candidate_is_rolled_back_and_a_good_one_promoted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-rollout").await;
    let sfx = &uuid_like()[..8];
    let topic = format!("e2e-rollout-{sfx}");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.alerts"), 1).await;
    let ip = crate::harness::pod_ip(
        u8::from_str_radix(&sfx[..2], 16).unwrap(),
        vigil_api::contract::detector::METRICS_PORT,
    );
    let op = Operator::start(&client, &ns.name, &[]).await;
    let (calm, calm_sha) = onnx("calm");
    let (flood, flood_sha) = onnx("flood");
    let (calm2, calm2_sha) = onnx("calm-2");
    config_map(&ns, "calm-onnx", calm).await;
    config_map(&ns, "flooding-onnx", flood).await;
    config_map(&ns, "steady-onnx", calm2).await;
    ns.apply_yaml(&manifests(
        &topic,
        &calm_sha,
        &[("flooding", &flood_sha), ("steady", &calm2_sha)],
    ))
    .await;

    let (_flooding_server, flooding_grpc) = model_server(&ns, "flooding").await;
    let (_steady_server, steady_grpc) = model_server(&ns, "steady").await;
    let pod = crate::harness::ready_pod_with_ip(&ns, "rolling-detector-0", &ip, |_| true).await;
    let hosts = [
        (
            format!("flooding-model-server.{}.svc:8001", ns.name),
            flooding_grpc,
        ),
        (
            format!("steady-model-server.{}.svc:8001", ns.name),
            steady_grpc,
        ),
    ];
    let detector = LocalDetector::start_with(&ns, &pod, Some(&ip), &hosts).await;
    let metrics = format!("{ip}:9090");
    // The flood starts at a random phase of the operator's analysis interval (5 s).
    let phase = Duration::from_millis(u64::from_str_radix(&sfx[2..6], 16).unwrap() % 5000);
    tokio::time::sleep(phase).await;
    let stop = Arc::new(AtomicBool::new(false));
    let produce = producer(topic.clone(), stop.clone());

    // The flooding candidate: from its first scored window to its last.
    let mut first = None;
    let (mut last_count, mut last_change) = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    let models = ns.api::<AnomalyModel>();
    loop {
        assert!(
            Instant::now() < deadline,
            "flooding candidate still scored:\n{}",
            detector.log_text()
        );
        let n = served(&metrics, "flooding", "2").await;
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some(now);
        }
        if n != last_count {
            (last_count, last_change) = (n, now);
        }
        let failed = models.get("flooding").await.ok().and_then(|m| {
            m.status?
                .rollout
                .filter(|r| r.phase == RolloutPhase::Failed)
        });
        // Out of traffic: failed, and no new candidate window for three windows (6 s).
        if failed.is_some() && now.duration_since(last_change) > Duration::from_secs(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out_after = last_change.duration_since(first.expect("the candidate scored windows"));
    println!(
        "ROLLOUT flooding candidate out of traffic {:.1} s after its first scored window ({last_count} windows; analysis interval 5 s; events started {:.1} s into the detector's life)",
        out_after.as_secs_f64(),
        phase.as_secs_f64()
    );
    assert!(out_after <= Duration::from_secs(60), "{out_after:?}");
    let m = models.get("flooding").await.unwrap();
    let st = m.status.clone().unwrap();
    let r = st.rollout.unwrap();
    assert!(r.message.contains("maxAnomalyRateRatio"), "{}", r.message);
    let last = r.last_analysis.unwrap();
    assert_eq!(last.candidate.anomaly_rate_per_mille, 1000.0);
    assert_eq!(last.stable.anomaly_rate_per_mille, 0.0);
    let (status, reason, _) = condition(&st.conditions, "Degraded").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "RolloutFailed")
    );
    assert_eq!(st.serving_revision.as_deref(), Some("1"));
    let failed_record = st.history.last().unwrap();
    assert_eq!(
        (failed_record.revision.as_str(), failed_record.outcome),
        ("2", Some(vigil_api::v1alpha1::RevisionOutcome::Failed))
    );
    assert!(
        m.spec.rollout.is_some(),
        "the operator never rewrites the spec"
    );
    let notes = wait_for("a RolloutFailed Event", Duration::from_secs(30), || async {
        Some(crate::harness::event_notes(&ns, "RolloutFailed").await).filter(|e| !e.is_empty())
    })
    .await;
    assert!(notes[0].contains("revision 2 failed"), "{notes:?}");
    // The rendered rules.yaml follows: no rollout for `flooding`.
    wait_for(
        "rules.yaml without the failed candidate",
        Duration::from_secs(30),
        || async {
            let f = rendered_model(&ns, "flooding").await?;
            f.spec.rollout.is_none().then_some(())
        },
    )
    .await;

    // The operator reads the detector's stage lag report too: every stage under spec.lag.warn.
    let (_, reason, message) =
        wait_for("the Lagging condition", Duration::from_secs(60), || async {
            let p = ns
                .api::<vigil_api::v1alpha1::StreamPipeline>()
                .get("rolling")
                .await
                .ok()?;
            condition(&p.status?.conditions, "Lagging").filter(|c| c.0 == "False")
        })
        .await;
    assert_eq!(reason, "WithinThresholds");
    assert!(
        message.contains("under 15 s") && message.contains("1 detector(s)"),
        "{message}"
    );

    // The steady candidate passes 3 intervals and is promoted.
    let promoted = wait_for("steady promoted", Duration::from_secs(120), || async {
        let m = models.get("steady").await.ok()?;
        let s = m.status?;
        (s.rollout.as_ref()?.phase == RolloutPhase::Promoted
            && s.serving_revision.as_deref() == Some("2"))
        .then_some(s)
    })
    .await;
    assert_eq!(promoted.history.last().unwrap().revision, "2");
    assert_eq!(promoted.history.last().unwrap().sha256, calm2_sha);
    assert_eq!(
        promoted.history.last().unwrap().outcome,
        Some(vigil_api::v1alpha1::RevisionOutcome::Promoted)
    );
    let notes = wait_for(
        "a RolloutPromoted Event",
        Duration::from_secs(30),
        || async {
            Some(crate::harness::event_notes(&ns, "RolloutPromoted").await)
                .filter(|e| !e.is_empty())
        },
    )
    .await;
    assert!(
        notes[0].contains("revision 2 passed 3 intervals"),
        "{notes:?}"
    );
    // Every key now on revision 2: revision 1 gets no more windows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (one, two) = (
        served(&metrics, "steady", "1").await,
        served(&metrics, "steady", "2").await,
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        served(&metrics, "steady", "1").await,
        one,
        "revision 1 still scored"
    );
    assert!(served(&metrics, "steady", "2").await >= two + KEYS as u64);

    // `kubectl vigil rollback am/steady`: revision 1 for every key again, no restart.
    let kubectl = |args: &[&str]| crate::harness::kubectl_in(&ns, args);
    let status = kubectl(&["vigil", "status", "am/steady"]);
    assert!(
        status.contains("analysis: revision 2 Promoted, 3 intervals passed"),
        "{status}"
    );
    let t0 = Instant::now();
    let said = kubectl(&["vigil", "rollback", "am/steady"]);
    assert!(
        said.contains("rolled back from revision 2 to revision 1"),
        "{said}"
    );
    wait_for(
        "revision 1 in rules.yaml",
        Duration::from_secs(30),
        || async {
            let s = rendered_model(&ns, "steady").await?;
            (s.spec.revision == "1" && s.spec.rollout.is_none()).then_some(())
        },
    )
    .await;
    let rendered = t0.elapsed();
    // kubelet's ConfigMap refresh (its sync period, up to about a minute in a cluster) is
    // played here at once.
    detector.sync_volumes(&ns).await;
    let two = served(&metrics, "steady", "2").await;
    let before_one = served(&metrics, "steady", "1").await;
    let scored_again = wait_for("every key on revision 1", Duration::from_secs(30), || {
        let metrics = metrics.clone();
        async move {
            let one = served(&metrics, "steady", "1").await;
            (one >= before_one + KEYS as u64).then_some(Instant::now())
        }
    })
    .await;
    let stable_two = served(&metrics, "steady", "2").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        served(&metrics, "steady", "2").await,
        stable_two,
        "revision 2 still scored"
    );
    assert!(
        stable_two <= two + KEYS as u64,
        "at most the windows in flight"
    );
    println!(
        "ROLLOUT kubectl vigil rollback: rules.yaml rendered after {:.2} s; every key scored by revision 1 {:.2} s after the command (kubelet's refresh played at once)",
        rendered.as_secs_f64(),
        scored_again.duration_since(t0).as_secs_f64()
    );
    assert!(
        detector
            .log_text()
            .contains("Rules replaced without restart")
    );

    stop.store(true, Ordering::Relaxed);
    produce.join().unwrap();
    drop(detector);
    assert!(op.terminate().await.success());
    ns.delete().await;
}
