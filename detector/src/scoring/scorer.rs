//! The I/O half of model scoring: [`ModelScorer`] sends the engine's [`ModelInput`]s to model
//! servers, batched per model across keys, and returns their raw scores.
//!
//! Failure handling, per AnomalyModel:
//! - **Deadline**: every inference attempt (connecting included) is cut off after
//!   [`ScorerConfig::deadline`].
//! - **Retries**: transient failures (unreachable, overloaded, loading, deadline) are retried
//!   up to [`ScorerConfig::retries`] times with jittered exponential backoff (`backon`).
//!   Rejected requests (wrong shape, unknown model) are not retried.
//! - **Circuit breaker** (`failsafe`'s state machine, consecutive-failures policy): after
//!   [`ScorerConfig::breaker_failures`] consecutive failed attempts the circuit opens and the
//!   model's inputs are skipped without a call; after [`ScorerConfig::breaker_open_min`]
//!   (doubling up to [`ScorerConfig::breaker_open_max`] while the server stays down) one batch
//!   is let through (half-open); its success closes the circuit.
//!
//! So one call to [`ModelScorer::score`] blocks at most about
//! `(retries + 1) * deadline + backoff` per model while the server fails, and not at all while
//! the circuit is open. Inputs that cannot be scored are counted ([`ScoringMetrics`]) and
//! handed back ([`ScoreReport::retry`]) unless the server rejected them; the model is marked
//! degraded and a log line says so.
//!
//! The scorer runs its gRPC clients on its own single-threaded Tokio runtime and blocks the
//! calling thread; call it from a plain thread (the scoring worker, `vigil score`), not from
//! inside an async runtime. The detector never calls it from its run loop: it goes through
//! [`crate::scoring::worker::ScoringWorker`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use vigil_api::contract::model_server::{
    CLIENT_TLS_ANNOTATION, TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY,
};
use vigil_api::v1alpha1::AnomalyModel;
use vigil_model_server::client::{ClientError, InferenceClient};

use super::shadow::ShadowVerdict;
use super::{MODEL_SERVER_ANNOTATION, ModelInput, ScoringMetrics};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that scores rows: the v2 gRPC client, or a stand-in in unit tests.
pub trait Inference: Send + Sync {
    /// Scores `rows.len() / row_len` rows of `row_len` values with `model` version `version`;
    /// one value per row, in order.
    fn infer<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        rows: &'a [f32],
        row_len: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>>;

    /// [`Self::infer`] within the trace of `traceparent` (W3C), when the scorer has one;
    /// stand-ins ignore it.
    fn infer_traced<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        rows: &'a [f32],
        row_len: usize,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>> {
        let _ = traceparent;
        self.infer(model, version, rows, row_len)
    }
}

impl Inference for InferenceClient {
    fn infer<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        rows: &'a [f32],
        row_len: usize,
    ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>> {
        Box::pin(InferenceClient::infer(self, model, version, rows, row_len))
    }

    fn infer_traced<'a>(
        &'a self,
        model: &'a str,
        version: &'a str,
        rows: &'a [f32],
        row_len: usize,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>> {
        Box::pin(InferenceClient::infer_traced(
            self,
            model,
            version,
            rows,
            row_len,
            traceparent,
        ))
    }
}

/// Settings of a [`ModelScorer`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScorerConfig {
    /// Longest wait for one inference attempt, connecting included. Default 1 s (a batch of
    /// 1,024 Isolation Forest rows takes about 13 ms on one core, model-server/README.md).
    pub deadline: Duration,
    /// Retries after the first attempt, for transient failures. Default 2.
    pub retries: usize,
    /// First retry delay; doubles per retry (with jitter) up to `backoff_max`. Default 50 ms.
    pub backoff_min: Duration,
    /// Largest retry delay. Default 400 ms.
    pub backoff_max: Duration,
    /// Consecutive failed attempts that open the circuit. Default 3 (one batch with its two
    /// retries).
    pub breaker_failures: u32,
    /// How long the circuit first stays open before a trial batch. Default 1 s.
    pub breaker_open_min: Duration,
    /// Longest open period; the period doubles per failed trial up to this. Default 30 s.
    pub breaker_open_max: Duration,
    /// Most rows per request; larger batches are split. Default 1,024 (the reference models'
    /// `max_batch_size`).
    pub max_batch_rows: usize,
    /// Most key windows the detector's scoring worker holds while the model server is slow
    /// or down (queued, in flight, waiting for re-scoring); beyond it the oldest are dropped
    /// and counted. Default 100,000: five minutes of 20,000 keys on a 1-minute tier; a window
    /// costs about its row (`lookback * features * 4` bytes) plus its raw features and key,
    /// about 0.3 kB for the reference Isolation Forest, so about 30 MB at the bound.
    pub max_backlog: usize,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(1),
            retries: 2,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            breaker_failures: 3,
            breaker_open_min: Duration::from_secs(1),
            breaker_open_max: Duration::from_secs(30),
            max_batch_rows: 1024,
            max_backlog: 100_000,
        }
    }
}

