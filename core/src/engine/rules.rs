//! The rule runner: what the engine does when a key's window fires (evaluate each rule of the
//! tier, advance its alert lifecycle, emit the window's KPIs and model rows), when an event
//! arrives for per-event rules (detectors, ensembles, `vigil score`'s per-event scores), and
//! when model scores come back.

use super::alerts::{self, Transition};
use super::{Engine, Outputs, WindowResult};
use crate::features::FeatureValues;
use crate::model::{ModelInput, WindowVector};
use crate::rules::{Evaluation, RuleKind, WindowView};
use crate::window::{self, KeyId};

impl Engine {
    /// Fires the window `[start, start + size)` of `key_id` in `tier` (`update`: again, after a
    /// late event), with the engine's reused window buffers.
    pub(super) fn fire(
        &mut self,
        tier: usize,
        key_id: KeyId,
        start: i64,
        update: bool,
        now_ms: i64,
        out: &mut Outputs,
    ) {
        let (mut merged, mut fields) = std::mem::take(&mut self.window_buffers);
        self.fire_window(
            (tier, key_id, start, update, now_ms),
            (&mut merged, &mut fields),
            out,
        );
        self.window_buffers = (merged, fields);
    }

    fn fire_window(
        &mut self,
        (tier, key_id, start, update, now_ms): (usize, KeyId, i64, bool, i64),
        (merged, fields): (
            &mut Vec<crate::features::Agg>,
            &mut Vec<(u16, FeatureValues)>,
        ),
        out: &mut Outputs,
    ) {
        let tc = &self.cfg.tiers[tier];
        let Some(ks) = self.keys.get_mut(key_id) else {
            return;
        };
        ks.windows[tier].window_into(tc, start, self.with_sketch, merged, fields);
        if fields.is_empty() {
            return;
        }
        if self.cfg.groups.is_some() && self.cfg.stage == crate::groups::Stage::Keys {
            self.send_partials(tier, key_id, start, update, merged, out);
        }
        self.evaluate_window((tier, key_id, start, update, now_ms), fields, &[], out);
    }

