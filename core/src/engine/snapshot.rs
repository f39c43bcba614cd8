//! Snapshots of the engine's state, the content of checkpoints and savepoints: per partition
//! the offset and event-time progress the state corresponds to, and per entity key its window
//! panes, per-rule state (lifecycle, `for` timers, baselines, detector models, model-rule
//! sequences) and the end of its last fired window. Pure: bytes in and out; storage is the
//! detector runtime's business.
//!
//! # Format (version [`FORMAT_VERSION`])
//! `MAGIC` (8 bytes, `VIGILSNP`), the format version (u32, little endian), then one zstd frame
//! (RFC 8878, level [`ZSTD_LEVEL`]) holding one [`Snapshot`] encoded with postcard 1.x (serde;
//! wire format specified at <https://postcard.jamesmunns.com/wire-format>). zstd takes the
//! bench pipeline's state from 2.4 KiB to 0.25 KiB per key (`vigil bench --state-keys`). Entries are addressed by entity key; the
//! partition each key was read from is recorded, and a restore picks the partitions it wants.
//! Fields, tiers and rules are named, not numbered, so a snapshot restores into a pipeline whose
//! field table, tier list or rule list changed:
//! - a tier is restored when a tier of the same name has the same [`tier_fingerprint`] (size,
//!   slide, quantile sketches); otherwise its windows start empty;
//! - a rule's per-key state is restored when a rule of the same name has the same
//!   [`rule_fingerprint`] (its window and its kind's settings: what shapes its state; severity,
//!   labels, annotations, `for` and the pipeline selector do not); otherwise it starts empty and
//!   the [`RestoreReport`] says so, per rule.
//!
//! A later version that changes the encoding bumps [`FORMAT_VERSION`] and keeps reading the
//! older ones (`core/tests/snapshot_fixture.rs` reads a committed version-1 snapshot).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use vigil_api::v1alpha1::DetectionRuleSpec;

use super::keys::KeyState;
use super::partitions::PartitionState;
use super::{Engine, Watermark};
use crate::config::TierConfig;
use crate::rules::RuleState;
use crate::window::{KeyWindows, TimerKind};

/// First bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"VIGILSNP";
/// Version of the encoding written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// zstd level of the body: 1, the fastest of the standard levels.
pub const ZSTD_LEVEL: i32 = 1;

/// A snapshot that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a Vigil snapshot.
    #[error("not a Vigil snapshot (the first bytes are not {MAGIC:?})")]
    NotASnapshot,
    /// Written by a newer build.
    #[error(
        "snapshot format version {found} is newer than this build reads (up to {FORMAT_VERSION})"
    )]
    Version {
        /// The version found.
        found: u32,
    },
    /// The bytes do not decode.
    #[error("snapshot does not decode")]
    Decode(#[source] postcard::Error),
    /// The body is not a valid zstd frame (truncated or corrupt).
    #[error("snapshot body does not decompress (truncated or corrupt)")]
    Decompress(#[source] std::io::Error),
    /// Writing failed.
    #[error("snapshot could not be written")]
    Io(#[source] std::io::Error),
    /// Encoding (or writing through the encoder) failed.
    #[error("snapshot could not be encoded")]
    Encode(#[source] postcard::Error),
}

/// A named, fingerprinted part of the pipeline (a tier or a rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Name.
    pub name: String,
    /// [`tier_fingerprint`] or [`rule_fingerprint`].
    pub fingerprint: u64,
}

/// Progress of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionProgress {
    /// Engine partition id (topic index << 20 | Kafka partition).
    pub partition: i32,
    /// One past the last record the state holds: where consumption resumes.
    pub next_offset: i64,
    /// Greatest event time seen.
    pub max_event_time: Option<i64>,
    /// Watermark per tier of [`Snapshot::tiers`].
    pub watermarks: Vec<Watermark>,
}

/// The state of one entity key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyEntry<'a> {
    /// Entity key.
    pub key: Cow<'a, str>,
    /// Engine partition it was read from.
    pub partition: i32,
    /// Window panes per tier of [`Snapshot::tiers`].
    pub windows: Cow<'a, [KeyWindows]>,
    /// State of each rule of [`Snapshot::rules`] that has any, by index.
    pub rules: Vec<(u32, Cow<'a, RuleState>)>,
}

/// A snapshot of some partitions of one pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot<'a> {
    /// Pipeline name.
    pub pipeline: String,
    /// Field names by field id, as the panes number them.
    pub fields: Vec<String>,
    /// Tiers, in the order of [`PartitionProgress::watermarks`] and [`KeyEntry::windows`].
    pub tiers: Vec<Part>,
    /// Rules, numbered as [`KeyEntry::rules`] numbers them.
    pub rules: Vec<Part>,
    /// Partitions covered.
    pub partitions: Vec<PartitionProgress>,
    /// Keys of those partitions.
    pub keys: Vec<KeyEntry<'a>>,
}

