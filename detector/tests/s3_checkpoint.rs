//! `s3://` checkpoints against a real S3-compatible server: SeaweedFS's S3 gateway with
//! SigV4 authentication (`scripts/seaweedfs.sh start && eval "$(scripts/seaweedfs.sh env)"`).
//! The same store calls as the file:// tests: background and blocking writes, the completion
//! marker, listing, reading a snapshot back into an engine, retention; and a bucket the server
//! refuses fails the write with the store's reason.

use vigil_api::manifest::Manifests;
use vigil_core::engine::snapshot::Snapshot;
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_detector::checkpoint::{
    CheckpointMetadata, CheckpointStore, PartitionOffset, checkpoint_id,
};

/// The bucket URL of the tests. Panics with instructions when the server is not configured:
/// these tests must not pass by skipping.
fn location(prefix: &str) -> String {
    match std::env::var("VIGIL_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => {}
        _ => panic!(
            "VIGIL_S3_ENDPOINT is not set. The s3:// checkpoint tests need an S3-compatible \
             server: run `scripts/seaweedfs.sh start && eval \"$(scripts/seaweedfs.sh env)\"` \
             first (or .ci/run)."
        ),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://vigil/{prefix}-{}-{nanos}", std::process::id())
}

fn engine() -> Engine {
    let mut m = Manifests::default();
    m.add_str(
        "p",
        "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}\n  windows: [{name: w, size: 10s}]\n  sinks: {alerts: {topic: a}}\n---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: z}\nspec: {window: w, baseline: {field: v, feature: mean, method: ZScore, history: 10m, threshold: 3}}\n",
    )
    .unwrap();
    let rules = m.rules_for(&m.pipelines[0]);
    Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default())
        .unwrap()
        .0
}

fn meta(ms: i64, member: &str, offset: i64, bytes: u64) -> CheckpointMetadata {
    CheckpointMetadata {
        format_version: 1,
        id: checkpoint_id(ms, member),
        pipeline: "p".into(),
        spec_fingerprint: "f".into(),
        member: member.into(),
        created_ms: ms,
        trigger: "periodic".into(),
        topics: vec!["t".into()],
        partitions: vec![PartitionOffset::new("t", 0, offset)],
        keys: 3,
        bytes,
        savepoint: None,
    }
}

#[test]
fn checkpoints_round_trip_through_a_real_s3_server() {
    let mut store = CheckpointStore::open(&location("roundtrip"), "p").unwrap();
    let mut e = engine();
    let mut out = Outputs::default();
    for i in 0..300 {
        let payload = format!(r#"{{"k":"k{}","t":{},"v":{}}}"#, i % 3, i * 1000, i % 7);
        e.process(
            &RawRecord {
                partition: 0,
                offset: i,
                key: None,
                payload: payload.as_bytes(),
            },
            i * 1000,
            &mut out,
        );
    }
    let mut bytes = Vec::new();
    let info = e.write_snapshot(|_| true, &mut bytes).unwrap();
    assert_eq!(info.offsets, vec![(0, 300)]);
    let n = bytes.len() as u64;
    // Two in the background, one blocking.
    let b = bytes.clone();
    store.start(move || Ok(b), meta(100, "a", 100, 0));
    let b = bytes.clone();
    store.start(move || Ok(b), meta(200, "a", 200, 0));
    let done = store.wait_all();
    assert!(
        done.iter()
            .all(|c| c.error.is_none() && c.metadata.bytes == n),
        "{:?}",
        done
    );
    store.write(bytes.clone(), &meta(300, "a", 300, n)).unwrap();

    let (complete, incomplete) = store.list().unwrap();
    assert_eq!(
        complete.iter().map(|c| c.created_ms).collect::<Vec<_>>(),
        vec![100, 200, 300]
    );
    assert!(incomplete.is_empty());
    let read = store.read_state(&complete[2]).unwrap();
    assert_eq!(read, bytes);
    let mut snap = Snapshot::decode(&read).unwrap();
    let mut fresh = engine();
    let report = fresh.restore(&mut snap, Some, 0);
    assert_eq!(report.keys, 3);
    assert_eq!(report.offsets, vec![(0, 300)]);

    let deleted = store.apply_retention("a", 1).unwrap();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    let (complete, _) = store.list().unwrap();
    assert_eq!(
        complete.iter().map(|c| c.created_ms).collect::<Vec<_>>(),
        vec![300]
    );
}

#[test]
fn a_refused_bucket_fails_the_write_with_the_reason() {
    // Not a valid bucket name (underscore, upper case): the server refuses it.
    let loc = location("refused").replace("s3://vigil/", "s3://Not_A_Bucket/");
    let store = CheckpointStore::open(&loc, "p").unwrap();
    let e = store.write(vec![1, 2, 3], &meta(1, "a", 1, 3)).unwrap_err();
    let text = format!("{e:#}");
    assert!(text.starts_with("checkpoint store"), "{text}");
}
