//! Prometheus metrics of the data path and the `/metrics` endpoint. This module owns every
//! metric name; the runner, the source and the sinks report through the typed methods of
//! [`Metrics`] and never touch the registry themselves.
//!
//! Names follow the Prometheus conventions (`_total` counters, base units: seconds, bytes).
//! Per-event latencies are sampled (one record in [`LATENCY_SAMPLE_EVERY`]) so that metrics cost
//! the hot path nothing measurable; alert latencies are observed for every alert.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use vigil_core::engine::Counters;

/// One record in this many feeds the per-event latency histograms.
pub const LATENCY_SAMPLE_EVERY: u64 = 16;

/// Labels of a source partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

/// Labels with a window tier name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// Window tier, e.g. `fast`.
    pub tier: String,
}

/// Labels of a pipeline stage latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `event_to_kafka` (event time -> Kafka timestamp), `kafka_to_processed` (Kafka timestamp
    /// -> engine), `processed_to_delivered` (engine -> alert acknowledged by the broker),
    /// `kafka_to_delivered` (Kafka timestamp of the record that fired a window -> alert
    /// acknowledged), `closed_to_scored` (a model window closed -> its score applied: the
    /// scoring backlog and inference).
    pub stage: &'static str,
}

/// Labels with a single `kind`/`reason`/`status`/`sink` value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Dead-letter reason: `decode` or `late`.
    pub reason: &'static str,
}

/// Labels of an alert status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `firing` or `resolved`.
    pub status: &'static str,
}

/// Labels of an output sink.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// `alerts`, `kpis` or `dead_letters`.
    pub sink: &'static str,
}

/// Labels of a late event's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LateLabels {
    /// `updated` (a fired window was re-emitted) or `dropped` (dead-lettered).
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s in factors of 2.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// Every metric of a detector process.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    events_in: Counter,
    decode_errors: Counter,
    dead_letters: Family<ReasonLabels, Counter>,
    late_events: Family<LateLabels, Counter>,
    windows_fired: Counter,
    alerts: Family<StatusLabels, Counter>,
    events_out: Family<SinkLabels, Counter>,
    delivery_errors: Family<SinkLabels, Counter>,
    commits: Counter,
    commit_errors: Counter,
    rebalances: Counter,
    assigned_partitions: Gauge,
    keys: Gauge,
    rules_loaded: Gauge,
    rules_reloads: Counter,
    consumer_lag: Family<PartitionLabels, Gauge>,
    watermark_delay: Family<TierLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    stage_latency: HistogramFamily<StageLabels>,
    client_errors: Family<ClientErrorLabels, Counter>,
    outputs_rejected: Family<RejectedLabels, Counter>,
    checkpoints: Family<CheckpointLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    notification_queue: Family<ReceiverLabels, Gauge>,
    kpi_rows: Family<ResultLabels, Counter>,
    enrichment_keys: Gauge,
    enrichment_loads: Family<ResultLabels, Counter>,
    keys_expired: Counter,
    keys_refused: Counter,
    checkpoint_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    checkpoint_bytes: Gauge,
    restored_keys: Counter,
    client_error_log: Arc<ClientErrorLog>,
    scoring: crate::scoring::ScoringMetrics,
    lag: crate::lag::LagMonitor,
    /// The engine worker this handle reports for ([`Self::for_worker`]); gauges of several
    /// workers are combined in `workers`.
    worker: usize,
    workers: Arc<std::sync::Mutex<WorkerGauges>>,
}

/// Per-worker values of the gauges several engine workers of one process report: the
/// exported gauge is their sum (partitions, keys) or maximum (watermark delay).
#[derive(Default)]
struct WorkerGauges {
    assigned: Vec<i64>,
    keys: Vec<i64>,
    watermark_delay: std::collections::HashMap<String, Vec<Option<f64>>>,
}

fn slot<T: Default + Clone>(v: &mut Vec<T>, i: usize) -> &mut T {
    if v.len() <= i {
        v.resize(i + 1, T::default());
    }
    &mut v[i]
}

