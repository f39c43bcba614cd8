//! Model rules, the pure half: the feature contract of an AnomalyModel compiled against one
//! pipeline (which window features, in which order and scale, form the model's input row; how
//! many consecutive windows of a key a sequence model reads; how a raw model score maps to
//! Vigil's anomaly score in [0, 1] and a match) and the [`ModelInput`] rows the engine emits at
//! window close. Scoring them on a model server (gRPC, retries, breaker) is the detector
//! runtime's job (`vigil_detector::scoring`); this module never looks at the network.

use std::collections::VecDeque;
use std::sync::Arc;

use vigil_api::v1alpha1::{AnomalyModel, Feature, RolloutStrategy, ScoreDirection};

use crate::config::{FieldTable, InvalidSpec, PipelineConfig};
use crate::rules::WindowView;
use crate::window::KeyId;

/// The input of one model rule for one key's closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    /// Index of the rule in the engine's rule set when the window closed.
    pub rule: usize,
    /// `metadata.name` of that rule (scores for a rule replaced meanwhile are dropped).
    pub rule_name: String,
    /// The model's contract (model name and version on the server, row length).
    pub contract: Arc<ModelContract>,
    /// The key's state id in the engine.
    pub key_id: KeyId,
    /// Entity key.
    pub key: Box<str>,
    /// Start of the newest window of the input, epoch ms.
    pub window_start: i64,
    /// End (exclusive) of the newest window, epoch ms.
    pub window_end: i64,
    /// The row sent to the model: `lookback * features` normalised values, oldest window
    /// first, features in contract order.
    pub values: Vec<f32>,
    /// Raw (not normalised) features of the newest window in contract order, for the alert.
    pub raw_features: Vec<f64>,
    /// Scored by the rollout's candidate revision instead of the stable one (canary keys).
    pub candidate: bool,
    /// Also scored by the candidate revision, for comparison only (shadow rollout).
    pub shadow: bool,
    /// Processing time (epoch ms) at which the window closed: the start of the detector's
    /// `closed_to_scored` stage (scoring backlog and inference).
    pub closed_ms: i64,
    /// The trace of a traced event in the window, when one is (see [`crate::TraceParent`]).
    pub trace: Option<crate::TraceParent>,
}

impl ModelInput {
    /// The model version on the server whose score decides this window.
    pub fn version(&self) -> &str {
        match (&self.contract.rollout, self.candidate) {
            (Some(r), true) => &r.candidate,
            _ => &self.contract.version,
        }
    }
}

/// A second revision served beside the stable one (`spec.rollout`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRollout {
    /// `spec.rollout.candidate.revision`: its version on the model server.
    pub candidate: String,
    /// Canary: the percentage of keys (0..=100) the candidate scores; `None`: shadow (the
    /// candidate scores every window beside the stable revision and alerts on none).
    pub canary_weight: Option<u8>,
}

/// The 64-bit FNV-1a hash of a key: stable across processes, restarts and versions (the
/// seed of a key's randomised detectors, and its canary bucket).
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A key's canary bucket, 0..100: [`key_hash`] modulo 100, so a key stays with one revision
/// for a rollout's life.
pub fn canary_bucket(key: &str) -> u8 {
    (key_hash(key) % 100) as u8
}

/// Most windows a sequence model may read (`spec.input.lookback`); bounds the per-key state.
pub const MAX_LOOKBACK: usize = 1024;

/// Default of `spec.output.scale` when unset: one raw-score unit past the threshold maps to
/// `0.5 + 0.5 * tanh(1) = 0.88`.
pub const DEFAULT_SCORE_SCALE: f64 = 1.0;

/// An AnomalyModel's contract, validated against a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelContract {
    /// `metadata.name` of the AnomalyModel: the model name on the model server.
    pub model: String,
    /// `spec.revision`: the model version on the model server.
    pub version: String,
    /// Index of the window tier (`spec.input.window`) in the pipeline.
    pub tier: usize,
    /// Distance between consecutive window starts of that tier, ms.
    pub slide_ms: i64,
    /// Input features in tensor order: (field id, feature).
    pub features: Vec<(u16, Feature)>,
    /// The same, as `<field>.<feature>` (alert feature names).
    pub feature_names: Vec<String>,
    /// Per-feature `(mean, scale)` of `spec.input.normalization`; empty: none.
    pub normalization: Vec<(f64, f64)>,
    /// Consecutive windows per input (`spec.input.lookback`, default 1).
    pub lookback: usize,
    /// Raw score at which a window becomes anomalous (`spec.output.threshold`).
    pub threshold: f64,
    /// Which side of the threshold is anomalous (`spec.output.anomalousWhen`).
    pub anomalous_when: ScoreDirection,
    /// Raw-score distance that maps to `0.5 + 0.5 * tanh(1)` (`spec.output.scale`).
    pub scale: f64,
    /// `spec.rollout`: the candidate revision and how windows are routed to it.
    pub rollout: Option<ModelRollout>,
}

