//! `AnomalyModel`: an ONNX model, the feature vector it expects and how its revisions roll out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An anomaly model served over the Open Inference Protocol v2, scored per key at each close of
/// the window tier named in its feature contract.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "AnomalyModel",
    namespaced,
    status = "AnomalyModelStatus",
    shortname = "am",
    category = "vigil",
    derive = "PartialEq",
    doc = "An ONNX anomaly model with its feature contract, threshold and rollout.",
    printcolumn(name = "Revision", type_ = "string", json_path = ".spec.revision"),
    printcolumn(
        name = "Serving",
        type_ = "string",
        json_path = ".status.servingRevision"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnomalyModelSpec {
    /// Revision label of this artifact, e.g. `"3"`; served as the model version.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,18}$')").message("revision is a version number: the model server serves numbered versions"))]
    pub revision: String,
    /// The model file and its digest.
    pub artifact: Artifact,
    /// Model format. Only `Onnx`.
    #[serde(default)]
    pub format: ModelFormat,
    /// Which features, in which order and scale, form the input tensor.
    pub input: FeatureContract,
    /// Which output is the score and when it is anomalous.
    pub output: ModelOutput,
    /// Dynamic batching in the model server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Canary or shadow rollout of a second revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// TLS of the model server's gRPC port; absent: plaintext (restricted to detector pods by
    /// the chart's NetworkPolicy when enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ModelServerTls>,
}

/// TLS between detectors and the model server (rustls). Secrets hold PEM files under the keys
/// cert-manager writes: `tls.crt`, `tls.key`, `ca.crt`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelServerTls {
    /// Secret of the model server: `tls.crt` and `tls.key` (its certificate must name the
    /// Service, `<model>-model-server.<namespace>.svc`), and with `clientAuth` the `ca.crt`
    /// that issued the detectors' client certificates.
    pub secret_name: String,
    /// Secret mounted in detector pods: `ca.crt` verifies the model server; with
    /// `clientAuth`, `tls.crt` and `tls.key` are the detectors' client certificate.
    pub client_secret_name: String,
    /// Mutual TLS: the model server refuses clients without a certificate of its `ca.crt`.
    #[serde(default)]
    pub client_auth: bool,
}

/// A model file.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// Where the file is: `file://`, `configmap://<name>/<key>`, `s3://`, `https://`.
    pub uri: String,
    /// Hex SHA-256 of the file; verified before the model is served.
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("sha256 is 64 lower-case hex digits"))]
    pub sha256: String,
}

/// Model formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModelFormat {
    /// ONNX, run by ONNX Runtime.
    #[default]
    Onnx,
}

/// The input tensor: `[batch, features.len()]` f32, or `[batch, lookback, features.len()]`
/// for sequence models.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureContract {
    /// Input tensor name, e.g. `X`.
    pub tensor: String,
    /// Window tier whose features are scored, e.g. `analysis`.
    pub window: String,
    /// Features in tensor order, as `<field>.<feature>`, e.g. `value.mean`.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one feature is required"))]
    pub features: Vec<String>,
    /// Standardisation `(x - mean) / scale` applied before scoring, one entry per feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// For sequence models: how many consecutive windows of a key form one input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lookback: Option<u32>,
}

/// Per-feature standardisation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Normalization {
    /// Subtracted, per feature.
    pub mean: Vec<f64>,
    /// Divided by, per feature.
    pub scale: Vec<f64>,
}

/// The score output.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelOutput {
    /// Output tensor name, e.g. `scores`.
    pub tensor: String,
    /// Whether higher or lower scores are anomalous.
    #[serde(default)]
    pub anomalous_when: ScoreDirection,
    /// Score past which a window is anomalous.
    pub threshold: f64,
    /// Raw-score distance past the threshold that maps to an anomaly score of
    /// `0.5 + 0.5 * tanh(1)` (about 0.88): Vigil's score is `0.5 + 0.5 * tanh(d / scale)` with
    /// `d` the signed distance past the threshold (positive on the anomalous side), so it is 0.5
    /// at the threshold. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0").message("scale must be positive"))]
    pub scale: Option<f64>,
}

