//! Per-event detectors and ensembles of a `DetectionRule` (`spec.detector`, `spec.ensemble`):
//! streaming models that score every event of a field online, and a rule that combines the
//! scores of other rules. Every score is in [0, 1] on one scale, the *surprise* of the event:
//! `min(1, -log10(p) / 10)` where `p` is how rare the event is for this key (0.3: one in a
//! thousand, 0.5: one in 100 000).

use kube::KubeSchema;
use kube::core::Duration;
use serde::{Deserialize, Serialize};

/// A streaming detector updated with every event of one numeric field, per key, in arrival
/// order. Each event is scored from the events before it, then learned. Exactly one of
/// `seasonal`, `randomCutForest`, `changePoint` or `contextual` is set. The rule matches a
/// window when an event of the window scored at least `threshold`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("[has(self.seasonal), has(self.randomCutForest), has(self.changePoint), has(self.contextual)].filter(x, x).size() == 1").message("exactly one of seasonal, randomCutForest, changePoint or contextual must be set"))]
pub struct DetectorRule {
    /// Numeric field of the pipeline, e.g. `value`.
    pub field: String,
    /// Robust seasonal baseline: forecasts each event from the same time of earlier days and
    /// weeks, or from the recent level, whichever has forecast this key best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seasonal: Option<SeasonalDetector>,
    /// Random Cut Forest over shingles of recent values: online isolation of unusual shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_cut_forest: Option<RandomCutForestDetector>,
    /// Bayesian online change-point detection: shifts of the mean or variance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_point: Option<ChangePointDetector>,
    /// Contextual novelty: a sequence memory of the field's coarse levels; scores an event by
    /// how rarely its level has followed the key's previous levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contextual: Option<ContextualDetector>,
    /// How the detector's raw output becomes a score (defaults on each field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Score at or above which an event alarms, in [0, 1]. Default 0.5 (one in 100 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: Option<f64>,
    /// After an alarm, the key's events within this event-time span report score 0: the
    /// anomaly has been raised once (de-duplication, like Alertmanager's `repeat_interval`).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
}

/// Robust seasonal baseline. Forecasters: the median of the last `levelEvents` values, and for
/// each period the median over the last `seasons` seasons of the error against the same phase
/// (+/- one bin). The forecaster with the lowest recent mean absolute error is used; the score
/// is the calibrated absolute forecast error.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.periods) || size(self.periods) <= 4").message("at most 4 periods"))]
pub struct SeasonalDetector {
    /// Candidate season lengths, multiples of `resolution`. Default `[24h, 168h]` (the daily
    /// and weekly cycles of machine and human activity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periods: Option<Vec<Duration>>,
    /// Seasons of history per period. Default 3 (the median then ignores one anomalous season).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 52))]
    pub seasons: Option<u32>,
    /// Width of the history bins. Default `5m` (state per key: `max(periods) * seasons /
    /// resolution` bins of 16 bytes: 96 KiB with the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Duration>,
    /// Values in the level forecaster; 0 disables it. Default 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub level_events: Option<u32>,
    /// Span, in events, of each forecaster's exponentially weighted mean absolute error.
    /// Default 288 (one day of 5-minute events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub error_events: Option<u32>,
    /// Events a forecaster must have made before it scores. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_events: Option<u32>,
}

/// Random Cut Forest (Guha et al., ICML 2016) over shingles of the field's last values.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RandomCutForestDetector {
    /// Consecutive values per point. Default 8 (OpenSearch anomaly detection's default shingle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub shingle_size: Option<u32>,
    /// Trees. Default 50 (the AWS RCF library default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 500))]
    pub trees: Option<u32>,
    /// Points sampled per tree. Default 256 (the AWS RCF library default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4, max = 4096))]
    pub sample_size: Option<u32>,
    /// Events learned before it scores. Default `sampleSize` (every tree sampled full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_events: Option<u32>,
}

