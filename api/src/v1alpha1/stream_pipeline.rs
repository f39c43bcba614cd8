//! `StreamPipeline`: where events come from, how they are decoded, which event-time windows are
//! computed over them, and where alerts, KPIs and dead letters go.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Feature;

/// A streaming anomaly-detection pipeline: a Kafka source, an event format, event-time windows
/// and sinks. The operator runs it as a StatefulSet of detectors in one Kafka consumer group;
/// `vigil run` runs the same YAML locally.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "StreamPipeline",
    namespaced,
    status = "StreamPipelineStatus",
    shortname = "sp",
    category = "vigil",
    derive = "PartialEq",
    doc = "A streaming anomaly-detection pipeline: Kafka source, event format, event-time windows and sinks.",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Topics",
        type_ = "string",
        json_path = ".spec.source.kafka.topics"
    ),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".spec.parallelism"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.windows.all(w, self.windows.exists_one(v, v.name == w.name))").message("window names must be unique"))]
pub struct StreamPipelineSpec {
    /// Where events are read from.
    pub source: SourceSpec,
    /// How event bytes are decoded into keyed, timestamped numeric fields.
    pub format: EventFormat,
    /// Event-time window tiers computed for every key, e.g. `fast` (30s/15s) and `analysis`
    /// (300s/60s). Rules name the tier they read.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one window is required"))]
    #[schemars(length(max = 16))]
    pub windows: Vec<WindowSpec>,
    /// Features computed per field and window. Default: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<Feature>>,
    /// Number of detector replicas in the consumer group. The operator clamps it to the number
    /// of partitions of the source topics. Default 1.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1))]
    pub parallelism: i32,
    /// Where alerts, window aggregates (KPIs) and undecodable or too-late events are written.
    pub sinks: SinksSpec,
    /// Periodic checkpoints of window and rule state (window panes, `for` timers, baselines,
    /// detector models, firing alerts, watermarks) with the source offsets they correspond to.
    /// Detectors restore them after a restart, a crash or a rebalance and replay from their
    /// offsets; offsets are committed only once a checkpoint holding them is complete. Without
    /// it, state is rebuilt by re-reading open windows only (baselines and models start cold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointSpec>,
    /// What detectors restore when the pipeline's spec changed (an upgrade; the names of the
    /// Flink Kubernetes operator). `Stateless` (default): new detectors start empty, and
    /// checkpoints are restored only by detectors of the same spec (crash, rebalance,
    /// reschedule). `LastState`: new detectors restore the latest checkpoint (needs
    /// `checkpointing`); state a changed rule or tier can no longer use is reset, per rule, and
    /// logged. `Savepoint`: `LastState` from a savepoint the operator takes before the roll.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// Bounds on per-key state: idle keys expire and the number of keys is capped. Applies
    /// with its defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_state: Option<KeyStateSpec>,
    /// Thresholds on the p99 latency of each pipeline stage over the last minute (see
    /// [`LagThresholds`]); applies with its defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagThresholds>,
    /// Reference data about the entity keys (key -> attributes such as `site`, `owner`), usable
    /// in rule label and annotation templates (`{{ attributes.site }}`) and CEL
    /// (`attributes.site`); followed live (docs/enrichment.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<EnrichmentSpec>,
    /// Entity groups: per group (e.g. per `region`) and window, the features of all member keys
    /// merged (counts and sums add, means and stddev combine, quantiles from merged sketches),
    /// the number of member keys (`keys.count`) and composite KPIs. Rules read a grouping's
    /// windows with `spec.group`. Detectors exchange partial windows through a Kafka topic, so a
    /// group spans partitions and detectors (docs/groups.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupsSpec>,
}

