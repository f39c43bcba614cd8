//! Both halves of entity groups (`spec.groups`, see [`crate::groups`]) inside the engine:
//! - key stage: [`Engine::send_partials`] turns a key's fired window into one
//!   [`Partial`] per grouping, and [`Engine::group_progress`] reports each source partition's
//!   watermarks;
//! - group stage ([`Stage::Groups`]): [`Engine::process_group_record`] keeps each open group
//!   window's contributions by member key and fires the group windows every source partition's
//!   watermark has passed, through the same rule runner as key windows
//!   ([`Engine::evaluate_window`]).
//!
//! A group window is pending from its first contribution until it fired and its allowed
//! lateness passed the group watermark (the minimum over all source partitions' reported
//! watermarks; nothing fires before every source partition reported). A contribution to a
//! window already purged is late: counted and dead-lettered with reason `late`.

use std::collections::{BTreeMap, HashMap};

use super::{DeadLetterReason, Engine, Outputs, RawRecord};
use crate::features::{Agg, FeatureValues};
use crate::groups::{GroupRecord, KEYS_FIELD, Partial, Progress, Stage};
use crate::window::{KeyId, Watermark};

/// One open group window.
#[derive(Debug, Default)]
struct PendingWindow {
    /// Each member key's aggregates by field id (its latest contribution).
    members: BTreeMap<String, Vec<(u16, Agg)>>,
    /// Fired at least once.
    fired: bool,
    /// Group topic partition its contributions come from.
    partition: i32,
    /// Smallest group topic offset of a contribution (for safe commits).
    first_offset: i64,
}

/// The group stage's state.
#[derive(Debug, Default)]
pub(super) struct GroupStage {
    /// Open windows by (tier, window start, group).
    pending: BTreeMap<(usize, i64, String), PendingWindow>,
    /// Reported watermarks per source partition, per tier (monotonic).
    progress: HashMap<i32, Vec<Watermark>>,
    /// Every source partition, as reported (the union of the reports).
    sources: Vec<i32>,
}

impl GroupStage {
    /// The group watermark of `tier`: the lowest reported over every source partition;
    /// `Initial` until every one reported.
    fn watermark(&self, tier: usize) -> Watermark {
        if self.sources.is_empty() {
            return Watermark::Initial;
        }
        let mut wm = Watermark::EndOfInput;
        for p in &self.sources {
            match self.progress.get(p).and_then(|w| w.get(tier)) {
                Some(w) => wm = wm.min(*w),
                None => return Watermark::Initial,
            }
        }
        wm
    }

    /// Open windows.
    pub fn pending_windows(&self) -> usize {
        self.pending.len()
    }
}

impl Engine {
    /// Key stage: one [`Partial`] per grouping of a key's fired window, with the window's
    /// merged aggregates (`merged`, by field id).
    pub(super) fn send_partials(
        &mut self,
        tier: usize,
        key_id: KeyId,
        start: i64,
        update: bool,
        merged: &[Agg],
        out: &mut Outputs,
    ) {
        let (Some(groups), Some(ks)) = (&self.cfg.groups, self.keys.get_by_id(key_id)) else {
            return;
        };
        let attributes = self.reference.as_ref().map(|r| r.lookup(&ks.name));
        let aggs: Vec<(String, Agg)> = merged
            .iter()
            .enumerate()
            .filter(|(_, a)| a.count() > 0)
            .map(|(i, a)| (self.table.name(i as u16).to_string(), a.clone()))
            .collect();
        for g in &groups.by {
            let group = g.group_of(attributes.as_deref());
            let record = GroupRecord::Partial(Partial {
                group: group.clone(),
                member: ks.name.to_string(),
                tier: self.cfg.tiers[tier].name.clone(),
                start,
                aggs: aggs.clone(),
                update,
            });
            out.group_records.push((Some(group), record.encode()));
        }
    }

