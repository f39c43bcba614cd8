//! `vigil test rules FILE...`: unit tests for DetectionRules, as `promtool test rules` is for
//! Prometheus alerting rules. A test file names the manifests under test (a StreamPipeline and
//! its DetectionRules), gives input series in promtool's expanding notation (or CSV files in
//! the pipeline's own event format), and states which alerts fire at given event times and
//! which features given windows have. The events go through the same decoder and engine as in
//! a detector (processing time = event time, the end of input fires every open window), so a
//! test passes here exactly when the rules behave so on Kafka. Format: docs/rule-tests.md.
//!
//! Output follows promtool's: `Unit Testing: FILE`, then `SUCCESS` or `FAILED:` with an
//! expected/got diff per failing assertion; the command exits 1 when any test failed.

mod series;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use vigil_api::v1alpha1::{TimeFormat, duration_ms};
use vigil_core::config::{FieldPath, Layout, PipelineConfig};
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord, WindowResult};
use vigil_core::rules::alert::{Alert, AlertStatus};
use vigil_detector::driver::Driver;
use vigil_detector::scoring::{ModelScorer, ScoreReport, ScorerConfig, ScoringMetrics};

/// Arguments of `vigil test rules`.
#[derive(Args, Debug)]
pub struct TestRulesArgs {
    /// Test files (YAML, docs/rule-tests.md).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Run only the tests whose name contains this text.
    #[arg(long)]
    pub run: Option<String>,
}

