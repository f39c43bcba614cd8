//! Partition counts of Kafka topics, read with librdkafka's metadata request
//! (`BaseConsumer::fetch_metadata`), connecting the way the pipeline's detectors do:
//! `spec.source.kafka.security` (TLS with the CA and client certificate, SASL PLAIN or
//! SCRAM-SHA-256/512 with the credentials, all read from the Secrets the spec names, see
//! [`connection_properties`]) and the connection-level `spec.source.kafka.properties`.
//!
//! One client per cluster and connection settings (secret values included, so a rotated
//! password gets a new client) is kept while it is in use; results are cached per topic and
//! [`ClusterRef`] (successes for the configured TTL, failures for at most 5 s, so the Secrets
//! are read once per TTL, not per reconcile) and concurrent lookups against one cluster are
//! serialised, so a thousand pipelines reading one topic cost one request per TTL. Failures are
//! values, not errors: the pipeline controller reports them in a condition and runs
//! `spec.parallelism` replicas unclamped. Secret values never appear in messages or logs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use vigil_api::contract::detector as contract;
use vigil_api::v1alpha1::KafkaSource;

/// How long a failed lookup is remembered, at most.
const FAILURE_TTL: Duration = Duration::from_secs(5);
/// A client unused for this long is closed when another one is created.
const IDLE_CLIENT: Duration = Duration::from_secs(600);

/// Partitions of a pipeline's source topics, or why they are unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitions {
    /// Topic -> partition count.
    Known(BTreeMap<String, i32>),
    /// The lookup failed: a message naming the broker list or topic.
    Unknown(String),
}

/// A pipeline's cluster as its spec names it, without secret values: the bootstrap servers
/// and, when the source has security settings or connection properties, the namespace (the
/// Secrets are the namespace's), the security spec and those properties. The key of cached
/// results.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterRef {
    /// librdkafka `bootstrap.servers`.
    pub bootstrap_servers: String,
    settings: String,
}

impl ClusterRef {
    /// A cluster reached over plaintext with librdkafka's defaults.
    pub fn plaintext(bootstrap_servers: &str) -> Self {
        ClusterRef {
            bootstrap_servers: bootstrap_servers.to_string(),
            settings: String::new(),
        }
    }

    /// The cluster of a pipeline of `namespace` with source `kafka`, at `bootstrap_servers`
    /// (the spec's or the operator's default).
    pub fn of_source(bootstrap_servers: &str, namespace: &str, kafka: &KafkaSource) -> Self {
        let properties: BTreeMap<&String, &String> = kafka.client_properties().collect();
        if kafka.security.is_none() && properties.is_empty() {
            return Self::plaintext(bootstrap_servers);
        }
        ClusterRef {
            bootstrap_servers: bootstrap_servers.to_string(),
            settings: serde_json::json!({
                "namespace": namespace,
                "security": kafka.security,
                "properties": properties,
            })
            .to_string(),
        }
    }
}

/// Secret data by Secret name (the Secrets of the pipeline's namespace that its security
/// settings name).
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// The names of the Secrets `kafka.security` refers to, with the field that names each.
pub fn referenced_secrets(kafka: &KafkaSource) -> Vec<(&'static str, String)> {
    let Some(s) = &kafka.security else {
        return Vec::new();
    };
    [
        ("credentialsSecret", &s.credentials_secret),
        ("caSecret", &s.ca_secret),
        ("clientCertSecret", &s.client_cert_secret),
    ]
    .into_iter()
    .filter_map(|(field, name)| name.clone().map(|n| (field, n)))
    .collect()
}

