//! A source topic's partition count grows (`kafka-topics --alter --partitions`): the producers'
//! partitioner (`spec.source.kafka.partitioner`) now puts some keys on other partitions, and
//! their state follows them through the checkpoint store. Needs `spec.checkpointing`.
//!
//! - **Noticing.** The count comes from the consumer's metadata: at assignment (a metadata
//!   request) and from the statistics every 5 s after (librdkafka refreshes it every
//!   `topic.metadata.refresh.interval.ms`, default 5 min; settable in
//!   `spec.source.kafka.properties`). The group rebalances by itself and the new partitions are
//!   assigned to members.
//! - **Handing keys over** (owner of an old partition `p`, per partition): it first reads `p`
//!   up to the high watermark it had when the change was noticed (every record written before
//!   the producers switched is then in `p`'s state), then writes a *handoff checkpoint* of `p`
//!   (`handoff: true`, `partitionCount: <new>`), then drops the keys that moved
//!   ([`vigil_core::engine::Engine::retain_keys`]). From then on a record of a moved key that
//!   still comes to `p` (a producer with stale metadata) is dead-lettered with reason
//!   `moved_key`: its state lives elsewhere now. Nothing is committed past that checkpoint
//!   before it completes (the commit rule of [`super::checkpointing`]).
//! - **Taking keys over** (owner of a partition `q` that keys move into, a new one above all):
//!   `q` is paused until every old partition that can send keys to it has a handoff
//!   checkpoint, then the keys the partitioner puts on `q` are loaded from them and `q` is
//!   resumed. A partition's own checkpoint already at the new count means this was done
//!   before (a restart): nothing is loaded twice. After [`HANDOFF_WAIT_MIN`] (or ten
//!   checkpoint intervals if longer) without a handoff checkpoint, the newest checkpoint of
//!   the missing partition is used instead, with a warning: the keys then miss the records
//!   between that checkpoint and the handoff.
//! - **New partitions start at their beginning** when the group has no committed offset for
//!   them (as Flink's Kafka source does for partitions it discovers), whatever `startOffset`
//!   says: records the producers wrote there before the group got the partition belong to
//!   the keys that moved.
//!
//! Without a declared partitioner, a count change is logged (once per topic and count) and the
//! keys that move start with empty state on their new partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use vigil_api::v1alpha1::KeyPartitioner;
use vigil_core::engine::KeyPlacement;
use vigil_core::engine::snapshot::Snapshot;

use super::{Core, GroupConsumer, wall_clock_ms};
use crate::checkpoint::{CheckpointMetadata, PartitionOffset};
use crate::source::partitioner::partition_of;

/// Shortest wait for handoff checkpoints before the newest checkpoints are used instead.
pub(super) const HANDOFF_WAIT_MIN: Duration = Duration::from_secs(60);

/// Partition count changes of the run (see the module header).
#[derive(Default)]
pub(super) struct Repartition {
    /// `spec.source.kafka.partitioner`.
    pub partitioner: Option<KeyPartitioner>,
    /// Partition count per topic as last seen.
    counts: BTreeMap<String, i32>,
    /// Per owned engine partition: the count its keys are laid out by, and whether keys left
    /// it at a count change (records of them are dead-lettered).
    layout: BTreeMap<i32, (i32, bool)>,
    /// Owned partitions handing keys over: (new count, offset to read up to first).
    handing_over: BTreeMap<i32, (i32, i64)>,
    /// The partition whose handoff checkpoint is being taken.
    marking: Option<i32>,
    /// Owned partitions paused until the keys that move into them can be loaded.
    waiting: BTreeMap<i32, Waiting>,
    /// Count changes already logged for lack of a partitioner.
    warned: BTreeSet<(String, i32)>,
    /// When the store was last looked at for handoff checkpoints.
    last_look: Option<Instant>,
}

struct Waiting {
    topic: String,
    partition: i32,
    count: i32,
    /// The topic's count this detector saw before `count`, if any.
    seen_before: Option<i32>,
    since: Instant,
    /// Lowest offset of a record delivered while paused (fetched before the pause took
    /// effect): consumption goes back to it on resume.
    held_from: Option<i64>,
}

