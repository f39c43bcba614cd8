//! Checkpoint storage: where a detector writes its engine snapshots
//! ([`vigil_core::engine::snapshot`]), how it finds the newest one for the partitions it is
//! assigned, and which ones it deletes. Storage goes through the `object_store` crate:
//! `file://` (a path every detector of the pipeline shares) and `s3://` (any S3-compatible
//! store, configured by the standard `AWS_*` environment variables).
//!
//! # Layout
//! ```text
//! <location>/<pipeline>/checkpoints/<id>/state.bin       the snapshot (MAGIC, version, postcard)
//! <location>/<pipeline>/checkpoints/<id>/_metadata.json  written last: its presence marks the
//!                                                         checkpoint complete
//! ```
//! Savepoints (taken on request, never deleted by retention) use the same layout under
//! `<location>/<pipeline>/savepoints/<name>/<id>/`: one part per detector, each holding the
//! partitions its detector owned.
//!
//! `<id>` is `chk-<created epoch ms, 13 digits>-<member>`, so ids sort by time. Each detector
//! (member) writes checkpoints of the partitions it owns; a partition is restored from the
//! newest complete checkpoint that holds it, whoever wrote it. Retention keeps the newest
//! `retained` complete checkpoints of each member and never deletes one that is still the
//! newest for some partition; incomplete ones older than the newest complete one of their
//! member are deleted too.
//!
//! Writes run on a small runtime of their own, off the run loop: [`CheckpointStore::start`]
//! hands the bytes over and [`CheckpointStore::poll_completed`] reports the outcome; restores
//! and the checkpoints taken on revocation and shutdown block ([`CheckpointStore::write`]).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// Name of the completion marker.
pub const METADATA_FILE: &str = "_metadata.json";
/// Name of the snapshot object.
pub const STATE_FILE: &str = "state.bin";

/// A checkpoint store failure.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The location is not a URL `object_store` can open.
    #[error("spec.checkpointing.location `{location}`: {reason}")]
    Location {
        /// The URL.
        location: String,
        /// Why.
        reason: String,
    },
    /// The store answered with an error.
    #[error("checkpoint store: {0}")]
    Store(#[from] object_store::Error),
    /// A metadata file does not parse.
    #[error("checkpoint metadata {path}: {source}")]
    Metadata {
        /// The object.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The snapshot could not be compressed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] vigil_core::engine::snapshot::SnapshotError),
}

/// One partition of a checkpoint, with the offset its state resumes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionOffset {
    /// Topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Next offset to read (one past the last record the state holds).
    pub offset: i64,
    /// The topic's partition count the partition's keys are laid out by: its state holds the
    /// keys the producers' partitioner puts on it under this count. Absent in checkpoints of
    /// older builds (and unknown then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_count: Option<i32>,
    /// Set on a handoff checkpoint: taken when the topic grew from this many partitions to
    /// `partition_count`, it still holds the keys that move to other partitions; their new
    /// owners load them from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_from: Option<i32>,
    /// Keys left this partition at a partition count change: records of them that still come
    /// here are dead-lettered (`moved_key`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_moved: bool,
}

impl PartitionOffset {
    /// A plain entry: no partition count known, no handoff.
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            partition_count: None,
            handoff_from: None,
            keys_moved: false,
        }
    }
}

/// `_metadata.json`: what a complete checkpoint holds. Documented in docs/state.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointMetadata {
    /// Snapshot format version of `state.bin`.
    pub format_version: u32,
    /// Checkpoint id (the folder name).
    pub id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// SHA-free fingerprint (hex) of the StreamPipeline spec that wrote it: detectors in
    /// `upgradeMode: Stateless` only restore checkpoints of their own spec.
    pub spec_fingerprint: String,
    /// Detector that wrote it (group instance id, or a generated one).
    pub member: String,
    /// Epoch ms when the snapshot was taken.
    pub created_ms: i64,
    /// Why it was taken: `periodic`, `revoke` or `shutdown`.
    pub trigger: String,
    /// Source topics in engine order (engine partition ids number topics by this list).
    pub topics: Vec<String>,
    /// Partitions held, with the offsets consumption resumes from.
    pub partitions: Vec<PartitionOffset>,
    /// Entity keys held.
    pub keys: u64,
    /// Bytes of `state.bin`.
    pub bytes: u64,
    /// The savepoint this is a part of; absent for a checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<String>,
}

