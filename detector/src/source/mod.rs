//! The Kafka source: consumer settings from a `StreamPipeline`'s `spec.source.kafka`, the
//! mapping between Kafka `(topic, partition)` and the engine's partition ids, and the consumer
//! context whose rebalance callbacks hand revoked partitions to the runner before librdkafka
//! gives them away.
//!
//! The consumer is a member of a consumer group with `cooperative-sticky` assignment (a
//! rebalance only moves the partitions that change owner) and `enable.auto.commit=false`:
//! offsets are committed by the runner ([`crate::runner`]) once the outputs of the events before
//! them are acknowledged, never by librdkafka on a timer. Processing, sinks and commits are left
//! to the runner.

pub mod admin;
pub mod partitioner;

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use vigil_api::v1alpha1::{KafkaSecurity, KafkaSource, StartOffset, is_client_property};

use crate::telemetry::Metrics;

use vigil_api::contract::detector::{self as contract, env as contract_env};

/// Environment variable with the static group membership id (`group.instance.id`), e.g. the
/// pod name of a StatefulSet replica: a restarted replica gets its partitions back without a
/// rebalance.
pub const GROUP_INSTANCE_ID_ENV: &str = contract_env::GROUP_INSTANCE_ID;
/// Environment variable with the SASL user name (`spec.source.kafka.security.credentialsSecret`).
pub const USERNAME_ENV: &str = contract_env::KAFKA_USERNAME;
/// Environment variable with the SASL password.
pub const PASSWORD_ENV: &str = contract_env::KAFKA_PASSWORD;
/// Environment variable with the path of the CA certificate file
/// (`spec.source.kafka.security.caSecret`); default [`CA_FILE_DEFAULT`].
pub const CA_FILE_ENV: &str = contract_env::KAFKA_CA_FILE;
/// Where the operator mounts the `ca.crt` of `caSecret` unless [`CA_FILE_ENV`] says otherwise.
pub const CA_FILE_DEFAULT: &str = contract::KAFKA_CA_FILE;
/// Environment variable with the path of the client certificate
/// (`spec.source.kafka.security.clientCertSecret`); default [`CERT_FILE_DEFAULT`].
pub const CERT_FILE_ENV: &str = contract_env::KAFKA_CERT_FILE;
/// Environment variable with the path of the client certificate's private key; default
/// [`KEY_FILE_DEFAULT`].
pub const KEY_FILE_ENV: &str = contract_env::KAFKA_KEY_FILE;
/// Where the operator mounts the `tls.crt` of `clientCertSecret`.
pub const CERT_FILE_DEFAULT: &str = contract::KAFKA_CERT_FILE;
/// Where the operator mounts the `tls.key` of `clientCertSecret`.
pub const KEY_FILE_DEFAULT: &str = contract::KAFKA_KEY_FILE;

/// Properties Vigil sets itself and `spec.source.kafka.properties` may not override.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "bootstrap.servers",
    "enable.auto.offset.store",
];

/// Engine partition ids reserve this many bits for the Kafka partition number; the topic's
/// index in `spec.source.kafka.topics` goes above them.
pub const PARTITION_BITS: u32 = 20;

/// A source that cannot be configured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// A spec field is invalid; `field` is its path.
    #[error("{field}: {reason}")]
    InvalidSpec {
        /// Path of the field, e.g. `spec.source.kafka.properties["group.id"]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A SASL credential is missing from the environment.
    #[error("spec.source.kafka.security: SASL needs the environment variable {0}")]
    MissingCredential(&'static str),
}

/// Resolved settings of the consumer group of one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Topics, in spec order (their index is part of the engine partition id).
    pub topics: Vec<String>,
    /// `group.id`.
    pub consumer_group: String,
    /// `group.instance.id` (static membership), if any.
    pub group_instance_id: Option<String>,
    /// `client.id`: `vigil-<pipeline>`.
    pub client_id: String,
    /// `auto.offset.reset`.
    pub start_offset: StartOffset,
    /// Security settings as librdkafka properties (shared with the sinks' producer).
    pub security: BTreeMap<String, String>,
    /// `spec.source.kafka.properties`, applied last to the consumer; the connection-level ones
    /// ([`vigil_api::v1alpha1::is_client_property`]) to every client.
    pub properties: BTreeMap<String, String>,
}

