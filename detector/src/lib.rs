//! Vigil's data path: events from Kafka are decoded, assigned to event-time windows per key,
//! aggregated into features, evaluated by detection rules and turned into alerts.
//!
//! The stages, each in its own module:
//! - [`decode`]: event bytes -> [`decode::Event`] (key, event time, numeric fields).
//! - [`window`]: tumbling/hopping window assignment, watermarks, allowed lateness.
//! - [`features`]: incremental aggregates per window (count ... p99).
//! - [`rules`]: pure evaluation of detection rules and the alert lifecycle.
//! - [`detectors`]: per-event streaming detectors (seasonal baseline, random cut forest,
//!   change points) and score calibration, used by detector and ensemble rules.
//! - [`engine`]: ties the pure stages together; no I/O, time is passed in.
//! - [`scoring`]: model rules: AnomalyModel feature vectors at window close, scored on a model
//!   server (deadline, retries, circuit breaker) and applied back to the alert lifecycle.
//! - [`source`] / [`sink`]: the Kafka consumer group and producers around the engine.
//! - [`telemetry`]: Prometheus metrics of the data path.
//!
//! [`engine::Engine`] is what both `vigil run` (Kafka) and `vigil score` (a CSV, no Kafka) drive.

pub mod config;
pub mod decode;
pub mod detectors;
pub mod engine;
pub mod features;
pub mod input;
pub mod rules;
pub mod runner;
pub mod scoring;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod window;
