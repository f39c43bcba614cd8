//! Metrics of the model scoring stage, per AnomalyModel (label `model`). The names are owned
//! here and registered into the detector's registry by [`crate::telemetry::Metrics`]:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `vigil_model_scoring_degraded` | gauge | 1 while windows of the model cannot be scored (circuit open, or the last batch failed after retries), else 0 |
//! | `vigil_model_scoring_windows_total{outcome}` | counter | key windows by outcome of a scoring attempt: `scored`, `failed` (after retries), `skipped` (circuit open), `unrouted` (no model server for the model), `dropped` (given up: the backlog bound was reached, the server rejected the request, or the detector stopped first). In the detector a `failed` or `skipped` window waits in the backlog and is tried again, so one window can count more than once before `scored` or `dropped` |
//! | `vigil_model_scoring_backlog_windows` | gauge | key windows waiting to be scored (queued, in flight, or waiting for the model server to recover) |
//! | `vigil_model_scoring_errors_total{revision,kind}` | counter | failed inference attempts: `transient` (unreachable, overloaded), `timeout` (deadline), `request` (rejected request, not retried) |
//! | `vigil_model_scoring_circuit_opened_total` | counter | times the circuit breaker opened |
//! | `vigil_model_scoring_batch_duration_seconds{revision}` | histogram | wall time of one scored batch, retries included |
//! | `vigil_model_scoring_batch_rows{revision}` | histogram | rows (keys) per batch |
//! | `vigil_model_scoring_revision_windows_total{revision,role,outcome}` | counter | windows per model revision: `role` `served` (its score decides) or `shadow` (scored for comparison only), `outcome` `scored` or `failed` |
//! | `vigil_model_scoring_revision_anomalous_windows_total{revision,role}` | counter | scored windows past the model's threshold (`spec.output`); per 1,000 scored windows this is the revision's anomaly rate |
//! | `vigil_model_scoring_revision_alerts_total{revision,status}` | counter | alert transitions (`firing`, `resolved`) of model rules per revision while a rollout runs (the alerts then carry `revision`); the alert rate per revision |
//! | `vigil_model_scoring_revision_score{revision,role}` | histogram | the windows' scores mapped to [0, 1] (`spec.output.scale`; 0.5 at the threshold) |
//!
//! Every series also has the `model` label. The per-revision series are the evidence a rollout
//! (`spec.rollout`) is judged on: canary and stable side by side, or shadow beside served.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use vigil_api::contract::detector::rollouts::{LATENCY_BOUNDS_MS, RevisionEvidence};

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

/// Labels of a model revision and an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelErrorLabels {
    /// AnomalyModel name.
    pub model: String,
    /// Model version (AnomalyModel revision).
    pub revision: String,
    /// `transient`, `timeout` or `request`.
    pub kind: &'static str,
}

/// Labels of a model revision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    /// AnomalyModel name.
    pub model: String,
    /// Model version (AnomalyModel revision).
    pub revision: String,
}

/// Labels of an alert transition of a model revision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionStatusLabels {
    /// AnomalyModel name.
    pub model: String,
    /// Model version (AnomalyModel revision).
    pub revision: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
}

/// Labels of a model revision in a role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionRoleLabels {
    /// AnomalyModel name.
    pub model: String,
    /// Model version (AnomalyModel revision).
    pub revision: String,
    /// `served` or `shadow`.
    pub role: &'static str,
}

/// Labels of a model revision, role and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionOutcomeLabels {
    /// AnomalyModel name.
    pub model: String,
    /// Model version (AnomalyModel revision).
    pub revision: String,
    /// `served` or `shadow`.
    pub role: &'static str,
    /// `scored` or `failed`.
    pub outcome: &'static str,
}

