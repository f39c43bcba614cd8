//! Trace context through the windows: which traced events (records that came with a sampled
//! W3C trace, see [`crate::TraceParent`]) each key's open windows hold, so that a window's
//! model input and alerts carry the trace of an event in it when the window fires (possibly
//! at a later record or a timer, not at the traced one).
//!
//! A traced event gives its trace to the first window of each tier that fires holding it, and
//! is forgotten there: a window aggregates many events, and with later windows taking the
//! trace too, a small share of traced records would trace nearly every window (a 5-minute
//! window of a key with one event a second holds 3 of 1 % sampled ones).
//!
//! Kept beside the key state rather than in it: empty, it costs one map and one emptiness
//! check per fired window; it holds at most [`MAX_KEYS`] (key, tier) entries of
//! [`MAX_PER_KEY`] events each.

use std::collections::HashMap;

use crate::TraceParent;
use crate::window::KeyId;

/// Most (key, tier) entries held; traced events of further keys are not remembered.
pub(super) const MAX_KEYS: usize = 10_000;
/// Most traced events held per (key, tier): the newest are kept.
pub(super) const MAX_PER_KEY: usize = 4;

/// Traced events of one key in one tier.
pub(super) struct TracedEvents {
    /// The key's name (key ids are reused after a key is dropped).
    key: Box<str>,
    /// (event time, trace) of the traced events, oldest first.
    events: Vec<(i64, TraceParent)>,
}

/// The traced events of the engine.
pub(super) type Traces = HashMap<(KeyId, usize), TracedEvents>;

/// Remembers that the event at `t` of `key` (id `key_id`) in `tier` belongs to `trace`.
pub(super) fn remember(
    traces: &mut Traces,
    key_id: KeyId,
    key: &str,
    tier: usize,
    t: i64,
    trace: &TraceParent,
) {
    if traces.len() >= MAX_KEYS && !traces.contains_key(&(key_id, tier)) {
        return;
    }
    let e = traces
        .entry((key_id, tier))
        .or_insert_with(|| TracedEvents {
            key: key.into(),
            events: Vec::new(),
        });
    if *e.key != *key {
        e.key = key.into();
        e.events.clear();
    }
    if e.events.len() >= MAX_PER_KEY {
        e.events.remove(0);
    }
    e.events.push((t, trace.clone()));
}

/// The trace of the window `[start, end)` of `key` in `tier`: that of its newest traced event.
/// Forgets the window's traced events (each traces one firing per tier).
pub(super) fn for_window(
    traces: &mut Traces,
    key_id: KeyId,
    key: &str,
    tier: usize,
    (start, end): (i64, i64),
) -> Option<TraceParent> {
    let e = traces.get_mut(&(key_id, tier))?;
    if *e.key != *key {
        traces.remove(&(key_id, tier));
        return None;
    }
    let trace = e
        .events
        .iter()
        .rev()
        .find(|(t, _)| (start..end).contains(t))
        .map(|(_, tp)| tp.clone());
    e.events.retain(|(t, _)| *t >= end);
    if e.events.is_empty() {
        traces.remove(&(key_id, tier));
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_gets_the_trace_of_its_newest_traced_event_and_uses_it_up() {
        let mut tr = Traces::new();
        let (a, b): (TraceParent, TraceParent) = ("a".into(), "b".into());
        remember(&mut tr, 1, "k", 0, 1_000, &a);
        remember(&mut tr, 1, "k", 0, 1_500, &b);
        remember(&mut tr, 1, "k", 0, 2_500, &a);
        // Hopping 2 s / 1 s: [0, 2000) holds the first two, the newest wins, and both are
        // used up; [1000, 3000) holds b too, but only the event at 2.5 s still traces.
        assert_eq!(for_window(&mut tr, 1, "k", 0, (0, 2_000)), Some(b));
        assert_eq!(
            for_window(&mut tr, 1, "k", 0, (1_000, 3_000)),
            Some(a.clone())
        );
        assert!(tr.is_empty(), "every traced event traced a firing");
        // A reused key id does not inherit another key's trace.
        remember(&mut tr, 2, "old", 0, 10, &a);
        assert_eq!(for_window(&mut tr, 2, "new", 0, (0, 1_000)), None);
        // Bounded per key: the newest are kept.
        for t in 0..10 {
            remember(&mut tr, 3, "k", 0, t, &a);
        }
        assert_eq!(tr[&(3, 0)].events.len(), MAX_PER_KEY);
        assert_eq!(tr[&(3, 0)].events[0].0, 6);
    }
}