/// Orientation of a model score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ScoreDirection {
    /// Higher is more anomalous (e.g. reconstruction error).
    #[default]
    Above,
    /// Lower is more anomalous (e.g. Isolation Forest `decision_function`).
    Below,
}

/// Dynamic batching.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Batching {
    /// Largest batch. Default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_batch_size: Option<u32>,
    /// Longest a request waits for others, in microseconds. Default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_delay_us: Option<u64>,
}

/// A second revision served beside the stable one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// The candidate revision's artifact.
    pub candidate: CandidateRevision,
    /// `Canary`: a share of keys is scored by the candidate; `Shadow`: the candidate scores
    /// everything but its results are only recorded.
    pub strategy: RolloutStrategy,
    /// Share of keys (0-100) routed to the candidate when `Canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<i32>,
    /// Automatic judgement of the candidate against the stable revision; absent: the rollout
    /// lasts until `kubectl vigil promote|abort` (or a spec change) ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysis>,
}

/// How the operator judges a candidate (the shape of Flagger's canary analysis): every
/// `interval` it compares the windows the candidate scored in that interval with the stable
/// revision's, from the detectors' per-revision counters. One failing check fails the
/// rollout: the candidate gets no more windows, the status says why, an Event is raised.
/// `iterations` passing intervals in a row promote it. Intervals with fewer than `minSamples`
/// candidate windows are inconclusive and neither pass nor fail. Docs: docs/rollouts.md.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutAnalysis {
    /// Length of one analysis interval. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<kube::core::Duration>,
    /// Passing intervals in a row that promote the candidate. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub iterations: Option<i32>,
    /// Candidate windows an interval needs to be judged. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<i64>,
    /// Most the candidate's anomaly rate may be, as a multiple of the stable revision's
    /// (both per 1,000 windows, each with one anomalous window added so a stable rate of zero
    /// still compares). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_anomaly_rate_ratio: Option<f64>,
    /// Most failed windows per scored-or-failed window of the candidate, 0-1. Default 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Most the 99th percentile of the candidate's batch latency may be. Default: no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_p99: Option<kube::core::Duration>,
    /// Longest an analysis may go without reaching a verdict (too few windows, e.g. no
    /// traffic) before it fails, so a stuck rollout does not stay Progressing forever
    /// (Flagger's progress deadline). Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<kube::core::Duration>,
}

/// Defaults of [`RolloutAnalysis`].
pub mod analysis_defaults {
    /// `interval`, seconds.
    pub const INTERVAL_SECS: u64 = 30;
    /// `iterations`.
    pub const ITERATIONS: i32 = 5;
    /// `minSamples`.
    pub const MIN_SAMPLES: i64 = 100;
    /// `maxAnomalyRateRatio`.
    pub const MAX_ANOMALY_RATE_RATIO: f64 = 3.0;
    /// `maxErrorRate`.
    pub const MAX_ERROR_RATE: f64 = 0.05;
    /// `progressDeadline`, seconds.
    pub const PROGRESS_DEADLINE_SECS: u64 = 600;
}

/// The candidate of a rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CandidateRevision {
    /// Revision label (a version number, like `revision`).
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,18}$')").message("revision is a version number: the model server serves numbered versions"))]
    pub revision: String,
    /// The candidate's file.
    pub artifact: Artifact,
}

/// Rollout strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutStrategy {
    /// Route `weight`% of keys to the candidate.
    Canary,
    /// Score with both; only the stable revision alerts.
    Shadow,
}

/// Observed state of an AnomalyModel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnomalyModelStatus {
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision the model server serves as stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_revision: Option<String>,
    /// The revisions served, oldest first, at most [`HISTORY_LIMIT`]: the stable ones (what
    /// `kubectl vigil rollback` can return to) and candidates that failed their analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<RevisionRecord>,
    /// The analysed rollout of `spec.rollout.candidate` (with `spec.rollout.analysis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The last accepted spec change: generation, who applied it, what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<crate::v1alpha1::SpecChange>,
}

