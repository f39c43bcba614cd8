//! Event-time windows: tumbling and hopping window assignment over panes, per-partition
//! watermarks with idleness, allowed lateness and per-tier timers. Pure data structures; the
//! engine decides when to call them.
//!
//! A tier with size `S` and slide `L` keeps panes of `P = gcd(S, L)`; an event updates exactly
//! one pane and a window `[s, s + S)` is the merge of its `S / P` panes. A window fires when the
//! tier's watermark reaches its end; it is kept for `allowedLateness` more, during which a late
//! event updates it and it fires again. Window starts are epoch-aligned: `s = t - t mod L`.

use std::collections::{BTreeMap, VecDeque};

use crate::config::TierConfig;
use crate::features::{Agg, FeatureValues};

/// Identifier of a key's state in the engine.
pub type KeyId = u32;

/// A tier's watermark: the event time up to which every event has arrived (allowed lateness
/// aside). Ordered `Initial < EventTime(_) < EndOfInput`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Watermark {
    /// No event time yet: nothing is late, no window is due.
    #[default]
    Initial,
    /// Every event at or before this event time (epoch ms) has arrived.
    EventTime(i64),
    /// A bounded input ended: every window is due.
    EndOfInput,
}

impl Watermark {
    /// The watermark as epoch ms, for comparisons with window ends: `Initial` is before every
    /// event time and `EndOfInput` after every one.
    pub fn as_ms(self) -> i64 {
        match self {
            Watermark::Initial => i64::MIN,
            Watermark::EventTime(t) => t,
            Watermark::EndOfInput => i64::MAX,
        }
    }

    /// The event time, when the watermark is one.
    pub fn event_time(self) -> Option<i64> {
        match self {
            Watermark::EventTime(t) => Some(t),
            Watermark::Initial | Watermark::EndOfInput => None,
        }
    }
}

/// `floor(t / m) * m`, correct for negative times.
pub fn align(t: i64, m: i64) -> i64 {
    t - t.rem_euclid(m)
}

/// Starts of the windows of a tier containing event time `t`, latest first.
pub fn window_starts(cfg: &TierConfig, t: i64) -> impl Iterator<Item = i64> + '_ {
    let last = align(t, cfg.slide_ms);
    (0..)
        .map(move |i| last - i * cfg.slide_ms)
        .take_while(move |s| *s > t - cfg.size_ms)
}

/// End of the last window that contains the pane starting at `pane_start`.
pub fn last_window_end(cfg: &TierConfig, pane_start: i64) -> i64 {
    align(pane_start, cfg.slide_ms) + cfg.size_ms
}

/// Whether an event at `t` is too late for every window of the tier: the last window holding
/// it has ended more than `allowedLateness` before the watermark.
pub fn is_late(cfg: &TierConfig, watermark: Watermark, t: i64) -> bool {
    watermark != Watermark::Initial
        && last_window_end(cfg, align(t, cfg.pane_ms)).saturating_add(cfg.allowed_lateness_ms)
            <= watermark.as_ms()
}

/// Aggregates of one pane of one key: one [`Agg`] per field id.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pane {
    /// Pane start (epoch ms).
    pub start: i64,
    /// Smallest Kafka offset that contributed (for safe offset commits).
    pub first_offset: i64,
    /// One aggregate per field id; the first inline, so a pane of a one-field pipeline costs no
    /// allocation (keys with sparse events open a pane for nearly every event). Encoded as a
    /// sequence, as the `Vec` it was: snapshots of either read alike.
    aggs: PaneAggs,
}

/// The aggregates of a pane.
type PaneAggs = smallvec::SmallVec<[Agg; 1]>;

/// The open panes of one key in one tier.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct KeyWindows {
    panes: VecDeque<Pane>,
    /// End of the last window of this key fired by a timer (timers fire in end order).
    pub last_fired_end: i64,
}

/// What [`KeyWindows::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    /// The event opened a pane the key did not have.
    pub new_pane: bool,
}

