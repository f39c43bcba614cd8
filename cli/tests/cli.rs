//! The `vigil` command as a user meets it: a dead or wrong broker and configuration mistakes
//! end the command with a non-zero status and a message that names what is wrong and where,
//! within a bounded time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn series() -> PathBuf {
    root().join("data/nab/data/artificialWithAnomaly/art_daily_jumpsup.csv")
}

fn vigil(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .env_remove("VIGIL_BOOTSTRAP_SERVERS")
        .output()
        .expect("run vigil");
    (out, started.elapsed())
}

fn failed_with(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "exited 0:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in:\n{stderr}");
    }
    assert!(!stderr.contains("Some("), "{stderr}");
    stderr
}

/// A copy of `file` with `from` replaced by `to`, in a temporary directory.
fn edited(dir: &Path, file: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    let p = dir.join(Path::new(file).file_name().unwrap());
    std::fs::write(&p, text.replace(from, to)).unwrap();
    p.display().to_string()
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

#[test]
fn run_against_a_dead_broker_fails_within_the_bound_and_says_why() {
    let addr = closed_port();
    let (out, took) = vigil(&[
        "run",
        "--pipeline",
        "manifests/examples/nab/pipeline.yaml",
        "--rules",
        "manifests/examples/nab/rules.yaml",
        "--bootstrap-servers",
        &addr,
    ]);
    failed_with(&out, &[&format!("cannot reach Kafka at {addr}"), "refused"]);
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn replay_to_an_unknown_host_fails_and_names_it() {
    let (out, took) = vigil(&[
        "replay",
        "--input",
        series().to_str().unwrap(),
        "--topic",
        "t",
        "--bootstrap-servers",
        "no-such-host.invalid:9092",
    ]);
    failed_with(
        &out,
        &["cannot reach Kafka at no-such-host.invalid:9092", "resolve"],
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn an_unknown_window_stops_run_and_score_with_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let rules = edited(
        dir.path(),
        "manifests/examples/nab/rules.yaml",
        "window: alarms",
        "window: alarm",
    );
    let expected = [
        rules.as_str(),
        "DetectionRule nab-seasonal: spec.window: window `alarm` is not one of the pipeline's windows (alarms)",
    ];
    let (out, _) = vigil(&[
        "run",
        "--pipeline",
        "manifests/examples/nab/pipeline.yaml",
        "--rules",
        &rules,
    ]);
    failed_with(&out, &expected);
    let output = dir.path().join("scores.csv");
    let (out, _) = vigil(&[
        "score",
        "--pipeline",
        "manifests/examples/nab/pipeline.yaml",
        "--rules",
        &rules,
        "--input",
        series().to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    failed_with(&out, &expected[1..]);
}

#[test]
fn schema_mistakes_name_the_document_and_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = "manifests/examples/nab/pipeline.yaml";
    for (from, to, needles) in [
        (
            "size: 1h",
            "size: 1hour",
            vec!["document 1: StreamPipeline nab: spec.windows[0].size: invalid unit"],
        ),
        (
            "apiVersion: vigil.dev/v1alpha1",
            "apiVersion: vigil.dev/v1",
            vec!["apiVersion is \"vigil.dev/v1\", expected \"vigil.dev/v1alpha1\""],
        ),
    ] {
        let p = edited(dir.path(), pipeline, from, to);
        let (out, _) = vigil(&[
            "run",
            "--pipeline",
            &p,
            "--rules",
            "manifests/examples/nab/rules.yaml",
        ]);
        let mut all = vec![p.as_str()];
        all.extend(needles);
        failed_with(&out, &all);
    }
}

#[test]
fn a_run_that_dead_letters_every_record_fails_with_the_top_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = edited(
        dir.path(),
        "manifests/examples/nab/pipeline.yaml",
        "field: timestamp",
        "field: ts",
    );
    let output = dir.path().join("scores.csv");
    let (out, _) = vigil(&[
        "score",
        "--pipeline",
        &pipeline,
        "--rules",
        "manifests/examples/nab/rules.yaml",
        "--input",
        series().to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    failed_with(
        &out,
        &[
            "every one of the 4032 rows",
            "4032 × decode: missing event time field `ts`",
        ],
    );
    // The same with a detector on the embedded broker, over a bounded replay.
    let (out, _) = vigil(&[
        "run",
        "--pipeline",
        &pipeline,
        "--rules",
        "manifests/examples/nab/rules.yaml",
        "--replay",
        series().to_str().unwrap(),
        "--exit-when-idle",
        "--no-watch",
    ]);
    failed_with(
        &out,
        &[
            "every one of the 4032 records was dead-lettered",
            "missing event time field `ts`",
        ],
    );
}

/// `VIGIL_LOG_FORMAT=json` (or `--log-format json`): every log line is a JSON object with a
/// timestamp, a level and the message (the final error is anyhow's report, not a log line).
#[test]
fn json_logs_are_one_object_per_line() {
    let addr = closed_port();
    for how in [&["--log-format", "json"][..], &[][..]] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args(how)
            .args([
                "run",
                "--pipeline",
                "manifests/examples/nab/pipeline.yaml",
                "--rules",
                "manifests/examples/nab/rules.yaml",
                "--bootstrap-servers",
                &addr,
            ])
            .current_dir(root())
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("RUST_BACKTRACE", "0");
        if how.is_empty() {
            cmd.env("VIGIL_LOG_FORMAT", "json");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let logs: Vec<&str> = stderr
            .lines()
            .take_while(|l| !l.starts_with("Error:"))
            .collect();
        assert!(!logs.is_empty(), "{stderr}");
        for line in logs {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(
                v["timestamp"].is_string() && v["level"].is_string(),
                "{line}"
            );
            assert!(v["fields"]["message"].is_string(), "{line}");
        }
        assert!(stderr.contains("Using the Kafka cluster given by --bootstrap-servers"));
    }
}

#[test]
fn run_with_a_bad_trace_record_ratio_names_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "run",
            "--pipeline",
            "manifests/examples/nab/pipeline.yaml",
            "--rules",
            "manifests/examples/nab/rules.yaml",
            "--bootstrap-servers",
            &closed_port(),
        ])
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("VIGIL_TRACE_RECORD_RATIO", "1.5")
        .env_remove("OTEL_SDK_DISABLED")
        .output()
        .expect("run vigil");
    failed_with(
        &out,
        &["VIGIL_TRACE_RECORD_RATIO=\"1.5\" is not a ratio in [0, 1]"],
    );
}