impl SourceSettings {
    /// Validates `spec.source.kafka` with the bootstrap servers chosen by the caller (flag, spec
    /// or an embedded cluster) and the static membership id (usually from
    /// [`GROUP_INSTANCE_ID_ENV`]). SASL credentials are read from [`USERNAME_ENV`] and
    /// [`PASSWORD_ENV`], the CA file path from [`CA_FILE_ENV`].
    ///
    /// # Errors
    /// [`SourceError::InvalidSpec`] naming the field: no topics, a reserved property;
    /// [`SourceError::MissingCredential`] for SASL without credentials.
    pub fn from_spec(
        pipeline: &str,
        spec: &KafkaSource,
        bootstrap_servers: &str,
        group_instance_id: Option<String>,
    ) -> Result<Self, SourceError> {
        if spec.topics.is_empty() {
            return Err(SourceError::InvalidSpec {
                field: "spec.source.kafka.topics".into(),
                reason: "at least one topic is required".into(),
            });
        }
        if spec.topics.len() >= 1 << (31 - PARTITION_BITS) {
            return Err(SourceError::InvalidSpec {
                field: "spec.source.kafka.topics".into(),
                reason: "too many topics".into(),
            });
        }
        for k in spec.properties.keys() {
            if RESERVED_PROPERTIES.contains(&k.as_str()) {
                return Err(SourceError::InvalidSpec {
                    field: format!("spec.source.kafka.properties[\"{k}\"]"),
                    reason: "is set by Vigil and cannot be overridden".into(),
                });
            }
        }
        let security = match &spec.security {
            Some(s) => security_properties(s, |k| std::env::var(k).ok())?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            bootstrap_servers: bootstrap_servers.to_string(),
            topics: spec.topics.clone(),
            consumer_group: spec.consumer_group.clone(),
            group_instance_id: group_instance_id.filter(|s| !s.is_empty()),
            client_id: format!("vigil-{pipeline}"),
            start_offset: spec.start_offset,
            security,
            properties: spec.properties.clone(),
        })
    }

    /// The consumer configuration: Vigil's defaults, security, then the spec's properties.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", &self.consumer_group)
            .set("client.id", &self.client_id)
            // Offsets are committed by the runner after the outputs are acknowledged.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only partitions that change owner move in a rebalance (KIP-429).
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "auto.offset.reset",
                match self.start_offset {
                    StartOffset::Earliest => "earliest",
                    StartOffset::Latest => "latest",
                },
            )
            // Consumer lag per partition for the metrics (librdkafka default: 0, disabled).
            .set("statistics.interval.ms", "5000")
            // librdkafka default 1000 ms: once a partition's fetch queue is full, the next fetch
            // waits that long, so a consumer that processes (slower than it fetches) idles in
            // gaps; measured 3x lower throughput with the default (`vigil bench`).
            .set("fetch.queue.backoff.ms", "10");
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
        for (k, v) in self.security.iter().chain(&self.properties) {
            c.set(k, v);
        }
        c
    }

    /// The producer configuration for the sinks: same cluster and the same connection settings
    /// as the consumer (security, then the connection-level entries of
    /// `spec.source.kafka.properties`: `ssl.*`, `sasl.*`, `socket.*`, `client.dns.lookup`, ...;
    /// consumer tuning such as `fetch.min.bytes` stays with the consumer), idempotent (no
    /// duplicates or reordering on retries), small linger for alert latency.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            // librdkafka default 5 ms; alerts are few and latency-sensitive.
            .set("linger.ms", "2");
        c
    }

    /// How any client of the pipeline connects: bootstrap servers, `client.id`, security and
    /// the connection-level entries of `spec.source.kafka.properties`. The base of the
    /// producer's configuration and of admin requests ([`admin`]).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id);
        for (k, v) in &self.security {
            c.set(k, v);
        }
        for (k, v) in &self.properties {
            if is_client_property(k) {
                c.set(k, v);
            }
        }
        c
    }

    /// Mapping of topics to engine partition ids.
    pub fn partition_ids(&self) -> PartitionIds {
        PartitionIds {
            topics: self.topics.clone(),
        }
    }
}

