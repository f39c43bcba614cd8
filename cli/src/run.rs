//! `vigil run`: one detector for a StreamPipeline and its DetectionRules, against Kafka, until
//! SIGINT/SIGTERM (flush outputs, commit, leave the group).
//!
//! - Broker: `--bootstrap-servers`, else `spec.source.kafka.bootstrapServers`, else an embedded
//!   librdkafka mock cluster in this process (logged, with the reason; data lives only as long
//!   as the process).
//! - Reloads: the manifest files are watched. A rules change is applied in place
//!   (`Engine::replace_rules`, window state kept); a StreamPipeline change restarts the detector
//!   in this process (flush, commit, new engine and consumer), which loses nothing because
//!   committed offsets never pass an event held in an open window. An invalid edit is logged and
//!   the running configuration is kept.
//! - Demo: `--replay FILE` writes a NAB CSV/JSONL into the source topic, `--labels` prints each
//!   alert next to the labelled anomaly windows, `--exit-when-idle` ends once the replay is
//!   processed and every window has fired, with a summary.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use vigil_api::contract::detector::{DetectorArgs, env as contract_env};
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline, TimeFormat};
use vigil_detector::runner::{self, Control, RunSummary, RunnerConfig, RunnerHandle};
use vigil_detector::source::admin;
use vigil_detector::telemetry::{self, Metrics};

use crate::replay::{self, ReplayReport, Speed};

/// Arguments of `vigil run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Pipeline and rule files, broker, metrics and group instance: the flags the operator
    /// renders into detector pods (vigil-api's contract).
    #[command(flatten)]
    pub detector: DetectorArgs,
    /// Create missing source and sink topics (always done on the embedded broker and with
    /// --replay).
    #[arg(long)]
    pub create_topics: bool,
    /// Partitions of source topics created by --create-topics (an assigned partition without
    /// events holds the watermark back for the tier's idleTimeout, so keep it to what the data
    /// needs: 1 for a single replayed series).
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replay this NAB CSV or JSONL file into the (first) source topic while detecting.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Message key of the replayed rows (default: the file name without extension).
    #[arg(long)]
    pub replay_key: Option<String>,
    /// Replay speed: `max` or a factor of real time (event-time gaps divided by N).
    #[arg(long, default_value = "max")]
    pub replay_speed: Speed,
    /// Event-time field of the replayed rows.
    #[arg(long, default_value = "timestamp")]
    pub replay_time_field: String,
    /// NAB `combined_windows.json` (`{"<relpath>": [[start, end], ...]}`): print each alert
    /// next to the labelled anomaly windows of the replayed file (matched by path suffix).
    #[arg(long, requires = "replay")]
    pub labels: Option<PathBuf>,
    /// Print every alert read back from the alerts topic, one line each (implied by --replay,
    /// --labels and --exit-when-idle).
    #[arg(long)]
    pub print_alerts: bool,
    /// Exit once the replay has been processed and every open window has fired (end of
    /// input), after printing a summary. Needs --replay.
    #[arg(long, requires = "replay")]
    pub exit_when_idle: bool,
    /// Do not watch the manifest files for changes.
    #[arg(long)]
    pub no_watch: bool,
    /// Serve the AnomalyModels of model rules from this model repository, in this process
    /// (`<dir>/<model>/<revision>/{model.onnx,config.yaml}`; ONNX Runtime from ORT_DYLIB_PATH).
    #[arg(long, env = contract_env::MODEL_REPOSITORY, conflicts_with = "model_server")]
    pub model_repository: Option<PathBuf>,
    /// Score model rules on this model server (`http://host:port`). Without it or
    /// --model-repository, each AnomalyModel's `vigil.dev/model-server` annotation is used.
    #[arg(long, env = contract_env::MODEL_SERVER)]
    pub model_server: Option<String>,
}