/// Failure to set the scorer up.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// The scorer's Tokio runtime could not be built.
    #[error("failed to start the model scoring runtime")]
    Runtime(#[source] std::io::Error),
    /// The client TLS files of a model server cannot be used.
    #[error("client TLS of AnomalyModel `{model}`: {reason}")]
    Tls {
        /// AnomalyModel name.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// A model server URI does not parse.
    #[error("invalid model server URI `{uri}` for AnomalyModel `{model}`")]
    Endpoint {
        /// AnomalyModel name.
        model: String,
        /// The URI.
        uri: String,
        /// Parser error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Why one batch was not scored.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Unreachable, overloaded or still loading.
    #[error("the model server is unavailable")]
    Transient(#[source] ClientError),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server rejected the request (unknown model or version, wrong shape); not retried.
    #[error("the model server rejected the request")]
    Request(#[source] ClientError),
}

impl BatchError {
    fn is_retryable(&self) -> bool {
        matches!(self, BatchError::Transient(_) | BatchError::Timeout(_))
    }
}

/// One request sent (after retries).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStat {
    /// AnomalyModel name.
    pub model: String,
    /// Rows (key windows) in the request.
    pub rows: usize,
    /// Wall time, retries and backoff included.
    pub elapsed: Duration,
    /// Whether it returned scores.
    pub ok: bool,
}

/// What one [`ModelScorer::score`] call did.
#[derive(Debug, Default)]
pub struct ScoreReport {
    /// Inputs with their raw model scores (grouped by model, in input order within a model).
    pub scored: Vec<(ModelInput, f32)>,
    /// Inputs whose batch failed after retries.
    pub failed: usize,
    /// Inputs skipped without a call because the model's circuit was open.
    pub skipped: usize,
    /// Inputs of models with no model server configured.
    pub unrouted: usize,
    /// Requests sent.
    pub batches: Vec<BatchStat>,
    /// What a shadow candidate said of the windows it scored (evidence only: counted in
    /// [`ScoringMetrics`], recorded on the KPI sink by the detector).
    pub shadow: Vec<ShadowVerdict>,
    /// The inputs that were not scored but may be later: skipped (circuit open) or failed
    /// with a transient error or timeout (not rejected, not unrouted), in input order.
    /// [`crate::scoring::worker::ScoringWorker`] keeps them for re-scoring; a one-shot caller
    /// drops them.
    pub retry: Vec<ModelInput>,
}

/// Open periods of the circuit: `min`, doubling up to `max` (failsafe's own exponential
/// backoff only accepts whole seconds).
#[derive(Debug, Clone)]
struct OpenPeriods {
    next: Duration,
    max: Duration,
}

impl Iterator for OpenPeriods {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        Some(d)
    }
}

/// Logs and metrics of circuit transitions.
#[derive(Debug)]
struct CircuitEvents {
    model: String,
    endpoint: String,
    metrics: ScoringMetrics,
    open: AtomicBool,
}

impl failsafe::Instrument for CircuitEvents {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.metrics.circuit_opened(&self.model);
        self.metrics.set_degraded(&self.model, true);
        if !self.open.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                model = %self.model, endpoint = %self.endpoint,
                "Model scoring is degraded: the model server keeps failing, so this model's windows are skipped while the circuit is open; rule-based detection continues."
            );
        }
    }

    fn on_half_open(&self) {
        tracing::info!(model = %self.model, endpoint = %self.endpoint, "Trying the model server again (circuit half-open).");
    }

    fn on_closed(&self) {
        if self.open.swap(false, Ordering::Relaxed) {
            self.metrics.set_degraded(&self.model, false);
            tracing::info!(model = %self.model, endpoint = %self.endpoint, "Model scoring recovered: the model server answers again.");
        }
    }
}

type Circuit = failsafe::StateMachine<ConsecutiveFailures<OpenPeriods>, CircuitEvents>;

struct Route {
    endpoint: String,
    target: Target,
    client: Arc<dyn Inference>,
    circuit: Circuit,
}

/// Scores [`ModelInput`]s on model servers; see the module docs.
pub struct ModelScorer {
    rt: tokio::runtime::Runtime,
    cfg: ScorerConfig,
    clients: HashMap<Target, Arc<dyn Inference>>,
    routes: HashMap<String, Route>,
    metrics: ScoringMetrics,
    unrouted_logged: HashSet<String>,
    failures_logged: u64,
}

impl std::fmt::Debug for ModelScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: HashMap<&str, &str> = self
            .routes
            .iter()
            .map(|(m, r)| (m.as_str(), r.endpoint.as_str()))
            .collect();
        f.debug_struct("ModelScorer")
            .field("cfg", &self.cfg)
            .field("routes", &routes)
            .finish_non_exhaustive()
    }
}

