//! Topic administration for local runs, tests and benchmarks: create missing topics on a real
//! broker (Kafka admin API) and read partition counts and topic limits. Production topics are
//! expected to exist; the detector itself never creates topics unless asked to.
//!
//! Each function takes a [`Cluster`]: a bootstrap list (`&str`, plaintext) or a whole
//! [`ClientConfig`] such as [`super::SourceSettings::client_config`] or the sinks' producer
//! configuration, whose connection settings (TLS, SASL, ...) the admin client then uses.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Failure of a topic operation.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin client could not be created.
    #[error("failed to create the Kafka admin client")]
    Client(#[source] KafkaError),
    /// The request failed as a whole.
    #[error("failed to {operation} topics")]
    Request {
        /// `create` or `delete`.
        operation: &'static str,
        /// The cause.
        #[source]
        source: KafkaError,
    },
    /// One topic could not be created or deleted.
    #[error("failed to {operation} topic {topic}: {code}")]
    Topic {
        /// `create` or `delete`.
        operation: &'static str,
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// Reading metadata failed.
    #[error("failed to read the metadata of topic {topic}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The cause.
        #[source]
        source: KafkaError,
    },
    /// The async runtime for the admin request could not be built.
    #[error("failed to start a runtime for the admin request")]
    Runtime(#[source] std::io::Error),
}

/// The cluster an admin request goes to, and how to connect to it.
pub trait Cluster {
    /// A client configuration with `bootstrap.servers` and the connection settings.
    fn client_config(&self) -> ClientConfig;
}

/// A bootstrap list, plaintext.
impl Cluster for str {
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self);
        c
    }
}

/// A bootstrap list, plaintext.
impl Cluster for String {
    fn client_config(&self) -> ClientConfig {
        self.as_str().client_config()
    }
}

/// `bootstrap.servers`, `client.id` and the connection-level properties
/// ([`vigil_api::v1alpha1::is_client_property`]: security, TLS, SASL, sockets, ...) of a client
/// configuration; consumer or producer tuning is left out.
impl Cluster for ClientConfig {
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.config_map() {
            if k == "bootstrap.servers"
                || k == "client.id"
                || vigil_api::v1alpha1::is_client_property(k)
            {
                c.set(k, v);
            }
        }
        c
    }
}

fn admin<C: Cluster + ?Sized>(
    cluster: &C,
) -> Result<AdminClient<DefaultClientContext>, AdminError> {
    cluster.client_config().create().map_err(AdminError::Client)
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, AdminError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Runtime)?
        .block_on(f))
}

/// Creates each `(topic, partitions)` that does not exist yet (replication factor 1 is not
/// forced: the broker default applies). Existing topics are left as they are.
///
/// Call it outside an async context (it runs its own small runtime).
///
/// # Errors
/// [`AdminError`] when the broker refuses a topic for another reason than that it exists.
pub fn ensure_topics<C: Cluster + ?Sized>(
    cluster: &C,
    topics: &[(&str, i32)],
) -> Result<(), AdminError> {
    let admin = admin(cluster)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        block_on(admin.create_topics(&new, &opts))?.map_err(|source| AdminError::Request {
            operation: "create",
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Topic {
                    operation: "create",
                    topic,
                    code,
                });
            }
        }
    }
    Ok(())
}

/// `max.message.bytes` of each topic that exists and reports it (the broker's limit on one
/// record batch of the topic).
///
/// # Errors
/// [`AdminError`] when the request fails as a whole.
pub fn max_message_bytes<C: Cluster + ?Sized>(
    cluster: &C,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<(String, usize)>, AdminError> {
    let admin = admin(cluster)?;
    let specs: Vec<rdkafka::admin::ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| rdkafka::admin::ResourceSpecifier::Topic(t))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results =
        block_on(admin.describe_configs(&specs, &opts))?.map_err(|source| AdminError::Request {
            operation: "describe configs",
            source,
        })?;
    Ok(topics
        .iter()
        .zip(results)
        .filter_map(|(t, r)| {
            let limit = r
                .ok()?
                .get("max.message.bytes")?
                .value
                .as_deref()?
                .parse()
                .ok()?;
            Some((t.to_string(), limit))
        })
        .collect())
}