/// Labels of `vigil_kpi_rows_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    /// KPI rows: `written`, `write_failed` (retried with the next flush) or `dropped`;
    /// reference data: `loaded`, `reloaded` or `invalid`.
    result: &'static str,
}

/// Labels of `vigil_notification_queue`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabels {
    /// `alertmanager`, `pagerduty` or `webhook`.
    receiver: &'static str,
}

/// Labels of `vigil_notifications_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    /// `alertmanager`, `pagerduty` or `webhook`.
    receiver: &'static str,
    /// `sent` (a transition delivered), `resent` (a firing or recently resolved alert posted
    /// again), `retried` (a failed attempt retried), `failed` (given up: dead-lettered) or
    /// `dropped` (the queue was full: dead-lettered).
    result: &'static str,
}

/// Labels of `vigil_checkpoints_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckpointLabels {
    /// `periodic`, `revoke` or `shutdown`.
    trigger: String,
    /// `completed` or `failed`.
    result: &'static str,
}

/// Labels of `vigil_outputs_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    sink: &'static str,
    code: String,
}

/// Labels of `vigil_kafka_client_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientErrorLabels {
    /// `consumer` or `producer`.
    client: String,
    /// librdkafka's error code, e.g. `BrokerTransportFailure`, `AllBrokersDown`.
    code: String,
}

/// How often one kind of Kafka client error is logged while it persists.
pub const CLIENT_ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Kafka client errors logged at most once per [`CLIENT_ERROR_LOG_EVERY`] per (client, code),
/// each line saying how many were not logged since: a broker that is down makes librdkafka
/// report every reconnect attempt, which must not flood the log.
#[derive(Default)]
struct ClientErrorLog {
    last: std::sync::Mutex<std::collections::HashMap<(String, String), (std::time::Instant, u64)>>,
}

