//! `vigil score`: one NAB-format file through the engine, offline, with per-row anomaly scores.
//! Model rules are scored on a model server started in this process (`--model-repository`) or
//! a running one (`--model-server`); [`EmbeddedModelServer`] is shared with `vigil run`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule};
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_detector::driver::Driver;
use vigil_detector::scoring::{ModelScorer, ScorerConfig, ScoringMetrics};

/// Arguments of `vigil score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// StreamPipeline manifest.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// DetectionRule manifest(s); rules selecting the pipeline are used.
    #[arg(long, num_args = 1..)]
    pub rules: Vec<PathBuf>,
    /// Input `.csv` (header `timestamp,value`) or `.jsonl`.
    #[arg(long)]
    pub input: PathBuf,
    /// Output CSV: `timestamp,value,anomaly_score`.
    #[arg(long)]
    pub output: PathBuf,
    /// Entity key used when the pipeline maps no key field. Default: the input file name.
    #[arg(long)]
    pub key: Option<String>,
    /// Score only these rules (`metadata.name`, repeatable); an ensemble brings its members.
    /// Default: every rule selecting the pipeline.
    #[arg(long = "rule")]
    pub only: Vec<String>,
    /// Serve the AnomalyModels of model rules from this model repository, in this process
    /// (`<dir>/<model>/<revision>/{model.onnx,config.yaml}`; ONNX Runtime from ORT_DYLIB_PATH,
    /// see scripts/setup-onnxruntime.sh).
    #[arg(long, env = vigil_api::contract::detector::env::MODEL_REPOSITORY, conflicts_with = "model_server")]
    pub model_repository: Option<PathBuf>,
    /// Score model rules on this running model server (`http://host:port`). Without it or
    /// --model-repository, each AnomalyModel's `vigil.dev/model-server` annotation is used.
    #[arg(long, env = vigil_api::contract::detector::env::MODEL_SERVER)]
    pub model_server: Option<String>,
}

/// A model server running in this process on `127.0.0.1`, on its own runtime; stops when
/// dropped.
pub struct EmbeddedModelServer {
    /// `http://127.0.0.1:<port>` of its gRPC endpoint.
    pub uri: String,
    _runtime: tokio::runtime::Runtime,
}

/// The AnomalyModels that model rules among `rules` refer to.
pub fn models_of<'a>(
    rules: &[&DetectionRule],
    models: &'a [AnomalyModel],
) -> Vec<&'a AnomalyModel> {
    models
        .iter()
        .filter(|m| {
            rules.iter().any(|r| {
                r.spec
                    .model
                    .as_ref()
                    .is_some_and(|x| Some(x.model_ref.as_str()) == m.metadata.name.as_deref())
            })
        })
        .collect()
}

/// Starts a model server on `repository` serving `models` (every model of the repository when
/// empty) and checks that each model's revision is ready there with the artifact digest,
/// features, lookback and tensors its AnomalyModel declares.
///
/// # Errors
/// ONNX Runtime missing (`ORT_DYLIB_PATH`), a model or revision absent or not loadable, or an
/// AnomalyModel that does not match the repository's `config.yaml`.
pub fn start_model_server(
    repository: &Path,
    models: &[&AnomalyModel],
    intra_op_threads: Option<usize>,
) -> anyhow::Result<EmbeddedModelServer> {
    use vigil_model_server::{ModelServer, ServerConfig};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vigil-model-server")
        .enable_all()
        .build()?;
    let mut config = ServerConfig::new(repository);
    config.intra_op_threads = intra_op_threads;
    if !models.is_empty() {
        config.startup_models = Some(
            models
                .iter()
                .filter_map(|m| m.metadata.name.clone())
                .collect(),
        );
    }
    let server = rt.block_on(ModelServer::start(config)).with_context(|| {
        format!(
            "failed to start the in-process model server on {}",
            repository.display()
        )
    })?;
    for m in models {
        let name = m.metadata.name.as_deref().unwrap_or_default();
        let spec = &m.spec;
        let loaded = server
            .manager()
            .resolve(name, &spec.revision)
            .with_context(|| {
                format!(
                    "AnomalyModel {name} revision {} in {}",
                    spec.revision,
                    repository.display()
                )
            })?;
        vigil_model_server::contract::check(m, loaded.config()).map_err(|e| {
            anyhow::anyhow!(
                "AnomalyModel {name}: {e} ({}/{name}/{}/config.yaml)",
                repository.display(),
                spec.revision
            )
        })?;
    }
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let uri = format!("http://{}", listener.local_addr()?);
    rt.spawn(async move {
        if let Err(e) = server.serve(listener, std::future::pending()).await {
            tracing::error!(error = %e, "In-process model server failed.");
        }
    });
    tracing::info!(uri = %uri, repository = %repository.display(), models = models.len(), "Serving models in this process.");
    Ok(EmbeddedModelServer { uri, _runtime: rt })
}

