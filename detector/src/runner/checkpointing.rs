//! Durable state in the run loop (`spec.checkpointing`): when a checkpoint is taken, what
//! offsets are committed, and what is restored when partitions are assigned.
//!
//! - **Periodic checkpoint** (every `interval`): the outputs so far are flushed (so every alert
//!   of the events before the snapshot is acknowledged), the engine's state of every owned
//!   partition is encoded on the loop thread, and the bytes are written in the background.
//!   Once the completion marker is written, the checkpoint's offsets are committed: committed
//!   offsets never pass checkpointed state (at least once, like Flink's commit on checkpoint).
//! - **Revocation** (a clean rebalance) and **shutdown**: the same, synchronously, for the
//!   partitions handed over, before librdkafka gives them away; the next owner restores it
//!   and replays nothing. A lost assignment (session timeout, `kill -9`) takes no checkpoint:
//!   the next owner restores the last one and replays from its offsets.
//! - **Assignment**: per partition, the newest complete checkpoint holding it is restored
//!   (keys, windows, rule state, watermarks). When the committed offset is already past it (a
//!   savepoint the old detectors ran past), the consumer seeks back to the checkpoint's offset;
//!   if it cannot, the partition starts empty rather than with a gap, and a warning says why.
//!   Records below the checkpoint's offset are skipped.
//!   `upgradeMode: Stateless` restores only checkpoints written under the same spec;
//!   `LastState` any (a rule whose state no longer fits starts empty, logged per rule).
//! - **Savepoint** (`Control::Savepoint`, `POST /savepoints/<name>` on the metrics port): a
//!   synchronous checkpoint of every owned partition, never skipped, also written as this
//!   detector's part of savepoint `<name>` (kept until deleted by hand). With
//!   `spec.checkpointing.restoreFrom: <name>`, the savepoint's parts join the candidates on
//!   assignment (a newer checkpoint the upgrade mode accepts still wins); a missing savepoint
//!   stops the run at start.
//! - **Drain** (a bounded run's end of input fired every window): no checkpoint is written
//!   and nothing is committed past the last one, so the end-of-input watermark never reaches a
//!   checkpoint.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer as _};
use vigil_api::v1alpha1::UpgradeMode;
use vigil_core::config::CheckpointConfig;
use vigil_core::engine::snapshot::{Encoded, FORMAT_VERSION, Snapshot};

use super::{Core, GroupConsumer, wall_clock_ms};
use crate::checkpoint::{
    CheckpointMetadata, CheckpointStore, PartitionOffset, checkpoint_id, newest_for,
};

/// The checkpoint settings and store of a run.
pub(super) struct Checkpointing {
    pub store: CheckpointStore,
    pub cfg: CheckpointConfig,
    pub member: String,
    pub spec_fingerprint: String,
    pub upgrade_mode: UpgradeMode,
    pub pipeline: String,
    pub topics: Vec<String>,
    /// Offsets of the last checkpoint this detector completed: a synchronous checkpoint of
    /// partitions already at those offsets is not written again (shutdown, then the
    /// revocation of leaving the group).
    pub last_completed: Vec<(i32, i64)>,
}

/// Opens the store and checks that the savepoint to restore from exists.
pub(super) fn open_store(
    c: &CheckpointConfig,
    pipeline: &str,
) -> Result<CheckpointStore, crate::checkpoint::CheckpointError> {
    let store = CheckpointStore::open(&c.location, pipeline)?;
    if let Some(name) = &c.restore_from
        && store.list_savepoint(name)?.is_empty()
    {
        return Err(crate::checkpoint::CheckpointError::Location {
            location: c.location.clone(),
            reason: format!(
                "spec.checkpointing.restoreFrom: savepoint `{name}` has no complete part under {pipeline}/savepoints/{name}/"
            ),
        });
    }
    Ok(store)
}

