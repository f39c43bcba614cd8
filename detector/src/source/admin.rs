//! Topic administration for local runs, tests and benchmarks: create missing topics on a real
//! broker (Kafka admin API) and read partition counts. Production topics are expected to exist;
//! the detector itself never creates topics unless asked to.

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

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>, AdminError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(AdminError::Client)
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
pub fn ensure_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<(), AdminError> {
    let admin = admin(bootstrap)?;
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

/// Deletes topics (missing ones are ignored).
///
/// # Errors
/// [`AdminError`] when the broker refuses.
pub fn delete_topics(bootstrap: &str, topics: &[&str]) -> Result<(), AdminError> {
    let admin = admin(bootstrap)?;
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
pub fn high_watermarks(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, AdminError> {
    let err = |source| AdminError::Metadata {
        topic: topic.to_string(),
        source,
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
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
