//! Snapshots: a stream cut anywhere, snapshotted and restored into a fresh engine gives the
//! same alerts and per-event scores as the uninterrupted stream (windows, `for` timers,
//! baselines, seasonal / random-cut-forest / change-point models and the alert lifecycle all
//! carry over); restore is key-addressed and reports what a rule change reset; and a committed
//! version-1 snapshot still restores (format compatibility).

use std::path::PathBuf;

use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::DetectionRule;
use vigil_core::engine::snapshot::{FORMAT_VERSION, Snapshot, SnapshotError};
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_core::input::Row;

fn data(rel: &str) -> PathBuf {
    let root = std::env::var_os("VIGIL_NAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/nab"));
    root.join("data").join(rel)
}

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// The golden machine-temperature pipeline (two tiers, allowed lateness, baselines with `for`)
/// plus the recommended NAB per-event rules (seasonal, random cut forest, contextual memory,
/// ensemble) retargeted at its `fast` tier, with a smaller forest (10 trees of 64 points: its
/// state is most of a snapshot, about 1.8 MB per key with the default 50 x 256), and a
/// change-point detector.
fn manifests() -> Manifests {
    manifests_with(|nab| nab)
}

/// [`manifests`] with the NAB rules passed through `edit` first.
fn manifests_with(edit: impl Fn(String) -> String) -> Manifests {
    let mut m = Manifests::default();
    m.add_file(&repo("core/tests/golden/machine-temperature.yaml"))
        .unwrap();
    let nab = std::fs::read_to_string(repo("manifests/examples/nab/rules.yaml")).unwrap();
    // A small forest keeps the test fast (and is what the version-1 fixture was written with).
    let forest = "randomCutForest: {trees: 20, sampleSize: 128}";
    assert!(
        nab.contains(forest),
        "the recommended forest changed: update this test"
    );
    let nab = edit(nab)
        .replace("window: alarms", "window: fast")
        .replace("part-of: nab\n", "part-of: nab-demo\n")
        .replace(forest, "randomCutForest: {trees: 10, sampleSize: 64}");
    m.add_str("nab-rules", &nab).unwrap();
    m.add_str(
        "change-point",
        "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: level-shift}\nspec:\n  pipelineSelector: {matchLabels: {app.kubernetes.io/part-of: nab-demo}}\n  window: fast\n  detector: {field: value, changePoint: {}, threshold: 0.33}\n",
    )
    .unwrap();
    m
}

fn engine(m: &Manifests, rules: &[&DetectionRule]) -> Engine {
    let (e, errors) = Engine::from_resources(
        &m.pipelines[0],
        rules,
        &[],
        EngineOptions {
            event_scores: true,
            emit_windows: true,
        },
    )
    .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    e
}

fn rows() -> Vec<Row> {
    vigil_core::input::read_rows(&data(
        "realKnownCause/machine_temperature_system_failure.csv",
    ))
    .unwrap()
    .1
}

/// What a run produced, comparable across runs.
#[derive(Default, Debug, PartialEq)]
struct Produced {
    alerts: Vec<String>,
    windows: usize,
    scores: Vec<(usize, u64)>,
}

/// Processing time of every record when several partitions are fed: constant, so no partition
/// turns idle and each fires on its own watermark (after the series' last event).
const STEADY_NOW: i64 = 1_400_000_000_000;

/// Feeds rows `from..to` on `n` partitions (row `i` goes to partition `i % n` under key
/// `m-<i % n>`); processing time is event time for one partition, [`STEADY_NOW`] for several.
fn feed(e: &mut Engine, rows: &[Row], from: usize, to: usize, n: usize, got: &mut Produced) {
    let mut out = Outputs::default();
    for (i, row) in rows.iter().enumerate().take(to).skip(from) {
        let now = if n == 1 {
            vigil_core::decode::parse_event_time(&row.cells[0], Default::default()).unwrap()
        } else {
            STEADY_NOW
        };
        let key = format!("m-{}", i % n);
        let before = out.event_scores.len();
        e.process(
            &RawRecord {
                partition: (i % n) as i32,
                offset: (i / n) as i64,
                key: Some(key.as_bytes()),
                payload: &row.json,
            },
            now,
            &mut out,
        );
        for s in &out.event_scores[before..] {
            got.scores.push((i, s.to_bits()));
        }
    }
    got.alerts
        .extend(out.alerts.iter().map(|a| serde_json::to_string(a).unwrap()));
    got.windows += out.windows.len();
}

fn snapshot_bytes(e: &Engine) -> Vec<u8> {
    let mut buf = Vec::new();
    e.write_snapshot(|_| true, &mut buf).unwrap();
    buf
}