/// librdkafka properties for `spec.source.kafka.security`; `env` looks up environment variables.
///
/// - `security.protocol` and, with SASL, `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
///   with `sasl.username` / `sasl.password` from [`USERNAME_ENV`] / [`PASSWORD_ENV`];
/// - with TLS, `ssl.ca.location`: [`CA_FILE_ENV`] if set, else [`CA_FILE_DEFAULT`] when
///   `caSecret` is set, else `probe` (the system's CA bundle: the OpenSSL linked into Vigil is
///   built from source and does not know the distribution's certificate directory);
/// - with TLS and `clientCertSecret` (or [`CERT_FILE_ENV`] set), `ssl.certificate.location` and
///   `ssl.key.location` from [`CERT_FILE_ENV`] / [`KEY_FILE_ENV`] or the mount paths
///   [`CERT_FILE_DEFAULT`] / [`KEY_FILE_DEFAULT`].
///
/// # Errors
/// [`SourceError::MissingCredential`] when SASL is used without credentials,
/// [`SourceError::InvalidSpec`] when a SASL protocol has no mechanism, or `caSecret` /
/// `clientCertSecret` come with a protocol without TLS.
pub fn security_properties(
    s: &KafkaSecurity,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, SourceError> {
    let mut p = BTreeMap::new();
    let protocol = s.protocol.librdkafka_name();
    p.insert("security.protocol".into(), protocol.into());
    if s.protocol.uses_sasl() {
        let Some(m) = s.sasl_mechanism else {
            return Err(SourceError::InvalidSpec {
                field: "spec.source.kafka.security.saslMechanism".into(),
                reason: format!("is required with protocol {protocol}"),
            });
        };
        p.insert("sasl.mechanism".into(), m.librdkafka_name().into());
        p.insert(
            "sasl.username".into(),
            env(USERNAME_ENV).ok_or(SourceError::MissingCredential(USERNAME_ENV))?,
        );
        p.insert(
            "sasl.password".into(),
            env(PASSWORD_ENV).ok_or(SourceError::MissingCredential(PASSWORD_ENV))?,
        );
    }
    if !s.protocol.uses_tls() {
        for (field, set) in [
            ("caSecret", s.ca_secret.is_some()),
            ("clientCertSecret", s.client_cert_secret.is_some()),
        ] {
            if set {
                return Err(SourceError::InvalidSpec {
                    field: format!("spec.source.kafka.security.{field}"),
                    reason: format!(
                        "only applies to protocol SSL or SASL_SSL, not {}",
                        protocol.to_uppercase()
                    ),
                });
            }
        }
        return Ok(p);
    }
    let ca = env(CA_FILE_ENV).or_else(|| s.ca_secret.as_ref().map(|_| CA_FILE_DEFAULT.into()));
    p.insert(
        "ssl.ca.location".into(),
        ca.unwrap_or_else(|| "probe".into()),
    );
    let cert = env(CERT_FILE_ENV);
    if cert.is_some() || s.client_cert_secret.is_some() {
        p.insert(
            "ssl.certificate.location".into(),
            cert.unwrap_or_else(|| CERT_FILE_DEFAULT.into()),
        );
        p.insert(
            "ssl.key.location".into(),
            env(KEY_FILE_ENV).unwrap_or_else(|| KEY_FILE_DEFAULT.into()),
        );
    }
    Ok(p)
}

/// Engine partition ids: the engine keys state by one `i32` per partition, so the topic's index
/// in the spec goes into the high bits (`index << 20 | partition`). With one topic the id is
/// the Kafka partition number.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionIds {
    topics: Vec<String>,
}

impl PartitionIds {
    /// Mapping for `topics` (spec order).
    pub fn new(topics: Vec<String>) -> Self {
        Self { topics }
    }

    /// The engine partition id of `(topic, partition)`; `None` for a topic not in the spec.
    #[inline]
    pub fn engine_partition(&self, topic: &str, partition: i32) -> Option<i32> {
        let idx = if self.topics.len() == 1 && self.topics[0] == topic {
            0
        } else {
            self.topics.iter().position(|t| t == topic)?
        };
        Some(((idx as i32) << PARTITION_BITS) | partition)
    }

    /// The Kafka `(topic, partition)` of an engine partition id.
    pub fn kafka(&self, engine_partition: i32) -> Option<(&str, i32)> {
        let idx = (engine_partition >> PARTITION_BITS) as usize;
        self.topics
            .get(idx)
            .map(|t| (t.as_str(), engine_partition & ((1 << PARTITION_BITS) - 1)))
    }