/// librdkafka properties for the operator's client of a pipeline's cluster:
/// `security.protocol`; with SASL `sasl.mechanism` and `sasl.username` / `sasl.password` from
/// the `username` / `password` keys of `credentialsSecret`; with TLS `ssl.ca.pem` from `ca.crt`
/// of `caSecret` (else `ssl.ca.location=probe`: the system's CA bundle) and, with
/// `clientCertSecret`, `ssl.certificate.pem` / `ssl.key.pem` from its `tls.crt` / `tls.key`.
/// Then the connection-level entries of `spec.source.kafka.properties`
/// ([`vigil_api::v1alpha1::is_client_property`]) except file locations (`*.location`): those
/// are paths in the detector pods, where the operator cannot look (with TLS and no CA left, the
/// system's: `ssl.ca.location=probe`). `secrets` holds the data of the Secrets
/// [`referenced_secrets`] names.
///
/// # Errors
/// A message naming the field and Secret (never a value): a Secret that was not read, a
/// missing or non-UTF-8 key, SASL without mechanism or credentials, a TLS Secret with a
/// protocol without TLS.
pub fn connection_properties(
    kafka: &KafkaSource,
    secrets: &SecretData,
) -> Result<BTreeMap<String, String>, String> {
    let mut p = BTreeMap::new();
    if let Some(s) = &kafka.security {
        let field = |f: &str| format!("spec.source.kafka.security.{f}");
        let value = |f: &str, secret: &str, key: &str| -> Result<String, String> {
            let data = secrets
                .get(secret)
                .ok_or_else(|| format!("{}: Secret `{secret}` was not read", field(f)))?;
            let bytes = data
                .get(key)
                .ok_or_else(|| format!("{}: Secret `{secret}` has no key `{key}`", field(f)))?;
            String::from_utf8(bytes.clone()).map_err(|_| {
                format!(
                    "{}: key `{key}` of Secret `{secret}` is not UTF-8 text",
                    field(f)
                )
            })
        };
        p.insert(
            "security.protocol".into(),
            s.protocol.librdkafka_name().into(),
        );
        if s.protocol.uses_sasl() {
            let mechanism = s
                .sasl_mechanism
                .ok_or_else(|| format!("{}: required with SASL", field("saslMechanism")))?;
            let creds = s
                .credentials_secret
                .as_deref()
                .ok_or_else(|| format!("{}: required with SASL", field("credentialsSecret")))?;
            p.insert("sasl.mechanism".into(), mechanism.librdkafka_name().into());
            p.insert(
                "sasl.username".into(),
                value("credentialsSecret", creds, contract::USERNAME_KEY)?,
            );
            p.insert(
                "sasl.password".into(),
                value("credentialsSecret", creds, contract::PASSWORD_KEY)?,
            );
        }
        if s.protocol.uses_tls() {
            match &s.ca_secret {
                Some(ca) => p.insert(
                    "ssl.ca.pem".into(),
                    value("caSecret", ca, contract::CA_KEY)?,
                ),
                None => p.insert("ssl.ca.location".into(), "probe".into()),
            };
            if let Some(cert) = &s.client_cert_secret {
                p.insert(
                    "ssl.certificate.pem".into(),
                    value("clientCertSecret", cert, contract::TLS_CERT_KEY)?,
                );
                p.insert(
                    "ssl.key.pem".into(),
                    value("clientCertSecret", cert, contract::TLS_KEY_KEY)?,
                );
            }
        } else {
            for (f, set) in [
                ("caSecret", s.ca_secret.is_some()),
                ("clientCertSecret", s.client_cert_secret.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{}: only applies to protocol SSL or SASL_SSL",
                        field(f)
                    ));
                }
            }
        }
    }
    for (k, v) in kafka.client_properties() {
        if !k.ends_with(".location") {
            p.insert(k.clone(), v.clone());
        }
    }
    // TLS asked for through the properties alone: the system's CAs, as for the security field.
    let tls = p
        .get("security.protocol")
        .is_some_and(|v| v.eq_ignore_ascii_case("ssl") || v.eq_ignore_ascii_case("sasl_ssl"));
    if tls && !p.contains_key("ssl.ca.pem") && !p.contains_key("ssl.ca.location") {
        p.insert("ssl.ca.location".into(), "probe".into());
    }
    Ok(p)
}

/// What the client reported, kept to explain a failed lookup (TLS handshake, SASL
/// authentication, connection refused) better than librdkafka's summary
/// (`BrokerTransportFailure`).
#[derive(Default)]
pub struct LookupContext {
    said: Mutex<Vec<String>>,
}

impl LookupContext {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.said.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, m: String) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.len() >= 32 {
            said.remove(0);
        }
        said.push(m);
    }
}

impl rdkafka::ClientContext for LookupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        ) {
            tracing::debug!(
                fac,
                message = log_message,
                "Kafka client (partition lookup)."
            );
            self.push(log_message.to_string());
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.push(format!("{reason} ({error})"));
    }
}