impl ModelContract {
    /// Compiles `model` against a pipeline. Fields named by the contract are interned into
    /// `table` when it is open (narrow events), as rule fields are.
    ///
    /// # Errors
    /// [`InvalidSpec`] whose field is a path inside the AnomalyModel (`spec.input.features[3]`):
    /// a window or field the pipeline does not have, a feature it does not compute, a
    /// normalization of the wrong length or with a zero scale, a lookback outside
    /// `1..=`[`MAX_LOOKBACK`], a non-finite threshold or a non-positive scale.
    pub fn compile(
        model: &AnomalyModel,
        cfg: &PipelineConfig,
        table: &mut FieldTable,
    ) -> Result<Self, InvalidSpec> {
        let spec = &model.spec;
        let input = &spec.input;
        let tier = cfg.tier(&input.window).ok_or_else(|| {
            let names: Vec<_> = cfg.tiers.iter().map(|t| t.name.as_str()).collect();
            InvalidSpec::new(
                "spec.input.window",
                format!(
                    "window `{}` is not one of the pipeline's windows ({})",
                    input.window,
                    names.join(", ")
                ),
            )
        })?;
        if input.features.is_empty() {
            return Err(InvalidSpec::new(
                "spec.input.features",
                "at least one feature is required",
            ));
        }
        let mut features = Vec::with_capacity(input.features.len());
        for (i, name) in input.features.iter().enumerate() {
            let at = format!("spec.input.features[{i}]");
            let (field, feature) = name.rsplit_once('.').ok_or_else(|| {
                InvalidSpec::new(&at, format!("`{name}` is not `<field>.<feature>`"))
            })?;
            let feature: Feature = feature
                .parse()
                .map_err(|e: String| InvalidSpec::new(&at, e))?;
            if !cfg.features.contains(&feature) {
                return Err(InvalidSpec::new(
                    &at,
                    format!("feature `{feature}` is not computed by the pipeline (spec.features)"),
                ));
            }
            let id = table
                .get(field)
                .or_else(|| table.intern(field))
                .ok_or_else(|| {
                    InvalidSpec::new(
                        &at,
                        format!("field `{field}` is not a field of the pipeline"),
                    )
                })?;
            features.push((id, feature));
        }
        let normalization = match &input.normalization {
            None => Vec::new(),
            Some(n) => {
                for (what, v) in [("mean", &n.mean), ("scale", &n.scale)] {
                    if v.len() != features.len() {
                        return Err(InvalidSpec::new(
                            format!("spec.input.normalization.{what}"),
                            format!("has {} entries for {} features", v.len(), features.len()),
                        ));
                    }
                }
                if let Some(i) = n.mean.iter().position(|m| !m.is_finite()) {
                    return Err(InvalidSpec::new(
                        format!("spec.input.normalization.mean[{i}]"),
                        "must be a finite number",
                    ));
                }
                if let Some(i) = n.scale.iter().position(|s| !(s.is_finite() && *s != 0.0)) {
                    return Err(InvalidSpec::new(
                        format!("spec.input.normalization.scale[{i}]"),
                        "must be a finite, non-zero number",
                    ));
                }
                n.mean
                    .iter()
                    .copied()
                    .zip(n.scale.iter().copied())
                    .collect()
            }
        };
        let lookback = input.lookback.unwrap_or(1) as usize;
        if !(1..=MAX_LOOKBACK).contains(&lookback) {
            return Err(InvalidSpec::new(
                "spec.input.lookback",
                format!("must be in 1..={MAX_LOOKBACK}"),
            ));
        }
        let out = &spec.output;
        if !out.threshold.is_finite() {
            return Err(InvalidSpec::new(
                "spec.output.threshold",
                "must be a finite number",
            ));
        }
        let scale = out.scale.unwrap_or(DEFAULT_SCORE_SCALE);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(InvalidSpec::new(
                "spec.output.scale",
                "must be a positive number",
            ));
        }
        let rollout = match &spec.rollout {
            None => None,
            Some(r) => Some(ModelRollout {
                candidate: r.candidate.revision.clone(),
                canary_weight: match r.strategy {
                    RolloutStrategy::Shadow => None,
                    RolloutStrategy::Canary => {
                        let w = r.weight.ok_or_else(|| {
                            InvalidSpec::new("spec.rollout.weight", "required for a Canary rollout")
                        })?;
                        Some(u8::try_from(w).ok().filter(|w| *w <= 100).ok_or_else(|| {
                            InvalidSpec::new(
                                "spec.rollout.weight",
                                format!("{w} is not a percentage (0..=100)"),
                            )
                        })?)
                    }
                },
            }),
        };
        Ok(Self {
            rollout,
            model: model.metadata.name.clone().unwrap_or_default(),
            version: spec.revision.clone(),
            tier,
            slide_ms: cfg.tiers[tier].slide_ms,
            feature_names: features
                .iter()
                .map(|(id, f)| format!("{}.{}", table.name(*id), f))
                .collect(),
            features,
            normalization,
            lookback,
            threshold: out.threshold,
            anomalous_when: out.anomalous_when,
            scale,
        })
    }

    /// How `key`'s windows are scored during a rollout: `(candidate, shadow)` of
    /// [`ModelInput`]. Canary: the keys whose [`canary_bucket`] is below the weight go to the
    /// candidate; shadow: every window is also scored by the candidate.
    pub fn route(&self, key: &str) -> (bool, bool) {
        match &self.rollout {
            None => (false, false),
            Some(ModelRollout {
                canary_weight: Some(w),
                ..
            }) => (canary_bucket(key) < *w, false),
            Some(ModelRollout {
                canary_weight: None,
                ..
            }) => (false, true),
        }
    }

    /// Values per input row as the model server sees it: `lookback * features`.
    pub fn row_len(&self) -> usize {
        self.lookback * self.features.len()
    }

    /// The window's features in contract order, raw (before normalization). `None` when one is
    /// undefined (NaN: its field had no event in the window, or a quantile without a sketch).
    pub fn raw_features(&self, view: &WindowView<'_>) -> Option<Vec<f64>> {
        self.features
            .iter()
            .map(|&(field, feature)| {
                view.field(field)
                    .map(|f| f.get(feature))
                    .filter(|x| x.is_finite())
            })
            .collect()
    }

    /// Normalises raw features into an f32 row: `(x - mean) / scale` per feature when the
    /// contract has a normalization, `x` otherwise.
    pub fn normalise(&self, raw: &[f64]) -> Vec<f32> {
        if self.normalization.is_empty() {
            return raw.iter().map(|&x| x as f32).collect();
        }
        raw.iter()
            .zip(&self.normalization)
            .map(|(&x, &(mean, scale))| ((x - mean) / scale) as f32)
            .collect()
    }

    /// Feeds the window that just closed for one key and returns the model input once the key
    /// has `lookback` consecutive windows (at once when `lookback` is 1).
    pub fn on_window(&self, view: &WindowView<'_>, state: &mut ModelState) -> WindowVector {
        let Some(raw) = self.raw_features(view) else {
            // A hole breaks the sequence: the next input starts from fresh windows.
            state.sequence.clear();
            return WindowVector::Undefined;
        };
        let row = self.normalise(&raw);
        if self.lookback == 1 {
            return WindowVector::Ready { values: row, raw };
        }
        match state.sequence.back() {
            Some((prev, _)) if *prev + self.slide_ms == view.start => {}
            // Not the next window of the tier (a gap, or a rule restarted): start again.
            Some(_) => state.sequence.clear(),
            None => {}
        }
        state
            .sequence
            .push_back((view.start, row.into_boxed_slice()));
        while state.sequence.len() > self.lookback {
            state.sequence.pop_front();
        }
        if state.sequence.len() < self.lookback {
            return WindowVector::Filling;
        }
        let mut values = Vec::with_capacity(self.row_len());
        for (_, r) in &state.sequence {
            values.extend_from_slice(r);
        }
        WindowVector::Ready { values, raw }
    }

    /// Maps a raw model score to `(score, matched)` with `threshold` (the rule's override or
    /// the model's):
    ///
    /// `d = raw - threshold` when higher is anomalous (`Above`), `threshold - raw` when lower
    /// is (`Below`); `score = 0.5 + 0.5 * tanh(d / scale)`, so the score is 0.5 at the
    /// threshold, rises towards 1 past it and falls towards 0 on the normal side, monotonically
    /// in the raw score. `matched` is `d > 0`: strictly past the threshold, as scikit-learn's
    /// `IsolationForest.predict` marks outliers where `decision_function < 0`. A NaN raw score
    /// gives `None`.
    pub fn map_score(&self, raw: f64, threshold: f64) -> Option<(f64, bool)> {
        if raw.is_nan() {
            return None;
        }
        let d = match self.anomalous_when {
            ScoreDirection::Above => raw - threshold,
            ScoreDirection::Below => threshold - raw,
        };
        Some((0.5 + 0.5 * (d / self.scale).tanh(), d > 0.0))
    }
}

