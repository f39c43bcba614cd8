//! `vigil bench`: throughput and latency of the data path, in one run on one topic, for one of
//! two workloads (`--workload`): `dense` (host metrics, one event per key per second: windows
//! full of events) or `sparse` (the peer comparison's job in `../shared/bench/peer`: event time
//! +10 ms per event over 10,000 keys, so each event closes about 3.3 mostly small windows).
//!
//! 1. Engine in memory: decode -> 2 window tiers -> 5 rules over pre-built JSON events of many
//!    keys, one thread, no Kafka; events/s and state bytes per key.
//! 2. Raw consume: an rdkafka consumer reading the topic with no processing.
//! 3. Detector: `vigil run`'s loop (consumer group, engine, alert producer, commits) on the same
//!    topic; events/s, the ratio to raw, and events per CPU-second of the whole process.
//! 4. Latency at a fixed load (half the detector's rate): a threshold rule over a 100 ms
//!    tumbling window with no out-of-orderness; the latency is from the Kafka timestamp
//!    (produce time) of the record that closes a window to the broker's acknowledgement of the
//!    alert, so it leaves out the wait for the window to end. Measured below saturation: when
//!    the detector ends the load more than 100 ms of it behind or its median passes 100 ms,
//!    the rate is halved and the phase runs again (up to 3 times); `saturated=true` says the
//!    last one was still behind.
//!
//! 5. State (`--state-keys N`, in memory, no broker): snapshot bytes per key of the bench
//!    pipeline and of the recommended NAB rules, the time to encode a checkpoint of N keys and
//!    to read, decode and restore it into a fresh engine, and what a checkpoint every 10 s
//!    costs the engine (encode CPU-seconds / 10 s of a saturated engine thread).
//!
//! Uses the broker in `--bootstrap-servers`/`KAFKA_BOOTSTRAP`, else an embedded mock cluster.
//! Ends with one line `BENCH workload=W workers=N events_per_cpu_s=N raw_consume_per_cpu_s=N ratio=R
//! flink_per_cpu_s=N p99_ms=X ...`: events per CPU-second of the whole detector process and of a
//! raw consumer with its settings (robust on a shared machine), their ratio, Flink's figure
//! when given (`--flink-per-cpu-s`, from the peer runner), the latency phase's p99; then p50,
//! the latency rate and whether it saturated, `engine_eps_per_core` (events per CPU-second of
//! the engine thread in memory), the wall-clock rates `e2e_eps`/`raw_consume_eps` from the first
//! to the last record, and state bytes per key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use vigil_api::manifest::Manifests;
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_detector::runner::{self, Control, RunnerConfig, wall_clock_ms};
use vigil_detector::sink::LatencyProbe;
use vigil_detector::source::{SourceSettings, admin};
use vigil_detector::telemetry::Metrics;

mod workload;

pub use workload::Workload;
use workload::{manifests, splitmix};

