//! Vigil's detector runtime: the I/O around the pure core ([`vigil_core`]). Records come from a
//! Kafka consumer group, go through [`vigil_core::engine::Engine`], and its outputs go to Kafka.
//!
//! - [`source`] / [`sink`]: the Kafka consumer group and producers around the engine.
//! - [`scoring`]: model rules: the engine's feature rows scored on a model server (deadline,
//!   retries, circuit breaker) and applied back to the alert lifecycle.
//! - [`checkpoint`]: where engine snapshots are stored (file:// or s3://), found and retired.
//! - [`driver`]: the engine and the model scorer stepped as process -> score -> apply; the
//!   one sequence the runner, `vigil score` and the tests use.
//! - [`runner`]: the run loop: consume, process, score, produce, commit.
//! - [`supervisor`]: the configuration from manifest files, watched and applied to the
//!   running runner (rules swapped in place, pipeline changes restart it).
//! - [`telemetry`]: Prometheus metrics of the data path.
//! - [`lag`]: stage lag over the last minute against the pipeline's `spec.lag` thresholds.
//! - [`traces`]: the data path's OpenTelemetry spans, from a record's `traceparent` header to
//!   the alert's.

pub mod checkpoint;
pub mod driver;
pub mod enrichment;
pub mod kpi_store;
pub mod lag;
pub mod notify;
pub mod runner;
pub mod scoring;
pub mod sink;
pub mod source;
pub mod supervisor;
pub mod telemetry;
pub mod traces;
