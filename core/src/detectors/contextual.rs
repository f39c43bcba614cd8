//! Contextual novelty: how rarely the key's current *level* has followed its previous levels.
//! A sequence memory over a coarse quantisation of the field, in the spirit of the Contextual
//! Anomaly Detector (CAD OSE, Smirnov, NAB 2016) and of HTM's temporal memory: values are
//! reduced to a few levels, the memory learns which level follows which recent levels, and an
//! event is anomalous when its level is one the recent context has rarely or never led to.
//! Ordinary values in an unusual order (a denser run of spikes, a missing plateau, a slow
//! drift to a level never reached from here) are what it sees and magnitude-based detectors
//! miss; a pattern that repeats stops being novel, so its score decays as it is learned.
//!
//! Algorithm (written here; a simplified variable-order Markov predictor after "prediction by
//! partial matching", Cleary and Witten, IEEE Trans. Comm. 32(4), 1984: the longest context
//! seen often enough predicts alone, without PPM's escape blending, which measured worse in
//! the ensemble, docs/quality.md):
//! - **Levels.** The first `warmup_events` values fix the quantisation: `levels` equal-width
//!   bins over their range (CAD OSE uses equal-width bins over the file's range, which a
//!   stream does not know in advance). Values outside it get further bins of the same width,
//!   so a new extreme is a new level and earlier levels keep their meaning; the level is
//!   clamped to +/- [`LEVEL_LIMIT`].
//! - **Memory.** For every order `k` in `0..=order`, counts of each context (the last `k`
//!   levels) and of each (context, next level) pair. Counts are exact in a sorted map of at
//!   most [`MAX_ENTRIES`] entries; when it grows past that, every count is halved and zero
//!   counts dropped (old patterns fade, the state stays bounded).
//! - **Raw output.** The surprise, in nats, of the level under the longest context seen at
//!   least [`MIN_CONTEXT_EVENTS`] times: `-ln((c + 1/2) / (n + A/2))` with `c` the pair's
//!   count, `n` the context's and `A` the number of distinct levels seen (the
//!   Krichevsky-Trofimov estimator). The key's tail calibration turns it into a score.
//!
//! State per key: the warm-up values until the quantisation is fixed, then at most
//! [`MAX_ENTRIES`] counts (about 20 bytes each); about 6 KB with the defaults after NAB's
//! machine-temperature series (the key's calibration window, 32 KB, comes on top).

use std::collections::BTreeMap;

/// Longest context the memory can hold, in previous levels.
pub const MAX_ORDER: usize = 4;
/// Levels are clamped to `-LEVEL_LIMIT..=LEVEL_LIMIT` (bins beyond the warm-up range included).
pub const LEVEL_LIMIT: i32 = 255;
/// Counts kept per key before they are halved.
pub const MAX_ENTRIES: usize = 4096;
/// Times a context must have been seen before it predicts.
pub const MIN_CONTEXT_EVENTS: u32 = 2;

/// Settings of the contextual detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextualConfig {
    /// Equal-width levels over the warm-up range.
    pub levels: u32,
    /// Longest context, in previous levels (at most [`MAX_ORDER`], checked when the rule is
    /// compiled).
    pub order: usize,
    /// Values that fix the quantisation before it scores (at least 2).
    pub warmup_events: usize,
}

/// Per-key state of the contextual detector.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Contextual {
    /// Values before the quantisation is fixed; emptied after.
    warmup: Vec<f64>,
    /// Lower edge of level 0.
    anchor: f64,
    /// Level width; 0 until the warm-up ends.
    step: f64,
    /// The last levels, oldest first (at most [`MAX_ORDER`]).
    history: Vec<i16>,
    /// Counts of contexts and of (context, level) pairs, by [`key`].
    counts: BTreeMap<u64, u32>,
    /// Distinct levels among the counts.
    alphabet: u32,
}

/// Bits of one level in a key (levels offset by [`LEVEL_LIMIT`] + 1 into `0..512`).
const LEVEL_BITS: u32 = 9;
/// The "next level" of a context's own count.
const CONTEXT_ONLY: u64 = 1 << LEVEL_BITS;
/// Where a key holds the next level (10 bits) and the order (3 bits); the context levels
/// take the bits below [`NEXT_SHIFT`].
const NEXT_SHIFT: u32 = LEVEL_BITS * MAX_ORDER as u32;
const ORDER_SHIFT: u32 = NEXT_SHIFT + LEVEL_BITS + 1;

