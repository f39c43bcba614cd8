//! A source topic's partition count grows mid-stream (4 -> 8, real broker, `file://`
//! checkpoints, two detectors): with `spec.source.kafka.partitioner` declared, the state of the
//! keys that move follows them to their new partitions (handoff checkpoints) and the alerts are
//! those of one uninterrupted detector on a one-partition copy of the stream; a record of a
//! moved key that still comes to its old partition is dead-lettered as `moved_key`. The
//! partitioners themselves are checked against librdkafka's.

mod kafka_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use vigil_api::v1alpha1::KeyPartitioner;
use vigil_detector::checkpoint::{CheckpointMetadata, METADATA_FILE};
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::source::partitioner::partition_of;
use vigil_detector::telemetry::Metrics;

const KEYS: i32 = 16;
/// Events per key, one every 500 ms of event time.
const STEPS: i64 = 300;

fn pipeline(src: &str, group: &str, alerts: &str, dead: &str, dir: &Path) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: resized}}
spec:
  source:
    kafka:
      topics: [{src}]
      consumerGroup: {group}
      partitioner: Murmur2
      properties: {{session.timeout.ms: "6000", heartbeat.interval.ms: "1000", topic.metadata.refresh.interval.ms: "1000"}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  features: [count, mean, max]
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s, idleTimeout: 10m}}]
  sinks: {{alerts: {{topic: {alerts}}}, deadLetter: {{topic: {dead}}}}}
  checkpointing: {{interval: 1s, location: "file://{dir}"}}
  upgradeMode: LastState
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: hot}}
spec: {{window: w, for: 1s, threshold: {{field: v, feature: max, operator: '>', value: 50}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: shift}}
spec:
  window: w
  baseline: {{field: v, feature: mean, method: ZScore, history: 30s, threshold: 4, minSamples: 20}}
"#,
        dir = dir.display()
    )
}

/// Value of key `k` at step `s`: a noisy level, spikes of three events every 40 steps
/// (staggered per key), and a level shift of every fourth key in the last third: the shift
/// is only an anomaly against a baseline that came across the partition count change.
fn value(k: i32, s: i64) -> f64 {
    let noise = ((s * 7919 + i64::from(k) * 31) % 13) as f64 * 0.1;
    let spike = (s + 5 * i64::from(k)) % 40 < 3;
    let shift = k % 4 == 1 && s >= STEPS * 2 / 3;
    10.0 + noise + if spike { 90.0 } else { 0.0 } + if shift { 5.0 } else { 0.0 }
}

fn producer(b: &str, partitioner: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("enable.idempotence", "true")
        .set("partitioner", partitioner)
        .create()
        .unwrap()
}

/// Produces steps `from..to` of every key, keyed, placed by librdkafka's `murmur2` partitioner
/// (or on `partition` when given).
fn produce_steps(b: &str, topic: &str, from: i64, to: i64, partition: Option<i32>) -> usize {
    let p = producer(b, "murmur2");
    let base = 1_700_000_000_000_i64;
    let mut n = 0;
    for s in from..to {
        for k in 0..KEYS {
            let key = format!("k{k}");
            let payload = format!(
                r#"{{"k":"{key}","t":{},"v":{}}}"#,
                base + s * 500,
                value(k, s)
            );
            let mut r = BaseRecord::<str, str>::to(topic)
                .key(&key)
                .payload(&payload);
            if let Some(q) = partition {
                r = r.partition(q);
            }
            p.send(r).map_err(|(e, _)| e).unwrap();
            n += 1;
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    n
}

fn grow(b: &str, topic: &str, to: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_partitions([&NewPartitions::new(topic, to)], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            vigil_detector::source::admin::high_watermarks(b, topic, Duration::from_secs(5))
                .is_ok_and(|w| w.len() == to)
        }),
        "the topic did not grow to {to} partitions"
    );
}

/// Alerts by CloudEvents id: (status, value, score); duplicates of one id must agree.
fn alerts(b: &str, topic: &str) -> BTreeMap<String, String> {
    let mut by_id = BTreeMap::new();
    for m in read_all(b, topic) {
        let j = json(&m);
        let id = j["id"].as_str().unwrap().to_string();
        let d = &j["data"];
        let what = format!("{} {} {} {}", d["key"], d["status"], d["value"], d["score"]);
        if let Some(prev) = by_id.insert(id.clone(), what.clone()) {
            assert_eq!(prev, what, "two different alerts under one id {id}");
        }
    }
    by_id
}

