//! Idle-key expiry (`spec.keyState.idleTimeout`): one `Expire` timer per key on the first
//! tier, moved lazily to `idleTimeout` after the key's last event; an idle key is dropped once
//! none of its panes or timers is pending (each key counts its registered timers, so no timer
//! outlives its key and hits a reused key id).

use super::Engine;
use crate::window::{KeyId, TimerKind};

impl Engine {
    /// The expiry timer of `key_id` (registered on the first tier) came due at `at`: when
    /// the key had events since, the timer moves to `idleTimeout` after the last one;
    /// otherwise the key is dropped once nothing of it is pending (no pane, no other timer;
    /// see [`Self::drop_if_expired`]).
    pub(super) fn expire(&mut self, partition: i32, key_id: KeyId, at: i64) {
        let ttl = self.cfg.key_idle_timeout_ms;
        let Some(ks) = self.keys.get_mut(key_id) else {
            return;
        };
        ks.expire_at = None;
        let due = ks.last_event.saturating_add(ttl);
        if due > at {
            ks.expire_at = Some(due);
            ks.timers += 1;
            if let Some(p) = self.partitions.get_mut(&partition) {
                p.tiers[0].timers.register(due, key_id, TimerKind::Expire);
            }
            return;
        }
        ks.expired = true;
        self.drop_if_expired(key_id);
    }

    /// Drops `key_id` if it is expired and nothing of it is pending any more.
    pub(super) fn drop_if_expired(&mut self, key_id: KeyId) {
        let Some(ks) = self.keys.get_mut(key_id) else {
            return;
        };
        if ks.expired && ks.timers == 0 && ks.windows.iter().all(|w| w.pane_count() == 0) {
            self.keys.remove(key_id);
            self.counters.keys_expired += 1;
        }
    }
}
