//! `vigil score`: one NAB-format file through the engine, offline, with per-row anomaly scores.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use vigil_api::v1alpha1::DetectionRule;
use vigil_detector::engine::{Engine, EngineOptions, Outputs, RawRecord};

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
}

/// Runs `vigil score`.
///
/// # Errors
/// Unreadable or invalid manifests or input, an invalid rule, or an unwritable output.
pub fn score(a: &ScoreArgs) -> anyhow::Result<()> {
    let mut files = vec![a.pipeline.clone()];
    files.extend(a.rules.iter().cloned());
    let m = crate::load_manifests(&files)?;
    let Some(pipeline) = m.pipelines.first() else { bail!("{}: no StreamPipeline found", a.pipeline.display()) };
    let rules: Vec<&DetectionRule> = m.rules_for(pipeline);
    let models: Vec<String> = m.models.iter().filter_map(|x| x.metadata.name.clone()).collect();
    let opts = EngineOptions { event_scores: true, ..Default::default() };
    let (mut engine, errors) = Engine::from_resources(pipeline, &rules, &models, opts)
        .map_err(|e| anyhow::anyhow!("StreamPipeline {}: {e}", pipeline.metadata.name.as_deref().unwrap_or("")))?;
    if let Some(e) = errors.first() {
        bail!("{e}");
    }
    let (header, rows) = vigil_detector::input::read_rows(&a.input)?;
    let key = a.key.clone().unwrap_or_else(|| a.input.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
    let mut out = Outputs::default();
    let mut scores = Vec::with_capacity(rows.len());
    let ts_col = header.iter().position(|h| h == "timestamp").unwrap_or(0);
    let val_col = header.iter().position(|h| h == "value").unwrap_or(1);
    for (i, row) in rows.iter().enumerate() {
        // Processing time follows event time offline, so idle timeouts are in data time.
        let now = vigil_detector::decode::parse_event_time(row.cells.get(ts_col).map_or("", |s| s.as_str()), Default::default()).unwrap_or(0);
        engine.process(&RawRecord { partition: 0, offset: i as i64, key: Some(key.as_bytes()), payload: &row.json }, now, &mut out);
        scores.append(&mut out.event_scores);
        out.clear();
    }
    let c = engine.counters();
    if c.decode_errors > 0 || c.late_dropped > 0 {
        tracing::warn!(decode_errors = c.decode_errors, late = c.late_dropped, "Some rows were not scored (score 0).");
    }
    let file = std::fs::File::create(&a.output).with_context(|| format!("failed to create {}", a.output.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "timestamp,value,anomaly_score")?;
    for (row, s) in rows.iter().zip(&scores) {
        let cell = |i: usize| row.cells.get(i).map_or("", |s| s.as_str());
        writeln!(w, "{},{},{}", cell(ts_col), cell(val_col), s)?;
    }
    w.flush()?;
    tracing::info!(rows = rows.len(), rules = engine.rule_names().len(), output = %a.output.display(), "Scored.");
    Ok(())
}
