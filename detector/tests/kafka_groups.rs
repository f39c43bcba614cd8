//! Entity groups (`spec.groups`) on a real broker (`KAFKA_BOOTSTRAP`): two detectors in one
//! consumer group each own one of the source's two partitions, and every region has hosts on
//! both. Their group stages assemble each region's windows from both detectors' partials
//! through the group topic: the region windows on the KPI topic equal the sums over the
//! produced events, a region-wide rise in errors that no single host crosses fires the group
//! rule for that region only, and a composite KPI (error rate) is on the records. The same
//! holds for two engine workers of one process (`RunnerConfig::workers`), whose one group stage
//! takes both workers' partials.

mod kafka_support;

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use vigil_api::v1alpha1::{DetectionRule, StreamPipeline};
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::telemetry::Metrics;

fn pipeline(src: &str, group: &str, alerts: &str, kpis: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: cdn}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: host, eventTime: {{field: t}}, wide: {{fields: [{{name: errors}}, {{name: requests}}]}}}}
  features: [count, sum, max]
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s}}]
  sinks: {{alerts: {{topic: {alerts}}}, kpis: {{topic: {kpis}}}}}
  enrichment: {{configMap: hosts}}
  groups:
    topic: {src}.groups
    by: [{{name: region, attribute: region}}]
    kpis: [{{name: error_rate, expression: "features.errors.sum / features.requests.sum"}}]
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: region-errors}}
spec:
  window: w
  group: region
  threshold: {{field: errors, feature: sum, operator: '>', value: 15}}
  annotations: {{summary: '{{{{ key }}}}: {{{{ errors.sum | int }}}} errors on {{{{ keys.count | int }}}} hosts'}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: host-errors}}
spec:
  window: w
  threshold: {{field: errors, feature: max, operator: '>', value: 10}}
"#
    )
}

/// Hosts h0..h7: even ones in eu, odd ones in us; host i goes to partition i % 2, so both
/// regions span both partitions (and both detectors).
const HOSTS: i32 = 8;
const REFERENCE: &str = "h0: {region: eu}\nh1: {region: us}\nh2: {region: eu}\nh3: {region: us}\nh4: {region: eu}\nh5: {region: us}\nh6: {region: eu}\nh7: {region: us}\n";
const SECONDS: i64 = 10;
/// In second 4 every eu host reports 5 errors: 20 in the region, no host above 10.
const INCIDENT: i64 = 4;

fn errors(host: i32, second: i64) -> i64 {
    if second == INCIDENT && host % 2 == 0 {
        5
    } else {
        1
    }
}

