//! Model rollouts in the whole detector (real Kafka broker, real model server on ONNX Runtime
//! serving revisions 1 and 2 of the Isolation Forest):
//! - Canary at 20 %: the keys whose canary bucket is under 20 (about a fifth) are scored by
//!   revision 2, every window of a key by the same revision; their alerts say `revision: "2"`,
//!   the others `"1"`; the per-revision metrics count each side.
//! - Shadow: revision 2 scores every window too, but every alert comes from revision 1; the
//!   candidate's windows and would-be anomalies are counted per revision and its verdicts are
//!   recorded on the KPI topic (`dev.vigil.model.shadow`).
//!
//! Needs `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"` and
//! `eval "$(scripts/setup-onnxruntime.sh)"`.

mod kafka_support;
mod model_support;

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_support::{
    bootstrap, create_topics, json, manifests, produce, read_all, unique, wait_until,
};
use model_support::presses::FEATURES;
use model_support::{TestServer, repository};
use vigil_api::manifest::Manifests;
use vigil_core::model::canary_bucket;
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::telemetry::Metrics;

const SHA: &str = "7e012d6a342083e143034a47c11a6858f749b9866baebfdb9d3965c8dd52e0cb";
const KEYS: usize = 100;

fn pipeline(src: &str, group: &str, alerts: &str, kpis: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: fleet}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  windows: [{{name: slow, size: 5s}}]
  sinks: {{alerts: {{topic: {alerts}}}, kpis: {{topic: {kpis}}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: forest}}
spec: {{window: slow, model: {{modelRef: iforest}}}}
"#
    )
}

/// Revision 1 with `rollout`; every window passes the threshold, so each key's first scored
/// window fires and the alert names the revision that scored it.
fn model(rollout: &str) -> Manifests {
    let mut m = Manifests::default();
    m.add_str(
        "model",
        &format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {{name: iforest}}\nspec:\n  revision: \"1\"\n  artifact: {{uri: file://models/repository/iforest/1/model.onnx, sha256: {SHA}}}\n  input: {{tensor: features, window: slow, features: {FEATURES}}}\n  output: {{tensor: scores, anomalousWhen: Below, threshold: 1000.0}}\n  rollout: {{candidate: {{revision: \"2\", artifact: {{uri: file://models/repository/iforest/1/model.onnx, sha256: {SHA}}}}}, {rollout}}}\n"
        ),
    )
    .unwrap();
    m
}

/// A repository with the reference Isolation Forest as versions 1 and 2.
fn two_revisions() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for v in ["1", "2"] {
        let to = dir.path().join("iforest").join(v);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["model.onnx", "config.yaml"] {
            std::fs::copy(repository().join("iforest/1").join(f), to.join(f)).unwrap();
        }
    }
    dir
}

/// One event per key and second of event time in `[0, 12)` s: two 5-second windows per key.
fn events() -> Vec<(Option<&'static str>, Vec<u8>)> {
    let mut out = Vec::new();
    for t in 0..12 {
        for k in 0..KEYS {
            out.push((
                None,
                format!(r#"{{"k":"key-{k}","t":{},"v":{}}}"#, t * 1000, 50 + k % 7).into_bytes(),
            ));
        }
    }
    out
}

/// What a run left: the revision of each key's model alert, the shadow records on the KPI
/// topic, and the metrics.
struct Run {
    by_key: BTreeMap<String, String>,
    shadow: Vec<serde_json::Value>,
    metrics: Metrics,
}

/// Runs the detector over [`events`] with `rollout`.
fn run(rollout: &str) -> Run {
    let b = bootstrap();
    let (src, alerts, kpis, group) = (
        unique("src"),
        unique("alerts"),
        unique("kpis"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&kpis, 1)]);
    let repo = two_revisions();
    let server = TestServer::start_in(repo.path(), 0, None);
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts, &kpis));
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.models = model(rollout).models;
    cfg.model_server = Some(server.uri.clone());
    let metrics = Metrics::new();
    let h = runner::spawn(cfg, metrics.clone()).expect("runner starts");
    assert!(h.rule_errors().is_empty(), "{:?}", h.rule_errors());
    produce(&b, &src, &events());
    let s = metrics.scoring().clone();
    let served = |rev| s.revision_windows_total("iforest", rev, "served", "scored");
    assert!(
        wait_until(Duration::from_secs(60), || served("1") + served("2")
            >= 2 * KEYS as u64),
        "{} + {} windows scored",
        served("1"),
        served("2")
    );
    let mut by_key = BTreeMap::new();
    assert!(wait_until(Duration::from_secs(30), || {
        for a in read_all(&b, &alerts).iter().map(json) {
            if a["type"] == "dev.vigil.alert.firing" {
                let key = a["data"]["key"].as_str().unwrap().to_string();
                let rev = a["data"]["labels"]["revision"].as_str().unwrap_or("none");
                by_key.insert(key, rev.to_string());
            }
        }
        by_key.len() == KEYS
    }));
    h.stop();
    h.join().expect("clean stop");
    drop(server);
    let shadow = read_all(&b, &kpis)
        .iter()
        .map(json)
        .filter(|r| r["type"] == "dev.vigil.model.shadow")
        .collect();
    Run {
        by_key,
        shadow,
        metrics,
    }
}