/// Entity groupings of a pipeline and their composite KPIs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupsSpec {
    /// Topic through which detectors send each key's fired windows to the detector that owns
    /// the group (keyed by group). Default `<pipeline>.groups`; created with the source's
    /// partition count when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Groupings: how keys are grouped (names unique: a duplicate gets a condition naming it).
    #[schemars(length(min = 1, max = 16))]
    pub by: Vec<GroupingSpec>,
    /// Composite KPIs of every group window: CEL over its features, e.g.
    /// `errors.sum / requests.sum`; emitted as `kpi.<name>` and readable by rules as the field
    /// `kpi` (e.g. `field: kpi`, CEL `kpi.error_rate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kpis: Vec<CompositeKpi>,
}

/// One grouping of the entity keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupingSpec {
    /// Name rules select with `spec.group`, e.g. `region`. Group keys read `<name>/<value>`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The reference-data attribute (`spec.enrichment`) whose value is a key's group, e.g.
    /// `region`.
    pub attribute: String,
    /// Group of keys without the attribute (not in the reference data, or no such attribute
    /// there). Default `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// A composite KPI: a named CEL expression over a group window's features.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompositeKpi {
    /// Name, e.g. `error_rate`: the feature `kpi.<name>`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub name: String,
    /// CEL over the window's `<field>.<feature>` values and `keys.count`, giving a number;
    /// e.g. `errors.sum / requests.sum`. A window where it is undefined (a missing feature,
    /// division by zero) leaves the KPI out.
    pub expression: String,
}

/// Warn and critical thresholds on stage lag: the 99th percentile, over the last minute, of
/// each stage's latency (`event_to_kafka`, `kafka_to_processed`, `closed_to_scored` (model
/// scoring), `processed_to_delivered`, `kafka_to_delivered`; `vigil_stage_latency_seconds`). Past one, the detector's
/// `vigil_stage_lag_level{stage}` says so (1 warn, 2 critical; the chart's PrometheusRule fires
/// on it) and the pipeline's `Lagging` condition names the stage and pod. Defaults warn 15 s,
/// critical 45 s (the dual-stream tuning practice Vigil follows).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LagThresholds {
    /// Warn past this p99. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<Duration>,
    /// Critical past this p99. Default 45s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<Duration>,
}

impl LagThresholds {
    /// Default `warn`, ms.
    pub const DEFAULT_WARN_MS: i64 = 15_000;
    /// Default `critical`, ms.
    pub const DEFAULT_CRITICAL_MS: i64 = 45_000;

    /// `(warn, critical)` in ms, defaults filled in.
    pub fn millis(this: Option<&Self>) -> (i64, i64) {
        let get = |d: Option<&Duration>, default| d.map_or(default, crate::v1alpha1::duration_ms);
        (
            get(this.and_then(|t| t.warn.as_ref()), Self::DEFAULT_WARN_MS),
            get(
                this.and_then(|t| t.critical.as_ref()),
                Self::DEFAULT_CRITICAL_MS,
            ),
        )
    }
}

/// Where the attributes of the entity keys come from: a ConfigMap or a compacted Kafka topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.topic)").message("exactly one of configMap or topic must be set"))]
pub struct EnrichmentSpec {
    /// Name of a ConfigMap with key `attributes.yaml`: a YAML (or JSON) map from entity key to
    /// a map of attribute name to string value. The operator mounts it; detectors read the file
    /// named by `VIGIL_ENRICHMENT_FILE` (set it for `vigil run`) and reload it when it changes
    /// (kubelet refreshes mounted ConfigMaps within about a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// A Kafka topic of the source's cluster holding the reference data as a changelog,
    /// usually compacted (`cleanup.policy=compact`): record key = entity key, value = a JSON
    /// (or YAML) map of attribute name to value; a record with no value (a tombstone) removes
    /// the key. Detectors read it from the beginning before they start and follow it live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Attributes of a key the reference data does not list (e.g. `{site: unknown}`): a
    /// missing key is a labelled default, never a failure. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default: BTreeMap<String, String>,
}

