//! The scoring worker: model scoring off the detector's run loop.
//!
//! The run loop hands the model windows that closed to [`ScoringWorker::submit`] and takes the
//! scores back with [`ScoringWorker::take_scored`] at its next tick; neither blocks. The
//! worker's own thread owns the [`ModelScorer`] (deadline, retries, circuit breaker), so a slow
//! or hung model server delays model rules only: events, windows, rule alerts, checkpoints and
//! offset commits go on.
//!
//! **Backlog.** Windows the scorer could not score but may later (failed with a transient
//! error or timeout, or skipped while the model's circuit is open) stay in a per-model backlog,
//! oldest first, and are tried again when the circuit lets a call through; when the server
//! recovers they are scored in order and their alerts emitted late, with their own window
//! times. The backlog is bounded by [`ScorerConfig::max_backlog`] windows in all: past it the
//! oldest windows of the longest queue are dropped and counted as `dropped`. Windows the server
//! rejected (wrong shape, unknown model) are dropped at once.
//!
//! **Order and staleness.** A model's windows are scored in the order they closed. A score
//! that arrives after its key was revoked, expired or replaced, its rule changed, or a newer
//! window of the key was scored, is ignored by
//! [`vigil_core::engine::Engine::apply_model_scores`].
//!
//! **Not in checkpoints.** Windows waiting here are not part of a checkpoint or savepoint: a
//! detector that stops waits a bounded time for them ([`ScoringWorker::settle`]) and counts
//! the rest as `dropped`.
//!
//! One thread scores every model in turn: while a model server hangs, other models wait at
//! most one attempt's deadline per round until that model's circuit opens, after which its
//! windows are skipped without a call until the next trial.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vigil_api::v1alpha1::AnomalyModel;

use super::ShadowVerdict;
use super::scorer::{ModelScorer, ScoreReport, ScorerConfig, ScoringError, check_routes};
use super::{ModelInput, ScoringMetrics};

/// How long the worker waits before trying again when a round scored nothing.
const IDLE_RETRY: Duration = Duration::from_millis(100);

enum Job {
    Score(Vec<ModelInput>),
    Route {
        models: Vec<AnomalyModel>,
        server: Option<String>,
    },
    /// Routes a model to an in-process backend (tests), then says so.
    #[cfg(test)]
    Backend(
        String,
        Arc<dyn super::scorer::Inference>,
        std::sync::mpsc::Sender<()>,
    ),
}

/// Model scoring on its own thread; see the module docs.
pub struct ScoringWorker {
    jobs: Option<Sender<Job>>,
    scored: Receiver<ScoreReport>,
    /// Windows submitted and not yet scored or dropped.
    pending: Arc<AtomicUsize>,
    metrics: ScoringMetrics,
    max_backlog: usize,
    thread: Option<JoinHandle<()>>,
    shadow: std::sync::Mutex<Vec<ShadowVerdict>>,
}