/// Exact key of the context of order `k` (the last `k` levels of `history`) followed by
/// `next` (an offset level, or [`CONTEXT_ONLY`]): `k` (3 bits), `next` (10 bits), the context
/// levels (9 bits each, at most 4).
fn key(history: &[i16], k: usize, next: u64) -> u64 {
    let ctx = history[history.len() - k..]
        .iter()
        .fold(0u64, |acc, &l| (acc << LEVEL_BITS) | offset(l));
    ((k as u64) << ORDER_SHIFT) | (next << NEXT_SHIFT) | ctx
}

/// Whether `key` counts a level after the empty context (one per distinct level seen).
fn is_level_count(key: u64) -> bool {
    key >> ORDER_SHIFT == 0 && (key >> NEXT_SHIFT) & ((1 << (LEVEL_BITS + 1)) - 1) != CONTEXT_ONLY
}

fn offset(level: i16) -> u64 {
    (i32::from(level) + LEVEL_LIMIT + 1) as u64
}

impl Contextual {
    /// Scores `x` from the events before it, then learns it. `None` during the warm-up and
    /// for non-finite values (not learned).
    pub fn update(&mut self, cfg: &ContextualConfig, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        if self.step <= 0.0 {
            self.warmup.push(x);
            if self.warmup.len() < cfg.warmup_events {
                return None;
            }
            self.fix_levels(cfg);
            return None;
        }
        let level = self.level(x);
        let raw = self.surprise(cfg, level);
        self.learn(cfg, level);
        Some(raw)
    }

    /// Fixes the quantisation from the warm-up values and learns them.
    fn fix_levels(&mut self, cfg: &ContextualConfig) {
        let warmup = std::mem::take(&mut self.warmup);
        let (lo, hi) = warmup
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        // As in CAD OSE, the largest warm-up value starts the level above the range.
        let step = (hi - lo) / f64::from(cfg.levels.max(1));
        // A constant warm-up: levels 1 % of its value wide (any change is then a new level).
        self.step = if step > 0.0 && step.is_finite() {
            step
        } else {
            (lo.abs() * 0.01).max(f64::MIN_POSITIVE)
        };
        self.anchor = lo;
        for v in warmup {
            let level = self.level(v);
            self.learn(cfg, level);
        }
    }

    /// The level of `x`: its bin of width `step` from `anchor`, clamped.
    fn level(&self, x: f64) -> i16 {
        let z = ((x - self.anchor) / self.step).floor();
        z.clamp(-f64::from(LEVEL_LIMIT), f64::from(LEVEL_LIMIT)) as i16
    }

    /// Surprise in nats of `level` under the longest context seen at least
    /// [`MIN_CONTEXT_EVENTS`] times.
    fn surprise(&self, cfg: &ContextualConfig, level: i16) -> f64 {
        let alphabet = f64::from(self.alphabet.max(2));
        for k in (0..=self.longest(cfg)).rev() {
            let n = self.count(key(&self.history, k, CONTEXT_ONLY));
            if n >= MIN_CONTEXT_EVENTS {
                let c = self.count(key(&self.history, k, offset(level)));
                return -((f64::from(c) + 0.5) / (f64::from(n) + 0.5 * alphabet)).ln();
            }
        }
        0.0
    }

    /// The longest context the history holds now, in levels.
    fn longest(&self, cfg: &ContextualConfig) -> usize {
        cfg.order.min(self.history.len())
    }

    fn count(&self, key: u64) -> u32 {
        self.counts.get(&key).copied().unwrap_or(0)
    }

