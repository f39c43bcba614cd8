//! The sinks: alerts (CloudEvents JSON), window KPIs and dead letters written to Kafka by one
//! idempotent producer, and the delivery tracking that tells the runner which offsets are safe
//! to commit.
//!
//! Sends never block on the network: records go to librdkafka's bounded queue (a full queue
//! makes [`Sinks`] wait, which is the backpressure on the consumer loop). Deliveries are
//! grouped in *epochs*: the runner snapshots its committable offsets at the end of an epoch
//! and commits them once every record sent in that epoch and before it is acknowledged
//! ([`DeliveryTracker::completed_through`]). A record the broker finally rejects is counted in
//! [`DeliveryTracker::failed`]; the runner stops rather than commit past lost outputs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use vigil_api::v1alpha1::SinksSpec;

use crate::scoring::ShadowVerdict;
use crate::telemetry::Metrics;
use vigil_core::engine::{DeadLetter, WindowResult};
use vigil_core::rules::alert::Alert;

/// Failure of a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer could not be created from its configuration.
    #[error("failed to create the Kafka producer")]
    CreateProducer(#[source] KafkaError),
    /// Waiting for outstanding deliveries timed out or failed.
    #[error("failed to flush the Kafka producer")]
    Flush(#[source] KafkaError),
}

/// Which sink a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// `spec.sinks.alerts`.
    Alerts,
    /// `spec.sinks.kpis`.
    Kpis,
    /// `spec.sinks.deadLetter`.
    DeadLetters,
    /// The group topic (`spec.groups`).
    Groups,
}

impl SinkKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Alerts => "alerts",
            SinkKind::Kpis => "kpis",
            SinkKind::DeadLetters => "dead_letters",
            SinkKind::Groups => "groups",
        }
    }
}

/// What comes back with a delivery report.
#[derive(Debug)]
pub struct Delivery {
    epoch: u64,
    sink: SinkKind,
    processed: Instant,
    /// Kafka timestamp (epoch ms) of the source record whose processing produced this output.
    trigger_timestamp_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// Epoch of `outstanding[0]`.
    first_epoch: u64,
    /// Records not yet acknowledged, per epoch from `first_epoch`.
    outstanding: VecDeque<u64>,
    failed: u64,
    rejected: u64,
}

/// How the delivery of one output record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Delivered,
    /// Refused for good by the broker (e.g. larger than the topic allows): counted in
    /// `vigil_outputs_rejected_total`; offsets may move past it (retrying cannot help, and
    /// stopping would replay the same record forever).
    Rejected,
    /// Not delivered within the producer's timeout (broker down): the detector stops before
    /// committing past it, so a restart reprocesses it.
    Failed,
}

/// Outstanding deliveries per epoch.
#[derive(Debug, Default)]
pub struct DeliveryTracker {
    state: Mutex<TrackerState>,
}

impl DeliveryTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a record sent in `epoch` (epochs never decrease).
    pub fn sent(&self, epoch: u64) {
        let mut s = self.lock();
        if s.outstanding.is_empty() {
            s.first_epoch = epoch;
        }
        let idx = (epoch - s.first_epoch) as usize;
        if s.outstanding.len() <= idx {
            s.outstanding.resize(idx + 1, 0);
        }
        s.outstanding[idx] += 1;
    }

    /// Counts the delivery report of a record sent in `epoch`.
    pub fn done(&self, epoch: u64, outcome: Outcome) {
        let mut s = self.lock();
        match outcome {
            Outcome::Delivered => {}
            Outcome::Rejected => s.rejected += 1,
            Outcome::Failed => s.failed += 1,
        }
        if let Some(idx) = epoch.checked_sub(s.first_epoch)
            && let Some(n) = s.outstanding.get_mut(idx as usize)
        {
            *n = n.saturating_sub(1);
        }
        while s.outstanding.front() == Some(&0) {
            s.outstanding.pop_front();
            s.first_epoch += 1;
        }
    }

    /// Whether every record sent in `epoch` or before has been acknowledged or rejected.
    pub fn completed_through(&self, epoch: u64) -> bool {
        let s = self.lock();
        s.outstanding.is_empty() || epoch < s.first_epoch
    }

    /// Records that could not be delivered in time (the detector must not commit past them).
    pub fn failed(&self) -> u64 {
        self.lock().failed
    }

    /// Records the broker refused for good (counted, processing goes on).
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }

    /// Records not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.lock().outstanding.iter().sum()
    }
}

