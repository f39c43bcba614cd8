//! Partition counts of Kafka topics, read with librdkafka's metadata request
//! (`BaseConsumer::fetch_metadata`). One client per bootstrap list is kept for the life of the
//! process; results are cached per topic (successes for the configured TTL, failures for at
//! most 5 s) and concurrent lookups against one cluster are serialised, so a thousand pipelines
//! reading one topic cost one request per TTL. Failures are values, not errors: the pipeline
//! controller reports them in a condition and runs `spec.parallelism` replicas unclamped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// How long a failed lookup is remembered, at most.
const FAILURE_TTL: Duration = Duration::from_secs(5);

/// Partitions of a pipeline's source topics, or why they are unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitions {
    /// Topic -> partition count.
    Known(BTreeMap<String, i32>),
    /// The lookup failed: a message naming the broker list or topic.
    Unknown(String),
}

/// Serialises lookups against one cluster and holds its client once created.
type ClusterGate = Arc<tokio::sync::Mutex<Option<Arc<BaseConsumer>>>>;

#[derive(Clone)]
struct Cached {
    at: Instant,
    result: Result<i32, String>,
}

/// Cached partition lookups. Cheap to share behind an `Arc`.
pub struct KafkaMetadata {
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<(String, String), Cached>>,
    clusters: Mutex<HashMap<String, ClusterGate>>,
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

    /// Partition counts of `topics` on the cluster at `bootstrap_servers` (a librdkafka
    /// `bootstrap.servers` list, plaintext).
    pub async fn partitions(&self, bootstrap_servers: &str, topics: &[String]) -> Partitions {
        let mut known = BTreeMap::new();
        for topic in topics {
            match self.topic_partitions(bootstrap_servers, topic).await {
                Ok(n) => {
                    known.insert(topic.clone(), n);
                }
                Err(reason) => return Partitions::Unknown(reason),
            }
        }
        Partitions::Known(known)
    }

    fn cached(&self, key: &(String, String)) -> Option<Result<i32, String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        let ttl = if entry.result.is_ok() {
            self.ttl
        } else {
            self.ttl.min(FAILURE_TTL)
        };
        (entry.at.elapsed() < ttl).then(|| entry.result.clone())
    }

    async fn topic_partitions(&self, bootstrap_servers: &str, topic: &str) -> Result<i32, String> {
        let key = (bootstrap_servers.to_string(), topic.to_string());
        if let Some(result) = self.cached(&key) {
            return result;
        }
        let gate = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(bootstrap_servers.to_string())
            .or_default()
            .clone();
        let mut client = gate.lock().await;
        // Another lookup may have filled the cache while this one waited.
        if let Some(result) = self.cached(&key) {
            return result;
        }
        let result = match client.as_ref() {
            Some(c) => Ok(c.clone()),
            None => ClientConfig::new()
                .set("bootstrap.servers", bootstrap_servers)
                .set("client.id", "vigil-operator")
                .set("allow.auto.create.topics", "false")
                .create::<BaseConsumer>()
                .map(Arc::new)
                .map_err(|e| format!("cannot create a Kafka client for {bootstrap_servers}: {e}")),
        };
        let result = match result {
            Ok(consumer) => {
                *client = Some(consumer.clone());
                fetch(consumer, bootstrap_servers, topic, self.timeout).await
            }
            Err(e) => Err(e),
        };
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Cached {
                at: Instant::now(),
                result: result.clone(),
            },
        );
        result
    }
}

async fn fetch(
    consumer: Arc<BaseConsumer>,
    bootstrap_servers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<i32, String> {
    let owned_topic = topic.to_string();
    let joined = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&owned_topic), timeout)
            .map(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == owned_topic)
                    .map(|t| (t.error(), t.partitions().len()))
            })
    })
    .await;
    match joined {
        Err(e) => Err(format!("metadata lookup task failed: {e}")),
        Ok(Err(e)) => Err(format!(
            "cannot read metadata of topic `{topic}` from {bootstrap_servers}: {e}"
        )),
        Ok(Ok(None)) => Err(format!(
            "topic `{topic}` is not in the metadata of {bootstrap_servers}"
        )),
        Ok(Ok(Some((Some(err), _)))) => Err(format!(
            "topic `{topic}` on {bootstrap_servers}: {}",
            rdkafka::error::RDKafkaErrorCode::from(err)
        )),
        Ok(Ok(Some((None, 0)))) => Err(format!(
            "topic `{topic}` on {bootstrap_servers} has no partitions"
        )),
        Ok(Ok(Some((None, n)))) => Ok(i32::try_from(n).unwrap_or(i32::MAX)),
    }
}