fn score_histogram() -> Histogram {
    // [0, 1] in steps of 0.05.
    Histogram::new((1..=20).map(|i| f64::from(i) * 0.05))
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
    batch_duration: HistogramFamily<RevisionLabels>,
    batch_rows: HistogramFamily<RevisionLabels>,
    revision_windows: Family<RevisionOutcomeLabels, Counter>,
    revision_anomalous: Family<RevisionRoleLabels, Counter>,
    revision_score: HistogramFamily<RevisionRoleLabels>,
    revision_alerts: Family<RevisionStatusLabels, Counter>,
    evidence: Arc<Mutex<BTreeMap<(String, String), RevisionEvidence>>>,
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
            revision_windows: Family::default(),
            revision_anomalous: Family::default(),
            revision_score: Family::new_with_constructor(score_histogram as fn() -> Histogram),
            revision_alerts: Family::default(),
            evidence: Arc::default(),
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
        r.register(
            "revision_windows",
            "Windows per model revision, by role (served, shadow) and outcome (scored, failed)",
            self.revision_windows.clone(),
        );
        r.register(
            "revision_anomalous_windows",
            "Scored windows past the model's threshold, per revision and role",
            self.revision_anomalous.clone(),
        );
        r.register(
            "revision_alerts",
            "Alert transitions of model rules per revision while a rollout runs, by status (firing, resolved)",
            self.revision_alerts.clone(),
        );
        r.register(
            "revision_score",
            "Window scores mapped to [0, 1] (0.5 at the threshold), per revision and role",
            self.revision_score.clone(),
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

    /// A failed attempt of `kind` on `model` version `revision`.
    pub fn error(&self, model: &str, revision: &str, kind: &'static str) {
        self.errors
            .get_or_create(&ModelErrorLabels {
                model: model.to_string(),
                revision: revision.to_string(),
                kind,
            })
            .inc();
    }

    /// `n` windows of a revision in `role` with `outcome`.
    pub fn revision_windows(
        &self,
        model: &str,
        revision: &str,
        role: &'static str,
        outcome: &'static str,
        n: usize,
    ) {
        self.revision_windows
            .get_or_create(&RevisionOutcomeLabels {
                model: model.to_string(),
                revision: revision.to_string(),
                role,
                outcome,
            })
            .inc_by(n as u64);
        self.with_evidence(model, revision, |e| match outcome {
            "scored" => e.scored += n as u64,
            _ => e.failed += n as u64,
        });
    }

    /// Updates the rollout evidence of `model` version `revision`.
    fn with_evidence(&self, model: &str, revision: &str, f: impl FnOnce(&mut RevisionEvidence)) {
        let mut ev = self.evidence.lock().unwrap_or_else(|e| e.into_inner());
        let e = ev
            .entry((model.to_string(), revision.to_string()))
            .or_insert_with(|| RevisionEvidence {
                model: model.to_string(),
                revision: revision.to_string(),
                latency: vec![0; LATENCY_BOUNDS_MS.len() + 1],
                ..RevisionEvidence::default()
            });
        f(e);
    }

    /// Windows per model revision since start: what `GET /rollouts` answers
    /// ([`vigil_api::contract::detector::rollouts`]).
    pub fn rollout_evidence(&self) -> Vec<RevisionEvidence> {
        let ev = self.evidence.lock().unwrap_or_else(|e| e.into_inner());
        ev.values().cloned().collect()
    }

    /// Windows of a revision in `role` with `outcome` so far.
    pub fn revision_windows_total(
        &self,
        model: &str,
        revision: &str,
        role: &'static str,
        outcome: &'static str,
    ) -> u64 {
        self.revision_windows
            .get_or_create(&RevisionOutcomeLabels {
                model: model.to_string(),
                revision: revision.to_string(),
                role,
                outcome,
            })
            .get()
    }

    /// One scored window of a revision in `role`: its mapped score and whether it passed the
    /// model's threshold.
    pub fn revision_score(
        &self,
        model: &str,
        revision: &str,
        role: &'static str,
        score: f64,
        anomalous: bool,
    ) {
        let l = RevisionRoleLabels {
            model: model.to_string(),
            revision: revision.to_string(),
            role,
        };
        self.revision_score.get_or_create(&l).observe(score);
        if anomalous {
            self.revision_anomalous.get_or_create(&l).inc();
            self.with_evidence(model, revision, |e| e.anomalous += 1);
        }
    }

    /// An alert transition (`firing`, `resolved`) of a model rule scored by `revision`.
    pub fn revision_alert(&self, model: &str, revision: &str, status: &'static str) {
        self.revision_alerts
            .get_or_create(&RevisionStatusLabels {
                model: model.to_string(),
                revision: revision.to_string(),
                status,
            })
            .inc();
        if status == "firing" {
            self.with_evidence(model, revision, |e| e.alerts += 1);
        }
    }

    /// Anomalous windows of a revision in `role` so far.
    pub fn revision_anomalous_total(&self, model: &str, revision: &str, role: &'static str) -> u64 {
        self.revision_anomalous
            .get_or_create(&RevisionRoleLabels {
                model: model.to_string(),
                revision: revision.to_string(),
                role,
            })
            .get()
    }

    /// The circuit of `model` opened.
    pub fn circuit_opened(&self, model: &str) {
        self.circuit_opened
            .get_or_create(&Self::labels(model))
            .inc();
    }

    /// One batch of `rows` of `model` version `revision` scored in `seconds`.
    pub fn batch(&self, model: &str, revision: &str, rows: usize, seconds: f64) {
        let l = RevisionLabels {
            model: model.to_string(),
            revision: revision.to_string(),
        };
        self.batch_duration.get_or_create(&l).observe(seconds);
        self.batch_rows.get_or_create(&l).observe(rows as f64);
        let ms = seconds * 1000.0;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.with_evidence(model, revision, |e| e.latency[bucket] += 1);
    }
}