/// A test file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Manifest files (StreamPipeline, DetectionRules), relative to the test file.
    rule_files: Vec<PathBuf>,
    /// The StreamPipeline under test (`metadata.name`) when the files hold several.
    #[serde(default)]
    pipeline: Option<String>,
    /// Model repository (`<dir>/<model>/<revision>/`) served in this process for model rules,
    /// relative to the test file (ONNX Runtime from `ORT_DYLIB_PATH`).
    #[serde(default)]
    model_repository: Option<PathBuf>,
    /// Reference data of the keys (`spec.enrichment`), in place of the ConfigMap: entity key ->
    /// attribute -> value. Unlisted keys get the pipeline's `enrichment.default`.
    #[serde(default)]
    attributes: Option<BTreeMap<String, BTreeMap<String, String>>>,
    /// Test groups, each on a fresh engine.
    tests: Vec<TestGroup>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    name: Option<String>,
    /// Event-time step between the values of `input_series`. Default `1m`.
    #[serde(default)]
    interval: Option<vigil_api::Duration>,
    /// Event time of the first value (RFC 3339). Default `1970-01-01T00:00:00Z`.
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    input_csv: Vec<InputCsv>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    feature_test: Vec<FeatureTest>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    /// Entity key.
    key: String,
    /// Field name (a `wide` field, or a `narrow` parameter).
    field: String,
    /// Values, promtool's expanding notation (`1+1x3 _ 90x2`).
    values: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InputCsv {
    /// CSV (header = the pipeline's field names) or JSON Lines file of events in the
    /// pipeline's format, relative to the test file.
    file: PathBuf,
    /// Record key, used as the entity key when the pipeline maps no key field. Default: the
    /// file name without extension.
    #[serde(default)]
    key: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    /// Event time: an offset from `start` (`10m`) or an RFC 3339 time.
    eval_time: String,
    /// DetectionRule name.
    rule: String,
    /// Exactly the alerts of `rule` firing at `eval_time` (none when empty).
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    key: String,
    /// The alert's labels, all of them (not compared when absent).
    #[serde(default)]
    exp_labels: Option<BTreeMap<String, String>>,
    /// The alert's annotations, all of them (not compared when absent).
    #[serde(default)]
    exp_annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FeatureTest {
    /// Window tier name.
    window: String,
    key: String,
    /// End of the window (exclusive): an offset from `start` or an RFC 3339 time.
    window_end: String,
    /// `<field>.<feature>` -> value, as in the KPI records.
    exp_features: BTreeMap<String, f64>,
    /// Largest accepted difference, relative to the expected value (absolute below 1).
    /// Default 1e-9.
    #[serde(default)]
    tolerance: Option<f64>,
}

/// Runs the test files; whether all passed. Prints promtool-style results on stdout.
///
/// # Errors
/// A test file that cannot be read or set up (bad YAML, missing manifests, rules that do not
/// compile): a failure of the file, not of a test.
pub fn run(a: &TestRulesArgs) -> anyhow::Result<bool> {
    let mut all = true;
    for file in &a.files {
        println!("Unit Testing: {}", file.display());
        let failures = run_file(file, a.run.as_deref())
            .with_context(|| format!("test file {}", file.display()))?;
        if failures.is_empty() {
            println!("  SUCCESS\n");
        } else {
            all = false;
            println!("  FAILED:");
            for f in failures {
                for line in f.lines() {
                    println!("    {line}");
                }
            }
            println!();
        }
    }
    Ok(all)
}

/// The failures of one file's tests (empty: all passed).
fn run_file(path: &Path, only: Option<&str>) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).context("read")?;
    let tf: TestFile = serde_norway::from_str(&text).context("parse")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    // Objects of other kinds in the files (a Secret, say) are skipped, as `vigil run` does.
    let paths: Vec<PathBuf> = tf.rule_files.iter().map(|f| dir.join(f)).collect();
    let m = crate::load_manifests(&paths)?;
    let pipeline = match &tf.pipeline {
        Some(name) => m
            .pipelines
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .with_context(|| format!("no StreamPipeline `{name}` in rule_files"))?,
        None => match m.pipelines.as_slice() {
            [p] => p,
            [] => bail!("rule_files hold no StreamPipeline"),
            _ => bail!("rule_files hold several StreamPipelines; name one with `pipeline:`"),
        },
    };
    let rules = m.rules_for(pipeline);
    let models: Vec<&vigil_api::v1alpha1::AnomalyModel> = m.models.iter().collect();
    let cfg = PipelineConfig::from_resource(pipeline)?;
    let used = crate::score::models_of(&rules, &m.models);
    let server = match (&tf.model_repository, used.is_empty()) {
        (_, true) => None,
        (Some(repo), false) => Some(crate::score::start_model_server(
            &dir.join(repo),
            &used,
            Some(1),
        )?),
        (None, false) => None,
    };
    let mut failures = Vec::new();
    for (i, group) in tf.tests.iter().enumerate() {
        let name = group.name.clone().unwrap_or_else(|| format!("tests[{i}]"));
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let (mut engine, errors) = Engine::new(
            cfg.clone(),
            &rules,
            &models,
            EngineOptions {
                emit_windows: true,
                event_scores: false,
            },
        );
        if let Some(e) = errors.first() {
            bail!("a DetectionRule does not compile: {e}");
        }
        if tf.attributes.is_some() || pipeline.spec.enrichment.is_some() {
            let entries = tf
                .attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), std::sync::Arc::new(v.clone())))
                .collect();
            let default = pipeline
                .spec
                .enrichment
                .as_ref()
                .map(|e| e.default.clone())
                .unwrap_or_default();
            engine.set_reference(Some(std::sync::Arc::new(
                vigil_core::enrichment::ReferenceData::new(entries, default),
            )));
        }
        // Group rules (`spec.group`) run in the group stage, fed in process as detectors feed it
        // through the group topic.
        let group_stage = match cfg.group_stage() {
            Some(g) => {
                let (e, _) = Engine::new(
                    g,
                    &rules,
                    &models,
                    EngineOptions {
                        emit_windows: true,
                        event_scores: false,
                    },
                );
                Some(e)
            }
            None => None,
        };
        let mut rule_names: Vec<String> =
            engine.rule_names().iter().map(|s| s.to_string()).collect();
        rule_names.extend(
            group_stage
                .iter()
                .flat_map(|g| g.rule_names())
                .map(str::to_string),
        );
        let model_rules: Vec<String> = rules
            .iter()
            .filter(|r| r.spec.model.is_some())
            .filter_map(|r| r.metadata.name.clone())
            .collect();
        let start = match &group.start {
            Some(s) => vigil_core::decode::parse_event_time(s, TimeFormat::Rfc3339)
                .map_err(|e| anyhow::anyhow!("test `{name}`: start `{s}`: {e}"))?,
            None => 0,
        };
        let interval = group.interval.as_ref().map_or(60_000, duration_ms);
        if interval <= 0 {
            bail!("test `{name}`: interval must be positive");
        }
        let mut events = series_events(&cfg, &group.input_series, start, interval)
            .with_context(|| format!("test `{name}`: input_series"))?;
        for c in &group.input_csv {
            events.extend(
                csv_events(&cfg, &dir.join(&c.file), c.key.as_deref())
                    .with_context(|| format!("test `{name}`: input_csv {}", c.file.display()))?,
            );
        }
        events.sort_by_key(|e| e.time);
        let scorer = match &server {
            Some(s) => {
                let mut scorer = ModelScorer::new(
                    ScorerConfig {
                        deadline: std::time::Duration::from_secs(30),
                        ..Default::default()
                    },
                    ScoringMetrics::default(),
                )?;
                scorer.route_models(&used, Some(&s.uri))?;
                Some(scorer)
            }
            None => None,
        };
        let produced = evaluate(Driver::new(engine, scorer), group_stage, &events)
            .with_context(|| format!("test `{name}`"))?;
        let mut fails = Vec::new();
        for d in &produced.dead_letters {
            fails.push(format!("input event dead-lettered: {d}"));
        }
        let at = |what: &str, s: &str| -> anyhow::Result<i64> {
            eval_time(s, start).map_err(|e| anyhow::anyhow!("test `{name}`: {what} `{s}`: {e}"))
        };
        for t in &group.alert_rule_test {
            if !rule_names.contains(&t.rule) {
                bail!(
                    "test `{name}`: alert_rule_test names rule `{}`, which the pipeline does not have (its rules: {})",
                    t.rule,
                    rule_names.join(", ")
                );
            }
            if model_rules.contains(&t.rule) && server.is_none() {
                bail!(
                    "test `{name}`: `{}` is a model rule; its windows are scored by a model server: set `model_repository:` in the test file",
                    t.rule
                );
            }
            let when = at("eval_time", &t.eval_time)?;
            if let Some(diff) = check_alerts(&produced.alerts, t, when) {
                fails.push(format!(
                    "alert_rule_test at eval_time {}, rule {}:\n{diff}",
                    t.eval_time, t.rule
                ));
            }
        }
        for t in &group.feature_test {
            let end = at("window_end", &t.window_end)?;
            if let Some(diff) = check_features(&produced.windows, t, end) {
                fails.push(format!(
                    "feature_test window {} key {} ending {}:\n{diff}",
                    t.window, t.key, t.window_end
                ));
            }
        }
        for f in fails {
            failures.push(format!("test \"{name}\", {f}"));
        }
    }
    Ok(failures)
}

