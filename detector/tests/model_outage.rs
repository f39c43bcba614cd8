//! The model server goes away and comes back while a detector runs: rule-based detection goes
//! on, model scoring is marked degraded (metric and log) and skips windows without blocking,
//! and it recovers on its own when the server is back. Real model server and ONNX Runtime on
//! 127.0.0.1 (`eval "$(scripts/setup-onnxruntime.sh)"`).

mod model_support;

use std::time::{Duration, Instant};

use model_support::{Driver, Seen, TestServer, manifests};
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule};
use vigil_core::engine::{Engine, EngineOptions};
use vigil_core::rules::alert::AlertStatus;
use vigil_detector::scoring::{ModelScorer, ScorerConfig};
use vigil_detector::telemetry::Metrics;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// A threshold rule on a 10-minute tier and the Isolation Forest on the hourly tier.
const MANIFESTS: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: plant}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {eventTime: {field: t}, wide: {fields: [{name: value}]}}
  windows:
    - {name: fast, size: 10m}
    - {name: analysis, size: 1h}
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
  output: {tensor: scores, anomalousWhen: Below, threshold: 0.0}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: too-hot}
spec:
  window: fast
  threshold: {field: value, feature: max, operator: ">", value: 100}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: iforest-window}
spec:
  window: analysis
  model: {modelRef: iforest}
"#;

fn scorer_config() -> ScorerConfig {
    ScorerConfig {
        deadline: Duration::from_millis(500),
        retries: 2,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        breaker_failures: 3,
        breaker_open_min: Duration::from_millis(500),
        breaker_open_max: Duration::from_millis(500),
        ..ScorerConfig::default()
    }
}

fn driver(model_server: &str, metrics: &Metrics) -> Driver {
    let m = manifests(MANIFESTS);
    let rules: Vec<&DetectionRule> = m.rules.iter().collect();
    let models: Vec<&AnomalyModel> = m.models.iter().collect();
    let (engine, errors) =
        Engine::from_resources(&m.pipelines[0], &rules, &models, EngineOptions::default()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let mut scorer = ModelScorer::new(scorer_config(), metrics.scoring().clone()).unwrap();
    scorer.route_models(&models, Some(model_server)).unwrap();
    Driver::new(engine, scorer)
}

/// Readings every 5 minutes from `from` (inclusive) to `to` (exclusive); 120 degrees for the
/// first 15 minutes of every third hour (the threshold rule fires, then resolves), 60-ish
/// otherwise. `pause` runs between events (wall time, so the circuit's open period passes).
fn feed(d: &mut Driver, seen: &mut Seen, from: i64, to: i64, pause: Duration) {
    let mut t = from;
    while t < to {
        let hot = (t / HOUR) % 3 == 0 && t % HOUR < 15 * MIN;
        let v = if hot {
            120.0
        } else {
            60.0 + ((t / (5 * MIN)) % 7) as f64
        };
        d.process(
            "press-1",
            format!(r#"{{"t":{t},"value":{v}}}"#).as_bytes(),
            t,
            seen,
        );
        t += 5 * MIN;
        std::thread::sleep(pause);
    }
}

fn count(seen: &Seen, rule: &str) -> usize {
    seen.alerts
        .iter()
        .filter(|a| a.rule == rule && a.status == AlertStatus::Firing)
        .count()
}

#[test]
fn rules_keep_alerting_while_the_model_server_is_down_and_scoring_recovers() {
    let metrics = Metrics::new();
    let server = TestServer::start(0);
    let mut d = driver(&server.uri, &metrics);
    let s = metrics.scoring();

    // Up: every closed hour is scored.
    let mut up = Seen::default();
    feed(&mut d, &mut up, 0, 12 * HOUR, Duration::ZERO);
    let scored_up: usize = up.reports.iter().map(|r| r.scored.len()).sum();
    assert!(scored_up >= 10, "{scored_up} windows scored while up");
    assert!(count(&up, "too-hot") >= 3);
    assert!(!s.is_degraded("iforest"));

    // Down: the server dies. Events keep flowing; the threshold rule keeps alerting; model
    // windows fail, then are skipped while the circuit is open; nothing blocks for long.
    let port = server.kill();
    let mut down = Seen::default();
    let started = Instant::now();
    feed(
        &mut d,
        &mut down,
        12 * HOUR,
        36 * HOUR,
        Duration::from_millis(2),
    );
    let took = started.elapsed();
    let windows_down: usize = down
        .reports
        .iter()
        .map(|r| r.scored.len() + r.failed + r.skipped)
        .sum();
    assert_eq!(
        down.reports.iter().map(|r| r.scored.len()).sum::<usize>(),
        0
    );
    assert!(
        windows_down >= 22,
        "{windows_down} model windows closed while down"
    );
    assert!(
        down.reports.iter().any(|r| r.failed > 0),
        "the first windows are tried and fail"
    );
    assert!(
        down.reports.iter().any(|r| r.skipped > 0),
        "later windows are skipped by the open circuit"
    );
    assert!(
        count(&down, "too-hot") >= 7,
        "rule-based alerts go on: {}",
        count(&down, "too-hot")
    );
    assert!(s.is_degraded("iforest"));
    let text = metrics.encode();
    assert!(
        text.contains(r#"vigil_model_scoring_degraded{model="iforest"} 1"#),
        "{text}"
    );
    assert_eq!(
        (s.windows_total("iforest", "failed") + s.windows_total("iforest", "skipped")) as usize,
        windows_down,
        "every unscored window is counted"
    );
    eprintln!(
        "OUTAGE {} events in {:.2} s with the server down, {windows_down} model windows unscored",
        24 * 12,
        took.as_secs_f64()
    );

    // Back: a new server on the same port; after the open period one trial batch closes the
    // circuit and scoring resumes without any action from the detector.
    let server = TestServer::start(port);
    std::thread::sleep(Duration::from_millis(600));
    let mut back = Seen::default();
    feed(&mut d, &mut back, 36 * HOUR, 48 * HOUR, Duration::ZERO);
    let scored_back: usize = back.reports.iter().map(|r| r.scored.len()).sum();
    assert!(
        scored_back >= 10,
        "{scored_back} windows scored after recovery"
    );
    assert_eq!(back.reports.iter().map(|r| r.failed).sum::<usize>(), 0);
    assert!(!s.is_degraded("iforest"));
    assert!(
        metrics
            .encode()
            .contains(r#"vigil_model_scoring_degraded{model="iforest"} 0"#)
    );
    assert!(count(&back, "too-hot") >= 3);
    drop(server);
}

#[test]
fn a_detector_starts_and_runs_rules_with_no_model_server_listening() {
    // Nothing listens on the port of a server that was started and killed.
    let port = TestServer::start(0).kill();
    let metrics = Metrics::new();
    let mut d = driver(&format!("http://127.0.0.1:{port}"), &metrics);
    let mut seen = Seen::default();
    feed(&mut d, &mut seen, 0, 12 * HOUR, Duration::ZERO);
    assert!(count(&seen, "too-hot") >= 3);
    assert_eq!(
        seen.reports.iter().map(|r| r.scored.len()).sum::<usize>(),
        0
    );
    assert!(metrics.scoring().is_degraded("iforest"));
}