/// `host:port` -> `http://host:port`; URIs with a scheme are kept.
pub fn endpoint_uri(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Where a model is served: the endpoint URI and the client TLS directory, if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    uri: String,
    /// [`CLIENT_TLS_ANNOTATION`]: `ca.crt` and optionally `tls.crt` + `tls.key`.
    tls_dir: Option<String>,
}

/// `(model, target)` of every model [`ModelScorer::route_models`] routes.
fn wanted_routes(models: &[&AnomalyModel], server: Option<&str>) -> Vec<(String, Target)> {
    let mut wanted = Vec::new();
    for m in models {
        let Some(name) = m.metadata.name.clone() else {
            continue;
        };
        let annotation = |key: &str| {
            m.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        if let Some(endpoint) = server.or(annotation(MODEL_SERVER_ANNOTATION)) {
            wanted.push((
                name,
                Target {
                    uri: endpoint_uri(endpoint),
                    tls_dir: annotation(CLIENT_TLS_ANNOTATION).map(str::to_string),
                },
            ));
        }
    }
    wanted
}

/// The client TLS settings from a [`CLIENT_TLS_ANNOTATION`] directory.
fn client_tls(model: &str, dir: &str) -> Result<ClientTlsConfig, ScoringError> {
    let read = |key: &str| {
        let path = std::path::Path::new(dir).join(key);
        std::fs::read(&path).map_err(|e| ScoringError::Tls {
            model: model.to_string(),
            reason: format!("cannot read {}: {e}", path.display()),
        })
    };
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(TLS_CA_KEY)?));
    let cert = std::path::Path::new(dir).join(TLS_CERT_KEY);
    if cert.exists() {
        cfg = cfg.identity(Identity::from_pem(read(TLS_CERT_KEY)?, read(TLS_KEY_KEY)?));
    }
    Ok(cfg)
}

/// Checks what [`ModelScorer::route_models`] would check, without routing: the URIs parse
/// and the TLS files can be read.
///
/// # Errors
/// [`ScoringError::Endpoint`] for an endpoint that is not a valid URI, [`ScoringError::Tls`]
/// for TLS files that cannot be read.
pub fn check_routes(models: &[&AnomalyModel], server: Option<&str>) -> Result<(), ScoringError> {
    for (model, target) in wanted_routes(models, server) {
        Endpoint::from_shared(target.uri.clone()).map_err(|source| ScoringError::Endpoint {
            model: model.clone(),
            uri: target.uri.clone(),
            source,
        })?;
        if let Some(dir) = &target.tls_dir {
            client_tls(&model, dir)?;
        }
    }
    Ok(())
}

