//! Following the reference data (`spec.enrichment`), from one of two sources:
//! - a **file** (the mounted ConfigMap, [`follow`]): read at start (a file that cannot be read or
//!   parsed stops the run, naming it), then checked every second and reloaded when its bytes
//!   change (kubelet swaps a mounted ConfigMap's files atomically, within about a minute of the
//!   ConfigMap's change). A reload that does not parse keeps the data in use and says why;
//! - a **Kafka topic** (a changelog, usually compacted, [`follow_topic`]): every partition read
//!   from the beginning up to its high watermark before the detector starts, then followed
//!   live. Record key = entity key, value = the key's attributes (JSON or YAML map), no value =
//!   the key is removed (a tombstone, as compaction keeps them). A record that does not parse is
//!   logged and counted (`vigil_enrichment_loads_total{result="invalid"}`) and the key keeps
//!   its previous attributes.
//!
//! The engine sees a change from its next alert on ([`vigil_core::enrichment::ReferenceData`]
//! is shared).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use vigil_api::v1alpha1::EnrichmentSpec;
use vigil_core::enrichment::{Attributes, ReferenceData, parse, parse_attributes};

use crate::telemetry::Metrics;

/// How often the file is checked.
pub const POLL: Duration = Duration::from_secs(1);

/// Reference data that cannot be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum EnrichmentError {
    /// No file to read.
    #[error(
        "spec.enrichment: {0} is not set (the operator sets it to the mounted ConfigMap's attributes.yaml; set it for `vigil run`)"
    )]
    NoFile(&'static str),
    /// The topic cannot be read.
    #[error("spec.enrichment.topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The file cannot be read or parsed.
    #[error("spec.enrichment: {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

fn load(
    path: &Path,
) -> Result<
    (
        Vec<u8>,
        std::collections::HashMap<String, vigil_core::enrichment::Attributes>,
    ),
    String,
> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let data = parse(&bytes)?;
    Ok((bytes, data))
}

/// Loads `file` and follows it on a thread of its own, which ends when the returned data is
/// dropped.
///
/// # Errors
/// [`EnrichmentError`] naming the file.
pub fn follow(
    spec: &EnrichmentSpec,
    file: Option<&Path>,
    metrics: Metrics,
) -> Result<Arc<ReferenceData>, EnrichmentError> {
    let path: PathBuf = file
        .ok_or(EnrichmentError::NoFile(
            vigil_api::contract::detector::env::ENRICHMENT_FILE,
        ))?
        .to_path_buf();
    let (mut seen, data) = load(&path).map_err(|reason| EnrichmentError::File {
        path: path.display().to_string(),
        reason,
    })?;
    metrics.enrichment(data.len(), "loaded");
    tracing::info!(file = %path.display(), keys = data.len(), "Reference data loaded.");
    let reference = Arc::new(ReferenceData::new(data, spec.default.clone()));
    let weak: Weak<ReferenceData> = Arc::downgrade(&reference);
    let spawned = std::thread::Builder::new()
        .name("vigil-enrichment".into())
        .spawn(move || {
            loop {
                std::thread::sleep(POLL);
                let Some(reference) = weak.upgrade() else { return };
                let Ok(bytes) = std::fs::read(&path) else {
                    continue; // mid-swap or gone: the data in use stays
                };
                if bytes == seen {
                    continue;
                }
                let t0 = Instant::now();
                match parse(&bytes) {
                    Ok(data) => {
                        let n = data.len();
                        reference.replace(data);
                        metrics.enrichment(n, "reloaded");
                        tracing::info!(file = %path.display(), keys = n, parse_ms = t0.elapsed().as_secs_f64() * 1e3,
                            "Reference data reloaded; the next alerts carry it.");
                    }
                    Err(e) => {
                        metrics.enrichment(reference.len(), "invalid");
                        tracing::error!(file = %path.display(), error = %e, "Reference data changed but does not parse; the previous data stays in use.");
                    }
                }
                seen = bytes;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Reference data is not followed (no thread); it stays as loaded.");
    }
    Ok(reference)
}

/// Longest wait for the topic's initial read before the run fails.
pub const TOPIC_LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// One record of a reference data topic as a change; `None` for a record that is not one
/// (logged and counted).
fn change(
    m: &rdkafka::message::BorrowedMessage<'_>,
    metrics: &Metrics,
) -> Option<(String, Option<Attributes>)> {
    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        metrics.enrichment_record_invalid();
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            "Reference data record without a UTF-8 key; skipped."
        );
        return None;
    };
    match m.payload() {
        None => Some((key.to_string(), None)),
        Some(bytes) => match parse_attributes(key, bytes) {
            Ok(a) => Some((key.to_string(), Some(a))),
            Err(e) => {
                metrics.enrichment_record_invalid();
                tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e,
                    "Reference data record does not parse; the key keeps its previous attributes.");
                None
            }
        },
    }
}