impl ClientErrorLog {
    /// Whether to log now, and how many were suppressed before.
    fn admit(&self, client: &str, code: &str, now: std::time::Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(&(client.to_string(), code.to_string())) {
            Some((at, suppressed)) if now.duration_since(*at) < CLIENT_ERROR_LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert((client.to_string(), code.to_string()), (now, 0));
                Some(0)
            }
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the metrics and registers them under the `vigil_` prefix.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("vigil");
        let m = Self {
            registry: Arc::new(Registry::default()),
            events_in: Counter::default(),
            decode_errors: Counter::default(),
            dead_letters: Family::default(),
            late_events: Family::default(),
            windows_fired: Counter::default(),
            alerts: Family::default(),
            events_out: Family::default(),
            delivery_errors: Family::default(),
            client_errors: Family::default(),
            outputs_rejected: Family::default(),
            checkpoints: Family::default(),
            notifications: Family::default(),
            notification_queue: Family::default(),
            kpi_rows: Family::default(),
            enrichment_keys: Gauge::default(),
            enrichment_loads: Family::default(),
            keys_expired: Counter::default(),
            keys_refused: Counter::default(),
            checkpoint_seconds: Gauge::default(),
            checkpoint_bytes: Gauge::default(),
            restored_keys: Counter::default(),
            client_error_log: Arc::default(),
            worker: 0,
            workers: Arc::default(),
            commits: Counter::default(),
            commit_errors: Counter::default(),
            rebalances: Counter::default(),
            assigned_partitions: Gauge::default(),
            keys: Gauge::default(),
            rules_loaded: Gauge::default(),
            rules_reloads: Counter::default(),
            consumer_lag: Family::default(),
            watermark_delay: Family::default(),
            stage_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            scoring: crate::scoring::ScoringMetrics::default(),
            lag: crate::lag::LagMonitor::default(),
        };
        r.register(
            "events_in",
            "Records consumed from the source topics",
            m.events_in.clone(),
        );
        r.register(
            "decode_errors",
            "Records that could not be decoded",
            m.decode_errors.clone(),
        );
        r.register(
            "dead_letters",
            "Events sent to the dead-letter sink (or only counted without one), by reason",
            m.dead_letters.clone(),
        );
        r.register(
            "late_events",
            "Events behind the watermark, by outcome",
            m.late_events.clone(),
        );
        r.register(
            "windows_fired",
            "Windows fired (first firings)",
            m.windows_fired.clone(),
        );
        r.register(
            "alerts",
            "Alert transitions produced, by status",
            m.alerts.clone(),
        );
        r.register(
            "events_out",
            "Records acknowledged by the broker, by sink",
            m.events_out.clone(),
        );
        r.register(
            "delivery_errors",
            "Records the broker did not acknowledge, by sink",
            m.delivery_errors.clone(),
        );
        r.register("offset_commits", "Offset commits sent", m.commits.clone());
        r.register(
            "checkpoints",
            "Checkpoints of window and rule state, by trigger and result",
            m.checkpoints.clone(),
        );
        r.register(
            "notifications",
            "Alert notifications to HTTP receivers (spec.sinks.alertmanager, pagerduty, webhook), by receiver and result",
            m.notifications.clone(),
        );
        r.register(
            "enrichment_keys",
            "Entity keys listed in the reference data (spec.enrichment)",
            m.enrichment_keys.clone(),
        );
        r.register(
            "enrichment_loads",
            "Reference data loads and changes, by result (loaded: at start; reloaded: the file changed; updated: topic records applied; invalid: a file or record that does not parse)",
            m.enrichment_loads.clone(),
        );
        r.register(
            "kpi_rows",
            "Window rows of the KPI store (spec.sinks.kpiStore), by result",
            m.kpi_rows.clone(),
        );
        r.register(
            "notification_queue",
            "Alert transitions waiting for delivery to HTTP receivers",
            m.notification_queue.clone(),
        );
        r.register(
            "last_checkpoint_duration_seconds",
            "Time of the last completed checkpoint, from the snapshot to its completion marker",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "last_checkpoint_bytes",
            "Size of the last completed checkpoint's snapshot",
            m.checkpoint_bytes.clone(),
        );
        r.register(
            "restored_keys",
            "Keys restored from checkpoints (on start and on partition assignment)",
            m.restored_keys.clone(),
        );
        r.register(
            "offset_commit_errors",
            "Offset commits that failed",
            m.commit_errors.clone(),
        );
        r.register(
            "rebalances",
            "Consumer group rebalances seen (assign or revoke)",
            m.rebalances.clone(),
        );
        r.register(
            "assigned_partitions",
            "Source partitions assigned to this detector",
            m.assigned_partitions.clone(),
        );
        r.register("keys", "Live keys with window state", m.keys.clone());
        r.register(
            "keys_expired",
            "Keys dropped after spec.keyState.idleTimeout of event time without events",
            m.keys_expired.clone(),
        );
        r.register(
            "keys_refused",
            "Events of new keys dead-lettered because spec.keyState.maxKeys keys were held",
            m.keys_refused.clone(),
        );
        r.register(
            "rules_loaded",
            "Detection rules running",
            m.rules_loaded.clone(),
        );
        r.register(
            "rules_reloads",
            "Rule reloads applied without restart",
            m.rules_reloads.clone(),
        );
        r.register("consumer_lag", "High watermark minus the next offset to process, per partition (librdkafka statistics)", m.consumer_lag.clone());
        r.register_with_unit(
            "watermark_delay",
            "Processing time minus the event-time watermark, per window tier",
            prometheus_client::registry::Unit::Seconds,
            m.watermark_delay.clone(),
        );
        r.register_with_unit(
            "stage_latency",
            "Latency per stage (per-event stages sampled 1 in 16)",
            prometheus_client::registry::Unit::Seconds,
            m.stage_latency.clone(),
        );
        r.register(
            "outputs_rejected",
            "Output records the broker refused for good (too large, invalid), per sink and error code",
            m.outputs_rejected.clone(),
        );
        r.register(
            "kafka_client_errors",
            "Errors the Kafka clients reported (connection refused, broker down, ...), per client and librdkafka error code",
            m.client_errors.clone(),
        );
        // `vigil_model_scoring_*`, named in crate::scoring::metrics.
        m.scoring.register(&mut r);
        // `vigil_stage_lag_*`, named in crate::lag.
        m.lag.register(&mut r);
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Counts a Kafka client error and logs it, rate-limited per (client, code): the first at
    /// once, then at most one line per [`CLIENT_ERROR_LOG_EVERY`] with the number left out.
    pub fn client_error(&self, client: &str, error: &rdkafka::error::KafkaError, reason: &str) {
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "Unknown".to_string(), |c| format!("{c:?}"));
        self.client_errors
            .get_or_create(&ClientErrorLabels {
                client: client.to_string(),
                code: code.clone(),
            })
            .inc();
        if let Some(suppressed) =
            self.client_error_log
                .admit(client, &code, std::time::Instant::now())
        {
            tracing::warn!(
                client,
                code,
                reason,
                suppressed,
                "Kafka client error (logged at most every 30 s per kind; all counted in vigil_kafka_client_errors_total)."
            );
        }
    }

