//! Shared helpers of the Kafka integration tests (`tests/kafka_*.rs`): the broker address from
//! `KAFKA_BOOTSTRAP`, unique names, topic creation, producing, and reading a topic to its end.
//! The tests need a real broker: `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{DetectionRule, StreamPipeline};
use vigil_detector::source::admin;

/// The broker of the tests. Panics with instructions when `KAFKA_BOOTSTRAP` is unset: these
/// tests must not pass by skipping.
pub fn bootstrap() -> String {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => b,
        _ => panic!(
            "KAFKA_BOOTSTRAP is not set. The Kafka integration tests need a real broker: run \
             `scripts/kafka.sh start && eval \"$(scripts/kafka.sh env)\"` first (or .ci/run)."
        ),
    }
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates topics.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    admin::ensure_topics(bootstrap, topics).expect("create topics");
}

/// Creates one topic with topic configs (e.g. `max.message.bytes`).
#[allow(dead_code)] // not every test binary uses it
pub fn create_topic_with(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
}

/// A pipeline and its rules from YAML.
pub fn manifests(yaml: &str) -> (StreamPipeline, Vec<DetectionRule>) {
    let mut m = Manifests::default();
    m.add_str("test", yaml).expect("valid manifests");
    let p = m.pipelines[0].clone();
    let rules = m.rules_for(&p).into_iter().cloned().collect();
    (p, rules)
}

/// Produces `(key, payload, timestamp)` records and waits for their acknowledgement.
pub fn produce(bootstrap: &str, topic: &str, records: &[(Option<&str>, Vec<u8>)]) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    for (k, v) in records {
        let mut r = BaseRecord::<str, [u8]>::to(topic).payload(&v[..]);
        if let Some(k) = k {
            r = r.key(*k);
        }
        p.send(r).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// Reads every record of `topic` from the beginning until `want` records were read or
/// `timeout` passed.
pub fn read(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let parts =
        admin::high_watermarks(bootstrap, topic, Duration::from_secs(10)).expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    for (p, _) in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            out.push(m.expect("consume").detach());
        }
    }
    out
}

/// Reads `topic` up to its current end.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let total: i64 = admin::high_watermarks(bootstrap, topic, Duration::from_secs(10))
        .expect("topic metadata")
        .iter()
        .map(|(_, hi)| hi)
        .sum();
    read(bootstrap, topic, total as usize, Duration::from_secs(20))
}

/// A header value as text.
pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The JSON payload.
pub fn json(m: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(m.payload().unwrap_or(&[])).expect("JSON payload")
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The offsets committed by `group` on `topic`, per partition (`None`: nothing committed).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| {
            got.find_partition(topic, p).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        })
        .collect()
}
