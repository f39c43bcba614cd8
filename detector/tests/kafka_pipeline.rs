//! Against a real broker (`KAFKA_BOOTSTRAP`): events produced to a topic go through the
//! detector and come out as CloudEvents alerts and KPI records; offsets committed on a graceful
//! stop never pass an event held in an open window; rules replaced while running take effect.

mod kafka_support;

use std::time::Duration;

use kafka_support::*;
use rdkafka::Message;
use vigil_core::rules::alert::fingerprint;
use vigil_detector::runner::{self, Control, RunnerConfig};
use vigil_detector::telemetry::Metrics;

fn pipeline_yaml(
    name: &str,
    src: &str,
    group: &str,
    alerts: &str,
    kpis: &str,
    rule: &str,
) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: {name}}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  features: [count, max, min, mean]
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s}}]
  sinks: {{alerts: {{topic: {alerts}}}, kpis: {{topic: {kpis}}}}}
---
{rule}"#
    )
}

const HOT: &str = "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: hot}\nspec: {window: w, threshold: {field: v, feature: max, operator: '>', value: 10}}\n";

fn ev(t: i64, v: f64) -> (Option<&'static str>, Vec<u8>) {
    (
        Some("a"),
        format!(r#"{{"k":"a","t":{t},"v":{v}}}"#).into_bytes(),
    )
}

#[test]
fn events_become_cloudevent_alerts_and_kpis_and_commits_stop_at_open_windows() {
    let b = bootstrap();
    let (src, alerts, kpis, group) = (
        unique("src"),
        unique("alerts"),
        unique("kpis"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&kpis, 1)]);
    let (p, rules) = manifests(&pipeline_yaml("orders", &src, &group, &alerts, &kpis, HOT));
    let metrics = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), metrics.clone())
        .expect("runner starts");
    // [1000, 2000) has max 20 -> firing once t=2100 passes its end; [2000, 3000) is calm ->
    // resolved at t=3100; [3000, 4000) stays open and holds offsets 3 and 4.
    produce(
        &b,
        &src,
        &[
            ev(1000, 20.0),
            ev(1500, 1.0),
            ev(2100, 1.0),
            ev(3100, 1.0),
            ev(3200, 2.0),
        ],
    );
    let got = read(&b, &alerts, 2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "expected a firing and a resolved alert");
    let fp = fingerprint("orders", "hot", "a");
    let a0 = json(&got[0]);
    assert_eq!(a0["specversion"], "1.0");
    assert_eq!(a0["type"], "dev.vigil.alert.firing");
    assert_eq!(a0["id"], format!("{fp}-2000-firing"));
    assert_eq!(a0["data"]["value"], 20.0);
    assert_eq!(a0["data"]["windowStart"], 1000);
    assert_eq!(
        got[0].key(),
        Some(fp.as_bytes()),
        "alerts are keyed by fingerprint"
    );
    assert_eq!(header(&got[0], "ce_id").as_deref(), a0["id"].as_str());
    assert_eq!(
        header(&got[0], "content-type").as_deref(),
        Some("application/cloudevents+json")
    );
    let a1 = json(&got[1]);
    assert_eq!(a1["type"], "dev.vigil.alert.resolved");
    assert_eq!(a1["id"], format!("{fp}-3000-resolved"));

    let k = read(&b, &kpis, 2, Duration::from_secs(10));
    assert_eq!(k.len(), 2, "one KPI record per fired window");
    let k0 = json(&k[0]);
    assert_eq!(
        (
            k0["window"].as_str(),
            k0["start"].as_i64(),
            k0["end"].as_i64()
        ),
        (Some("w"), Some(1000), Some(2000))
    );
    assert_eq!(k0["features"]["v.count"], 2.0);
    assert_eq!(k0["features"]["v.max"], 20.0);

    assert!(
        wait_until(Duration::from_secs(5), || metrics.events_in() == 5),
        "metrics count the 5 records"
    );
    h.stop();
    let s = h.join().expect("clean stop");
    assert_eq!((s.counters.records, s.alerts_sent), (5, 2));
    assert_eq!(
        committed(&b, &group, &src, 1),
        vec![Some(3)],
        "offset 3 is the first event of the open window [3000, 4000)"
    );
    let text = metrics.encode();
    assert!(
        text.contains("vigil_alerts_total{status=\"firing\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("vigil_events_out_total{sink=\"alerts\"} 2"),
        "{text}"
    );
}

#[test]
fn a_restarted_detector_resumes_from_the_committed_offset_and_rebuilds_the_open_window() {
    let b = bootstrap();
    let (src, alerts, kpis, group) = (
        unique("src"),
        unique("alerts"),
        unique("kpis"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&kpis, 1)]);
    let (p, rules) = manifests(&pipeline_yaml("resume", &src, &group, &alerts, &kpis, HOT));
    // [0, 1000) fires calm; [1000, 2000) holds a 50 at offset 2 but is still open at the stop.
    produce(&b, &src, &[ev(0, 1.0), ev(1000, 1.0), ev(1500, 50.0)]);
    let h = runner::spawn(
        RunnerConfig::new(p.clone(), rules.clone(), b.clone()),
        Metrics::new(),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || committed(&b, &group, &src, 1)
            == vec![Some(1)]),
        "commit stops at offset 1"
    );
    h.stop();
    assert_eq!(h.join().unwrap().counters.records, 3);
    assert!(
        read(&b, &alerts, 1, Duration::from_millis(500)).is_empty(),
        "no window with the 50 has fired yet"
    );
    // A new detector in the same group re-reads offsets 1 and 2, so the window is complete.
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), Metrics::new()).unwrap();
    produce(&b, &src, &[ev(2000, 1.0)]);
    let got = read(&b, &alerts, 1, Duration::from_secs(30));
    h.stop();
    let s = h.join().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(json(&got[0])["data"]["value"], 50.0);
    assert_eq!(
        json(&got[0])["data"]["features"]["v.count"],
        2.0,
        "both events of [1000, 2000) were re-read"
    );
    assert_eq!(
        s.counters.records, 3,
        "the second detector read offsets 1..=3"
    );
}

#[test]
fn rules_replaced_while_running_apply_to_the_next_window() {
    let b = bootstrap();
    let (src, alerts, kpis, group) = (
        unique("src"),
        unique("alerts"),
        unique("kpis"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&kpis, 1)]);
    let (p, rules) = manifests(&pipeline_yaml("reload", &src, &group, &alerts, &kpis, HOT));
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), Metrics::new()).unwrap();
    produce(&b, &src, &[ev(0, 20.0), ev(1000, 1.0)]);
    assert_eq!(
        read(&b, &alerts, 1, Duration::from_secs(30)).len(),
        1,
        "hot fires on [0, 1000)"
    );
    let (_, cold) = manifests(&pipeline_yaml(
        "reload",
        &src,
        &group,
        &alerts,
        &kpis,
        "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: cold}\nspec: {window: w, threshold: {field: v, feature: min, operator: '<', value: 5}}\n",
    ));
    h.control()
        .send(Control::ReplaceRules {
            rules: cold,
            models: vec![],
            changed_at: std::time::Instant::now(),
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    produce(&b, &src, &[ev(2000, 1.0)]);
    let got = read(&b, &alerts, 2, Duration::from_secs(30));
    h.stop();
    h.join().unwrap();
    assert_eq!(got.len(), 2);
    let a = json(&got[1]);
    assert_eq!(
        (a["data"]["rule"].as_str(), a["type"].as_str()),
        (Some("cold"), Some("dev.vigil.alert.firing"))
    );
    assert_eq!(a["data"]["windowStart"], 1000);
}
