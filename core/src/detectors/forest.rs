//! Online isolation: a Random Cut Forest over shingles of the last `shingle_size` values (Guha,
//! Mishra, Roy and Schrijvers, "Robust random cut forest based anomaly detection on streams",
//! ICML 2016; the algorithm of AWS Kinesis Data Analytics `RANDOM_CUT_FOREST` and OpenSearch
//! anomaly detection). Implemented by the `rcf3` crate (MIT OR Apache-2.0); this module owns
//! the per-key wrapper: shingling is internal to the forest, the value is scored and then
//! inserted, and the raw score (RCF's displacement-based score, about 1 for typical points and
//! growing with isolation) is left to the caller to calibrate.
//!
//! State is bounded by `trees * sample_size` stored shingles per key (the forest's reservoir
//! samples with time decay); the forest is built on the key's first event with a seed derived
//! from the key, so replays are reproducible.

use rcf3::Forest;

/// Settings of the random cut forest.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestConfig {
    /// Values per shingle (the point the forest sees is the last `shingle_size` values).
    pub shingle_size: usize,
    /// Trees in the forest.
    pub trees: usize,
    /// Points sampled per tree.
    pub sample_size: usize,
    /// Events seen before it scores.
    pub min_events: usize,
}

/// Per-key state: the forest, built on the first event.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RandomCutForest {
    forest: Option<Box<Forest>>,
}

impl std::fmt::Debug for RandomCutForest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RandomCutForest")
            .field(
                "entries_seen",
                &self.forest.as_ref().map(|x| x.entries_seen()),
            )
            .finish()
    }
}

/// A forest could not be built or updated (invalid settings reach here only through a bug:
/// they are validated when the rule compiles).
#[derive(Debug, thiserror::Error)]
#[error("random cut forest")]
pub struct ForestError(#[source] pub rcf3::RcfError);

impl RandomCutForest {
    /// Builds a forest for `cfg` to check its settings.
    ///
    /// # Errors
    /// [`ForestError`] from the `rcf3` builder.
    pub fn check(cfg: &ForestConfig) -> Result<(), ForestError> {
        Self::build(cfg, 0).map(|_| ())
    }

    fn build(cfg: &ForestConfig, seed: u64) -> Result<Forest, ForestError> {
        Forest::builder(1)
            .shingle_size(cfg.shingle_size)
            .num_trees(cfg.trees)
            .capacity(cfg.sample_size)
            .internal_shingling(true)
            .seed(seed)
            .build()
            .map_err(ForestError)
    }

    /// Scores `x` (the shingle ending with it), then inserts it. Returns the raw RCF score, or
    /// `None` while fewer than `min_events` events were seen, for a non-finite `x` (ignored) or
    /// if the forest failed.
    pub fn update(&mut self, cfg: &ForestConfig, seed: u64, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        if self.forest.is_none() {
            self.forest = Some(Box::new(Self::build(cfg, seed).ok()?));
        }
        let forest = self.forest.as_mut()?;
        let ready = forest.is_ready() && forest.entries_seen() as usize >= cfg.min_events;
        let point = [x as f32];
        let score = if ready {
            forest.update_and_score(&point).ok()
        } else {
            forest.update(&point).ok().map(|()| 0.0)
        };
        score.filter(|_| ready)
    }

    /// Approximate bytes held: the stored shingles and tree nodes of every tree (the forest
    /// keeps up to `trees * sample_size` points; about 2 nodes of ~48 bytes per point).
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.forest.as_ref().map_or(0, |f| {
                let c = f.config();
                c.num_trees() * c.capacity() * (2 * 48 + 8)
                    + c.num_trees() * c.capacity().min(f.entries_seen() as usize) * c.dim() * 4
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::TestNoise;

    fn cfg() -> ForestConfig {
        ForestConfig {
            shingle_size: 4,
            trees: 30,
            sample_size: 64,
            min_events: 64,
        }
    }

    fn scores(seed: u64) -> Vec<Option<f64>> {
        let c = cfg();
        let mut f = RandomCutForest::default();
        let mut noise = TestNoise::new(17);
        (0..400)
            .map(|i| {
                f.update(
                    &c,
                    seed,
                    if i == 300 {
                        25.0
                    } else {
                        (i as f64 / 10.0).sin() + 0.1 * noise.normal()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn an_isolated_value_scores_higher_than_ordinary_ones() {
        let s = scores(1);
        assert!(s[..64].iter().all(Option::is_none), "warming up");
        let ordinary = s[200..300].iter().flatten().copied().fold(0.0, f64::max);
        let spike = s[300].expect("scored");
        assert!(
            spike > 2.0 * ordinary,
            "spike {spike}, ordinary max {ordinary}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_scores() {
        assert_eq!(scores(42), scores(42));
    }

    #[test]
    fn invalid_settings_are_reported() {
        assert!(RandomCutForest::check(&ForestConfig { trees: 0, ..cfg() }).is_err());
    }
}
