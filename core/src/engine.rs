//! The detection engine of one pipeline: record bytes in, alerts, window results and dead
//! letters out. Pure and single-threaded: no I/O, no clock (processing time is passed in as
//! `now_ms`), so `vigil run` (Kafka), `vigil score` (a CSV) and the tests drive the same code.
//!
//! State is kept per (partition, key): a key's windows only see the events of one partition,
//! which holds when producers key messages by entity, as Kafka Streams and Flink assume too.
//! Watermarks and timers are per partition as well ([`partitions`]), and the whole state can be
//! written to and restored from a key-addressed [`snapshot`] (checkpoints and savepoints).

use std::collections::HashMap;

use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, DetectionRuleSpec, Feature};

mod alerts;
mod dead_letters;
mod expiry;
mod firing;
mod groups;
mod io;
mod keys;
mod partitions;
mod prefetch;
mod rules;
pub mod snapshot;
mod traces;

use crate::TraceParent;
use crate::config::{FieldTable, InvalidSpec, PipelineConfig};
use crate::decode::Decoder;
use crate::rules::{CompiledRule, RuleError, RuleSet, RuleState};
pub use crate::window::Watermark;
use crate::window::{self, KeyId, KeyWindows, TimerKind};
pub use dead_letters::{DeadLetter, DeadLetterReason, DeadLetterTally};
pub use io::{Counters, EngineOptions, FiredTrace, KeyPlacement, Outputs, RawRecord, WindowResult};
use keys::{KeyState, KeyTable};
use partitions::{PartitionState, Partitions};

struct LoadedRule {
    compiled: CompiledRule,
    spec: DetectionRuleSpec,
}

/// The detection engine of one pipeline.
pub struct Engine {
    cfg: PipelineConfig,
    decoder: Decoder,
    table: FieldTable,
    rules: Vec<LoadedRule>,
    keys: KeyTable,
    partitions: Partitions,
    with_sketch: bool,
    values: Vec<(u16, f64)>,
    counters: Counters,
    dead_letter_reasons: DeadLetterTally,
    opts: EngineOptions,
    /// Some rule scores events one by one (detector or ensemble).
    per_event_rules: bool,
    /// Per-rule scores of the current event (reused).
    event_rule_scores: Vec<Option<f64>>,
    /// The trace of the record being processed ([`Engine::process_traced`]).
    current_trace: Option<TraceParent>,
    /// Traced events held in open windows.
    traces: traces::Traces,
    /// Buffers of a window firing (merged aggregates, features per field), reused.
    window_buffers: (
        Vec<crate::features::Agg>,
        Vec<(u16, crate::features::FeatureValues)>,
    ),
    /// Partitions whose keys that moved away are dead-lettered ([`Self::set_key_placement`]).
    placements: Vec<(i32, KeyPlacement)>,
    /// Reference data of the keys (`spec.enrichment`), for templates and CEL.
    reference: Option<std::sync::Arc<crate::enrichment::ReferenceData>>,
    /// The group stage's open windows and source progress ([`crate::groups::Stage::Groups`]).
    group_stage: Option<groups::GroupStage>,
    /// Composite KPIs of group windows (`spec.groups.kpis`), compiled.
    kpis: Vec<(String, cel::Program)>,
    /// Partitions whose watermark moves in [`Self::advance`] (reused).
    watermark_moves: Vec<(i32, Watermark)>,
}

