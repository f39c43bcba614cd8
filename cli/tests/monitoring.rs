//! The chart's monitoring (charts/vigil/files): the alerting rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`, the Debian `prometheus` package; CI installs it
//! with scripts/setup-promtool.sh), and every metric the rules and the Grafana dashboard query
//! is one the binaries export. The exported names come from the real encoders: each binary's
//! metrics are recorded once through their public API and encoded, and the queries are parsed
//! as PromQL (the `promql-parser` crate) so a typo in a query or a renamed metric fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::parser::{Expr, parse};
use promql_parser::util::{ExprVisitor, walk_expr};

fn files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/vigil/files")
}

/// Series names in an exposition text (`name{labels} value` lines).
fn series_names(text: &str, into: &mut BTreeSet<String>) {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        into.insert(line[..end].to_string());
    }
}

/// Every series the detector, the model server and the operator export, each recorded once.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // Detector.
    let d = vigil_detector::telemetry::Metrics::new();
    let now = vigil_core::engine::Counters {
        records: 1,
        alerts_firing: 1,
        ..Default::default()
    };
    d.engine_progress(&vigil_core::engine::Counters::default(), &now);
    d.delivered("alerts", true);
    d.delivered("alerts", false);
    d.dead_letter("decode");
    d.checkpoint("periodic", Some((0.1, 100)));
    d.checkpoint("periodic", None);
    d.notifications("alertmanager", "failed", 1);
    d.notification_queue("alertmanager", 0);
    d.enrichment(1, "invalid");
    d.kpi_rows("written", 1);
    d.consumer_lag("events", 0, 10);
    d.watermark_delay("fast", 1.0);
    d.stage_latency("kafka_to_delivered", 0.5);
    d.lag().refresh(std::time::Instant::now());
    let s = d.scoring();
    s.set_degraded("m", true);
    s.set_backlog(3);
    s.windows("m", "scored", 1);
    s.error("m", "1", "timeout");
    s.circuit_opened("m");
    s.batch("m", "1", 4, 0.01);
    s.revision_windows("m", "1", "served", "scored", 4);
    s.revision_score("m", "1", "served", 0.9, true);
    s.revision_alert("m", "1", "firing");
    series_names(&d.encode(), &mut names);
    // Model server.
    let m = vigil_model_server::metrics::Metrics::new();
    let v = m.version("m", "1");
    v.request();
    v.rows(4);
    v.request_done(Duration::from_millis(3));
    v.queued(Duration::from_millis(1));
    v.batch(4, Duration::from_millis(2));
    m.error("m", "1", tonic::Code::Internal);
    m.set_ready("m", "1", Some(true));
    series_names(&m.encode(), &mut names);
    // Operator.
    let o = vigil_operator::metrics::Metrics::default();
    {
        let _t = o.reconcile("stream_pipeline");
    }
    o.failure("stream_pipeline", "apply");
    o.applied("stream_pipeline", std::time::Instant::now());
    o.leader.set(1);
    series_names(&o.encode(), &mut names);
    names
}

/// Metric names a PromQL expression selects; panics naming the expression if it does not
/// parse. Grafana's variables are replaced by values first.
fn selected(expr: &str) -> Vec<String> {
    struct Names(Vec<String>);
    impl ExprVisitor for Names {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            match e {
                Expr::VectorSelector(vs) => self.0.extend(vs.name.clone()),
                Expr::MatrixSelector(ms) => self.0.extend(ms.vs.name.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let promql = expr
        .replace("$__rate_interval", "5m")
        .replace("$namespace", ".*");
    let ast = parse(&promql).unwrap_or_else(|e| panic!("`{expr}` is not PromQL: {e}"));
    let mut v = Names(Vec::new());
    walk_expr(&mut v, &ast).unwrap();
    assert!(!v.0.is_empty(), "`{expr}` selects no metric");
    v.0
}

fn check_names(what: &str, exprs: &[String], exported: &BTreeSet<String>) {
    let mut unknown = Vec::new();
    for e in exprs {
        for name in selected(e) {
            if !exported.contains(&name) {
                unknown.push(format!("{name} (in `{e}`)"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{what} queries metrics no binary exports:\n  {}\nexported: {exported:?}",
        unknown.join("\n  ")
    );
}

#[test]
fn the_dashboard_queries_only_metrics_the_binaries_export() {
    let text = std::fs::read_to_string(files().join("dashboards/vigil.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string()),
        );
    }
    // The namespace variable's query: label_values(<metric>, namespace).
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str()
            && let Some(inner) = q.strip_prefix("label_values(")
        {
            exprs.push(inner.split(',').next().unwrap().trim().to_string());
        }
    }
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    check_names("the dashboard", &exprs, &exported());
}

#[test]
fn the_alerting_rules_query_only_metrics_the_binaries_export() {
    let text = std::fs::read_to_string(files().join("prometheus-rules.yaml")).unwrap();
    let rules: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let exprs: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(exprs.len(), 10);
    check_names("the alerting rules", &exprs, &exported());
}

/// `promtool check rules` and `promtool test rules`. Without promtool the test fails in CI
/// (`CI=true`) and is skipped with a note elsewhere.
#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Ok(version) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is not installed (scripts/setup-promtool.sh)"
        );
        eprintln!("promtool not installed: skipped (scripts/setup-promtool.sh installs it)");
        return;
    };
    assert!(version.status.success());
    for args in [
        ["check", "rules", "prometheus-rules.yaml"],
        ["test", "rules", "prometheus-rules.test.yaml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(files())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