/// Reads the reference data topic `topic` (client settings `config`, the source's) from the
/// beginning up to its high watermarks, then follows it on a thread of its own, which ends
/// when the returned data is dropped.
///
/// # Errors
/// [`EnrichmentError::Topic`]: the topic does not exist or cannot be read within
/// `timeout` (metadata) / [`TOPIC_LOAD_TIMEOUT`] (the initial read).
pub fn follow_topic(
    spec: &EnrichmentSpec,
    topic: &str,
    mut config: ClientConfig,
    timeout: Duration,
    metrics: Metrics,
) -> Result<Arc<ReferenceData>, EnrichmentError> {
    let err = |reason: String| EnrichmentError::Topic {
        topic: topic.to_string(),
        reason,
    };
    // Partitions are assigned, not subscribed, and nothing is committed: every detector reads
    // the whole topic.
    config
        .set("group.id", format!("vigil-enrichment-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    config.remove("group.instance.id");
    let consumer: BaseConsumer = config.create().map_err(|e| err(e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| err(e.to_string()))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(err("no such topic (or it has no partitions)".into()));
    }
    let mut ends: Vec<(i32, i64)> = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(|e| err(e.to_string()))?;
        if high > low {
            ends.push((*p, high));
        }
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| err(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let t0 = Instant::now();
    let mut entries: std::collections::HashMap<String, Attributes> =
        std::collections::HashMap::new();
    let mut records = 0u64;
    while !ends.is_empty() {
        if t0.elapsed() > TOPIC_LOAD_TIMEOUT {
            return Err(err(format!(
                "the initial read did not reach the end of partitions {:?} within {} s",
                ends.iter().map(|e| e.0).collect::<Vec<_>>(),
                TOPIC_LOAD_TIMEOUT.as_secs()
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                if let Some((k, v)) = change(&m, &metrics) {
                    match v {
                        Some(a) => {
                            entries.insert(k, a);
                        }
                        None => {
                            entries.remove(&k);
                        }
                    }
                }
                let (p, next) = (m.partition(), m.offset() + 1);
                ends.retain(|(q, end)| !(*q == p && next >= *end));
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "Reference data topic read error."),
            None => {}
        }
    }
    metrics.enrichment(entries.len(), "loaded");
    tracing::info!(
        topic,
        keys = entries.len(),
        records,
        load_ms = t0.elapsed().as_secs_f64() * 1e3,
        "Reference data loaded from the topic; following it."
    );
    let reference = Arc::new(ReferenceData::new(entries, spec.default.clone()));
    let weak: Weak<ReferenceData> = Arc::downgrade(&reference);
    let topic_name = topic.to_string();
    let spawned = std::thread::Builder::new()
        .name("vigil-enrichment".into())
        .spawn(move || {
            loop {
                let first = consumer.poll(Duration::from_millis(200));
                let Some(reference) = weak.upgrade() else { return };
                let mut batch = Vec::new();
                let mut next = first;
                // Everything already fetched, applied under one lock.
                while let Some(r) = next {
                    match r {
                        Ok(m) => batch.extend(change(&m, &metrics)),
                        Err(e) => tracing::warn!(topic = %topic_name, error = %e, "Reference data topic read error."),
                    }
                    if batch.len() >= 10_000 {
                        break;
                    }
                    next = consumer.poll(Duration::ZERO);
                }
                if !batch.is_empty() {
                    reference.apply(batch);
                    metrics.enrichment(reference.len(), "updated");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Reference data is not followed (no thread); it stays as loaded.");
    }
    Ok(reference)
}
