//! The whole detector (runner, real Kafka broker from `KAFKA_BOOTSTRAP`) with a model rule
//! scored on a real model server (ONNX Runtime from `ORT_DYLIB_PATH`): model windows are
//! scored while the server is up; when it dies, threshold alerts keep reaching the alerts
//! topic and the metrics say scoring is degraded; when it comes back, scoring resumes.
//!
//! Needs `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"` and
//! `eval "$(scripts/setup-onnxruntime.sh)"`.

mod kafka_support;
mod model_support;

use std::time::Duration;

use kafka_support::{
    bootstrap, create_topics, json, manifests, produce, read_all, unique, wait_until,
};
use model_support::TestServer;
use model_support::presses::{events, iforest, yaml};
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::scoring::ScorerConfig;
use vigil_detector::telemetry::Metrics;

fn firing(b: &str, topic: &str, rule: &str) -> usize {
    read_all(b, topic)
        .iter()
        .map(json)
        .filter(|a| a["type"] == "dev.vigil.alert.firing" && a["data"]["rule"] == rule)
        .count()
}

#[test]
fn the_detector_keeps_alerting_through_a_model_server_outage() {
    let b = bootstrap();
    let (src, alerts, group) = (unique("src"), unique("alerts"), unique("group"));
    create_topics(&b, &[(&src, 1), (&alerts, 1)]);
    let (p, rules) = manifests(&yaml(&src, &group, &alerts));
    let server = TestServer::start(0);
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.models = iforest(0.0).models;
    cfg.model_server = Some(server.uri.clone());
    cfg.scorer = ScorerConfig {
        deadline: Duration::from_millis(500),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        breaker_open_min: Duration::from_millis(300),
        breaker_open_max: Duration::from_millis(300),
        ..ScorerConfig::default()
    };
    let metrics = Metrics::new();
    let h = runner::spawn(cfg, metrics.clone()).expect("runner starts");
    assert!(h.rule_errors().is_empty(), "{:?}", h.rule_errors());
    let s = metrics.scoring().clone();
    let wait = Duration::from_secs(60);

    // Up: 5-second windows are scored.
    produce(&b, &src, &events("a", 0, 30));
    assert!(
        wait_until(wait, || s.windows_total("iforest", "scored") >= 5),
        "scored {}",
        s.windows_total("iforest", "scored")
    );
    assert!(wait_until(wait, || firing(&b, &alerts, "hot") >= 10));
    assert!(!s.is_degraded("iforest"));

    // Down: threshold alerts keep coming; model windows go unscored, counted, degraded.
    let port = server.kill();
    let hot_before = firing(&b, &alerts, "hot");
    let scored_before = s.windows_total("iforest", "scored");
    produce(&b, &src, &events("a", 30, 60));
    assert!(
        wait_until(wait, || firing(&b, &alerts, "hot") >= hot_before + 10),
        "rule alerts stopped during the outage"
    );
    assert!(wait_until(wait, || s.windows_total("iforest", "failed")
        + s.windows_total("iforest", "skipped")
        >= 5));
    assert_eq!(s.windows_total("iforest", "scored"), scored_before);
    assert!(s.is_degraded("iforest"));
    assert!(
        metrics
            .encode()
            .contains(r#"vigil_model_scoring_degraded{model="iforest"} 1"#)
    );

    // Back on the same port: scoring resumes by itself.
    let server = TestServer::start(port);
    std::thread::sleep(Duration::from_millis(400));
    produce(&b, &src, &events("a", 60, 90));
    assert!(
        wait_until(wait, || s.windows_total("iforest", "scored")
            >= scored_before + 5),
        "scoring did not resume"
    );
    assert!(wait_until(wait, || !s.is_degraded("iforest")));
    // Every record read before stopping (under load the last ones may still be on their way).
    assert!(wait_until(wait, || metrics.events_in() >= 360));
    h.stop();
    let summary = h.join().expect("clean stop");
    assert_eq!(summary.counters.records, 360);
    drop(server);
}