/// What closing a window gave for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowVector {
    /// The input row (`lookback * features` values, oldest window first) and the newest
    /// window's raw features.
    Ready {
        /// Normalised values, tensor order.
        values: Vec<f32>,
        /// Raw features of the newest window, contract order.
        raw: Vec<f64>,
    },
    /// A sequence model still collects consecutive windows.
    Filling,
    /// A contract feature is undefined in this window; it is not scored.
    Undefined,
}

/// Per-(model rule, key) state: the newest consecutive windows of a sequence model (at most
/// `lookback`) and the end of the last window whose score was applied.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelState {
    /// (window start, normalised row), oldest first.
    sequence: VecDeque<(i64, Box<[f32]>)>,
    /// End of the last window whose score was applied (scores apply in window-end order).
    pub last_scored_end: Option<i64>,
}

impl ModelState {
    /// Approximate bytes held.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .sequence
                .iter()
                .map(|(_, r)| 24 + r.len() * 4)
                .sum::<usize>()
    }

    /// Windows held for the next sequence.
    pub fn sequence_len(&self) -> usize {
        self.sequence.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureValues;
    use vigil_api::manifest::Manifests;

    const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: p}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {eventTime: {field: t}, wide: {fields: [{name: value}, {name: other}]}}
  windows:
    - {name: fast, size: 10m}
    - {name: analysis, size: 1h}
  features: [count, mean, max]
  sinks: {alerts: {topic: a}}