    /// Counts `level` after every context of its history, then appends it to the history.
    fn learn(&mut self, cfg: &ContextualConfig, level: i16) {
        for k in 0..=self.longest(cfg) {
            *self
                .counts
                .entry(key(&self.history, k, CONTEXT_ONLY))
                .or_insert(0) += 1;
            let pair = self
                .counts
                .entry(key(&self.history, k, offset(level)))
                .or_insert(0);
            if k == 0 && *pair == 0 {
                self.alphabet += 1;
            }
            *pair += 1;
        }
        if cfg.order > 0 {
            if self.history.len() >= cfg.order {
                self.history.drain(..=self.history.len() - cfg.order);
            }
            self.history.push(level);
        }
        if self.counts.len() > MAX_ENTRIES {
            self.counts.retain(|_, c| {
                *c /= 2;
                *c > 0
            });
            self.alphabet = self.counts.keys().filter(|&&k| is_level_count(k)).count() as u32;
        }
    }

    /// Approximate bytes held (a sorted-map entry taken as 20 bytes).
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.warmup.capacity() * 8
            + self.history.capacity() * 2
            + self.counts.len() * 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::TestNoise;
    use proptest::prelude::*;

    fn cfg() -> ContextualConfig {
        ContextualConfig {
            levels: 12,
            order: 2,
            warmup_events: 150,
        }
    }

    #[test]
    fn it_warms_up_then_scores_and_skips_non_finite_values() {
        let mut d = Contextual::default();
        for i in 0..149 {
            assert_eq!(d.update(&cfg(), f64::from(i % 10)), None, "event {i}");
        }
        assert_eq!(
            d.update(&cfg(), 3.0),
            None,
            "the 150th value ends the warm-up"
        );
        assert!(d.update(&cfg(), 4.0).is_some());
        assert_eq!(d.update(&cfg(), f64::NAN), None);
        assert_eq!(d.update(&cfg(), f64::INFINITY), None);
    }

    #[test]
    fn a_learned_cycle_is_unsurprising_and_a_break_in_its_order_is() {
        // A cycle low, middle, high (period 3): after (middle, high) always comes low.
        let mut d = Contextual::default();
        let cycle = |i: usize| [2.0, 13.0, 26.0][i % 3];
        let mut last = f64::NAN;
        for i in 0..2000 {
            if let Some(r) = d.update(&cfg(), cycle(i)) {
                last = r;
            }
        }
        assert!(last < 0.1, "a learned step scores low: {last}");
        // The last two were low and middle (i = 1998, 1999), so high comes next; a low value
        // is ordinary for the series but breaks the order.
        let ordinary = d.clone().update(&cfg(), cycle(2000)).unwrap();
        let broken = d.update(&cfg(), 2.0).unwrap();
        assert!(
            broken > ordinary + 3.0,
            "out of order {broken} vs in order {ordinary}"
        );
    }

    #[test]
    fn a_value_beyond_every_earlier_one_is_among_its_most_surprising() {
        let mut d = Contextual::default();
        let mut noise = TestNoise::new(3);
        let mut raws: Vec<f64> = (0..3000)
            .filter_map(|_| d.update(&cfg(), noise.normal()))
            .collect();
        raws.sort_by(f64::total_cmp);
        let p99 = raws[raws.len() * 99 / 100];
        let spike = d.update(&cfg(), 100.0).unwrap();
        assert!(spike > p99, "spike {spike} vs 99th percentile {p99}");
    }

    #[test]
    fn the_memory_stays_bounded_on_values_that_never_repeat_their_order() {
        let mut d = Contextual::default();
        let cfg = ContextualConfig {
            levels: 200,
            order: 4,
            warmup_events: 10,
        };
        let mut noise = TestNoise::new(11);
        for _ in 0..200_000 {
            d.update(&cfg, noise.uniform() * 1000.0);
            assert!(d.counts.len() <= MAX_ENTRIES + 2 * (MAX_ORDER + 1));
        }
        assert!(d.state_bytes() < 128 * 1024, "{} bytes", d.state_bytes());
    }

    proptest! {
        #[test]
        fn raw_outputs_are_finite_and_non_negative(
            values in proptest::collection::vec(-1e300f64..1e300, 0..400),
            levels in 1u32..64,
            order in 0usize..=MAX_ORDER,
        ) {
            let cfg = ContextualConfig { levels, order, warmup_events: 20 };
            let mut d = Contextual::default();
            for v in values {
                if let Some(r) = d.update(&cfg, v) {
                    prop_assert!(r.is_finite() && r >= 0.0, "{r}");
                }
            }
        }
    }
}