enum Event {
    Signal(&'static str),
    FilesChanged(Instant),
    ReplayDone(anyhow::Result<ReplayReport>),
}

/// The broker in use.
enum Broker {
    External(String),
    Embedded(MockCluster<'static, DefaultProducerContext>),
}

impl Broker {
    fn bootstrap(&self) -> String {
        match self {
            Broker::External(b) => b.clone(),
            Broker::Embedded(m) => m.bootstrap_servers(),
        }
    }
}

struct Loaded {
    pipeline: StreamPipeline,
    rules: Vec<DetectionRule>,
    models: Vec<AnomalyModel>,
}

fn load(files: &[PathBuf], pipeline_file: &Path) -> anyhow::Result<Loaded> {
    let m: Manifests = crate::load_manifests(files)?;
    let Some(pipeline) = m.pipelines.first().cloned() else {
        bail!("{}: no StreamPipeline found", pipeline_file.display())
    };
    let rules = m.rules_for(&pipeline).into_iter().cloned().collect();
    let models = m.models.clone();
    Ok(Loaded {
        pipeline,
        rules,
        models,
    })
}

fn ensure_topics(
    broker: &Broker,
    pipeline: &StreamPipeline,
    partitions: i32,
) -> anyhow::Result<()> {
    let spec = &pipeline.spec;
    let mut topics: Vec<(&str, i32)> = spec
        .source
        .kafka
        .topics
        .iter()
        .map(|t| (t.as_str(), partitions))
        .collect();
    topics.push((spec.sinks.alerts.topic.as_str(), 1));
    for t in [&spec.sinks.kpis, &spec.sinks.dead_letter]
        .into_iter()
        .flatten()
    {
        topics.push((t.topic.as_str(), 1));
    }
    match broker {
        Broker::Embedded(m) => {
            for (t, p) in topics {
                match m.create_topic(t, p, 1) {
                    Ok(())
                    | Err(rdkafka::error::KafkaError::MockCluster(
                        rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    )) => {}
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("failed to create topic {t} on the embedded broker")
                        });
                    }
                }
            }
        }
        Broker::External(b) => admin::ensure_topics(b, &topics)?,
    }
    Ok(())
}