/// Bounds on the state kept per entity key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyStateSpec {
    /// Event time a key may go without events before its state is dropped: window panes,
    /// rule state (baselines, detector models, `for` timers) and alert lifecycle (a firing
    /// alert is dropped without a `resolved`). Measured against the partition's watermark, so
    /// a replay expires the same keys. A key is dropped only once its windows have fired and
    /// their allowed lateness has passed. Default `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Most keys a detector holds at once; an event of a new key beyond it goes to the
    /// dead-letter topic with reason `keys` (known keys go on). Default 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_keys: Option<u64>,
}

fn default_parallelism() -> i32 {
    1
}

/// The event source. Only Kafka exists today.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// A Kafka consumer group reading one or more topics.
    pub kafka: KafkaSource,
}

/// A Kafka source read by a consumer group with cooperative-sticky partition assignment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSource {
    /// Comma-separated `host:port` list (librdkafka `bootstrap.servers`). Optional here: the
    /// operator and `vigil run --bootstrap-servers` may supply it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    /// Topics to consume.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one topic is required"))]
    pub topics: Vec<String>,
    /// Consumer group id (librdkafka `group.id`). Offsets are committed to it after the events
    /// they carry have been processed and their outputs produced.
    pub consumer_group: String,
    /// Where a group with no committed offset starts (librdkafka `auto.offset.reset`).
    /// Default `Earliest`.
    #[serde(default)]
    pub start_offset: StartOffset,
    /// TLS and SASL settings. Default: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<KafkaSecurity>,
    /// Extra librdkafka consumer properties, e.g. `fetch.min.bytes`. They override Vigil's
    /// defaults; `group.id`, `enable.auto.commit` and `bootstrap.servers` are not allowed here.
    /// The connection-level ones (`security.protocol`, `ssl.*`, `sasl.*`, `socket.*`,
    /// `client.dns.lookup`, ...) also reach the sinks' producer, the detector's admin requests
    /// and the operator's partition lookup (which skips file locations, `*.location`): every
    /// client of the pipeline connects the same way.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// How the producers of the source topics place records: by the record key, which must be
    /// the entity key (its UTF-8 bytes), with this partitioner. Declaring it lets state follow
    /// the keys when a topic's partition count grows (`kafka-topics --alter --partitions`):
    /// each detector hands the keys that move over through a checkpoint and the new partitions'
    /// owners load them before they read (docs/state.md). Without it, a partition count change
    /// is logged and the keys that move start with empty state. Requires `spec.checkpointing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioner: Option<KeyPartitioner>,
}

/// A producer's key partitioner: `hash(key) mod partitions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyPartitioner {
    /// MurmurHash2 (seed `0x9747b28c`) of the key, sign bit cleared: the Java client's default
    /// partitioner and librdkafka's `murmur2` / `murmur2_random`.
    Murmur2,
    /// CRC-32 (IEEE) of the key: librdkafka's default `consistent_random` and `consistent`.
    Crc32,
}

impl KafkaSource {
    /// The entries of [`Self::properties`] that are about connecting to the cluster rather than
    /// consuming ([`is_client_property`]): shared by every client of the pipeline.
    pub fn client_properties(&self) -> impl Iterator<Item = (&String, &String)> {
        self.properties
            .iter()
            .filter(|(k, _)| is_client_property(k))
    }
}

/// Whether a librdkafka property is about how a client connects (transport, TLS, SASL,
/// name resolution, sockets, reconnects, metadata) and applies alike to consumers, producers and
/// admin clients. Consumer-only tuning (`fetch.*`, `session.timeout.ms`, `isolation.level`, ...)
/// and producer-only tuning are not.
pub fn is_client_property(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "ssl.",
        "sasl.",
        "socket.",
        "broker.address.",
        "reconnect.backoff.",
        "https.",
    ];
    const KEYS: &[&str] = &[
        "security.protocol",
        "enable.ssl.certificate.verification",
        "enable.sasl.oauthbearer.unsecure.jwt",
        "client.dns.lookup",
        "connections.max.idle.ms",
        "metadata.max.age.ms",
        "topic.metadata.refresh.interval.ms",
        "api.version.request",
        "api.version.request.timeout.ms",
        "broker.version.fallback",
        "resolve.canonical.bootstrap.servers.only",
    ];
    KEYS.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Where a consumer group with no committed offset starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StartOffset {
    /// The oldest retained offset.
    #[default]
    Earliest,
    /// Only events produced after the group starts.
    Latest,
}

