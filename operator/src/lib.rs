//! Vigil's Kubernetes operator: kube-rs controllers that run each StreamPipeline as a
//! StatefulSet of detectors, render its DetectionRules into the detectors' config, and serve
//! each AnomalyModel with vigil-model-server.
//!
//! - [`controller`]: the three reconcilers (dereference -> validate -> build -> apply ->
//!   status) and what they share.
//! - [`apply`]: server-side apply of children and status.
//! - [`kafka`]: partition counts of source topics (replicas are clamped to them).
//! - [`leader`]: leader election with a Lease.
//! - [`metrics`] / [`server`]: Prometheus metrics on `/metrics`, health endpoints.
//! - [`labels`] / [`config`]: names, labels and operator-wide settings.

pub mod apply;
pub mod config;
pub mod controller;
pub mod kafka;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod server;