/// Runs `vigil score`.
///
/// # Errors
/// Unreadable or invalid manifests or input, an invalid rule, or an unwritable output.
pub fn score(a: &ScoreArgs) -> anyhow::Result<()> {
    let mut files = vec![a.pipeline.clone()];
    files.extend(a.rules.iter().cloned());
    let m = crate::load_manifests(&files)?;
    let Some(pipeline) = m.pipelines.first() else {
        bail!("{}: no StreamPipeline found", a.pipeline.display())
    };
    let mut rules: Vec<&DetectionRule> = m.rules_for(pipeline);
    if !a.only.is_empty() {
        let name = |r: &DetectionRule| r.metadata.name.clone().unwrap_or_default();
        let mut keep = a.only.clone();
        for r in rules.iter().filter(|r| a.only.contains(&name(r))) {
            keep.extend(
                r.spec
                    .ensemble
                    .iter()
                    .flat_map(|e| e.members.iter().map(|m| m.rule.clone())),
            );
        }
        rules.retain(|r| keep.contains(&name(r)));
        if let Some(missing) = a
            .only
            .iter()
            .find(|n| !rules.iter().any(|r| name(r) == **n))
        {
            bail!("rule `{missing}` not found among the rules selecting the pipeline");
        }
    }
    let models: Vec<&AnomalyModel> = m.models.iter().collect();
    let used = models_of(&rules, &m.models);
    // Offline, a model server that cannot answer is an error: waiting is cheap here.
    let scorer_config = ScorerConfig {
        deadline: Duration::from_secs(30),
        ..Default::default()
    };
    let scoring = if used.is_empty() {
        None
    } else {
        let embedded = a
            .model_repository
            .as_deref()
            .map(|r| start_model_server(r, &used, Some(1)))
            .transpose()?;
        let server = embedded
            .as_ref()
            .map(|e| e.uri.clone())
            .or_else(|| a.model_server.clone());
        let mut scorer = ModelScorer::new(scorer_config, ScoringMetrics::default())?;
        scorer.route_models(&used, server.as_deref())?;
        if let Some(m) = used
            .iter()
            .filter_map(|m| m.metadata.name.as_deref())
            .find(|n| scorer.route(n).is_none())
        {
            bail!(
                "AnomalyModel {m} has no model server: pass --model-repository DIR or --model-server URI"
            );
        }
        Some((scorer, embedded))
    };
    let opts = EngineOptions {
        event_scores: true,
        ..Default::default()
    };
    let (engine, errors) =
        Engine::from_resources(pipeline, &rules, &models, opts).map_err(|e| {
            anyhow::anyhow!(
                "StreamPipeline {}: {e}",
                pipeline.metadata.name.as_deref().unwrap_or("")
            )
        })?;
    if let Some(e) = errors.first() {
        bail!("{e}");
    }
    // The model server (if embedded) lives until scoring is done.
    let (scorer, _embedded) = match scoring {
        Some((s, e)) => (Some(s), e),
        None => (None, None),
    };
    let mut driver = Driver::new(engine, scorer);
    let (header, rows) = vigil_core::input::read_rows(&a.input)?;
    let key = a.key.clone().unwrap_or_else(|| {
        a.input
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut out = Outputs::default();
    let mut scores = Vec::with_capacity(rows.len());
    let mut batches = Vec::new();
    let ts_col = header.iter().position(|h| h == "timestamp").unwrap_or(0);
    let val_col = header.iter().position(|h| h == "value").unwrap_or(1);
    for (i, row) in rows.iter().enumerate() {
        // Processing time follows event time offline, so idle timeouts are in data time.
        let now = vigil_core::decode::parse_event_time(
            row.cells.get(ts_col).map_or("", |s| s.as_str()),
            Default::default(),
        )
        .unwrap_or(0);
        let (_, report) = driver.process(
            &RawRecord {
                partition: 0,
                offset: i as i64,
                key: Some(key.as_bytes()),
                payload: &row.json,
            },
            now,
            &mut out,
        );
        scores.append(&mut out.event_scores);
        // Scores reach the rows after the window closed: a model rule's row score is its last
        // scored window's.
        if let Some(report) = report {
            let unscored = report.failed + report.skipped + report.unrouted;
            if unscored > 0 {
                bail!(
                    "model scoring failed for {unscored} of {} windows closed at row {i}; see the log above",
                    unscored + report.scored.len()
                );
            }
            batches.extend(report.batches);
        }
        out.clear();
    }
    let c = driver.engine.counters();
    let tally = driver.engine.dead_letter_reasons();
    if !rows.is_empty() && tally.total() >= rows.len() as u64 {
        bail!(
            "every one of the {} rows of {} was dead-lettered; top reasons: {}",
            rows.len(),
            a.input.display(),
            tally.summary(3)
        );
    }
    if c.decode_errors > 0 || c.late_dropped > 0 {
        tracing::warn!(
            decode_errors = c.decode_errors,
            late = c.late_dropped,
            "Some rows were not scored (score 0)."
        );
    }
    let file = std::fs::File::create(&a.output)
        .with_context(|| format!("failed to create {}", a.output.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "timestamp,value,anomaly_score")?;
    for (row, s) in rows.iter().zip(&scores) {
        let cell = |i: usize| row.cells.get(i).map_or("", |s| s.as_str());
        writeln!(w, "{},{},{}", cell(ts_col), cell(val_col), s)?;
    }
    w.flush()?;
    if !batches.is_empty() {
        let rows_scored: usize = batches.iter().map(|b| b.rows).sum();
        let total: Duration = batches.iter().map(|b| b.elapsed).sum();
        tracing::info!(
            batches = batches.len(),
            windows = rows_scored,
            mean_batch_ms = total.as_secs_f64() * 1e3 / batches.len() as f64,
            "Model rule windows scored."
        );
    }
    tracing::info!(rows = rows.len(), rules = driver.engine.rule_names().len(), output = %a.output.display(), "Scored.");
    Ok(())
}