fn produce_traffic(b: &str, src: &str) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let base = 1_700_000_000_000_i64;
    for s in 0..SECONDS {
        for h in 0..HOSTS {
            let key = format!("h{h}");
            let payload = format!(
                r#"{{"host":"{key}","t":{},"errors":{},"requests":10}}"#,
                base + s * 1000 + 100 * i64::from(h),
                errors(h, s)
            );
            p.send(
                BaseRecord::<str, str>::to(src)
                    .key(&key)
                    .payload(&payload)
                    .partition(h % 2),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Region windows on the KPI topic (first firings): (region key, start) -> features.
fn region_windows(b: &str, kpis: &str) -> BTreeMap<(String, i64), serde_json::Value> {
    read_all(b, kpis)
        .iter()
        .map(json)
        .filter(|j| {
            j["key"].as_str().is_some_and(|k| k.starts_with("region/")) && j["update"] == false
        })
        .map(|j| {
            (
                (
                    j["key"].as_str().unwrap().to_string(),
                    j["start"].as_i64().unwrap(),
                ),
                j["features"].clone(),
            )
        })
        .collect()
}

#[test]
fn region_windows_span_detectors_and_group_rules_fire_on_them() {
    let (b, [src, alerts, kpis], dir, (p, rules)) = setup();
    let file = dir.path().join("attributes.yaml");
    let start = |member: &str| {
        let mut cfg = RunnerConfig::new(p.clone(), rules.clone(), b.clone());
        cfg.enrichment_file = Some(file.clone());
        cfg.group_instance_id = Some(member.to_string());
        runner::spawn(cfg, Metrics::new()).unwrap()
    };
    let (d0, d1) = (start("d0"), start("d1"));
    // Both members hold a source partition before the traffic (the split is what is tested).
    assert!(
        wait_until(Duration::from_secs(60), || d0.assignment().len() == 1
            && d1.assignment().len() == 1),
        "{:?} {:?}",
        d0.assignment(),
        d1.assignment()
    );
    check_regions(&b, (&src, &alerts, &kpis));
    d0.stop();
    d1.stop();
    d0.join().unwrap();
    d1.join().unwrap();
}

#[test]
fn region_windows_span_the_engine_workers_of_one_process() {
    let (b, [src, alerts, kpis], dir, (p, rules)) = setup();
    let file = dir.path().join("attributes.yaml");
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.enrichment_file = Some(file);
    cfg.workers = 2;
    let d = runner::spawn(cfg, Metrics::new()).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || d
            .worker_assignments()
            .iter()
            .all(|w| w.len() == 1)),
        "{:?}",
        d.worker_assignments()
    );
    check_regions(&b, (&src, &alerts, &kpis));
    d.stop();
    d.join().unwrap();
}

/// Topics (source, alerts, KPIs), the reference data file's folder and the manifests.
fn setup() -> (
    String,
    [String; 3],
    tempfile::TempDir,
    (StreamPipeline, Vec<DetectionRule>),
) {
    let b = bootstrap();
    let (src, group, alerts, kpis) = (
        unique("cdn"),
        unique("groups"),
        unique("alerts"),
        unique("kpis"),
    );
    create_topics(&b, &[(&src, 2), (&alerts, 1), (&kpis, 1)]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("attributes.yaml"), REFERENCE).unwrap();
    let m = manifests(&pipeline(&src, &group, &alerts, &kpis));
    (b, [src, alerts, kpis], dir, m)
}

/// Writes the traffic and checks the region windows and the group rule's alerts.
fn check_regions(b: &str, (src, alerts, kpis): (&str, &str, &str)) {
    produce_traffic(b, src);

    // Windows of seconds 0..SECONDS-1 close (the last second's windows wait for later events).
    let want = 2 * (SECONDS - 1) as usize;
    assert!(
        wait_until(Duration::from_secs(90), || region_windows(b, kpis).len()
            >= want),
        "{:?}",
        region_windows(b, kpis).keys().collect::<Vec<_>>()
    );
    let windows = region_windows(b, kpis);
    assert_eq!(
        windows.len(),
        want,
        "one first firing per region and second"
    );
    let base = 1_700_000_000_000_i64;
    for ((region, start), f) in &windows {
        let s = (start - base) / 1000;
        let parity = if region == "region/eu" { 0 } else { 1 };
        let hosts: Vec<i32> = (0..HOSTS).filter(|h| h % 2 == parity).collect();
        let sum: i64 = hosts.iter().map(|h| errors(*h, s)).sum();
        assert_eq!(f["keys.count"], 4.0, "{region} @ {s}: {f}");
        assert_eq!(f["errors.sum"], sum as f64, "{region} @ {s}: {f}");
        assert_eq!(f["requests.sum"], 40.0, "{region} @ {s}: {f}");
        assert_eq!(f["errors.count"], 4.0, "{region} @ {s}: {f}");
        let rate = f["kpi.error_rate"].as_f64().unwrap();
        assert!(
            (rate - sum as f64 / 40.0).abs() < 1e-12,
            "{region} @ {s}: {f}"
        );
    }

    // The group rule fired for eu at the incident and resolved; no host rule fired.
    let all: Vec<serde_json::Value> = read_all(b, alerts).iter().map(json).collect();
    let transitions: Vec<(String, String, String, i64)> = all
        .iter()
        .map(|j| {
            let d = &j["data"];
            (
                d["rule"].as_str().unwrap().to_string(),
                d["key"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
                (d["windowStart"].as_i64().unwrap_or(0) - base) / 1000,
            )
        })
        .collect();
    assert!(
        transitions
            .iter()
            .all(|t| t.0 == "region-errors" && t.1 == "region/eu"),
        "{transitions:?}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || read_all(b, alerts).len() >= 2),
        "{transitions:?}"
    );
    let all: Vec<serde_json::Value> = read_all(b, alerts).iter().map(json).collect();
    let firing = all
        .iter()
        .find(|j| j["data"]["status"] == "firing")
        .expect("a firing alert");
    assert_eq!(
        firing["data"]["annotations"]["summary"],
        "region/eu: 20 errors on 4 hosts"
    );
    assert!(all.iter().any(|j| j["data"]["status"] == "resolved"));
}