#[test]
fn a_canary_scores_a_fifth_of_the_keys_with_the_candidate_and_labels_their_alerts() {
    let Run {
        by_key,
        shadow,
        metrics,
    } = run("strategy: Canary, weight: 20");
    assert!(shadow.is_empty(), "a canary records no shadow verdicts");
    let canary: Vec<&String> = by_key
        .iter()
        .filter(|(_, rev)| *rev == "2")
        .map(|(k, _)| k)
        .collect();
    assert!(
        (10..=30).contains(&canary.len()),
        "{} of {KEYS} keys on the candidate at weight 20",
        canary.len()
    );
    for (key, rev) in &by_key {
        let expected = if canary_bucket(key) < 20 { "2" } else { "1" };
        assert_eq!(rev, expected, "{key}: routed by its canary bucket");
    }
    let s = metrics.scoring();
    let served = |rev| s.revision_windows_total("iforest", rev, "served", "scored");
    // Both windows of a key went to the same revision.
    assert_eq!(served("2"), 2 * canary.len() as u64);
    assert_eq!(served("1"), 2 * (KEYS - canary.len()) as u64);
    assert_eq!(
        s.revision_windows_total("iforest", "2", "shadow", "scored"),
        0
    );
    let text = metrics.encode();
    assert!(
        text.contains(r#"vigil_model_scoring_revision_anomalous_windows_total{model="iforest",revision="2",role="served"}"#),
        "{text}"
    );
}

#[test]
fn a_shadow_candidate_scores_every_window_and_alerts_on_none() {
    let Run {
        by_key,
        shadow,
        metrics,
    } = run("strategy: Shadow");
    assert!(
        by_key.values().all(|rev| rev == "1"),
        "every alert comes from the stable revision: {by_key:?}"
    );
    let s = metrics.scoring();
    let served = s.revision_windows_total("iforest", "1", "served", "scored");
    assert_eq!(served, 2 * KEYS as u64);
    assert_eq!(
        s.revision_windows_total("iforest", "2", "served", "scored"),
        0
    );
    assert!(
        wait_until(Duration::from_secs(5), || s
            .revision_windows_total("iforest", "2", "shadow", "scored")
            == served),
        "the candidate scored every window in the shadow"
    );
    assert_eq!(
        s.revision_anomalous_total("iforest", "2", "shadow"),
        served,
        "and would have flagged each (threshold 1000)"
    );
    // The would-be verdicts are recorded on the KPI topic, one per window.
    assert_eq!(
        shadow.len() as u64,
        served,
        "shadow records on the KPI topic"
    );
    let keys: std::collections::BTreeSet<&str> =
        shadow.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys.len(), KEYS);
    assert!(
        shadow.iter().all(|r| r["revision"] == "2"
            && r["servedRevision"] == "1"
            && r["rule"] == "forest"
            && r["anomalous"] == true),
        "{:?}",
        shadow.first()
    );
}

