//! Durable state against a real broker (`KAFKA_BOOTSTRAP`) with `file://` checkpoints: a
//! detector killed with SIGKILL mid-stream and restarted, and a detector of two killed while
//! the other takes its partitions over, give the same alerts (same CloudEvents ids, same
//! values and scores) as one uninterrupted detector, with nothing dead-lettered as late. The
//! rules need state that replaying open windows cannot rebuild: a 30 s baseline (history
//! across many windows) and `for` timers.
//!
//! The detector that is killed runs in a child process: this test binary started again with
//! `--ignored --exact child_detector` (the helper below), so `kill -9` hits a real process
//! between a checkpoint and the next.

mod kafka_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use vigil_detector::checkpoint::{CheckpointMetadata, METADATA_FILE};
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::telemetry::Metrics;

const KEYS: i32 = 8;
/// Events per key, one every 500 ms of event time (300 s).
const STEPS: i64 = 600;

fn pipeline(src: &str, group: &str, alerts: &str, dead: &str, dir: &Path) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: durable}}
spec:
  source:
    kafka:
      topics: [{src}]
      consumerGroup: {group}
      properties: {{session.timeout.ms: "6000", heartbeat.interval.ms: "1000"}}
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
/// (staggered per key), and a level shift of key 1 in the last fifth.
fn value(k: i32, s: i64) -> f64 {
    let noise = ((s * 7919 + i64::from(k) * 31) % 13) as f64 * 0.1;
    let spike = (s + 5 * i64::from(k)) % 40 < 3;
    let shift = k == 1 && s >= STEPS * 4 / 5;
    10.0 + noise + if spike { 90.0 } else { 0.0 } + if shift { 5.0 } else { 0.0 }
}

/// Produces steps `from..to` of every key; key `k` goes to partition `k % partitions`.
fn produce_steps(b: &str, src: &str, partitions: i32, from: i64, to: i64) -> usize {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
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
            p.send(
                BaseRecord::<str, str>::to(src)
                    .key(&key)
                    .payload(&payload)
                    .partition(k % partitions),
            )
            .map_err(|(e, _)| e)
            .unwrap();
            n += 1;
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    n
}

/// Alerts by CloudEvents id: (status, value, score). Duplicates of one id (an at-least-once
/// replay) must be identical.
fn alerts(b: &str, topic: &str) -> (BTreeMap<String, String>, usize) {
    let mut by_id = BTreeMap::new();
    let mut records = 0;
    for m in read_all(b, topic) {
        records += 1;
        let j = json(&m);
        let id = j["id"].as_str().unwrap().to_string();
        let d = &j["data"];
        let what = format!("{} {} {}", d["status"], d["value"], d["score"]);
        if let Some(prev) = by_id.insert(id.clone(), what.clone()) {
            assert_eq!(prev, what, "two different alerts under one id {id}");
        }
    }
    (by_id, records)
}

fn total_committed(b: &str, group: &str, src: &str, partitions: i32) -> i64 {
    committed(b, group, src, partitions).iter().flatten().sum()
}

/// Runs one uninterrupted in-process detector over the whole topic; its alerts by id.
fn reference(b: &str, src: &str, total: usize) -> BTreeMap<String, String> {
    let (group, alerts_topic, dead) = (unique("ref"), unique("ref-alerts"), unique("ref-dead"));
    create_topics(b, &[(&alerts_topic, 1), (&dead, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let (p, rules) = manifests(&pipeline(src, &group, &alerts_topic, &dead, dir.path()));
    let m = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.to_string()), m.clone()).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || m.events_in() >= total as u64),
        "reference read {} of {total}",
        m.events_in()
    );
    h.stop();
    let summary = h.join().unwrap();
    assert_eq!(summary.counters.late_dropped, 0);
    let (by_id, _) = alerts(b, &alerts_topic);
    assert!(by_id.len() > 50, "the scenario alerts: {}", by_id.len());
    by_id
}

/// Starts this test binary again as a detector process (see [`child_detector`]).
fn start_child(manifest: &Path, bootstrap: &str, instance: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_detector", "--nocapture"])
        .env("VIGIL_CHILD_MANIFEST", manifest)
        .env("VIGIL_CHILD_INSTANCE", instance)
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .spawn()
        .expect("start the child detector")
}