/// Optional raw latency samples for benchmarks: Kafka timestamp of the triggering record ->
/// alert acknowledged, in microseconds (the Kafka timestamp has millisecond resolution).
#[derive(Debug, Default)]
pub struct LatencyProbe {
    samples: Mutex<Vec<u64>>,
}

impl LatencyProbe {
    /// Takes the samples collected so far.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Producer context: delivery reports into the tracker and telemetry.
pub struct SinkContext {
    tracker: Arc<DeliveryTracker>,
    metrics: Metrics,
    probe: Option<Arc<LatencyProbe>>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.client_error("producer", &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.metrics.client_log("producer", level, fac, log_message);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Box<Delivery>) {
        let ok = result.is_ok();
        let outcome = match result {
            Ok(_) => Outcome::Delivered,
            Err((e, _)) => {
                let permanent = is_permanent_rejection(e);
                self.metrics.output_rejected(d.sink.as_str(), e, permanent);
                if permanent {
                    Outcome::Rejected
                } else {
                    Outcome::Failed
                }
            }
        };
        self.metrics.delivered(d.sink.as_str(), ok);
        if ok && d.sink == SinkKind::Alerts {
            self.metrics.stage_latency(
                "processed_to_delivered",
                d.processed.elapsed().as_secs_f64(),
            );
            if let Some(ts) = d.trigger_timestamp_ms {
                let now_us = crate::runner::wall_clock_us();
                let us = (now_us - ts * 1000).max(0) as u64;
                self.metrics
                    .stage_latency("kafka_to_delivered", us as f64 / 1e6);
                if let Some(p) = &self.probe {
                    p.samples.lock().unwrap_or_else(|e| e.into_inner()).push(us);
                }
            }
        }
        self.tracker.done(d.epoch, outcome);
    }
}

/// Topics of the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkTopics {
    /// Alerts topic.
    pub alerts: String,
    /// KPI topic, if any.
    pub kpis: Option<String>,
    /// Dead-letter topic, if any.
    pub dead_letters: Option<String>,
    /// Most bytes of the original key and value together copied into a dead-letter record
    /// (the key gets at most a quarter): `spec.sinks.deadLetter.maxPayloadBytes`, lowered to
    /// the topic's `max.message.bytes` less [`DEAD_LETTER_OVERHEAD`] when that is smaller.
    pub dead_letter_max_payload: usize,
}

impl From<&SinksSpec> for SinkTopics {
    fn from(s: &SinksSpec) -> Self {
        Self {
            alerts: s.alerts.topic.clone(),
            kpis: s.kpis.as_ref().map(|t| t.topic.clone()),
            dead_letters: s.dead_letter.as_ref().map(|t| t.topic.clone()),
            dead_letter_max_payload: s
                .dead_letter
                .as_ref()
                .and_then(|d| d.max_payload_bytes)
                .unwrap_or(vigil_api::v1alpha1::DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES)
                as usize,
        }
    }
}

/// Room left in a dead-letter record for headers and framing, bytes.
pub const DEAD_LETTER_OVERHEAD: usize = 16 * 1024;

impl SinkTopics {
    /// Makes the outputs follow the sink topics' `max.message.bytes`, read from the brokers:
    /// the dead-letter bound ([`Self::fit_topic_limits`]), and the producer's batches under the
    /// smallest limit (it applies to a whole record batch) and single records under the
    /// largest. When the limits cannot be read, nothing changes and a warning says so.
    ///
    /// The limits are read from `bootstrap` with the producer's connection settings (TLS, SASL:
    /// [`crate::source::admin::Cluster`]).
    pub fn fit_broker_limits(
        &mut self,
        bootstrap: &str,
        producer: &mut rdkafka::ClientConfig,
        timeout: std::time::Duration,
    ) {
        let names: Vec<&str> = [
            Some(self.alerts.as_str()),
            self.kpis.as_deref(),
            self.dead_letters.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut cluster = producer.clone();
        cluster.set("bootstrap.servers", bootstrap);
        let limits = match crate::source::admin::max_message_bytes(&cluster, &names, timeout) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "Sink topic limits could not be read; the producer keeps its defaults.");
                return;
            }
        };
        if let Some(bound) = self.fit_topic_limits(&limits) {
            tracing::info!(
                bound,
                "The dead-letter topic's max.message.bytes is below spec.sinks.deadLetter.maxPayloadBytes; dead-letter copies are cut to fit it."
            );
        }
        let sizes = limits.iter().map(|(_, l)| *l);
        if let Some(max) = sizes.clone().max() {
            producer.set(
                "message.max.bytes",
                max.clamp(1000, 1_000_000_000).to_string(),
            );
        }
        if let Some(min) = sizes.min() {
            producer.set(
                "batch.size",
                min.saturating_sub(1024).clamp(1000, 1_000_000).to_string(),
            );
        }
    }

    /// Lowers the dead-letter bound to what the topic takes (`max.message.bytes` per topic, as
    /// the broker reports it). Returns the new bound when it was lowered.
    pub fn fit_topic_limits(&mut self, limits: &[(String, usize)]) -> Option<usize> {
        let topic = self.dead_letters.as_deref()?;
        let limit = limits.iter().find(|(t, _)| t == topic)?.1;
        let fits = limit.saturating_sub(DEAD_LETTER_OVERHEAD).max(1024);
        (fits < self.dead_letter_max_payload).then(|| {
            self.dead_letter_max_payload = fits;
            fits
        })
    }
}