"#;

    fn model(extra: &str) -> String {
        format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {{name: m}}\nspec:\n  revision: \"3\"\n  artifact: {{uri: file://m.onnx, sha256: {}}}\n  output: {{tensor: s, threshold: 0.5, anomalousWhen: Above}}\n{extra}",
            "0".repeat(64)
        )
    }

    fn compile(input: &str) -> Result<(ModelContract, FieldTable), InvalidSpec> {
        let mut m = Manifests::default();
        m.add_str("p", PIPELINE).unwrap();
        m.add_str("m", &model(input)).unwrap();
        let cfg = PipelineConfig::from_resource(&m.pipelines[0]).unwrap();
        let mut table = FieldTable::for_layout(&cfg.layout);
        ModelContract::compile(&m.models[0], &cfg, &mut table).map(|c| (c, table))
    }

    fn fv(count: f64, mean: f64, max: f64) -> FeatureValues {
        let mut f = FeatureValues([f64::NAN; Feature::ALL.len()]);
        f.0[Feature::Count as usize] = count;
        f.0[Feature::Mean as usize] = mean;
        f.0[Feature::Max as usize] = max;
        f
    }

    const INPUT: &str = "  input: {tensor: X, window: analysis, features: [value.mean]}\n";

    #[test]
    fn a_canary_scores_a_stable_share_of_keys_with_the_candidate() {
        let (c, _) = compile(&format!(
            "{INPUT}  rollout: {{candidate: {{revision: \"4\", artifact: {{uri: file://n.onnx, sha256: {}}}}}, strategy: Canary, weight: 20}}\n",
            "a".repeat(64)
        ))
        .unwrap();
        let keys: Vec<String> = (0..10_000).map(|i| format!("device-{i}")).collect();
        let candidate = keys.iter().filter(|k| c.route(k).0).count();
        assert!(
            (1_800..=2_200).contains(&candidate),
            "{candidate} of 10,000 keys on the candidate at weight 20"
        );
        for k in &keys[..100] {
            assert_eq!(c.route(k), c.route(k), "a key stays with its revision");
            assert_eq!(c.route(k), (canary_bucket(k) < 20, false));
        }
        // The bucket is a fixed function of the key (FNV-1a 64 mod 100; reference values of
        // the published algorithm), so every build and every restarted detector routes a key
        // as before.
        assert_eq!(canary_bucket(""), (0xcbf2_9ce4_8422_2325_u64 % 100) as u8);
        assert_eq!(canary_bucket("a"), (0xaf63_dc4c_8601_ec8c_u64 % 100) as u8);
        assert_eq!(
            canary_bucket("foobar"),
            (0x8594_4171_f739_67e8_u64 % 100) as u8
        );
        let input = |candidate| ModelInput {
            rule: 0,
            rule_name: "r".into(),
            contract: Arc::new(c.clone()),
            key_id: 0,
            key: "k".into(),
            window_start: 0,
            window_end: 1,
            values: vec![],
            raw_features: vec![],
            candidate,
            shadow: false,
            closed_ms: 0,
            trace: None,
        };
        assert_eq!((input(false).version(), input(true).version()), ("3", "4"));
    }

    #[test]
    fn a_shadow_rollout_scores_every_window_with_both_and_a_bad_weight_is_refused() {
        let candidate = format!(
            "candidate: {{revision: \"4\", artifact: {{uri: file://n.onnx, sha256: {}}}}}",
            "a".repeat(64)
        );
        let (c, _) = compile(&format!(
            "{INPUT}  rollout: {{{candidate}, strategy: Shadow}}\n"
        ))
        .unwrap();
        assert_eq!(c.route("any"), (false, true));
        let (plain, _) = compile(INPUT).unwrap();
        assert_eq!(plain.route("any"), (false, false));
        for (rollout, says) in [
            ("strategy: Canary", "required for a Canary rollout"),
            ("strategy: Canary, weight: 101", "101 is not a percentage"),
        ] {
            let e =
                compile(&format!("{INPUT}  rollout: {{{candidate}, {rollout}}}\n")).unwrap_err();
            assert_eq!(e.field, "spec.rollout.weight");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn builds_the_row_in_contract_order_with_normalization() {
        let (c, table) = compile(
            "  input:\n    tensor: X\n    window: analysis\n    features: [other.max, value.count, value.mean]\n    normalization: {mean: [1, 2, 3], scale: [2, 4, 0.5]}\n",
        )
        .unwrap();
        assert_eq!(
            (c.model.as_str(), c.version.as_str(), c.tier, c.lookback),
            ("m", "3", 1, 1)
        );
        assert_eq!(c.feature_names, ["other.max", "value.count", "value.mean"]);
        let fields = [(0, fv(12.0, 5.0, 9.0)), (1, fv(3.0, 7.0, 11.0))];
        let view = WindowView {
            key: "k",
            start: 0,
            end: 3_600_000,
            fields: &fields,
            table: &table,
            attributes: None,
            kpis: &[],
        };
        let mut state = ModelState::default();
        let WindowVector::Ready { values, raw } = c.on_window(&view, &mut state) else {
            panic!("lookback 1 is ready at once")
        };
        assert_eq!(raw, [11.0, 12.0, 5.0]);
        // (11 - 1) / 2, (12 - 2) / 4, (5 - 3) / 0.5
        assert_eq!(values, [5.0, 2.5, 4.0]);
    }

    #[test]
    fn an_undefined_feature_skips_the_window() {
        let (c, table) =
            compile("  input: {tensor: X, window: analysis, features: [value.mean, other.mean]}\n")
                .unwrap();
        let fields = [(0, fv(2.0, 1.0, 1.0))]; // `other` had no event
        let view = WindowView {
            key: "k",
            start: 0,
            end: 1,
            fields: &fields,
            table: &table,
            attributes: None,
            kpis: &[],
        };
        assert_eq!(
            c.on_window(&view, &mut ModelState::default()),
            WindowVector::Undefined
        );
    }

    #[test]
    fn a_sequence_needs_lookback_consecutive_windows_and_restarts_after_a_gap() {
        let (c, table) = compile(
            "  input: {tensor: X, window: analysis, features: [value.mean], lookback: 3}\n",
        )
        .unwrap();
        let hour = 3_600_000;
        let mut state = ModelState::default();
        let mut feed = |start: i64, mean: f64| {
            let fields = [(0, fv(1.0, mean, mean))];
            let view = WindowView {
                key: "k",
                start,
                end: start + hour,
                fields: &fields,
                table: &table,
                attributes: None,
                kpis: &[],
            };
            c.on_window(&view, &mut state)
        };
        assert_eq!(feed(0, 1.0), WindowVector::Filling);
        assert_eq!(feed(hour, 2.0), WindowVector::Filling);
        assert_eq!(
            feed(2 * hour, 3.0),
            WindowVector::Ready {
                values: vec![1.0, 2.0, 3.0],
                raw: vec![3.0]
            }
        );
        assert_eq!(
            feed(3 * hour, 4.0),
            WindowVector::Ready {
                values: vec![2.0, 3.0, 4.0],
                raw: vec![4.0]
            }
        );
        // Hour 4 is missing: the windows before it do not form a sequence with hour 5.
        assert_eq!(feed(5 * hour, 6.0), WindowVector::Filling);
        assert_eq!(feed(6 * hour, 7.0), WindowVector::Filling);
        assert_eq!(
            feed(7 * hour, 8.0),
            WindowVector::Ready {
                values: vec![6.0, 7.0, 8.0],
                raw: vec![8.0]
            }
        );
        assert_eq!(state.sequence_len(), 3, "the state is bounded by lookback");
    }

    #[test]
    fn maps_raw_scores_around_the_threshold_in_both_directions() {
        let (mut c, _) =
            compile("  input: {tensor: X, window: analysis, features: [value.mean]}\n").unwrap();
        c.scale = 0.1;
        // Above: higher is anomalous.
        assert_eq!(c.map_score(0.5, 0.5), Some((0.5, false)));
        let (s, m) = c.map_score(0.6, 0.5).unwrap();
        assert!(m && (s - (0.5 + 0.5 * 1f64.tanh())).abs() < 1e-12, "{s}");
        let (s, m) = c.map_score(0.2, 0.5).unwrap();
        assert!(!m && s < 0.01, "{s}");
        // Below (Isolation Forest decision_function): lower is anomalous.
        c.anomalous_when = ScoreDirection::Below;
        let (s, m) = c.map_score(-0.05, 0.0).unwrap();
        assert!(m && s > 0.5, "{s}");
        let (s, m) = c.map_score(0.05, 0.0).unwrap();
        assert!(!m && s < 0.5, "{s}");
        // A rule's threshold override moves the boundary.
        assert!(!c.map_score(-0.05, -0.1).unwrap().1);
        assert_eq!(c.map_score(f64::NAN, 0.0), None);
        // Monotone in the raw score.
        let scores: Vec<f64> = (-20..=20)
            .map(|i| c.map_score(f64::from(i) * 0.05, 0.0).unwrap().0)
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }

    #[test]
    fn rejects_contracts_the_pipeline_cannot_feed() {
        let cases = [
            (
                "  input: {tensor: X, window: slow, features: [value.mean]}\n",
                "spec.input.window",
            ),
            (
                "  input: {tensor: X, window: analysis, features: [value.p99]}\n",
                "spec.input.features[0]",
            ),
            (
                "  input: {tensor: X, window: analysis, features: [value.mean, nope.mean]}\n",
                "spec.input.features[1]",
            ),
            (
                "  input: {tensor: X, window: analysis, features: [mean]}\n",
                "spec.input.features[0]",
            ),
            (
                "  input: {tensor: X, window: analysis, features: [value.mean], normalization: {mean: [0, 1], scale: [1, 1]}}\n",
                "spec.input.normalization.mean",
            ),
            (
                "  input: {tensor: X, window: analysis, features: [value.mean], normalization: {mean: [0], scale: [0]}}\n",
                "spec.input.normalization.scale[0]",
            ),
            (
                "  input: {tensor: X, window: analysis, features: [value.mean], lookback: 0}\n",
                "spec.input.lookback",
            ),
        ];
        for (input, field) in cases {
            let e = compile(input).expect_err(input);
            assert_eq!(e.field, field, "{input}: {e}");
        }
    }
}