/// Complete checkpoints under `dir`.
fn checkpoints(dir: &Path) -> Vec<CheckpointMetadata> {
    let root = dir.join("durable/checkpoints");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join(METADATA_FILE)).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// The detector process of the tests above; does nothing unless they start it.
#[test]
#[ignore = "helper: the detector process the kill -9 tests start and kill"]
fn child_detector() {
    let Some(path) = std::env::var_os("VIGIL_CHILD_MANIFEST") else {
        return;
    };
    let yaml = std::fs::read_to_string(path).unwrap();
    let (p, rules) = manifests(&yaml);
    let mut cfg = RunnerConfig::new(p, rules, bootstrap());
    cfg.group_instance_id = std::env::var("VIGIL_CHILD_INSTANCE").ok();
    let h = runner::spawn(cfg, Metrics::new()).unwrap();
    h.join().unwrap();
}

#[test]
fn a_detector_killed_mid_stream_restores_and_gives_the_alerts_of_an_uninterrupted_run() {
    let b = bootstrap();
    let (src, group, alerts_topic, dead) = (
        unique("src"),
        unique("killed"),
        unique("alerts"),
        unique("dead"),
    );
    create_topics(&b, &[(&src, 2), (&alerts_topic, 1), (&dead, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pipeline.yaml");
    let state = dir.path().join("state");
    std::fs::write(
        &manifest,
        pipeline(&src, &group, &alerts_topic, &dead, &state),
    )
    .unwrap();

    let first = produce_steps(&b, &src, 2, 0, STEPS * 2 / 5);
    let mut child = start_child(&manifest, &b, "killed-0");
    assert!(
        wait_until(Duration::from_secs(60), || total_committed(
            &b, &group, &src, 2
        ) == first as i64),
        "a checkpoint of the first {first} events was not committed"
    );
    let before = checkpoints(&state);
    // More events, some of them processed (and maybe checkpointed) before the kill; the rest
    // is written while the detector is down.
    let second = produce_steps(&b, &src, 2, STEPS * 2 / 5, STEPS * 3 / 5);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let rest = produce_steps(&b, &src, 2, STEPS * 3 / 5, STEPS);
    let total = first + second + rest;

    let mut child = start_child(&manifest, &b, "killed-0");
    let done = wait_until(Duration::from_secs(90), || {
        total_committed(&b, &group, &src, 2) == total as i64
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(done, "the restarted detector did not commit every offset");
    let after = checkpoints(&state);
    assert!(
        after
            .iter()
            .any(|c| c.created_ms > before.iter().map(|c| c.created_ms).max().unwrap_or(0)),
        "the restarted detector checkpoints"
    );

    let want = reference(&b, &src, total);
    let (got, records) = alerts(&b, &alerts_topic);
    assert_eq!(
        got.len(),
        want.len(),
        "distinct alerts: killed {} vs uninterrupted {} ({records} records, duplicates are replays)",
        got.len(),
        want.len()
    );
    assert_eq!(got, want, "alert ids, values or scores differ");
    assert!(read_all(&b, &dead).is_empty(), "nothing is dead-lettered");
}

#[test]
fn when_one_of_two_detectors_is_killed_the_other_restores_its_partitions() {
    let b = bootstrap();
    let (src, group, alerts_topic, dead) = (
        unique("src"),
        unique("pair"),
        unique("alerts"),
        unique("dead"),
    );
    create_topics(&b, &[(&src, 4), (&alerts_topic, 1), (&dead, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pipeline.yaml");
    let state = dir.path().join("state");
    let yaml = pipeline(&src, &group, &alerts_topic, &dead, &state);
    std::fs::write(&manifest, &yaml).unwrap();

    let first = produce_steps(&b, &src, 4, 0, STEPS * 2 / 5);
    let mut child = start_child(&manifest, &b, "pair-0");
    let (p, rules) = manifests(&yaml);
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    cfg.group_instance_id = Some("pair-1".into());
    let metrics = Metrics::new();
    let survivor = runner::spawn(cfg, metrics.clone()).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || survivor.assignment().len() == 2
            && total_committed(&b, &group, &src, 4) == first as i64),
        "the pair did not split the partitions and checkpoint the first events: {:?}",
        survivor.assignment()
    );
    let rest = produce_steps(&b, &src, 4, STEPS * 2 / 5, STEPS);
    child.kill().unwrap();
    child.wait().unwrap();
    let total = first + rest;
    // The survivor takes the partitions over after the session timeout (6 s).
    assert!(
        wait_until(Duration::from_secs(90), || survivor.assignment().len() == 4
            && total_committed(&b, &group, &src, 4) == total as i64),
        "the survivor did not take over and finish: {:?}",
        survivor.assignment()
    );
    survivor.stop();
    let summary = survivor.join().unwrap();
    assert_eq!(
        summary.counters.late_dropped, 0,
        "the taken-over backlog was judged late"
    );
    assert!(
        metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("vigil_restored_keys_total ") && !l.ends_with(" 0")),
        "the survivor restored the killed detector's keys"
    );

    let want = reference(&b, &src, total);
    let (got, _) = alerts(&b, &alerts_topic);
    assert_eq!(got.len(), want.len(), "distinct alerts");
    assert_eq!(got, want, "alert ids, values or scores differ");
    assert!(read_all(&b, &dead).is_empty(), "nothing is dead-lettered");
}

#[test]
fn a_third_detector_joins_mid_stream_and_one_leaves_and_the_alerts_stay_those_of_one() {
    let b = bootstrap();
    let (src, group, alerts_topic, dead) = (
        unique("src"),
        unique("scale"),
        unique("alerts"),
        unique("dead"),
    );
    create_topics(&b, &[(&src, 4), (&alerts_topic, 1), (&dead, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(&src, &group, &alerts_topic, &dead, dir.path());
    let start = |id: &str| {
        let (p, rules) = manifests(&yaml);
        let mut cfg = RunnerConfig::new(p, rules, b.clone());
        cfg.group_instance_id = Some(id.into());
        let m = Metrics::new();
        (runner::spawn(cfg, m.clone()).unwrap(), m)
    };
    let (d0, _) = start("scale-0");
    let (d1, _) = start("scale-1");
    assert!(
        wait_until(Duration::from_secs(60), || d0.assignment().len() == 2
            && d1.assignment().len() == 2),
        "two detectors split four partitions"
    );
    // A third of the stream: windows are open and `hot` alerts fire every few seconds.
    let mut total = produce_steps(&b, &src, 4, 0, STEPS / 3);
    assert!(wait_until(Duration::from_secs(60), || total_committed(
        &b, &group, &src, 4
    ) == total as i64));
    let (d2, m2) = start("scale-2");
    assert!(
        wait_until(Duration::from_secs(60), || !d2.assignment().is_empty()),
        "the third detector got partitions"
    );
    total += produce_steps(&b, &src, 4, STEPS / 3, STEPS * 2 / 3);
    assert!(wait_until(Duration::from_secs(60), || total_committed(
        &b, &group, &src, 4
    ) == total as i64));
    // One leaves (a clean stop: its partitions are checkpointed on revocation).
    d0.stop();
    let s0 = d0.join().unwrap();
    total += produce_steps(&b, &src, 4, STEPS * 2 / 3, STEPS);
    assert!(
        wait_until(Duration::from_secs(60), || d1.assignment().len()
            + d2.assignment().len()
            == 4
            && total_committed(&b, &group, &src, 4) == total as i64),
        "the two left took every partition and finished"
    );
    d1.stop();
    d2.stop();
    let (s1, s2) = (d1.join().unwrap(), d2.join().unwrap());
    for s in [&s0, &s1, &s2] {
        assert_eq!(s.counters.late_dropped, 0);
    }
    assert!(
        m2.encode()
            .lines()
            .any(|l| l.starts_with("vigil_restored_keys_total ") && !l.ends_with(" 0")),
        "the joining detector restored the keys of the partitions it took"
    );
    let want = reference(&b, &src, total);
    let (got, _) = alerts(&b, &alerts_topic);
    assert_eq!(got.len(), want.len(), "distinct alerts");
    assert_eq!(got, want, "alert ids, values or scores differ");
    // Every episode that fired resolved exactly once (by id: one `resolved` per episode).
    let firing = got.values().filter(|v| v.starts_with("\"firing\"")).count();
    let resolved = got
        .values()
        .filter(|v| v.starts_with("\"resolved\""))
        .count();
    assert!(
        firing >= resolved && firing - resolved <= (KEYS * 2) as usize,
        "{firing} firing, {resolved} resolved"
    );
    assert!(read_all(&b, &dead).is_empty(), "nothing is dead-lettered");
}

/// `pipeline()` with `upgradeMode: Stateless`, an extra spec change (`maxFutureSkew`) and
/// `restoreFrom: <savepoint>` when given.
fn upgraded(yaml: &str, savepoint: Option<&str>) -> String {
    let mut y = yaml.replace("  upgradeMode: LastState\n", "").replace(
        "eventTime: {field: t}",
        "eventTime: {field: t, maxFutureSkew: 10m}",
    );
    if let Some(name) = savepoint {
        y = y.replace(
            "checkpointing: {interval: 1s,",
            &format!("checkpointing: {{interval: 1s, restoreFrom: {name},"),
        );
    }
    y
}

#[test]
fn a_savepoint_restores_into_a_changed_spec_after_the_old_detectors_ran_past_it() {
    let b = bootstrap();
    let (src, group, alerts_topic, dead) = (
        unique("src"),
        unique("savepoint"),
        unique("alerts"),
        unique("dead"),
    );
    create_topics(&b, &[(&src, 2), (&alerts_topic, 1), (&dead, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let v1 = upgraded(
        &pipeline(&src, &group, &alerts_topic, &dead, dir.path()),
        None,
    );
    let start = |yaml: &str| {
        let (p, rules) = manifests(yaml);
        let mut cfg = RunnerConfig::new(p, rules, b.clone());
        cfg.group_instance_id = Some("sp-0".into());
        let m = Metrics::new();
        runner::spawn(cfg, m.clone()).map(|h| (h, m))
    };
    // No such savepoint yet: the run refuses to start rather than start empty.
    let e = start(&upgraded(&v1, Some("before-upgrade")))
        .err()
        .expect("a missing savepoint stops the start");
    let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(text.contains("has no complete part"), "{text}");

    let (old, _) = start(&v1).unwrap();
    let mut total = produce_steps(&b, &src, 2, 0, STEPS / 3);
    assert!(wait_until(Duration::from_secs(60), || total_committed(
        &b, &group, &src, 2
    ) == total as i64));
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    old.control()
        .send(runner::Control::Savepoint {
            name: "before-upgrade".into(),
            reply,
        })
        .unwrap();
    let part = answer
        .recv_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("savepoint part");
    assert_eq!(part.savepoint.as_deref(), Some("before-upgrade"));
    assert_eq!(
        part.partitions.iter().map(|p| p.offset).sum::<i64>(),
        total as i64,
        "the part holds every partition at the savepoint: {part:?}"
    );
    // The old detectors go on past the savepoint before the upgrade.
    total += produce_steps(&b, &src, 2, STEPS / 3, STEPS * 2 / 3);
    assert!(wait_until(Duration::from_secs(60), || total_committed(
        &b, &group, &src, 2
    ) == total as i64));
    old.stop();
    old.join().unwrap();

    // The changed spec starts from the savepoint: back to its offsets, its state restored.
    let (new, m) = start(&upgraded(&v1, Some("before-upgrade"))).unwrap();
    total += produce_steps(&b, &src, 2, STEPS * 2 / 3, STEPS);
    assert!(
        wait_until(Duration::from_secs(60), || total_committed(
            &b, &group, &src, 2
        ) == total as i64),
        "the upgraded detector did not finish"
    );
    new.stop();
    let summary = new.join().unwrap();
    assert!(
        m.encode()
            .lines()
            .any(|l| l.starts_with("vigil_restored_keys_total ") && !l.ends_with(" 0")),
        "the savepoint was restored"
    );
    assert_eq!(summary.counters.late_dropped, 0);
    assert!(
        summary.counters.records >= (total - STEPS as usize * KEYS as usize / 3) as u64,
        "the upgraded detector replayed from the savepoint's offsets ({} records)",
        summary.counters.records
    );
    let want = reference(&b, &src, total);
    let (got, _) = alerts(&b, &alerts_topic);
    assert_eq!(got.len(), want.len(), "distinct alerts");
    assert_eq!(got, want, "alert ids, values or scores differ");
}
