//! Vigil's custom resource types (`vigil.dev/v1alpha1`): the one description of a pipeline, its
//! rules and its models, shared by the operator (as Kubernetes objects) and by the `vigil` command
//! (as YAML files). Nothing here does I/O: parsing helpers and pure validation only.
//!
//! - [`v1alpha1::StreamPipeline`]: Kafka source, event format, event-time windows, sinks.
//! - [`v1alpha1::DetectionRule`]: thresholds, baselines, CEL expressions and model rules.
//! - [`v1alpha1::AnomalyModel`]: an ONNX model, its feature contract and rollout.
//! - [`contract`]: the command lines, variables and paths of the binaries the operator runs.

// kube's derive takes one `printcolumn(...)` attribute per column, which clippy reads as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod conditions;
pub mod contract;
pub mod crds;
pub mod manifest;
pub mod v1alpha1;

pub use kube::core::Duration;