#[test]
fn a_restored_engine_continues_exactly_like_an_uninterrupted_one() {
    let m = manifests();
    let rules = m.rules_for(&m.pipelines[0]);
    assert_eq!(
        rules.len(),
        9,
        "4 golden rules + 4 NAB rules + change point"
    );
    let rows = rows();
    let n = rows.len();
    let mut whole = Produced::default();
    let mut e = engine(&m, &rules);
    feed(&mut e, &rows, 0, n, 1, &mut whole);
    assert!(whole.alerts.len() >= 4, "the scenario alerts");

    // Cut three times; each restart replays 50 rows before the cut (an older committed offset):
    // those are skipped, not counted twice.
    let cuts = [n / 4, n / 2, 3 * n / 4];
    let mut pieces = Produced::default();
    let mut e = engine(&m, &rules);
    let mut from = 0;
    for &cut in &cuts {
        feed(&mut e, &rows, from, cut, 1, &mut pieces);
        let bytes = snapshot_bytes(&e);
        let mut snap = Snapshot::decode(&bytes).unwrap();
        let mut fresh = engine(&m, &rules);
        let report = fresh.restore(&mut snap, Some, 0);
        assert_eq!(report.keys, 1);
        assert_eq!(report.offsets, vec![(0, cut as i64)]);
        assert!(report.rules_reset.is_empty() && report.tiers_reset.is_empty());
        e = fresh;
        let mut replayed = Produced::default();
        feed(&mut e, &rows, cut - 50, cut, 1, &mut replayed);
        assert_eq!(e.counters().replay_skipped, 50);
        assert!(replayed.alerts.is_empty() && replayed.scores.is_empty());
        from = cut;
    }
    feed(&mut e, &rows, from, n, 1, &mut pieces);
    assert_eq!(pieces.alerts, whole.alerts, "alert transitions differ");
    assert_eq!(pieces.windows, whole.windows);
    assert_eq!(pieces.scores.len(), whole.scores.len());
    let differ = pieces
        .scores
        .iter()
        .zip(&whole.scores)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differ, 0,
        "per-event scores (bit for bit) differ after restore"
    );
}

#[test]
fn restore_is_key_addressed_and_picks_partitions() {
    let m = manifests();
    let rules = m.rules_for(&m.pipelines[0]);
    let rows = rows();
    let n = rows.len() / 2;
    // Four partitions, one key each. Reference: one engine, uninterrupted.
    let mut whole = Produced::default();
    let mut e = engine(&m, &rules);
    feed(&mut e, &rows, 0, n, 4, &mut whole);
    // Two owners after a cut: one restores partitions 0 and 1, the other 2 and 3 (from the
    // one snapshot, which holds all four), then each continues with its partitions' rows.
    let mut e = engine(&m, &rules);
    let mut pieces = Produced::default();
    feed(&mut e, &rows, 0, n / 2, 4, &mut pieces);
    let bytes = snapshot_bytes(&e);
    let mut snap = Snapshot::decode(&bytes).unwrap();
    assert_eq!(snap.keys.len(), 4);
    let mut a = engine(&m, &rules);
    let mut b = engine(&m, &rules);
    assert_eq!(a.restore(&mut snap, |p| (p < 2).then_some(p), 0).keys, 2);
    assert_eq!(b.restore(&mut snap, |p| (p >= 2).then_some(p), 0).keys, 2);
    let mut out_a = Produced::default();
    let mut out_b = Produced::default();
    let mut out = Outputs::default();
    for (i, row) in rows.iter().enumerate().take(n).skip(n / 2) {
        let now = STEADY_NOW;
        let key = format!("m-{}", i % 4);
        let (engine, got) = if i % 4 < 2 {
            (&mut a, &mut out_a)
        } else {
            (&mut b, &mut out_b)
        };
        engine.process(
            &RawRecord {
                partition: (i % 4) as i32,
                offset: (i / 4) as i64,
                key: Some(key.as_bytes()),
                payload: &row.json,
            },
            now,
            &mut out,
        );
        got.alerts.extend(
            out.alerts
                .drain(..)
                .map(|a| serde_json::to_string(&a).unwrap()),
        );
        out.clear();
    }
    let mut split: Vec<String> = pieces.alerts;
    split.extend(out_a.alerts);
    split.extend(out_b.alerts);
    split.sort();
    let mut want = whole.alerts;
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(split.len(), want.len(), "number of alert transitions");
    if let Some((a, b)) = split.iter().zip(&want).find(|(a, b)| a != b) {
        panic!("alert differs:\n{a}\n{b}");
    }
}