/// Kafka security settings (librdkafka `security.protocol`, `sasl.mechanism`, `ssl.*`). TLS is
/// OpenSSL linked into the binaries; SASL mechanisms are PLAIN and SCRAM-SHA-256/512 (GSSAPI /
/// Kerberos is not built in). The same settings apply to the detectors' consumer, producer and
/// admin requests and to the operator's partition lookup (which reads the Secrets named here).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub protocol: SecurityProtocol,
    /// SASL mechanism when the protocol uses SASL: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Name of a Secret with keys `username` and `password` (SASL), mounted by the operator
    /// and read from `VIGIL_KAFKA_USERNAME` / `VIGIL_KAFKA_PASSWORD` by detectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Name of a Secret with key `ca.crt` (PEM) used to verify the brokers (`SSL`, `SASL_SSL`
    /// only). Without it the system's CA certificates are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
    /// Name of a `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`, PEM, the key not
    /// encrypted) whose certificate the clients present to brokers that ask for one (TLS client
    /// authentication, `ssl.client.auth`). `SSL` and `SASL_SSL` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret: Option<String>,
}

/// librdkafka `security.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka `security.protocol` value.
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections use TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// librdkafka `sasl.mechanism`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    /// `PLAIN`.
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka `sasl.mechanism` value.
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How event bytes become keyed, timestamped numeric fields. Events are JSON objects; fields are
/// addressed with dotted paths (`value.eventTimeMillis`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.wide) != has(self.narrow)").message("exactly one of wide or narrow must be set"))]
pub struct EventFormat {
    /// Path of the entity key (a string or number), e.g. `id`. Windows and rules are per key.
    /// When absent, the Kafka message key is used, and `default` when that is empty too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// Path and format of the event time.
    pub event_time: EventTimeField,
    /// Wide events: several numeric fields per event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wide: Option<WideLayout>,
    /// Narrow events: one parameter and its value per event, e.g.
    /// `{"id":"GT#4202137","parameter":"CurrentDownstream","value":{"eventTimeMillis":1548081433725,"value":2137.0}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrow: Option<NarrowLayout>,
}

/// Where the event time is and how it is written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTimeField {
    /// Path of the event time, e.g. `timestamp` or `value.eventTimeMillis`.
    pub field: String,
    /// How it is written. Default `Auto` (numbers are epoch milliseconds, strings RFC 3339 or
    /// `YYYY-MM-DD HH:MM:SS` in UTC).
    #[serde(default)]
    pub format: TimeFormat,
    /// How far an event time may be ahead of the detector's processing time (wall clock).
    /// A later event is dead-lettered with reason `future`: accepted, it would move its
    /// partition's clock and make every later valid event late. Default `5m` (allows for clock
    /// skew between producers and detectors); replaying data dated in the future needs a
    /// larger value. Event times must also lie within 0001-01-01 .. 9999-12-31.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_future_skew: Option<Duration>,
}

/// Default of `spec.format.eventTime.maxFutureSkew`, ms.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 300_000;

impl EventTimeField {
    /// `maxFutureSkew` in milliseconds, default [`DEFAULT_MAX_FUTURE_SKEW_MS`].
    pub fn max_future_skew_ms(&self) -> i64 {
        self.max_future_skew
            .as_ref()
            .map_or(DEFAULT_MAX_FUTURE_SKEW_MS, super::duration_ms)
    }
}