impl ModelScorer {
    /// A scorer with no routes yet, reporting into `metrics`.
    ///
    /// # Errors
    /// [`ScoringError::Runtime`] when its runtime cannot start.
    pub fn new(cfg: ScorerConfig, metrics: ScoringMetrics) -> Result<Self, ScoringError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ScoringError::Runtime)?;
        Ok(Self {
            rt,
            cfg,
            clients: HashMap::new(),
            routes: HashMap::new(),
            metrics,
            unrouted_logged: HashSet::new(),
            failures_logged: 0,
        })
    }

    /// The metrics it reports into.
    pub fn metrics(&self) -> &ScoringMetrics {
        &self.metrics
    }

    /// Its settings.
    pub fn config(&self) -> &ScorerConfig {
        &self.cfg
    }

    /// Routes every model to a model server: `server` (a flag, or an in-process server) when
    /// given, else the model's [`MODEL_SERVER_ANNOTATION`]. Models with neither stay unrouted
    /// (their inputs are counted and dropped). Routes that do not change keep their circuit
    /// state; connections are opened lazily, so a server that is down now does not fail this.
    ///
    /// # Errors
    /// [`ScoringError::Endpoint`] for an endpoint that is not a valid URI.
    pub fn route_models(
        &mut self,
        models: &[&AnomalyModel],
        server: Option<&str>,
    ) -> Result<(), ScoringError> {
        let wanted = wanted_routes(models, server);
        self.routes
            .retain(|model, route| wanted.iter().any(|(m, t)| m == model && *t == route.target));
        for (model, target) in wanted {
            if self.routes.contains_key(&model) {
                continue;
            }
            let client = match self.clients.get(&target) {
                Some(c) => c.clone(),
                None => {
                    let c = self.connect_lazy(&model, &target)?;
                    self.clients.insert(target.clone(), c.clone());
                    c
                }
            };
            self.insert_route(&model, target, client);
        }
        Ok(())
    }

    fn connect_lazy(
        &self,
        model: &str,
        target: &Target,
    ) -> Result<Arc<dyn Inference>, ScoringError> {
        let uri = &target.uri;
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|source| ScoringError::Endpoint {
                model: model.to_string(),
                uri: uri.clone(),
                source,
            })?
            .connect_timeout(self.cfg.deadline)
            .tcp_nodelay(true);
        if let Some(dir) = &target.tls_dir {
            endpoint =
                endpoint
                    .tls_config(client_tls(model, dir)?)
                    .map_err(|e| ScoringError::Tls {
                        model: model.to_string(),
                        reason: e.to_string(),
                    })?;
        }
        // The channel's background task lives on this scorer's runtime.
        let _guard = self.rt.enter();
        Ok(Arc::new(InferenceClient::new(endpoint.connect_lazy())))
    }

    /// Routes `model` to `backend` (named `endpoint` in logs) with a fresh circuit.
    pub fn set_route(&mut self, model: &str, endpoint: &str, backend: Arc<dyn Inference>) {
        let target = Target {
            uri: endpoint.to_string(),
            tls_dir: None,
        };
        self.insert_route(model, target, backend);
    }

    fn insert_route(&mut self, model: &str, target: Target, backend: Arc<dyn Inference>) {
        let endpoint = target.uri.as_str();
        let events = CircuitEvents {
            model: model.to_string(),
            endpoint: endpoint.to_string(),
            metrics: self.metrics.clone(),
            open: AtomicBool::new(false),
        };
        let periods = OpenPeriods {
            next: self.cfg.breaker_open_min,
            max: self.cfg.breaker_open_max.max(self.cfg.breaker_open_min),
        };
        let circuit = failsafe::Config::new()
            .failure_policy(consecutive_failures(
                self.cfg.breaker_failures.max(1),
                periods,
            ))
            .instrument(events)
            .build();
        self.metrics.set_degraded(model, false);
        self.unrouted_logged.remove(model);
        self.routes.insert(
            model.to_string(),
            Route {
                endpoint: endpoint.to_string(),
                target: target.clone(),
                client: backend,
                circuit,
            },
        );
    }

    /// The endpoint `model` is routed to.
    pub fn route(&self, model: &str) -> Option<&str> {
        self.routes.get(model).map(|r| r.endpoint.as_str())
    }

    /// Whether `model`'s scoring is degraded (circuit open or last batch failed).
    pub fn is_degraded(&self, model: &str) -> bool {
        self.metrics.is_degraded(model)
    }

    /// Scores `inputs`: one request per model and version (split at
    /// [`ScorerConfig::max_batch_rows`]), keys batched together. Blocks for the calls; see the
    /// module docs for the bound.
    pub fn score(&mut self, inputs: Vec<ModelInput>) -> ScoreReport {
        let mut report = ScoreReport::default();
        // (role, inputs): one group per model, version, row length and role.
        let mut groups: Vec<(Role, Vec<ModelInput>)> = Vec::new();
        let mut add = |role: Role, input: ModelInput| match groups.iter_mut().find(|(r, g)| {
            let (h, c) = (&g[0].contract, &input.contract);
            *r == role
                && h.model == c.model
                && g[0].version() == input.version()
                && g[0].values.len() == input.values.len()
        }) {
            Some((_, g)) => g.push(input),
            None => groups.push((role, vec![input])),
        };
        for input in inputs {
            if input.shadow {
                // The candidate scores a copy for comparison; the stable revision decides.
                add(
                    Role::Shadow,
                    ModelInput {
                        candidate: true,
                        shadow: false,
                        ..input.clone()
                    },
                );
            }
            add(Role::Served, input);
        }
        for (role, mut group) in groups {
            let model = group[0].contract.model.clone();
            if !self.routes.contains_key(&model) {
                if role == Role::Shadow {
                    continue;
                }
                if self.unrouted_logged.insert(model.clone()) {
                    tracing::error!(
                        model = %model,
                        "No model server for this AnomalyModel (--model-server, --model-repository or the vigil.dev/model-server annotation); its windows are not scored."
                    );
                }
                self.metrics.windows(&model, "unrouted", group.len());
                report.unrouted += group.len();
                continue;
            }
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(self.cfg.max_batch_rows.max(1)));
                let batch = std::mem::replace(&mut group, rest);
                match role {
                    Role::Served => self.score_batch(batch, &mut report),
                    Role::Shadow => self.score_shadow(batch, &mut report),
                }
            }
        }
        report
    }

    /// Per-revision evidence of scored windows: mapped score and the model's own threshold.
    fn observe(&self, role: Role, scored: &[(ModelInput, f32)]) {
        for (input, raw) in scored {
            let c = &input.contract;
            if let Some((score, anomalous)) = c.map_score(f64::from(*raw), c.threshold) {
                self.metrics.revision_score(
                    &c.model,
                    input.version(),
                    role.label(),
                    score,
                    anomalous,
                );
            }
        }
    }

    /// Sends `batch` (one model, version and row length) as `role`: served batches with
    /// retries and the circuit breaker, shadow batches with one attempt outside it (a failing
    /// candidate does not stop the served revision). Records the batch and its per-revision
    /// outcome.
    fn call(
        &self,
        batch: &mut [ModelInput],
        role: Role,
        report: &mut ScoreReport,
    ) -> Result<Vec<f32>, BatchError> {
        let span = crate::traces::batch_span(batch, role.label());
        let traceparent = span.as_ref().and_then(vigil_telemetry::trace::traceparent);
        let result = self.call_traced(batch, role, report, traceparent.as_deref());
        if let Some(span) = &span {
            crate::traces::after_batch(batch, span, result.is_ok());
        }
        result
    }

    fn call_traced(
        &self,
        batch: &[ModelInput],
        role: Role,
        report: &mut ScoreReport,
        traceparent: Option<&str>,
    ) -> Result<Vec<f32>, BatchError> {
        let model = batch[0].contract.model.as_str();
        let version = batch[0].version();
        let route = self.routes.get(model).expect("routed");
        let row_len = batch[0].values.len();
        let rows: Vec<f32> = batch
            .iter()
            .flat_map(|i| i.values.iter().copied())
            .collect();
        let req = Request {
            model,
            version,
            rows: &rows,
            row_len,
            traceparent,
        };
        let started = Instant::now();
        let result = match role {
            Role::Served => {
                self.rt
                    .block_on(infer_with_retries(route, &self.cfg, &self.metrics, &req))
            }
            Role::Shadow => self
                .rt
                .block_on(infer_once(route, &self.cfg, &self.metrics, &req)),
        };
        let elapsed = started.elapsed();
        report.batches.push(BatchStat {
            model: model.to_string(),
            rows: batch.len(),
            elapsed,
            ok: result.is_ok(),
        });
        let outcome = if result.is_ok() {
            self.metrics
                .batch(model, version, batch.len(), elapsed.as_secs_f64());
            "scored"
        } else {
            "failed"
        };
        self.metrics
            .revision_windows(model, version, role.label(), outcome, batch.len());
        result
    }

    /// Scores a shadow batch (the candidate of a shadow rollout): evidence only, nothing
    /// returned to the alert lifecycle.
    fn score_shadow(&mut self, mut batch: Vec<ModelInput>, report: &mut ScoreReport) {
        let model = &batch[0].contract.model;
        if !self.routes[model].circuit.is_call_permitted() {
            return;
        }
        if let Ok(scores) = self.call(&mut batch, Role::Shadow, report) {
            let scored: Vec<(ModelInput, f32)> = batch.into_iter().zip(scores).collect();
            self.observe(Role::Shadow, &scored);
            report.shadow.extend(
                scored
                    .iter()
                    .filter_map(|(i, raw)| ShadowVerdict::of(i, *raw)),
            );
        }
    }

    fn score_batch(&mut self, mut batch: Vec<ModelInput>, report: &mut ScoreReport) {
        let model = batch[0].contract.model.clone();
        let route = &self.routes[&model];
        if !route.circuit.is_call_permitted() {
            self.metrics.windows(&model, "skipped", batch.len());
            report.skipped += batch.len();
            report.retry.extend(batch);
            return;
        }
        let endpoint = route.endpoint.clone();
        match self.call(&mut batch, Role::Served, report) {
            Ok(scores) => {
                self.metrics.windows(&model, "scored", batch.len());
                self.metrics.set_degraded(&model, false);
                let scored: Vec<(ModelInput, f32)> = batch.into_iter().zip(scores).collect();
                self.observe(Role::Served, &scored);
                report.scored.extend(scored);
            }
            Err(e) => {
                self.metrics.set_degraded(&model, true);
                self.metrics.windows(&model, "failed", batch.len());
                report.failed += batch.len();
                self.failures_logged += 1;
                let n = self.failures_logged;
                if n <= 10 || n.is_power_of_two() {
                    tracing::warn!(
                        model = %model, endpoint = %endpoint, windows = batch.len(), error = %error_chain(&e), failed_batches = n,
                        "Model scoring failed after retries (rule-based detection continues)."
                    );
                }
                if e.is_retryable() {
                    report.retry.extend(batch);
                } else {
                    self.metrics.windows(&model, "dropped", batch.len());
                }
            }
        }
    }
}