/// A completed (or failed) background write.
#[derive(Debug)]
pub struct Completed {
    /// The checkpoint.
    pub metadata: CheckpointMetadata,
    /// Seconds from hand-over to the marker being written.
    pub write_seconds: f64,
    /// The failure, if it failed.
    pub error: Option<CheckpointError>,
}

/// The checkpoints of one pipeline in one object store.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    savepoints: Path,
    rt: tokio::runtime::Runtime,
    done_tx: Sender<Completed>,
    done_rx: Receiver<Completed>,
    in_flight: usize,
    /// The checkpoints folder on disk, for `file://` (empty folders are removed after
    /// deletes).
    local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// `AWS_*` environment variables as `object_store` S3 options (`AWS_ENDPOINT` ->
/// `aws_endpoint`).
fn aws_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// The object store a `file://` or `s3://` location names and the path prefix in it (the
/// S3 client configured by the `AWS_*` environment variables); a `file://` folder is created
/// when missing.
///
/// # Errors
/// Why the location cannot be opened.
pub fn open_object_store(location: &str) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    let url = url::Url::parse(location).map_err(|e| e.to_string())?;
    // HTTPS to S3 goes through rustls with ring, the provider kube uses too (one provider in
    // the process; installing it again is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if url.scheme() == "file" {
        let dir = url
            .to_file_path()
            .map_err(|()| "not an absolute file path".to_string())?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let (store, prefix) =
        object_store::parse_url_opts(&url, aws_options()).map_err(|e| e.to_string())?;
    Ok((Arc::from(store), prefix))
}

