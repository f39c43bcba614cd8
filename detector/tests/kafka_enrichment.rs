//! Reference data (`spec.enrichment`) on a real broker (`KAFKA_BOOTSTRAP`): alert labels and
//! annotations carry the key's attributes, a key the data does not list gets the declared
//! default, a CEL rule selects by attribute; and an update of the file reaches the labels of the
//! next alerts within the measured time (printed: the file check runs every second).

mod kafka_support;

use std::time::{Duration, Instant};

use kafka_support::*;
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::telemetry::Metrics;

fn pipeline(src: &str, group: &str, alerts: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: pumps}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  features: [count, max]
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s}}]
  sinks: {{alerts: {{topic: {alerts}}}}}
  enrichment: {{configMap: pumps, default: {{site: unknown, owner: nobody}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: hot}}
spec:
  window: w
  threshold: {{field: v, feature: max, operator: '>', value: 50}}
  labels: {{site: '{{{{ attributes.site }}}}'}}
  annotations: {{summary: '{{{{ key }}}} at {{{{ attributes.site }}}}, call {{{{ attributes.owner }}}}'}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: berlin-hot}}
spec:
  window: w
  expression: {{expr: "attributes.site == 'berlin' && features.v.max > 50.0"}}
"#
    )
}

/// One hot second then one cool second for `keys`, starting at `second`.
fn produce_episode(b: &str, topic: &str, keys: &[&str], second: i64) {
    let base = 1_700_000_000_000_i64;
    let mut records = Vec::new();
    for (i, v) in [(0, 90), (1, 10), (2, 10)] {
        for k in keys {
            let t = base + (second + i) * 1000;
            records.push((
                Some(*k),
                format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#).into_bytes(),
            ));
        }
    }
    produce(b, topic, &records);
}

