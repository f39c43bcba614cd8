//! Event-time progress per source partition: each partition has its own watermark per tier and
//! its own event-time timers, because a key's state only ever sees the events of one partition
//! (see [`super`]). This is Kafka Streams' per-task stream time rather than Flink's minimum over
//! all inputs: a partition taken over in a rebalance, or restored from a checkpoint, replays its
//! backlog against its own watermark, so another partition that has read ahead cannot make that
//! backlog late.
//!
//! Idleness: a partition with no event for a tier's `idleTimeout` of processing time follows the
//! other partitions: its watermark advances to the minimum watermark of the active partitions
//! (the maximum of all when every partition is idle), so the last windows of a partition that
//! went quiet still fire.

use std::collections::BTreeMap;

use crate::config::TierConfig;
use crate::window::{Timers, Watermark};

/// Event-time state of one tier in one partition.
#[derive(Debug, Default)]
pub(super) struct PartitionTier {
    /// Watermark of the tier in this partition.
    pub watermark: Watermark,
    /// Pending window and cleanup timers of the partition's keys.
    pub timers: Timers,
}

/// Event-time and offset progress of one partition.
#[derive(Debug)]
pub(super) struct PartitionState {
    /// Greatest event time seen; `None` before the partition's first event.
    pub max_event_time: Option<i64>,
    /// Processing time (ms) of the last event, or of the assignment before the first.
    pub last_active_ms: i64,
    /// One past the last processed offset; `None` before the first record.
    pub next_offset: Option<i64>,
    /// Records below this offset are already part of restored state and are skipped.
    pub replay_floor: i64,
    /// Per tier.
    pub tiers: Vec<PartitionTier>,
}

impl PartitionState {
    pub fn new(tiers: usize, now_ms: i64) -> Self {
        Self {
            max_event_time: None,
            last_active_ms: now_ms,
            next_offset: None,
            replay_floor: i64::MIN,
            tiers: (0..tiers).map(|_| PartitionTier::default()).collect(),
        }
    }

    fn is_idle(&self, now_ms: i64, tc: &TierConfig) -> bool {
        now_ms.saturating_sub(self.last_active_ms) >= tc.idle_timeout_ms
    }

    /// The watermark this partition's own events allow for a tier.
    fn own(&self, tc: &TierConfig) -> Option<i64> {
        self.max_event_time
            .map(|t| t.saturating_sub(tc.max_out_of_orderness_ms))
    }
}

/// The partitions of the engine, by engine partition id.
pub(super) type Partitions = BTreeMap<i32, PartitionState>;

/// The watermark each partition may advance to for tier `tier` at processing time `now_ms`:
/// its own for an active partition; for an idle one the greater of its own and the minimum
/// over the active partitions (the maximum over all when none is active). Partitions that
/// would not move are left out. Into `out` (cleared first).
pub(super) fn targets_into(
    parts: &Partitions,
    tier: usize,
    tc: &TierConfig,
    now_ms: i64,
    out: &mut Vec<(i32, Watermark)>,
) {
    out.clear();
    let mut active_min: Option<i64> = None;
    let mut any_active = false;
    let mut all_max: Option<i64> = None;
    for p in parts.values() {
        let own = p.own(tc);
        all_max = all_max.max(own);
        if !p.is_idle(now_ms, tc) {
            any_active = true;
            // An active partition without an event yet holds nothing: it has no keys.
            if let Some(o) = own {
                active_min = Some(active_min.map_or(o, |m: i64| m.min(o)));
            }
        }
    }
    let others = if any_active { active_min } else { all_max };
    out.extend(parts.iter().filter_map(|(&id, p)| {
        // A partition without an event yet has no keys and must not move: its backlog
        // (a partition just taken over) would be late.
        let own = p.own(tc)?;
        let target = if p.is_idle(now_ms, tc) {
            others.map_or(own, |o| o.max(own))
        } else {
            own
        };
        let wm = Watermark::EventTime(target);
        (wm > p.tiers[tier].watermark).then_some((id, wm))
    }));
}