impl CheckpointStore {
    /// Opens the store at `location` (a `file://` or `s3://` URL) for pipeline `pipeline`.
    /// A `file://` folder is created when missing.
    ///
    /// # Errors
    /// [`CheckpointError::Location`] for a URL that cannot be opened.
    pub fn open(location: &str, pipeline: &str) -> Result<Self, CheckpointError> {
        let bad = |reason: String| CheckpointError::Location {
            location: location.to_string(),
            reason,
        };
        let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
        let local = if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|()| bad("not an absolute file path".into()))?;
            Some(dir.join(pipeline).join("checkpoints"))
        } else {
            None
        };
        let (store, prefix) = open_object_store(location).map_err(bad)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vigil-checkpoints")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("runtime: {e}")))?;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let root = prefix.clone().join(pipeline).join("checkpoints");
        let savepoints = prefix.clone().join(pipeline).join("savepoints");
        Ok(Self {
            store,
            root,
            savepoints,
            rt,
            done_tx,
            done_rx,
            in_flight: 0,
            local,
        })
    }

    fn dir(&self, id: &str) -> Path {
        self.root.clone().join(id)
    }

    /// The folder of a checkpoint or savepoint part.
    fn dir_of(&self, m: &CheckpointMetadata) -> Path {
        match &m.savepoint {
            Some(name) => self
                .savepoints
                .clone()
                .join(name.as_str())
                .join(m.id.as_str()),
            None => self.dir(&m.id),
        }
    }

    /// Writes a savepoint part (`metadata.savepoint` names the savepoint) and blocks until it
    /// is complete.
    ///
    /// # Errors
    /// [`CheckpointError`] from the store.
    pub fn write_savepoint(
        &self,
        bytes: Vec<u8>,
        metadata: &CheckpointMetadata,
    ) -> Result<(), CheckpointError> {
        let store = self.store.clone();
        let dir = self.dir_of(metadata);
        let meta = metadata.clone();
        self.rt.block_on(write(store, dir, bytes, meta))
    }

    /// The complete parts of savepoint `name`, oldest first (empty when there is none).
    ///
    /// # Errors
    /// [`CheckpointError`] when the store cannot be listed.
    pub fn list_savepoint(&self, name: &str) -> Result<Vec<CheckpointMetadata>, CheckpointError> {
        let dir = self.savepoints.clone().join(name);
        Ok(self.rt.block_on(list(self.store.clone(), dir))?.0)
    }

    /// Writes a checkpoint and blocks until it is complete.
    ///
    /// # Errors
    /// [`CheckpointError`] from the store; the checkpoint is then incomplete and ignored.
    pub fn write(
        &self,
        bytes: Vec<u8>,
        metadata: &CheckpointMetadata,
    ) -> Result<(), CheckpointError> {
        let store = self.store.clone();
        let dir = self.dir(&metadata.id);
        let meta = metadata.clone();
        self.rt.block_on(write(store, dir, bytes, meta))
    }

    /// Starts a checkpoint in the background: `prepare` makes the bytes (compression) on a
    /// blocking thread, then they are written; the outcome, with `metadata.bytes` set, comes
    /// from [`Self::poll_completed`].
    pub fn start(
        &mut self,
        prepare: impl FnOnce() -> Result<Vec<u8>, CheckpointError> + Send + 'static,
        mut metadata: CheckpointMetadata,
    ) {
        let store = self.store.clone();
        let dir = self.dir(&metadata.id);
        let tx = self.done_tx.clone();
        self.in_flight += 1;
        self.rt.spawn(async move {
            let t0 = std::time::Instant::now();
            let result = match tokio::task::spawn_blocking(prepare).await {
                Ok(Ok(bytes)) => {
                    metadata.bytes = bytes.len() as u64;
                    write(store, dir, bytes, metadata.clone()).await
                }
                Ok(Err(e)) => Err(e),
                Err(join) => Err(CheckpointError::Snapshot(
                    vigil_core::engine::snapshot::SnapshotError::Io(std::io::Error::other(
                        join.to_string(),
                    )),
                )),
            };
            let _ = tx.send(Completed {
                metadata,
                write_seconds: t0.elapsed().as_secs_f64(),
                error: result.err(),
            });
        });
    }

    /// Background writes still running.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The next finished background write, if any.
    pub fn poll_completed(&mut self) -> Option<Completed> {
        match self.done_rx.try_recv() {
            Ok(c) => {
                self.in_flight -= 1;
                Some(c)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Waits for every background write (at shutdown).
    pub fn wait_all(&mut self) -> Vec<Completed> {
        let mut v = Vec::new();
        while self.in_flight > 0 {
            match self.done_rx.recv() {
                Ok(c) => {
                    self.in_flight -= 1;
                    v.push(c);
                }
                Err(_) => break,
            }
        }
        v
    }

    /// Every complete checkpoint, oldest first, and the ids of incomplete ones.
    ///
    /// # Errors
    /// [`CheckpointError`] when the store cannot be listed.
    pub fn list(&self) -> Result<(Vec<CheckpointMetadata>, Vec<String>), CheckpointError> {
        self.rt
            .block_on(list(self.store.clone(), self.root.clone()))
    }

    /// Reads the snapshot bytes of a checkpoint or savepoint part.
    ///
    /// # Errors
    /// [`CheckpointError`] from the store.
    pub fn read_state(&self, m: &CheckpointMetadata) -> Result<Vec<u8>, CheckpointError> {
        let path = self.dir_of(m).join(STATE_FILE);
        let store = self.store.clone();
        self.rt
            .block_on(async move { Ok(store.get(&path).await?.bytes().await?.to_vec()) })
    }

    /// Deletes what retention no longer keeps (see the module header) among `member`'s
    /// checkpoints; returns the ids deleted.
    ///
    /// # Errors
    /// [`CheckpointError`] from the store.
    pub fn apply_retention(
        &self,
        member: &str,
        retained: usize,
    ) -> Result<Vec<String>, CheckpointError> {
        let (complete, incomplete) = self.list()?;
        let doomed = doomed(&complete, &incomplete, member, retained);
        let store = self.store.clone();
        let root = self.root.clone();
        let ids = doomed.clone();
        self.rt.block_on(async move {
            for id in ids {
                let dir = root.clone().join(id.as_str());
                // The marker first: a half-deleted checkpoint is incomplete, never corrupt.
                for file in [METADATA_FILE, STATE_FILE] {
                    match store.delete(&dir.clone().join(file)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(CheckpointError::Store(e)),
                    }
                }
            }
            Ok(())
        })?;
        if let Some(local) = &self.local {
            for id in &doomed {
                let _ = std::fs::remove_dir(local.join(id));
            }
        }
        Ok(doomed)
    }
}

/// The newest complete checkpoint holding each of `partitions` (topic, partition), among
/// those `eligible` accepts: `(checkpoint, the partitions to restore from it)`, newest first.
pub fn newest_for<'a>(
    complete: &'a [CheckpointMetadata],
    partitions: &[(String, i32)],
    eligible: impl Fn(&CheckpointMetadata) -> bool,
) -> Vec<(&'a CheckpointMetadata, Vec<(String, i32)>)> {
    let mut picked: Vec<(&CheckpointMetadata, Vec<(String, i32)>)> = Vec::new();
    for (topic, p) in partitions {
        let best = complete
            .iter()
            .filter(|c| eligible(c))
            .filter(|c| {
                c.partitions
                    .iter()
                    .any(|o| o.topic == *topic && o.partition == *p)
            })
            .max_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        if let Some(c) = best {
            match picked.iter_mut().find(|(m, _)| m.id == c.id) {
                Some((_, v)) => v.push((topic.clone(), *p)),
                None => picked.push((c, vec![(topic.clone(), *p)])),
            }
        }
    }
    picked.sort_by_key(|p| std::cmp::Reverse(p.0.created_ms));
    picked
}

/// Ids retention deletes: `member`'s complete checkpoints beyond its newest `retained`, any
/// member's complete checkpoints superseded on every partition they hold by a newer one of the
/// same spec (a restarted detector without a static id is a new member: its predecessors'
/// checkpoints go this way), and `member`'s incomplete ones older than its newest complete
/// one. The newest checkpoint of each partition per spec fingerprint is never deleted
/// (`Stateless` detectors of an older spec still find theirs).
pub fn doomed(
    complete: &[CheckpointMetadata],
    incomplete: &[String],
    member: &str,
    retained: usize,
) -> Vec<String> {
    let mut specs: Vec<&str> = complete
        .iter()
        .map(|c| c.spec_fingerprint.as_str())
        .collect();
    specs.sort_unstable();
    specs.dedup();
    let mut kept: Vec<&str> = Vec::new();
    for spec in specs {
        let mut parts: Vec<(String, i32)> = complete
            .iter()
            .filter(|c| c.spec_fingerprint == spec)
            .flat_map(|c| c.partitions.iter().map(|o| (o.topic.clone(), o.partition)))
            .collect();
        parts.sort();
        parts.dedup();
        for (c, _) in newest_for(complete, &parts, |c| c.spec_fingerprint == spec) {
            kept.push(&c.id);
        }
    }
    // The newest handoff checkpoint of each partition: the owners of the partitions its keys
    // moved to may still have to load them (after a restart, say).
    let handoffs: Vec<(String, i32)> = complete
        .iter()
        .flat_map(|c| c.partitions.iter().filter(|o| o.handoff_from.is_some()))
        .map(|o| (o.topic.clone(), o.partition))
        .collect();
    for (c, _) in newest_for(complete, &handoffs, |c| {
        c.partitions.iter().any(|o| o.handoff_from.is_some())
    }) {
        kept.push(&c.id);
    }
    let mut mine: Vec<&CheckpointMetadata> =
        complete.iter().filter(|c| c.member == member).collect();
    mine.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
    let mut out: Vec<String> = mine
        .iter()
        .skip(retained)
        .filter(|c| !kept.contains(&c.id.as_str()))
        .map(|c| c.id.clone())
        .collect();
    out.extend(
        complete
            .iter()
            .filter(|c| c.member != member && !kept.contains(&c.id.as_str()))
            .map(|c| c.id.clone()),
    );
    if let Some(newest) = mine.first() {
        let suffix = format!("-{member}");
        out.extend(
            incomplete
                .iter()
                .filter(|id| id.ends_with(&suffix) && id.as_str() < newest.id.as_str())
                .cloned(),
        );
    }
    out
}

/// Id of a checkpoint taken at `created_ms` by `member`.
pub fn checkpoint_id(created_ms: i64, member: &str) -> String {
    format!("chk-{created_ms:013}-{member}")
}

async fn write(
    store: Arc<dyn ObjectStore>,
    dir: Path,
    bytes: Vec<u8>,
    metadata: CheckpointMetadata,
) -> Result<(), CheckpointError> {
    store
        .put(&dir.clone().join(STATE_FILE), PutPayload::from(bytes))
        .await?;
    let json = serde_json::to_vec_pretty(&metadata).expect("metadata serialises");
    store
        .put(&dir.join(METADATA_FILE), PutPayload::from(json))
        .await?;
    Ok(())
}

async fn list(
    store: Arc<dyn ObjectStore>,
    root: Path,
) -> Result<(Vec<CheckpointMetadata>, Vec<String>), CheckpointError> {
    let listing = store.list_with_delimiter(Some(&root)).await?;
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for dir in listing.common_prefixes {
        let Some(id) = dir.filename().map(str::to_string) else {
            continue;
        };
        let marker = dir.clone().join(METADATA_FILE);
        match store.get(&marker).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let meta: CheckpointMetadata =
                    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Metadata {
                        path: marker.to_string(),
                        source,
                    })?;
                complete.push(meta);
            }
            Err(object_store::Error::NotFound { .. }) => {
                // A folder without either object is what deleting leaves on a file system.
                match store.head(&dir.clone().join(STATE_FILE)).await {
                    Ok(_) => incomplete.push(id),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    complete.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    Ok((complete, incomplete))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id_ms: i64, member: &str, parts: &[(i32, i64)]) -> CheckpointMetadata {
        CheckpointMetadata {
            format_version: 1,
            id: checkpoint_id(id_ms, member),
            pipeline: "p".into(),
            spec_fingerprint: "f".into(),
            member: member.into(),
            created_ms: id_ms,
            trigger: "periodic".into(),
            topics: vec!["t".into()],
            partitions: parts
                .iter()
                .map(|&(partition, offset)| PartitionOffset::new("t", partition, offset))
                .collect(),
            keys: 1,
            bytes: 1,
            savepoint: None,
        }
    }

    #[test]
    fn the_newest_checkpoint_of_each_partition_is_picked_whoever_wrote_it() {
        let all = vec![
            meta(100, "a", &[(0, 10), (1, 10)]),
            meta(200, "b", &[(1, 20)]),
            meta(300, "a", &[(0, 30)]),
        ];
        let parts = [
            ("t".to_string(), 0),
            ("t".to_string(), 1),
            ("t".to_string(), 2),
        ];
        let got = newest_for(&all, &parts, |_| true);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.created_ms, 300);
        assert_eq!(got[0].1, vec![("t".to_string(), 0)]);
        assert_eq!(got[1].0.member, "b");
        assert_eq!(got[1].1, vec![("t".to_string(), 1)]);
        // Only those of another spec: nothing.
        assert!(newest_for(&all, &parts, |c| c.spec_fingerprint == "other").is_empty());
    }

    #[test]
    fn retention_keeps_the_newest_and_never_the_only_copy_of_a_partition() {
        let all = vec![
            meta(100, "a", &[(0, 10), (1, 10)]),
            meta(200, "a", &[(0, 20)]),
            meta(300, "a", &[(0, 30)]),
            meta(400, "a", &[(0, 40)]),
            meta(500, "b", &[(2, 50)]),
        ];
        let incomplete = vec![
            checkpoint_id(150, "a"),
            checkpoint_id(450, "a"),
            checkpoint_id(50, "b"),
        ];
        // Keep 2 of a's: 200 goes; 100 stays (the only one holding partition 1); the
        // incomplete 150 goes (older than a's newest complete), 450 may still be in flight.
        let d = doomed(&all, &incomplete, "a", 2);
        assert_eq!(d, vec![checkpoint_id(200, "a"), checkpoint_id(150, "a")]);
        assert!(doomed(&all, &incomplete, "b", 1).contains(&checkpoint_id(50, "b")));
        // Another member's checkpoints superseded on every partition (a restarted detector
        // without a static id) go too; its only copy of partition 1 stays.
        let d = doomed(&all, &[], "b", 3);
        assert_eq!(
            d,
            vec![checkpoint_id(200, "a"), checkpoint_id(300, "a")],
            "a's 100 holds partition 1 alone, 400 is the newest of partition 0"
        );
        // The newest of each partition per spec is kept: a Stateless detector of the old
        // spec still finds its own.
        let mut other_spec = meta(500, "c", &[(0, 60)]);
        other_spec.spec_fingerprint = "g".into();
        let mut all2 = all.clone();
        all2.push(other_spec);
        assert!(!doomed(&all2, &[], "c", 1).contains(&checkpoint_id(400, "a")));
    }

    #[test]
    fn retention_keeps_the_newest_handoff_checkpoint_of_a_partition() {
        let mut handoff = meta(200, "a", &[(0, 20)]);
        handoff.partitions[0].partition_count = Some(8);
        handoff.partitions[0].handoff_from = Some(4);
        let all = vec![
            meta(100, "a", &[(0, 10)]),
            handoff,
            meta(300, "a", &[(0, 30)]),
            meta(400, "a", &[(0, 40)]),
        ];
        // Keep 1 of a's: 100 and 300 go; the handoff (200) stays for the new partitions'
        // owners although newer checkpoints hold partition 0.
        assert_eq!(
            doomed(&all, &[], "a", 1),
            vec![checkpoint_id(300, "a"), checkpoint_id(100, "a")]
        );
    }

    #[test]
    fn file_store_round_trip_listing_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let mut s = CheckpointStore::open(&url, "pipe").unwrap();
        for (i, ms) in [100, 200, 300].into_iter().enumerate() {
            s.start(move || Ok(vec![i as u8; 10]), meta(ms, "a", &[(0, ms)]));
        }
        let done = s.wait_all();
        assert_eq!(done.len(), 3);
        assert!(
            done.iter()
                .all(|c| c.error.is_none() && c.metadata.bytes == 10)
        );
        // An incomplete one (a crash between the two writes).
        std::fs::create_dir_all(
            dir.path()
                .join("pipe/checkpoints")
                .join(checkpoint_id(50, "a")),
        )
        .unwrap();
        std::fs::write(
            dir.path()
                .join("pipe/checkpoints")
                .join(checkpoint_id(50, "a"))
                .join(STATE_FILE),
            b"x",
        )
        .unwrap();
        let (complete, incomplete) = s.list().unwrap();
        assert_eq!(complete.len(), 3);
        assert_eq!(incomplete, vec![checkpoint_id(50, "a")]);
        assert_eq!(s.read_state(&complete[2]).unwrap(), vec![2u8; 10]);
        let deleted = s.apply_retention("a", 1).unwrap();
        assert_eq!(deleted.len(), 3, "{deleted:?}");
        let (complete, incomplete) = s.list().unwrap();
        assert_eq!(
            complete.iter().map(|c| c.created_ms).collect::<Vec<_>>(),
            vec![300]
        );
        assert!(incomplete.is_empty(), "{incomplete:?}");
    }

    #[test]
    fn an_unwritable_location_fails_the_write_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let s = CheckpointStore::open(&url, "pipe").unwrap();
        // A file where the pipeline's folder should be.
        std::fs::write(dir.path().join("pipe"), b"not a folder").unwrap();
        let e = s.write(vec![1], &meta(1, "a", &[(0, 1)])).unwrap_err();
        assert!(e.to_string().starts_with("checkpoint store"), "{e}");
        assert!(CheckpointStore::open("ftp://x/y", "p").is_err());
    }
}