/// Runs `vigil run`.
///
/// # Errors
/// Invalid manifests, an unreachable broker, a failed replay, or outputs the broker rejected.
pub fn run(a: &RunArgs) -> anyhow::Result<()> {
    let mut files = vec![a.detector.pipeline.clone()];
    files.extend(a.detector.rules.iter().cloned());
    let mut loaded = load(&files, &a.detector.pipeline)?;
    let name = loaded.pipeline.metadata.name.clone().unwrap_or_default();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    if let Some(addr) = a.detector.metrics_addr {
        let (bound, serve) = rt.block_on(telemetry::serve(addr, metrics.clone()))?;
        rt.spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Metrics endpoint failed.");
            }
        });
        tracing::info!(url = %format!("http://{bound}/metrics"), "Serving metrics.");
    }
    let (events, rx) = std::sync::mpsc::sync_channel::<Event>(64);
    spawn_signal_handler(&rt, events.clone());

    let broker = resolve_broker(a.detector.bootstrap_servers.as_deref(), &loaded.pipeline)?;
    let bootstrap = broker.bootstrap();
    if matches!(broker, Broker::Embedded(_)) || a.create_topics || a.replay.is_some() {
        ensure_topics(&broker, &loaded.pipeline, a.partitions)?;
    }
    let print = a.print_alerts || a.replay.is_some() || a.labels.is_some() || a.exit_when_idle;
    let labels = match (&a.labels, &a.replay) {
        (Some(l), Some(r)) => Some(Labels::load(l, r)?),
        _ => None,
    };
    let printer = if print {
        Some(AlertPrinter::start(
            &bootstrap,
            &loaded.pipeline.spec.sinks.alerts.topic,
            labels.clone(),
        )?)
    } else {
        None
    };

    // Model rules: an in-process model server, a given one, or each model's annotation.
    let embedded = match &a.model_repository {
        Some(repo) => {
            let rule_refs: Vec<&DetectionRule> = loaded.rules.iter().collect();
            Some(crate::score::start_model_server(
                repo,
                &crate::score::models_of(&rule_refs, &loaded.models),
                None,
            )?)
        }
        None => None,
    };
    let model_server = embedded
        .as_ref()
        .map(|e| e.uri.clone())
        .or_else(|| a.model_server.clone());
    let group_instance_id = a.detector.group_instance_id.clone();
    let spawn = |l: &Loaded| -> anyhow::Result<RunnerHandle> {
        let mut cfg = RunnerConfig::new(l.pipeline.clone(), l.rules.clone(), bootstrap.clone());
        cfg.models = l.models.clone();
        cfg.model_server = model_server.clone();
        cfg.group_instance_id = group_instance_id.clone();
        Ok(runner::spawn(cfg, metrics.clone())?)
    };
    let mut handle = spawn(&loaded)?;

    let replay_stop = Arc::new(AtomicBool::new(false));
    if let Some(file) = &a.replay {
        let (records, missing) =
            replay::load(file, a.replay_key.as_deref(), None, &a.replay_time_field)?;
        if missing > 0 {
            tracing::warn!(rows = missing, field = %a.replay_time_field, "Replayed rows without an event time get the current time.");
        }
        let topic = loaded.pipeline.spec.source.kafka.topics[0].clone();
        tracing::info!(file = %file.display(), rows = records.len(), topic = %topic, speed = ?a.replay_speed, "Replaying into the source topic.");
        let (b, speed, stop, tx) = (
            bootstrap.clone(),
            a.replay_speed,
            replay_stop.clone(),
            events.clone(),
        );
        std::thread::Builder::new()
            .name("vigil-replay".into())
            .spawn(move || {
                let r = replay::replay(&b, &topic, &records, speed, &stop);
                let _ = tx.send(Event::ReplayDone(r));
            })?;
    }
    let _watcher = if a.no_watch {
        None
    } else {
        Some(watch(&files, events.clone())?)
    };

    let mut changed: Option<(Instant, Instant)> = None; // (first change, last change)
    let mut exit_error: Option<anyhow::Error> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Signal(sig)) => {
                tracing::info!(
                    signal = sig,
                    "Stopping: flushing outputs and committing offsets."
                );
                replay_stop.store(true, Ordering::Relaxed);
                handle.stop();
                break;
            }
            Ok(Event::FilesChanged(at)) => changed = Some((changed.map_or(at, |c| c.0), at)),
            Ok(Event::ReplayDone(Ok(r))) => {
                tracing::info!(
                    records = r.delivered,
                    failed = r.failed,
                    elapsed_s = r.elapsed.as_secs_f64(),
                    records_per_s =
                        (r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9)).round(),
                    "Replay written."
                );
                if a.exit_when_idle {
                    let _ = handle.control().send(Control::DrainAndStop {
                        end_offsets: r.end_offsets,
                    });
                }
            }
            Ok(Event::ReplayDone(Err(e))) => {
                tracing::error!(error = format!("{e:#}"), "Replay failed.");
                if a.exit_when_idle {
                    handle.stop();
                    exit_error = Some(e);
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        // Debounce: editors write files in several steps.
        if let Some((first, last)) = changed
            && last.elapsed() >= Duration::from_millis(100)
        {
            changed = None;
            match reload(&files, &a.detector.pipeline, &loaded, first) {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Rules(l)) => {
                    let ctl = Control::ReplaceRules {
                        rules: l.rules.clone(),
                        models: l.models.clone(),
                        changed_at: first,
                    };
                    if handle.control().send(ctl).is_ok() {
                        loaded = l;
                    }
                }
                Ok(Reload::Pipeline(l)) => {
                    tracing::info!(pipeline = %name, "The StreamPipeline changed; restarting the detector in place (flush, commit, new consumer).");
                    handle.stop();
                    let s = handle.join()?;
                    tracing::info!(events = s.counters.records, "Previous detector stopped.");
                    if matches!(broker, Broker::Embedded(_)) {
                        ensure_topics(&broker, &l.pipeline, a.partitions)?;
                    }
                    handle = spawn(&l)?;
                    tracing::info!(
                        took_ms = first.elapsed().as_secs_f64() * 1e3,
                        "Detector restarted with the new StreamPipeline."
                    );
                    loaded = l;
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "Ignoring the changed manifests; the running configuration is kept."
                ),
            }
        }
        if handle.is_finished() {
            break;
        }
    }
    let summary: RunSummary = handle.join()?;
    replay_stop.store(true, Ordering::Relaxed);
    let printed = printer.map(|p| p.finish(Duration::from_secs(10)));
    if let Some(e) = exit_error {
        return Err(e);
    }
    if a.exit_when_idle {
        print_summary(&summary, printed.as_ref(), labels.as_ref());
    }
    drop(broker);
    Ok(())
}