impl Engine {
    /// Builds an engine for a validated pipeline and its rules. Invalid rules are returned
    /// and left out; `models` are the AnomalyModels model rules may refer to.
    pub fn new(
        cfg: PipelineConfig,
        rules: &[&DetectionRule],
        models: &[&AnomalyModel],
        opts: EngineOptions,
    ) -> (Self, Vec<RuleError>) {
        let mut table = FieldTable::for_layout(&cfg.layout);
        let mut kpis = Vec::new();
        if cfg.stage == crate::groups::Stage::Groups {
            table.intern_always(crate::groups::KEYS_FIELD);
            for (name, src) in cfg.groups.iter().flat_map(|g| &g.kpis) {
                // Validated with the pipeline (config::groups_config).
                if let Ok(p) = crate::rules::expression::check_kpi("spec.groups.kpis", src) {
                    kpis.push((name.clone(), p));
                }
            }
        }
        let mut engine = Self {
            decoder: Decoder::new(&cfg),
            table,
            rules: Vec::new(),
            keys: KeyTable::default(),
            partitions: Partitions::new(),
            with_sketch: cfg.needs_sketch(),
            values: Vec::with_capacity(8),
            counters: Counters::default(),
            dead_letter_reasons: DeadLetterTally::default(),
            opts,
            per_event_rules: false,
            event_rule_scores: Vec::new(),
            current_trace: None,
            traces: traces::Traces::new(),
            window_buffers: (Vec::new(), Vec::new()),
            placements: Vec::new(),
            reference: None,
            group_stage: None,
            kpis,
            watermark_moves: Vec::new(),
            cfg,
        };
        let errors = engine.replace_rules(rules, models);
        (engine, errors)
    }

    /// Builds an engine from resources.
    ///
    /// # Errors
    /// The pipeline's [`InvalidSpec`]; invalid rules are returned in the `Ok` value.
    pub fn from_resources(
        pipeline: &vigil_api::v1alpha1::StreamPipeline,
        rules: &[&DetectionRule],
        models: &[&AnomalyModel],
        opts: EngineOptions,
    ) -> Result<(Self, Vec<RuleError>), InvalidSpec> {
        Ok(Self::new(
            PipelineConfig::from_resource(pipeline)?,
            rules,
            models,
            opts,
        ))
    }

    /// Replaces the rules without touching window state. A rule whose name and spec are
    /// unchanged keeps its per-key state (`for` timers, baselines, firing alerts); a changed or
    /// new rule starts fresh. Returns the rules that did not compile (they are left out).
    pub fn replace_rules(
        &mut self,
        rules: &[&DetectionRule],
        models: &[&AnomalyModel],
    ) -> Vec<RuleError> {
        // Each stage runs its own rules: group rules (`spec.group`) in the group stage. The key
        // stage also checks the group rules, so a pipeline's rules are all checked where it
        // loads them (`vigil run`, `vigil test rules`, the operator).
        let groups_stage = self.cfg.stage == crate::groups::Stage::Groups;
        let (mine, others): (Vec<&DetectionRule>, Vec<&DetectionRule>) = rules
            .iter()
            .partition(|r| r.spec.group.is_some() == groups_stage);
        let (set, mut errors) = RuleSet::compile(&mine, &self.cfg, &mut self.table, models);
        if !groups_stage && !others.is_empty() {
            let mut table = self.table.clone();
            errors.extend(RuleSet::compile(&others, &self.cfg, &mut table, models).1);
        }
        let rules = &mine[..];
        let specs: HashMap<&str, &DetectionRuleSpec> = rules
            .iter()
            .filter_map(|r| r.metadata.name.as_deref().map(|n| (n, &r.spec)))
            .collect();
        let new: Vec<LoadedRule> = set
            .rules
            .into_iter()
            .map(|compiled| {
                let spec = specs
                    .get(compiled.name.as_str())
                    .map(|s| (*s).clone())
                    .expect("compiled rules come from the input");
                LoadedRule { compiled, spec }
            })
            .collect();
        // Old index of each surviving rule, or None for a fresh one.
        let carry: Vec<Option<usize>> = new
            .iter()
            .map(|n| {
                self.rules
                    .iter()
                    .position(|o| o.compiled.name == n.compiled.name && o.spec == n.spec)
            })
            .collect();
        for ks in self.keys.iter_mut() {
            let mut old = std::mem::take(&mut ks.rules);
            ks.rules = carry
                .iter()
                .map(|c| c.map(|i| std::mem::take(&mut old[i])).unwrap_or_default())
                .collect();
        }
        self.rules = new;
        self.per_event_rules = self.rules.iter().any(|r| r.compiled.is_per_event());
        errors
    }