/// A member id usable in object names: the group instance id, or one made of the host
/// process, for detectors without static membership.
pub(super) fn member_id(group_instance_id: Option<&str>) -> String {
    let raw = group_instance_id.map_or_else(
        || format!("p{}-{}", std::process::id(), wall_clock_ms()),
        str::to_string,
    );
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Core {
    /// Encodes the state of the partitions `include` accepts after flushing the outputs.
    /// `None` when the outputs could not be flushed (the checkpoint is skipped).
    fn take_snapshot(
        &mut self,
        include: &dyn Fn(i32) -> bool,
        trigger: &str,
    ) -> Option<(Encoded, CheckpointMetadata)> {
        let cp = self.checkpointing.as_ref()?;
        if self.sinks.tracker().failed() > 0 {
            // State past an output the broker refused must never become restorable.
            self.metrics.checkpoint(trigger, None);
            return None;
        }
        if let Err(e) = self.sinks.flush(Duration::from_secs(30)) {
            tracing::warn!(error = %e, trigger, "Outputs not acknowledged; checkpoint skipped (offsets stay at the last checkpoint).");
            self.metrics.checkpoint(trigger, None);
            return None;
        }
        let created_ms = wall_clock_ms();
        let (encoded, info) = match self.driver.engine.encode_snapshot(include) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, trigger, "Snapshot could not be encoded; checkpoint skipped.");
                self.metrics.checkpoint(trigger, None);
                return None;
            }
        };
        let partitions = info
            .offsets
            .iter()
            .filter_map(|&(p, offset)| {
                self.ids.kafka(p).map(|(t, kp)| {
                    let mut o = PartitionOffset::new(t, kp, offset);
                    self.repartition.describe(p, &mut o);
                    o
                })
            })
            .collect();
        let metadata = CheckpointMetadata {
            format_version: FORMAT_VERSION,
            id: checkpoint_id(created_ms, &cp.member),
            pipeline: cp.pipeline.clone(),
            spec_fingerprint: cp.spec_fingerprint.clone(),
            member: cp.member.clone(),
            created_ms,
            trigger: trigger.to_string(),
            topics: cp.topics.clone(),
            partitions,
            keys: info.keys as u64,
            bytes: 0, // set once compressed
            savepoint: None,
        };
        Some((encoded, metadata))
    }

    /// Starts a periodic checkpoint of every owned partition unless one is still being written.
    pub(super) fn checkpoint_periodic(&mut self) {
        if self
            .checkpointing
            .as_ref()
            .is_none_or(|c| c.store.in_flight() > 0)
        {
            return;
        }
        if self.driver.engine.positions().is_empty() {
            return; // nothing consumed yet
        }
        let Some((encoded, metadata)) = self.take_snapshot(&|_| true, "periodic") else {
            return;
        };
        if let Some(cp) = self.checkpointing.as_mut() {
            // Compression and the write run off the loop.
            cp.store
                .start(move || encoded.finish().map_err(Into::into), metadata);
        }
    }

    /// Handles finished background checkpoints: commits the offsets of completed ones and
    /// applies retention.
    pub(super) fn poll_checkpoints(&mut self, consumer: &GroupConsumer) {
        loop {
            let Some(done) = self
                .checkpointing
                .as_mut()
                .and_then(|c| c.store.poll_completed())
            else {
                return;
            };
            let m = &done.metadata;
            if let Some(e) = &done.error {
                self.metrics.checkpoint(&m.trigger, None);
                tracing::error!(error = %e, checkpoint = %m.id, "Checkpoint failed; offsets stay at the last complete checkpoint.");
                continue;
            }
            self.metrics
                .checkpoint(&m.trigger, Some((done.write_seconds, m.bytes)));
            tracing::debug!(checkpoint = %m.id, keys = m.keys, bytes = m.bytes, seconds = done.write_seconds, "Checkpoint complete.");
            // Commit only partitions still owned.
            let offsets = self.owned_offsets(m);
            self.commit(consumer, &offsets, CommitMode::Async);
            if let Some(cp) = self.checkpointing.as_mut() {
                cp.last_completed.clone_from(&offsets);
            }
            self.retention();
        }
    }

    fn owned_offsets(&self, m: &CheckpointMetadata) -> Vec<(i32, i64)> {
        let owned = self.driver.engine.positions();
        m.partitions
            .iter()
            .filter_map(|o| {
                self.ids
                    .engine_partition(&o.topic, o.partition)
                    .map(|p| (p, o.offset))
            })
            .filter(|(p, _)| owned.iter().any(|(q, _)| q == p))
            .collect()
    }

    fn retention(&self) {
        let Some(cp) = &self.checkpointing else {
            return;
        };
        match cp.store.apply_retention(&cp.member, cp.cfg.retained) {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::debug!(?deleted, "Old checkpoints deleted.");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Checkpoint retention failed; retried after the next checkpoint.")
            }
        }
    }

    /// Takes a checkpoint of `partitions` (all owned ones for `None`) and waits for it, then
    /// commits its offsets synchronously. Whether it completed.
    pub(super) fn checkpoint_sync(
        &mut self,
        consumer: &GroupConsumer,
        partitions: Option<&[i32]>,
        trigger: &str,
    ) -> bool {
        self.checkpoint_sync_with(consumer, partitions, trigger, false)
    }

    /// [`Self::checkpoint_sync`] of `partitions`, written even when the last checkpoint holds
    /// the same offsets (a handoff checkpoint says more than its offsets).
    pub(super) fn checkpoint_sync_forced(
        &mut self,
        consumer: &GroupConsumer,
        partitions: &[i32],
        trigger: &str,
    ) -> bool {
        self.checkpoint_sync_with(consumer, Some(partitions), trigger, true)
    }

    fn checkpoint_sync_with(
        &mut self,
        consumer: &GroupConsumer,
        partitions: Option<&[i32]>,
        trigger: &str,
        force: bool,
    ) -> bool {
        // Earlier background writes first, so their commits do not overtake this one.
        if let Some(cp) = self.checkpointing.as_mut() {
            let done = cp.store.wait_all();
            for c in done {
                self.metrics.checkpoint(
                    &c.metadata.trigger,
                    c.error
                        .is_none()
                        .then_some((c.write_seconds, c.metadata.bytes)),
                );
            }
        }
        let include = |p: i32| partitions.is_none_or(|ps| ps.contains(&p));
        let positions: Vec<(i32, i64)> = self
            .driver
            .engine
            .positions()
            .into_iter()
            .filter(|(p, _)| include(*p))
            .collect();
        if !force
            && let Some(cp) = &self.checkpointing
            && positions.iter().all(|x| cp.last_completed.contains(x))
        {
            return true; // the last checkpoint already holds this state's offsets
        }
        let Some((encoded, mut metadata)) = self.take_snapshot(&include, trigger) else {
            return false;
        };
        let bytes = match encoded.finish() {
            Ok(b) => b,
            Err(e) => {
                self.metrics.checkpoint(trigger, None);
                tracing::error!(error = %e, trigger, "Snapshot could not be compressed; checkpoint skipped.");
                return false;
            }
        };
        metadata.bytes = bytes.len() as u64;
        if metadata.partitions.is_empty() {
            return true;
        }
        let t0 = Instant::now();
        let Some(cp) = self.checkpointing.as_ref() else {
            return false;
        };
        match cp.store.write(bytes, &metadata) {
            Ok(()) => {
                self.metrics
                    .checkpoint(trigger, Some((t0.elapsed().as_secs_f64(), metadata.bytes)));
                tracing::info!(checkpoint = %metadata.id, trigger, keys = metadata.keys, bytes = metadata.bytes, "Checkpoint complete.");
                let offsets = self.owned_offsets(&metadata);
                if let Some(cp) = self.checkpointing.as_mut() {
                    cp.last_completed.clone_from(&offsets);
                }
                let ok = self.commit(consumer, &offsets, CommitMode::Sync);
                self.retention();
                ok
            }
            Err(e) => {
                self.metrics.checkpoint(trigger, None);
                tracing::error!(error = %e, trigger, "Checkpoint failed; the next owner replays from the last complete checkpoint.");
                false
            }
        }
    }

    /// Takes savepoint `name` (see the module header); the metadata of this detector's part.
    pub(super) fn savepoint(
        &mut self,
        consumer: &GroupConsumer,
        name: &str,
    ) -> Result<CheckpointMetadata, String> {
        if self.checkpointing.is_none() {
            return Err(
                "savepoints need spec.checkpointing (the location they are written to)".into(),
            );
        }
        if !vigil_core::config::valid_savepoint_name(name) {
            return Err(format!(
                "`{name}` is not a savepoint name (1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)"
            ));
        }
        if let Some(cp) = self.checkpointing.as_mut() {
            for c in cp.store.wait_all() {
                self.metrics.checkpoint(
                    &c.metadata.trigger,
                    c.error
                        .is_none()
                        .then_some((c.write_seconds, c.metadata.bytes)),
                );
            }
        }
        let (encoded, mut metadata) = self
            .take_snapshot(&|_| true, "savepoint")
            .ok_or("outputs not acknowledged or snapshot failed; see the detector log")?;
        let bytes = encoded.finish().map_err(|e| e.to_string())?;
        metadata.bytes = bytes.len() as u64;
        let t0 = Instant::now();
        let cp = self.checkpointing.as_ref().ok_or("no checkpoint store")?;
        // First as a checkpoint (so offsets can be committed at it), then as the savepoint part.
        cp.store.write(bytes.clone(), &metadata).map_err(|e| {
            self.metrics.checkpoint("savepoint", None);
            format!("{e:#}")
        })?;
        let mut part = metadata.clone();
        part.savepoint = Some(name.to_string());
        cp.store.write_savepoint(bytes, &part).map_err(|e| {
            self.metrics.checkpoint("savepoint", None);
            format!("{e:#}")
        })?;
        self.metrics
            .checkpoint("savepoint", Some((t0.elapsed().as_secs_f64(), part.bytes)));
        let offsets = self.owned_offsets(&metadata);
        self.commit(consumer, &offsets, CommitMode::Sync);
        if let Some(cp) = self.checkpointing.as_mut() {
            cp.last_completed.clone_from(&offsets);
        }
        tracing::info!(savepoint = %name, part = %part.id, keys = part.keys, bytes = part.bytes, partitions = ?part.partitions, "Savepoint part complete.");
        Ok(part)
    }

    /// Restores the newest eligible checkpoint of each assigned partition (see the module
    /// header), then lets [`super::repartition`] see what was restored.
    pub(super) fn restore_assigned(&mut self, consumer: &GroupConsumer, parts: &[(String, i32)]) {
        let Some(cp) = &self.checkpointing else {
            return;
        };
        let (complete, _) = match cp.store.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "Checkpoints could not be listed; the assigned partitions start empty and replay from the committed offsets.");
                return;
            }
        };
        let restored = self.restore_from(consumer, parts, complete.clone());
        self.repartition_assigned(consumer, parts, &restored, &complete);
    }

    /// The restore of [`Self::restore_assigned`] from the `complete` checkpoints; the entry
    /// each restored engine partition was restored from.
    fn restore_from(
        &mut self,
        consumer: &GroupConsumer,
        parts: &[(String, i32)],
        mut complete: Vec<CheckpointMetadata>,
    ) -> Vec<(i32, PartitionOffset)> {
        let mut restored = Vec::new();
        let Some(cp) = &self.checkpointing else {
            return restored;
        };
        if let Some(name) = &cp.cfg.restore_from {
            match cp.store.list_savepoint(name) {
                Ok(parts) => complete.extend(parts),
                Err(e) => {
                    tracing::error!(error = %e, savepoint = %name, "Savepoint could not be listed; restoring from checkpoints only.");
                }
            }
        }
        let eligible = |m: &CheckpointMetadata| {
            m.pipeline == cp.pipeline
                && (m.savepoint.is_some()
                    || cp.upgrade_mode == UpgradeMode::LastState
                    || m.spec_fingerprint == cp.spec_fingerprint)
        };
        let committed = committed_offsets(consumer, parts);
        let picks: Vec<(CheckpointMetadata, Vec<(String, i32)>)> =
            newest_for(&complete, parts, eligible)
                .into_iter()
                .map(|(m, ps)| (m.clone(), ps))
                .collect();
        for (meta, wanted) in picks {
            // A committed offset past the checkpoint (a savepoint the old detectors ran past):
            // consumption moves back to the checkpoint's offset, or, if that fails, the
            // partition starts empty rather than restore state with a gap.
            let wanted: Vec<(String, i32)> = wanted
                .into_iter()
                .filter(|(t, p)| {
                    let at = meta
                        .partitions
                        .iter()
                        .find(|o| o.topic == *t && o.partition == *p)
                        .map_or(i64::MAX, |o| o.offset);
                    match committed.iter().find(|(ct, cp_, _)| ct == t && cp_ == p) {
                        Some((_, _, c)) if *c > at => {
                            match consumer.seek(t, *p, rdkafka::Offset::Offset(at), Duration::from_secs(10)) {
                                Ok(()) => {
                                    tracing::info!(checkpoint = %meta.id, topic = %t, partition = p, from = c, to = at,
                                        "The committed offset is past this checkpoint; consumption moves back to it.");
                                    true
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, checkpoint = %meta.id, topic = %t, partition = p, checkpoint_offset = at, committed_offset = c,
                                        "The committed offset is past this checkpoint and the consumer could not seek back; the partition starts empty rather than restore state with a gap.");
                                    false
                                }
                            }
                        }
                        _ => true,
                    }
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            let bytes = match cp.store.read_state(&meta) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, checkpoint = %meta.id, "Checkpoint could not be read; its partitions start empty.");
                    continue;
                }
            };
            let mut snap = match Snapshot::decode(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, checkpoint = %meta.id, "Checkpoint does not decode; its partitions start empty.");
                    continue;
                }
            };
            let ids = &self.ids;
            let topics = &meta.topics;
            // Snapshot engine partition -> (topic, partition) by the writer's topic list ->
            // this run's engine partition.
            let select = |p: i32| {
                let idx = (p >> crate::source::PARTITION_BITS) as usize;
                let kp = p & ((1 << crate::source::PARTITION_BITS) - 1);
                let topic = topics.get(idx)?;
                wanted
                    .iter()
                    .any(|(t, q)| t == topic && *q == kp)
                    .then(|| ids.engine_partition(topic, kp))
                    .flatten()
            };
            // A handoff checkpoint still holds the keys that moved away: only those the
            // partitioner keeps on the partition are restored.
            let handoffs: Vec<(i32, i32, i32)> = meta
                .partitions
                .iter()
                .filter(|o| o.handoff_from.is_some())
                .filter_map(|o| {
                    let idx = topics.iter().position(|t| *t == o.topic)? as i32;
                    Some((
                        (idx << crate::source::PARTITION_BITS) | o.partition,
                        o.partition,
                        o.partition_count?,
                    ))
                })
                .collect();
            let partitioner = self.repartition.partitioner;
            let keep = |p: i32, k: &str| {
                let Some(&(_, kp, count)) = handoffs.iter().find(|h| h.0 == p) else {
                    return true;
                };
                partitioner.is_none_or(|pt| {
                    crate::source::partitioner::partition_of(pt, k.as_bytes(), count) == kp
                })
            };
            let report = self.driver.engine.restore_with(
                &mut snap,
                select,
                |p, k| select(p).filter(|_| keep(p, k)),
                wall_clock_ms(),
            );
            for &(target, _) in &report.offsets {
                if let Some((t, kp)) = self.ids.kafka(target)
                    && let Some(o) = meta
                        .partitions
                        .iter()
                        .find(|o| o.topic == t && o.partition == kp)
                {
                    restored.push((target, o.clone()));
                }
            }
            self.metrics.restored(report.keys);
            tracing::info!(
                checkpoint = %meta.id, savepoint = ?meta.savepoint, partitions = ?wanted, keys = report.keys, offsets = ?report.offsets,
                bytes = bytes.len(), seconds = t0.elapsed().as_secs_f64(),
                "State restored from checkpoint; records below these offsets are skipped."
            );
            for (tier, why) in &report.tiers_reset {
                tracing::warn!(window = %tier, reason = %why, "Window state not restored.");
            }
            for (rule, why) in &report.rules_reset {
                tracing::warn!(rule = %rule, reason = %why, "Rule state not restored; the rule starts empty.");
            }
        }
        restored
    }
}

/// Committed offsets of `parts` (topic, partition, offset); empty when they cannot be read.
pub(super) fn committed_offsets(
    consumer: &GroupConsumer,
    parts: &[(String, i32)],
) -> Vec<(String, i32, i64)> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(c) => c
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "Committed offsets could not be read; checkpoints are restored without the gap check.");
            Vec::new()
        }
    }
}