/// An event time given as an offset from `start` (`10m`) or as an RFC 3339 time.
fn eval_time(s: &str, start: i64) -> Result<i64, String> {
    if let Ok(d) = s.parse::<vigil_api::Duration>() {
        return Ok(start + duration_ms(&d));
    }
    vigil_core::decode::parse_event_time(s, TimeFormat::Rfc3339)
        .map_err(|e| format!("neither a duration (`10m`) nor an RFC 3339 time: {e}"))
}

/// One input event.
struct Event {
    time: i64,
    key: String,
    payload: Vec<u8>,
}

/// Sets `path` in `obj` (creating objects on the way).
fn set_path(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    path: &FieldPath,
    v: serde_json::Value,
) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        let next = cur
            .entry(p.clone())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !next.is_object() {
            *next = serde_json::Value::Object(Default::default());
        }
        cur = next.as_object_mut().expect("made an object above");
    }
    cur.insert(last.clone(), v);
}

/// An event time in the pipeline's `eventTime.format`.
fn render_time(ms: i64, format: TimeFormat) -> serde_json::Value {
    let dt = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    match format {
        TimeFormat::Auto | TimeFormat::EpochMillis => ms.into(),
        TimeFormat::EpochSeconds => (ms as f64 / 1e3).into(),
        TimeFormat::Rfc3339 => dt
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into(),
        TimeFormat::DateTime => dt.format("%Y-%m-%d %H:%M:%S%.3f").to_string().into(),
    }
}