    /// Applies an operator's verdict on a rollout to the model rules of `model` whose
    /// contract routes to `candidate`: `promote` scores every key with the candidate (it
    /// becomes the contract's version), otherwise every key goes back to the stable
    /// revision. Rule state is kept. Returns the rules changed (0: no such rollout here, e.g.
    /// the rules file already says the same).
    pub fn decide_rollout(&mut self, model: &str, candidate: &str, promote: bool) -> usize {
        let mut changed = 0;
        for r in &mut self.rules {
            let crate::rules::RuleKind::Model(m) = &mut r.compiled.kind else {
                continue;
            };
            let c = &m.contract;
            if c.model != model
                || c.rollout
                    .as_ref()
                    .is_none_or(|ro| ro.candidate != candidate)
            {
                continue;
            }
            let mut next = (**c).clone();
            next.rollout = None;
            if promote {
                next.version = candidate.to_string();
            }
            m.contract = std::sync::Arc::new(next);
            changed += 1;
        }
        changed
    }

    /// The pipeline configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// Names of the rules running.
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules
            .iter()
            .map(|r| r.compiled.name.as_str())
            .collect()
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Dead letters so far, by reason.
    pub fn dead_letter_reasons(&self) -> &DeadLetterTally {
        &self.dead_letter_reasons
    }