/// One HTTP/1.1 request to `addr`; the status code and body.
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The operator's side of an analysed rollout, over the detector's real HTTP endpoint:
/// `GET /rollouts` reports each revision's windows, and `POST /rollouts/iforest` with an
/// `Abort` takes the canary keys back to the stable revision at once, without a restart
/// (their next windows are scored by revision 1; state is kept).
#[test]
fn an_aborted_canary_goes_back_to_the_stable_revision_without_a_restart() {
    use vigil_api::contract::detector::rollouts::RolloutEvidence;
    let b = bootstrap();
    let (src, alerts, kpis, group) = (
        unique("src"),
        unique("alerts"),
        unique("kpis"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&kpis, 1)]);
    let repo = two_revisions();
    let server = TestServer::start_in(repo.path(), 0, None);
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts, &kpis));
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.models = model("strategy: Canary, weight: 20").models;
    cfg.model_server = Some(server.uri.clone());
    let metrics = Metrics::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, serve) = rt
        .block_on(vigil_detector::telemetry::serve_detector(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            None,
            Some(cfg.rollout_decisions.clone()),
        ))
        .unwrap();
    rt.spawn(serve);
    let h = runner::spawn(cfg, metrics.clone()).expect("runner starts");
    let canary = (0..KEYS)
        .filter(|k| canary_bucket(&format!("key-{k}")) < 20)
        .count() as u64;
    let s = metrics.scoring().clone();
    let served = |rev| s.revision_windows_total("iforest", rev, "served", "scored");

    // Seconds 0-11: windows [0, 5) and [5, 10) close; a fifth of the keys on revision 2.
    produce(&b, &src, &events());
    assert!(wait_until(Duration::from_secs(60), || served("1")
        + served("2")
        >= 2 * KEYS as u64));
    assert_eq!(served("2"), 2 * canary);
    let (code, body) = http(addr, "GET", "/rollouts", "");
    assert_eq!(code, 200, "{body}");
    let ev: RolloutEvidence = serde_json::from_str(&body).unwrap();
    let rev = |r: &str| {
        ev.revisions
            .iter()
            .find(|e| e.model == "iforest" && e.revision == r)
    };
    assert_eq!(rev("2").unwrap().scored, 2 * canary);
    assert_eq!(
        rev("2").unwrap().anomalous,
        2 * canary,
        "threshold 1000: all anomalous"
    );
    assert_eq!(rev("1").unwrap().scored, 2 * (KEYS as u64 - canary));
    assert!(
        rev("2").unwrap().latency.iter().sum::<u64>() >= 1,
        "batches timed"
    );

    // The scoring stage is timed (window closed -> score applied) and in the lag report.
    assert!(
        wait_until(Duration::from_secs(10), || metrics.encode().contains(
            r#"vigil_stage_latency_seconds_count{stage="closed_to_scored"}"#
        )),
        "{}",
        metrics.encode()
    );
    // A body that is not a decision is refused, naming the endpoint.
    let (code, body) = http(addr, "POST", "/rollouts/iforest", r#"{"candidate":"2"}"#);
    assert_eq!(code, 400);
    assert!(body.contains("POST /rollouts/iforest"), "{body}");
    let (code, _) = http(
        addr,
        "POST",
        "/rollouts/iforest",
        r#"{"candidate":"2","decision":"Abort"}"#,
    );
    assert_eq!(code, 204);
    // The run loop applies it at its next tick (every 50-100 ms).
    std::thread::sleep(Duration::from_secs(1));

    // Seconds 12-23: windows [10, 15) and [15, 20) close, every key on revision 1.
    let later: Vec<_> = events()
        .into_iter()
        .map(|(k, v)| {
            let e: serde_json::Value = serde_json::from_slice(&v).unwrap();
            let t = e["t"].as_i64().unwrap() + 12_000;
            (
                k,
                format!(
                    r#"{{"k":"{}","t":{t},"v":{}}}"#,
                    e["k"].as_str().unwrap(),
                    e["v"]
                )
                .into_bytes(),
            )
        })
        .collect();
    produce(&b, &src, &later);
    assert!(
        wait_until(Duration::from_secs(60), || served("1") + served("2")
            >= 4 * KEYS as u64),
        "{} + {} windows scored",
        served("1"),
        served("2")
    );
    assert_eq!(
        served("2"),
        2 * canary,
        "no window went to revision 2 after the abort"
    );
    assert_eq!(served("1"), 4 * KEYS as u64 - 2 * canary);
    h.stop();
    h.join().expect("clean stop");
    drop(server);
}