impl std::fmt::Debug for ScoringWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoringWorker")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl ScoringWorker {
    /// Starts the worker thread with a scorer configured by `cfg`, reporting into `metrics`.
    ///
    /// # Errors
    /// [`ScoringError::Runtime`] when the scorer's runtime or the thread cannot start.
    pub fn start(cfg: ScorerConfig, metrics: ScoringMetrics) -> Result<Self, ScoringError> {
        let max_backlog = cfg.max_backlog.max(1);
        let scorer = ModelScorer::new(cfg, metrics.clone())?;
        let (jobs, job_rx) = std::sync::mpsc::channel();
        let (scored_tx, scored) = std::sync::mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let state = WorkerState {
            scorer,
            jobs: job_rx,
            scored: scored_tx,
            pending: pending.clone(),
            backlog: HashMap::new(),
            order: Vec::new(),
            max_backlog,
        };
        let thread = std::thread::Builder::new()
            .name("vigil-scoring".into())
            .spawn(move || state.run())
            .map_err(ScoringError::Runtime)?;
        Ok(Self {
            jobs: Some(jobs),
            scored,
            pending,
            metrics,
            max_backlog,
            thread: Some(thread),
            shadow: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Routes the models to their model servers (see [`ModelScorer::route_models`]). The
    /// endpoints are checked here; the worker applies the routes before the next windows it
    /// is handed.
    ///
    /// # Errors
    /// [`ScoringError::Endpoint`] for an endpoint that is not a valid URI (nothing changes).
    pub fn route_models(
        &self,
        models: &[&AnomalyModel],
        server: Option<&str>,
    ) -> Result<(), ScoringError> {
        check_routes(models, server)?;
        self.send(Job::Route {
            models: models.iter().map(|m| (*m).clone()).collect(),
            server: server.map(str::to_string),
        });
        Ok(())
    }

    /// Hands closed model windows to the worker; never blocks. When more than twice the
    /// backlog bound is already waiting (the worker stuck in a call), they are dropped here
    /// and counted.
    pub fn submit(&self, inputs: Vec<ModelInput>) {
        if inputs.is_empty() {
            return;
        }
        let n = inputs.len();
        if self.pending() + n > self.max_backlog.saturating_mul(2) {
            count_dropped(&self.metrics, &inputs);
            return;
        }
        self.pending.fetch_add(n, Ordering::Relaxed);
        self.metrics.set_backlog(self.pending());
        self.send(Job::Score(inputs));
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.jobs
            && tx.send(job).is_err()
        {
            tracing::error!("The model scoring worker is gone; model windows are not scored.");
        }
    }

    /// The scores that came back since the last call, oldest first; never blocks. Shadow
    /// verdicts that came with them wait for [`Self::take_shadow`].
    pub fn take_scored(&self) -> Vec<(ModelInput, f32)> {
        let mut out = Vec::new();
        while let Ok(r) = self.scored.try_recv() {
            self.keep(r, &mut out);
        }
        out
    }

    fn keep(&self, r: ScoreReport, out: &mut Vec<(ModelInput, f32)>) {
        out.extend(r.scored);
        if !r.shadow.is_empty() {
            self.shadow
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(r.shadow);
        }
    }

    /// The shadow verdicts received so far (see [`ShadowVerdict`]).
    pub fn take_shadow(&self) -> Vec<ShadowVerdict> {
        std::mem::take(&mut *self.shadow.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Windows submitted and not yet scored or dropped.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Waits until every submitted window is scored or dropped, or `timeout` passed; returns
    /// the scores that came back meanwhile. For the end of input and shutdown.
    pub fn settle(&self, timeout: Duration) -> Vec<(ModelInput, f32)> {
        let until = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            out.extend(self.take_scored());
            let left = until.saturating_duration_since(Instant::now());
            if self.pending() == 0 || left.is_zero() {
                break;
            }
            match self.scored.recv_timeout(left.min(IDLE_RETRY)) {
                Ok(r) => self.keep(r, &mut out),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        out
    }
}

impl Drop for ScoringWorker {
    fn drop(&mut self) {
        let left = self.pending();
        if left > 0 {
            tracing::warn!(
                windows = left,
                "Stopping with model windows not scored (the model server was slow or down); they are counted as dropped."
            );
        }
        // Closing the channel ends the worker after its current call.
        self.jobs = None;
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

fn count_dropped(metrics: &ScoringMetrics, inputs: &[ModelInput]) {
    let mut by_model: HashMap<&str, usize> = HashMap::new();
    for i in inputs {
        *by_model.entry(i.contract.model.as_str()).or_default() += 1;
    }
    for (model, n) in by_model {
        metrics.windows(model, "dropped", n);
    }
}

struct WorkerState {
    scorer: ModelScorer,
    jobs: Receiver<Job>,
    scored: Sender<ScoreReport>,
    pending: Arc<AtomicUsize>,
    /// Per model, oldest first.
    backlog: HashMap<String, VecDeque<ModelInput>>,
    /// Models in the order they were first seen (rounds visit them in this order).
    order: Vec<String>,
    max_backlog: usize,
}

impl WorkerState {
    fn run(mut self) {
        loop {
            // Wait for work when there is none; else take what arrived without waiting.
            if self.backlog_len() == 0 {
                match self.jobs.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => break,
                }
            }
            let mut closed = false;
            loop {
                match self.jobs.try_recv() {
                    Ok(job) => self.take(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            self.trim();
            let progressed = self.round();
            self.scorer
                .metrics()
                .set_backlog(self.pending.load(Ordering::Relaxed));
            if closed {
                break;
            }
            if !progressed && self.backlog_len() > 0 {
                // Nothing could be scored (circuits open, server down): wait a little, or for
                // new work, before the next trial.
                match self.jobs.recv_timeout(IDLE_RETRY) {
                    Ok(job) => self.take(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        let left: Vec<ModelInput> = self.backlog.drain().flat_map(|(_, q)| q).collect();
        count_dropped(self.scorer.metrics(), &left);
        self.pending.fetch_sub(left.len(), Ordering::Relaxed);
        self.scorer
            .metrics()
            .set_backlog(self.pending.load(Ordering::Relaxed));
    }

    fn backlog_len(&self) -> usize {
        self.backlog.values().map(VecDeque::len).sum()
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Score(inputs) => {
                for i in inputs {
                    let model = &i.contract.model;
                    if !self.backlog.contains_key(model) {
                        self.order.push(model.clone());
                    }
                    self.backlog.entry(model.clone()).or_default().push_back(i);
                }
            }
            Job::Route { models, server } => {
                let refs: Vec<&AnomalyModel> = models.iter().collect();
                if let Err(e) = self.scorer.route_models(&refs, server.as_deref()) {
                    // Checked by the caller; only a race with a later change gets here.
                    tracing::error!(error = %e, "Model servers of the AnomalyModels not usable.");
                }
            }
            #[cfg(test)]
            Job::Backend(model, backend, done) => {
                self.scorer.set_route(&model, "test", backend);
                let _ = done.send(());
            }
        }
    }

    /// Drops the oldest windows of the longest queues past the bound.
    fn trim(&mut self) {
        let mut over = self.backlog_len().saturating_sub(self.max_backlog);
        if over == 0 {
            return;
        }
        tracing::warn!(
            windows = over,
            bound = self.max_backlog,
            "Model scoring backlog full (the model server is slow or down); the oldest windows are dropped."
        );
        while over > 0 {
            let Some(q) = self.backlog.values_mut().max_by_key(|q| q.len()) else {
                break;
            };
            let n = over.min(q.len());
            let dropped: Vec<ModelInput> = q.drain(..n).collect();
            count_dropped(self.scorer.metrics(), &dropped);
            self.pending.fetch_sub(n, Ordering::Relaxed);
            over -= n;
        }
    }

    /// One batch per model, oldest windows first. Whether any window was scored or dropped.
    fn round(&mut self) -> bool {
        let batch_rows = self.scorer_batch_rows();
        let mut progressed = false;
        for model in self.order.clone() {
            let Some(q) = self.backlog.get_mut(&model) else {
                continue;
            };
            if q.is_empty() {
                continue;
            }
            let n = q.len().min(batch_rows);
            let batch: Vec<ModelInput> = q.drain(..n).collect();
            let mut report = self.scorer.score(batch);
            let retry = std::mem::take(&mut report.retry);
            let done = n - retry.len();
            if done > 0 {
                progressed = true;
                let left = self.pending.fetch_sub(done, Ordering::Relaxed) - done;
                // Before the scores go out: whoever sees them sees the gauge that goes with them.
                self.scorer.metrics().set_backlog(left);
            }
            if let Some(q) = self.backlog.get_mut(&model) {
                for i in retry.into_iter().rev() {
                    q.push_front(i);
                }
            }
            if !(report.scored.is_empty() && report.shadow.is_empty())
                && self.scored.send(report).is_err()
            {
                return progressed; // the run loop is gone
            }
        }
        self.backlog.retain(|_, q| !q.is_empty());
        self.order.retain(|m| self.backlog.contains_key(m));
        progressed
    }

    fn scorer_batch_rows(&self) -> usize {
        self.scorer.config().max_batch_rows.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::ModelContract;
    use crate::scoring::scorer::tests::contract;
    use crate::scoring::scorer::{BoxFuture, Inference};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use vigil_model_server::client::ClientError;

    /// A backend that answers `-(row sum)` per row while `up`, and fails (transient) while not.
    struct Switch {
        up: AtomicBool,
        calls: AtomicUsize,
        gate: Mutex<()>,
    }

    impl Inference for Switch {
        fn infer<'a>(
            &'a self,
            _model: &'a str,
            _version: &'a str,
            rows: &'a [f32],
            row_len: usize,
        ) -> BoxFuture<'a, Result<Vec<f32>, ClientError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let _held = self.gate.lock().unwrap();
                if self.up.load(Ordering::SeqCst) {
                    Ok(rows
                        .chunks(row_len)
                        .map(|r| -r.iter().sum::<f32>())
                        .collect())
                } else {
                    Err(ClientError::Rpc {
                        call: "ModelInfer",
                        status: tonic::Status::unavailable("connection refused"),
                    })
                }
            })
        }
    }

    fn input(c: &Arc<ModelContract>, end: i64) -> ModelInput {
        ModelInput {
            rule: 0,
            rule_name: "r".into(),
            contract: c.clone(),
            key_id: 1,
            key: "k".into(),
            window_start: end - 1000,
            window_end: end,
            values: vec![end as f32],
            raw_features: vec![end as f64],
            candidate: false,
            shadow: false,
            trace: None,
            closed_ms: end,
        }
    }

    fn worker(max_backlog: usize, backend: Arc<Switch>) -> ScoringWorker {
        let cfg = ScorerConfig {
            deadline: Duration::from_millis(200),
            retries: 0,
            breaker_failures: 1,
            breaker_open_min: Duration::from_millis(20),
            breaker_open_max: Duration::from_millis(20),
            max_backlog,
            ..ScorerConfig::default()
        };
        let w = ScoringWorker::start(cfg, ScoringMetrics::default()).unwrap();
        let (done, routed) = std::sync::mpsc::channel();
        w.send(Job::Backend("m".into(), backend, done));
        routed.recv().unwrap();
        w
    }

    fn switch(up: bool) -> Arc<Switch> {
        Arc::new(Switch {
            up: AtomicBool::new(up),
            calls: AtomicUsize::new(0),
            gate: Mutex::new(()),
        })
    }

    #[test]
    fn windows_failed_during_an_outage_are_scored_in_order_when_it_ends() {
        let backend = switch(false);
        let w = worker(1000, backend.clone());
        let m = contract();
        w.submit((0..5).map(|t| input(&m, (t + 1) * 1000)).collect());
        std::thread::sleep(Duration::from_millis(200));
        assert!(w.take_scored().is_empty());
        assert_eq!(w.pending(), 5, "kept for re-scoring");
        backend.up.store(true, Ordering::SeqCst);
        let scored = w.settle(Duration::from_secs(5));
        let ends: Vec<i64> = scored.iter().map(|(i, _)| i.window_end).collect();
        assert_eq!(ends, vec![1000, 2000, 3000, 4000, 5000]);
        assert_eq!(w.pending(), 0);
        assert_eq!(w.metrics.windows_total("m", "scored"), 5);
        assert_eq!(w.metrics.backlog(), 0);
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_windows_and_counts_them() {
        let backend = switch(false);
        let w = worker(3, backend.clone());
        let m = contract();
        w.submit((0..5).map(|t| input(&m, (t + 1) * 1000)).collect());
        std::thread::sleep(Duration::from_millis(200));
        backend.up.store(true, Ordering::SeqCst);
        let scored = w.settle(Duration::from_secs(5));
        let ends: Vec<i64> = scored.iter().map(|(i, _)| i.window_end).collect();
        assert_eq!(ends, vec![3000, 4000, 5000], "the newest three are kept");
        assert_eq!(w.metrics.windows_total("m", "dropped"), 2);
    }

    #[test]
    fn submit_never_waits_for_a_hung_server() {
        let backend = switch(true);
        let w = worker(1000, backend.clone());
        let m = contract();
        let held = backend.gate.lock().unwrap(); // every call hangs until released
        w.submit(vec![input(&m, 1000)]);
        let started = Instant::now();
        for t in 2..200 {
            w.submit(vec![input(&m, t * 1000)]);
            assert!(w.take_scored().is_empty());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(held);
        let scored = w.settle(Duration::from_secs(10));
        assert!(!scored.is_empty());
    }
}
