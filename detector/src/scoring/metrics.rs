//! Metrics of the model scoring stage, per AnomalyModel (label `model`). The names are owned
//! here and registered into the detector's registry by [`crate::telemetry::Metrics`]:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `vigil_model_scoring_degraded` | gauge | 1 while windows of the model cannot be scored (circuit open, or the last batch failed after retries), else 0 |
//! | `vigil_model_scoring_windows_total{outcome}` | counter | key windows by outcome of a scoring attempt: `scored`, `failed` (after retries), `skipped` (circuit open), `unrouted` (no model server for the model), `dropped` (given up: the backlog bound was reached, the server rejected the request, or the detector stopped first). In the detector a `failed` or `skipped` window waits in the backlog and is tried again, so one window can count more than once before `scored` or `dropped` |
//! | `vigil_model_scoring_backlog_windows` | gauge | key windows waiting to be scored (queued, in flight, or waiting for the model server to recover) |
//! | `vigil_model_scoring_errors_total{kind}` | counter | failed inference attempts: `transient` (unreachable, overloaded), `timeout` (deadline), `request` (rejected request, not retried) |
//! | `vigil_model_scoring_circuit_opened_total` | counter | times the circuit breaker opened |
//! | `vigil_model_scoring_batch_duration_seconds` | histogram | wall time of one scored batch, retries included |
//! | `vigil_model_scoring_batch_rows` | histogram | rows (keys) per batch |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// AnomalyModel name.
    pub model: String,
}

/// Labels of a model and an outcome or error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelOutcomeLabels {
    /// AnomalyModel name.
    pub model: String,
    /// See the module table.
    pub outcome: &'static str,
}

/// Labels of a model and an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelErrorLabels {
    /// AnomalyModel name.
    pub model: String,
    /// `transient`, `timeout` or `request`.
    pub kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 100 µs .. ~52 s in factors of 2.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

fn rows_histogram() -> Histogram {
    // 1 .. 65,536 rows in factors of 2.
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

/// The scoring stage's metrics; clones share the series.
#[derive(Clone, Debug)]
pub struct ScoringMetrics {
    degraded: Family<ModelLabels, Gauge>,
    backlog: Gauge,
    windows: Family<ModelOutcomeLabels, Counter>,
    errors: Family<ModelErrorLabels, Counter>,
    circuit_opened: Family<ModelLabels, Counter>,
    batch_duration: HistogramFamily<ModelLabels>,
    batch_rows: HistogramFamily<ModelLabels>,
}

impl Default for ScoringMetrics {
    fn default() -> Self {
        Self {
            degraded: Family::default(),
            backlog: Gauge::default(),
            windows: Family::default(),
            errors: Family::default(),
            circuit_opened: Family::default(),
            batch_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            batch_rows: Family::new_with_constructor(rows_histogram as fn() -> Histogram),
        }
    }
}

impl ScoringMetrics {
    /// Registers every series under `model_scoring_` in `registry` (whose prefix, `vigil`,
    /// completes the names of the module table).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("model_scoring");
        r.register(
            "degraded",
            "1 while windows of the model cannot be scored (circuit open or the last batch failed)",
            self.degraded.clone(),
        );
        r.register(
            "windows",
            "Key windows by outcome of a scoring attempt (scored, failed, skipped, unrouted, dropped)",
            self.windows.clone(),
        );
        r.register(
            "backlog_windows",
            "Key windows waiting to be scored (queued, in flight, or waiting for the model server)",
            self.backlog.clone(),
        );
        r.register(
            "errors",
            "Failed inference attempts, by kind (transient, timeout, request)",
            self.errors.clone(),
        );
        r.register(
            "circuit_opened",
            "Times the model server circuit breaker opened",
            self.circuit_opened.clone(),
        );
        r.register_with_unit(
            "batch_duration",
            "Wall time of one scored batch, retries included",
            Unit::Seconds,
            self.batch_duration.clone(),
        );
        r.register(
            "batch_rows",
            "Rows (key windows) per scored batch",
            self.batch_rows.clone(),
        );
    }

    fn labels(model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }

    /// Sets the degraded gauge of `model`.
    pub fn set_degraded(&self, model: &str, degraded: bool) {
        self.degraded
            .get_or_create(&Self::labels(model))
            .set(i64::from(degraded));
    }

    /// Whether `model` is marked degraded.
    pub fn is_degraded(&self, model: &str) -> bool {
        self.degraded.get_or_create(&Self::labels(model)).get() != 0
    }

    /// Sets the number of key windows waiting to be scored.
    pub fn set_backlog(&self, windows: usize) {
        self.backlog.set(i64::try_from(windows).unwrap_or(i64::MAX));
    }

    /// Key windows waiting to be scored.
    pub fn backlog(&self) -> usize {
        usize::try_from(self.backlog.get()).unwrap_or(0)
    }

    /// `n` key windows of `model` with `outcome`.
    pub fn windows(&self, model: &str, outcome: &'static str, n: usize) {
        self.windows
            .get_or_create(&ModelOutcomeLabels {
                model: model.to_string(),
                outcome,
            })
            .inc_by(n as u64);
    }

    /// Key windows of `model` counted with `outcome` so far.
    pub fn windows_total(&self, model: &str, outcome: &'static str) -> u64 {
        self.windows
            .get_or_create(&ModelOutcomeLabels {
                model: model.to_string(),
                outcome,
            })
            .get()
    }

    /// A failed attempt of `kind`.
    pub fn error(&self, model: &str, kind: &'static str) {
        self.errors
            .get_or_create(&ModelErrorLabels {
                model: model.to_string(),
                kind,
            })
            .inc();
    }

    /// The circuit of `model` opened.
    pub fn circuit_opened(&self, model: &str) {
        self.circuit_opened
            .get_or_create(&Self::labels(model))
            .inc();
    }

    /// One batch of `rows` scored in `seconds`.
    pub fn batch(&self, model: &str, rows: usize, seconds: f64) {
        let l = Self::labels(model);
        self.batch_duration.get_or_create(&l).observe(seconds);
        self.batch_rows.get_or_create(&l).observe(rows as f64);
    }
}