/// Arguments of `vigil bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Kafka bootstrap servers; default: `KAFKA_BOOTSTRAP`, else an embedded mock cluster.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub bootstrap_servers: Option<String>,
    /// Events written to the topic for the consume phases.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: usize,
    /// Events of the in-memory engine phase.
    #[arg(long, default_value_t = 2_000_000)]
    pub engine_events: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Seconds of the fixed-load latency phase (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub latency_seconds: u64,
    /// Load of the latency phase, events/s (default: half the detector rate).
    #[arg(long)]
    pub latency_rate: Option<f64>,
    /// librdkafka consumer property `KEY=VALUE` for both the raw consumer and the detector
    /// (repeatable), e.g. `fetch.queue.backoff.ms=10`.
    #[arg(long = "consumer-property", value_parser = parse_kv)]
    pub consumer_properties: Vec<(String, String)>,
    /// Keep the bench topics (they are deleted at the end otherwise).
    #[arg(long)]
    pub keep_topics: bool,
    /// Run only the state phase with this many keys (checkpoint size, encode and restore
    /// time), e.g. 1000000.
    #[arg(long)]
    pub state_keys: Option<usize>,
    /// Every Nth bench record carries a W3C `traceparent` header (sampled flag set, a
    /// different trace id each), as from producers that trace every record; 0: none. With
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set the detector phase traces the ones its sampler keeps
    /// (docs/observability.md): what tracing costs.
    #[arg(long, default_value_t = 0)]
    pub traceparent_every: usize,
    /// The workload: `dense` (one event per key per second of event time: windows full of
    /// events, few firings per event) or `sparse` (the peer comparison's job, see
    /// `../shared/bench/peer`: event time +10 ms per event over the keys, so a window holds few
    /// events of a key and each event closes about 3.3 windows).
    #[arg(long, value_enum, default_value_t = Workload::Dense)]
    pub workload: Workload,
    /// Flink DataStream's events per CPU-second on the same workload, from the peer runner
    /// (`../shared/bench/peer`, `summarize.py`), printed as `flink_per_cpu_s` beside this run's
    /// figure; `na` without it.
    #[arg(long)]
    pub flink_per_cpu_s: Option<f64>,
    /// Engine workers of the detector and latency phases (`vigil run --workers`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// CPU seconds (user + system) of this process so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    proc_cpu_seconds("/proc/self/stat")
}

/// CPU seconds (user + system) of the calling thread so far.
fn thread_cpu_seconds() -> f64 {
    proc_cpu_seconds("/proc/thread-self/stat")
}

fn proc_cpu_seconds(path: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the ')'.
    let ticks: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

struct EngineResult {
    /// Events per CPU-second of the engine's thread.
    eps_per_cpu: f64,
    state_bytes_per_key: usize,
}

fn engine_phase(w: Workload, n: usize, keys: usize) -> anyhow::Result<EngineResult> {
    let m = w.manifests("bench", "bench", "alerts", false)?;
    let rules = m.rules_for(&m.pipelines[0]);
    let (mut e, errs) =
        Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(e) = errs.first() {
        bail!("bench rule: {e}");
    }
    let events: Vec<(Vec<u8>, i64)> = (0..n)
        .map(|i| {
            let (_, payload, ts) = w.event(i, keys, 1_700_000_000_000);
            (payload, ts)
        })
        .collect();
    let mut out = Outputs::default();
    let start = Instant::now();
    let cpu0 = thread_cpu_seconds();
    for (i, (ev, ts)) in events.iter().enumerate() {
        // Processing time follows event time (as in `vigil score`): the generator's clock.
        let now_ms = *ts;
        e.process(
            &RawRecord {
                partition: 0,
                offset: i as i64,
                key: None,
                payload: ev,
            },
            now_ms,
            &mut out,
        );
        if out.alerts.len() > 1024 {
            out.clear();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds() - cpu0;
    let r = EngineResult {
        eps_per_cpu: n as f64 / cpu.max(1e-9),
        state_bytes_per_key: e.state_bytes_per_key(),
    };
    println!(
        "engine: events={n} keys={keys} secs={secs:.3} events_per_s={:.0} cpu_s={cpu:.2} events_per_cpu_second={:.0} state_bytes_per_key={} windows_fired={} alerts={}",
        n as f64 / secs,
        r.eps_per_cpu,
        r.state_bytes_per_key,
        e.counters().windows_fired,
        e.counters().alerts_firing
    );
    Ok(r)
}

fn producer(bootstrap: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn send(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    ts: i64,
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    let mut rec = BaseRecord::to(topic)
        .key(key)
        .payload(payload)
        .timestamp(ts);
    if let Some(tp) = traceparent {
        rec = rec.headers(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "traceparent",
                value: Some(tp),
            }),
        );
    }
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                rec = r;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => bail!("produce failed: {e}"),
        }
    }
}

/// A sampled W3C `traceparent` of record `i`: trace and span ids spread by SplitMix64, so a
/// trace-id ratio sampler keeps its ratio of them.
fn traceparent(i: usize) -> String {
    let i = i as u64;
    format!(
        "00-{:016x}{:016x}-{:016x}-01",
        splitmix(i),
        splitmix(i ^ 0x5555),
        splitmix(i ^ 0xAAAA) | 1
    )
}