    /// A list for committing `(engine partition, offset)` pairs.
    pub fn to_tpl(&self, offsets: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for &(p, o) in offsets {
            if let Some((t, kp)) = self.kafka(p) {
                // Adding a valid offset to a fresh list cannot fail.
                let _ = tpl.add_partition_offset(t, kp, rdkafka::Offset::Offset(o));
            }
        }
        tpl
    }
}

/// What the runner does when the group moves partitions. Called on the consumer's polling
/// thread, inside `poll`, before librdkafka applies the change.
pub trait RebalanceHandler: Send + Sync + 'static {
    /// `partitions` are about to be taken away: flush their outputs, commit their offsets and
    /// drop their state. `lost` is true when the session expired and committing is pointless.
    fn revoke(
        &self,
        consumer: &BaseConsumer<SourceContext<Self>>,
        partitions: &[(String, i32)],
        lost: bool,
    ) where
        Self: Sized;
    /// `partitions` were added to this member's assignment.
    fn assign(&self, consumer: &BaseConsumer<SourceContext<Self>>, partitions: &[(String, i32)])
    where
        Self: Sized;
}

/// The consumer context: rebalance callbacks, commit results, statistics (consumer lag) and
/// librdkafka errors into telemetry.
pub struct SourceContext<H> {
    handler: Arc<H>,
    metrics: Metrics,
    assigned: Assignment,
    /// Partition count per source topic, from the statistics (librdkafka's metadata, refreshed
    /// every `topic.metadata.refresh.interval.ms`).
    counts: std::sync::Mutex<std::collections::BTreeMap<String, i32>>,
}

/// The partitions currently assigned to a consumer, shared with whoever wants to look.
#[derive(Debug, Clone, Default)]
pub struct Assignment(Arc<std::sync::Mutex<Vec<(String, i32)>>>);

impl Assignment {
    /// The assigned `(topic, partition)` pairs.
    pub fn get(&self) -> Vec<(String, i32)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, i32)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<H> SourceContext<H> {
    /// A context calling `handler` on rebalances.
    pub fn new(handler: Arc<H>, metrics: Metrics) -> Self {
        Self {
            handler,
            metrics,
            assigned: Assignment::default(),
            counts: std::sync::Mutex::default(),
        }
    }

    /// Partition count per source topic as of the last statistics (every 5 s); empty before.
    pub fn partition_counts(&self) -> std::collections::BTreeMap<String, i32> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Partitions currently assigned.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.assigned.get()
    }

    /// A shared view of the assignment.
    pub fn assignment_handle(&self) -> Assignment {
        self.assigned.clone()
    }
}

fn tpl_partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl<H: RebalanceHandler> ClientContext for SourceContext<H> {
    fn stats(&self, statistics: Statistics) {
        let assigned = self.assignment();
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            for (name, topic) in &statistics.topics {
                // Every partition of the topic's metadata is listed, plus -1 (unassigned).
                if let Some(max) = topic.partitions.keys().copied().filter(|p| *p >= 0).max() {
                    counts.insert(name.clone(), max + 1);
                }
            }
        }
        for (name, topic) in &statistics.topics {
            for (p, part) in &topic.partitions {
                if *p < 0 || !assigned.iter().any(|(t, ap)| t == name && ap == p) {
                    continue;
                }
                // app_offset: one past the last record handed to Vigil; -1001 before the first.
                if part.hi_offset >= 0 {
                    let next = if part.app_offset >= 0 {
                        part.app_offset
                    } else {
                        part.committed_offset.max(part.lo_offset)
                    };
                    self.metrics
                        .consumer_lag(name, *p, (part.hi_offset - next).max(0));
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.metrics.client_error("consumer", &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.metrics.client_log("consumer", level, fac, log_message);
    }
}

impl<H: RebalanceHandler> ConsumerContext for SourceContext<H> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = tpl_partitions(tpl);
                let lost = consumer_assignment_lost(consumer);
                tracing::info!(partitions = ?parts, lost, "Partitions revoked; flushing outputs and committing before handing them over.");
                self.handler.revoke(consumer, &parts, lost);
                let mut a = self.assigned.lock();
                a.retain(|x| !parts.contains(x));
                for (t, p) in &parts {
                    self.metrics.forget_partition(t, *p);
                }
                self.metrics.rebalance(a.len());
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error."),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = tpl_partitions(tpl);
            let mut a = self.assigned.lock();
            for p in &parts {
                if !a.contains(p) {
                    a.push(p.clone());
                }
            }
            self.metrics.rebalance(a.len());
            tracing::info!(partitions = ?parts, total = a.len(), "Partitions assigned.");
            drop(a);
            self.handler.assign(consumer, &parts);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.metrics.commit(true);
                tracing::debug!(offsets = ?tpl_partitions_offsets(offsets), "Offsets committed.");
            }
            Err(e) => {
                self.metrics.commit(false);
                tracing::warn!(error = %e, "Offset commit failed; the next commit retries.");
            }
        }
    }
}

