//! Vigil's detection core: everything between record bytes and alerts that needs no I/O. No
//! Kafka, gRPC, HTTP or Kubernetes client lives here, so the detector runtime
//! (`vigil-detector`), the `vigil` command and the operator (`vigil-operator`) all link the
//! same code, and a rule the operator accepts is a rule a detector runs.
//!
//! The stages, each in its own module:
//! - [`config`]: a StreamPipeline spec validated into what the engine runs.
//! - [`decode`]: event bytes -> [`decode::Event`] (key, event time, numeric fields).
//! - [`window`]: tumbling/hopping window assignment, watermarks, allowed lateness.
//! - [`features`]: incremental aggregates per window (count ... p99).
//! - [`rules`]: the one rule contract: compile (every check of a DetectionRule against a
//!   pipeline), evaluate, per-(rule, key) state, alert lifecycle.
//! - [`detectors`]: per-event streaming detectors (seasonal baseline, random cut forest,
//!   change points) and score calibration, used by detector and ensemble rules.
//! - [`model`]: model rules' feature contract and input rows (scored elsewhere).
//! - [`engine`]: ties the pure stages together; no clock (time is passed in).
//! - [`groups`]: entity groupings and the records a group's windows are assembled from.
//! - [`input`]: NAB-style CSV / JSON-lines files as records.

pub mod config;
pub mod decode;
pub mod detectors;
pub mod engine;
pub mod enrichment;
pub mod features;
pub mod groups;
pub mod input;
pub mod model;
pub mod rules;
pub mod window;

/// The W3C `traceparent` of a sampled trace (OpenTelemetry), carried from a record through the
/// windows it lands in to the model inputs and alerts they produce. Opaque here: the detector
/// runtime reads and writes it (`vigil_telemetry::trace`); the engine only carries it.
pub type TraceParent = std::sync::Arc<str>;
