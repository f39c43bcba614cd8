//! One pipeline driver: the engine ([`vigil_core::engine::Engine`]) and an optional model
//! scorer ([`ModelScorer`]), stepped as process -> score -> apply. The Kafka runner, `vigil
//! score` and the tests drive the engine only through it, so the order in which model scores
//! reach the alert lifecycle is written once.
//!
//! Outputs go into the caller's [`Outputs`], which the caller drains (to Kafka, a file, a
//! test's list). Two ways to score model rule windows:
//! - **inline** ([`Driver::scorer`]; `vigil score`, tests): the windows that closed in a step
//!   are scored before the step returns (bounded by the scorer's deadline and retries, see
//!   [`crate::scoring::scorer`]); windows that could not be scored are counted in the returned
//!   [`ScoreReport`] and dropped;
//! - **in the background** ([`Driver::worker`]; the Kafka runner): a step hands the windows to
//!   the [`ScoringWorker`] and returns at once; [`Driver::apply_scored`] applies the scores that
//!   came back (the runner calls it at every tick), so a slow model server delays model rules
//!   only.

use std::time::Duration;

use vigil_core::engine::{Engine, Outputs, RawRecord};

use crate::scoring::{ModelScorer, ScoreReport, ScoringWorker, ShadowVerdict};

/// The engine and its model scorer.
pub struct Driver {
    /// The pure engine.
    pub engine: Engine,
    /// Scores model rule windows inline; `None` until a pipeline has model rules.
    pub scorer: Option<ModelScorer>,
    /// Scores model rule windows in the background; used instead of `scorer` when set.
    pub worker: Option<ScoringWorker>,
}

impl Driver {
    /// A driver over `engine`, scoring inline with `scorer`.
    pub fn new(engine: Engine, scorer: Option<ModelScorer>) -> Self {
        Self {
            engine,
            scorer,
            worker: None,
        }
    }

    /// Applies the scores the background worker returned since the last call to the alert
    /// lifecycle; the number of windows applied.
    pub fn apply_scored(&mut self, now_ms: i64, out: &mut Outputs) -> usize {
        self.apply_scored_observing(now_ms, out, |_| {})
    }

    /// [`Self::apply_scored`], calling `observe` with each window's time from close to score
    /// (ms of processing time): the `closed_to_scored` stage.
    pub fn apply_scored_observing(
        &mut self,
        now_ms: i64,
        out: &mut Outputs,
        mut observe: impl FnMut(i64),
    ) -> usize {
        match &self.worker {
            Some(w) => {
                let scored = w.take_scored();
                for (input, _) in &scored {
                    observe((now_ms - input.closed_ms).max(0));
                }
                self.engine.apply_model_scores(&scored, now_ms, out)
            }
            None => 0,
        }
    }

    /// The shadow candidates' verdicts that came back with the scores (background worker).
    pub fn take_shadow(&self) -> Vec<ShadowVerdict> {
        self.worker
            .as_ref()
            .map(ScoringWorker::take_shadow)
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for the background worker's windows, then applies their scores
    /// (end of input, shutdown).
    pub fn settle(&mut self, timeout: Duration, now_ms: i64, out: &mut Outputs) -> usize {
        match &self.worker {
            Some(w) => {
                let scored = w.settle(timeout);
                self.engine.apply_model_scores(&scored, now_ms, out)
            }
            None => 0,
        }
    }

    /// Processes one record, then scores the model windows it closed. Returns the record's
    /// event time when it decoded (as [`Engine::process`]) and the scoring report, if any
    /// window was scored.
    pub fn process(
        &mut self,
        rec: &RawRecord<'_>,
        now_ms: i64,
        out: &mut Outputs,
    ) -> (Option<i64>, Option<ScoreReport>) {
        let event_time = self.engine.process(rec, now_ms, out);
        (event_time, self.score(now_ms, out))
    }

    /// [`Self::process`] for a record with a sampled trace ([`Engine::process_traced`]).
    pub fn process_traced(
        &mut self,
        rec: &RawRecord<'_>,
        trace: vigil_core::TraceParent,
        now_ms: i64,
        out: &mut Outputs,
    ) -> (Option<i64>, Option<ScoreReport>) {
        let event_time = self.engine.process_traced(rec, trace, now_ms, out);
        (event_time, self.score(now_ms, out))
    }

    /// Advances processing time (idle partitions, window timers), then scores.
    pub fn advance(&mut self, now_ms: i64, out: &mut Outputs) -> Option<ScoreReport> {
        self.engine.advance(now_ms, out);
        self.score(now_ms, out)
    }

    /// Fires every open window (end of input), then scores.
    pub fn flush(&mut self, now_ms: i64, out: &mut Outputs) -> Option<ScoreReport> {
        self.engine.flush(now_ms, out);
        self.score(now_ms, out)
    }

    /// Scores `out.model_inputs` and applies the scores to the alert lifecycle, or hands them
    /// to the background worker. Without either the inputs are dropped (no model rule is
    /// routed).
    pub fn score(&mut self, now_ms: i64, out: &mut Outputs) -> Option<ScoreReport> {
        if !out.fired_traces.is_empty() {
            crate::traces::fire_spans(out);
        }
        if out.model_inputs.is_empty() {
            return None;
        }
        let inputs = std::mem::take(&mut out.model_inputs);
        if let Some(w) = &self.worker {
            w.submit(inputs);
            return None;
        }
        let scorer = self.scorer.as_mut()?;
        let report = scorer.score(inputs);
        self.engine.apply_model_scores(&report.scored, now_ms, out);
        Some(report)
    }
}
