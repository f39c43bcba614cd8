//! The run loop of one pipeline: poll the consumer group, feed each record to the
//! [`Engine`], hand its outputs to the [`Sinks`], advance watermarks when the source is idle,
//! commit offsets that are safe, and apply rule changes without a restart.
//!
//! One thread owns the loop. The engine and the sinks sit behind a mutex that the loop takes
//! per record and releases before polling, because librdkafka runs the rebalance callbacks
//! inside `poll` on the same thread: on revocation the callback flushes the producer, commits
//! and drops the revoked partitions' state before librdkafka hands them over. Every buffer is
//! bounded: librdkafka's fetch queue (`queued.max.messages.kbytes`), the producer queue (a full
//! one blocks the loop) and the control channel.
//!
//! Offsets without `spec.checkpointing`: every `commit_interval` the loop snapshots
//! [`Engine::committable_offsets`] (which never passes an event held in an open window) and
//! closes a delivery epoch; the snapshot is committed once every output of that epoch and
//! before it is acknowledged by the broker. With checkpointing, offsets are committed per
//! completed checkpoint instead ([`checkpointing`]). Delivery is at least once either way, and
//! alerts carry deterministic event ids.
//!
//! Model scoring never runs on this thread: closed model windows go to the scoring worker
//! ([`crate::scoring::worker`]) and their scores are applied at the next tick, so a slow or
//! hung model server delays model rules only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline};

use crate::scoring::{ScorerConfig, ScoringError, ScoringWorker};
use crate::sink::{LatencyProbe, Origin, SinkError, SinkTopics, Sinks};
use crate::source::{
    Assignment, PartitionIds, RebalanceHandler, SourceContext, SourceError, SourceSettings,
};
use crate::telemetry::{LATENCY_SAMPLE_EVERY, Metrics};
use vigil_core::config::{InvalidSpec, PipelineConfig};
use vigil_core::engine::{Counters, Engine, EngineOptions, Outputs, RawRecord};

use crate::driver::Driver;
use vigil_core::rules::RuleError;

mod checkpointing;
pub mod groups;
mod repartition;
pub mod workers;