/// Fingerprint of a tier's window shape: size, slide and whether panes hold quantile sketches.
pub fn tier_fingerprint(tc: &TierConfig, with_sketch: bool) -> u64 {
    fnv1a(format!("{}/{}/{}", tc.size_ms, tc.slide_ms, with_sketch).as_bytes())
}

/// Fingerprint of what shapes a rule's per-key state: its window and its kind's settings.
pub fn rule_fingerprint(spec: &DetectionRuleSpec) -> u64 {
    let kind = serde_json::json!({
        "window": spec.window, "threshold": spec.threshold, "baseline": spec.baseline,
        "expression": spec.expression, "model": spec.model, "detector": spec.detector,
        "ensemble": spec.ensemble,
    });
    // serde_json's Map is ordered by key: the encoding is canonical.
    fnv1a(kind.to_string().as_bytes())
}

/// Fingerprint (16 hex digits) of a StreamPipeline spec, to tell a restart of the same spec
/// from an upgrade. Canonical: the spec's JSON encoding (struct fields in declaration order,
/// maps sorted).
pub fn spec_fingerprint(spec: &vigil_api::v1alpha1::StreamPipelineSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    format!("{:016x}", fnv1a(&json))
}

/// 64-bit FNV-1a: stable across builds and platforms (unlike `std`'s hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Snapshot<'_> {
    /// Decodes a snapshot written by [`Engine::write_snapshot`] of this or an older version.
    ///
    /// # Errors
    /// [`SnapshotError`] when the bytes are not a snapshot this build reads.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot<'static>, SnapshotError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(SnapshotError::NotASnapshot)?;
        let (version, body) = rest
            .split_at_checked(4)
            .ok_or(SnapshotError::NotASnapshot)?;
        let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
        if version > FORMAT_VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        let body = zstd::stream::decode_all(body).map_err(SnapshotError::Decompress)?;
        postcard::from_bytes::<Snapshot<'_>>(&body)
            .map(Snapshot::into_owned)
            .map_err(SnapshotError::Decode)
    }

    fn into_owned(self) -> Snapshot<'static> {
        Snapshot {
            pipeline: self.pipeline,
            fields: self.fields,
            tiers: self.tiers,
            rules: self.rules,
            partitions: self.partitions,
            keys: self
                .keys
                .into_iter()
                .map(|k| KeyEntry {
                    key: Cow::Owned(k.key.into_owned()),
                    partition: k.partition,
                    windows: Cow::Owned(k.windows.into_owned()),
                    rules: k
                        .rules
                        .into_iter()
                        .map(|(i, r)| (i, Cow::Owned(r.into_owned())))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// A snapshot encoded but not yet compressed (see [`Engine::encode_snapshot`]).
#[derive(Debug)]
pub struct Encoded(Vec<u8>);

impl Encoded {
    /// The snapshot's bytes: [`MAGIC`], [`FORMAT_VERSION`], the zstd frame of the body.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] from the compressor.
    pub fn finish(self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::with_capacity(self.0.len() / 4 + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let mut z = zstd::stream::Encoder::new(out, ZSTD_LEVEL).map_err(SnapshotError::Io)?;
        std::io::Write::write_all(&mut z, &self.0).map_err(SnapshotError::Io)?;
        z.finish().map_err(SnapshotError::Io)
    }

    /// Bytes of the uncompressed body.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the body is empty (never, for an encoded snapshot).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What [`Engine::write_snapshot`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    /// Keys written.
    pub keys: usize,
    /// Partitions written with the offset each resumes from.
    pub offsets: Vec<(i32, i64)>,
}

/// What a restore restored and what it reset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoreReport {
    /// Keys restored.
    pub keys: usize,
    /// Partitions restored with the offset each resumes from (records below it are skipped).
    pub offsets: Vec<(i32, i64)>,
    /// Tiers whose windows start empty, with why.
    pub tiers_reset: Vec<(String, String)>,
    /// Rules whose per-key state starts empty, with why (new rules are not listed).
    pub rules_reset: Vec<(String, String)>,
}

impl Engine {
    fn parts(&self) -> (Vec<Part>, Vec<Part>) {
        let tiers = self
            .cfg
            .tiers
            .iter()
            .map(|t| Part {
                name: t.name.clone(),
                fingerprint: tier_fingerprint(t, self.with_sketch),
            })
            .collect();
        let rules = self
            .rules
            .iter()
            .map(|r| Part {
                name: r.compiled.name.clone(),
                fingerprint: rule_fingerprint(&r.spec),
            })
            .collect();
        (tiers, rules)
    }

    /// Writes a snapshot of the partitions for which `include` holds (every key, watermark
    /// and offset of them) to `w`: [`MAGIC`], [`FORMAT_VERSION`], then the zstd-compressed
    /// postcard encoding. The same as [`Self::encode_snapshot`] then [`Encoded::finish`].
    ///
    /// # Errors
    /// [`SnapshotError::Io`] when `w` fails.
    pub fn write_snapshot(
        &self,
        include: impl Fn(i32) -> bool,
        mut w: impl std::io::Write,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let (encoded, info) = self.encode_snapshot(include)?;
        w.write_all(&encoded.finish()?).map_err(SnapshotError::Io)?;
        Ok(info)
    }

    /// Encodes a snapshot of the partitions for which `include` holds, uncompressed: the part
    /// that needs the engine. [`Encoded::finish`] (compression, most of the CPU time) can run
    /// on another thread while the engine goes on.
    ///
    /// # Errors
    /// [`SnapshotError::Encode`].
    pub fn encode_snapshot(
        &self,
        include: impl Fn(i32) -> bool,
    ) -> Result<(Encoded, SnapshotInfo), SnapshotError> {
        let (tiers, rules) = self.parts();
        let partitions: Vec<PartitionProgress> = self
            .partitions
            .iter()
            .filter(|(id, _)| include(**id))
            .filter_map(|(&partition, p)| {
                let next_offset = p
                    .next_offset
                    .max((p.replay_floor != i64::MIN).then_some(p.replay_floor))?;
                Some(PartitionProgress {
                    partition,
                    next_offset,
                    max_event_time: p.max_event_time,
                    watermarks: p.tiers.iter().map(|t| t.watermark).collect(),
                })
            })
            .collect();
        let keys: Vec<KeyEntry<'_>> = self
            .keys
            .iter()
            .filter(|k| include(k.partition))
            .map(|k| KeyEntry {
                key: Cow::Borrowed(&k.name),
                partition: k.partition,
                windows: Cow::Borrowed(&k.windows),
                rules: k
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !r.is_empty())
                    .map(|(i, r)| (i as u32, Cow::Borrowed(r)))
                    .collect(),
            })
            .collect();
        let info = SnapshotInfo {
            keys: keys.len(),
            offsets: partitions
                .iter()
                .map(|p| (p.partition, p.next_offset))
                .collect(),
        };
        let snap = Snapshot {
            pipeline: self.cfg.name.clone(),
            fields: (0..self.table.len() as u16)
                .map(|i| self.table.name(i).to_string())
                .collect(),
            tiers,
            rules,
            partitions,
            keys,
        };
        let body = postcard::to_stdvec(&snap).map_err(SnapshotError::Encode)?;
        Ok((Encoded(body), info))
    }

    /// Restores the partitions of `snap` that `select` maps to an engine partition (it returns
    /// the target id, or `None` to leave one out): their keys' windows and rule state, their
    /// watermarks, and the offset each resumes from. Records of a restored partition below
    /// that offset are skipped (counted in [`super::Counters::replay_skipped`]): a consumer
    /// that resumes from an older committed offset does not count them twice. Existing state
    /// of a restored key is replaced. Timers are rebuilt from the panes. `now_ms` starts the
    /// restored partitions' idleness clock.
    /// The restored keys' state is moved out of `snap` (it is left with those entries empty;
    /// restoring other partitions from it still works).
    pub fn restore(
        &mut self,
        snap: &mut Snapshot<'_>,
        select: impl Fn(i32) -> Option<i32>,
        now_ms: i64,
    ) -> RestoreReport {
        self.restore_with(snap, &select, |p, _| select(p), now_ms)
    }

    /// [`Self::restore`] with keys placed one by one: `partitions` picks the snapshot
    /// partitions whose progress (offset, watermarks) replaces that of an engine partition, as
    /// `select` does there; `keys` maps each key (its snapshot partition and name) to the
    /// engine partition it joins, which must be held (restored by `partitions` or assigned):
    /// how the keys of a partition follow a partition count change. A key the target already
    /// holds outside a restored partition is left as it is.
    pub fn restore_with(
        &mut self,
        snap: &mut Snapshot<'_>,
        partitions: impl Fn(i32) -> Option<i32>,
        keys: impl Fn(i32, &str) -> Option<i32>,
        now_ms: i64,
    ) -> RestoreReport {
        let mut report = RestoreReport::default();
        let (tiers, rules) = self.parts();
        // Engine tier -> snapshot tier.
        let tier_map: Vec<Option<usize>> = tiers
            .iter()
            .map(|t| {
                let found = snap.tiers.iter().position(|s| s.name == t.name);
                match found {
                    Some(j) if snap.tiers[j].fingerprint == t.fingerprint => Some(j),
                    Some(_) => {
                        report.tiers_reset.push((
                            t.name.clone(),
                            "its size, slide or quantile sketches changed".into(),
                        ));
                        None
                    }
                    None => None,
                }
            })
            .collect();
        // Snapshot rule -> engine rule.
        let mut rule_map: Vec<Option<usize>> = vec![None; snap.rules.len()];
        for (i, r) in rules.iter().enumerate() {
            match snap.rules.iter().position(|s| s.name == r.name) {
                Some(j) if snap.rules[j].fingerprint == r.fingerprint => rule_map[j] = Some(i),
                Some(_) => report.rules_reset.push((
                    r.name.clone(),
                    "its window or its settings changed, so its saved state no longer fits".into(),
                )),
                None => {}
            }
        }
        // A rule of the snapshot the pipeline no longer has: its state is dropped.
        // Snapshot field id -> engine field id.
        let field_map: Vec<Option<u16>> = snap
            .fields
            .iter()
            .map(|f| self.table.get(f).or_else(|| self.table.intern(f)))
            .collect();
        let n_tiers = self.cfg.tiers.len();
        for p in &snap.partitions {
            let Some(target) = partitions(p.partition) else {
                continue;
            };
            self.keys.remove_partition(target);
            let mut st = PartitionState::new(n_tiers, now_ms);
            st.max_event_time = p.max_event_time;
            st.next_offset = Some(p.next_offset);
            st.replay_floor = p.next_offset;
            for (i, m) in tier_map.iter().enumerate() {
                if let Some(j) = m
                    && let Some(wm) = p.watermarks.get(*j)
                {
                    st.tiers[i].watermark = *wm;
                }
            }
            self.partitions.insert(target, st);
            report.offsets.push((target, p.next_offset));
        }
        let n_rules = self.rules.len();
        let identity_fields = field_map
            .iter()
            .enumerate()
            .all(|(i, m)| *m == Some(i as u16));
        let partition_times: Vec<(i32, Option<i64>)> = snap
            .partitions
            .iter()
            .map(|p| (p.partition, p.max_event_time))
            .collect();
        let restored: Vec<i32> = report.offsets.iter().map(|o| o.0).collect();
        for k in &mut snap.keys {
            let Some(target) = keys(k.partition, &k.key) else {
                continue;
            };
            if !self.partitions.contains_key(&target) {
                continue; // a key whose partition was not in the snapshot's list
            }
            if !restored.contains(&target) && self.keys.get(target, &k.key).is_some() {
                continue;
            }
            let mut saved: Vec<Option<KeyWindows>> = std::mem::take(&mut k.windows)
                .into_owned()
                .into_iter()
                .map(Some)
                .collect();
            let mut windows: super::keys::TierWindows = tier_map
                .iter()
                .map(|m| {
                    m.and_then(|j| saved.get_mut(j).and_then(Option::take))
                        .unwrap_or_else(KeyWindows::new)
                })
                .collect();
            if !identity_fields {
                for w in &mut windows {
                    w.remap_fields(&field_map, self.with_sketch);
                }
            }
            let mut rule_states: Vec<RuleState> =
                (0..n_rules).map(|_| RuleState::default()).collect();
            for (j, r) in std::mem::take(&mut k.rules) {
                if let Some(Some(i)) = rule_map.get(j as usize) {
                    rule_states[*i] = r.into_owned();
                }
            }
            let name: Box<str> = k.key.as_ref().into();
            let id = self.keys.id(target, &name, || KeyState {
                name: name.clone(),
                partition: target,
                windows: Default::default(),
                rules: Default::default(),
                last_event: i64::MIN,
                timers: 0,
                expire_at: None,
                expired: false,
            });
            let ks = self.keys.get_mut(id).expect("just created");
            ks.windows = windows;
            ks.rules = rule_states;
            // Snapshots keep no per-key event time: idleness counts from the partition's.
            let part_time = partition_times
                .iter()
                .find(|p| p.0 == k.partition)
                .and_then(|p| p.1)
                .unwrap_or(i64::MIN);
            ks.last_event = part_time;
            ks.timers = 0;
            ks.expire_at = None;
            // Timers: every window still to fire, and the cleanup of fired ones within
            // allowed lateness.
            let part = self.partitions.get_mut(&target).expect("checked above");
            let mut registered = 0;
            for (tier, tc) in self.cfg.tiers.iter().enumerate() {
                let w = &ks.windows[tier];
                for end in w.pending_ends(tc) {
                    part.tiers[tier].timers.register(end, id, TimerKind::Fire);
                    registered += 1;
                }
                if tc.allowed_lateness_ms > 0 && w.pane_count() > 0 && w.last_fired_end > i64::MIN {
                    part.tiers[tier].timers.register(
                        w.last_fired_end.saturating_add(tc.allowed_lateness_ms),
                        id,
                        TimerKind::Cleanup,
                    );
                    registered += 1;
                }
            }
            if part_time > i64::MIN {
                let at = part_time.saturating_add(self.cfg.key_idle_timeout_ms);
                part.tiers[0].timers.register(at, id, TimerKind::Expire);
                ks.expire_at = Some(at);
                registered += 1;
            }
            ks.timers = registered;
            report.keys += 1;
        }
        report
    }

    /// Drops the keys of `partition` that `keep` rejects, with their windows, rule state and
    /// timers (a partition count change moved them to another partition, whose owner restores
    /// them from a checkpoint). The partition's progress and the kept keys are untouched
    /// (their timers are rebuilt from the panes, as in a restore). Returns how many keys were
    /// dropped.
    ///
    /// # Errors
    /// [`SnapshotError`] when the partition's state does not round-trip (nothing is dropped).
    pub fn retain_keys(
        &mut self,
        partition: i32,
        keep: impl Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<usize, SnapshotError> {
        let (encoded, info) = self.encode_snapshot(|p| p == partition)?;
        if info.offsets.is_empty() {
            return Ok(0); // nothing read yet: no keys
        }
        let mut snap = postcard::from_bytes::<Snapshot<'_>>(&encoded.0)
            .map(Snapshot::into_owned)
            .map_err(SnapshotError::Decode)?;
        let report = self.restore_with(
            &mut snap,
            |p| (p == partition).then_some(p),
            |p, k| (p == partition && keep(k)).then_some(p),
            now_ms,
        );
        Ok(info.keys - report.keys)
    }
}
