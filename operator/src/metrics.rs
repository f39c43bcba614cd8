//! The operator's Prometheus metrics (served on `/metrics` by `server.rs`). This module owns
//! every metric name:
//!
//! - `vigil_operator_reconcile_total{controller}`: reconciles started.
//! - `vigil_operator_reconcile_errors_total{controller,error}`: reconciles that failed, by
//!   error kind.
//! - `vigil_operator_reconcile_duration_seconds{controller}`: wall time of a reconcile.
//! - `vigil_operator_apply_duration_seconds{controller}`: time to server-side apply the
//!   children of one object.
//! - `vigil_operator_leader`: 1 while this replica holds the leader Lease.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set naming a controller (`stream_pipeline`, `detection_rule`, `anomaly_model`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// Controller name.
    pub controller: String,
}

/// Label set of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Controller name.
    pub controller: String,
    /// Error kind (the `Error` variant, snake case).
    pub error: String,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// Every metric of the operator and the registry they are encoded from.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    apply_duration: HistogramFamily,
    /// 1 while this replica is the leader.
    pub leader: Gauge,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vigil_operator");
        let reconciles = Family::default();
        let errors = Family::default();
        let duration: HistogramFamily = Family::new_with_constructor(seconds_histogram);
        let apply_duration: HistogramFamily = Family::new_with_constructor(seconds_histogram);
        let leader = Gauge::default();
        registry.register("reconcile", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Wall time of a reconcile",
            duration.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time to server-side apply the children of one object",
            apply_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            apply_duration,
            leader,
        }
    }
}

/// Records the duration of a reconcile when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&labels(self.controller))
            .observe(self.start.elapsed().as_secs_f64());
    }
}

fn labels(controller: &str) -> ControllerLabels {
    ControllerLabels {
        controller: controller.to_string(),
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard is dropped.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&labels(controller)).inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn failure(&self, controller: &str, error: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                error: error.to_string(),
            })
            .inc();
    }

    /// Records how long applying one object's children took.
    pub fn applied(&self, controller: &str, since: Instant) {
        self.apply_duration
            .get_or_create(&labels(controller))
            .observe(since.elapsed().as_secs_f64());
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        vigil_telemetry::Exposition::encode(&self.registry)
    }
}

impl vigil_telemetry::Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_encoded_with_their_names() {
        let m = Metrics::default();
        drop(m.reconcile("stream_pipeline"));
        m.failure("stream_pipeline", "apply");
        m.leader.set(1);
        let text = m.encode();
        assert!(
            text.contains("vigil_operator_reconcile_total{controller=\"stream_pipeline\"} 1"),
            "{text}"
        );
        assert!(text.contains("vigil_operator_reconcile_errors_total{controller=\"stream_pipeline\",error=\"apply\"} 1"));
        assert!(text.contains(
            "vigil_operator_reconcile_duration_seconds_count{controller=\"stream_pipeline\"} 1"
        ));
        assert!(text.contains("vigil_operator_leader 1"));
    }
}