/// `partition_of` as a function pointer for the engine's [`KeyPlacement`].
fn murmur2(key: &[u8], n: i32) -> i32 {
    partition_of(KeyPartitioner::Murmur2, key, n)
}

fn crc32(key: &[u8], n: i32) -> i32 {
    partition_of(KeyPartitioner::Crc32, key, n)
}

fn placement(p: KeyPartitioner) -> fn(&[u8], i32) -> i32 {
    match p {
        KeyPartitioner::Murmur2 => murmur2,
        KeyPartitioner::Crc32 => crc32,
    }
}

/// The old partitions (of `from` partitions) whose keys may move to `q` when the count
/// becomes `to`: all of them unless `to` is a multiple of `from`, then only `q mod from`;
/// never `q` itself.
pub(super) fn senders(q: i32, from: i32, to: i32) -> Vec<i32> {
    if from <= 0 || from >= to {
        return Vec::new();
    }
    if to % from == 0 {
        let p = q % from;
        return if p == q { Vec::new() } else { vec![p] };
    }
    (0..from).filter(|p| *p != q).collect()
}

/// What loading the keys that move into `(topic, q)` needs, from the complete checkpoints:
/// per sending partition, its handoff checkpoint to `count` (`None`: not written yet). The
/// senders are those the old counts allow: `seen_before` (the count this detector saw before,
/// if any) and the counts the topic's partitions are checkpointed by. Empty when nothing moves
/// into `q`, or when `q`'s own state is already laid out by `count` (loaded before a restart).
fn sources<'a>(
    complete: &'a [CheckpointMetadata],
    topic: &str,
    q: i32,
    count: i32,
    seen_before: Option<i32>,
) -> Vec<(i32, Option<&'a CheckpointMetadata>)> {
    let entries = || {
        complete.iter().flat_map(|c| {
            c.partitions
                .iter()
                .filter(move |o| o.topic == topic)
                .map(move |o| (c, o))
        })
    };
    // q's own newest entry.
    let own = entries()
        .filter(|(_, o)| o.partition == q)
        .max_by(|(a, _), (b, _)| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    if own.is_some_and(|(_, o)| o.partition_count.is_some_and(|n| n >= count)) {
        return Vec::new();
    }
    let mut olds: BTreeSet<i32> = seen_before.into_iter().collect();
    for (_, o) in entries() {
        if let Some(n) = o.handoff_from {
            olds.insert(n);
        }
        if let Some(n) = o.partition_count {
            olds.insert(n);
        }
    }
    let mut senders_of_q: BTreeSet<i32> = BTreeSet::new();
    for old in olds.into_iter().filter(|n| *n < count) {
        senders_of_q.extend(senders(q, old, count));
    }
    senders_of_q
        .into_iter()
        .map(|p| {
            let handoff = entries()
                .filter(|(_, o)| {
                    o.partition == p && o.handoff_from.is_some() && o.partition_count == Some(count)
                })
                .map(|(c, _)| c)
                .max_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            (p, handoff)
        })
        .collect()
}

impl Repartition {
    /// Nothing seen yet; `partitioner` from `spec.source.kafka.partitioner`.
    pub fn new(partitioner: Option<KeyPartitioner>) -> Self {
        Self {
            partitioner,
            ..Self::default()
        }
    }

    /// Whether engine partition `partition` waits for keys to move in.
    pub fn is_waiting(&self, partition: i32) -> bool {
        !self.waiting.is_empty() && self.waiting.contains_key(&partition)
    }

    /// A record of a waiting partition was delivered (fetched before the pause): it is
    /// skipped and read again on resume.
    pub fn hold(&mut self, partition: i32, offset: i64) {
        if let Some(w) = self.waiting.get_mut(&partition) {
            w.held_from = Some(w.held_from.map_or(offset, |o| o.min(offset)));
        }
    }

    /// Partitions revoked: nothing of them is pending any more.
    pub fn revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.layout.remove(p);
            self.handing_over.remove(p);
            self.waiting.remove(p);
        }
    }

    /// The entry of engine partition `p` in a checkpoint being written.
    pub fn describe(&self, p: i32, entry: &mut PartitionOffset) {
        if let Some(&(count, moved)) = self.layout.get(&p) {
            entry.partition_count = Some(count);
            entry.keys_moved = moved;
        }
        if self.marking == Some(p)
            && let Some(&(to, _)) = self.handing_over.get(&p)
        {
            entry.handoff_from = entry.partition_count;
            entry.partition_count = Some(to);
            entry.keys_moved = true;
        }
    }
}

