//! Vigil's detector runtime: the I/O around the pure core ([`vigil_core`]). Records come from a
//! Kafka consumer group, go through [`vigil_core::engine::Engine`], and its outputs go to Kafka.
//!
//! - [`source`] / [`sink`]: the Kafka consumer group and producers around the engine.
//! - [`scoring`]: model rules: the engine's feature rows scored on a model server (deadline,
//!   retries, circuit breaker) and applied back to the alert lifecycle.
//! - [`runner`]: the run loop: consume, process, score, produce, commit.
//! - [`telemetry`]: Prometheus metrics of the data path.

pub mod runner;
pub mod scoring;
pub mod sink;
pub mod source;
pub mod telemetry;
