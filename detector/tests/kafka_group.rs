//! Against a real broker (`KAFKA_BOOTSTRAP`): two detectors in one consumer group split the
//! partitions (cooperative-sticky) and together produce exactly the alerts one detector
//! produces alone, compared by CloudEvents id.

mod kafka_support;

use std::collections::BTreeSet;
use std::time::Duration;

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use vigil_detector::runner::{self, RunnerConfig, RunnerHandle};
use vigil_detector::telemetry::Metrics;

const PARTITIONS: i32 = 4;
const KEYS: usize = 8;
/// Events per key: one every 250 ms of event time, 40 s in all.
const STEPS: i64 = 160;

fn pipeline(src: &str, group: &str, alerts: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: fleet}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  features: [count, max]
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s}}]
  sinks: {{alerts: {{topic: {alerts}}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: hot}}
spec: {{window: w, threshold: {{field: v, feature: max, operator: '>', value: 10}}}}
"#
    )
}

/// Every key gets the same series; key i goes to partition i % 4. Seconds divisible by 3 are
/// hot, so each key fires and resolves 13 times in the windows that close (all but the last).
fn produce_fleet(b: &str, src: &str) -> usize {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut n = 0;
    for step in 0..STEPS {
        let t = step * 250;
        let v = if (t / 1000) % 3 == 0 { 20 } else { 1 };
        for k in 0..KEYS {
            let key = format!("k{k}");
            let payload = format!(r#"{{"k":"{key}","t":{t},"v":{v}}}"#);
            p.send(
                BaseRecord::<str, str>::to(src)
                    .key(&key)
                    .payload(&payload)
                    .partition(k as i32 % PARTITIONS),
            )
            .map_err(|(e, _)| e)
            .unwrap();
            n += 1;
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    n
}

const EXPECTED_ALERTS: usize = KEYS * 26;

/// Every alert on the topic (read after the detectors stopped, so all are delivered).
fn alert_ids(b: &str, alerts: &str) -> Vec<String> {
    read_all(b, alerts)
        .iter()
        .map(|m| json(m)["id"].as_str().unwrap().to_string())
        .collect()
}

fn stop_all(hs: Vec<RunnerHandle>) -> Vec<u64> {
    hs.iter().for_each(RunnerHandle::stop);
    hs.into_iter()
        .map(|h| h.join().expect("clean stop").counters.records)
        .collect()
}

#[test]
fn two_detectors_split_the_partitions_and_give_the_same_alerts_as_one() {
    let b = bootstrap();
    let (src, alerts_one, alerts_two) = (unique("src"), unique("alerts-one"), unique("alerts-two"));
    create_topics(
        &b,
        &[(&src, PARTITIONS), (&alerts_one, 1), (&alerts_two, 1)],
    );

    // Two detectors in one group. The events are written once the group has split the
    // partitions, so no partition moves while windows are open.
    let (p, rules) = manifests(&pipeline(&src, &unique("two"), &alerts_two));
    let (m1, m2) = (Metrics::new(), Metrics::new());
    let cfg = RunnerConfig::new(p, rules, b.clone());
    let h1 = runner::spawn(cfg.clone(), m1.clone()).unwrap();
    let h2 = runner::spawn(cfg, m2.clone()).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (a1, a2) = (h1.assignment(), h2.assignment());
            !a1.is_empty() && !a2.is_empty() && a1.len() + a2.len() == PARTITIONS as usize
        }),
        "the group did not split the partitions: {:?} / {:?}",
        h1.assignment(),
        h2.assignment()
    );
    let (a1, a2) = (h1.assignment(), h2.assignment());
    assert!(
        a1.iter().all(|p| !a2.contains(p)),
        "a partition is assigned twice: {a1:?} / {a2:?}"
    );
    let total = produce_fleet(&b, &src) as u64;
    assert!(
        wait_until(Duration::from_secs(30), || m1.events_in() + m2.events_in()
            >= total),
        "the two detectors read {} + {} of {total}",
        m1.events_in(),
        m2.events_in()
    );
    let counts = stop_all(vec![h1, h2]);
    let two = alert_ids(&b, &alerts_two);
    assert!(
        counts.iter().all(|c| *c > 0),
        "both detectors processed events: {counts:?}"
    );
    assert_eq!(
        counts.iter().sum::<u64>(),
        total,
        "no record processed twice"
    );
    assert_eq!(two.len(), EXPECTED_ALERTS);

    // One detector, in another group, over the same topic.
    let (p, rules) = manifests(&pipeline(&src, &unique("one"), &alerts_one));
    let m = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), m.clone()).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || m.events_in() == total),
        "one detector read {} of {total}",
        m.events_in()
    );
    assert_eq!(stop_all(vec![h]), vec![total]);
    let one = alert_ids(&b, &alerts_one);
    assert_eq!(one.len(), EXPECTED_ALERTS);
    let (one, two): (BTreeSet<String>, BTreeSet<String>) =
        (one.into_iter().collect(), two.into_iter().collect());
    assert_eq!(one.len(), EXPECTED_ALERTS, "no duplicate ids");
    assert_eq!(one, two, "same alerts, by event id");
}