/// Encodings of the event time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TimeFormat {
    /// Numbers as epoch milliseconds; strings as RFC 3339, else `YYYY-MM-DD HH:MM:SS` (UTC).
    #[default]
    Auto,
    /// Integer milliseconds since the Unix epoch.
    EpochMillis,
    /// Seconds since the Unix epoch (may have a fraction).
    EpochSeconds,
    /// RFC 3339, e.g. `2014-02-19T10:50:00Z`.
    Rfc3339,
    /// `YYYY-MM-DD HH:MM:SS` with an optional fraction, taken as UTC (the NAB format).
    DateTime,
}

/// Wide events: each listed field is a numeric series of the key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WideLayout {
    /// Numeric fields to read.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one field is required"))]
    #[schemars(length(max = 128))]
    pub fields: Vec<FieldMapping>,
}

/// A numeric field: the name rules use and where to read it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldMapping {
    /// Name used by rules and features (`<name>.mean`). Letters, digits and `_`.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("field names are identifiers: letters, digits and _"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// Dotted path in the event. Default: the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Narrow events: the parameter name selects the series, the value path holds its number.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NarrowLayout {
    /// Path of the parameter name, e.g. `parameter`.
    pub parameter_field: String,
    /// Path of the numeric value, e.g. `value.value`.
    pub value_field: String,
    /// Parameters to keep, as field names for rules. Empty: keep every parameter seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
}

/// An event-time window tier. Tumbling when `slide` is absent or equal to `size`, hopping when
/// smaller. Window starts are aligned to the epoch: `start = t - t % slide`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.slide) || duration(self.slide) <= duration(self.size)").message("slide must not exceed size"))]
#[x_kube(validation = Rule::new("duration(self.size) > duration('0s')").message("size must be positive"))]
pub struct WindowSpec {
    /// Tier name that rules refer to, e.g. `fast`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("window names are DNS labels"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// Window length, e.g. `30s`.
    #[schemars(length(max = 32))]
    pub size: Duration,
    /// Distance between window starts, e.g. `15s`. Must divide `size`. Default: `size`
    /// (tumbling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub slide: Option<Duration>,
    /// Bound on out-of-orderness: the watermark is the greatest event time seen minus this.
    /// A window fires when the watermark passes its end. Default `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_of_orderness: Option<Duration>,
    /// How long after firing a window still accepts late events (each one re-emits the
    /// updated result). Later events go to the dead-letter sink with reason `late`. Default `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<Duration>,
    /// A partition with no events for this long (processing time) stops holding the watermark
    /// back. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// Output topics.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinksSpec {
    /// Alerts as CloudEvents 1.0 JSON (firing and resolved).
    pub alerts: TopicSink,
    /// Window aggregates per key, one record per fired window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpis: Option<TopicSink>,
    /// Undecodable, too-late and too-early events: original bytes, reason in the
    /// `vigil.reason` header. Without it such events are only counted and logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSink>,
    /// The alerts also go to Alertmanager, as Prometheus sends them (docs/alert-delivery.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerSink>,
    /// The alerts also go to PagerDuty's Events API v2: `trigger` on firing, `resolve` on
    /// resolution, `dedup_key` = the alert's fingerprint (docs/alert-delivery.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<PagerDutySink>,
    /// The alerts also go to an HTTP endpoint as CloudEvents (HTTP binding, structured mode),
    /// signed per the Standard Webhooks specification (docs/alert-delivery.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSink>,
    /// Every fired window's features also go to Parquet files in an object store, queryable
    /// by DuckDB, pandas or Spark as they are (docs/kpi-store.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpi_store: Option<KpiStoreSink>,
}