#[test]
fn a_changed_rule_restarts_empty_and_is_reported_the_others_keep_their_state() {
    let m = manifests();
    let rules = m.rules_for(&m.pipelines[0]);
    let rows = rows();
    let mut e = engine(&m, &rules);
    feed(&mut e, &rows, 0, 2_000, 1, &mut Produced::default());
    let mut snap = Snapshot::decode(&snapshot_bytes(&e)).unwrap();
    // Change one rule's state shape (its baseline history) and one rule's severity only.
    let mut changed: Vec<DetectionRule> = rules.iter().map(|r| (*r).clone()).collect();
    let drop = changed
        .iter_mut()
        .find(|r| r.metadata.name.as_deref() == Some("temperature-drop"))
        .unwrap();
    drop.spec.baseline.as_mut().unwrap().history = "12h".parse().unwrap();
    let forest = changed
        .iter_mut()
        .find(|r| r.metadata.name.as_deref() == Some("nab-forest"))
        .unwrap();
    forest.spec.severity = vigil_api::v1alpha1::Severity::Info;
    let refs: Vec<&DetectionRule> = changed.iter().collect();
    let mut fresh = engine(&m, &refs);
    let report = fresh.restore(&mut snap, Some, 0);
    assert_eq!(report.keys, 1);
    assert_eq!(
        report
            .rules_reset
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        vec!["temperature-drop"]
    );
    assert!(report.tiers_reset.is_empty());
}

#[test]
fn foreign_and_future_bytes_are_refused_with_a_reason() {
    assert!(matches!(
        Snapshot::decode(b"not a snapshot"),
        Err(SnapshotError::NotASnapshot)
    ));
    let mut future = b"VIGILSNP".to_vec();
    future.extend((FORMAT_VERSION + 1).to_le_bytes());
    let e = Snapshot::decode(&future).unwrap_err();
    assert!(e.to_string().contains("newer than this build"), "{e}");
    let mut truncated = snapshot_bytes(&engine(&manifests(), &[]));
    truncated.truncate(truncated.len() - 1);
    assert!(matches!(
        Snapshot::decode(&truncated),
        Err(SnapshotError::Decompress(_))
    ));
}

