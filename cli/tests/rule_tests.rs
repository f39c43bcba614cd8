//! `vigil test rules` as a user runs it: the shipped tests of every example rule pass; a test
//! whose expectations are wrong fails with exit status 1 and a readable expected/got diff; a
//! test file with a mistake (an unknown rule, bad values) is refused naming it. The model rules'
//! tests need ONNX Runtime (`ORT_DYLIB_PATH`, set by scripts/test.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn vigil_test(files: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
    c.args(["test", "rules"])
        .args(files)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0");
    c.output().expect("run vigil")
}

fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("manifests/rule-tests"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            // Not the edited copies the tests below write next to them.
            name.ends_with(".test.yaml") && !name.starts_with("broken-")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_shipped_rule_tests_pass() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: the model rules' tests serve their models with ONNX Runtime; \
         run `eval \"$(scripts/setup-onnxruntime.sh)\"` first (scripts/test.sh does)"
    );
    let files = shipped();
    assert!(files.len() >= 5, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = vigil_test(&refs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("SUCCESS").count(), files.len(), "{stdout}");
}

/// Every DetectionRule of `manifests/examples/` is the subject of some `alert_rule_test`.
#[test]
fn every_example_rule_has_a_test() {
    let mut tested = String::new();
    for f in shipped() {
        tested.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let mut m = vigil_api::manifest::Manifests::default();
    let mut stack = vec![root().join("manifests/examples")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                m.add_file(&p).unwrap();
            }
        }
    }
    assert!(m.rules.len() >= 15, "{}", m.rules.len());
    let untested: Vec<String> = m
        .rules
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .filter(|n| !tested.contains(&format!("rule: {n}")))
        .collect();
    assert!(
        untested.is_empty(),
        "example rules without a test: {untested:?}"
    );
}

/// A copy of `file` (relative to the repository) with `from` replaced by `to`, written next to
/// it so its relative paths still resolve; removed when dropped.
struct Edited(PathBuf);

impl Edited {
    fn new(file: &str, from: &str, to: &str) -> Self {
        let src = root().join(file);
        let text = std::fs::read_to_string(&src).unwrap();
        assert!(text.contains(from), "`{from}` not in {file}");
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dst = src.with_file_name(format!(
            "broken-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            src.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&dst, text.replacen(from, to, 1)).unwrap();
        Self(dst)
    }
}

impl Drop for Edited {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    // The alert is expected one window too early (still pending under `for: 3m`).
    let broken = Edited::new(
        "manifests/rule-tests/durable-state.test.yaml",
        "      - eval_time: 123m\n        rule: latency-above-baseline\n        exp_alerts: []",
        "      - eval_time: 123m\n        rule: latency-above-baseline\n        exp_alerts: [{key: checkout}]",
    );
    let out = vigil_test(&[&broken.0]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for needle in [
        "FAILED:",
        "alert_rule_test at eval_time 123m, rule latency-above-baseline",
        "expected firing: [key=checkout]",
        "got firing:      []",
        "missing: key=checkout",
    ] {
        assert!(stdout.contains(needle), "`{needle}` not in:\n{stdout}");
    }

    // A wrong annotation and a wrong feature value: both named, with both values.
    let broken = Edited::new(
        "manifests/rule-tests/durable-state.test.yaml",
        "latency_ms.mean: 500,",
        "latency_ms.mean: 499,",
    );
    let out = vigil_test(&[&broken.0]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("feature_test window minute key checkout ending 121m")
            && stdout.contains("latency_ms.mean: expected 499, got 500"),
        "{stdout}"
    );
}

#[test]
fn mistakes_in_a_test_file_are_named() {
    for (from, to, says) in [
        (
            "rule: latency-above-baseline\n        exp_alerts: []",
            "rule: latency-above-baselin\n        exp_alerts: []",
            "names rule `latency-above-baselin`, which the pipeline does not have",
        ),
        ("500x5", "500y5", "values `500y5`"),
        (
            "field: latency_ms",
            "field: latency",
            "field `latency` is not one of the pipeline's fields",
        ),
        ("eval_time: 119m", "eval_time: soon", "eval_time `soon`"),
    ] {
        let broken = Edited::new("manifests/rule-tests/durable-state.test.yaml", from, to);
        let out = vigil_test(&[&broken.0]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(says), "`{says}` not in:\n{stderr}");
    }
}

#[test]
fn reference_data_of_a_test_reaches_templates_and_unlisted_keys_get_the_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pumps.yaml"),
        "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: pumps}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}\n  windows: [{name: w, size: 1m}]\n  sinks: {alerts: {topic: a}}\n  enrichment: {configMap: pumps, default: {site: unknown}}\n---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: hot}\nspec:\n  window: w\n  threshold: {field: v, feature: max, operator: '>', value: 50}\n  labels: {site: '{{ attributes.site }}'}\n",
    )
    .unwrap();
    let test = dir.path().join("pumps.test.yaml");
    std::fs::write(
        &test,
        "rule_files: [pumps.yaml]\nattributes:\n  pump-1: {site: berlin}\ntests:\n  - interval: 1m\n    input_series:\n      - {key: pump-1, field: v, values: '10 90 90 10 10'}\n      - {key: pump-2, field: v, values: '10 90 90 10 10'}\n    alert_rule_test:\n      - eval_time: 3m\n        rule: hot\n        exp_alerts:\n          - {key: pump-1, exp_labels: {key: pump-1, rule: hot, severity: warning, site: berlin}}\n          - {key: pump-2, exp_labels: {key: pump-2, rule: hot, severity: warning, site: unknown}}\n",
    )
    .unwrap();
    let out = vigil_test(&[&test]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