/// Window KPIs as Parquet: `<location>/<pipeline>/tier=<tier>/date=<YYYY-MM-DD>/part-*.parquet`
/// (Hive-style partitions; the date is the window end's, UTC), one row per fired window
/// (columns `key`, `window_start`, `window_end`, `update` and one `DOUBLE` per
/// `<field>.<feature>`), zstd-compressed. Files are written off the run loop when `maxRows`
/// rows are buffered or `flushInterval` passed, and on shutdown.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KpiStoreSink {
    /// `file:///path` (a shared volume) or `s3://bucket/prefix` (credentials as for
    /// checkpoints: `AWS_*` variables, from `credentialsSecret` in Kubernetes).
    pub location: String,
    /// Longest time rows wait before they are written. Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<Duration>,
    /// Rows per file at most: a file is written as soon as this many are buffered. Default
    /// 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_rows: Option<u32>,
    /// Name of a Secret whose keys become environment variables of the detectors (the
    /// object store's `AWS_*` settings), as `spec.checkpointing.credentialsSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// PagerDuty's Events API v2 (`POST /v2/enqueue`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PagerDutySink {
    /// Name of a Secret with key `routingKey`: the integration key of an Events API v2
    /// integration. The operator passes it to the detectors as `VIGIL_PAGERDUTY_ROUTING_KEY`
    /// (set that variable for `vigil run`).
    pub routing_key_secret: String,
    /// The Events API endpoint. Default `https://events.pagerduty.com/v2/enqueue` (EU
    /// service region: `https://events.eu.pagerduty.com/v2/enqueue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Most alert transitions waiting for delivery; one more is dead-lettered. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_capacity: Option<u32>,
}

/// Default `spec.sinks.pagerduty.url`.
pub const DEFAULT_PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A webhook receiving every alert transition as a CloudEvent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSink {
    /// The http:// or https:// URL the CloudEvents are posted to.
    pub url: String,
    /// Name of a Secret with key `signingKey`: the HMAC-SHA256 key of the `webhook-signature`
    /// header (Standard Webhooks; a `whsec_`-prefixed key is base64-decoded as that
    /// specification says, any other is used as it is). The operator passes it as
    /// `VIGIL_WEBHOOK_SIGNING_KEY`. Without it requests are not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_secret: Option<String>,
    /// Most alert transitions waiting for delivery; one more is dead-lettered. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_capacity: Option<u32>,
}

/// Alertmanager's v2 API as Prometheus uses it: every firing alert is posted to
/// `<url>/api/v2/alerts` when it starts and again every `resendInterval` while it fires
/// (`endsAt` four intervals ahead, so Alertmanager resolves it by itself if the detector goes
/// away), and with `endsAt` set when it resolves (posted again for 15 min, as Prometheus does).
/// Labels: the alert's labels plus `alertname` (the rule) and `pipeline`; annotations: the
/// rule's, rendered. Deliveries are retried with backoff off the run loop; one that still fails
/// is counted and its alert goes to the dead-letter topic (reason `delivery`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertmanagerSink {
    /// Alertmanager base URLs (`http://alertmanager.monitoring:9093`); every alert goes to
    /// each, as Prometheus sends to every member of an Alertmanager cluster.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one URL is required"))]
    pub urls: Vec<String>,
    /// How often firing alerts are posted again. Default `1m` (Prometheus `resend_delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_interval: Option<Duration>,
    /// The alerts' `generatorURL` (a link back to where they come from, e.g. a dashboard),
    /// with the label templates (`{{ key }}`, `{{ rule }}`, `{{ pipeline }}`, ...). Omitted
    /// when absent.
    #[serde(
        default,
        rename = "generatorURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub generator_url: Option<String>,
    /// Most alert transitions waiting for delivery; one more is dead-lettered (reason
    /// `delivery`) rather than block the data path. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub queue_capacity: Option<u32>,
}

/// The dead-letter topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterSink {
    /// Topic name.
    pub topic: String,
    /// Most bytes of the original key and value together copied into a dead-letter record
    /// (the key gets at most a quarter); a longer one is cut and the record says so in the
    /// `vigil.truncated` / `vigil.key.truncated` headers (original length). Default 900000,
    /// under Kafka's default `max.message.bytes` (1048588) with room for the headers. When
    /// the dead-letter topic's `max.message.bytes` (read at start) is smaller, the bound is
    /// lowered to it less 16 KiB, and the producer's batches stay under the smallest sink
    /// topic limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub max_payload_bytes: Option<u32>,
}