impl KeyWindows {
    /// Empty state.
    pub fn new() -> Self {
        Self {
            panes: VecDeque::new(),
            last_fired_end: i64::MIN,
        }
    }

    /// Adds one value of field `field` at event time `t` from Kafka offset `offset`.
    pub fn add(
        &mut self,
        cfg: &TierConfig,
        t: i64,
        field: u16,
        v: f64,
        offset: i64,
        with_sketch: bool,
    ) -> Added {
        let start = align(t, cfg.pane_ms);
        // Events mostly arrive in order: look at the newest pane first.
        let (idx, new_pane) = match self.panes.back() {
            Some(p) if p.start == start => (self.panes.len() - 1, false),
            Some(p) if p.start < start => {
                self.panes.push_back(Pane {
                    start,
                    first_offset: offset,
                    aggs: PaneAggs::new(),
                });
                (self.panes.len() - 1, true)
            }
            None => {
                self.panes.push_back(Pane {
                    start,
                    first_offset: offset,
                    aggs: PaneAggs::new(),
                });
                (0, true)
            }
            Some(_) => match self.panes.binary_search_by_key(&start, |p| p.start) {
                Ok(i) => (i, false),
                Err(i) => {
                    self.panes.insert(
                        i,
                        Pane {
                            start,
                            first_offset: offset,
                            aggs: PaneAggs::new(),
                        },
                    );
                    (i, true)
                }
            },
        };
        let pane = &mut self.panes[idx];
        pane.first_offset = pane.first_offset.min(offset);
        let f = field as usize;
        if pane.aggs.len() <= f {
            pane.aggs.resize_with(f + 1, || Agg::new(with_sketch));
        }
        pane.aggs[f].add(t, v);
        Added { new_pane }
    }

    /// Features per field of the window `[start, start + size)`, from the panes held now.
    /// Fields without values in the window are left out.
    pub fn window(
        &self,
        cfg: &TierConfig,
        start: i64,
        with_sketch: bool,
    ) -> Vec<(u16, FeatureValues)> {
        let mut out = Vec::new();
        self.window_into(cfg, start, with_sketch, &mut Vec::new(), &mut out);
        out
    }

    /// [`Self::window`] into `out` (cleared first), merging in `merged`: buffers the caller
    /// reuses, so firing a window allocates nothing once they have grown (a sparse workload
    /// fires about 3 windows per event).
    pub fn window_into(
        &self,
        cfg: &TierConfig,
        start: i64,
        with_sketch: bool,
        merged: &mut Vec<Agg>,
        out: &mut Vec<(u16, FeatureValues)>,
    ) {
        out.clear();
        merged.clear();
        let end = start + cfg.size_ms;
        // A window fires before its panes are purged, so the panes before it are few (at
        // most a window's worth): a scan from the front beats a binary search here.
        for pane in self
            .panes
            .iter()
            .skip_while(|p| p.start < start)
            .take_while(|p| p.start < end)
        {
            if merged.len() < pane.aggs.len() {
                merged.resize_with(pane.aggs.len(), || Agg::new(with_sketch));
            }
            for (m, a) in merged.iter_mut().zip(&pane.aggs) {
                m.merge(a);
            }
        }
        out.extend(
            merged
                .iter()
                .enumerate()
                .filter(|(_, a)| a.count() > 0)
                .map(|(i, a)| (i as u16, a.features(cfg.size_ms))),
        );
    }

    /// Where the panes are, for a cache prefetch before a firing: the (pointer, bytes) of the
    /// two parts of the ring buffer, at most `max_bytes` in all, oldest panes first.
    pub fn pane_memory(&self, max_bytes: usize) -> [(*const Pane, usize); 2] {
        let (a, b) = self.panes.as_slices();
        let a_bytes = std::mem::size_of_val(a).min(max_bytes);
        let b_bytes = std::mem::size_of_val(b).min(max_bytes - a_bytes);
        [(a.as_ptr(), a_bytes), (b.as_ptr(), b_bytes)]
    }

