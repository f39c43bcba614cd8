//! The model server's Prometheus metrics: every metric name lives here, labelled by model and
//! version, plus the `/metrics` HTTP endpoint (text exposition format).
//!
//! Other modules record through [`VersionMetrics`] handles created once per loaded version, so the
//! request path does no label hashing or allocation for metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-version metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Model name (`unknown` when the request named no served model).
    pub model: String,
    /// Model version (empty when not resolved).
    pub version: String,
    /// gRPC status code name (`InvalidArgument`, ...).
    pub code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 us .. ~1.6 s in factor-2 steps.
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    // 1 .. 4096 rows.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// All model server metrics, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<VersionLabels, Counter>,
    rows: Family<VersionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    request_duration: HistogramFamily<VersionLabels>,
    queue_duration: HistogramFamily<VersionLabels>,
    compute_duration: HistogramFamily<VersionLabels>,
    batch_rows: HistogramFamily<VersionLabels>,
    ready: Family<VersionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let requests = Family::<VersionLabels, Counter>::default();
        let rows = Family::<VersionLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let request_duration: HistogramFamily<_> = Family::new_with_constructor(latency_histogram);
        let queue_duration: HistogramFamily<_> = Family::new_with_constructor(latency_histogram);
        let compute_duration: HistogramFamily<_> = Family::new_with_constructor(latency_histogram);
        let batch_rows: HistogramFamily<_> = Family::new_with_constructor(batch_histogram);
        let ready = Family::<VersionLabels, Gauge>::default();

        let mut registry = Registry::default();
        registry.register(
            "vigil_model_infer_requests",
            "ModelInfer requests that reached a loaded model version",
            requests.clone(),
        );
        registry.register(
            "vigil_model_infer_rows",
            "Rows (batch-dimension entries) received in ModelInfer requests",
            rows.clone(),
        );
        registry.register(
            "vigil_model_infer_errors",
            "ModelInfer requests answered with an error, by gRPC code",
            errors.clone(),
        );
        registry.register(
            "vigil_model_infer_request_duration_seconds",
            "Time from receiving a ModelInfer request to having its response, seconds",
            request_duration.clone(),
        );
        registry.register(
            "vigil_model_queue_duration_seconds",
            "Time a request waited in the dynamic batcher's queue before its batch ran, seconds",
            queue_duration.clone(),
        );
        registry.register(
            "vigil_model_compute_duration_seconds",
            "ONNX Runtime execution time of one batch, seconds",
            compute_duration.clone(),
        );
        registry.register(
            "vigil_model_batch_rows",
            "Rows per executed batch",
            batch_rows.clone(),
        );
        registry.register(
            "vigil_model_ready",
            "1 when the model version is loaded and ready, 0 when it failed to load",
            ready.clone(),
        );
        Metrics {
            registry,
            requests,
            rows,
            errors,
            request_duration,
            queue_duration,
            compute_duration,
            batch_rows,
            ready,
        }
    }

    /// Handles for one model version.
    pub fn version(&self, model: &str, version: &str) -> VersionMetrics {
        let labels = VersionLabels {
            model: model.to_owned(),
            version: version.to_owned(),
        };
        VersionMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            rows: self.rows.get_or_create(&labels).clone(),
            request_duration: self.request_duration.get_or_create(&labels).clone(),
            queue_duration: self.queue_duration.get_or_create(&labels).clone(),
            compute_duration: self.compute_duration.get_or_create(&labels).clone(),
            batch_rows: self.batch_rows.get_or_create(&labels).clone(),
        }
    }

    /// Counts a failed ModelInfer request.
    pub fn error(&self, model: &str, version: &str, code: tonic::Code) {
        self.errors
            .get_or_create(&ErrorLabels {
                model: model.to_owned(),
                version: version.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Records whether a version is ready (`Some(true)`), failed (`Some(false)`) or gone (`None`).
    pub fn set_ready(&self, model: &str, version: &str, ready: Option<bool>) {
        let labels = VersionLabels {
            model: model.to_owned(),
            version: version.to_owned(),
        };
        match ready {
            Some(r) => {
                self.ready.get_or_create(&labels).set(i64::from(r));
            }
            None => {
                self.ready.remove(&labels);
            }
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        vigil_telemetry::Exposition::encode(&self.registry)
    }

    /// An axum router serving `GET /metrics` and `GET /healthz` (the handler shared by Vigil's
    /// binaries).
    pub fn router(self: Arc<Self>) -> Router {
        vigil_telemetry::router(self)
    }
}

impl vigil_telemetry::Exposition for Metrics {
    fn encode(&self) -> String {
        Self::encode(self)
    }
}

/// Pre-resolved metric handles of one model version.
#[derive(Clone, Debug)]
pub struct VersionMetrics {
    requests: Counter,
    rows: Counter,
    request_duration: Histogram,
    queue_duration: Histogram,
    compute_duration: Histogram,
    batch_rows: Histogram,
}

impl VersionMetrics {
    /// A request reached this version.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// A valid request carried `rows` rows.
    pub fn rows(&self, rows: usize) {
        self.rows.inc_by(rows as u64);
    }

    /// A request finished (successfully or not) after `elapsed`.
    pub fn request_done(&self, elapsed: Duration) {
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// A request waited `waited` in the queue.
    pub fn queued(&self, waited: Duration) {
        self.queue_duration.observe(waited.as_secs_f64());
    }

    /// A batch of `rows` rows took `elapsed` to execute.
    pub fn batch(&self, rows: usize, elapsed: Duration) {
        self.batch_rows.observe(rows as f64);
        self.compute_duration.observe(elapsed.as_secs_f64());
    }
}