impl rdkafka::consumer::ConsumerContext for LookupContext {}

type Client = BaseConsumer<LookupContext>;

/// One cluster with one set of connection settings (secret values included).
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    bootstrap_servers: String,
    properties: BTreeMap<String, String>,
}

/// Serialises lookups against one cluster and holds its client once created.
#[derive(Default)]
struct ClusterGate {
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    used: Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Cached {
    at: Instant,
    result: Result<i32, String>,
}

/// Cached partition lookups. Cheap to share behind an `Arc`.
pub struct KafkaMetadata {
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<(ClusterRef, String), Cached>>,
    clusters: Mutex<HashMap<ClientKey, Arc<ClusterGate>>>,
}

impl KafkaMetadata {
    /// Lookups wait at most `timeout` per request and reuse results for `ttl`.
    pub fn new(timeout: Duration, ttl: Duration) -> Self {
        KafkaMetadata {
            timeout,
            ttl,
            cache: Mutex::default(),
            clusters: Mutex::default(),
        }
    }

    /// Partition counts of `topics` on `cluster`. `connection` yields the client's connection
    /// properties ([`connection_properties`]); it is awaited only when a topic's result is not
    /// cached, at most once per call.
    pub async fn partitions<F, Fut>(
        &self,
        cluster: &ClusterRef,
        topics: &[String],
        connection: F,
    ) -> Partitions
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<BTreeMap<String, String>, String>>,
    {
        let mut connection = Some(connection);
        let mut properties: Option<Result<BTreeMap<String, String>, String>> = None;
        let mut known = BTreeMap::new();
        for topic in topics {
            let key = (cluster.clone(), topic.clone());
            let result = match self.cached(&key) {
                Some(r) => r,
                None => {
                    if properties.is_none() {
                        let resolve = connection.take().expect("resolved at most once");
                        properties = Some(resolve().await);
                    }
                    match properties.as_ref().expect("resolved above") {
                        Ok(p) => self.lookup(key, p).await,
                        Err(e) => {
                            self.remember(key, Err(e.clone()));
                            Err(e.clone())
                        }
                    }
                }
            };
            match result {
                Ok(n) => {
                    known.insert(topic.clone(), n);
                }
                Err(reason) => return Partitions::Unknown(reason),
            }
        }
        Partitions::Known(known)
    }

    fn cached(&self, key: &(ClusterRef, String)) -> Option<Result<i32, String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        let ttl = if entry.result.is_ok() {
            self.ttl
        } else {
            self.ttl.min(FAILURE_TTL)
        };
        (entry.at.elapsed() < ttl).then(|| entry.result.clone())
    }

    fn remember(&self, key: (ClusterRef, String), result: Result<i32, String>) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Cached {
                at: Instant::now(),
                result,
            },
        );
    }

    /// The gate of one client, created on first use; clients idle for [`IDLE_CLIENT`] are
    /// dropped then (a rotated Secret leaves its old client idle).
    fn gate(&self, key: ClientKey) -> Arc<ClusterGate> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if !clusters.contains_key(&key) {
            clusters.retain(|_, g| {
                g.used
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_none_or(|t| t.elapsed() < IDLE_CLIENT)
            });
        }
        let gate = clusters.entry(key).or_default().clone();
        *gate.used.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        gate
    }

    async fn lookup(
        &self,
        key: (ClusterRef, String),
        properties: &BTreeMap<String, String>,
    ) -> Result<i32, String> {
        let bootstrap_servers = key.0.bootstrap_servers.clone();
        let gate = self.gate(ClientKey {
            bootstrap_servers: bootstrap_servers.clone(),
            properties: properties.clone(),
        });
        let mut client = gate.client.lock().await;
        // Another lookup may have filled the cache while this one waited.
        if let Some(result) = self.cached(&key) {
            return result;
        }
        let created = match client.as_ref() {
            Some(c) => Ok(c.clone()),
            None => {
                let mut config = ClientConfig::new();
                for (k, v) in properties {
                    config.set(k, v);
                }
                config
                    .set("bootstrap.servers", &bootstrap_servers)
                    .set("client.id", "vigil-operator")
                    .set("allow.auto.create.topics", "false");
                // The error names the property, not its value (no secrets in conditions).
                config
                    .create_with_context::<_, Client>(LookupContext::default())
                    .map(Arc::new)
                    .map_err(|e| {
                        format!("cannot create a Kafka client for {bootstrap_servers}: {e}")
                    })
            }
        };
        let result = match created {
            Ok(consumer) => {
                *client = Some(consumer.clone());
                fetch(consumer, &bootstrap_servers, &key.1, self.timeout).await
            }
            Err(e) => Err(e),
        };
        self.remember(key, result.clone());
        result
    }
}