fn resolve_broker(flag: Option<&str>, pipeline: &StreamPipeline) -> anyhow::Result<Broker> {
    if let Some(b) = flag.filter(|b| !b.is_empty()) {
        tracing::info!(
            bootstrap = b,
            "Using the Kafka cluster given by --bootstrap-servers."
        );
        return Ok(Broker::External(b.to_string()));
    }
    if let Some(b) = pipeline
        .spec
        .source
        .kafka
        .bootstrap_servers
        .as_deref()
        .filter(|b| !b.is_empty())
    {
        tracing::info!(
            bootstrap = b,
            "Using the Kafka cluster of spec.source.kafka.bootstrapServers."
        );
        return Ok(Broker::External(b.to_string()));
    }
    let m = MockCluster::new(1).context("failed to start the embedded Kafka mock cluster")?;
    tracing::warn!(
        bootstrap = %m.bootstrap_servers(),
        "Using an embedded Kafka mock cluster (librdkafka) because neither --bootstrap-servers nor spec.source.kafka.bootstrapServers is set; its data is lost on exit."
    );
    Ok(Broker::Embedded(m))
}

fn spawn_signal_handler(rt: &tokio::runtime::Runtime, tx: SyncSender<Event>) {
    rt.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot listen for SIGTERM.");
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.try_send(Event::Signal("SIGINT"));
                    return;
                }
            };
        let sig = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        let _ = tx.try_send(Event::Signal(sig));
    });
}

enum Reload {
    Unchanged,
    Rules(Loaded),
    Pipeline(Loaded),
}

fn reload(
    files: &[PathBuf],
    pipeline_file: &Path,
    current: &Loaded,
    changed_at: Instant,
) -> anyhow::Result<Reload> {
    let l = load(files, pipeline_file)?;
    if l.pipeline.metadata.name != current.pipeline.metadata.name {
        bail!(
            "the StreamPipeline's name changed from {:?} to {:?}; restart vigil run to switch pipelines",
            current.pipeline.metadata.name,
            l.pipeline.metadata.name
        );
    }
    // Validate before replacing anything.
    vigil_core::config::PipelineConfig::from_resource(&l.pipeline)
        .map_err(|e| anyhow::anyhow!("StreamPipeline: {e}"))?;
    if l.pipeline.spec != current.pipeline.spec {
        return Ok(Reload::Pipeline(l));
    }
    if l.rules != current.rules || l.models != current.models {
        tracing::info!(
            since_change_ms = changed_at.elapsed().as_secs_f64() * 1e3,
            rules = l.rules.len(),
            "Rules changed; replacing them."
        );
        return Ok(Reload::Rules(l));
    }
    Ok(Reload::Unchanged)
}

fn watch(files: &[PathBuf], tx: SyncSender<Event>) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let targets: HashSet<PathBuf> = files.iter().map(abs).collect();
    let dirs: HashSet<PathBuf> = targets
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    let wanted = targets.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        // Kubernetes updates a mounted ConfigMap by swapping the `..data` symlink, so events
        // on `..*` entries count too; a reload that finds nothing changed is a no-op.
        let relevant = |p: &PathBuf| {
            wanted.contains(p)
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        };
        if ev.paths.iter().any(relevant) {
            let _ = tx.try_send(Event::FilesChanged(Instant::now()));
        }
    })?;
    // Watch the directories: editors often replace a file by renaming a new one over it.
    for d in &dirs {
        w.watch(d, RecursiveMode::NonRecursive)
            .with_context(|| format!("failed to watch {}", d.display()))?;
    }
    tracing::info!(files = ?targets, "Watching the manifests for changes.");
    Ok(w)
}

