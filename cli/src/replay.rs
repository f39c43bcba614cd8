//! `vigil replay`: writes a NAB-format CSV or a JSON Lines file to a Kafka topic, one record per
//! row, with the row's event time as the Kafka message timestamp, at N times real time (from
//! the event-time gaps) or as fast as the producer goes. Also used by `vigil run --replay`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use vigil_api::v1alpha1::TimeFormat;

/// Arguments of `vigil replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Input `.csv` (header row; NAB: `timestamp,value`) or `.jsonl`.
    #[arg(long)]
    pub input: PathBuf,
    /// Topic to write to.
    #[arg(long)]
    pub topic: String,
    /// `max` (as fast as possible) or a factor N of real time: rows are spaced by their
    /// event-time gaps divided by N.
    #[arg(long, default_value = "max")]
    pub speed: Speed,
    /// Message key of every row. Default: the input file name without its extension (e.g.
    /// `machine_temperature_system_failure`), unless --key-field is given.
    #[arg(long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// Dotted path of a field whose value is each row's message key (e.g. `sensor.id`).
    #[arg(long)]
    pub key_field: Option<String>,
    /// Dotted path of the event-time field (epoch ms, RFC 3339 or `YYYY-MM-DD HH:MM:SS`).
    #[arg(long, default_value = "timestamp")]
    pub time_field: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = vigil_api::contract::detector::env::BOOTSTRAP_SERVERS)]
    pub bootstrap_servers: String,
}

/// Replay pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the producer accepts records.
    Max,
    /// N times real time.
    Factor(f64),
}

impl FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        match s.trim_end_matches(['x', 'X']).parse::<f64>() {
            Ok(f) if f > 0.0 && f.is_finite() => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "`{s}` is neither `max` nor a positive factor such as 1000"
            )),
        }
    }
}

/// One record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRecord {
    /// Message key.
    pub key: Vec<u8>,
    /// Event time, epoch ms (the Kafka timestamp); `None` when the row has none.
    pub event_time_ms: Option<i64>,
    /// The row as JSON.
    pub payload: Vec<u8>,
}

/// What a replay wrote.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Records acknowledged.
    pub delivered: u64,
    /// Records rejected.
    pub failed: u64,
    /// Rows without a usable event time (sent with the current time).
    pub without_time: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// One past the highest offset written, per partition: `(topic, partition, next offset)`.
    pub end_offsets: Vec<(String, i32, i64)>,
}

fn lookup<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(v, |v, seg| v.get(seg))
}

/// Reads `input` into records: key from `key` (default: the file stem) or `key_field`, event time
/// from `time_field`.
///
/// # Errors
/// An unreadable input.
pub fn load(
    input: &Path,
    key: Option<&str>,
    key_field: Option<&str>,
    time_field: &str,
) -> anyhow::Result<(Vec<ReplayRecord>, u64)> {
    let (_, rows) = vigil_core::input::read_rows(input)?;
    let default_key = key.map(str::to_string).unwrap_or_else(|| {
        input
            .file_stem()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut without_time = 0;
    let records = rows
        .into_iter()
        .map(|r| {
            let v: Option<serde_json::Value> = serde_json::from_slice(&r.json).ok();
            let event_time_ms =
                v.as_ref()
                    .and_then(|v| lookup(v, time_field))
                    .and_then(|t| match t {
                        serde_json::Value::String(s) => {
                            vigil_core::decode::parse_event_time(s, TimeFormat::Auto).ok()
                        }
                        serde_json::Value::Number(n) => {
                            n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))
                        }
                        _ => None,
                    });
            if event_time_ms.is_none() {
                without_time += 1;
            }
            let key = match key_field {
                Some(f) => match v.as_ref().and_then(|v| lookup(v, f)) {
                    Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
                    Some(other) => other.to_string().into_bytes(),
                    None => default_key.clone().into_bytes(),
                },
                None => default_key.clone().into_bytes(),
            };
            ReplayRecord {
                key,
                event_time_ms,
                payload: r.json,
            }
        })
        .collect();
    Ok((records, without_time))
}

#[derive(Default)]
struct Acks {
    delivered: u64,
    failed: u64,
    next: BTreeMap<(String, i32), i64>,
}

struct ReplayContext {
    acks: Arc<Mutex<Acks>>,
}

impl ClientContext for ReplayContext {}

impl ProducerContext for ReplayContext {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let mut a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(m) => {
                a.delivered += 1;
                let e = a
                    .next
                    .entry((m.topic().to_string(), m.partition()))
                    .or_insert(0);
                *e = (*e).max(m.offset() + 1);
            }
            Err((e, _)) => {
                a.failed += 1;
                if a.failed <= 5 {
                    tracing::error!(error = %e, "Replay record rejected by the broker.");
                }
            }
        }
    }
}

