//! `Savepoint`: a named, consistent snapshot of a StreamPipeline's detector state, taken on
//! request (create one) or by the operator before an `upgradeMode: Savepoint` upgrade.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A savepoint of a StreamPipeline: the operator asks every detector of the pipeline for its
/// part (`POST /savepoints/<name>` on the metrics port), each writes the state of the
/// partitions it owns under `<checkpointing.location>/<pipeline>/savepoints/<name>/`, and the
/// status records the outcome. A pipeline starts from one with
/// `spec.checkpointing.restoreFrom: <name>`. Deleting the resource does not delete the files.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "Savepoint",
    namespaced,
    status = "SavepointStatus",
    shortname = "svp",
    category = "vigil",
    derive = "PartialEq",
    doc = "A named snapshot of a StreamPipeline's detector state.",
    printcolumn(name = "Pipeline", type_ = "string", json_path = ".spec.pipeline"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavepointSpec {
    /// The StreamPipeline, in the same namespace. It needs `spec.checkpointing`.
    #[x_kube(validation = Rule::new("self == oldSelf").message("pipeline is immutable"))]
    pub pipeline: String,
}

/// Where a savepoint is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SavepointPhase {
    /// Not started.
    #[default]
    Pending,
    /// The detectors are writing their parts.
    InProgress,
    /// Every detector wrote its part.
    Completed,
    /// A detector could not; `message` says which and why. Not retried: create another.
    Failed,
}

/// One detector's part.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointPart {
    /// The detector pod.
    pub pod: String,
    /// `topic/partition@offset` of each partition it held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
    /// Entity keys.
    pub keys: i64,
    /// Bytes of its `state.bin`.
    pub bytes: i64,
}

/// Observed state of a Savepoint, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    /// Pending, InProgress, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SavepointPhase>,
    /// Object-store URL of the savepoint's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Total bytes of the parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// When it completed (or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// `metadata.generation` of the pipeline whose detectors took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_generation: Option<i64>,
    /// One per detector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<SavepointPart>,
    /// Why it failed, naming the detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