/// Labelled anomaly windows of one series (NAB `combined_windows.json`).
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// The matched entry's name.
    pub series: String,
    /// `[start, end]` in epoch ms, inclusive.
    pub windows: Vec<(i64, i64)>,
}

impl Labels {
    /// Reads the labels and picks the entry whose path is a suffix of `replayed` (or has the
    /// same file name).
    ///
    /// # Errors
    /// An unreadable file, a malformed entry, or no entry for the replayed file.
    pub fn load(path: &Path, replayed: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let all: std::collections::BTreeMap<String, Vec<Vec<String>>> = serde_json::from_str(&text)
            .with_context(|| {
                format!(
                    "{}: expected {{\"<relpath>\": [[start, end], ...]}}",
                    path.display()
                )
            })?;
        let replayed_s = replayed.to_string_lossy().replace('\\', "/");
        let name = replayed
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((series, windows)) = all
            .iter()
            .find(|(k, _)| replayed_s.ends_with(k.as_str()))
            .or_else(|| {
                all.iter().find(|(k, _)| {
                    !name.is_empty()
                        && Path::new(k)
                            .file_name()
                            .is_some_and(|f| f.to_string_lossy() == name)
                })
            })
        else {
            bail!(
                "{}: no labelled windows for {}",
                path.display(),
                replayed.display()
            );
        };
        let parse = |s: &str| {
            vigil_core::decode::parse_event_time(s, TimeFormat::Auto)
                .map_err(|e| anyhow::anyhow!("{series}: {e}"))
        };
        let windows = windows
            .iter()
            .map(|w| match w.as_slice() {
                [a, b] => Ok((parse(a)?, parse(b)?)),
                _ => bail!("{series}: a window must be [start, end]"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            series: series.clone(),
            windows,
        })
    }

    /// 1-based index of the labelled window containing `t`.
    pub fn window_of(&self, t: i64) -> Option<usize> {
        self.windows
            .iter()
            .position(|(a, b)| *a <= t && t <= *b)
            .map(|i| i + 1)
    }
}

fn fmt_ms(t: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%d %H:%M").to_string())
}

/// An alert as read back from the alerts topic.
#[derive(Debug, Clone)]
pub struct ReadAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Event time (window end), epoch ms.
    pub event_time: i64,
}

/// Reads the alerts topic from its end at start-up and prints each alert as one line.
struct AlertPrinter {
    stop: Arc<AtomicBool>,
    finish_by: Arc<Mutex<Option<Instant>>>,
    thread: std::thread::JoinHandle<Vec<ReadAlert>>,
}