    /// Emits the KPIs of a fired window of `key_id` (a key, or a group in the group stage) and
    /// runs the tier's rules on it: the part of a firing after its features are known.
    pub(super) fn evaluate_window(
        &mut self,
        (tier, key_id, start, update, now_ms): (usize, KeyId, i64, bool, i64),
        fields: &[(u16, FeatureValues)],
        kpis: &[(String, f64)],
        out: &mut Outputs,
    ) {
        let tc = &self.cfg.tiers[tier];
        let end = start + tc.size_ms;
        let keys_id = (self.cfg.stage == crate::groups::Stage::Groups)
            .then(|| self.table.get(crate::groups::KEYS_FIELD))
            .flatten();
        let Some(ks) = self.keys.get_mut(key_id) else {
            return;
        };
        let named = |ids: &mut dyn Iterator<Item = &(u16, FeatureValues)>| -> Vec<(String, f64)> {
            let mut v = Vec::new();
            for (id, fv) in ids {
                for f in &self.cfg.features {
                    let x = fv.get(*f);
                    if !x.is_nan() {
                        v.push((format!("{}.{}", self.table.name(*id), f), x));
                    }
                }
            }
            v
        };
        if self.opts.emit_windows {
            let mut features = named(&mut fields.iter());
            features.extend(
                kpis.iter()
                    .map(|(k, v)| (format!("{}.{k}", crate::groups::KPI_PREFIX), *v)),
            );
            out.windows.push(WindowResult {
                tier: tc.name.clone(),
                key: ks.name.to_string(),
                start,
                end,
                features,
                update,
            });
        }
        if update {
            // Rule state advances in window-end order; re-emitted windows only update KPIs.
            return;
        }
        let trace = if self.traces.is_empty() {
            None
        } else {
            super::traces::for_window(&mut self.traces, key_id, &ks.name, tier, (start, end))
        };
        if let Some(trace) = &trace {
            out.fired_traces.push(super::FiredTrace {
                tier: tc.name.clone(),
                key: ks.name.clone(),
                start,
                end,
                trace: trace.clone(),
            });
        }
        let attributes = self.reference.as_ref().map(|r| r.lookup(&ks.name));
        let view = WindowView {
            key: &ks.name,
            start,
            end,
            fields,
            table: &self.table,
            attributes: attributes.as_deref(),
            kpis,
        };
        for (idx, loaded) in self.rules.iter().enumerate() {
            let rule = &loaded.compiled;
            if rule.tier != tier {
                continue;
            }
            if let Some(g) = &loaded.spec.group
                && !crate::groups::in_grouping(&ks.name, g)
            {
                continue;
            }
            let state = &mut ks.rules[idx];
            if state.last_end.is_some_and(|e| e >= end) {
                continue;
            }
            if let RuleKind::Model(crate::rules::Model { contract, .. }) = &rule.kind {
                // Scored outside the engine; the alert follows in apply_model_scores.
                state.last_end = Some(end);
                match contract.on_window(&view, state.model.get_or_insert_with(Default::default)) {
                    WindowVector::Ready { values, raw } => {
                        let (candidate, shadow) = contract.route(&ks.name);
                        out.model_inputs.push(ModelInput {
                            rule: idx,
                            rule_name: rule.name.clone(),
                            contract: contract.clone(),
                            key_id,
                            key: ks.name.clone(),
                            window_start: start,
                            window_end: end,
                            values,
                            raw_features: raw,
                            candidate,
                            shadow,
                            closed_ms: now_ms,
                            trace: trace.clone(),
                        });
                    }
                    WindowVector::Filling => {}
                    WindowVector::Undefined => self.counters.model_windows_undefined += 1,
                }
                continue;
            }
            let eval = rule.evaluate(&view, state);
            let at = Transition {
                pipeline: &self.cfg.name,
                window: &tc.name,
                key: &ks.name,
                start,
                end,
                now_ms,
                attributes: attributes.as_deref(),
            };
            let alert = alerts::step(
                rule,
                state,
                &eval,
                &at,
                &mut self.counters,
                || {
                    // A group window's alert also carries its member count and KPIs.
                    let mut v = match rule.field() {
                        Some(f) => named(
                            &mut fields
                                .iter()
                                .filter(|(id, _)| *id == f || Some(*id) == keys_id),
                        ),
                        None => named(&mut fields.iter()),
                    };
                    v.extend(
                        kpis.iter()
                            .map(|(k, x)| (format!("{}.{k}", crate::groups::KPI_PREFIX), *x)),
                    );
                    v
                },
                &[],
            );
            rule.observe(&view, state);
            state.last_end = Some(end);
            state.last_window_score = Some(eval.score);
            if let Some(mut a) = alert {
                a.trace = trace.clone();
                out.alerts.push(a);
            }
        }
    }