/// Firing alerts of `rule`: (key, site label, summary).
fn firing(b: &str, topic: &str, rule: &str) -> Vec<(String, String, String)> {
    read_all(b, topic)
        .iter()
        .map(json)
        .filter(|j| j["data"]["rule"] == rule && j["data"]["status"] == "firing")
        .map(|j| {
            let d = &j["data"];
            (
                d["key"].as_str().unwrap().to_string(),
                d["labels"]["site"].as_str().unwrap_or("").to_string(),
                d["annotations"]["summary"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn attributes_reach_alerts_and_an_update_reaches_the_next_ones() {
    let b = bootstrap();
    let (src, group, alerts) = (unique("pumps"), unique("enrich"), unique("alerts"));
    create_topics(&b, &[(&src, 1), (&alerts, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("attributes.yaml");
    std::fs::write(&file, "pump-1: {site: berlin, owner: ana}\n").unwrap();
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts));
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.enrichment_file = Some(file.clone());
    let m = Metrics::new();
    let h = runner::spawn(cfg, m.clone()).unwrap();

    produce_episode(&b, &src, &["pump-1", "pump-2"], 0);
    assert!(
        wait_until(Duration::from_secs(60), || firing(&b, &alerts, "hot").len()
            == 2),
        "{:?}",
        firing(&b, &alerts, "hot")
    );
    let mut hot = firing(&b, &alerts, "hot");
    hot.sort();
    assert_eq!(
        hot,
        vec![
            (
                "pump-1".into(),
                "berlin".into(),
                "pump-1 at berlin, call ana".into()
            ),
            (
                "pump-2".into(),
                "unknown".into(),
                "pump-2 at unknown, call nobody".into()
            ),
        ]
    );
    let berlin: Vec<String> = firing(&b, &alerts, "berlin-hot")
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(berlin, vec!["pump-1".to_string()]);

    // pump-2 is installed in Berlin: the file changes (as kubelet swaps a ConfigMap's files).
    let tmp = dir.path().join(".attributes.yaml.new");
    std::fs::write(
        &tmp,
        "pump-1: {site: berlin, owner: ana}\npump-2: {site: berlin, owner: ben}\n",
    )
    .unwrap();
    let written = Instant::now();
    std::fs::rename(&tmp, &file).unwrap();
    let reloaded = "vigil_enrichment_loads_total{result=\"reloaded\"} 1";
    assert!(
        wait_until(Duration::from_secs(10), || m.encode().contains(reloaded)),
        "{}",
        m.encode()
    );
    let reload_latency = written.elapsed();
    produce_episode(&b, &src, &["pump-2"], 10);
    assert!(
        wait_until(Duration::from_secs(60), || firing(&b, &alerts, "hot").len()
            == 3),
        "{:?}",
        firing(&b, &alerts, "hot")
    );
    let to_alert = written.elapsed();
    let last = firing(&b, &alerts, "hot").pop().unwrap();
    assert_eq!(
        last,
        (
            "pump-2".into(),
            "berlin".into(),
            "pump-2 at berlin, call ben".into()
        )
    );
    assert!(
        firing(&b, &alerts, "berlin-hot")
            .iter()
            .any(|f| f.0 == "pump-2")
    );
    println!(
        "MEASURED enrichment: file replaced -> reloaded {:.0} ms; -> first alert with the new labels {:.0} ms (including producing the events)",
        reload_latency.as_secs_f64() * 1e3,
        to_alert.as_secs_f64() * 1e3
    );

    // A file that does not parse keeps the data in use.
    std::fs::write(&file, "pump-2: [not, a, map]\n").unwrap();
    assert!(wait_until(Duration::from_secs(10), || m
        .encode()
        .contains("vigil_enrichment_loads_total{result=\"invalid\"} 1")));
    assert!(
        m.encode().contains("vigil_enrichment_keys 2"),
        "{}",
        m.encode()
    );
    h.stop();
    h.join().unwrap();
}

#[test]
fn a_pipeline_with_enrichment_and_no_file_stops_naming_the_variable() {
    let b = bootstrap();
    let (p, rules) = manifests(&pipeline(&unique("pumps"), &unique("g"), &unique("alerts")));
    let mut cfg = RunnerConfig::new(p, rules, b);
    cfg.enrichment_file = None;
    let e = runner::spawn(cfg, Metrics::new()).err().unwrap();
    let chain = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("VIGIL_ENRICHMENT_FILE"), "{chain}");
}

/// Writes reference data records (`None`: a tombstone) to `topic`, in order.
fn produce_reference(b: &str, topic: &str, records: &[(String, Option<String>)]) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (k, v) in records {
        let mut r = BaseRecord::<str, str>::to(topic).key(k);
        if let Some(v) = v {
            r = r.payload(v);
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn reference_data_from_a_compacted_topic_is_loaded_then_followed() {
    const KEYS: usize = 20_000;
    let b = bootstrap();
    let (src, group, alerts, refs) = (
        unique("pumps"),
        unique("enrich"),
        unique("alerts"),
        unique("pump-refs"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1)]);
    create_topic_with(&b, &refs, 2, &[("cleanup.policy", "compact")]);
    // 20,000 keys; then pump-1 moves to Berlin, pump-5 is deleted (a tombstone) and pump-7 gets
    // a record that does not parse (it keeps its attributes).
    let mut records: Vec<(String, Option<String>)> = (0..KEYS)
        .map(|i| {
            (
                format!("pump-{i}"),
                Some(format!(
                    r#"{{"site":"site-{}","owner":"crew-{i}"}}"#,
                    i % 50
                )),
            )
        })
        .collect();
    records.push((
        "pump-1".into(),
        Some(r#"{"site":"berlin","owner":"ana"}"#.into()),
    ));
    records.push(("pump-5".into(), None));
    records.push(("pump-7".into(), Some("[1, 2]".into())));
    let bytes: usize = records
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
        .sum();
    produce_reference(&b, &refs, &records);

    let yaml = pipeline(&src, &group, &alerts).replace(
        "enrichment: {configMap: pumps,",
        &format!("enrichment: {{topic: {refs},"),
    );
    let (p, rules) = manifests(&yaml);
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.enrichment_file = None;
    let m = Metrics::new();
    let t0 = Instant::now();
    let h = runner::spawn(cfg, m.clone()).unwrap();
    let started = t0.elapsed();
    let metrics = m.encode();
    assert!(
        metrics.contains(&format!("vigil_enrichment_keys {}", KEYS - 1)),
        "{metrics}"
    );
    assert!(
        metrics.contains("vigil_enrichment_loads_total{result=\"invalid\"} 1"),
        "{metrics}"
    );

    produce_episode(&b, &src, &["pump-1", "pump-5", "pump-7"], 0);
    assert!(
        wait_until(Duration::from_secs(60), || firing(&b, &alerts, "hot").len()
            == 3),
        "{:?}",
        firing(&b, &alerts, "hot")
    );
    let mut hot = firing(&b, &alerts, "hot");
    hot.sort();
    assert_eq!(
        hot,
        vec![
            (
                "pump-1".into(),
                "berlin".into(),
                "pump-1 at berlin, call ana".into()
            ),
            (
                "pump-5".into(),
                "unknown".into(),
                "pump-5 at unknown, call nobody".into()
            ),
            (
                "pump-7".into(),
                "site-7".into(),
                "pump-7 at site-7, call crew-7".into()
            ),
        ]
    );

    // A live update: pump-2 moves to Berlin.
    let written = Instant::now();
    produce_reference(
        &b,
        &refs,
        &[(
            "pump-2".into(),
            Some(r#"{"site":"berlin","owner":"ben"}"#.into()),
        )],
    );
    let updated = "vigil_enrichment_loads_total{result=\"updated\"} 1";
    assert!(
        wait_until(Duration::from_secs(10), || m.encode().contains(updated)),
        "{}",
        m.encode()
    );
    let update_latency = written.elapsed();
    produce_episode(&b, &src, &["pump-2"], 10);
    assert!(
        wait_until(Duration::from_secs(60), || firing(&b, &alerts, "hot").len()
            == 4),
        "{:?}",
        firing(&b, &alerts, "hot")
    );
    let to_alert = written.elapsed();
    let last = firing(&b, &alerts, "hot").pop().unwrap();
    assert_eq!(
        last,
        (
            "pump-2".into(),
            "berlin".into(),
            "pump-2 at berlin, call ben".into()
        )
    );
    println!(
        "MEASURED enrichment topic: {} records ({} keys, {:.1} MB of keys and values) loaded before the start: spawn took {:.0} ms; record written -> applied {:.0} ms (includes producing it); -> first alert with the new labels {:.0} ms (including producing the events)",
        records.len(),
        KEYS - 1,
        bytes as f64 / 1e6,
        started.as_secs_f64() * 1e3,
        update_latency.as_secs_f64() * 1e3,
        to_alert.as_secs_f64() * 1e3
    );
    h.stop();
    h.join().unwrap();
}

#[test]
fn a_missing_reference_data_topic_stops_the_run_naming_it() {
    let b = bootstrap();
    let refs = unique("no-such-refs");
    let yaml = pipeline(&unique("pumps"), &unique("g"), &unique("alerts")).replace(
        "enrichment: {configMap: pumps,",
        &format!("enrichment: {{topic: {refs},"),
    );
    let (p, rules) = manifests(&yaml);
    let mut cfg = RunnerConfig::new(p, rules, b);
    cfg.enrichment_file = None;
    let e = runner::spawn(cfg, Metrics::new()).err().unwrap();
    let chain = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        chain.contains(&format!("spec.enrichment.topic {refs}")),
        "{chain}"
    );
}