/// Whether a batch's scores decide its windows or are only compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Served,
    Shadow,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Served => "served",
            Role::Shadow => "shadow",
        }
    }
}

/// One inference request: `rows.len() / row_len` rows for `model` version `version`, within
/// the trace of `traceparent` when the batch holds traced windows.
struct Request<'a> {
    model: &'a str,
    version: &'a str,
    rows: &'a [f32],
    row_len: usize,
    traceparent: Option<&'a str>,
}

/// One batch with deadline, retries and the circuit breaker.
async fn infer_with_retries(
    route: &Route,
    cfg: &ScorerConfig,
    metrics: &ScoringMetrics,
    req: &Request<'_>,
) -> Result<Vec<f32>, BatchError> {
    let attempt = || async {
        let result = infer_once(route, cfg, metrics, req).await;
        match &result {
            Ok(_) => route.circuit.on_success(),
            Err(e) if e.is_retryable() => route.circuit.on_error(),
            Err(_) => {}
        }
        result
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(cfg.backoff_min)
        .with_max_delay(cfg.backoff_max)
        .with_max_times(cfg.retries)
        .with_jitter();
    let model = req.model;
    attempt
        .retry(backoff)
        // A failure that opened the circuit ends the retries: the server is down.
        .when(|e| e.is_retryable() && route.circuit.is_call_permitted())
        .notify(|e, delay| tracing::debug!(model, error = %error_chain(e), retry_in_ms = delay.as_millis() as u64, "Retrying model scoring."))
        .await
}

/// One attempt with the deadline, counted in the error metrics but not in the circuit (the
/// caller decides whether it counts there).
async fn infer_once(
    route: &Route,
    cfg: &ScorerConfig,
    metrics: &ScoringMetrics,
    req: &Request<'_>,
) -> Result<Vec<f32>, BatchError> {
    let Request {
        model,
        version,
        rows,
        row_len,
        traceparent,
    } = *req;
    match tokio::time::timeout(
        cfg.deadline,
        route
            .client
            .infer_traced(model, version, rows, row_len, traceparent),
    )
    .await
    {
        Ok(Ok(scores)) => Ok(scores),
        Ok(Err(e)) if e.is_transient() => {
            metrics.error(model, version, "transient");
            Err(BatchError::Transient(e))
        }
        Ok(Err(e)) => {
            // The server answered: it is up, the request is wrong. Not a circuit failure.
            metrics.error(model, version, "request");
            Err(BatchError::Request(e))
        }
        Err(_) => {
            metrics.error(model, version, "timeout");
            Err(BatchError::Timeout(cfg.deadline))
        }
    }
}

/// `error: cause: cause` on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scoring::ModelContract;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use vigil_api::v1alpha1::{Feature, ScoreDirection};

    /// Answers from a script: `Some(offset)` scores each row as its first value plus
    /// `offset`; `None` fails as unreachable. The last entry repeats.
    struct Scripted {
        script: Mutex<Vec<Option<f32>>>,
        calls: AtomicUsize,
        rows_seen: Mutex<Vec<usize>>,
    }

    impl Scripted {
        fn new(script: Vec<Option<f32>>) -> Arc<Self> {
            Arc::new(Self {
                script: Mutex::new(script),
                calls: AtomicUsize::new(0),
                rows_seen: Mutex::new(Vec::new()),
            })
        }
    }

    impl Inference for Scripted {
        fn infer<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            rows: &'a [f32],
            row_len: usize,
        ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.rows_seen.lock().unwrap().push(rows.len() / row_len);
            let mut s = self.script.lock().unwrap();
            let next = if s.len() > 1 { s.remove(0) } else { s[0] };
            Box::pin(async move {
                match next {
                    Some(off) => Ok(rows.chunks(row_len).map(|r| r[0] + off).collect()),
                    None => Err(ClientError::Rpc {
                        call: "ModelInfer",
                        status: tonic::Status::unavailable("connection refused"),
                    }),
                }
            })
        }
    }

    /// A one-feature contract of model `m` version 1, anomalous above 0 (shared with the
    /// worker's tests).
    pub(crate) fn contract() -> Arc<ModelContract> {
        Arc::new(ModelContract {
            model: "m".into(),
            version: "1".into(),
            tier: 0,
            slide_ms: 1000,
            features: vec![(0, Feature::Mean)],
            feature_names: vec!["v.mean".into()],
            normalization: Vec::new(),
            lookback: 1,
            threshold: 0.0,
            anomalous_when: ScoreDirection::Above,
            scale: 1.0,
            rollout: None,
        })
    }

    fn inputs(n: usize) -> Vec<ModelInput> {
        (0..n)
            .map(|i| ModelInput {
                rule: 0,
                rule_name: "r".into(),
                contract: contract(),
                key_id: i as u32,
                key: format!("k{i}").into(),
                window_start: 0,
                window_end: 1000,
                values: vec![i as f32],
                raw_features: vec![i as f64],
                candidate: false,
                shadow: false,
                trace: None,
                closed_ms: 0,
            })
            .collect()
    }

    fn scorer(backend: Arc<Scripted>) -> ModelScorer {
        scorer_with(backend)
    }

    fn scorer_with(backend: Arc<dyn Inference>) -> ModelScorer {
        let cfg = ScorerConfig {
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            breaker_open_min: Duration::from_millis(100),
            breaker_open_max: Duration::from_millis(100),
            max_batch_rows: 4,
            ..ScorerConfig::default()
        };
        let mut s = ModelScorer::new(cfg, ScoringMetrics::default()).unwrap();
        s.set_route("m", "test", backend);
        s
    }

    #[test]
    fn batches_keys_per_model_and_splits_at_the_row_limit() {
        let b = Scripted::new(vec![Some(0.5)]);
        let mut s = scorer(b.clone());
        let r = s.score(inputs(10));
        assert_eq!(*b.rows_seen.lock().unwrap(), [4, 4, 2]);
        let scores: Vec<f32> = r.scored.iter().map(|(i, s)| s - i.values[0]).collect();
        assert_eq!(scores, [0.5; 10], "each input gets its own row's score");
        assert_eq!(
            r.scored.iter().map(|(i, _)| i.key_id).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(s.metrics().windows_total("m", "scored"), 10);
    }

    #[test]
    fn retries_a_transient_failure() {
        let b = Scripted::new(vec![None, Some(0.0)]);
        let mut s = scorer(b.clone());
        let r = s.score(inputs(1));
        assert_eq!(
            (r.scored.len(), r.failed, b.calls.load(Ordering::SeqCst)),
            (1, 0, 2)
        );
        assert!(!s.is_degraded("m"));
    }

    #[test]
    fn opens_the_circuit_skips_while_open_and_recovers() {
        let b = Scripted::new(vec![None, None, None, None, Some(0.0)]);
        let mut s = scorer(b.clone());
        let r = s.score(inputs(2));
        // 1 attempt + 2 retries, all failing: the third failure opens the circuit.
        assert_eq!((r.failed, b.calls.load(Ordering::SeqCst)), (2, 3));
        assert!(s.is_degraded("m"));
        let r = s.score(inputs(2));
        assert_eq!(
            (r.skipped, b.calls.load(Ordering::SeqCst)),
            (2, 3),
            "no call while the circuit is open"
        );
        std::thread::sleep(Duration::from_millis(120));
        // Half-open: the trial fails (4th scripted failure) and reopens the circuit at once.
        let r = s.score(inputs(1));
        assert_eq!((r.failed, b.calls.load(Ordering::SeqCst)), (1, 4));
        assert_eq!(s.score(inputs(1)).skipped, 1);
        std::thread::sleep(Duration::from_millis(120));
        let r = s.score(inputs(3));
        assert_eq!((r.scored.len(), b.calls.load(Ordering::SeqCst)), (3, 5));
        assert!(!s.is_degraded("m"));
        let m = s.metrics();
        assert_eq!(
            (
                m.windows_total("m", "failed"),
                m.windows_total("m", "skipped"),
                m.windows_total("m", "scored")
            ),
            (3, 3, 3)
        );
    }

    #[test]
    fn unrouted_models_are_counted_not_called() {
        let mut s = ModelScorer::new(ScorerConfig::default(), ScoringMetrics::default()).unwrap();
        let r = s.score(inputs(3));
        assert_eq!((r.unrouted, r.scored.len()), (3, 0));
        assert_eq!(s.metrics().windows_total("m", "unrouted"), 3);
    }

    #[test]
    fn routes_follow_the_flag_then_the_annotation() {
        let mut m = vigil_api::manifest::Manifests::default();
        let doc = |name: &str, ann: &str| {
            format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {{name: {name}{ann}}}\nspec:\n  revision: \"1\"\n  artifact: {{uri: file://m.onnx, sha256: {}}}\n  input: {{tensor: X, window: w, features: [v.mean]}}\n  output: {{tensor: s, threshold: 0}}\n",
                "0".repeat(64)
            )
        };
        m.add_str(
            "a",
            &doc(
                "a",
                ", annotations: {vigil.dev/model-server: \"a-model-server.ns.svc:8001\"}",
            ),
        )
        .unwrap();
        m.add_str("b", &doc("b", "")).unwrap();
        let refs: Vec<&AnomalyModel> = m.models.iter().collect();
        let mut s = ModelScorer::new(ScorerConfig::default(), ScoringMetrics::default()).unwrap();
        s.route_models(&refs, None).unwrap();
        assert_eq!(s.route("a"), Some("http://a-model-server.ns.svc:8001"));
        assert_eq!(s.route("b"), None);
        s.route_models(&refs, Some("http://127.0.0.1:9")).unwrap();
        assert_eq!(
            (s.route("a"), s.route("b")),
            (Some("http://127.0.0.1:9"), Some("http://127.0.0.1:9"))
        );
    }

    /// Answers -1 per row from version "1" and +1 from version "2" (anomalous: the test
    /// contract is anomalous above 0), recording (version, rows) per call.
    struct ByVersion(Mutex<Vec<(String, usize)>>);

    impl Inference for ByVersion {
        fn infer<'a>(
            &'a self,
            _: &'a str,
            version: &'a str,
            rows: &'a [f32],
            row_len: usize,
        ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>> {
            let n = rows.len() / row_len;
            self.0.lock().unwrap().push((version.to_string(), n));
            let v = if version == "2" { 1.0 } else { -1.0 };
            Box::pin(async move { Ok(vec![v; n]) })
        }
    }

    fn rollout_inputs(canary_weight: Option<u8>) -> Vec<ModelInput> {
        let mut c = (*contract()).clone();
        c.rollout = Some(crate::scoring::ModelRollout {
            candidate: "2".into(),
            canary_weight,
        });
        let c = Arc::new(c);
        (0..100)
            .map(|i| {
                let key = format!("key-{i}");
                let (candidate, shadow) = c.route(&key);
                ModelInput {
                    contract: c.clone(),
                    key: key.into(),
                    candidate,
                    shadow,
                    ..inputs(1).remove(0)
                }
            })
            .collect()
    }

    #[test]
    fn a_canary_sends_its_keys_to_the_candidate_and_counts_per_revision() {
        let b = Arc::new(ByVersion(Mutex::new(Vec::new())));
        let mut s = ModelScorer::new(ScorerConfig::default(), ScoringMetrics::default()).unwrap();
        s.set_route("m", "test", b.clone());
        let inputs = rollout_inputs(Some(30));
        let on_candidate = inputs.iter().filter(|i| i.candidate).count();
        assert!((15..=45).contains(&on_candidate), "{on_candidate}");
        let r = s.score(inputs);
        assert_eq!(r.scored.len(), 100);
        for (i, score) in &r.scored {
            // Each window got the score of the revision its key is routed to.
            assert_eq!(*score > 0.0, i.candidate, "{}", i.key);
        }
        let m = s.metrics();
        let served = |rev| m.revision_windows_total("m", rev, "served", "scored");
        assert_eq!(
            (served("1"), served("2")),
            (100 - on_candidate as u64, on_candidate as u64)
        );
        assert_eq!(
            m.revision_anomalous_total("m", "2", "served"),
            on_candidate as u64
        );
        assert_eq!(m.revision_anomalous_total("m", "1", "served"), 0);
        assert!(r.shadow.is_empty());
    }

    #[test]
    fn a_shadow_candidate_scores_every_window_but_decides_none() {
        let b = Arc::new(ByVersion(Mutex::new(Vec::new())));
        let mut s = ModelScorer::new(ScorerConfig::default(), ScoringMetrics::default()).unwrap();
        s.set_route("m", "test", b.clone());
        let r = s.score(rollout_inputs(None));
        assert_eq!(r.scored.len(), 100);
        assert!(
            r.scored
                .iter()
                .all(|(i, score)| *score < 0.0 && !i.candidate),
            "only the stable revision's scores reach the alert lifecycle"
        );
        assert_eq!(r.shadow.len(), 100);
        assert!(
            r.shadow
                .iter()
                .all(|v| v.anomalous && v.revision == "2" && v.served_revision == "1")
        );
        let calls = b.0.lock().unwrap().clone();
        let rows = |v: &str| {
            calls
                .iter()
                .filter(|c| c.0 == v)
                .map(|c| c.1)
                .sum::<usize>()
        };
        assert_eq!((rows("1"), rows("2")), (100, 100));
        let m = s.metrics();
        assert_eq!(m.revision_windows_total("m", "2", "shadow", "scored"), 100);
        assert_eq!(m.revision_anomalous_total("m", "2", "shadow"), 100);
        assert_eq!(m.revision_anomalous_total("m", "1", "served"), 0);
    }

    /// Version "2" is unreachable; version "1" answers.
    struct CandidateDown;

    impl Inference for CandidateDown {
        fn infer<'a>(
            &'a self,
            _: &'a str,
            version: &'a str,
            rows: &'a [f32],
            row_len: usize,
        ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>> {
            let n = rows.len() / row_len;
            let up = version == "1";
            Box::pin(async move {
                if up {
                    Ok(vec![-1.0; n])
                } else {
                    Err(ClientError::Rpc {
                        call: "ModelInfer",
                        status: tonic::Status::unavailable("connection refused"),
                    })
                }
            })
        }
    }

    #[test]
    fn a_failing_shadow_candidate_does_not_open_the_served_revisions_circuit() {
        let mut s = scorer_with(Arc::new(CandidateDown));
        for _ in 0..5 {
            let r = s.score(rollout_inputs(None));
            assert_eq!(r.scored.len(), 100, "the stable revision keeps scoring");
            assert_eq!((r.skipped, r.shadow.len()), (0, 0));
        }
        assert!(!s.is_degraded("m"));
        let m = s.metrics();
        assert_eq!(m.revision_windows_total("m", "2", "shadow", "failed"), 500);
        assert_eq!(m.revision_windows_total("m", "1", "served", "scored"), 500);
    }
}