/// A snapshot written by an earlier build (committed; regenerate only when the format version
/// is bumped, with `UPDATE_SNAPSHOT_FIXTURE=1`, and keep the old file) restores in this one and
/// continues like an uninterrupted run.
#[test]
fn a_committed_version_1_snapshot_restores() {
    let fixture = repo("core/tests/fixtures/snapshot-v1.bin");
    // The rules it was written with: the NAB ensemble had no contextual member yet.
    let m = manifests_with(|nab| {
        nab.split("\n---\n")
            .filter(|doc| !doc.contains("name: nab-contextual\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
            .replace("      - rule: nab-contextual\n", "")
    });
    let rules = m.rules_for(&m.pipelines[0]);
    assert_eq!(rules.len(), 8);
    let rows = rows();
    let cut = 3_000;
    if std::env::var_os("UPDATE_SNAPSHOT_FIXTURE").is_some() {
        let mut e = engine(&m, &rules);
        feed(&mut e, &rows, 0, cut, 1, &mut Produced::default());
        std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
        std::fs::write(&fixture, snapshot_bytes(&e)).unwrap();
    }
    let bytes = std::fs::read(&fixture).expect("fixture (UPDATE_SNAPSHOT_FIXTURE=1 creates it)");
    assert_eq!(&bytes[8..12], &1u32.to_le_bytes(), "a version-1 fixture");
    let mut snap = Snapshot::decode(&bytes).unwrap();
    let mut restored = engine(&m, &rules);
    let report = restored.restore(&mut snap, Some, 0);
    assert_eq!(report.offsets, vec![(0, cut as i64)]);
    let mut got = Produced::default();
    feed(&mut restored, &rows, cut, 6_000, 1, &mut got);
    let mut e = engine(&m, &rules);
    let mut want = Produced::default();
    feed(&mut e, &rows, 0, cut, 1, &mut Produced::default());
    feed(&mut e, &rows, cut, 6_000, 1, &mut want);
    assert_eq!(got, want);
}

/// The partitioner of the test below: a key's last digit modulo the partition count.
fn last_digit(key: &[u8], partitions: i32) -> i32 {
    i32::from(key.last().map_or(0, |d| d - b'0')) % partitions
}

/// Feeds rows `from..to`, row `i` under key `m-<i % 4>`, to the engine and partition `route`
/// gives for the key; offsets count per partition in `offsets`.
fn feed_routed(
    rows: &[Row],
    from: usize,
    to: usize,
    offsets: &mut std::collections::BTreeMap<i32, i64>,
    mut route: impl FnMut(&str) -> (usize, i32),
    engines: &mut [&mut Engine],
    out: &mut Outputs,
) {
    for (i, row) in rows.iter().enumerate().take(to).skip(from) {
        let key = format!("m-{}", i % 4);
        let (e, partition) = route(&key);
        let offset = offsets.entry(partition).or_default();
        engines[e].process(
            &RawRecord {
                partition,
                offset: *offset,
                key: Some(key.as_bytes()),
                payload: &row.json,
            },
            STEADY_NOW,
            out,
        );
        *offset += 1;
    }
}

fn sorted_alerts(out: &Outputs) -> Vec<String> {
    let mut a: Vec<String> = out
        .alerts
        .iter()
        .map(|a| serde_json::to_string(a).unwrap())
        .collect();
    a.sort();
    a
}

/// A topic grows from 2 to 4 partitions between two owners: each hands the keys that move
/// over through its snapshot (`retain_keys` drops them, `restore_with` places them on their
/// new partition at the other owner) and the alerts are those of a run where every key kept
/// its state; a record of a moved key that still comes to its old partition is dead-lettered.
#[test]
fn keys_follow_a_partition_count_change_to_another_owner() {
    use vigil_core::engine::{DeadLetterReason, KeyPlacement};
    let m = manifests();
    let rules = m.rules_for(&m.pipelines[0]);
    let rows = rows();
    let n = rows.len() / 2;
    let mut offsets = std::collections::BTreeMap::new();

    let mut whole = engine(&m, &rules);
    let mut want = Outputs::default();
    feed_routed(
        &rows,
        0,
        n,
        &mut offsets,
        |k| (0, last_digit(k.as_bytes(), 4)),
        &mut [&mut whole],
        &mut want,
    );
    whole.flush(STEADY_NOW, &mut want);
    let want = sorted_alerts(&want);
    assert!(want.len() >= 4, "the scenario alerts");

    // Two partitions: X owns 0 (m-0, m-2), Y owns 1 (m-1, m-3).
    let (mut x, mut y) = (engine(&m, &rules), engine(&m, &rules));
    let mut out = Outputs::default();
    offsets.clear();
    let old = |k: &str| {
        let p = last_digit(k.as_bytes(), 2);
        (p as usize, p)
    };
    feed_routed(
        &rows,
        0,
        n / 2,
        &mut offsets,
        old,
        &mut [&mut x, &mut y],
        &mut out,
    );
    // Four partitions: X owns 0 and 3, Y owns 1 and 2, so m-2 moves from X to Y and m-3
    // from Y to X. Each owner's checkpoint of its old partition is the handoff.
    let handoff = |e: &mut Engine, p: i32| {
        let mut buf = Vec::new();
        e.write_snapshot(|q| q == p, &mut buf).unwrap();
        let dropped = e
            .retain_keys(p, |k| last_digit(k.as_bytes(), 4) == p, STEADY_NOW)
            .unwrap();
        assert_eq!(dropped, 1, "one key leaves partition {p}");
        e.set_key_placement(
            p,
            Some(KeyPlacement {
                partition: p,
                partitions: 4,
                place: last_digit,
            }),
        );
        Snapshot::decode(&buf).unwrap()
    };
    let (mut from_x, mut from_y) = (handoff(&mut x, 0), handoff(&mut y, 1));
    x.assign_partitions(&[3], STEADY_NOW);
    y.assign_partitions(&[2], STEADY_NOW);
    let into = |q: i32| move |_: i32, k: &str| (last_digit(k.as_bytes(), 4) == q).then_some(q);
    assert_eq!(
        x.restore_with(&mut from_y, |_| None, into(3), STEADY_NOW)
            .keys,
        1
    );
    assert_eq!(
        y.restore_with(&mut from_x, |_| None, into(2), STEADY_NOW)
            .keys,
        1
    );
    let new = |k: &str| {
        let p = last_digit(k.as_bytes(), 4);
        (usize::from(p == 1 || p == 2), p)
    };
    feed_routed(
        &rows,
        n / 2,
        n,
        &mut offsets,
        new,
        &mut [&mut x, &mut y],
        &mut out,
    );
    // A straggler: m-2 written to its old partition by a producer with stale metadata.
    let straggler = rows[n].json.clone();
    x.process(
        &RawRecord {
            partition: 0,
            offset: offsets[&0],
            key: Some(b"m-2"),
            payload: &straggler,
        },
        STEADY_NOW,
        &mut out,
    );
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(
        out.dead_letters[0].reason,
        DeadLetterReason::Moved {
            partition: 2,
            partitions: 4
        }
    );
    x.flush(STEADY_NOW, &mut out);
    y.flush(STEADY_NOW, &mut out);
    let got = sorted_alerts(&out);
    assert_eq!(got.len(), want.len(), "number of alert transitions");
    if let Some((a, b)) = got.iter().zip(&want).find(|(a, b)| a != b) {
        panic!("alert differs:\n{a}\n{b}");
    }
}
