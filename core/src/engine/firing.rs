//! Firing due windows: pops a tier's timers up to the watermark and, per timer, fires the
//! key's window, purges its panes, registers the allowed-lateness cleanup, or runs the key's
//! idle-expiry check. Keys are cold here (a sparse workload fires about 3.3 windows per event
//! over many keys), so the loop asks the cache for the keys a few timers ahead
//! ([`super::prefetch`]).

use super::{Engine, Outputs};
use crate::window::TimerKind;

/// How many due timers ahead `fire_due` asks the cache for a key's state (its panes and rules
/// at half this distance): far enough for a memory load to arrive while the windows between
/// fire, near enough that the lines are still cached when the key's turn comes.
const PREFETCH_AHEAD: usize = 16;

impl Engine {
    /// Fires every timer of `tier` in `partition` due at watermark `wm` (epoch ms), in time
    /// order.
    pub(super) fn fire_due(
        &mut self,
        partition: i32,
        tier: usize,
        wm: i64,
        now_ms: i64,
        out: &mut Outputs,
    ) {
        let tc = self.cfg.tiers[tier].clone();
        while let Some((at, timers)) = self
            .partitions
            .get_mut(&partition)
            .and_then(|p| p.tiers[tier].timers.pop_due(wm))
        {
            for (i, &(key_id, kind)) in timers.iter().enumerate() {
                // Memory latency bounds this loop (keys are cold): ask for the slots of the
                // keys PREFETCH_AHEAD timers ahead, and for the panes and rule states of the
                // keys half as far ahead, whose slots have arrived by now.
                if let Some(&(ahead, _)) = timers.get(i + PREFETCH_AHEAD) {
                    self.keys.prefetch_slot(ahead);
                }
                if let Some(&(ahead, _)) = timers.get(i + PREFETCH_AHEAD / 2) {
                    self.keys.prefetch_firing(ahead, tier);
                }
                let Some(ks) = self.keys.get_mut(key_id) else {
                    continue;
                };
                ks.timers = ks.timers.saturating_sub(1);
                if kind == TimerKind::Cleanup {
                    ks.windows[tier].purge(&tc, wm);
                    self.drop_if_expired(key_id);
                    continue;
                }
                if kind == TimerKind::Expire {
                    self.expire(partition, key_id, at);
                    continue;
                }
                if ks.windows[tier].last_fired_end >= at {
                    continue; // duplicate registration
                }
                ks.windows[tier].last_fired_end = at;
                self.counters.windows_fired += 1;
                self.fire(tier, key_id, at - tc.size_ms, false, now_ms, out);
                if let Some(ks) = self.keys.get_mut(key_id) {
                    ks.windows[tier].purge(&tc, wm);
                    if tc.allowed_lateness_ms > 0
                        && at.saturating_add(tc.allowed_lateness_ms) > wm
                        && let Some(p) = self.partitions.get_mut(&partition)
                    {
                        p.tiers[tier].timers.register(
                            at + tc.allowed_lateness_ms,
                            key_id,
                            TimerKind::Cleanup,
                        );
                        ks.timers += 1;
                    }
                }
                self.drop_if_expired(key_id);
            }
        }
    }
}