fn produce_all(
    w: Workload,
    bootstrap: &str,
    topic: &str,
    n: usize,
    keys: usize,
    traceparent_every: usize,
) -> anyhow::Result<f64> {
    let p = producer(bootstrap)?;
    // Sparse: 10 ms of event time per event, so n events span n / 100 s; they end a day ago.
    let base = wall_clock_ms() - 86_400_000 - n as i64 * 10;
    let start = Instant::now();
    for i in 0..n {
        let (k, payload, ts) = w.event(i, keys, base);
        let tp =
            (traceparent_every > 0 && i.is_multiple_of(traceparent_every)).then(|| traceparent(i));
        send(&p, topic, k.as_bytes(), &payload, ts, tp.as_deref())?;
    }
    p.flush(Duration::from_secs(120))
        .context("flushing the bench records")?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Reads the whole topic with no processing; returns (events/s, events per CPU-second).
fn raw_consume(
    bootstrap: &str,
    topic: &str,
    n: usize,
    props: &[(String, String)],
) -> anyhow::Result<(f64, f64)> {
    let cpu0 = cpu_seconds();
    // The detector's own consumer configuration, in another group.
    let m = manifests(topic, &format!("{topic}-raw"), "unused", false)?;
    let mut spec = m.pipelines[0].spec.source.kafka.clone();
    spec.properties.extend(props.iter().cloned());
    let cfg = SourceSettings::from_spec("bench-raw", &spec, bootstrap, None)?.consumer_config();
    let c: BaseConsumer = cfg.create()?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut got, mut bytes, mut first) = (0usize, 0usize, None);
    while got < n {
        if Instant::now() > deadline {
            bail!("raw consumer read {got} of {n} records in 300 s");
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            got += 1;
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let cpu = cpu_seconds() - cpu0;
    std::hint::black_box(bytes);
    drop(c);
    println!(
        "raw consume: events={n} secs={secs:.3} events_per_s={:.0} cpu_s={cpu:.2}",
        n as f64 / secs.max(1e-9)
    );
    Ok((n as f64 / secs.max(1e-9), n as f64 / cpu.max(1e-9)))
}

fn end_offsets(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(String, i32, i64)>> {
    Ok(
        admin::high_watermarks(bootstrap, topic, Duration::from_secs(10))?
            .into_iter()
            .map(|(p, hi)| (topic.to_string(), p, hi))
            .collect(),
    )
}

/// Runs the detector over the whole topic; returns (events/s, events per CPU-second).
fn detector_phase(
    w: Workload,
    bootstrap: &str,
    topic: &str,
    alerts: &str,
    n: usize,
    props: &[(String, String)],
    workers: usize,
) -> anyhow::Result<(f64, f64)> {
    let m = w.manifests(topic, &format!("{topic}-detector"), alerts, false)?;
    let rules = m.rules_for(&m.pipelines[0]).into_iter().cloned().collect();
    let mut cfg = RunnerConfig::new(m.pipelines[0].clone(), rules, bootstrap);
    cfg.workers = workers;
    cfg.pipeline
        .spec
        .source
        .kafka
        .properties
        .extend(props.iter().cloned());
    let cpu0 = cpu_seconds();
    let h = runner::spawn(cfg, Metrics::new())?;
    h.control().send(Control::DrainAndStop {
        end_offsets: end_offsets(bootstrap, topic)?,
    })?;
    let stop = h.stop_flag();
    let watchdog = std::thread::spawn(move || {
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let s = h.join()?;
    let cpu = cpu_seconds() - cpu0;
    let _ = watchdog;
    if s.counters.records < n as u64 {
        bail!(
            "the detector processed {} of {n} records",
            s.counters.records
        );
    }
    let secs = (s.last_record_ms - s.first_record_ms).max(1) as f64 / 1e3;
    let eps = s.counters.records as f64 / secs;
    println!(
        "detector: events={} secs={secs:.3} events_per_s={eps:.0} cpu_s={cpu:.2} (whole process, incl. librdkafka threads and the final window flush) alerts={}",
        s.counters.records, s.alerts_sent
    );
    Ok((eps, s.counters.records as f64 / cpu.max(1e-9)))
}

/// Latency at a fixed offered load.
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    /// The detector ended the load more than 100 ms of it behind (records offered and not yet
    /// processed), or its median latency passed 100 ms: the latency includes queueing, not
    /// only the path.
    saturated: bool,
}

/// Fixed-load latency.
fn latency_phase(
    bootstrap: &str,
    (topic, alerts, group): (&str, &str, &str),
    rate: f64,
    seconds: u64,
    (keys, workers, partitions): (usize, usize, usize),
) -> anyhow::Result<Latency> {
    let m = manifests(topic, group, alerts, true)?;
    let rules = m.rules_for(&m.pipelines[0]).into_iter().cloned().collect();
    let mut cfg = RunnerConfig::new(m.pipelines[0].clone(), rules, bootstrap);
    cfg.workers = workers;
    let probe = Arc::new(LatencyProbe::default());
    cfg.latency_probe = Some(probe.clone());
    cfg.pipeline.spec.source.kafka.start_offset = vigil_api::v1alpha1::StartOffset::Latest;
    let metrics = Metrics::new();
    let h = runner::spawn(cfg, metrics.clone())?;
    // Let the group form before the load starts: every worker holds partitions (a worker
    // joining after the first took them all costs a cooperative rebalance of two rounds, a
    // few seconds in which the moving partitions are read by nobody).
    std::thread::sleep(Duration::from_secs(3));
    let formed = Instant::now() + Duration::from_secs(30);
    while Instant::now() < formed {
        let a = h.worker_assignments();
        let held: usize = a.iter().map(Vec::len).sum();
        let busy = a.iter().filter(|w| !w.is_empty()).count();
        if held == partitions && busy == a.len().min(partitions) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // No batching delay in the load generator: the latency is the detector's, not the client's.
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()?;
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut sent = 0usize;
    let warmup = Duration::from_secs(1);
    let mut warm_samples = 0;
    while start.elapsed() < Duration::from_secs(seconds) && !stop.load(Ordering::Relaxed) {
        // Pace in 1 ms steps.
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let now = wall_clock_ms();
            // Every key alternates between 90 (even 100 ms windows) and 10 (odd ones): each
            // window end is an alert transition (firing, then resolved).
            let v = if (now / 100) % 2 == 0 { 90.0 } else { 10.0 };
            let host = format!("host-{:05}", sent % keys);
            let payload = format!(r#"{{"host":"{host}","ts":{now},"cpu":{v}}}"#);
            send(&p, topic, host.as_bytes(), payload.as_bytes(), now, None)?;
            sent += 1;
        }
        if warm_samples == 0 && start.elapsed() >= warmup {
            warm_samples = probe.take().len();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let behind = sent as u64 - metrics.events_in().min(sent as u64);
    p.flush(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    h.stop();
    let s = h.join()?;
    let mut us = probe.take();
    if us.is_empty() {
        bail!("no alert latency samples (alerts sent: {})", s.alerts_sent);
    }
    us.sort_unstable();
    let pct = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    let (p50, p99) = (pct(0.5), pct(0.99));
    // Queueing, not the path: more than 100 ms of load unprocessed when it ended, or a median
    // above 100 ms (the path itself takes a few ms).
    let saturated = behind as f64 > rate * 0.1 || p50 > 100.0;
    println!(
        "latency: offered_rate={rate:.0}/s sent={sent} secs={seconds} alerts={} samples={} (after {warm_samples} warm-up samples) p50_ms={p50:.2} p90_ms={:.2} p99_ms={p99:.2} max_ms={:.2} behind_at_end={behind} saturated={saturated}",
        s.alerts_sent,
        us.len(),
        pct(0.9),
        pct(1.0)
    );
    Ok(Latency {
        p50_ms: p50,
        p99_ms: p99,
        saturated,
    })
}

/// Latency below saturation: starts at `rate` and halves it (up to 3 times) while the
/// detector ends the load behind; the last measurement says whether it still was.
fn latency_below_saturation(
    bootstrap: &str,
    topic: &str,
    alerts: &str,
    rate: f64,
    seconds: u64,
    (keys, workers, partitions): (usize, usize, usize),
) -> anyhow::Result<(Latency, f64)> {
    let mut rate = rate;
    for attempt in 0..4 {
        // A fresh group per attempt, reading from the latest offset: the same topics serve.
        let group = format!("{topic}-latency-{attempt}");
        let lat = latency_phase(
            bootstrap,
            (topic, alerts, &group),
            rate,
            seconds,
            (keys, workers, partitions),
        )?;
        if !lat.saturated || attempt == 3 {
            return Ok((lat, rate));
        }
        println!(
            "latency: the detector fell behind {rate:.0}/s (the load generator, the broker and the detector share this machine's cores); measuring again at half the rate"
        );
        rate /= 2.0;
    }
    unreachable!("the loop returns on its last attempt")
}

/// Runs `vigil bench`.
///
/// # Errors
/// A broker that cannot be reached or a phase that does not complete.
/// Fills an engine with `keys` keys of the bench pipeline, `per_key` events each (one per
/// second of event time per key, as the engine phase) on 4 partitions.
fn filled_engine(keys: usize, per_key: usize) -> anyhow::Result<Engine> {
    let m = manifests("bench", "bench", "alerts", false)?;
    let rules = m.rules_for(&m.pipelines[0]);
    let (mut e, _) = Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Outputs::default();
    for i in 0..keys * per_key {
        let (_, ev, _) = Workload::Dense.event(i, keys, 1_700_000_000_000);
        let now_ms = 1_700_000_000_000 + (i / keys) as i64 * 1000;
        e.process(
            &RawRecord {
                partition: (i % keys % 4) as i32,
                offset: (i / 4) as i64,
                key: None,
                payload: &ev,
            },
            now_ms,
            &mut out,
        );
        out.clear();
    }
    Ok(e)
}

/// Snapshot bytes per key of the recommended NAB rules after one NAB series (one key).
fn nab_bytes_per_key() -> anyhow::Result<(usize, usize)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut m = Manifests::default();
    m.add_file(&root.join("manifests/examples/nab/pipeline.yaml"))?;
    m.add_file(&root.join("manifests/examples/nab/rules.yaml"))?;
    let rules = m.rules_for(&m.pipelines[0]);
    let (mut e, _) = Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = std::env::var_os("VIGIL_NAB_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("data/nab"));
    let (_, rows) = vigil_core::input::read_rows(
        &data.join("data/realKnownCause/machine_temperature_system_failure.csv"),
    )?;
    let mut out = Outputs::default();
    for (i, row) in rows.iter().enumerate() {
        let now = vigil_core::decode::parse_event_time(&row.cells[0], Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        e.process(
            &RawRecord {
                partition: 0,
                offset: i as i64,
                key: Some(b"machine-1"),
                payload: &row.json,
            },
            now,
            &mut out,
        );
        out.clear();
    }
    let mut buf = Vec::new();
    e.write_snapshot(|_| true, &mut buf)?;
    Ok((buf.len(), rows.len()))
}

/// Phase 5 (see the module header).
fn state_phase(keys: usize) -> anyhow::Result<()> {
    let (nab, rows) = nab_bytes_per_key()?;
    println!(
        "state: nab_recommended_rules snapshot_bytes_per_key={nab} (manifests/examples/nab/rules.yaml: seasonal + random cut forest + contextual + ensemble, after {rows} events)"
    );
    // The bench pipeline after 10 minutes and after 1 hour of events per key (the 1 h
    // baselines full).
    for (n, per_key) in [(10_000, 600), (10_000, 3_600)] {
        let e = filled_engine(n, per_key)?;
        let mut buf = Vec::new();
        e.write_snapshot(|_| true, &mut buf)?;
        println!(
            "state: bench_pipeline keys={n} events_per_key={per_key} snapshot_bytes_per_key={} in_memory_bytes_per_key={}",
            buf.len() / n,
            e.state_bytes_per_key()
        );
    }
    let t0 = Instant::now();
    let e = filled_engine(keys, 120)?;
    println!(
        "state: filled {keys} keys x 120 events in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // What the run loop does (encode), then what the checkpoint writer does off the loop
    // (compress).
    let cpu0 = thread_cpu_seconds();
    let t0 = Instant::now();
    let (encoded, _) = e.encode_snapshot(|_| true)?;
    let (encode_s, encode_cpu) = (t0.elapsed().as_secs_f64(), thread_cpu_seconds() - cpu0);
    let raw = encoded.len();
    let t0 = Instant::now();
    let buf = encoded.finish()?;
    let compress_s = t0.elapsed().as_secs_f64();
    let dir = std::env::temp_dir().join(format!("vigil-bench-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("state.bin");
    let t0 = Instant::now();
    std::fs::write(&path, &buf)?;
    let write_s = t0.elapsed().as_secs_f64();
    drop(e);
    let t0 = Instant::now();
    let bytes = std::fs::read(&path)?;
    let mut snap = vigil_core::engine::snapshot::Snapshot::decode(&bytes)?;
    let m = manifests("bench", "bench", "alerts", false)?;
    let rules = m.rules_for(&m.pipelines[0]);
    let (mut fresh, _) =
        Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = fresh.restore(&mut snap, Some, wall_clock_ms());
    let restore_s = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "state: keys={} snapshot_bytes={} uncompressed_bytes={raw} bytes_per_key={} encode_on_loop_s={encode_s:.2} encode_cpu_s={encode_cpu:.2} compress_off_loop_s={compress_s:.2} file_write_s={write_s:.2} read_decode_restore_s={restore_s:.2}",
        report.keys,
        buf.len(),
        buf.len() / keys.max(1)
    );
    // A checkpoint every 10 s of the engine phase's 10k keys: CPU of encoding (on the loop)
    // and compressing (off it) over 10 s.
    let e = filled_engine(10_000, 600)?;
    let cpu0 = thread_cpu_seconds();
    let (encoded, _) = e.encode_snapshot(|_| true)?;
    let loop_cpu = thread_cpu_seconds() - cpu0;
    let buf = encoded.finish()?;
    let cpu = thread_cpu_seconds() - cpu0;
    println!(
        "BENCH_STATE keys={keys} restore_s={restore_s:.2} encode_on_loop_s={encode_s:.2} compress_s={compress_s:.2} bench_bytes_per_key={} nab_bytes_per_key={nab} checkpoint_every_10s_loop_cost_10k_keys={:.4} checkpoint_every_10s_cpu_cost_10k_keys={:.4}",
        buf.len() / 10_000,
        loop_cpu / 10.0,
        cpu / 10.0
    );
    Ok(())
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    if let Some(keys) = a.state_keys {
        return state_phase(keys);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench: workload={} cores={cores} events={} engine_events={} keys={} partitions={} load_average={}",
        a.workload.name(),
        a.events,
        a.engine_events,
        a.keys,
        a.partitions,
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    );
    let engine = engine_phase(a.workload, a.engine_events, a.keys)?;

    let mut mock = None;
    let bootstrap = match &a.bootstrap_servers {
        Some(b) => {
            println!("broker: real Kafka at {b}");
            b.clone()
        }
        None => {
            let m = MockCluster::new(1)?;
            println!(
                "broker: embedded librdkafka mock cluster (set KAFKA_BOOTSTRAP for a real broker)"
            );
            let b = m.bootstrap_servers();
            mock = Some(m);
            b
        }
    };
    let id = format!("vigil-bench-{}-{}", std::process::id(), wall_clock_ms());
    let (topic, alerts, lat_topic, lat_alerts) = (
        id.clone(),
        format!("{id}-alerts"),
        format!("{id}-latency"),
        format!("{id}-latency-alerts"),
    );
    let topics = [
        (topic.as_str(), a.partitions),
        (alerts.as_str(), 1),
        (lat_topic.as_str(), a.partitions),
        (lat_alerts.as_str(), 1),
    ];
    // librdkafka's mock cluster keeps about 100,000 records per partition and drops older ones.
    let events = if mock.is_some() {
        a.events.min(90_000 * a.partitions.max(1) as usize)
    } else {
        a.events
    };
    if events < a.events {
        println!(
            "mock cluster: events capped at {events} (the mock keeps ~100k records per partition)"
        );
    }
    match &mock {
        // The mock cluster creates topics through its own API (admin CreateTopics hangs).
        Some(m) => {
            for (t, p) in topics {
                m.create_topic(t, p, 1)?;
            }
        }
        None => admin::ensure_topics(&bootstrap, &topics)?,
    }
    let result = (|| -> anyhow::Result<()> {
        let produce_eps = produce_all(
            a.workload,
            &bootstrap,
            &topic,
            events,
            a.keys,
            a.traceparent_every,
        )?;
        println!(
            "tracing: traceparent_every={} exporter={}",
            a.traceparent_every,
            if vigil_telemetry::trace::enabled() {
                "otlp"
            } else {
                "off"
            }
        );
        println!("produce: events={events} events_per_s={produce_eps:.0}");
        let (raw, raw_per_cpu) = raw_consume(&bootstrap, &topic, events, &a.consumer_properties)?;
        let (e2e, per_cpu) = detector_phase(
            a.workload,
            &bootstrap,
            &topic,
            &alerts,
            events,
            &a.consumer_properties,
            usize::from(a.workers),
        )?;
        let rate = a.latency_rate.unwrap_or(e2e / 2.0);
        let (lat, lat_rate) = if a.latency_seconds == 0 {
            (
                Latency {
                    p50_ms: f64::NAN,
                    p99_ms: f64::NAN,
                    saturated: false,
                },
                0.0,
            )
        } else {
            latency_below_saturation(
                &bootstrap,
                &lat_topic,
                &lat_alerts,
                rate,
                a.latency_seconds,
                (
                    100,
                    usize::from(a.workers),
                    usize::try_from(a.partitions).unwrap_or(1),
                ),
            )?
        };
        let (p50, p99) = (lat.p50_ms, lat.p99_ms);
        println!(
            "cpu: raw_consume_eps_per_cpu_second={raw_per_cpu:.0} e2e_eps_per_cpu_second={per_cpu:.0} cpu_ratio={:.2} (CPU time of the whole process, incl. librdkafka threads)",
            per_cpu / raw_per_cpu
        );
        let flink = a
            .flink_per_cpu_s
            .map_or_else(|| "na".to_string(), |f| format!("{f:.0}"));
        println!(
            "BENCH workload={} workers={} events_per_cpu_s={per_cpu:.0} raw_consume_per_cpu_s={raw_per_cpu:.0} ratio={:.2} flink_per_cpu_s={flink} p99_ms={p99:.2} p50_ms={p50:.2} latency_rate={lat_rate:.0} saturated={} engine_eps_per_core={:.0} e2e_eps={e2e:.0} raw_consume_eps={raw:.0} state_bytes_per_key={}",
            a.workload.name(),
            a.workers,
            per_cpu / raw_per_cpu,
            lat.saturated,
            engine.eps_per_cpu,
            engine.state_bytes_per_key
        );
        Ok(())
    })();
    if a.bootstrap_servers.is_some() && !a.keep_topics {
        let names: Vec<&str> = topics.iter().map(|(t, _)| *t).collect();
        if let Err(e) = admin::delete_topics(&bootstrap, &names) {
            tracing::warn!(error = %e, "Could not delete the bench topics.");
        }
    }
    result
}