/// Drains the source: every record written so far, then end of input.
fn drain(h: &RunnerHandle, b: &str, src: &str) {
    let ends = vigil_detector::source::admin::high_watermarks(b, src, Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .map(|(p, o)| (src.to_string(), p, o))
        .collect();
    h.control()
        .send(runner::Control::DrainAndStop { end_offsets: ends })
        .unwrap();
}

#[test]
fn engine_workers_in_one_process_split_the_partitions_and_end_a_bounded_input_together() {
    let b = bootstrap();
    let (src, alerts_one, alerts_two) = (unique("src"), unique("alerts-one"), unique("alerts-two"));
    create_topics(
        &b,
        &[(&src, PARTITIONS), (&alerts_one, 1), (&alerts_two, 1)],
    );
    let dir = std::env::temp_dir().join(unique("workers-checkpoints"));
    let with_checkpoints = |yaml: String| {
        yaml.replace(
            "  sinks:",
            &format!(
                "  checkpointing: {{interval: 1s, location: \"file://{}\"}}\n  sinks:",
                dir.display()
            ),
        )
    };

    // Two workers in one process, one handle.
    let (p, rules) = manifests(&with_checkpoints(pipeline(
        &src,
        &unique("workers"),
        &alerts_two,
    )));
    let m = Metrics::new();
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.workers = 2;
    let h = runner::spawn(cfg, m.clone()).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let a = h.worker_assignments();
            a.len() == 2
                && a.iter().all(|w| !w.is_empty())
                && a.iter().map(Vec::len).sum::<usize>() == PARTITIONS as usize
        }),
        "the workers did not split the partitions: {:?}",
        h.worker_assignments()
    );
    let a = h.worker_assignments();
    assert!(
        a[0].iter().all(|p| !a[1].contains(p)),
        "a partition is assigned twice: {a:?}"
    );
    assert_eq!(h.assignment().len(), PARTITIONS as usize);
    let total = produce_fleet(&b, &src) as u64;
    assert!(
        wait_until(Duration::from_secs(30), || m.events_in() >= total),
        "the workers read {} of {total}",
        m.events_in()
    );

    // A savepoint is one part per worker, answered together: every partition, every key.
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    h.control()
        .send(runner::Control::Savepoint {
            name: "workers".into(),
            reply,
        })
        .unwrap();
    let sp = answer
        .recv_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("savepoint of both workers");
    let mut parts: Vec<i32> = sp.partitions.iter().map(|p| p.partition).collect();
    parts.sort_unstable();
    assert_eq!(parts, (0..PARTITIONS).collect::<Vec<_>>(), "{sp:?}");
    assert_eq!(sp.keys, KEYS as u64, "{sp:?}");

    // End of input: both workers fire their last windows and stop.
    drain(&h, &b, &src);
    let summary = h.join().expect("clean end");
    assert!(summary.drained, "both workers drained: {summary:?}");
    assert_eq!(summary.counters.records, total, "no record processed twice");
    let two = alert_ids(&b, &alerts_two);

    // One worker, in another group, over the same input.
    let (p, rules) = manifests(&pipeline(&src, &unique("one"), &alerts_one));
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), Metrics::new()).unwrap();
    drain(&h, &b, &src);
    let one_summary = h.join().expect("clean end");
    assert!(one_summary.drained);
    let one = alert_ids(&b, &alerts_one);
    assert!(one.len() > EXPECTED_ALERTS, "the last windows fired too");
    assert_eq!(summary.alerts_sent, one_summary.alerts_sent);
    let (one, two): (BTreeSet<String>, BTreeSet<String>) =
        (one.into_iter().collect(), two.into_iter().collect());
    assert_eq!(one, two, "same alerts, by event id");
    let _ = std::fs::remove_dir_all(&dir);
}