fn tpl_partitions_offsets(tpl: &TopicPartitionList) -> Vec<(String, i32, Option<i64>)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition(), e.offset().to_raw()))
        .collect()
}

fn consumer_assignment_lost<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
    use rdkafka::consumer::Consumer;
    consumer.assignment_lost()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> KafkaSource {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn consumer_config_commits_manually_with_cooperative_assignment_and_spec_overrides() {
        let s = spec(
            "{topics: [a], consumerGroup: g, startOffset: Latest, properties: {fetch.min.bytes: '1024'}}",
        );
        let st = SourceSettings::from_spec("p", &s, "b:9092", Some("pod-0".into())).unwrap();
        let c = st.consumer_config();
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("group.instance.id"), Some("pod-0"));
        assert_eq!(c.get("fetch.min.bytes"), Some("1024"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(st.producer_config().get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn reserved_properties_are_rejected_with_the_field_path() {
        let s = spec("{topics: [a], consumerGroup: g, properties: {group.id: x}}");
        let e = SourceSettings::from_spec("p", &s, "b", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.source.kafka.properties[\"group.id\"]: is set by Vigil and cannot be overridden"
        );
    }

    #[test]
    fn sasl_needs_credentials_and_maps_the_mechanism() {
        let sec: KafkaSecurity = serde_norway::from_str(
            "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, caSecret: ca}",
        )
        .unwrap();
        let none = |_: &str| None;
        assert_eq!(
            security_properties(&sec, none),
            Err(SourceError::MissingCredential(USERNAME_ENV))
        );
        let env = |k: &str| match k {
            USERNAME_ENV => Some("u".to_string()),
            PASSWORD_ENV => Some("pw".to_string()),
            _ => None,
        };
        let p = security_properties(&sec, env).unwrap();
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "u");
        assert_eq!(p["ssl.ca.location"], CA_FILE_DEFAULT);
        let no_mech: KafkaSecurity = serde_norway::from_str("{protocol: SASL_PLAINTEXT}").unwrap();
        assert!(matches!(
            security_properties(&no_mech, env),
            Err(SourceError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn tls_maps_the_ca_and_client_certificate_files() {
        let sec: KafkaSecurity =
            serde_norway::from_str("{protocol: SSL, caSecret: ca, clientCertSecret: client-tls}")
                .unwrap();
        // In a pod: the operator's mount paths.
        let p = security_properties(&sec, |_| None).unwrap();
        assert_eq!(p["security.protocol"], "ssl");
        assert_eq!(p["ssl.ca.location"], "/etc/vigil-kafka-ca/ca.crt");
        assert_eq!(
            p["ssl.certificate.location"],
            "/etc/vigil-kafka-client/tls.crt"
        );
        assert_eq!(p["ssl.key.location"], "/etc/vigil-kafka-client/tls.key");
        assert!(!p.contains_key("sasl.mechanism"));
        // The environment says where the files are.
        let env = |k: &str| match k {
            CA_FILE_ENV => Some("/x/ca.pem".to_string()),
            CERT_FILE_ENV => Some("/x/c.pem".to_string()),
            KEY_FILE_ENV => Some("/x/k.pem".to_string()),
            _ => None,
        };
        let p = security_properties(&sec, env).unwrap();
        assert_eq!(
            (
                p["ssl.ca.location"].as_str(),
                p["ssl.certificate.location"].as_str(),
                p["ssl.key.location"].as_str()
            ),
            ("/x/ca.pem", "/x/c.pem", "/x/k.pem")
        );
        // No CA: the system's CA bundle, found by librdkafka's probe.
        let bare: KafkaSecurity = serde_norway::from_str("{protocol: SSL}").unwrap();
        let p = security_properties(&bare, |_| None).unwrap();
        assert_eq!(p["ssl.ca.location"], "probe");
        assert!(!p.contains_key("ssl.certificate.location"));
    }

    #[test]
    fn tls_secrets_without_tls_are_rejected() {
        for (yaml, field) in [
            ("{protocol: PLAINTEXT, caSecret: ca}", "caSecret"),
            (
                "{protocol: SASL_PLAINTEXT, saslMechanism: PLAIN, clientCertSecret: c}",
                "clientCertSecret",
            ),
        ] {
            let sec: KafkaSecurity = serde_norway::from_str(yaml).unwrap();
            let env = |_: &str| Some("x".to_string());
            let e = security_properties(&sec, env).unwrap_err();
            assert_eq!(
                e,
                SourceError::InvalidSpec {
                    field: format!("spec.source.kafka.security.{field}"),
                    reason: format!(
                        "only applies to protocol SSL or SASL_SSL, not {}",
                        sec.protocol.librdkafka_name().to_uppercase()
                    ),
                }
            );
        }
    }

    #[test]
    fn producer_and_admin_get_the_connection_properties_but_not_consumer_tuning() {
        let s = spec(
            "{topics: [a], consumerGroup: g, security: {protocol: SSL}, properties: \
             {ssl.ca.location: /ca.pem, ssl.endpoint.identification.algorithm: none, \
             client.dns.lookup: resolve_canonical_bootstrap_servers_only, socket.timeout.ms: '9000', \
             fetch.min.bytes: '1024', session.timeout.ms: '30000'}}",
        );
        let st = SourceSettings::from_spec("p", &s, "b:9093", None).unwrap();
        let consumer = st.consumer_config();
        assert_eq!(consumer.get("fetch.min.bytes"), Some("1024"));
        for c in [st.producer_config(), st.client_config()] {
            assert_eq!(c.get("bootstrap.servers"), Some("b:9093"));
            assert_eq!(c.get("security.protocol"), Some("ssl"));
            // The spec's property overrides the security default (probe), as for the consumer.
            assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
            assert_eq!(consumer.get("ssl.ca.location"), Some("/ca.pem"));
            assert_eq!(c.get("ssl.endpoint.identification.algorithm"), Some("none"));
            assert_eq!(
                c.get("client.dns.lookup"),
                Some("resolve_canonical_bootstrap_servers_only")
            );
            assert_eq!(c.get("socket.timeout.ms"), Some("9000"));
            assert_eq!(c.get("fetch.min.bytes"), None);
            assert_eq!(c.get("session.timeout.ms"), None);
            assert_eq!(c.get("group.id"), None);
        }
        // An admin client built from the producer's configuration keeps only the connection.
        use admin::Cluster;
        let a = st.producer_config().client_config();
        assert_eq!(a.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(a.get("enable.idempotence"), None);
    }

    /// The linked librdkafka has TLS and SCRAM (rdkafka feature `ssl-vendored`), and no
    /// GSSAPI, which Vigil does not offer.
    #[test]
    fn librdkafka_is_built_with_tls_and_scram_but_not_gssapi() {
        let features = ClientConfig::new()
            .create_native_config()
            .unwrap()
            .get("builtin.features")
            .unwrap();
        let features: Vec<&str> = features.split(',').collect();
        for f in ["ssl", "sasl_plain", "sasl_scram"] {
            assert!(features.contains(&f), "{f} missing from {features:?}");
        }
        assert!(!features.contains(&"sasl_gssapi"), "{features:?}");
    }

    #[test]
    fn partition_ids_round_trip_across_topics() {
        let ids = PartitionIds::new(vec!["a".into(), "b".into()]);
        assert_eq!(ids.engine_partition("a", 3), Some(3));
        let b7 = ids.engine_partition("b", 7).unwrap();
        assert_ne!(b7, 7);
        assert_eq!(ids.kafka(b7), Some(("b", 7)));
        assert_eq!(ids.engine_partition("c", 0), None);
        let tpl = ids.to_tpl(&[(3, 10), (b7, 5)]);
        assert_eq!(tpl.count(), 2);
        assert_eq!(
            tpl.find_partition("b", 7).unwrap().offset(),
            rdkafka::Offset::Offset(5)
        );
    }
}