    /// Watermark of each tier: the lowest over the partitions that have one (the partition
    /// furthest behind), `Initial` before any.
    pub fn watermarks(&self) -> Vec<(&str, Watermark)> {
        self.cfg
            .tiers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let wm = self
                    .partitions
                    .values()
                    .map(|p| p.tiers[i].watermark)
                    .filter(|w| *w != Watermark::Initial)
                    .min()
                    .unwrap_or_default();
                (c.name.as_str(), wm)
            })
            .collect()
    }

    /// Watermark of tier `tier` in partition `partition`.
    pub fn partition_watermark(&self, partition: i32, tier: usize) -> Watermark {
        self.partitions
            .get(&partition)
            .and_then(|p| p.tiers.get(tier))
            .map(|t| t.watermark)
            .unwrap_or_default()
    }

    /// Number of live keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Approximate bytes of window and rule state per live key.
    pub fn state_bytes_per_key(&self) -> usize {
        self.keys.state_bytes_per_key()
    }

    /// [`Self::process`] for a record that came with a sampled trace: the windows it lands in
    /// carry `trace` to the model inputs and alerts they produce when they fire (the newest
    /// traced event of a window wins), and each such firing is listed in
    /// [`Outputs::fired_traces`].
    pub fn process_traced(
        &mut self,
        rec: &RawRecord<'_>,
        trace: TraceParent,
        now_ms: i64,
        out: &mut Outputs,
    ) -> Option<i64> {
        self.current_trace = Some(trace);
        let r = self.process(rec, now_ms, out);
        self.current_trace = None;
        r
    }

    /// Processes one record at processing time `now_ms`, appending what it produced to `out`.
    /// Returns the record's event time (epoch ms), or `None` when it was dead-lettered before
    /// reaching a window (it could not be decoded, or its event time is too far ahead of
    /// `now_ms`).
    pub fn process(&mut self, rec: &RawRecord<'_>, now_ms: i64, out: &mut Outputs) -> Option<i64> {
        let tiers = self.cfg.tiers.len();
        if self.cfg.stage == crate::groups::Stage::Groups {
            let part = self
                .partitions
                .entry(rec.partition)
                .or_insert_with(|| PartitionState::new(tiers, now_ms));
            self.counters.records += 1;
            part.next_offset = Some(
                part.next_offset
                    .map_or(rec.offset + 1, |n| n.max(rec.offset + 1)),
            );
            part.last_active_ms = now_ms;
            return self.process_group_record(rec, now_ms, out);
        }
        let part = self
            .partitions
            .entry(rec.partition)
            .or_insert_with(|| PartitionState::new(tiers, now_ms));
        if rec.offset < part.replay_floor {
            self.counters.replay_skipped += 1;
            return None;
        }
        self.counters.records += 1;
        part.next_offset = Some(
            part.next_offset
                .map_or(rec.offset + 1, |n| n.max(rec.offset + 1)),
        );
        let mut values = std::mem::take(&mut self.values);
        let decoded = self
            .decoder
            .decode(rec.payload, rec.key, &mut self.table, &mut values);
        let event = match decoded {
            Ok(e) => e,
            Err(e) => {
                self.counters.decode_errors += 1;
                self.dead_letter(rec, DeadLetterReason::Decode(e), out);
                self.values = values;
                return None;
            }
        };
        let t = event.event_time_ms;
        if t.saturating_sub(now_ms) > self.cfg.max_future_skew_ms {
            self.counters.future_dropped += 1;
            let reason = DeadLetterReason::Future {
                event_time_ms: t,
                processing_time_ms: now_ms,
                max_skew_ms: self.cfg.max_future_skew_ms,
            };
            self.dead_letter(rec, reason, out);
            self.values = values;
            return None;
        }
        if !self.placements.is_empty()
            && let Some((_, pl)) = self.placements.iter().find(|(p, _)| *p == rec.partition)
        {
            let to = (pl.place)(event.key.as_bytes(), pl.partitions);
            if to != pl.partition {
                self.counters.moved_keys += 1;
                let reason = DeadLetterReason::Moved {
                    partition: to,
                    partitions: pl.partitions,
                };
                self.dead_letter(rec, reason, out);
                self.values = values;
                return None;
            }
        }
        // The key lookup only at the cap: the common path looks the key up once (key_id).
        if self.keys.len() >= self.cfg.max_keys
            && self.keys.get(rec.partition, &event.key).is_none()
        {
            self.counters.keys_refused += 1;
            let reason = DeadLetterReason::Keys {
                max_keys: self.cfg.max_keys,
            };
            self.dead_letter(rec, reason, out);
            self.values = values;
            return None;
        }
        let part = self
            .partitions
            .get_mut(&rec.partition)
            .expect("created above");
        part.max_event_time = Some(part.max_event_time.map_or(t, |m| m.max(t)));
        part.last_active_ms = now_ms;
        let key_id = self.key_id(rec.partition, &event.key);
        {
            let ks = self.keys.get_mut(key_id).expect("live key");
            ks.last_event = ks.last_event.max(t);
            ks.expired = false;
            if ks.expire_at.is_none() {
                let at = t.saturating_add(self.cfg.key_idle_timeout_ms);
                ks.expire_at = Some(at);
                ks.timers += 1;
                let part = self
                    .partitions
                    .get_mut(&rec.partition)
                    .expect("created above");
                part.tiers[0].timers.register(at, key_id, TimerKind::Expire);
            }
        }
        let mut applied = false;
        // Fired windows a late event updates; fired after the loop (rare, so no allocation
        // on the common path).
        let mut late_updates: Vec<(usize, i64)> = Vec::new();
        let part = self
            .partitions
            .get_mut(&rec.partition)
            .expect("created above");
        for (tier, tc) in self.cfg.tiers.iter().enumerate() {
            let watermark = part.tiers[tier].watermark;
            if window::is_late(tc, watermark, t) {
                continue;
            }
            let wm = watermark.as_ms();
            applied = true;
            let ks = self.keys.get_mut(key_id).expect("live key");
            let mut new_pane = false;
            for &(field, v) in &values {
                new_pane |= ks.windows[tier]
                    .add(tc, t, field, v, rec.offset, self.with_sketch)
                    .new_pane;
            }
            if let Some(trace) = &self.current_trace {
                traces::remember(&mut self.traces, key_id, &ks.name, tier, t, trace);
            }
            for start in window::window_starts(tc, t) {
                let end = start + tc.size_ms;
                if end > wm {
                    if new_pane {
                        part.tiers[tier]
                            .timers
                            .register(end, key_id, TimerKind::Fire);
                        ks.timers += 1;
                    }
                } else if end + tc.allowed_lateness_ms > wm {
                    late_updates.push((tier, start));
                }
            }
        }
        let watermark_ms = part
            .tiers
            .iter()
            .map(|t| t.watermark)
            .min()
            .unwrap_or_default()
            .as_ms();
        for (tier, start) in late_updates {
            self.counters.late_updates += 1;
            self.fire(tier, key_id, start, true, now_ms, out);
        }
        if !applied {
            self.counters.late_dropped += 1;
            self.dead_letter(
                rec,
                DeadLetterReason::Late {
                    event_time_ms: t,
                    watermark_ms,
                },
                out,
            );
        } else if self.opts.event_scores || self.per_event_rules {
            let s = self.event_score(key_id, t, &values);
            if self.opts.event_scores {
                out.event_scores.push(s);
            }
        }
        self.values = values;
        self.advance(now_ms, out);
        Some(t)
    }

    /// Advances each partition's watermarks at processing time `now_ms` (see [`partitions`]:
    /// idle partitions follow the others) and fires due windows. Call it periodically when no
    /// records arrive.
    pub fn advance(&mut self, now_ms: i64, out: &mut Outputs) {
        if self.cfg.stage == crate::groups::Stage::Groups {
            // Group windows follow the source partitions' reported watermarks.
            return;
        }
        for tier in 0..self.cfg.tiers.len() {
            // Called per record: the targets go in a reused buffer, and a partition without a
            // due timer costs no more than the watermark update.
            let mut moved = std::mem::take(&mut self.watermark_moves);
            partitions::targets_into(
                &self.partitions,
                tier,
                &self.cfg.tiers[tier],
                now_ms,
                &mut moved,
            );
            for &(partition, wm) in &moved {
                let Some(p) = self.partitions.get_mut(&partition) else {
                    continue;
                };
                p.tiers[tier].watermark = wm;
                if p.tiers[tier]
                    .timers
                    .next_at()
                    .is_some_and(|at| at <= wm.as_ms())
                {
                    self.fire_due(partition, tier, wm.as_ms(), now_ms, out);
                }
            }
            self.watermark_moves = moved;
        }
    }

    /// Fires every pending window, as if the watermark reached the end of time (end of a
    /// bounded input).
    pub fn flush(&mut self, now_ms: i64, out: &mut Outputs) {
        if self.cfg.stage == crate::groups::Stage::Groups {
            self.flush_groups(now_ms, out);
            return;
        }
        let ids: Vec<i32> = self.partitions.keys().copied().collect();
        for tier in 0..self.cfg.tiers.len() {
            for &partition in &ids {
                if let Some(p) = self.partitions.get_mut(&partition) {
                    p.tiers[tier].watermark = Watermark::EndOfInput;
                }
                self.fire_due(partition, tier, Watermark::EndOfInput.as_ms(), now_ms, out);
            }
        }
    }

    fn key_id(&mut self, partition: i32, key: &str) -> KeyId {
        let (tiers, rules) = (self.cfg.tiers.len(), self.rules.len());
        self.keys.id(partition, key, || KeyState {
            name: key.into(),
            partition,
            windows: (0..tiers).map(|_| KeyWindows::new()).collect(),
            rules: (0..rules).map(|_| RuleState::default()).collect(),
            last_event: i64::MIN,
            timers: 0,
            expire_at: None,
            expired: false,
        })
    }

    fn dead_letter(&mut self, rec: &RawRecord<'_>, reason: DeadLetterReason, out: &mut Outputs) {
        self.dead_letter_reasons.add(&reason);
        out.dead_letters.push(DeadLetter {
            partition: rec.partition,
            offset: rec.offset,
            reason,
            key: rec.key.map(<[u8]>::to_vec),
            payload: rec.payload.to_vec(),
        });
        if self.opts.event_scores {
            out.event_scores.push(0.0);
        }
    }

    /// Registers partitions assigned at `now_ms` (their idleness counts from then).
    pub fn assign_partitions(&mut self, partitions: &[i32], now_ms: i64) {
        let tiers = self.cfg.tiers.len();
        for p in partitions {
            self.partitions
                .entry(*p)
                .or_insert_with(|| PartitionState::new(tiers, now_ms));
        }
    }

    /// Gives the rules the keys' reference data (`spec.enrichment`): `attributes` in label and
    /// annotation templates and in CEL. Shared: a reload replaces its entries in place.
    pub fn set_reference(
        &mut self,
        reference: Option<std::sync::Arc<crate::enrichment::ReferenceData>>,
    ) {
        self.reference = reference;
    }

    /// From now on, events of `partition` whose key `placement` puts on another partition are
    /// dead-lettered ([`DeadLetterReason::Moved`]): their state was handed over when the topic's
    /// partition count grew. `None` stops that. Dropped with the partition on revocation.
    pub fn set_key_placement(&mut self, partition: i32, placement: Option<KeyPlacement>) {
        self.placements.retain(|(p, _)| *p != partition);
        if let Some(pl) = placement {
            self.placements.push((partition, pl));
        }
    }

    /// Drops the state of revoked partitions: their keys, watermarks and timers. Without
    /// checkpoints, their committed offsets never pass an event still held in an open window
    /// (see [`Self::committable_offsets`]), so the next owner rebuilds those windows by
    /// re-reading from the committed offset; with checkpoints it restores them.
    pub fn revoke_partitions(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.keys.remove_partition(*p);
            self.partitions.remove(p);
        }
        self.placements.retain(|(p, _)| !partitions.contains(p));
        self.revoke_group_partitions(partitions);
        let keys = &self.keys;
        self.traces
            .retain(|(id, _), _| keys.get_by_id(*id).is_some());
    }

    /// Per partition, one past the last record processed (or skipped as already restored):
    /// the offsets a checkpoint of the current state corresponds to.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(&id, p)| {
                let floor = (p.replay_floor != i64::MIN).then_some(p.replay_floor);
                p.next_offset.max(floor).map(|o| (id, o))
            })
            .collect()
    }

    /// Per partition, the offset that is safe to commit: the smallest offset still held in an
    /// open window of any key of the partition, or one past the last processed record when no
    /// window holds any. Committing it loses no window contents on restart or rebalance.
    pub fn committable_offsets(&self) -> Vec<(i32, i64)> {
        let mut min: HashMap<i32, i64> = self
            .partitions
            .iter()
            .filter_map(|(&id, p)| p.next_offset.map(|o| (id, o)))
            .collect();
        for ks in self.keys.iter() {
            if let Some(o) = ks.windows.iter().filter_map(KeyWindows::min_offset).min() {
                let e = min.entry(ks.partition).or_insert(o);
                *e = (*e).min(o);
            }
        }
        for (p, o) in self.group_min_offsets() {
            let e = min.entry(p).or_insert(o);
            *e = (*e).min(o);
        }
        let mut v: Vec<(i32, i64)> = min.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// Features a rule could name: `<field>.<feature>` for every known field.
    pub fn feature_names(&self) -> Vec<String> {
        (0..self.table.len() as u16)
            .flat_map(|id| self.cfg.features.iter().map(move |f: &Feature| (id, *f)))
            .map(|(id, f)| format!("{}.{}", self.table.name(id), f))
            .collect()
    }
}

#[cfg(test)]
mod tests;