/// Longest wait for model windows still being scored when the detector stops (within
/// Kubernetes' default 30 s termination grace period, with room for the checkpoint).
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// Wall-clock time in epoch milliseconds.
#[inline]
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Wall-clock time in epoch microseconds.
#[inline]
pub fn wall_clock_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Failure of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The StreamPipeline cannot run.
    #[error("invalid StreamPipeline")]
    InvalidPipeline(#[source] InvalidSpec),
    /// The source settings are invalid.
    #[error("invalid Kafka source")]
    Source(#[source] SourceError),
    /// The brokers did not answer at start.
    #[error(transparent)]
    Unreachable(#[from] crate::source::admin::Unreachable),
    /// The consumer could not be created.
    #[error("failed to create the Kafka consumer")]
    CreateConsumer(#[source] KafkaError),
    /// Subscribing to the source topics failed.
    #[error("failed to subscribe to the source topics")]
    Subscribe(#[source] KafkaError),
    /// The sinks could not be created.
    #[error("failed to create the sinks")]
    Sink(#[source] SinkError),
    /// The model scorer could not be set up.
    #[error("failed to set up model scoring")]
    Scoring(#[source] ScoringError),
    /// The checkpoint store could not be opened.
    #[error("failed to open the checkpoint store")]
    Checkpoints(#[source] crate::checkpoint::CheckpointError),
    /// The broker rejected output records for good; offsets after them were not committed, so a
    /// restart reprocesses them.
    #[error(
        "{0} output records were not accepted by the broker; stopping without committing past them"
    )]
    Delivery(u64),
    /// The loop thread panicked.
    #[error("the run loop panicked")]
    Panicked,
    /// A tracing setting is invalid.
    #[error("invalid tracing setting: {0}")]
    Tracing(String),
    /// An alert notification receiver could not be set up.
    #[error("failed to set up alert notifications")]
    Notify(#[source] crate::notify::NotifyError),
    /// The KPI store could not be opened.
    #[error("failed to open the KPI store")]
    KpiStore(#[source] crate::kpi_store::KpiStoreError),
    /// The reference data could not be loaded.
    #[error("failed to load the reference data")]
    Enrichment(#[source] crate::enrichment::EnrichmentError),
    /// The group topic (`spec.groups`) could not be set up.
    #[error("failed to set up the group topic: {0}")]
    Groups(String),
}

/// What a running pipeline can be told.
#[derive(Debug)]
pub enum Control {
    /// Replace the rules (window state is kept; unchanged rules keep their state).
    /// `changed_at` is when the change was seen, to log how long it took to apply.
    ReplaceRules {
        /// The new rules of the pipeline.
        rules: Vec<DetectionRule>,
        /// The AnomalyModels model rules may refer to.
        models: Vec<AnomalyModel>,
        /// When the change was detected.
        changed_at: Instant,
    },
    /// Take a savepoint named `name` of every partition this detector owns (see
    /// [`checkpointing`]) and answer with its part's metadata or why it failed.
    Savepoint {
        /// Savepoint name ([`vigil_core::config::valid_savepoint_name`]).
        name: String,
        /// Where the outcome goes.
        reply: SyncSender<Result<crate::checkpoint::CheckpointMetadata, String>>,
    },
    /// The input is bounded: once every record before these `(topic, partition, next offset)`
    /// positions is processed, fire every open window (end of input), deliver, commit and stop.
    DrainAndStop {
        /// One past the last offset written to each partition.
        end_offsets: Vec<(String, i32, i64)>,
    },
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The pipeline.
    pub pipeline: StreamPipeline,
    /// Its rules.
    pub rules: Vec<DetectionRule>,
    /// The AnomalyModels model rules may refer to.
    pub models: Vec<AnomalyModel>,
    /// Model server (URI or `host:port`) scoring every model; `None`: each model's
    /// `vigil.dev/model-server` annotation.
    pub model_server: Option<String>,
    /// Deadline, retries and circuit breaker of model scoring.
    pub scorer: ScorerConfig,
    /// `bootstrap.servers` to use (the caller resolves flag, spec or embedded cluster).
    pub bootstrap_servers: String,
    /// Static group membership id (`group.instance.id`).
    pub group_instance_id: Option<String>,
    /// Time between offset commits. Default 1 s.
    pub commit_interval: Duration,
    /// Longest wait in `poll` before watermarks are advanced by idleness. Default 50 ms.
    pub poll_timeout: Duration,
    /// Raw alert latency samples, for benchmarks.
    pub latency_probe: Option<Arc<LatencyProbe>>,
    /// How long the brokers may take to answer a metadata request at start before the run
    /// fails with [`RunError::Unreachable`]. Default 10 s.
    pub connect_timeout: Duration,
    /// Rollout decisions of the operator (`POST /rollouts/<model>`), applied to the model
    /// rules as they arrive and after every rules reload.
    pub rollout_decisions: crate::scoring::RolloutDecisions,
    /// The reference data file of `spec.enrichment`. Default: `VIGIL_ENRICHMENT_FILE`.
    pub enrichment_file: Option<std::path::PathBuf>,
    /// Run the pipeline's group stage (`spec.groups`; [`groups`]) instead of its key stage.
    /// Set by the key stage when it starts its group stage. Default false.
    pub group_stage: bool,
    /// Engine workers in this process ([`workers`]): each is a member of the consumer group
    /// with its own consumer, engine and loop thread, so the partitions spread over cores.
    /// Default 1.
    pub workers: usize,
    /// Which worker this is, when [`workers`] started it (its member names get `-w<i>`).
    pub worker: Option<usize>,
    /// The workers' common end of a bounded input ([`workers::DrainBarrier`]).
    pub drain_barrier: Option<Arc<workers::DrainBarrier>>,
}

impl RunnerConfig {
    /// Settings with the defaults above.
    pub fn new(
        pipeline: StreamPipeline,
        rules: Vec<DetectionRule>,
        bootstrap_servers: impl Into<String>,
    ) -> Self {
        Self {
            pipeline,
            rules,
            models: Vec::new(),
            model_server: None,
            scorer: ScorerConfig::default(),
            bootstrap_servers: bootstrap_servers.into(),
            group_instance_id: None,
            commit_interval: Duration::from_secs(1),
            poll_timeout: Duration::from_millis(50),
            latency_probe: None,
            connect_timeout: Duration::from_secs(10),
            rollout_decisions: crate::scoring::RolloutDecisions::default(),
            enrichment_file: std::env::var_os(vigil_api::contract::detector::env::ENRICHMENT_FILE)
                .map(std::path::PathBuf::from),
            group_stage: false,
            workers: 1,
            worker: None,
            drain_barrier: None,
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Dead letters by reason (of the last engine: a pipeline change restarts the count).
    pub dead_letter_reasons: vigil_core::engine::DeadLetterTally,
    /// Engine counters at the end.
    pub counters: Counters,
    /// Alert records sent.
    pub alerts_sent: u64,
    /// Dead letters (sent to the dead-letter topic, or only counted and logged without one).
    pub dead_letters: u64,
    /// Whether the run ended by [`Control::DrainAndStop`].
    pub drained: bool,
    /// Wall-clock time (epoch ms) when the first record was processed; 0 if none was.
    pub first_record_ms: i64,
    /// Wall-clock time (epoch ms) when the last record was processed; 0 if none was.
    pub last_record_ms: i64,
}

/// A pipeline running on its own thread.
pub struct RunnerHandle {
    stop: Arc<AtomicBool>,
    control: SyncSender<Control>,
    thread: std::thread::JoinHandle<Result<RunSummary, RunError>>,
    rule_errors: Vec<RuleError>,
    assignment: Assignment,
    /// Group stage: the cluster and group topic, to drain it at the end of a bounded input.
    drain_target: Option<(rdkafka::ClientConfig, String)>,
    /// The group stage (`spec.groups`), started by the key stage.
    companion: Option<Box<RunnerHandle>>,
    /// The other engine workers of this process ([`workers`]); `control` then goes to all.
    siblings: Vec<RunnerHandle>,
}

impl RunnerHandle {
    /// Rules that did not compile at start (they are left out).
    pub fn rule_errors(&self) -> &[RuleError] {
        &self.rule_errors
    }

    /// Source partitions assigned to this detector now (every worker's).
    pub fn assignment(&self) -> Vec<(String, i32)> {
        let mut a = self.assignment.get();
        for s in &self.siblings {
            a.extend(s.assignment());
        }
        a.sort();
        a
    }

    /// Source partitions assigned to each engine worker now (one list without [`workers`]).
    pub fn worker_assignments(&self) -> Vec<Vec<(String, i32)>> {
        std::iter::once(self.assignment.get())
            .chain(self.siblings.iter().map(|s| s.assignment.get()))
            .collect()
    }

    /// A sender for [`Control`] messages (bounded; a full channel blocks the sender).
    pub fn control(&self) -> SyncSender<Control> {
        self.control.clone()
    }

    /// Asks the loop to stop: it flushes the outputs, commits and leaves the group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = &self.companion {
            c.stop();
        }
        for s in &self.siblings {
            s.stop();
        }
    }

    /// A flag that stops the loop when set.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Whether the loop has ended (with several workers: whether one has, e.g. failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished() || self.siblings.iter().any(RunnerHandle::is_finished)
    }

    /// Waits for the loop to end.
    ///
    /// # Errors
    /// The [`RunError`] that ended it.
    /// A pipeline with groups: the key stage's summary with the group stage's alerts and dead
    /// letters added. After a drained key stage (bounded input) the group stage drains the
    /// group topic to its end first; otherwise it is stopped.
    pub fn join(mut self) -> Result<RunSummary, RunError> {
        if !self.siblings.is_empty() {
            let siblings = std::mem::take(&mut self.siblings);
            return workers::join(self, siblings);
        }
        let result = self.thread.join().map_err(|_| RunError::Panicked)?;
        let Some(companion) = self.companion else {
            return result;
        };
        match &result {
            Ok(s) if s.drained => companion.drain_group_topic(),
            _ => companion.stop(),
        }
        let groups = companion.join();
        let mut summary = result?;
        let g = groups?;
        summary.alerts_sent += g.alerts_sent;
        summary.dead_letters += g.dead_letters;
        Ok(summary)
    }

    /// Group stage: stop once every record now in the group topic is processed.
    fn drain_group_topic(&self) {
        let Some((cluster, topic)) = &self.drain_target else {
            self.stop();
            return;
        };
        match crate::source::admin::high_watermarks(cluster, topic, Duration::from_secs(10)) {
            Ok(ends) => {
                let end_offsets = ends
                    .into_iter()
                    .filter(|(_, o)| *o > 0)
                    .map(|(p, o)| (topic.clone(), p, o))
                    .collect();
                if self
                    .control
                    .send(Control::DrainAndStop { end_offsets })
                    .is_err()
                {
                    self.stop();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Group topic end offsets unknown; stopping the group stage.");
                self.stop();
            }
        }
    }
}

type GroupConsumer = BaseConsumer<SourceContext<Shared>>;

/// The state shared by the loop and the rebalance callbacks.
pub struct Shared {
    core: Mutex<Core>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Core {
    /// The engine and the model scorer (`None` without AnomalyModels).
    driver: Driver,
    sinks: Sinks,
    out: Outputs,
    ids: PartitionIds,
    metrics: Metrics,
    /// Offsets snapshots waiting for their epoch's deliveries: (epoch, offsets).
    pending: VecDeque<(u64, Vec<(i32, i64)>)>,
    prev: Counters,
    sample: u64,
    /// Next offset to process per engine partition.
    positions: Vec<(i32, i64)>,
    alerts_sent: u64,
    dead_letters: u64,
    unsent_dead_letters_logged: u64,
    tiers: Vec<String>,
    first_record_ms: i64,
    last_record_ms: i64,
    model_server: Option<String>,
    scorer_config: ScorerConfig,
    /// `spec.checkpointing`: the store and settings; `None` without.
    checkpointing: Option<checkpointing::Checkpointing>,
    /// The operator's rollout decisions and the version of them applied.
    decisions: (crate::scoring::RolloutDecisions, u64),
    /// When the stage lag report was last recomputed (wall clock, ms).
    lag_refreshed_ms: i64,
    /// Every how many offsets a record's `traceparent` header is read; 0: never (traces off).
    trace_every: u64,
    /// Partition count changes of the source topics.
    repartition: repartition::Repartition,
    /// Alert notifications to HTTP receivers (`spec.sinks.alertmanager`, `pagerduty`,
    /// `webhook`).
    notifier: Option<crate::notify::Notifier>,
    /// Window KPIs as Parquet (`spec.sinks.kpiStore`).
    kpi_store: Option<crate::kpi_store::KpiStore>,
    /// Key stage of a pipeline with groups: the group topic.
    group_link: Option<groups::GroupLink>,
    /// Key stage of a pipeline with groups: the group stage's control channel (rule changes
    /// go to both stages).
    companion_control: Option<SyncSender<Control>>,
    /// One of several workers: which, and their common end of a bounded input.
    drain_barrier: Option<(usize, Arc<workers::DrainBarrier>)>,
}

impl RebalanceHandler for Shared {
    fn revoke(&self, consumer: &GroupConsumer, partitions: &[(String, i32)], lost: bool) {
        let mut c = self.lock();
        let ids: Vec<i32> = partitions
            .iter()
            .filter_map(|(t, p)| c.ids.engine_partition(t, *p))
            .collect();
        if c.checkpointing.is_some() {
            // Lost (session timeout): the next owner restores the last checkpoint.
            if !lost {
                c.checkpoint_sync(consumer, Some(&ids), "revoke");
            }
        } else if !lost {
            let _ = c.flush_and_commit(consumer, CommitMode::Sync);
        }
        c.driver.engine.revoke_partitions(&ids);
        c.repartition.revoked(&ids);
        c.positions.retain(|(p, _)| !ids.contains(p));
        if let Some((worker, b)) = &c.drain_barrier {
            // What it had read of them counts no more: their next owner reads on.
            b.publish(*worker, &[]);
        }
    }

    fn assign(&self, consumer: &GroupConsumer, partitions: &[(String, i32)]) {
        let mut c = self.lock();
        let ids: Vec<i32> = partitions
            .iter()
            .filter_map(|(t, p)| c.ids.engine_partition(t, *p))
            .collect();
        // Held before the restore: keys that move in are loaded into them.
        c.driver.engine.assign_partitions(&ids, wall_clock_ms());
        c.restore_assigned(consumer, partitions);
    }
}

impl Core {
    #[inline]
    fn on_record(&mut self, m: &BorrowedMessage<'_>, now_ms: i64) {
        let Some(partition) = self.ids.engine_partition(m.topic(), m.partition()) else {
            return;
        };
        if self.first_record_ms == 0 {
            self.first_record_ms = now_ms;
        }
        self.last_record_ms = now_ms;
        let offset = m.offset();
        if self.repartition.is_waiting(partition) {
            // Fetched before the pause: read again once the keys moving in are loaded.
            self.repartition.hold(partition, offset);
            return;
        }
        let rec = RawRecord {
            partition,
            offset,
            key: m.key(),
            payload: m.payload().unwrap_or(&[]),
        };
        let traced = if crate::traces::reads(self.trace_every, offset) {
            crate::traces::record(m)
        } else {
            None
        };
        let (event_time, _) = match traced {
            None => self.driver.process(&rec, now_ms, &mut self.out),
            Some((span, trace)) => {
                let _in = span.enter();
                self.driver
                    .process_traced(&rec, trace, now_ms, &mut self.out)
            }
        };
        self.advance_position(partition, offset + 1);
        let ts = m.timestamp().to_millis();
        self.sample += 1;
        if self.sample.is_multiple_of(LATENCY_SAMPLE_EVERY)
            && let Some(ts) = ts
        {
            self.metrics
                .stage_latency("kafka_to_processed", (now_ms - ts).max(0) as f64 / 1e3);
            if let Some(et) = event_time {
                self.metrics
                    .stage_latency("event_to_kafka", (ts - et).max(0) as f64 / 1e3);
            }
        }
        if !self.out.is_empty() {
            self.emit(now_ms, ts);
        }
    }

    #[inline]
    fn advance_position(&mut self, partition: i32, next: i64) {
        if let Some(p) = self.positions.iter_mut().find(|(p, _)| *p == partition) {
            p.1 = p.1.max(next);
        } else {
            self.positions.push((partition, next));
        }
    }

    fn emit(&mut self, now_ms: i64, trigger_timestamp_ms: Option<i64>) {
        let processed = Instant::now();
        let Core {
            out,
            sinks,
            ids,
            metrics,
            alerts_sent,
            dead_letters,
            unsent_dead_letters_logged,
            notifier,
            kpi_store,
            group_link,
            ..
        } = self;
        let origin = |p: i32| {
            let (topic, partition) = ids.kafka(p).unwrap_or(("", p));
            Origin {
                topic,
                partition,
                processed,
                trigger_timestamp_ms,
            }
        };
        let first = ids.kafka(0).map(|(t, _)| t).unwrap_or("");
        let timer_origin = Origin {
            topic: first,
            partition: -1,
            processed,
            trigger_timestamp_ms,
        };
        for a in &out.alerts {
            sinks.send_alert(a, timer_origin);
            *alerts_sent += 1;
            if let Some(n) = notifier.as_ref() {
                for u in n.offer(a) {
                    undelivered(sinks, metrics, &u, timer_origin);
                }
            }
            // Model alerts carry `revision` while a rollout runs: the alert rate per revision.
            if let (Some(model), Some(revision)) = (a.labels.get("model"), a.labels.get("revision"))
            {
                let status = match a.status {
                    vigil_core::rules::alert::AlertStatus::Firing => "firing",
                    vigil_core::rules::alert::AlertStatus::Resolved => "resolved",
                };
                metrics.scoring().revision_alert(model, revision, status);
            }
        }
        for w in &out.windows {
            sinks.send_window(w, now_ms, timer_origin);
            if let Some(k) = kpi_store.as_ref() {
                k.offer(w);
            }
        }
        if let Some(link) = group_link.as_ref() {
            link.send_records(sinks, &out.group_records, now_ms, timer_origin);
        }
        for d in &out.dead_letters {
            *dead_letters += 1;
            metrics.dead_letter(d.reason.kind());
            let o = origin(d.partition);
            if !sinks.send_dead_letter(d, o.partition, now_ms, o) {
                // No dead-letter topic: count and log (rate-limited), never drop silently.
                *unsent_dead_letters_logged += 1;
                let n = *unsent_dead_letters_logged;
                if n <= 10 || n.is_power_of_two() {
                    tracing::warn!(
                        topic = o.topic, partition = o.partition, offset = d.offset, reason = %d.reason, total = n,
                        "Dead letter with no dead-letter sink configured (spec.sinks.deadLetter); counted in vigil_dead_letters_total."
                    );
                }
            }
        }
        out.clear();
    }

    /// Routes the AnomalyModels to their model servers, starting the scoring worker on first
    /// use (scoring never runs on this loop, see [`crate::scoring::worker`]).
    fn set_models(&mut self, models: &[&AnomalyModel]) -> Result<(), ScoringError> {
        if self.driver.worker.is_none() && !models.is_empty() {
            self.driver.worker = Some(ScoringWorker::start(
                self.scorer_config.clone(),
                self.metrics.scoring().clone(),
            )?);
        }
        match self.driver.worker.as_ref() {
            Some(w) => w.route_models(models, self.model_server.as_deref()),
            None => Ok(()),
        }
    }

    /// Waits a bounded time for model windows still being scored and applies their scores
    /// (end of input, shutdown): one attempt's budget twice, at most [`SETTLE_MAX`].
    fn settle_scoring(&mut self, now_ms: i64) {
        let c = &self.scorer_config;
        let retries = u32::try_from(c.retries).unwrap_or(u32::MAX);
        let attempts = c.deadline.saturating_mul(retries.saturating_add(1))
            + c.backoff_max.saturating_mul(retries);
        let budget = attempts.saturating_mul(2).min(SETTLE_MAX);
        self.driver.settle(budget, now_ms, &mut self.out);
    }

    fn tick(&mut self, now_ms: i64) {
        if let Some(n) = &self.notifier {
            let origin = timer_origin(&self.ids);
            for u in n.undelivered() {
                undelivered(&self.sinks, &self.metrics, &u, origin);
            }
        }
        let metrics = &self.metrics;
        self.driver
            .apply_scored_observing(now_ms, &mut self.out, |ms| {
                metrics.stage_latency("closed_to_scored", ms as f64 / 1e3);
            });
        for v in self.driver.take_shadow() {
            self.sinks.send_shadow(&v, now_ms);
        }
        self.driver.advance(now_ms, &mut self.out);
        if !self.out.is_empty() {
            self.emit(now_ms, None);
        }
        self.send_group_progress(now_ms, false);
        let c = self.driver.engine.counters();
        self.metrics.engine_progress(&self.prev, &c);
        self.prev = c;
        for (i, (_, wm)) in self.driver.engine.watermarks().iter().enumerate() {
            if let Some(wm) = wm.event_time() {
                self.metrics
                    .watermark_delay(&self.tiers[i], (now_ms - wm) as f64 / 1e3);
            }
        }
        if now_ms - self.lag_refreshed_ms >= 1000 {
            self.lag_refreshed_ms = now_ms;
            self.metrics.lag().refresh(Instant::now());
        }
    }

    /// Key stage of a pipeline with groups: reports the partitions' watermarks to the group
    /// stage (rate-limited unless `force`).
    fn send_group_progress(&mut self, now_ms: i64, force: bool) {
        if let Some(link) = self.group_link.as_mut() {
            let origin = timer_origin(&self.ids);
            link.send_progress(&self.sinks, &self.driver.engine, now_ms, force, origin);
        }
    }

    /// Snapshots the committable offsets at the end of the current epoch.
    fn snapshot(&mut self) {
        let offsets = self.driver.engine.committable_offsets();
        let epoch = self.sinks.next_epoch();
        if !offsets.is_empty() {
            self.pending.push_back((epoch, offsets));
        }
        self.metrics.engine_size(
            self.driver.engine.key_count(),
            self.driver.engine.rule_names().len(),
        );
    }

    /// Commits the newest snapshot whose epoch is fully acknowledged.
    fn commit_acknowledged(&mut self, consumer: &GroupConsumer) {
        let tracker = self.sinks.tracker().clone();
        let mut ready = None;
        while let Some((epoch, _)) = self.pending.front() {
            if !tracker.completed_through(*epoch) {
                break;
            }
            ready = self.pending.pop_front().map(|(_, o)| o);
        }
        if let Some(offsets) = ready {
            self.commit(consumer, &offsets, CommitMode::Async);
        }
    }

    /// Commits `offsets`; whether a commit was made (async: sent). Nothing is committed once an
    /// output failed to be delivered.
    fn commit(&self, consumer: &GroupConsumer, offsets: &[(i32, i64)], mode: CommitMode) -> bool {
        if self.sinks.tracker().failed() > 0 {
            return false;
        }
        if offsets.is_empty() {
            return true; // nothing to commit
        }
        let tpl = self.ids.to_tpl(offsets);
        if let Err(e) = consumer.commit(&tpl, mode) {
            self.metrics.commit(false);
            tracing::warn!(error = %e, "Offset commit failed; the next commit retries.");
            false
        } else {
            if matches!(mode, CommitMode::Sync) {
                // Async commits are counted in the commit callback; sync ones have none.
                self.metrics.commit(true);
            }
            true
        }
    }

    /// Waits for every output, then commits the current committable offsets synchronously.
    /// Whether offsets were committed.
    fn flush_and_commit(&mut self, consumer: &GroupConsumer, mode: CommitMode) -> bool {
        if let Err(e) = self.sinks.flush(Duration::from_secs(30)) {
            tracing::error!(error = %e, in_flight = self.sinks.tracker().in_flight(), "Outputs not acknowledged; offsets are not committed.");
            return false;
        }
        self.pending.clear();
        let offsets = self.driver.engine.committable_offsets();
        self.commit(consumer, &offsets, mode)
    }

    fn drained(&self, end: &[(i32, i64)]) -> bool {
        let read = |(p, o): &(i32, i64)| self.positions.iter().any(|(q, n)| q == p && n >= o);
        match &self.drain_barrier {
            None => end.iter().all(read),
            // One of several workers: the input ends for all of them together, once every
            // partition was read to its end by whichever worker owns it.
            Some((worker, b)) => {
                let mine: Vec<i32> = end.iter().filter(|e| read(e)).map(|e| e.0).collect();
                b.publish(*worker, &mine);
                b.complete(end.iter().map(|e| e.0))
            }
        }
    }
}

/// The origin of outputs no record triggered (a tick): the first source topic, no partition.
fn timer_origin(ids: &PartitionIds) -> Origin<'_> {
    Origin {
        topic: ids.kafka(0).map(|(t, _)| t).unwrap_or(""),
        partition: -1,
        processed: Instant::now(),
        trigger_timestamp_ms: None,
    }
}

/// Dead-letters an alert transition an HTTP receiver did not get (reason `delivery`), or logs
/// it when there is no dead-letter topic.
fn undelivered(
    sinks: &Sinks,
    metrics: &Metrics,
    u: &crate::notify::Undelivered,
    origin: Origin<'_>,
) {
    metrics.dead_letter("delivery");
    if !sinks.send_undelivered(u, origin) {
        tracing::warn!(receiver = u.receiver, rule = %u.alert.rule, key = %u.alert.key, error = %u.error,
            "Alert not delivered and no dead-letter topic configured (spec.sinks.deadLetter); counted in vigil_dead_letters_total (reason delivery).");
    }
}

/// Validates the pipeline, builds the engine, the sinks and the consumer, subscribes, and
/// starts the loop on a new thread.
///
/// # Errors
/// [`RunError`] for an invalid pipeline or source, or a client that cannot be created.
pub fn spawn(cfg: RunnerConfig, metrics: Metrics) -> Result<RunnerHandle, RunError> {
    if cfg.workers > 1 && cfg.worker.is_none() && !cfg.group_stage {
        return workers::spawn(cfg, metrics);
    }
    let metrics = metrics.for_worker(cfg.worker.unwrap_or(0));
    let mut pcfg =
        PipelineConfig::from_resource(&cfg.pipeline).map_err(RunError::InvalidPipeline)?;
    if cfg.group_stage {
        pcfg = pcfg
            .group_stage()
            .ok_or_else(|| RunError::Groups("the pipeline has no spec.groups".into()))?;
    }
    let trace_every = crate::traces::record_every().map_err(RunError::Tracing)?;
    let name = pcfg.name.clone();
    let tiers = pcfg.tiers.iter().map(|t| t.name.clone()).collect();
    let spec = &cfg.pipeline.spec;
    // A worker is a group member of its own: its instance id, client id and member name say
    // which.
    let suffix = cfg.worker.map(|i| format!("-w{i}")).unwrap_or_default();
    let mut settings = SourceSettings::from_spec(
        &name,
        &spec.source.kafka,
        &cfg.bootstrap_servers,
        cfg.group_instance_id
            .as_ref()
            .map(|g| format!("{g}{suffix}")),
    )
    .map_err(RunError::Source)?;
    settings.client_id.push_str(&suffix);
    let mut member = checkpointing::member_id(settings.group_instance_id.as_deref());
    if settings.group_instance_id.is_none() {
        member.push_str(&suffix); // an instance id already carries it
    }
    // Fail fast and say why when the brokers cannot be reached, rather than a consumer that
    // retries forever in silence.
    crate::source::admin::check_reachable(&settings.consumer_config(), cfg.connect_timeout)?;
    let mut topics = SinkTopics::from(&spec.sinks);
    let mut producer_config = settings.producer_config();
    topics.fit_broker_limits(
        &cfg.bootstrap_servers,
        &mut producer_config,
        cfg.connect_timeout,
    );
    let opts = EngineOptions {
        emit_windows: topics.kpis.is_some() || spec.sinks.kpi_store.is_some(),
        ..Default::default()
    };
    let rule_refs: Vec<&DetectionRule> = cfg.rules.iter().collect();
    let model_refs: Vec<&AnomalyModel> = cfg.models.iter().collect();
    let (mut engine, rule_errors) = Engine::new(pcfg, &rule_refs, &model_refs, opts);
    // The key stage of a pipeline with groups: its group topic, then its group stage.
    let group_topic = (!cfg.group_stage)
        .then(|| engine.config().groups.as_ref().map(|g| g.topic.clone()))
        .flatten();
    let group_link = group_topic
        .as_deref()
        .map(|t| {
            groups::GroupLink::open(
                &settings.consumer_config(),
                &settings.topics,
                t,
                cfg.connect_timeout,
            )
        })
        .transpose()
        .map_err(RunError::Groups)?;
    let companion = match &group_topic {
        // One group stage per process: with several workers, worker 0 runs it. It waits for
        // every source partition's progress, whichever worker reports it, and a bounded input
        // drains it after every worker flushed (see workers::DrainBarrier).
        Some(t) if cfg.worker.is_none_or(|w| w == 0) => {
            let mut g = cfg.clone();
            g.pipeline = groups::group_stage_pipeline(&cfg.pipeline, t);
            g.group_stage = true;
            g.latency_probe = None;
            g.drain_barrier = None;
            let mut h = spawn(g, metrics.clone())?;
            h.drain_target = Some((settings.consumer_config(), t.clone()));
            Some(Box::new(h))
        }
        _ => None,
    };
    // Group windows' keys are groups, not entity keys: no reference data there.
    if let Some(e) = spec.enrichment.as_ref().filter(|_| !cfg.group_stage) {
        let reference = match &e.topic {
            Some(topic) => crate::enrichment::follow_topic(
                e,
                topic,
                settings.consumer_config(),
                cfg.connect_timeout,
                metrics.clone(),
            ),
            None => crate::enrichment::follow(e, cfg.enrichment_file.as_deref(), metrics.clone()),
        }
        .map_err(RunError::Enrichment)?;
        engine.set_reference(Some(reference));
    }
    for e in &rule_errors {
        tracing::error!(error = %e, "A DetectionRule does not compile; it is left out.");
    }
    let sinks = Sinks::new(
        &producer_config,
        topics,
        metrics.clone(),
        cfg.latency_probe.clone(),
    )
    .map_err(RunError::Sink)?;
    metrics.engine_size(0, engine.rule_names().len());
    let notifier = crate::notify::Notifier::from_spec(&spec.sinks, metrics.clone())
        .map_err(RunError::Notify)?;
    let kpi_store = spec
        .sinks
        .kpi_store
        .as_ref()
        .map(|k| {
            let mut member = member.clone();
            if cfg.group_stage {
                member.push_str("-groups");
            }
            crate::kpi_store::KpiStore::open(k, &name, &member, metrics.clone())
        })
        .transpose()
        .map_err(RunError::KpiStore)?;
    let checkpointing = match &engine.config().checkpointing {
        Some(c) => Some(checkpointing::Checkpointing {
            store: checkpointing::open_store(c, &name).map_err(RunError::Checkpoints)?,
            cfg: c.clone(),
            member,
            spec_fingerprint: vigil_core::engine::snapshot::spec_fingerprint(&cfg.pipeline.spec),
            upgrade_mode: engine.config().upgrade_mode,
            pipeline: name.clone(),
            topics: settings.topics.clone(),
            last_completed: Vec::new(),
        }),
        None => None,
    };
    let (warn_ms, critical_ms) =
        vigil_api::v1alpha1::LagThresholds::millis(cfg.pipeline.spec.lag.as_ref());
    metrics.lag().set_thresholds(warn_ms, critical_ms);
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            driver: Driver::new(engine, None),
            sinks,
            out: Outputs::default(),
            ids: settings.partition_ids(),
            metrics: metrics.clone(),
            pending: VecDeque::new(),
            prev: Counters::default(),
            sample: 0,
            positions: Vec::new(),
            alerts_sent: 0,
            dead_letters: 0,
            unsent_dead_letters_logged: 0,
            tiers,
            first_record_ms: 0,
            last_record_ms: 0,
            model_server: cfg.model_server.clone(),
            scorer_config: cfg.scorer.clone(),
            checkpointing,
            decisions: (cfg.rollout_decisions.clone(), 0),
            lag_refreshed_ms: 0,
            trace_every,
            repartition: repartition::Repartition::new(spec.source.kafka.partitioner),
            notifier,
            kpi_store,
            companion_control: companion.as_ref().map(|c| c.control()),
            group_link,
            drain_barrier: cfg
                .drain_barrier
                .clone()
                .map(|b| (cfg.worker.unwrap_or(0), b)),
        }),
    });
    shared
        .lock()
        .set_models(&model_refs)
        .map_err(RunError::Scoring)?;
    let ctx = SourceContext::new(shared.clone(), metrics.clone());
    let assignment = ctx.assignment_handle();
    let consumer: GroupConsumer = settings
        .consumer_config()
        .create_with_context(ctx)
        .map_err(RunError::CreateConsumer)?;
    let topic_refs: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(RunError::Subscribe)?;
    tracing::info!(
        pipeline = %name, bootstrap = %settings.bootstrap_servers, topics = ?settings.topics, group = %settings.consumer_group,
        group_instance_id = ?settings.group_instance_id, rules = ?shared.lock().driver.engine.rule_names(),
        "Detector started."
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let loop_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name(if cfg.group_stage {
            format!("vigil-{name}-groups{suffix}")
        } else {
            format!("vigil-{name}{suffix}")
        })
        .spawn(move || {
            run_loop(
                consumer,
                shared,
                rx,
                loop_stop,
                cfg.commit_interval,
                cfg.poll_timeout,
                metrics,
            )
        })
        .map_err(|_| RunError::Panicked)?;
    Ok(RunnerHandle {
        stop,
        control: tx,
        thread,
        rule_errors,
        assignment,
        drain_target: None,
        companion,
        siblings: Vec::new(),
    })
}

fn run_loop(
    consumer: GroupConsumer,
    shared: Arc<Shared>,
    control: Receiver<Control>,
    stop: Arc<AtomicBool>,
    commit_interval: Duration,
    poll_timeout: Duration,
    metrics: Metrics,
) -> Result<RunSummary, RunError> {
    let tick_ms = (poll_timeout.as_millis() as i64).max(1);
    let commit_ms = (commit_interval.as_millis() as i64).max(1);
    let mut next_tick = wall_clock_ms() + tick_ms;
    let mut next_commit = wall_clock_ms() + commit_ms;
    let checkpoint_ms = shared
        .lock()
        .checkpointing
        .as_ref()
        .map_or(i64::MAX, |c| c.cfg.interval_ms);
    let mut next_checkpoint = wall_clock_ms().saturating_add(checkpoint_ms);
    let mut drain: Option<Vec<(i32, i64)>> = None;
    let mut drained = false;
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let polled = consumer.poll(poll_timeout);
        let now_ms = wall_clock_ms();
        match polled {
            Some(Ok(m)) => shared.lock().on_record(&m, now_ms),
            Some(Err(e)) => tracing::warn!(error = %e, "Consumer error."),
            None => {}
        }
        if now_ms < next_tick {
            continue;
        }
        next_tick = now_ms + tick_ms;
        let mut core = shared.lock();
        core.tick(now_ms);
        loop {
            match control.try_recv() {
                Ok(Control::ReplaceRules {
                    rules,
                    models,
                    changed_at,
                }) => {
                    let refs: Vec<&DetectionRule> = rules.iter().collect();
                    let model_refs: Vec<&AnomalyModel> = models.iter().collect();
                    let errors = core.driver.engine.replace_rules(&refs, &model_refs);
                    if let Err(e) = core.set_models(&model_refs) {
                        tracing::error!(error = %e, "Model servers of the new AnomalyModels not usable; model windows stay unscored.");
                    }
                    for e in &errors {
                        tracing::error!(error = %e, "A DetectionRule does not compile; it is left out.");
                    }
                    if let Some(c) = &core.companion_control {
                        let _ = c.try_send(Control::ReplaceRules {
                            rules: rules.clone(),
                            models: models.clone(),
                            changed_at,
                        });
                    }
                    core.decisions.0.retain_rolled_out(&model_refs);
                    let (_, ds) = core.decisions.0.all();
                    crate::scoring::decisions::apply(&mut core.driver.engine, &ds);
                    metrics.rules_reloaded();
                    tracing::info!(
                        rules = ?core.driver.engine.rule_names(), invalid = errors.len(),
                        took_ms = changed_at.elapsed().as_secs_f64() * 1e3,
                        "Rules replaced without restart (time from the file change to the rules taking effect)."
                    );
                }
                Ok(Control::Savepoint { name, reply }) => {
                    let r = core.savepoint(&consumer, &name);
                    let _ = reply.try_send(r);
                }
                Ok(Control::DrainAndStop { end_offsets }) => {
                    let ends = end_offsets
                        .iter()
                        .filter_map(|(t, p, o)| core.ids.engine_partition(t, *p).map(|ep| (ep, *o)))
                        .collect();
                    drain = Some(ends);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if let Some((version, ds)) = core.decisions.0.changed_since(core.decisions.1) {
            crate::scoring::decisions::apply(&mut core.driver.engine, &ds);
            core.decisions.1 = version;
        }
        if let Some(end) = &drain
            && core.drained(end)
        {
            tracing::info!("Input drained; firing every open window (end of input).");
            let c = &mut *core;
            c.driver.flush(now_ms, &mut c.out);
            c.settle_scoring(now_ms);
            c.emit(now_ms, None);
            core.tick(now_ms);
            // Every window fired: the group stage may fire every group window.
            core.send_group_progress(now_ms, true);
            drained = true;
            break Ok(());
        }
        if core.checkpointing.is_some() {
            if now_ms >= next_checkpoint {
                next_checkpoint = now_ms + checkpoint_ms;
                core.checkpoint_periodic();
            }
            core.poll_checkpoints(&consumer);
            core.repartition_tick(&consumer);
        } else {
            if now_ms >= next_commit {
                next_commit = now_ms + commit_ms;
                core.snapshot();
            }
            core.commit_acknowledged(&consumer);
        }
        let failed = core.sinks.tracker().failed();
        if failed > 0 {
            break Err(RunError::Delivery(failed));
        }
    };
    // Graceful end: deliver, commit, then leave the group (the revoke callback runs in drop).
    let committed;
    let summary = {
        let mut core = shared.lock();
        let now_ms = wall_clock_ms();
        if !drained {
            core.settle_scoring(now_ms);
        }
        core.tick(now_ms);
        // The last alerts and windows are out: the receivers and the KPI store finish.
        if let Some(k) = core.kpi_store.take() {
            k.close(Duration::from_secs(30));
        }
        if let Some(n) = core.notifier.take() {
            let left = n.close(Duration::from_secs(10));
            let origin = Origin {
                topic: "",
                partition: -1,
                processed: Instant::now(),
                trigger_timestamp_ms: None,
            };
            for u in left {
                undelivered(&core.sinks, &core.metrics, &u, origin);
            }
        }
        committed = if core.checkpointing.is_none() {
            core.flush_and_commit(&consumer, CommitMode::Sync)
        } else if drained {
            // End of input fired every window: that state is not checkpointed, and nothing is
            // committed past the last checkpoint (see checkpointing).
            let _ = core.sinks.flush(Duration::from_secs(30));
            false
        } else {
            core.checkpoint_sync(&consumer, None, "shutdown")
        };
        core.metrics.worker_stopped();
        RunSummary {
            dead_letter_reasons: core.driver.engine.dead_letter_reasons().clone(),
            counters: core.driver.engine.counters(),
            alerts_sent: core.alerts_sent,
            dead_letters: core.dead_letters,
            drained,
            first_record_ms: core.first_record_ms,
            last_record_ms: core.last_record_ms,
        }
    };
    if drained && let Some((_, b)) = shared.lock().drain_barrier.clone() {
        // Leaving the group now would hand this worker's partitions to a worker still firing
        // its own: wait (bounded) until every worker is done.
        b.finished(Duration::from_secs(30));
    }
    drop(consumer);
    if committed {
        tracing::info!(
            events = summary.counters.records,
            alerts = summary.alerts_sent,
            dead_letters = summary.dead_letters,
            "Detector stopped after flushing outputs and committing offsets."
        );
    } else {
        tracing::warn!(
            events = summary.counters.records,
            alerts = summary.alerts_sent,
            dead_letters = summary.dead_letters,
            "Detector stopped without committing the last offsets (outputs not delivered); a restart reprocesses from the last commit."
        );
    }
    result.map(|()| summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::manifest::Manifests;
    use vigil_core::engine::Watermark;

    #[test]
    fn an_assigned_partition_holds_the_watermark_until_its_backlog_arrives() {
        let mut m = Manifests::default();
        m.add_str(
            "p",
            "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}\n  windows: [{name: w, size: 1s, idleTimeout: 10s}]\n  sinks: {alerts: {topic: a}}\n",
        )
        .unwrap();
        let (mut e, _) =
            Engine::from_resources(&m.pipelines[0], &[], &[], EngineOptions::default()).unwrap();
        let mut out = Outputs::default();
        let ev = |t: i64| format!(r#"{{"k":"a","t":{t},"v":1}}"#).into_bytes();
        // Partition 0 is read far ahead before partition 1 delivers anything.
        e.assign_partitions(&[0, 1], 0);
        for (i, t) in [0, 5_000, 9_000].into_iter().enumerate() {
            e.process(
                &RawRecord {
                    partition: 0,
                    offset: i as i64,
                    key: None,
                    payload: &ev(t),
                },
                100,
                &mut out,
            );
        }
        e.process(
            &RawRecord {
                partition: 1,
                offset: 0,
                key: None,
                payload: &ev(500),
            },
            200,
            &mut out,
        );
        assert!(
            out.dead_letters.is_empty(),
            "partition 1's backlog is not late"
        );
        // Unassigned partitions (the old behaviour) would have let the watermark reach 9 s.
        assert_eq!(e.watermarks()[0].1, Watermark::EventTime(500));
        // A partition that never delivers stops holding the watermark after the idle timeout.
        e.assign_partitions(&[2], 200);
        e.advance(20_000, &mut out);
        assert_eq!(e.watermarks()[0].1, Watermark::EventTime(9_000));
    }
}