impl Core {
    /// Partition counts of `topics` from a metadata request; those that fail are left out.
    fn fetch_counts(consumer: &GroupConsumer, topics: &[String]) -> BTreeMap<String, i32> {
        let mut out = BTreeMap::new();
        for t in topics {
            match consumer.fetch_metadata(Some(t), Duration::from_secs(10)) {
                Ok(md) => {
                    if let Some(mt) = md.topics().iter().find(|mt| mt.name() == t) {
                        out.insert(t.clone(), mt.partitions().len() as i32);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = %t, "Partition count could not be read; a partition count change is noticed from the statistics.");
                }
            }
        }
        out
    }

    /// After `restore_assigned`: records the layout of the assigned partitions (`restored`:
    /// the checkpoint entry each was restored from), starts new partitions at their beginning,
    /// and pauses those that keys move into until they can be loaded.
    pub(super) fn repartition_assigned(
        &mut self,
        consumer: &GroupConsumer,
        partitions: &[(String, i32)],
        restored: &[(i32, PartitionOffset)],
        complete: &[CheckpointMetadata],
    ) {
        if self.checkpointing.is_none() {
            return;
        }
        let topics: Vec<String> = {
            let mut t: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
            t.dedup();
            t
        };
        let seen_before = self.repartition.counts.clone();
        let fetched = Self::fetch_counts(consumer, &topics);
        self.repartition.counts.extend(fetched);
        let committed = super::checkpointing::committed_offsets(consumer, partitions);
        for (topic, q) in partitions {
            let Some(e) = self.ids.engine_partition(topic, *q) else {
                continue;
            };
            let count = self
                .repartition
                .counts
                .get(topic)
                .copied()
                .unwrap_or(q + 1)
                .max(q + 1);
            let entry = restored.iter().find(|(p, _)| *p == e).map(|(_, o)| o);
            let layout = match entry {
                Some(o) => (o.partition_count.unwrap_or(count), o.keys_moved),
                None => (count, false),
            };
            self.repartition.layout.insert(e, layout);
            if layout.1
                && let Some(p) = self.repartition.partitioner
            {
                self.driver.engine.set_key_placement(
                    e,
                    Some(KeyPlacement {
                        partition: *q,
                        partitions: layout.0,
                        place: placement(p),
                    }),
                );
            }
            // A partition newer than the checkpointed layout of the topic, never committed:
            // from its beginning.
            let oldest_layout = complete
                .iter()
                .flat_map(|c| c.partitions.iter())
                .filter(|o| o.topic == *topic)
                .filter_map(|o| o.partition_count)
                .min();
            let never_committed = !committed.iter().any(|(t, p, _)| t == topic && p == q);
            if entry.is_none() && never_committed && oldest_layout.is_some_and(|n| *q >= n) {
                match consumer.seek(topic, *q, Offset::Beginning, Duration::from_secs(10)) {
                    Ok(()) => {
                        tracing::info!(topic = %topic, partition = q, "A partition added to the topic starts from its beginning.")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %topic, partition = q, "A partition added to the topic could not be moved to its beginning; it starts at startOffset.")
                    }
                }
            }
            if self.repartition.partitioner.is_none() {
                continue;
            }
            let wanted = sources(complete, topic, *q, count, seen_before.get(topic).copied());
            if wanted.is_empty() {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, *q);
            if let Err(err) = consumer.pause(&tpl) {
                tracing::warn!(error = %err, topic = %topic, partition = q, "Could not pause a partition keys move into; its records are held back instead.");
            }
            tracing::info!(topic = %topic, partition = q, partitions = count, from = ?wanted.iter().map(|w| w.0).collect::<Vec<_>>(),
                "Keys move into this partition after a partition count change; it waits for their handoff checkpoints.");
            self.repartition.waiting.insert(
                e,
                Waiting {
                    topic: topic.clone(),
                    partition: *q,
                    count,
                    seen_before: seen_before.get(topic).copied(),
                    since: Instant::now(),
                    held_from: None,
                },
            );
        }
        // Some may be ready at once.
        self.repartition.last_look = None;
        self.load_moved_keys(consumer);
    }

    /// The loop's share (every tick, with checkpointing): notices count changes, takes due
    /// handoff checkpoints and loads the keys of waiting partitions once they are written.
    pub(super) fn repartition_tick(&mut self, consumer: &GroupConsumer) {
        if self.checkpointing.is_none() {
            return;
        }
        let counts = consumer.context().partition_counts();
        for (topic, &count) in &counts {
            let known = self.repartition.counts.get(topic).copied().unwrap_or(0);
            if count > known {
                self.repartition.counts.insert(topic.clone(), count);
            }
        }
        self.start_handoffs(consumer);
        self.finish_handoffs(consumer);
        if !self.repartition.waiting.is_empty() {
            self.load_moved_keys(consumer);
        }
    }

    /// Owned partitions laid out by a smaller count than their topic has now start handing
    /// their moved keys over (or, without a partitioner, are logged once).
    fn start_handoffs(&mut self, consumer: &GroupConsumer) {
        let grown: Vec<(i32, String, i32, i32, i32)> = self
            .repartition
            .layout
            .iter()
            .filter(|(e, _)| !self.repartition.handing_over.contains_key(e))
            .filter_map(|(&e, &(layout, _))| {
                let (topic, kp) = self.ids.kafka(e)?;
                let count = *self.repartition.counts.get(topic)?;
                (count > layout).then(|| (e, topic.to_string(), kp, layout, count))
            })
            .collect();
        for (e, topic, kp, from, to) in grown {
            let Some(p) = self.repartition.partitioner else {
                if self.repartition.warned.insert((topic.clone(), to)) {
                    tracing::warn!(topic = %topic, from, to,
                        "The topic's partition count changed; without spec.source.kafka.partitioner the keys that move to other partitions start with empty state there.");
                }
                self.repartition.layout.insert(e, (to, false));
                continue;
            };
            if to % from != 0 && !senders(kp, from, to).is_empty() {
                tracing::warn!(topic = %topic, partition = kp, from, to,
                    "The new partition count is not a multiple of the old one: keys also move between old partitions, and those that move into this one start with empty state here (grow by a multiple to keep them).");
            }
            match consumer.fetch_watermarks(&topic, kp, Duration::from_secs(10)) {
                Ok((_, high)) => {
                    tracing::info!(topic = %topic, partition = kp, from, to, up_to = high, partitioner = ?p,
                        "The topic's partition count grew; this partition hands the keys that move over once it has read up to the offset noticed.");
                    self.repartition.handing_over.insert(e, (to, high));
                }
                Err(err) => {
                    tracing::warn!(error = %err, topic = %topic, partition = kp, "High watermark not readable; the handoff is retried.");
                }
            }
        }
    }

    /// Handoffs whose partition has read far enough: checkpoint, then drop the moved keys.
    fn finish_handoffs(&mut self, consumer: &GroupConsumer) {
        let positions = self.driver.engine.positions();
        let due: Vec<(i32, i32)> = self
            .repartition
            .handing_over
            .iter()
            .filter(|(e, (_, up_to))| {
                positions
                    .iter()
                    .find(|(p, _)| p == *e)
                    .is_some_and(|(_, next)| next >= up_to)
                    || *up_to == 0
            })
            .map(|(&e, &(to, _))| (e, to))
            .collect();
        let Some(p) = self.repartition.partitioner else {
            return;
        };
        for (e, to) in due {
            let Some((topic, kp)) = self.ids.kafka(e).map(|(t, k)| (t.to_string(), k)) else {
                continue;
            };
            self.repartition.marking = Some(e);
            let ok = self.checkpoint_sync_forced(consumer, &[e], "handoff");
            self.repartition.marking = None;
            if !ok {
                tracing::warn!(topic = %topic, partition = kp, "Handoff checkpoint failed; retried.");
                continue;
            }
            let place = placement(p);
            let dropped = self.driver.engine.retain_keys(
                e,
                |k| place(k.as_bytes(), to) == kp,
                wall_clock_ms(),
            );
            self.driver.engine.set_key_placement(
                e,
                Some(KeyPlacement {
                    partition: kp,
                    partitions: to,
                    place,
                }),
            );
            self.repartition.handing_over.remove(&e);
            self.repartition.layout.insert(e, (to, true));
            match dropped {
                Ok(n) => {
                    tracing::info!(topic = %topic, partition = kp, partitions = to, moved_keys = n,
                        "Handoff checkpoint written; the keys that moved were dropped here and are loaded by their new partitions' owners.");
                }
                Err(err) => {
                    tracing::error!(error = %err, topic = %topic, partition = kp, "The moved keys could not be dropped here; their records are dead-lettered as moved_key.");
                }
            }
        }
    }

    /// Loads the moved keys of waiting partitions whose senders' handoff checkpoints are all
    /// written (or whose wait ran out), then resumes them. Looks at the store at most once a
    /// second.
    fn load_moved_keys(&mut self, consumer: &GroupConsumer) {
        if self.repartition.waiting.is_empty() {
            return;
        }
        if self
            .repartition
            .last_look
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.repartition.last_look = Some(Instant::now());
        let Some(cp) = &self.checkpointing else {
            return;
        };
        let Some(partitioner) = self.repartition.partitioner else {
            return;
        };
        let complete = match cp.store.list() {
            Ok((c, _)) => c,
            Err(err) => {
                tracing::warn!(error = %err, "Checkpoints could not be listed; loading moved keys is retried.");
                return;
            }
        };
        let patience = HANDOFF_WAIT_MIN.max(Duration::from_millis(
            u64::try_from(cp.cfg.interval_ms.saturating_mul(10)).unwrap_or(u64::MAX),
        ));
        let waiting: Vec<i32> = self.repartition.waiting.keys().copied().collect();
        for e in waiting {
            let w = &self.repartition.waiting[&e];
            let (topic, q, count) = (w.topic.clone(), w.partition, w.count);
            let wanted = sources(&complete, &topic, q, count, w.seen_before);
            let missing: Vec<i32> = wanted
                .iter()
                .filter(|(_, m)| m.is_none())
                .map(|(p, _)| *p)
                .collect();
            let timed_out = w.since.elapsed() >= patience;
            if !missing.is_empty() && !timed_out {
                continue;
            }
            // Per sender: its handoff checkpoint, or (timed out) its newest checkpoint.
            let mut picks: Vec<(i32, CheckpointMetadata)> = Vec::new();
            for (p, m) in wanted {
                let m = m.cloned().or_else(|| {
                    complete
                        .iter()
                        .filter(|c| {
                            c.partitions
                                .iter()
                                .any(|o| o.topic == topic && o.partition == p)
                        })
                        .max_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)))
                        .cloned()
                });
                if let Some(m) = m {
                    picks.push((p, m));
                }
            }
            if !missing.is_empty() {
                tracing::warn!(topic = %topic, partition = q, missing = ?missing, waited_s = w.since.elapsed().as_secs(),
                    "No handoff checkpoint from these partitions in time; their keys that move here are loaded from their newest checkpoints and miss the records after them.");
            }
            let place = placement(partitioner);
            let mut keys = 0;
            for (p, meta) in picks {
                let bytes = match cp.store.read_state(&meta) {
                    Ok(b) => b,
                    Err(err) => {
                        tracing::error!(error = %err, checkpoint = %meta.id, "Handoff checkpoint could not be read; its keys start empty here.");
                        continue;
                    }
                };
                let mut snap = match Snapshot::decode(&bytes) {
                    Ok(s) => s,
                    Err(err) => {
                        tracing::error!(error = %err, checkpoint = %meta.id, "Handoff checkpoint does not decode; its keys start empty here.");
                        continue;
                    }
                };
                // The sender's engine partition in the writer's numbering.
                let Some(idx) = meta.topics.iter().position(|t| *t == topic) else {
                    continue;
                };
                let sender = ((idx as i32) << crate::source::PARTITION_BITS) | p;
                let report = self.driver.engine.restore_with(
                    &mut snap,
                    |_| None,
                    |sp, k| (sp == sender && place(k.as_bytes(), count) == q).then_some(e),
                    wall_clock_ms(),
                );
                keys += report.keys;
                tracing::info!(topic = %topic, partition = q, from_partition = p, checkpoint = %meta.id, keys = report.keys,
                    "Keys that moved here loaded from the handoff checkpoint.");
            }
            self.metrics.restored(keys);
            let w = self.repartition.waiting.remove(&e).expect("listed above");
            self.repartition.layout.insert(e, (count, false));
            if let Some(from) = w.held_from
                && let Err(err) =
                    consumer.seek(&topic, q, Offset::Offset(from), Duration::from_secs(10))
            {
                tracing::warn!(error = %err, topic = %topic, partition = q, offset = from, "Could not go back to the records held while waiting; they are skipped.");
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, q);
            if let Err(err) = consumer.resume(&tpl) {
                tracing::error!(error = %err, topic = %topic, partition = q, "Could not resume the partition.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_moves_keys_only_from_the_partition_below() {
        assert_eq!(senders(5, 4, 8), vec![1]);
        assert_eq!(senders(1, 4, 8), Vec::<i32>::new());
        assert_eq!(senders(0, 4, 6), vec![1, 2, 3]);
        assert_eq!(senders(0, 4, 4), Vec::<i32>::new());
    }

    fn entry(p: i32, count: Option<i32>, handoff_from: Option<i32>) -> PartitionOffset {
        let mut o = PartitionOffset::new("t", p, 10);
        o.partition_count = count;
        o.handoff_from = handoff_from;
        o
    }

    fn meta(ms: i64, parts: Vec<PartitionOffset>) -> CheckpointMetadata {
        CheckpointMetadata {
            format_version: 1,
            id: crate::checkpoint::checkpoint_id(ms, "m"),
            pipeline: "p".into(),
            spec_fingerprint: "f".into(),
            member: "m".into(),
            created_ms: ms,
            trigger: "periodic".into(),
            topics: vec!["t".into()],
            partitions: parts,
            keys: 1,
            bytes: 1,
            savepoint: None,
        }
    }

    #[test]
    fn a_new_partition_waits_for_its_senders_handoff_and_not_twice() {
        let before = meta(100, (0..4).map(|p| entry(p, Some(4), None)).collect());
        // Partition 5 of 8 takes keys from 1 only; no handoff yet.
        let s = sources(std::slice::from_ref(&before), "t", 5, 8, None);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, 1);
        assert!(s[0].1.is_none());
        // Partition 1 handed off, then checkpointed again at the new count.
        let handoff = meta(200, vec![entry(1, Some(8), Some(4))]);
        let after = meta(300, vec![entry(1, Some(8), None)]);
        let all = vec![before.clone(), handoff.clone(), after];
        let s = sources(&all, "t", 5, 8, None);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1.map(|m| &m.id), Some(&handoff.id));
        // Partition 5's own checkpoint at 8: nothing to load again.
        let mut all = all;
        all.push(meta(400, vec![entry(5, Some(8), None)]));
        assert!(sources(&all, "t", 5, 8, None).is_empty());
        // Old partitions keep their keys when the count doubles.
        assert!(sources(std::slice::from_ref(&before), "t", 1, 8, None).is_empty());
        // Checkpoints of older builds (no count): nothing expected...
        let old = meta(100, (0..4).map(|p| entry(p, None, None)).collect());
        assert!(sources(std::slice::from_ref(&old), "t", 5, 8, None).is_empty());
        // ... unless this detector saw the topic at 4 partitions before: then it waits for
        // partition 1 even before any checkpoint says so.
        let s = sources(&[], "t", 5, 8, Some(4));
        assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1]);
        // 4 -> 6: partition 0 may receive keys from 1, 2 and 3.
        let s = sources(&[], "t", 0, 6, Some(4));
        assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}