fn checkpoints(dir: &Path) -> Vec<CheckpointMetadata> {
    let Ok(entries) = std::fs::read_dir(dir.join("resized/checkpoints")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join(METADATA_FILE)).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

#[test]
fn the_partitioners_place_keys_as_librdkafkas_do() {
    let b = bootstrap();
    for (name, ours) in [
        ("murmur2", KeyPartitioner::Murmur2),
        ("consistent", KeyPartitioner::Crc32),
    ] {
        let topic = unique(&format!("placed-{name}"));
        create_topics(&b, &[(&topic, 7)]);
        let p = producer(&b, name);
        for k in 0..200 {
            let key = format!("device-{k}");
            p.send(BaseRecord::<str, str>::to(&topic).key(&key).payload("{}"))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
        let got = read(&b, &topic, 200, Duration::from_secs(30));
        assert_eq!(got.len(), 200);
        for m in &got {
            use rdkafka::Message;
            let key = m.key().unwrap();
            assert_eq!(
                m.partition(),
                partition_of(ours, key, 7),
                "{name}: key {}",
                String::from_utf8_lossy(key)
            );
        }
    }
}

#[test]
fn keys_keep_their_state_when_the_topic_grows_from_4_to_8_partitions() {
    let b = bootstrap();
    let (src, reference_src, group, alerts_topic, dead) = (
        unique("src"),
        unique("ref-src"),
        unique("resized"),
        unique("alerts"),
        unique("dead"),
    );
    create_topics(
        &b,
        &[
            (&src, 4),
            (&reference_src, 1),
            (&alerts_topic, 1),
            (&dead, 1),
        ],
    );
    let moved: Vec<i32> = (0..KEYS)
        .filter(|k| {
            let key = format!("k{k}");
            partition_of(KeyPartitioner::Murmur2, key.as_bytes(), 4)
                != partition_of(KeyPartitioner::Murmur2, key.as_bytes(), 8)
        })
        .collect();
    assert!(moved.len() >= 4, "keys that move: {moved:?}");
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(&src, &group, &alerts_topic, &dead, dir.path());
    let start = |id: &str| {
        let (p, rules) = manifests(&yaml);
        let mut cfg = RunnerConfig::new(p, rules, b.clone());
        cfg.group_instance_id = Some(id.into());
        let m = Metrics::new();
        (runner::spawn(cfg, m.clone()).unwrap(), m)
    };
    let (d0, m0) = start("resized-0");
    let (d1, m1) = start("resized-1");
    assert!(
        wait_until(Duration::from_secs(60), || d0.assignment().len() == 2
            && d1.assignment().len() == 2),
        "two detectors split four partitions"
    );
    // Half the stream on four partitions; the topic grows while the detectors may still be
    // reading it; the rest is written by a producer that sees eight.
    let mut total = produce_steps(&b, &src, 0, STEPS / 2, None);
    grow(&b, &src, 8);
    total += produce_steps(&b, &src, STEPS / 2, STEPS, None);
    let done = wait_until(Duration::from_secs(120), || {
        d0.assignment().len() + d1.assignment().len() == 8
            && committed(&b, &group, &src, 8).iter().flatten().sum::<i64>() == total as i64
    });
    assert!(
        done,
        "the detectors did not take all eight partitions and finish: {:?} {:?}, committed {:?}",
        d0.assignment(),
        d1.assignment(),
        committed(&b, &group, &src, 8)
    );
    // A producer that still places by four partitions: a moved key on its old partition.
    let straggler = moved[0];
    let key = format!("k{straggler}");
    let old = partition_of(KeyPartitioner::Murmur2, key.as_bytes(), 4);
    let p = producer(&b, "murmur2");
    p.send(
        BaseRecord::<str, str>::to(&src)
            .key(&key)
            .payload(&format!(
                r#"{{"k":"{key}","t":{},"v":10}}"#,
                1_700_000_000_000_i64 + STEPS * 500
            ))
            .partition(old),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    let dead_letters = read(&b, &dead, 1, Duration::from_secs(30));
    d0.stop();
    d1.stop();
    let (s0, s1) = (d0.join().unwrap(), d1.join().unwrap());
    assert_eq!(s0.counters.late_dropped + s1.counters.late_dropped, 0);
    assert_eq!(dead_letters.len(), 1, "the straggler is dead-lettered");
    assert_eq!(
        header(&dead_letters[0], "vigil.reason").as_deref(),
        Some("moved_key"),
        "reason {:?}",
        header(&dead_letters[0], "vigil.error")
    );
    assert_eq!(s0.counters.moved_keys + s1.counters.moved_keys, 1);

    // Every old partition wrote a handoff checkpoint at 8 partitions, and the keys that moved
    // were loaded by the owners of the new ones.
    let cps = checkpoints(dir.path());
    for p in 0..4 {
        assert!(
            cps.iter()
                .any(|c| c.partitions.iter().any(|o| o.partition == p
                    && o.handoff_from == Some(4)
                    && o.partition_count == Some(8))),
            "no handoff checkpoint of partition {p}"
        );
    }
    let loaded: u64 = [&m0, &m1]
        .iter()
        .flat_map(|m| {
            m.encode()
                .lines()
                .filter(|l| l.starts_with("vigil_restored_keys_total "))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(
        loaded >= moved.len() as u64,
        "moved keys loaded at their new partitions: {loaded} of {}",
        moved.len()
    );

    // Reference: one detector, the same events on one partition.
    let (ref_group, ref_alerts, ref_dead) =
        (unique("ref"), unique("ref-alerts"), unique("ref-dead"));
    create_topics(&b, &[(&ref_alerts, 1), (&ref_dead, 1)]);
    produce_steps(&b, &reference_src, 0, STEPS, Some(0));
    let ref_dir = tempfile::tempdir().unwrap();
    let (p, rules) = manifests(&pipeline(
        &reference_src,
        &ref_group,
        &ref_alerts,
        &ref_dead,
        ref_dir.path(),
    ));
    let m = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), m.clone()).unwrap();
    assert!(wait_until(Duration::from_secs(60), || m.events_in() >= total as u64));
    h.stop();
    h.join().unwrap();
    let want = alerts(&b, &ref_alerts);
    let got = alerts(&b, &alerts_topic);
    assert!(want.len() > 50, "the scenario alerts: {}", want.len());
    assert_eq!(got.len(), want.len(), "distinct alerts");
    assert_eq!(got, want, "alert ids, values or scores differ");
}