/// Default of `spec.sinks.deadLetter.maxPayloadBytes`.
pub const DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES: u32 = 900_000;

/// A Kafka topic written by the pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicSink {
    /// Topic name.
    pub topic: String,
}

/// Checkpoint settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Time between checkpoints. Default `60s`; at least `1s`. Offsets are committed once per
    /// checkpoint, so this is also how much a crash replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Object-store URL under which checkpoints are written (a `<pipeline>/checkpoints/`
    /// folder is created in it): `file:///path` (a path every detector of the pipeline
    /// shares, e.g. a ReadWriteMany volume) or `s3://bucket/prefix` (any S3-compatible store;
    /// credentials, region and endpoint from the standard `AWS_*` environment variables, e.g.
    /// `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for a store without TLS).
    pub location: String,
    /// Completed checkpoints kept per detector. Default 3. A checkpoint that is still the
    /// newest for some partition is never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retained: Option<u32>,
    /// For a `file://` location in Kubernetes: a PersistentVolumeClaim (ReadWriteMany, so
    /// every detector of the pipeline sees the others' checkpoints) the operator mounts at the
    /// location's path. Required there: a pod's own file system is lost with the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<String>,
    /// For an `s3://` location: a Secret in the pipeline's namespace whose keys the detectors
    /// get as environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
    /// optionally `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Name of a savepoint (taken with `POST /savepoints/<name>` on the detectors' metrics
    /// port) to start from: each partition restores its part of it unless a newer checkpoint
    /// the upgrade mode accepts exists. A savepoint that does not exist under `location` stops
    /// the detectors with an error rather than start them empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
}

/// What detectors do with their state across an upgrade (the names of the Flink operator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UpgradeMode {
    /// After a spec change, windows and baselines start empty. Without checkpointing,
    /// consumption resumes from committed offsets, which never pass an event still held in an
    /// open window, so no window loses events; with checkpointing, from the last checkpoint's
    /// offsets (checkpoints of the same spec are still restored after crashes and rebalances).
    #[default]
    Stateless,
    /// Restore the latest checkpoint, whatever spec wrote it (needs `spec.checkpointing`).
    LastState,
    /// Before rolling the detectors for a spec change, the operator takes a savepoint (a
    /// `Savepoint` named `<pipeline>-<hash of the new config>`), waits until every detector
    /// wrote its part, then rolls them with `restoreFrom` set to it. A savepoint that fails
    /// stops the upgrade: nothing is rolled, condition `Ready=False` reason `SavepointFailed`
    /// says why; fix the cause and delete the Savepoint to retry. Needs `spec.checkpointing`.
    Savepoint,
}

/// Observed state of a StreamPipeline, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamPipelineStatus {
    /// `Ready`, `Progressing` and `Degraded`, per the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Detector replicas running (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Label selector of the detector pods (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Partitions of the source topics, as last read from Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// DetectionRules included in the rendered detector config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

impl WindowSpec {
    /// Window size in milliseconds.
    pub fn size_ms(&self) -> i64 {
        super::duration_ms(&self.size)
    }

    /// Slide in milliseconds (the size when tumbling).
    pub fn slide_ms(&self) -> i64 {
        self.slide
            .as_ref()
            .map_or(self.size_ms(), super::duration_ms)
    }

    /// Maximum out-of-orderness in milliseconds.
    pub fn max_out_of_orderness_ms(&self) -> i64 {
        self.max_out_of_orderness
            .as_ref()
            .map_or(0, super::duration_ms)
    }

    /// Allowed lateness in milliseconds.
    pub fn allowed_lateness_ms(&self) -> i64 {
        self.allowed_lateness.as_ref().map_or(0, super::duration_ms)
    }

    /// Idle timeout in milliseconds (default 30 s).
    pub fn idle_timeout_ms(&self) -> i64 {
        self.idle_timeout
            .as_ref()
            .map_or(30_000, super::duration_ms)
    }
}