/// Longest `vigil.error` header, bytes (the reason text is cut beyond it).
const MAX_ERROR_HEADER: usize = 1024;

/// `bytes` cut to `max`.
fn cut(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

/// `s` cut to `max` bytes at a character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether the broker (or librdkafka before sending) refuses this record for good, whatever
/// the retries: it is counted as rejected and processing goes on. Other failures (timeouts, a
/// broker that is down) stop the detector before it commits past the record.
pub fn is_permanent_rejection(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// The producer of one pipeline and its topics.
pub struct Sinks {
    producer: ThreadedProducer<SinkContext>,
    topics: SinkTopics,
    tracker: Arc<DeliveryTracker>,
    epoch: u64,
}

/// Where an output came from, for headers and latency.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// When the engine produced the output.
    pub processed: Instant,
    /// Kafka timestamp of the record being processed (none for outputs of a timer).
    pub trigger_timestamp_ms: Option<i64>,
}

impl Sinks {
    /// Creates the producer (`config` from [`crate::source::SourceSettings::producer_config`]).
    ///
    /// # Errors
    /// [`SinkError::CreateProducer`] for an invalid configuration.
    pub fn new(
        config: &rdkafka::ClientConfig,
        topics: SinkTopics,
        metrics: Metrics,
        probe: Option<Arc<LatencyProbe>>,
    ) -> Result<Self, SinkError> {
        let tracker = Arc::new(DeliveryTracker::default());
        let ctx = SinkContext {
            tracker: tracker.clone(),
            metrics,
            probe,
        };
        let producer = config
            .create_with_context(ctx)
            .map_err(SinkError::CreateProducer)?;
        Ok(Self {
            producer,
            topics,
            tracker,
            epoch: 0,
        })
    }

    /// The topics.
    pub fn topics(&self) -> &SinkTopics {
        &self.topics
    }

    /// The delivery tracker.
    pub fn tracker(&self) -> &Arc<DeliveryTracker> {
        &self.tracker
    }

    /// The current epoch: records sent now belong to it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Closes the current epoch and returns it; later records belong to the next one.
    pub fn next_epoch(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch - 1
    }

    /// Sends an alert as a CloudEvents structured-mode JSON record keyed by the alert's
    /// fingerprint, with the `ce_id` header (the deterministic event id) for deduplication.
    pub fn send_alert(&self, alert: &Alert, origin: Origin<'_>) {
        // A traced alert: its producer span's `traceparent` in the CloudEvent and a header.
        let traced = crate::traces::alert_span(alert, &self.topics.alerts);
        let traceparent = traced.as_ref().map(|(_, tp)| tp.as_str());
        let payload = alert.to_cloudevent_json_traced(traceparent);
        let id = alert.event_id();
        let mut headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "content-type",
                value: Some("application/cloudevents+json"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "vigil.rule",
                value: Some(alert.rule.as_str()),
            });
        if let Some(tp) = traceparent {
            headers = headers.insert(Header {
                key: vigil_telemetry::trace::TRACEPARENT,
                value: Some(tp),
            });
        }
        let topic = self.topics.alerts.clone();
        self.send(
            &topic,
            Some(alert.fingerprint.as_bytes()),
            &payload,
            headers,
            alert.detection_time,
            SinkKind::Alerts,
            origin,
        );
    }

    /// Sends a fired window to the KPI topic (keyed by the entity key); a no-op without one.
    pub fn send_window(&self, w: &WindowResult, now_ms: i64, origin: Origin<'_>) {
        let Some(topic) = self.topics.kpis.clone() else {
            return;
        };
        let payload = w.to_json();
        self.send(
            &topic,
            Some(w.key.as_bytes()),
            &payload,
            OwnedHeaders::new(),
            now_ms,
            SinkKind::Kpis,
            origin,
        );
    }

    /// Records a shadow candidate's verdict on the KPI topic, keyed by the entity key (a
    /// `dev.vigil.model.shadow` JSON record, see [`ShadowVerdict::to_json`]); nothing without
    /// a KPI sink (the verdicts are still counted in the scoring metrics).
    pub fn send_shadow(&self, v: &ShadowVerdict, now_ms: i64) {
        let Some(topic) = self.topics.kpis.clone() else {
            return;
        };
        let origin = Origin {
            topic: "",
            partition: -1,
            processed: Instant::now(),
            trigger_timestamp_ms: None,
        };
        self.send(
            &topic,
            Some(v.key.as_bytes()),
            &v.to_json(),
            OwnedHeaders::new(),
            now_ms,
            SinkKind::Kpis,
            origin,
        );
    }

    /// Sends a dead letter with its original key and bytes and the headers `vigil.reason`
    /// (`DeadLetterReason::kind`), `vigil.error` (the message), `vigil.source.topic`,
    /// `vigil.source.partition` and `vigil.source.offset`. Returns false when no dead-letter
    /// topic is configured (the caller counts and logs it).
    pub fn send_dead_letter(
        &self,
        d: &DeadLetter,
        source_partition: i32,
        now_ms: i64,
        origin: Origin<'_>,
    ) -> bool {
        let Some(topic) = self.topics.dead_letters.clone() else {
            return false;
        };
        let error = d.reason.to_string();
        let error = cut_str(&error, MAX_ERROR_HEADER);
        let partition = source_partition.to_string();
        let offset = d.offset.to_string();
        let max = self.topics.dead_letter_max_payload;
        let mut headers = OwnedHeaders::new_with_capacity(7)
            .insert(Header {
                key: "vigil.reason",
                value: Some(d.reason.kind()),
            })
            .insert(Header {
                key: "vigil.error",
                value: Some(error),
            })
            .insert(Header {
                key: "vigil.source.topic",
                value: Some(origin.topic),
            })
            .insert(Header {
                key: "vigil.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "vigil.source.offset",
                value: Some(offset.as_str()),
            });
        // Key and value share the bound: the key gets at most a quarter of it, the value the
        // rest, so the record fits even when both are huge.
        let key = d.key.as_deref().map(|k| cut(k, max / 4));
        let max_payload = max - key.map_or(0, <[u8]>::len);
        if d.payload.len() > max_payload {
            headers = headers.insert(Header {
                key: "vigil.truncated",
                value: Some(d.payload.len().to_string().as_str()),
            });
        }
        if let Some(k) = d.key.as_deref().filter(|k| k.len() > max / 4) {
            headers = headers.insert(Header {
                key: "vigil.key.truncated",
                value: Some(k.len().to_string().as_str()),
            });
        }
        self.send(
            &topic,
            key,
            cut(&d.payload, max_payload),
            headers,
            now_ms,
            SinkKind::DeadLetters,
            origin,
        );
        true
    }

    /// Sends an alert transition an HTTP receiver did not get (see [`crate::notify`]) to the
    /// dead-letter topic: its CloudEvent, keyed by the fingerprint, with the headers
    /// `vigil.reason: delivery`, `vigil.error` and `vigil.receiver`. Returns false when no
    /// dead-letter topic is configured (the caller counts and logs it).
    pub fn send_undelivered(&self, u: &crate::notify::Undelivered, origin: Origin<'_>) -> bool {
        let Some(topic) = self.topics.dead_letters.clone() else {
            return false;
        };
        let payload = u.alert.to_cloudevent_json_traced(None);
        let error = cut_str(&u.error, MAX_ERROR_HEADER);
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "content-type",
                value: Some("application/cloudevents+json"),
            })
            .insert(Header {
                key: "vigil.reason",
                value: Some("delivery"),
            })
            .insert(Header {
                key: "vigil.error",
                value: Some(error),
            })
            .insert(Header {
                key: "vigil.receiver",
                value: Some(u.receiver),
            });
        self.send(
            &topic,
            Some(u.alert.fingerprint.as_bytes()),
            &payload,
            headers,
            u.alert.detection_time,
            SinkKind::DeadLetters,
            origin,
        );
        true
    }

    /// Sends a record of the group topic (`spec.groups`): a partial keyed by its group, or a
    /// progress record to partition `partition`.
    pub fn send_group_record(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        now_ms: i64,
        origin: Origin<'_>,
    ) {
        self.send_to(
            (topic, partition),
            key,
            payload,
            OwnedHeaders::new(),
            now_ms,
            SinkKind::Groups,
            origin,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        timestamp_ms: i64,
        sink: SinkKind,
        origin: Origin<'_>,
    ) {
        self.send_to(
            (topic, None),
            key,
            payload,
            headers,
            timestamp_ms,
            sink,
            origin,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn send_to(
        &self,
        (topic, partition): (&str, Option<i32>),
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        timestamp_ms: i64,
        sink: SinkKind,
        origin: Origin<'_>,
    ) {
        let delivery = Box::new(Delivery {
            epoch: self.epoch,
            sink,
            processed: origin.processed,
            trigger_timestamp_ms: origin.trigger_timestamp_ms,
        });
        let mut record: BaseRecord<'_, [u8], [u8], Box<Delivery>> =
            BaseRecord::with_opaque_to(topic, delivery)
                .payload(payload)
                .headers(headers)
                .timestamp(timestamp_ms);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.tracker.sent(self.epoch);
        let mut waited = Duration::ZERO;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Backpressure: librdkafka's queue is bounded; wait for deliveries.
                    record = r;
                    if waited == Duration::ZERO {
                        tracing::debug!(topic, "Producer queue full; waiting for deliveries.");
                    }
                    self.producer.poll(Duration::from_millis(1));
                    waited += Duration::from_millis(1);
                }
                Err((e, r)) => {
                    let permanent = is_permanent_rejection(&e);
                    self.producer
                        .context()
                        .metrics
                        .output_rejected(sink.as_str(), &e, permanent);
                    self.tracker.done(
                        r.delivery_opaque.epoch,
                        if permanent {
                            Outcome::Rejected
                        } else {
                            Outcome::Failed
                        },
                    );
                    return;
                }
            }
        }
    }

    /// Waits until every record sent so far is acknowledged (or rejected).
    ///
    /// # Errors
    /// [`SinkError::Flush`] when `timeout` passes first.
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer.flush(timeout).map_err(SinkError::Flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_complete_only_when_every_earlier_record_is_acknowledged() {
        let t = DeliveryTracker::default();
        assert!(t.completed_through(5));
        t.sent(0);
        t.sent(1);
        t.sent(1);
        t.sent(3);
        assert!(!t.completed_through(0));
        t.done(1, Outcome::Delivered);
        t.done(1, Outcome::Delivered);
        assert!(!t.completed_through(1), "epoch 0 still waits");
        t.done(0, Outcome::Delivered);
        assert!(t.completed_through(1));
        assert!(t.completed_through(2));
        assert!(!t.completed_through(3));
        t.done(3, Outcome::Failed);
        assert!(t.completed_through(3));
        assert_eq!(t.failed(), 1);
        t.sent(4);
        t.done(4, Outcome::Rejected);
        assert!(t.completed_through(4));
        assert_eq!((t.failed(), t.rejected()), (1, 1));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn dead_letter_payload_bound_comes_from_the_spec() {
        let sinks = |yaml: &str| -> SinkTopics {
            let spec: vigil_api::v1alpha1::SinksSpec = serde_norway::from_str(yaml).unwrap();
            SinkTopics::from(&spec)
        };
        assert_eq!(
            sinks("{alerts: {topic: a}, deadLetter: {topic: d}}").dead_letter_max_payload,
            900_000
        );
        assert_eq!(
            sinks("{alerts: {topic: a}, deadLetter: {topic: d, maxPayloadBytes: 2048}}")
                .dead_letter_max_payload,
            2048
        );
        assert_eq!(cut(b"abcdef", 4), b"abcd");
        assert_eq!(cut_str("h\u{e9}llo", 2), "h");
    }
}