impl AlertPrinter {
    fn start(bootstrap: &str, topic: &str, labels: Option<Labels>) -> anyhow::Result<Self> {
        let start = admin::high_watermarks(bootstrap, topic, Duration::from_secs(10))?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set(
                "group.id",
                format!("vigil-alert-printer-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, hi) in &start {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*hi))?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let finish_by = Arc::new(Mutex::new(None::<Instant>));
        let (s, f, topic, bootstrap) = (
            stop.clone(),
            finish_by.clone(),
            topic.to_string(),
            bootstrap.to_string(),
        );
        let thread = std::thread::Builder::new()
            .name("vigil-alerts".into())
            .spawn(move || {
                let mut seen = Vec::new();
                let mut positions: std::collections::HashMap<i32, i64> =
                    start.iter().copied().collect();
                let mut target: Option<Vec<(i32, i64)>> = None;
                loop {
                    if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                        match m {
                            Ok(m) => {
                                positions.insert(m.partition(), m.offset() + 1);
                                if let Some(a) =
                                    print_alert(m.payload().unwrap_or(&[]), labels.as_ref())
                                {
                                    seen.push(a);
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "Alert reader error."),
                        }
                    }
                    let deadline = *f.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(deadline) = deadline {
                        // Read up to the end of the topic as it is now, then stop.
                        if target.is_none() {
                            target = Some(
                                admin::high_watermarks(&bootstrap, &topic, Duration::from_secs(5))
                                    .unwrap_or_default(),
                            );
                        }
                        let done = target.as_ref().is_some_and(|t| {
                            t.iter()
                                .all(|(p, hi)| positions.get(p).copied().unwrap_or(0) >= *hi)
                        });
                        if done || Instant::now() >= deadline {
                            break;
                        }
                    } else if s.load(Ordering::Relaxed) {
                        break;
                    }
                }
                seen
            })?;
        Ok(Self {
            stop,
            finish_by,
            thread,
        })
    }

    /// Reads what is left on the topic (at most `timeout`) and returns every alert read.
    fn finish(self, timeout: Duration) -> Vec<ReadAlert> {
        *self.finish_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + timeout);
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn print_alert(payload: &[u8], labels: Option<&Labels>) -> Option<ReadAlert> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let d = &v["data"];
    let status = d["status"].as_str().unwrap_or("?").to_string();
    let event_time = d["eventTime"].as_i64().unwrap_or(0);
    let value = d["value"]
        .as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.3}"));
    let mut line = format!(
        "ALERT {status:<8} {sev:<8} rule={rule} key={key} window={win} [{ws} .. {we}) value={value} score={score:.2}",
        sev = d["severity"].as_str().unwrap_or("?"),
        rule = d["rule"].as_str().unwrap_or("?"),
        key = d["key"].as_str().unwrap_or("?"),
        win = d["window"].as_str().unwrap_or("?"),
        ws = fmt_ms(d["windowStart"].as_i64().unwrap_or(0)),
        we = fmt_ms(event_time),
        score = d["score"].as_f64().unwrap_or(0.0),
    );
    if let Some(l) = labels {
        match l.window_of(event_time) {
            Some(k) => {
                let (a, b) = l.windows[k - 1];
                line.push_str(&format!(
                    " | inside labelled window #{k} [{} .. {}]",
                    fmt_ms(a),
                    fmt_ms(b)
                ));
            }
            None => line.push_str(" | outside any labelled window"),
        }
    }
    if let Some(s) = d["annotations"]["summary"].as_str() {
        line.push_str(&format!(" | {s}"));
    }
    println!("{line}");
    Some(ReadAlert { status, event_time })
}

fn print_summary(s: &RunSummary, alerts: Option<&Vec<ReadAlert>>, labels: Option<&Labels>) {
    let alerts = alerts.cloned().unwrap_or_default();
    let firing: Vec<&ReadAlert> = alerts.iter().filter(|a| a.status == "firing").collect();
    let resolved = alerts.len() - firing.len();
    let mut line = format!(
        "SUMMARY events={} dead_letters={} windows_fired={} alerts_firing={} alerts_resolved={resolved}",
        s.counters.records,
        s.dead_letters,
        s.counters.windows_fired,
        firing.len(),
    );
    if let Some(l) = labels {
        let covered = (1..=l.windows.len())
            .filter(|k| firing.iter().any(|a| l.window_of(a.event_time) == Some(*k)))
            .count();
        let outside = firing
            .iter()
            .filter(|a| l.window_of(a.event_time).is_none())
            .count();
        line.push_str(&format!(
            " labelled_windows_covered={covered}/{} firing_outside_windows={outside} series={}",
            l.windows.len(),
            l.series
        ));
    }
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_by_path_suffix_and_find_the_window() {
        let dir = std::env::temp_dir().join(format!("vigil-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("combined_windows.json");
        std::fs::write(
            &f,
            r#"{"realKnownCause/other.csv": [], "realKnownCause/machine.csv": [["2013-12-10 06:25:00.000000", "2013-12-12 05:35:00.000000"], ["2014-01-01 00:00:00.000000", "2014-01-02 00:00:00.000000"]]}"#,
        )
        .unwrap();
        let l = Labels::load(&f, Path::new("/data/nab/data/realKnownCause/machine.csv")).unwrap();
        assert_eq!(l.series, "realKnownCause/machine.csv");
        assert_eq!(l.windows.len(), 2);
        let t =
            vigil_core::decode::parse_event_time("2013-12-11 00:00:00", TimeFormat::Auto).unwrap();
        assert_eq!(l.window_of(t), Some(1));
        assert_eq!(l.window_of(t - 3 * 86_400_000), None);
        assert!(Labels::load(&f, Path::new("x/unknown.csv")).is_err());
    }
}