    /// A librdkafka log line: warnings and errors rate-limited per (client, facility) like
    /// [`Self::client_error`], the rest at debug level.
    pub fn client_log(
        &self,
        client: &str,
        level: rdkafka::config::RDKafkaLogLevel,
        fac: &str,
        message: &str,
    ) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                if let Some(suppressed) = self.client_error_log.admit(
                    client,
                    &format!("log:{fac}"),
                    std::time::Instant::now(),
                ) {
                    tracing::warn!(client, facility = fac, suppressed, "librdkafka: {message}");
                }
            }
            L::Notice | L::Info | L::Debug => {
                tracing::debug!(client, facility = fac, "librdkafka: {message}");
            }
        }
    }

    /// The model scoring stage's metrics.
    pub fn scoring(&self) -> &crate::scoring::ScoringMetrics {
        &self.scoring
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        vigil_telemetry::Exposition::encode(&*self.registry)
    }

    /// Adds the growth of the engine's counters since `prev` (counters are cumulative per
    /// engine; a new engine starts again from zero, so pass its own previous snapshot).
    pub fn engine_progress(&self, prev: &Counters, now: &Counters) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        self.events_in.inc_by(d(prev.records, now.records));
        self.decode_errors
            .inc_by(d(prev.decode_errors, now.decode_errors));
        self.late_events
            .get_or_create(&LateLabels { outcome: "updated" })
            .inc_by(d(prev.late_updates, now.late_updates));
        self.late_events
            .get_or_create(&LateLabels { outcome: "dropped" })
            .inc_by(d(prev.late_dropped, now.late_dropped));
        self.windows_fired
            .inc_by(d(prev.windows_fired, now.windows_fired));
        self.keys_expired
            .inc_by(d(prev.keys_expired, now.keys_expired));
        self.keys_refused
            .inc_by(d(prev.keys_refused, now.keys_refused));
        self.alerts
            .get_or_create(&StatusLabels { status: "firing" })
            .inc_by(d(prev.alerts_firing, now.alerts_firing));
        self.alerts
            .get_or_create(&StatusLabels { status: "resolved" })
            .inc_by(d(prev.alerts_resolved, now.alerts_resolved));
    }

    /// Records consumed so far (as of the last tick of the run loop).
    pub fn events_in(&self) -> u64 {
        self.events_in.get()
    }

    /// A dead letter, by reason kind (`decode`, `late`).
    pub fn dead_letter(&self, reason: &'static str) {
        self.dead_letters
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A record acknowledged (`ok`) or finally rejected by the broker.
    pub fn delivered(&self, sink: &'static str, ok: bool) {
        if ok {
            self.events_out.get_or_create(&SinkLabels { sink }).inc();
        } else {
            self.delivery_errors
                .get_or_create(&SinkLabels { sink })
                .inc();
        }
    }

    /// An output record the broker did not take: `permanent` ones (too large, invalid) are
    /// counted in `vigil_outputs_rejected_total{sink,code}` and logged (rate-limited); others
    /// (not delivered in time) are logged as errors, and the run stops before committing past
    /// them.
    pub fn output_rejected(
        &self,
        sink: &'static str,
        error: &rdkafka::error::KafkaError,
        permanent: bool,
    ) {
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "Unknown".to_string(), |c| format!("{c:?}"));
        if permanent {
            self.outputs_rejected
                .get_or_create(&RejectedLabels {
                    sink,
                    code: code.clone(),
                })
                .inc();
            if let Some(suppressed) = self.client_error_log.admit(
                sink,
                &format!("rejected:{code}"),
                std::time::Instant::now(),
            ) {
                tracing::warn!(sink, code, %error, suppressed, "The broker refused an output record for good; it is counted in vigil_outputs_rejected_total and processing goes on.");
            }
        } else {
            tracing::error!(sink, code, %error, "An output record was not delivered; the detector will stop without committing past it.");
        }
    }

    /// An offset commit sent, or failed.
    pub fn commit(&self, ok: bool) {
        if ok {
            self.commits.inc();
        } else {
            self.commit_errors.inc();
        }
    }

    /// A checkpoint finished: `seconds` from snapshot to completion, `bytes` of snapshot.
    pub fn checkpoint(&self, trigger: &str, completed: Option<(f64, u64)>) {
        let result = if completed.is_some() {
            "completed"
        } else {
            "failed"
        };
        self.checkpoints
            .get_or_create(&CheckpointLabels {
                trigger: trigger.to_string(),
                result,
            })
            .inc();
        if let Some((seconds, bytes)) = completed {
            self.checkpoint_seconds.set(seconds);
            self.checkpoint_bytes.set(bytes as i64);
        }
    }

    /// `n` alert notifications to `receiver` ended with `result` (see `NotificationLabels`).
    pub fn notifications(&self, receiver: &'static str, result: &'static str, n: u64) {
        self.notifications
            .get_or_create(&NotificationLabels { receiver, result })
            .inc_by(n);
    }

    /// Reference data (re)loaded with `keys` keys, or refused (`invalid`).
    pub fn enrichment(&self, keys: usize, result: &'static str) {
        self.enrichment_keys.set(keys as i64);
        self.enrichment_loads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A reference data topic record that does not parse (`result="invalid"`; the key count
    /// stays).
    pub fn enrichment_record_invalid(&self) {
        self.enrichment_loads
            .get_or_create(&ResultLabels { result: "invalid" })
            .inc();
    }

    /// `n` KPI store rows ended with `result`.
    pub fn kpi_rows(&self, result: &'static str, n: u64) {
        self.kpi_rows
            .get_or_create(&ResultLabels { result })
            .inc_by(n);
    }

    /// Alert transitions waiting for delivery to `receiver`.
    pub fn notification_queue(&self, receiver: &'static str, n: usize) {
        self.notification_queue
            .get_or_create(&ReceiverLabels { receiver })
            .set(n as i64);
    }

    /// Keys restored from a checkpoint.
    pub fn restored(&self, keys: usize) {
        self.restored_keys.inc_by(keys as u64);
    }

    /// A rebalance event; `assigned` is the number of partitions held afterwards.
    pub fn rebalance(&self, assigned: usize) {
        self.rebalances.inc();
        let mut w = self.worker_gauges();
        *slot(&mut w.assigned, self.worker) = assigned as i64;
        self.assigned_partitions.set(w.assigned.iter().sum());
    }

    /// The handle engine worker `worker` of this process reports through: counters are
    /// shared, and the gauges of the workers are combined (partitions and keys summed,
    /// watermark delay the largest).
    pub fn for_worker(&self, worker: usize) -> Self {
        let mut m = self.clone();
        m.worker = worker;
        m
    }

    /// The worker stopped: its partitions, keys and watermark delays no longer count.
    pub fn worker_stopped(&self) {
        let mut w = self.worker_gauges();
        *slot(&mut w.assigned, self.worker) = 0;
        *slot(&mut w.keys, self.worker) = 0;
        self.assigned_partitions.set(w.assigned.iter().sum());
        self.keys.set(w.keys.iter().sum());
        for v in w.watermark_delay.values_mut() {
            *slot(v, self.worker) = None;
        }
    }

    fn worker_gauges(&self) -> std::sync::MutexGuard<'_, WorkerGauges> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live keys and rules of the engine (with several workers: keys summed over them).
    pub fn engine_size(&self, keys: usize, rules: usize) {
        let mut w = self.worker_gauges();
        *slot(&mut w.keys, self.worker) = keys as i64;
        self.keys.set(w.keys.iter().sum());
        self.rules_loaded.set(rules as i64);
    }

    /// Rules replaced without restart.
    pub fn rules_reloaded(&self) {
        self.rules_reloads.inc();
    }

    /// Consumer lag of one partition.
    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabels {
                topic: topic.to_string(),
                partition,
            })
            .set(lag);
    }

    /// Forgets the lag of a partition that is no longer assigned.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        self.consumer_lag.remove(&PartitionLabels {
            topic: topic.to_string(),
            partition,
        });
    }

    /// Processing time minus the watermark of a tier, in seconds (with several workers: the
    /// largest, the worker furthest behind).
    pub fn watermark_delay(&self, tier: &str, seconds: f64) {
        let mut w = self.worker_gauges();
        let v = w.watermark_delay.entry(tier.to_string()).or_default();
        *slot(v, self.worker) = Some(seconds);
        let max = v
            .iter()
            .flatten()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        self.watermark_delay
            .get_or_create(&TierLabels {
                tier: tier.to_string(),
            })
            .set(max);
    }

    /// One latency observation of a stage, in seconds (see [`StageLabels`]).
    pub fn stage_latency(&self, stage: &'static str, seconds: f64) {
        self.stage_latency
            .get_or_create(&StageLabels { stage })
            .observe(seconds);
        self.lag.observe(stage, seconds, std::time::Instant::now());
    }

    /// The stage lag monitor (`spec.lag`).
    pub fn lag(&self) -> &crate::lag::LagMonitor {
        &self.lag
    }
}