/// Bayesian online change-point detection (Adams and MacKay 2007), normal model with unknown
/// mean and variance on the standardised field. The raw output is the posterior probability
/// that the mean or variance changed within the last `recentEvents` events.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangePointDetector {
    /// Expected events between changes (the inverse of the constant hazard). Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2.0))]
    pub hazard_events: Option<f64>,
    /// Longest run length tracked (state per key: 40 bytes each). Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 10000))]
    pub max_run_length: Option<u32>,
    /// A change at most this many events back is recent. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub recent_events: Option<u32>,
    /// Span, in events, of the mean and deviation that standardise the field. Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub scale_events: Option<u32>,
}

/// Contextual novelty, a sequence memory in the spirit of the Contextual Anomaly Detector (CAD
/// OSE, NAB 2016) and of variable-order Markov prediction (PPM; Cleary and Witten 1984). The
/// first `warmupEvents` values fix `levels` equal-width levels over their range (values beyond
/// it get further levels of the same width, clamped at +/- 255); the memory counts which level
/// followed each context of the last 0..=`order` levels (at most 4096 counts per key, halved
/// when full). The raw output is the surprise `-ln((c + 1/2) / (n + A/2))` of the event's level
/// under the longest context seen at least twice (`c` pair count, `n` context count, `A`
/// distinct levels: the Krichevsky-Trofimov estimator).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextualDetector {
    /// Equal-width levels over the warm-up range. Default 12 (chosen by leave-one-out on NAB's
    /// development series, docs/quality.md; CAD OSE uses 8 over the whole file's range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub levels: Option<u32>,
    /// Longest context, in previous levels; 0 scores the level's overall rarity. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 4))]
    pub order: Option<u32>,
    /// Values that fix the levels before it scores. Default 150.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 100000))]
    pub warmup_events: Option<u32>,
}

/// Calibration of raw detector outputs into scores, per key: the rarity of the raw output among
/// the key's last `events` raw outputs, with a generalised Pareto tail fitted above the
/// `quantile` (peaks over threshold, as in SPOT: Siffer et al., KDD 2017).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Calibration {
    /// Raw outputs kept per key (8 bytes each, twice). Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 100000))]
    pub events: Option<u32>,
    /// Quantile where the fitted tail starts. Default 0.98 (SPOT's initial threshold level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.5, max = 0.9999))]
    pub quantile: Option<f64>,
    /// Raw outputs needed before it scores. Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_events: Option<u32>,
}

/// How an ensemble combines member scores.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum CombineMethod {
    /// The highest weighted member score (any member can alarm).
    #[default]
    Max,
    /// `sum(weight * score) / sum(weight)` over members that scored the event.
    WeightedMean,
    /// The `votes`-th highest weighted score: the ensemble reaches a threshold exactly when at
    /// least `votes` members do.
    Vote,
}

/// One member of an ensemble.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnsembleMember {
    /// `metadata.name` of another DetectionRule of the same pipelines (not an ensemble). A
    /// member raises no alerts of its own and does not count in `vigil score`: the ensemble
    /// speaks for it.
    pub rule: String,
    /// Weight of its score. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight: Option<f64>,
}

/// Combines the scores other rules give each event. Detector members score the events of
/// their field; window members (threshold, baseline, expression) give the score of the latest
/// window containing the event (`vigil score`) or of their latest fired window (`vigil run`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("size(self.members) >= 1").message("at least one member is required"))]
#[x_kube(validation = Rule::new("!has(self.votes) || self.votes <= size(self.members)").message("votes must not exceed the number of members"))]
#[x_kube(validation = Rule::new("!has(self.votes) || self.combine == 'Vote'").message("votes only applies to combine: Vote"))]
pub struct EnsembleRule {
    /// The member rules.
    pub members: Vec<EnsembleMember>,
    /// Combination. Default `Max`.
    #[serde(default)]
    pub combine: CombineMethod,
    /// Members that must agree with `combine: Vote`. Default: a majority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub votes: Option<u32>,
    /// Score at or above which an event alarms, in [0, 1]. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: Option<f64>,
    /// After an alarm, the key's events within this event-time span report score 0. Default:
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
}