/// Writes `records` to `topic`, pacing by `speed`, until done or `stop` is set; waits for every
/// acknowledgement.
///
/// # Errors
/// A producer that cannot be created or a flush that times out.
pub fn replay(
    bootstrap: &str,
    topic: &str,
    records: &[ReplayRecord],
    speed: Speed,
    stop: &AtomicBool,
) -> anyhow::Result<ReplayReport> {
    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut probe = ClientConfig::new();
    probe.set("bootstrap.servers", bootstrap);
    vigil_detector::source::admin::check_reachable(&probe, Duration::from_secs(10))?;
    let producer: ThreadedProducer<ReplayContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "vigil-replay")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(ReplayContext { acks: acks.clone() })
        .context("failed to create the replay producer")?;
    let started = Instant::now();
    let first_time = records.iter().find_map(|r| r.event_time_ms);
    let mut without_time = 0;
    for r in records {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let (Speed::Factor(f), Some(t0), Some(t)) = (speed, first_time, r.event_time_ms) {
            let due = Duration::from_secs_f64(((t - t0).max(0) as f64 / 1e3) / f);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let mut rec = BaseRecord::to(topic)
            .key(&r.key[..])
            .payload(&r.payload[..]);
        match r.event_time_ms {
            Some(t) => rec = rec.timestamp(t),
            None => without_time += 1,
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("failed to send a record to {topic}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("replay: not every record was acknowledged within 60 s")?;
    let a = acks.lock().unwrap_or_else(|e| e.into_inner());
    Ok(ReplayReport {
        delivered: a.delivered,
        failed: a.failed,
        without_time,
        elapsed: started.elapsed(),
        end_offsets: a
            .next
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect(),
    })
}

/// Runs `vigil replay`.
///
/// # Errors
/// An unreadable input, or a broker that does not accept the records.
pub fn run(a: &ReplayArgs) -> anyhow::Result<()> {
    let (records, _) = load(
        &a.input,
        a.key.as_deref(),
        a.key_field.as_deref(),
        &a.time_field,
    )?;
    tracing::info!(input = %a.input.display(), rows = records.len(), topic = %a.topic, speed = ?a.speed, "Replaying.");
    let stop = AtomicBool::new(false);
    let r = replay(&a.bootstrap_servers, &a.topic, &records, a.speed, &stop)?;
    if r.without_time > 0 {
        tracing::warn!(rows = r.without_time, field = %a.time_field, "Rows without an event time were sent with the current time.");
    }
    let rate = r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9);
    tracing::info!(
        delivered = r.delivered,
        failed = r.failed,
        elapsed_s = r.elapsed.as_secs_f64(),
        records_per_s = rate.round(),
        "Replay done."
    );
    if r.failed > 0 {
        bail!("{} records were rejected by the broker", r.failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_parses_max_and_factors() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("1000".parse::<Speed>(), Ok(Speed::Factor(1000.0)));
        assert_eq!("60x".parse::<Speed>(), Ok(Speed::Factor(60.0)));
        assert!("0".parse::<Speed>().is_err());
        assert!("fast".parse::<Speed>().is_err());
    }

    #[test]
    fn nab_csv_rows_keep_their_event_time_and_the_file_name_as_key() {
        let dir = std::env::temp_dir().join(format!("vigil-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("m.csv");
        std::fs::write(
            &f,
            "timestamp,value\n2013-12-02 21:15:00,73.9\n2013-12-02 21:20:00,74.9\n",
        )
        .unwrap();
        let (recs, missing) = load(&f, None, None, "timestamp").unwrap();
        assert_eq!(missing, 0);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].key, b"m");
        assert_eq!(
            recs[1].event_time_ms.unwrap() - recs[0].event_time_ms.unwrap(),
            300_000
        );
        assert_eq!(recs[0].event_time_ms, Some(1_386_018_900_000));
        let j = dir.join("e.jsonl");
        std::fs::write(&j, "{\"id\":\"s1\",\"t\":5}\n{\"id\":7,\"t\":6}\n").unwrap();
        let (recs, _) = load(&j, None, Some("id"), "t").unwrap();
        assert_eq!(
            (recs[0].key.as_slice(), recs[1].key.as_slice()),
            (&b"s1"[..], &b"7"[..])
        );
        assert_eq!(recs[1].event_time_ms, Some(6));
    }
}