/// The events of `input_series` in the pipeline's format: for a `wide` layout one event per
/// key and step holding every field that has a value then; for `narrow` one per value.
fn series_events(
    cfg: &PipelineConfig,
    series: &[InputSeries],
    start: i64,
    interval: i64,
) -> anyhow::Result<Vec<Event>> {
    // (time, key) -> fields and values, in time order.
    let mut steps: BTreeMap<(i64, String), Vec<(String, f64)>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        if let Layout::Wide { fields } = &cfg.layout
            && !fields.iter().any(|(name, _)| *name == s.field)
        {
            bail!(
                "[{i}] field `{}` is not one of the pipeline's fields ({})",
                s.field,
                fields
                    .iter()
                    .map(|f| f.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let values =
            series::parse_values(&s.values).map_err(|e| anyhow::anyhow!("[{i}] values {e}"))?;
        for (step, v) in values.iter().enumerate() {
            if let Some(v) = v {
                steps
                    .entry((start + step as i64 * interval, s.key.clone()))
                    .or_default()
                    .push((s.field.clone(), *v));
            }
        }
    }
    let mut out = Vec::new();
    for ((time, key), values) in steps {
        let base = |obj: &mut serde_json::Map<String, serde_json::Value>| {
            set_path(obj, &cfg.event_time, render_time(time, cfg.time_format));
            if let Some(k) = &cfg.key {
                set_path(obj, k, key.clone().into());
            }
        };
        match &cfg.layout {
            Layout::Wide { fields } => {
                let mut obj = serde_json::Map::new();
                base(&mut obj);
                for (field, v) in &values {
                    let path = &fields.iter().find(|f| f.0 == *field).expect("checked").1;
                    set_path(&mut obj, path, (*v).into());
                }
                out.push(Event {
                    time,
                    key: key.clone(),
                    payload: serde_json::to_vec(&obj)?,
                });
            }
            Layout::Narrow {
                parameter, value, ..
            } => {
                for (field, v) in &values {
                    let mut obj = serde_json::Map::new();
                    base(&mut obj);
                    set_path(&mut obj, parameter, field.clone().into());
                    set_path(&mut obj, value, (*v).into());
                    out.push(Event {
                        time,
                        key: key.clone(),
                        payload: serde_json::to_vec(&obj)?,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The events of a CSV or JSON Lines file as they are, with their event times.
fn csv_events(cfg: &PipelineConfig, file: &Path, key: Option<&str>) -> anyhow::Result<Vec<Event>> {
    let (_, rows) = vigil_core::input::read_rows(file)?;
    let key = key.map_or_else(
        || {
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        },
        str::to_string,
    );
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let v: serde_json::Value = serde_json::from_slice(&row.json)?;
            let mut t = &v;
            for seg in &cfg.event_time {
                t = t
                    .get(seg)
                    .with_context(|| format!("row {}: no event time field", i + 1))?;
            }
            let time = match t {
                serde_json::Value::Number(n) => {
                    let x = n.as_f64().unwrap_or_default();
                    if cfg.time_format == TimeFormat::EpochSeconds {
                        (x * 1e3) as i64
                    } else {
                        x as i64
                    }
                }
                serde_json::Value::String(s) => {
                    vigil_core::decode::parse_event_time(s, cfg.time_format)
                        .map_err(|e| anyhow::anyhow!("row {}: event time: {e}", i + 1))?
                }
                _ => bail!(
                    "row {}: the event time is neither a number nor a string",
                    i + 1
                ),
            };
            Ok(Event {
                time,
                key: key.clone(),
                payload: row.json,
            })
        })
        .collect()
}

/// What a group's events produced.
struct Produced {
    alerts: Vec<Alert>,
    windows: Vec<WindowResult>,
    dead_letters: Vec<String>,
}

/// Runs the events through the engine (and the model scorer, for model rules) in event-time
/// order (processing time = event time), then fires every open window (end of input). With
/// groups, the group stage gets the key stage's partials and progress after every event.
fn evaluate(
    mut driver: Driver,
    mut group_stage: Option<Engine>,
    events: &[Event],
) -> anyhow::Result<Produced> {
    let mut out = Outputs::default();
    let mut group_offset = 0i64;
    let mut to_groups = |driver: &Driver, out: &mut Outputs, now: i64| {
        let Some(g) = group_stage.as_mut() else {
            return;
        };
        let mut records: Vec<Vec<u8>> = out.group_records.drain(..).map(|(_, v)| v).collect();
        records.extend(driver.engine.group_progress(&[0]));
        let mut produced = Outputs::default();
        for v in &records {
            g.process(
                &RawRecord {
                    partition: 0,
                    offset: group_offset,
                    key: None,
                    payload: v,
                },
                now,
                &mut produced,
            );
            group_offset += 1;
        }
        out.alerts.append(&mut produced.alerts);
        out.windows.append(&mut produced.windows);
    };
    let mut dead_letters = Vec::new();
    let unscored = |r: Option<ScoreReport>| -> anyhow::Result<()> {
        if let Some(r) = r {
            let n = r.failed + r.skipped + r.unrouted;
            if n > 0 {
                bail!("the model server did not score {n} windows; see the log");
            }
        }
        Ok(())
    };
    for (i, e) in events.iter().enumerate() {
        let (_, report) = driver.process(
            &RawRecord {
                partition: 0,
                offset: i as i64,
                key: Some(e.key.as_bytes()),
                payload: &e.payload,
            },
            e.time,
            &mut out,
        );
        unscored(report)?;
        to_groups(&driver, &mut out, e.time);
        for d in out.dead_letters.drain(..) {
            dead_letters.push(format!(
                "key {} at {}: {}",
                e.key,
                render_time(e.time, TimeFormat::Rfc3339),
                d.reason
            ));
        }
    }
    let last = events.last().map_or(0, |e| e.time);
    unscored(driver.flush(last, &mut out))?;
    to_groups(&driver, &mut out, last);
    Ok(Produced {
        alerts: out.alerts,
        windows: out.windows,
        dead_letters,
    })
}

fn show_map(m: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The alerts of `t.rule` firing at `when` (the last transition of each key among windows
/// that ended by then is `firing`) against `t.exp_alerts`; a readable diff when they differ.
fn check_alerts(alerts: &[Alert], t: &AlertTest, when: i64) -> Option<String> {
    let mut last: BTreeMap<&str, &Alert> = BTreeMap::new();
    for a in alerts
        .iter()
        .filter(|a| a.rule == t.rule && a.window_end <= when)
    {
        last.insert(&a.key, a);
    }
    let firing: Vec<&Alert> = last
        .values()
        .copied()
        .filter(|a| a.status == AlertStatus::Firing)
        .collect();
    let shown = |a: &Alert, labels: bool, annotations: bool| {
        let mut s = format!("key={}", a.key);
        if labels {
            let _ = write!(s, " labels={}", show_map(&a.labels));
        }
        if annotations {
            let _ = write!(s, " annotations={}", show_map(&a.annotations));
        }
        s
    };
    let mut problems = Vec::new();
    for e in &t.exp_alerts {
        match firing.iter().find(|a| a.key == e.key) {
            None => problems.push(format!("  missing: key={}", e.key)),
            Some(a) => {
                if let Some(l) = &e.exp_labels
                    && *l != a.labels
                {
                    problems.push(format!(
                        "  key={}: labels\n    expected: {}\n    got:      {}",
                        e.key,
                        show_map(l),
                        show_map(&a.labels)
                    ));
                }
                if let Some(n) = &e.exp_annotations
                    && *n != a.annotations
                {
                    problems.push(format!(
                        "  key={}: annotations\n    expected: {}\n    got:      {}",
                        e.key,
                        show_map(n),
                        show_map(&a.annotations)
                    ));
                }
            }
        }
    }
    for a in &firing {
        if !t.exp_alerts.iter().any(|e| e.key == a.key) {
            problems.push(format!("  unexpected: {}", shown(a, true, false)));
        }
    }
    if problems.is_empty() {
        return None;
    }
    let exp: Vec<String> = t
        .exp_alerts
        .iter()
        .map(|e| format!("key={}", e.key))
        .collect();
    let got: Vec<String> = firing.iter().map(|a| shown(a, false, false)).collect();
    Some(format!(
        "  expected firing: [{}]\n  got firing:      [{}]\n{}",
        exp.join(", "),
        got.join(", "),
        problems.join("\n")
    ))
}

/// The window of `t.key` in tier `t.window` that ended at `end` (its last emission, after any
/// late update) against `t.exp_features`; a readable diff when they differ.
fn check_features(windows: &[WindowResult], t: &FeatureTest, end: i64) -> Option<String> {
    let Some(w) = windows
        .iter()
        .rev()
        .find(|w| w.tier == t.window && w.key == t.key && w.end == end)
    else {
        let mut ends: Vec<i64> = windows
            .iter()
            .filter(|w| w.tier == t.window && w.key == t.key)
            .map(|w| w.end)
            .collect();
        ends.sort_unstable();
        ends.dedup();
        let near: Vec<String> = ends
            .iter()
            .filter(|e| (*e - end).abs() <= 5 * (ends.get(1).map_or(1, |b| b - ends[0])).max(1))
            .take(10)
            .map(|e| render_time(*e, TimeFormat::Rfc3339).to_string())
            .collect();
        return Some(format!(
            "  no such window fired ({} windows of this key and tier fired; ending near it: [{}])",
            ends.len(),
            near.join(", ")
        ));
    };
    let tol = t.tolerance.unwrap_or(1e-9);
    let mut problems = Vec::new();
    for (name, want) in &t.exp_features {
        match w.features.iter().find(|(n, _)| n == name) {
            None => problems.push(format!(
                "  {name}: expected {want}, not computed (features: {})",
                w.features
                    .iter()
                    .map(|f| f.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some((_, got)) => {
                if (got - want).abs() > tol * want.abs().max(1.0) {
                    problems.push(format!("  {name}: expected {want}, got {got}"));
                }
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("\n"))
}
