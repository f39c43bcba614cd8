//! The engine's key table: per (partition, key) an id into a slab of [`KeyState`]s (window
//! panes per tier and per-rule state), with ids of dropped keys reused. Key lookup is the
//! hottest step per event, so the maps hash with foldhash (SipHash took about a third of the
//! engine's time in the profile).

use std::collections::HashMap;

use crate::rules::RuleState;
use crate::window::{KeyId, KeyWindows};

/// The state of one key of one partition.
pub(super) struct KeyState {
    /// The entity key.
    pub name: Box<str>,
    /// The partition it was read from.
    pub partition: i32,
    /// Open panes per tier. Inline for up to two tiers: a firing reads them right after the
    /// key's slot, and a separate allocation cost a cache miss per fired window.
    pub windows: TierWindows,
    /// Per-rule state, indexed like the engine's rules.
    pub rules: Vec<RuleState>,
    /// Greatest event time of the key's events (for idle expiry).
    pub last_event: i64,
    /// Timers registered for the key and not yet popped (it is only dropped at zero, so no
    /// timer outlives its key and hits a reused id).
    pub timers: u32,
    /// When its expiry timer is due, if one is registered.
    pub expire_at: Option<i64>,
    /// Idle for `spec.keyState.idleTimeout`: dropped once nothing of it is pending.
    pub expired: bool,
}

/// A key's panes per tier.
pub(super) type TierWindows = smallvec::SmallVec<[KeyWindows; 2]>;

/// Keys of up to 24 bytes are held inline in the map's entries ([`compact_str`]): a lookup
/// compares the probed entry's key without following a pointer to another cache line.
type KeyMap = HashMap<compact_str::CompactString, KeyId, foldhash::fast::RandomState>;

/// Bytes of a key's panes prefetched before a firing: the panes of a window of 5 panes and a
/// few before it (a pane of a one-field pipeline is 72 bytes).
const PANE_PREFETCH_BYTES: usize = 8 * 64;
/// Bytes of a key's rule states prefetched before a firing.
const RULES_PREFETCH_BYTES: usize = 4 * 64;

/// Key ids per partition and the states they point to.
#[derive(Default)]
pub(super) struct KeyTable {
    keys: HashMap<i32, KeyMap>,
    states: Vec<Option<KeyState>>,
    free: Vec<KeyId>,
    live: usize,
}

impl KeyTable {
    /// The id of `key` in `partition`, creating its state with `make` when it is new.
    pub fn id(&mut self, partition: i32, key: &str, make: impl FnOnce() -> KeyState) -> KeyId {
        if let Some(&id) = self.keys.get(&partition).and_then(|m| m.get(key)) {
            return id;
        }
        let state = make();
        self.live += 1;
        let id = match self.free.pop() {
            Some(id) => {
                self.states[id as usize] = Some(state);
                id
            }
            None => {
                self.states.push(Some(state));
                (self.states.len() - 1) as KeyId
            }
        };
        self.keys
            .entry(partition)
            .or_default()
            .insert(key.into(), id);
        id
    }

    /// The id of `key` in `partition`, if it is live.
    pub fn get(&self, partition: i32, key: &str) -> Option<KeyId> {
        self.keys.get(&partition).and_then(|m| m.get(key)).copied()
    }

    /// Drops key `id`.
    pub fn remove(&mut self, id: KeyId) {
        let Some(state) = self.states.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        if let Some(m) = self.keys.get_mut(&state.partition) {
            m.remove(&*state.name);
        }
        self.free.push(id);
        self.live -= 1;
    }

    /// The live state of `id`, read-only.
    pub fn get_by_id(&self, id: KeyId) -> Option<&KeyState> {
        self.states.get(id as usize).and_then(Option::as_ref)
    }

    /// Asks the cache for key `id`'s slot (see [`super::prefetch`]).
    pub fn prefetch_slot(&self, id: KeyId) {
        if let Some(slot) = self.states.get(id as usize) {
            super::prefetch::prefetch(slot, std::mem::size_of::<Option<KeyState>>());
        }
    }

    /// Asks the cache for what firing a window of tier `tier` of key `id` reads next: the
    /// key's first panes in that tier and its rule states. Reads the slot, so call it once
    /// [`Self::prefetch_slot`] has had time to bring that in.
    pub fn prefetch_firing(&self, id: KeyId, tier: usize) {
        if let Some(ks) = self.get_by_id(id) {
            if let Some(w) = ks.windows.get(tier) {
                for (panes, bytes) in w.pane_memory(PANE_PREFETCH_BYTES) {
                    super::prefetch::prefetch(panes, bytes);
                }
            }
            let rules = std::mem::size_of_val(ks.rules.as_slice());
            super::prefetch::prefetch(ks.rules.as_ptr(), rules.min(RULES_PREFETCH_BYTES));
        }
    }

    /// The live state of `id`.
    pub fn get_mut(&mut self, id: KeyId) -> Option<&mut KeyState> {
        self.states.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Every live key.
    pub fn iter(&self) -> impl Iterator<Item = &KeyState> {
        self.states.iter().flatten()
    }

    /// Every live key, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut KeyState> {
        self.states.iter_mut().flatten()
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Drops every key of `partition`.
    pub fn remove_partition(&mut self, partition: i32) {
        if let Some(keys) = self.keys.remove(&partition) {
            for (_, id) in keys {
                if self.states[id as usize].take().is_some() {
                    self.live -= 1;
                }
                self.free.push(id);
            }
        }
    }

    /// Approximate bytes of window and rule state per live key.
    pub fn state_bytes_per_key(&self) -> usize {
        let live: Vec<&KeyState> = self.iter().collect();
        if live.is_empty() {
            return 0;
        }
        let total: usize = live
            .iter()
            .map(|k| {
                // Inline tiers are part of the KeyState's size already.
                let inline_tiers = if k.windows.spilled() {
                    0
                } else {
                    k.windows.len() * std::mem::size_of::<KeyWindows>()
                };
                std::mem::size_of::<KeyState>()
                    + k.name.len()
                    + k.windows.iter().map(KeyWindows::state_bytes).sum::<usize>()
                    + k.rules.iter().map(RuleState::state_bytes).sum::<usize>()
                    - inline_tiers
                    // the key's hash-map entry: boxed name pointer, length and id
                    + 24
            })
            .sum();
        total / live.len()
    }
}