/// Deletes topics (missing ones are ignored).
///
/// # Errors
/// [`AdminError`] when the broker refuses.
pub fn delete_topics<C: Cluster + ?Sized>(cluster: &C, topics: &[&str]) -> Result<(), AdminError> {
    let admin = admin(cluster)?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        block_on(admin.delete_topics(topics, &opts))?.map_err(|source| AdminError::Request {
            operation: "delete",
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Topic {
                    operation: "delete",
                    topic,
                    code,
                });
            }
        }
    }
    Ok(())
}

/// Partition numbers of `topic` with their high watermarks (next offset to be written).
///
/// # Errors
/// [`AdminError::Metadata`] when the topic is unknown or the broker does not answer in `timeout`.
pub fn high_watermarks<C: Cluster + ?Sized>(
    cluster: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, AdminError> {
    let err = |source| AdminError::Metadata {
        topic: topic.to_string(),
        source,
    };
    let c: BaseConsumer = cluster
        .client_config()
        .create()
        .map_err(AdminError::Client)?;
    let md = c.fetch_metadata(Some(topic), timeout).map_err(err)?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )));
    }
    parts
        .into_iter()
        .map(|p| {
            c.fetch_watermarks(topic, p, timeout)
                .map(|(_, hi)| (p, hi))
                .map_err(err)
        })
        .collect()
}

/// The brokers could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot reach Kafka at {bootstrap}: {reason}")]
pub struct Unreachable {
    /// The bootstrap servers tried.
    pub bootstrap: String,
    /// What the client said last (e.g. `Connect to ipv4#127.0.0.1:1 failed: Connection refused`).
    pub reason: String,
}

/// Collects what the client reports while probing, instead of logging it.
#[derive(Default)]
struct ProbeContext {
    errors: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for ProbeContext {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, log_message: &str) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log_message.to_string());
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{reason} ({error})"));
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// Checks that the cluster answers a metadata request within `timeout`, with the client
/// settings the detector will use (`config`: bootstrap servers, security).
///
/// # Errors
/// [`Unreachable`] naming the bootstrap servers and the client's last complaint (connection
/// refused, unknown host, TLS or SASL failure) or the timeout.
pub fn check_reachable(config: &ClientConfig, timeout: Duration) -> Result<(), Unreachable> {
    let bootstrap = config.get("bootstrap.servers").unwrap_or("").to_string();
    let unreachable = |reason: String| Unreachable {
        bootstrap: bootstrap.clone(),
        reason,
    };
    let mut probe = config.clone();
    // A probe needs no group; keep librdkafka's own logging for the context to collect.
    probe.remove("group.id");
    probe.remove("group.instance.id");
    let consumer: BaseConsumer<ProbeContext> = probe
        .create_with_context(ProbeContext::default())
        .map_err(|e| unreachable(e.to_string()))?;
    match consumer.fetch_metadata(None, timeout) {
        Ok(md) if !md.brokers().is_empty() => Ok(()),
        Ok(_) => Err(unreachable("the cluster reported no brokers".into())),
        Err(e) => {
            // Connection errors reach the context as events on the client's queue.
            for _ in 0..4 {
                let _ = consumer.poll(Duration::from_millis(50));
            }
            // The specific complaint (refused, unresolvable, TLS, SASL) rather than the summary
            // that follows it ("1/1 brokers are down").
            let said = {
                let errors = consumer
                    .context()
                    .errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                errors
                    .iter()
                    .rev()
                    .find(|m| !m.is_empty() && !m.contains("brokers are down"))
                    .or_else(|| errors.last())
                    .cloned()
            };
            Err(unreachable(match said {
                Some(m) => format!("{m} (no metadata within {} s)", timeout.as_secs()),
                None => format!("{e} (no metadata within {} s)", timeout.as_secs()),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed port: refused, well within the bound, and said so.
    #[test]
    fn a_refused_port_is_reported_with_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &addr);
        let started = std::time::Instant::now();
        let e = check_reachable(&c, Duration::from_secs(3)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(e.bootstrap, addr);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot reach Kafka at {addr}: ")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
