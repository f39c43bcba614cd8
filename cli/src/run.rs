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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use vigil_api::contract::detector::{DetectorArgs, env as contract_env};
use vigil_api::v1alpha1::{DetectionRule, StreamPipeline};
use vigil_detector::runner::{self, Control, RunSummary, RunnerConfig, RunnerHandle};
use vigil_detector::source::admin;
use vigil_detector::supervisor::{self, Supervisor};
use vigil_detector::telemetry::{self, Metrics};

use crate::demo::{AlertPrinter, Labels, print_summary};
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
    /// Print every alert read back from the alerts topic to stdout, one line each. The default
    /// when stdout is a terminal, and with --replay, --labels and --exit-when-idle.
    #[arg(long)]
    pub print_alerts: bool,
    /// Print no alerts to stdout (logs still go to stderr).
    #[arg(long, conflicts_with = "print_alerts")]
    pub quiet: bool,
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
    /// Engine workers, each a member of the consumer group with its own consumer and thread
    /// (like Kafka Streams' `num.stream.threads`): the source partitions spread over them, so
    /// the detector uses up to this many cores. More workers than partitions leaves some idle.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
}

enum Event {
    Signal(&'static str),
    /// `POST /savepoints/<name>`: the name and where the answer goes.
    Savepoint(
        String,
        std::sync::mpsc::SyncSender<Result<vigil_detector::checkpoint::CheckpointMetadata, String>>,
    ),
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
    let kpis = spec.sinks.kpis.as_ref().map(|t| t.topic.as_str());
    let dead_letters = spec.sinks.dead_letter.as_ref().map(|t| t.topic.as_str());
    for t in [kpis, dead_letters].into_iter().flatten() {
        topics.push((t, 1));
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
        Broker::External(b) => {
            // Connect as the detector will (security settings and credentials).
            let settings = vigil_detector::source::SourceSettings::from_spec(
                pipeline.metadata.name.as_deref().unwrap_or("vigil"),
                &spec.source.kafka,
                b,
                None,
            )?;
            admin::ensure_topics(&settings.client_config(), &topics)?
        }
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
    let loaded = supervisor::load(&files, &a.detector.pipeline)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    let decisions = vigil_detector::scoring::RolloutDecisions::default();
    let (events, rx) = std::sync::mpsc::sync_channel::<Event>(64);
    if let Some(addr) = a.detector.metrics_addr {
        let tx = events.clone();
        let trigger: telemetry::SavepointTrigger = std::sync::Arc::new(move |name: String| {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            let _ = tx.try_send(Event::Savepoint(name, reply));
            answer
        });
        let (bound, serve) = rt.block_on(telemetry::serve_detector(
            addr,
            metrics.clone(),
            Some(trigger),
            Some(decisions.clone()),
        ))?;
        rt.spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Metrics endpoint failed.");
            }
        });
        tracing::info!(url = %format!("http://{bound}/metrics"), "Serving metrics.");
    }
    spawn_signal_handler(&rt, events.clone());

    let broker = resolve_broker(a.detector.bootstrap_servers.as_deref(), &loaded.pipeline)?;
    let bootstrap = broker.bootstrap();
    if matches!(broker, Broker::Embedded(_)) || a.create_topics || a.replay.is_some() {
        ensure_topics(&broker, &loaded.pipeline, a.partitions)?;
    }
    let print = !a.quiet
        && (a.print_alerts
            || std::io::IsTerminal::is_terminal(&std::io::stdout())
            || a.replay.is_some()
            || a.labels.is_some()
            || a.exit_when_idle);
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
    let workers = a.workers;
    let spawn = |l: &supervisor::Config| -> Result<RunnerHandle, runner::RunError> {
        let mut cfg = RunnerConfig::new(l.pipeline.clone(), l.rules.clone(), bootstrap.clone());
        cfg.models = l.models.clone();
        cfg.model_server = model_server.clone();
        cfg.group_instance_id = group_instance_id.clone();
        cfg.rollout_decisions = decisions.clone();
        cfg.workers = usize::from(workers);
        runner::spawn(cfg, metrics.clone())
    };
    let replay_topic = loaded.pipeline.spec.source.kafka.topics[0].clone();
    let mut sup = Supervisor::start(files.clone(), a.detector.pipeline.clone(), loaded, spawn)?;

    let replay_stop = Arc::new(AtomicBool::new(false));
    if let Some(file) = &a.replay {
        let (records, missing) =
            replay::load(file, a.replay_key.as_deref(), None, &a.replay_time_field)?;
        if missing > 0 {
            tracing::warn!(rows = missing, field = %a.replay_time_field, "Replayed rows without an event time get the current time.");
        }
        let topic = replay_topic;
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
        let tx = events.clone();
        Some(
            supervisor::watch(&files, move |at| {
                let _ = tx.try_send(Event::FilesChanged(at));
            })
            .context("failed to watch the manifest files")?,
        )
    };

    let mut exit_error: Option<anyhow::Error> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Signal(sig)) => {
                tracing::info!(
                    signal = sig,
                    "Stopping: flushing outputs; offsets are committed once they are delivered."
                );
                replay_stop.store(true, Ordering::Relaxed);
                sup.handle().inspect(|h| h.stop());
                break;
            }
            Ok(Event::FilesChanged(at)) => sup.files_changed(at),
            Ok(Event::Savepoint(name, reply)) => match sup.handle() {
                Some(h) => {
                    let _ = h.control().try_send(Control::Savepoint { name, reply });
                }
                None => {
                    let _ = reply.try_send(Err("no pipeline is running".into()));
                }
            },
            Ok(Event::ReplayDone(Ok(r))) => {
                tracing::info!(
                    records = r.delivered,
                    failed = r.failed,
                    elapsed_s = r.elapsed.as_secs_f64(),
                    records_per_s =
                        (r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9)).round(),
                    "Replay written."
                );
                if a.exit_when_idle
                    && let Some(h) = sup.handle()
                {
                    let _ = h.control().send(Control::DrainAndStop {
                        end_offsets: r.end_offsets,
                    });
                }
            }
            Ok(Event::ReplayDone(Err(e))) => {
                tracing::error!(error = format!("{e:#}"), "Replay failed.");
                if a.exit_when_idle {
                    sup.handle().inspect(|h| h.stop());
                    exit_error = Some(e);
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        let embedded_broker = matches!(broker, Broker::Embedded(_));
        sup.poll(|c| {
            if embedded_broker {
                ensure_topics(&broker, &c.pipeline, a.partitions)?;
            }
            Ok(())
        })?;
        if sup.handle().is_none_or(RunnerHandle::is_finished) {
            break;
        }
    }
    let handle = sup.into_handle().context("the detector did not restart")?;
    let summary: RunSummary = handle.join()?;
    replay_stop.store(true, Ordering::Relaxed);
    let printed = printer.map(|p| p.finish(Duration::from_secs(10)));
    if let Some(e) = exit_error {
        return Err(e);
    }
    if a.exit_when_idle {
        print_summary(&summary, printed.as_ref(), labels.as_ref());
        // A bounded input of which nothing could be used is a configuration mistake.
        if summary.counters.records > 0 && summary.dead_letters >= summary.counters.records {
            bail!(
                "every one of the {} records was dead-lettered; top reasons: {}",
                summary.counters.records,
                summary.dead_letter_reasons.summary(3)
            );
        }
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