async fn fetch(
    consumer: Arc<Client>,
    bootstrap_servers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<i32, String> {
    let owned_topic = topic.to_string();
    let joined = tokio::task::spawn_blocking(move || {
        consumer.context().take();
        let result = consumer
            .fetch_metadata(Some(&owned_topic), timeout)
            .map(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == owned_topic)
                    .map(|t| (t.error(), t.partitions().len()))
            });
        let said = if result.is_err() {
            // Connection errors reach the context as events on the client's queue.
            for _ in 0..4 {
                let _ = consumer.poll(Duration::from_millis(50));
            }
            let said = consumer.context().take();
            // The specific complaint (TLS, SASL, refused) rather than the summary after it.
            said.iter()
                .rev()
                .find(|m| !m.is_empty() && !m.contains("brokers are down"))
                .or_else(|| said.last())
                .cloned()
        } else {
            None
        };
        (result, said)
    })
    .await;
    match joined {
        Err(e) => Err(format!("metadata lookup task failed: {e}")),
        Ok((Err(e), said)) => Err(format!(
            "cannot read metadata of topic `{topic}` from {bootstrap_servers}: {e}{}",
            said.map(|s| format!(": {s}")).unwrap_or_default()
        )),
        Ok((Ok(None), _)) => Err(format!(
            "topic `{topic}` is not in the metadata of {bootstrap_servers}"
        )),
        Ok((Ok(Some((Some(err), _))), _)) => Err(format!(
            "topic `{topic}` on {bootstrap_servers}: {}",
            rdkafka::error::RDKafkaErrorCode::from(err)
        )),
        Ok((Ok(Some((None, 0))), _)) => Err(format!(
            "topic `{topic}` on {bootstrap_servers} has no partitions"
        )),
        Ok((Ok(Some((None, n))), _)) => Ok(i32::try_from(n).unwrap_or(i32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(yaml: &str) -> KafkaSource {
        serde_norway::from_str(yaml).unwrap()
    }

    fn secrets() -> SecretData {
        let data = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        BTreeMap::from([
            (
                "user".to_string(),
                data(&[("username", "vigil"), ("password", "s3cret")]),
            ),
            ("ca".to_string(), data(&[("ca.crt", "CA PEM")])),
            (
                "client".to_string(),
                data(&[("tls.crt", "CERT PEM"), ("tls.key", "KEY PEM")]),
            ),
        ])
    }

    #[test]
    fn secret_contents_map_to_librdkafka_properties() {
        let kafka = source(
            "{topics: [t], consumerGroup: g, security: {protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, \
             credentialsSecret: user, caSecret: ca, clientCertSecret: client}, \
             properties: {ssl.endpoint.identification.algorithm: none, ssl.crl.location: /etc/crl.pem, \
             fetch.min.bytes: '1024', socket.keepalive.enable: 'true'}}",
        );
        assert_eq!(
            referenced_secrets(&kafka),
            [
                ("credentialsSecret", "user".to_string()),
                ("caSecret", "ca".to_string()),
                ("clientCertSecret", "client".to_string())
            ]
        );
        let p = connection_properties(&kafka, &secrets()).unwrap();
        let expect: BTreeMap<String, String> = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "vigil"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.pem", "CA PEM"),
            ("ssl.certificate.pem", "CERT PEM"),
            ("ssl.key.pem", "KEY PEM"),
            // Connection-level properties follow; file locations (pod paths) and consumer
            // tuning do not.
            ("ssl.endpoint.identification.algorithm", "none"),
            ("socket.keepalive.enable", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(p, expect);

        let ssl = source("{topics: [t], consumerGroup: g, security: {protocol: SSL}}");
        let p = connection_properties(&ssl, &SecretData::new()).unwrap();
        assert_eq!(p["security.protocol"], "ssl");
        assert_eq!(p["ssl.ca.location"], "probe", "the system's CAs");
        assert!(!p.contains_key("sasl.username"));

        let plain = source("{topics: [t], consumerGroup: g}");
        assert!(
            connection_properties(&plain, &secrets())
                .unwrap()
                .is_empty()
        );

        // TLS through the properties only; the pod's CA file is not the operator's.
        let props = source(
            "{topics: [t], consumerGroup: g, properties: {security.protocol: SSL, ssl.ca.location: /ca.pem}}",
        );
        let p = connection_properties(&props, &SecretData::new()).unwrap();
        assert_eq!(p["security.protocol"], "SSL");
        assert_eq!(p["ssl.ca.location"], "probe");
    }

    #[test]
    fn missing_secrets_and_keys_are_named_without_values() {
        let kafka = source(
            "{topics: [t], consumerGroup: g, security: {protocol: SASL_SSL, saslMechanism: PLAIN, \
             credentialsSecret: user, caSecret: ca}}",
        );
        let mut s = secrets();
        s.remove("ca");
        assert_eq!(
            connection_properties(&kafka, &s).unwrap_err(),
            "spec.source.kafka.security.caSecret: Secret `ca` was not read"
        );
        let mut s = secrets();
        s.get_mut("user").unwrap().remove("password");
        assert_eq!(
            connection_properties(&kafka, &s).unwrap_err(),
            "spec.source.kafka.security.credentialsSecret: Secret `user` has no key `password`"
        );
        let mut s = secrets();
        s.get_mut("user")
            .unwrap()
            .insert("password".into(), vec![0xff, 0xfe]);
        let e = connection_properties(&kafka, &s).unwrap_err();
        assert!(e.contains("is not UTF-8"), "{e}");
        let tls_on_plaintext = source(
            "{topics: [t], consumerGroup: g, security: {protocol: PLAINTEXT, clientCertSecret: client}}",
        );
        assert_eq!(
            connection_properties(&tls_on_plaintext, &secrets()).unwrap_err(),
            "spec.source.kafka.security.clientCertSecret: only applies to protocol SSL or SASL_SSL"
        );
    }

    #[test]
    fn cached_results_are_keyed_by_the_connection_settings() {
        let plain = source("{topics: [t], consumerGroup: g}");
        let ssl =
            source("{topics: [t], consumerGroup: g, security: {protocol: SSL, caSecret: ca}}");
        let other_ca =
            source("{topics: [t], consumerGroup: g, security: {protocol: SSL, caSecret: ca2}}");
        let b = "k:9093";
        assert_eq!(
            ClusterRef::of_source(b, "ns", &plain),
            ClusterRef::plaintext(b)
        );
        let keys = [
            ClusterRef::of_source(b, "ns", &ssl),
            ClusterRef::of_source(b, "other", &ssl),
            ClusterRef::of_source(b, "ns", &other_ca),
            ClusterRef::plaintext(b),
        ];
        for (i, a) in keys.iter().enumerate() {
            for c in &keys[i + 1..] {
                assert_ne!(a, c);
            }
        }
    }

    /// A failed connection (secrets missing) is cached like a failed lookup, and the
    /// connection is resolved once per call however many topics miss the cache.
    #[tokio::test]
    async fn the_connection_is_resolved_once_and_failures_are_cached() {
        let md = KafkaMetadata::new(Duration::from_secs(1), Duration::from_secs(60));
        let cluster = ClusterRef::plaintext("127.0.0.1:1");
        let counter = std::sync::atomic::AtomicU32::new(0);
        let calls = &counter;
        let topics = vec!["a".to_string(), "b".to_string()];
        let resolve = || async move {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err::<BTreeMap<String, String>, _>("caSecret: Secret `ca` not found".to_string())
        };
        assert_eq!(
            md.partitions(&cluster, &topics, resolve).await,
            Partitions::Unknown("caSecret: Secret `ca` not found".into())
        );
        assert_eq!(
            md.partitions(&cluster, &topics, resolve).await,
            Partitions::Unknown("caSecret: Secret `ca` not found".into())
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