    /// Scores one event. Detector rules reading one of the event's fields learn it and score
    /// it; window rules give the score of the latest window of their tier containing `t` (only
    /// with [`EngineOptions::event_scores`]; otherwise their last fired window's score);
    /// ensembles combine their members. Per-event rules then record their alarm score for
    /// their window evaluation. Returns the highest score of any rule that is not an ensemble
    /// member, from the events seen so far (rows `0..=i` only).
    pub(super) fn event_score(&mut self, key_id: KeyId, t: i64, values: &[(u16, f64)]) -> f64 {
        let Some(ks) = self.keys.get_mut(key_id) else {
            return 0.0;
        };
        let mut scores = std::mem::take(&mut self.event_rule_scores);
        scores.clear();
        scores.resize(self.rules.len(), None);
        let mut value = f64::NAN;
        if self.per_event_rules {
            // A stable per-key seed, so replays of the same stream give the same scores.
            let seed = crate::model::key_hash(&ks.name);
            for (idx, rule) in self.rules.iter().enumerate() {
                let rule = &rule.compiled;
                if let RuleKind::Detector(d) = &rule.kind
                    && let Some(&(_, x)) = values.iter().find(|(f, _)| *f == d.field)
                {
                    scores[idx] = rule.observe_event(&mut ks.rules[idx], seed, t, x);
                    value = x;
                }
            }
        }
        for (tier, tc) in self.cfg.tiers.iter().enumerate() {
            let window_rules = || {
                self.rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.compiled.tier == tier && !r.compiled.is_per_event())
            };
            if !self.opts.event_scores {
                for (idx, _) in window_rules() {
                    scores[idx] = ks.rules[idx].last_window_score;
                }
                continue;
            }
            if window_rules().next().is_none() {
                continue;
            }
            let start = window::align(t, tc.slide_ms);
            let fields = ks.windows[tier].window(tc, start, self.with_sketch);
            let attributes = self.reference.as_ref().map(|r| r.lookup(&ks.name));
            let view = WindowView {
                key: &ks.name,
                start,
                end: start + tc.size_ms,
                fields: &fields,
                table: &self.table,
                attributes: attributes.as_deref(),
                kpis: &[],
            };
            for (idx, rule) in window_rules() {
                scores[idx] = Some(rule.compiled.evaluate(&view, &mut ks.rules[idx]).score);
            }
        }
        for (idx, rule) in self.rules.iter().enumerate() {
            if let Some(s) = rule.compiled.combine(&scores) {
                scores[idx] = Some(s);
            }
        }
        let mut best = 0.0f64;
        for (idx, rule) in self.rules.iter().enumerate() {
            let rule = &rule.compiled;
            let Some(mut s) = scores[idx] else { continue };
            if rule.ensemble_member {
                continue;
            }
            if rule.is_per_event() {
                let pane_ms = self.cfg.tiers[rule.tier].pane_ms;
                s = rule.record_event_score(&mut ks.rules[idx], pane_ms, t, s, value);
            }
            best = best.max(s);
        }
        self.event_rule_scores = scores;
        best
    }

    /// Applies raw scores of model rule windows (from the detector runtime's model scorer): maps
    /// each to a score in [0, 1] and a match ([`crate::model::ModelContract::map_score`],
    /// with the rule's threshold override) and advances the rule's alert lifecycle at the
    /// window's end, appending transitions to `out`. Per (rule, key), scores must come in
    /// window-end order: one for a window not after the last applied is dropped, as are scores
    /// whose rule was removed or no longer uses the same model contract, or whose key was
    /// revoked, since the window closed.
    /// A skipped window (scoring failed) leaves the lifecycle as it was. Returns how many
    /// scores were applied. Takes the pairs by value or by reference (a caller that keeps its
    /// scoring report need not copy the rows).
    pub fn apply_model_scores<S: std::borrow::Borrow<(ModelInput, f32)>>(
        &mut self,
        scored: impl IntoIterator<Item = S>,
        now_ms: i64,
        out: &mut Outputs,
    ) -> usize {
        let mut applied = 0;
        for item in scored {
            let (input, raw) = item.borrow();
            let raw = *raw;
            let Some(rule) = self
                .rules
                .get(input.rule)
                .map(|r| &r.compiled)
                .filter(|r| r.name == input.rule_name)
            else {
                continue;
            };
            let RuleKind::Model(crate::rules::Model {
                contract,
                threshold,
                ..
            }) = &rule.kind
            else {
                continue;
            };
            if **contract != *input.contract {
                continue; // the model changed since the window closed
            }
            let Some(ks) = self
                .keys
                .get_mut(input.key_id)
                .filter(|k| k.name == input.key)
            else {
                continue;
            };
            let state = &mut ks.rules[input.rule];
            let model = state.model.get_or_insert_with(Default::default);
            if model.last_scored_end.is_some_and(|e| e >= input.window_end) {
                continue;
            }
            let raw = f64::from(raw);
            let Some((score, matched)) =
                contract.map_score(raw, threshold.unwrap_or(contract.threshold))
            else {
                continue;
            };
            model.last_scored_end = Some(input.window_end);
            state.last_window_score = Some(score);
            applied += 1;
            // The tested value of a model rule is its raw model score.
            let eval = Evaluation {
                matched,
                score,
                value: raw,
            };
            let attributes = self.reference.as_ref().map(|r| r.lookup(&ks.name));
            let at = Transition {
                pipeline: &self.cfg.name,
                window: &self.cfg.tiers[rule.tier].name,
                key: &ks.name,
                start: input.window_start,
                end: input.window_end,
                now_ms,
                attributes: attributes.as_deref(),
            };
            // During a rollout the alert says which revision scored the window.
            let extra = [
                ("model", contract.model.as_str()),
                ("revision", input.version()),
            ];
            let extra_len = if contract.rollout.is_some() { 2 } else { 1 };
            let features = || {
                contract
                    .feature_names
                    .iter()
                    .cloned()
                    .zip(input.raw_features.iter().copied())
                    .collect()
            };
            out.alerts.extend(
                alerts::step(
                    rule,
                    state,
                    &eval,
                    &at,
                    &mut self.counters,
                    features,
                    &extra[..extra_len],
                )
                .map(|mut a| {
                    a.trace = input.trace.clone();
                    a
                }),
            );
        }
        applied
    }
}