/// Failure of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The listen address could not be bound.
    #[error("failed to bind the metrics endpoint to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Asks the running pipeline for a savepoint part named by the argument; the receiver gets
/// the part's metadata or why it failed.
pub type SavepointTrigger = Arc<
    dyn Fn(
            String,
        )
            -> std::sync::mpsc::Receiver<Result<crate::checkpoint::CheckpointMetadata, String>>
        + Send
        + Sync,
>;

/// Longest wait of `POST /savepoints/<name>` for the run loop's answer.
pub const SAVEPOINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Binds `addr` and returns the bound address and a future that serves `GET /metrics` (and
/// `GET /healthz`) until dropped. Bind `127.0.0.1:0` to pick a free port.
///
/// # Errors
/// [`TelemetryError::Bind`] when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    TelemetryError,
> {
    serve_with_savepoints(addr, metrics, None).await
}

/// [`serve`], plus `POST /savepoints/<name>` when `savepoints` is given: it takes this
/// detector's part of savepoint `<name>` and answers `200` with the part's
/// `_metadata.json` (see [`crate::checkpoint::CheckpointMetadata`]), `500` with the reason it
/// failed, or `503` when the run loop did not answer within [`SAVEPOINT_TIMEOUT`].
///
/// # Errors
/// [`TelemetryError::Bind`] when the address cannot be bound.
pub async fn serve_with_savepoints(
    addr: SocketAddr,
    metrics: Metrics,
    savepoints: Option<SavepointTrigger>,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    TelemetryError,
> {
    serve_detector(addr, metrics, savepoints, None).await
}

/// [`serve_with_savepoints`], plus `GET /lag` (the stage lag report, [`crate::lag`]) and the
/// rollout channel when `rollouts` is given
/// ([`vigil_api::contract::detector::rollouts`]): `GET /rollouts` answers the per-revision
/// evidence, `POST /rollouts/<model>` records a decision (`204`; `400` naming what is wrong
/// with the body).
///
/// # Errors
/// [`TelemetryError::Bind`] when the address cannot be bound.
pub async fn serve_detector(
    addr: SocketAddr,
    metrics: Metrics,
    savepoints: Option<SavepointTrigger>,
    rollouts: Option<crate::scoring::RolloutDecisions>,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    TelemetryError,
> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let mut app = vigil_telemetry::router(metrics.clone());
    if let Some(trigger) = savepoints {
        app = app.merge(
            axum::Router::new()
                .route("/savepoints/{name}", axum::routing::post(take_savepoint))
                .with_state(trigger),
        );
    }
    app = app.merge(
        axum::Router::new()
            .route(
                vigil_api::contract::detector::lag::LAG_PATH,
                axum::routing::get(lag_report),
            )
            .with_state(metrics.clone()),
    );
    if let Some(decisions) = rollouts {
        use vigil_api::contract::detector::rollouts::ROLLOUTS_PATH;
        app = app.merge(
            axum::Router::new()
                .route(ROLLOUTS_PATH, axum::routing::get(rollout_evidence))
                .route(
                    &format!("{ROLLOUTS_PATH}/{{model}}"),
                    axum::routing::post(rollout_decision),
                )
                .with_state((metrics, decisions)),
        );
    }
    Ok((bound, async move { axum::serve(listener, app).await }))
}

/// Identifies this process's counters (they restart from zero with the process).
fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}", std::process::id())
    })
}