    /// Drops panes whose every window has fired (ends at or before `last_fired_end`) and is
    /// past `allowedLateness` at `watermark`.
    pub fn purge(&mut self, cfg: &TierConfig, watermark: i64) {
        while let Some(p) = self.panes.front() {
            let end = last_window_end(cfg, p.start);
            if end <= self.last_fired_end && end + cfg.allowed_lateness_ms <= watermark {
                self.panes.pop_front();
            } else {
                break;
            }
        }
    }

    /// Moves each pane's aggregate of field id `i` to field id `map[i]`, dropping fields mapped
    /// to `None` or beyond `map` (a restore into a pipeline whose field table changed).
    pub fn remap_fields(&mut self, map: &[Option<u16>], with_sketch: bool) {
        for pane in &mut self.panes {
            let old = std::mem::take(&mut pane.aggs);
            for (i, agg) in old.into_iter().enumerate() {
                let Some(Some(to)) = map.get(i) else { continue };
                let to = *to as usize;
                if pane.aggs.len() <= to {
                    pane.aggs.resize_with(to + 1, || Agg::new(with_sketch));
                }
                pane.aggs[to] = agg;
            }
        }
    }

    /// Ends of the windows still to fire: those after `last_fired_end` that hold a pane.
    pub fn pending_ends(&self, cfg: &TierConfig) -> Vec<i64> {
        let mut ends: Vec<i64> = self
            .panes
            .iter()
            .flat_map(|p| window_starts(cfg, p.start).map(|s| s + cfg.size_ms))
            .filter(|e| *e > self.last_fired_end)
            .collect();
        ends.sort_unstable();
        ends.dedup();
        ends
    }

    /// Smallest Kafka offset still held in a pane.
    pub fn min_offset(&self) -> Option<i64> {
        self.panes.iter().map(|p| p.first_offset).min()
    }

    /// Number of panes held.
    pub fn pane_count(&self) -> usize {
        self.panes.len()
    }

    /// Approximate bytes held (struct sizes plus sketches).
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .panes
                .iter()
                .map(|p| {
                    let spilled = if p.aggs.spilled() {
                        p.aggs.capacity() * std::mem::size_of::<Agg>()
                    } else {
                        0
                    };
                    std::mem::size_of::<Pane>()
                        + spilled
                        + p.aggs.iter().map(Agg::heap_bytes).sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// What a timer does when the watermark reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// Fire the key's window ending at the timer's time.
    Fire,
    /// Drop panes whose allowed lateness has run out.
    Cleanup,
    /// Check whether the key has been idle for `spec.keyState.idleTimeout` (its state is
    /// dropped then).
    Expire,
}

/// Event-time timers of one tier: which keys have a window ending (or a lateness expiring) at
/// each time.
#[derive(Debug, Default)]
pub struct Timers {
    by_end: BTreeMap<i64, Vec<(KeyId, TimerKind)>>,
}

impl Timers {
    /// Registers a timer for a key (duplicate firings are tolerated and skipped on firing).
    pub fn register(&mut self, at: i64, key: KeyId, kind: TimerKind) {
        self.by_end.entry(at).or_default().push((key, kind));
    }

    /// Removes and returns the earliest timers with time `<= watermark`.
    pub fn pop_due(&mut self, watermark: i64) -> Option<(i64, Vec<(KeyId, TimerKind)>)> {
        let entry = self.by_end.first_entry()?;
        if *entry.key() <= watermark {
            Some(entry.remove_entry())
        } else {
            None
        }
    }

    /// Time of the earliest pending timer.
    pub fn next_at(&self) -> Option<i64> {
        self.by_end.first_key_value().map(|(at, _)| *at)
    }

    /// Number of pending window ends.
    pub fn len(&self) -> usize {
        self.by_end.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.by_end.is_empty()
    }
}

#[cfg(test)]
mod tests;