/// Where an analysed rollout stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The candidate's revision.
    pub candidate: String,
    /// The candidate's artifact digest: a new artifact under the same revision is a new
    /// rollout.
    pub sha256: String,
    /// `Analysing`, `Promoted` (the candidate serves every key) or `Failed` (the stable
    /// revision serves every key). Final until `spec.rollout.candidate` changes.
    pub phase: RolloutPhase,
    /// Why it is in this phase.
    pub message: String,
    /// Passing intervals in a row.
    pub passed_intervals: i32,
    /// When the analysis started.
    pub started_at: Time,
    /// When it was promoted or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The last judged interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisRecord>,
}

/// Phases of an analysed rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutPhase {
    /// Intervals are being judged.
    Analysing,
    /// The candidate passed and serves every key.
    Promoted,
    /// The candidate failed a check and serves none.
    Failed,
}

/// One judged analysis interval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRecord {
    /// End of the interval.
    pub at: Time,
    /// `Passed`, `Failed` or `Inconclusive`, and why.
    pub verdict: String,
    /// The candidate's figures.
    pub candidate: RevisionFigures,
    /// The stable revision's figures.
    pub stable: RevisionFigures,
}

/// A revision's figures over one interval, summed over the detectors.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionFigures {
    /// Windows scored.
    pub windows: i64,
    /// Windows that could not be scored.
    pub failed: i64,
    /// Scored windows past the threshold, per 1,000 scored windows.
    pub anomaly_rate_per_mille: f64,
    /// Alerts fired on its scores.
    #[serde(default)]
    pub alerts: i64,
    /// 99th percentile of batch latency, ms (upper bound of its histogram bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
}

impl AnomalyModel {
    /// The spec the detectors run: `spec`, except that a rollout whose candidate (revision
    /// and digest) `status.rollout` says `Failed` is dropped (the stable revision serves
    /// every key), and one it says `Promoted` serves the candidate as the stable revision.
    /// The operator never writes `spec`: a failed candidate stays out of traffic until the
    /// spec names another.
    pub fn effective_spec(&self) -> AnomalyModelSpec {
        let mut spec = self.spec.clone();
        let Some(r) = &self.spec.rollout else {
            return spec;
        };
        let Some(st) = self.status.as_ref().and_then(|s| s.rollout.as_ref()) else {
            return spec;
        };
        if st.candidate != r.candidate.revision || st.sha256 != r.candidate.artifact.sha256 {
            return spec;
        }
        match st.phase {
            RolloutPhase::Analysing => {}
            RolloutPhase::Failed => spec.rollout = None,
            RolloutPhase::Promoted => {
                spec.revision = r.candidate.revision.clone();
                spec.artifact = r.candidate.artifact.clone();
                spec.rollout = None;
            }
        }
        spec
    }
}

/// Entries kept in `status.history` (a Deployment's default `revisionHistoryLimit`).
pub const HISTORY_LIMIT: usize = 10;

/// A revision that was served as stable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// `spec.revision` then.
    pub revision: String,
    /// `spec.artifact.uri` then.
    pub uri: String,
    /// `spec.artifact.sha256` then. (Plain fields, not an [`Artifact`]: status needs no CEL
    /// validation, whose estimated cost over a list would exceed the API server's budget.)
    pub sha256: String,
    /// When its rollout completed.
    pub served_at: Time,
    /// When another revision's rollout completed; absent while it is served. For a failed
    /// candidate: when it was taken out of traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_at: Option<Time>,
    /// How it came to be served; absent in records written before outcomes: `Served`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RevisionOutcome>,
}

/// How a revision in `status.history` was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RevisionOutcome {
    /// It was the spec's stable revision and every model-server replica served it.
    Served,
    /// It was a rollout candidate and its analysis promoted it.
    Promoted,
    /// It was a rollout candidate, served to some keys (canary) or beside the stable one
    /// (shadow), and failed its analysis; never a rollback target.
    Failed,
}

impl RevisionRecord {
    /// Whether this revision served as stable at some point (not a failed candidate).
    pub fn was_stable(&self) -> bool {
        self.outcome != Some(RevisionOutcome::Failed)
    }
}