async fn lag_report(
    axum::extract::State(metrics): axum::extract::State<Metrics>,
) -> impl axum::response::IntoResponse {
    let body = serde_json::to_string(&metrics.lag().report()).unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

type RolloutState = (Metrics, crate::scoring::RolloutDecisions);

async fn rollout_evidence(
    axum::extract::State((metrics, _)): axum::extract::State<RolloutState>,
) -> impl axum::response::IntoResponse {
    let body = serde_json::to_string(&vigil_api::contract::detector::rollouts::RolloutEvidence {
        instance: instance().to_string(),
        revisions: metrics.scoring().rollout_evidence(),
    })
    .unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

async fn rollout_decision(
    axum::extract::State((_, decisions)): axum::extract::State<RolloutState>,
    axum::extract::Path(model): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    match serde_json::from_slice::<vigil_api::contract::detector::rollouts::RolloutDecision>(&body)
    {
        Ok(d) => {
            tracing::info!(model = %model, candidate = %d.candidate, decision = ?d.decision, "Rollout decision received.");
            decisions.set(&model, d);
            (StatusCode::NO_CONTENT, String::new())
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("POST /rollouts/{model}: body is not a RolloutDecision: {e}\n"),
        ),
    }
}

async fn take_savepoint(
    axum::extract::State(trigger): axum::extract::State<SavepointTrigger>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let rx = trigger(name);
    match tokio::task::spawn_blocking(move || rx.recv_timeout(SAVEPOINT_TIMEOUT)).await {
        Ok(Ok(Ok(meta))) => (
            StatusCode::OK,
            serde_json::to_string_pretty(&meta).unwrap_or_default(),
        ),
        Ok(Ok(Err(reason))) => (StatusCode::INTERNAL_SERVER_ERROR, reason + "\n"),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer from the detector's run loop\n".into(),
        ),
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
    fn gauges_of_engine_workers_are_summed_or_the_largest_and_a_stopped_one_leaves() {
        let m = Metrics::new();
        let (w0, w1) = (m.for_worker(0), m.for_worker(1));
        w0.rebalance(3);
        w1.rebalance(1);
        w0.engine_size(100, 2);
        w1.engine_size(50, 2);
        w0.watermark_delay("fast", 2.0);
        w1.watermark_delay("fast", 7.5);
        w0.watermark_delay("fast", 1.0);
        assert_gauges(&m, 4, 150, "7.5");
        w1.worker_stopped();
        w0.watermark_delay("fast", 1.0);
        assert_gauges(&m, 3, 100, "1.0");
    }

    /// The process's partitions, keys and the `fast` tier's watermark delay as encoded.
    fn assert_gauges(m: &Metrics, partitions: u32, keys: u32, delay: &str) {
        let text = m.encode();
        for line in [
            format!("vigil_assigned_partitions {partitions}"),
            format!("vigil_keys {keys}"),
            format!("vigil_watermark_delay_seconds{{tier=\"fast\"}} {delay}"),
        ] {
            assert!(text.contains(&line), "{line} not in {text}");
        }
    }

    #[test]
    fn engine_progress_adds_deltas_and_encodes_labelled_series() {
        let m = Metrics::new();
        let a = Counters {
            records: 10,
            decode_errors: 1,
            alerts_firing: 2,
            ..Default::default()
        };
        let b = Counters {
            records: 25,
            decode_errors: 1,
            alerts_firing: 3,
            alerts_resolved: 1,
            ..Default::default()
        };
        m.engine_progress(&Counters::default(), &a);
        m.engine_progress(&a, &b);
        m.dead_letter("decode");
        m.consumer_lag("t", 3, 42);
        m.stage_latency("kafka_to_processed", 0.003);
        let text = m.encode();
        assert!(text.contains("vigil_events_in_total 25"), "{text}");
        assert!(
            text.contains("vigil_alerts_total{status=\"firing\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("vigil_alerts_total{status=\"resolved\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vigil_dead_letters_total{reason=\"decode\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vigil_consumer_lag{topic=\"t\",partition=\"3\"} 42"),
            "{text}"
        );
        assert!(
            text.contains("vigil_stage_latency_seconds_count{stage=\"kafka_to_processed\"} 1"),
            "{text}"
        );
    }

    /// `POST /savepoints/<name>` over real HTTP: the trigger's answer becomes the status and
    /// body (the run loop's side is tested against Kafka in tests/kafka_checkpoint.rs).
    #[test]
    fn savepoint_endpoint_answers_with_the_part_or_the_reason() {
        use std::io::{Read, Write};
        let rt = tokio::runtime::Runtime::new().unwrap();
        let trigger: SavepointTrigger = Arc::new(|name: String| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let answer = if name == "ok" {
                Ok(crate::checkpoint::CheckpointMetadata {
                    format_version: 1,
                    id: "chk-0000000000001-a".into(),
                    pipeline: "p".into(),
                    spec_fingerprint: "f".into(),
                    member: "a".into(),
                    created_ms: 1,
                    trigger: "savepoint".into(),
                    topics: vec!["t".into()],
                    partitions: vec![],
                    keys: 0,
                    bytes: 10,
                    savepoint: Some(name),
                })
            } else {
                Err("savepoints need spec.checkpointing".to_string())
            };
            tx.send(answer).unwrap();
            rx
        });
        let (addr, server) = rt
            .block_on(serve_with_savepoints(
                "127.0.0.1:0".parse().unwrap(),
                Metrics::new(),
                Some(trigger),
            ))
            .unwrap();
        rt.spawn(server);
        let post = |path: &str| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            write!(
                c,
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let ok = post("/savepoints/ok");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"savepoint\": \"ok\""), "{ok}");
        let failed = post("/savepoints/other");
        assert!(failed.starts_with("HTTP/1.1 500"), "{failed}");
        assert!(failed.contains("need spec.checkpointing"), "{failed}");
        // Without a trigger there is no such route.
        let (addr2, server2) = rt
            .block_on(serve("127.0.0.1:0".parse().unwrap(), Metrics::new()))
            .unwrap();
        rt.spawn(server2);
        let mut c = std::net::TcpStream::connect(addr2).unwrap();
        write!(c, "POST /savepoints/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    }
}