    /// Key stage: the [`Progress`] of each partition this engine holds (their watermarks per
    /// tier), as group topic record values, for every partition of the group topic.
    /// `sources` are every source partition's engine partition ids.
    pub fn group_progress(&self, sources: &[i32]) -> Vec<Vec<u8>> {
        if self.cfg.groups.is_none() || self.cfg.stage != Stage::Keys {
            return Vec::new();
        }
        let mut ids: Vec<i32> = self.partitions.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|p| {
                GroupRecord::Progress(Progress {
                    partition: p,
                    sources: sources.to_vec(),
                    watermarks: self
                        .cfg
                        .tiers
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (t.name.clone(), self.partition_watermark(p, i)))
                        .collect(),
                })
                .encode()
            })
            .collect()
    }

    /// Group stage: applies one record of the group topic.
    pub(super) fn process_group_record(
        &mut self,
        rec: &RawRecord<'_>,
        now_ms: i64,
        out: &mut Outputs,
    ) -> Option<i64> {
        let record = match GroupRecord::decode(rec.payload) {
            Ok(r) => r,
            Err(e) => {
                self.counters.decode_errors += 1;
                let reason = DeadLetterReason::Decode(crate::decode::DecodeError::Group(e));
                self.dead_letter(rec, reason, out);
                return None;
            }
        };
        match record {
            GroupRecord::Progress(p) => {
                let stage = self.group_stage.get_or_insert_with(Default::default);
                for s in &p.sources {
                    if !stage.sources.contains(s) {
                        stage.sources.push(*s);
                    }
                }
                let tiers = self.cfg.tiers.len();
                let marks = stage
                    .progress
                    .entry(p.partition)
                    .or_insert_with(|| vec![Watermark::Initial; tiers]);
                for (name, wm) in p.watermarks {
                    if let Some(i) = self.cfg.tier(&name) {
                        marks[i] = marks[i].max(wm);
                    }
                }
                self.fire_groups(now_ms, out);
                None
            }
            GroupRecord::Partial(p) => self.apply_partial(rec, p, now_ms, out),
        }
    }

    fn apply_partial(
        &mut self,
        rec: &RawRecord<'_>,
        p: Partial,
        now_ms: i64,
        out: &mut Outputs,
    ) -> Option<i64> {
        let Some(tier) = self.cfg.tier(&p.tier) else {
            self.counters.decode_errors += 1;
            let reason = DeadLetterReason::Decode(crate::decode::DecodeError::Group(format!(
                "window `{}` is not one of the pipeline's",
                p.tier
            )));
            self.dead_letter(rec, reason, out);
            return None;
        };
        let tc = &self.cfg.tiers[tier];
        let end = p.start + tc.size_ms;
        let stage = self.group_stage.get_or_insert_with(Default::default);
        let wm = stage.watermark(tier);
        if end.saturating_add(tc.allowed_lateness_ms) <= wm.as_ms()
            && !stage
                .pending
                .contains_key(&(tier, p.start, p.group.clone()))
        {
            self.counters.late_dropped += 1;
            let reason = DeadLetterReason::Late {
                event_time_ms: end - 1,
                watermark_ms: wm.as_ms(),
            };
            self.dead_letter(rec, reason, out);
            return None;
        }
        let mut aggs: Vec<(u16, Agg)> = Vec::with_capacity(p.aggs.len());
        for (name, a) in p.aggs {
            // A field the table does not know (a fixed layout changed between the stages'
            // builds) is left out.
            if let Some(id) = self.table.get(&name).or_else(|| self.table.intern(&name)) {
                aggs.push((id, a));
            }
        }
        let stage = self.group_stage.get_or_insert_with(Default::default);
        let w = stage
            .pending
            .entry((tier, p.start, p.group.clone()))
            .or_insert_with(|| PendingWindow {
                partition: rec.partition,
                first_offset: rec.offset,
                ..Default::default()
            });
        w.first_offset = w.first_offset.min(rec.offset);
        w.members.insert(p.member, aggs);
        if w.fired {
            // A late update of a fired window (within allowed lateness): fire it again.
            self.counters.late_updates += 1;
            self.fire_group(tier, p.start, &p.group, true, now_ms, out);
        } else if end <= wm.as_ms() {
            // The first contribution of a window the group watermark already passed.
            self.fire_groups(now_ms, out);
        }
        Some(end - 1)
    }

    /// Group stage: fires every pending group window the group watermark has passed, in end
    /// order, and drops those past their allowed lateness.
    pub(super) fn fire_groups(&mut self, now_ms: i64, out: &mut Outputs) {
        let Some(stage) = &self.group_stage else {
            return;
        };
        let mut due: Vec<(i64, usize, i64, String)> = Vec::new();
        let mut done: Vec<(usize, i64, String)> = Vec::new();
        for ((tier, start, group), w) in &stage.pending {
            let tc = &self.cfg.tiers[*tier];
            let wm = stage.watermark(*tier).as_ms();
            let end = start + tc.size_ms;
            if !w.fired && end <= wm {
                due.push((end, *tier, *start, group.clone()));
            }
            if end.saturating_add(tc.allowed_lateness_ms) <= wm {
                done.push((*tier, *start, group.clone()));
            }
        }
        due.sort();
        for (_, tier, start, group) in due {
            self.counters.windows_fired += 1;
            self.fire_group(tier, start, &group, false, now_ms, out);
        }
        if let Some(stage) = &mut self.group_stage {
            for k in done {
                stage.pending.remove(&k);
            }
            // Tier watermarks of the group stage, for telemetry.
            let marks: Vec<Watermark> = (0..self.cfg.tiers.len())
                .map(|t| stage.watermark(t))
                .collect();
            for p in self.partitions.values_mut() {
                for (t, wm) in p.tiers.iter_mut().zip(&marks) {
                    t.watermark = *wm;
                }
            }
        }
    }

    /// Fires one group window: merges the members' aggregates, counts the members, evaluates
    /// the composite KPIs and runs the rules.
    fn fire_group(
        &mut self,
        tier: usize,
        start: i64,
        group: &str,
        update: bool,
        now_ms: i64,
        out: &mut Outputs,
    ) {
        let size = self.cfg.tiers[tier].size_ms;
        let Some(w) = self
            .group_stage
            .as_mut()
            .and_then(|s| s.pending.get_mut(&(tier, start, group.to_string())))
        else {
            return;
        };
        w.fired = true;
        let partition = w.partition;
        let mut merged: Vec<Option<Agg>> = Vec::new();
        for aggs in w.members.values() {
            for (id, a) in aggs {
                let i = *id as usize;
                if merged.len() <= i {
                    merged.resize(i + 1, None);
                }
                match &mut merged[i] {
                    Some(m) => m.merge(a),
                    slot @ None => *slot = Some(a.clone()),
                }
            }
        }
        let mut keys = Agg::new(false);
        for _ in 0..w.members.len() {
            keys.add(start, 1.0);
        }
        let keys_id = self.table.get(KEYS_FIELD);
        let mut fields: Vec<(u16, FeatureValues)> = merged
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().map(|a| (i as u16, a.features(size))))
            .filter(|(i, _)| Some(*i) != keys_id)
            .collect();
        if let Some(k) = keys_id {
            fields.push((k, keys.features(size)));
        }
        let key_id = self.key_id(partition, group);
        let mut kpis = Vec::new();
        if !self.kpis.is_empty() {
            let view = crate::rules::WindowView {
                key: group,
                start,
                end: start + size,
                fields: &fields,
                table: &self.table,
                attributes: None,
                kpis: &[],
            };
            crate::rules::expression::eval_kpis(&self.kpis, &view, &self.cfg.features, &mut kpis);
        }
        self.evaluate_window((tier, key_id, start, update, now_ms), &fields, &kpis, out);
    }

    /// Group stage: per group topic partition, the smallest offset of a contribution to a
    /// pending window (below it everything is done), for committable offsets.
    pub(super) fn group_min_offsets(&self) -> Vec<(i32, i64)> {
        let mut min: HashMap<i32, i64> = HashMap::new();
        if let Some(s) = &self.group_stage {
            for w in s.pending.values() {
                let e = min.entry(w.partition).or_insert(w.first_offset);
                *e = (*e).min(w.first_offset);
            }
        }
        min.into_iter().collect()
    }

    /// Group stage: drops the pending windows of revoked group topic partitions.
    pub(super) fn revoke_group_partitions(&mut self, partitions: &[i32]) {
        if let Some(s) = &mut self.group_stage {
            s.pending.retain(|_, w| !partitions.contains(&w.partition));
        }
    }

    /// Group stage: open group windows (0 in the key stage).
    pub fn pending_group_windows(&self) -> usize {
        self.group_stage
            .as_ref()
            .map_or(0, GroupStage::pending_windows)
    }

    /// Group stage, end of input: every source partition's watermark goes to the end.
    pub(super) fn flush_groups(&mut self, now_ms: i64, out: &mut Outputs) {
        if let Some(s) = &mut self.group_stage {
            for marks in s.progress.values_mut() {
                marks.fill(Watermark::EndOfInput);
            }
            for p in &s.sources {
                s.progress
                    .entry(*p)
                    .or_insert_with(|| vec![Watermark::EndOfInput; self.cfg.tiers.len()]);
            }
        }
        self.fire_groups(now_ms, out);
    }
}
