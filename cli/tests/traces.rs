//! One trace from the producing device to the alert, through the real binaries and a real
//! trace backend: Jaeger (built from its Go module by `e2e/tools.sh jaeger`, or `VIGIL_JAEGER`)
//! receives OTLP from `vigil run` and `vigil-model-server`; a real Kafka broker
//! (`KAFKA_BOOTSTRAP`) and ONNX Runtime (`ORT_DYLIB_PATH`) carry the data.
//!
//! Two hot events carry a `traceparent` header: one the producer sampled, one it did not (the
//! detector's default sampler follows the producer; it reads every record's headers here,
//! `VIGIL_TRACE_RECORD_RATIO=1`). The alert of the first arrives with a
//! `traceparent` of the same trace (header and CloudEvent extension), and Jaeger's API returns
//! that trace with the detector's spans (record, window firings, model batch, alert) and the
//! model server's (inference); the alert of the second carries none, and Jaeger has no trace
//! of it.
//!
//! Needs `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"` and
//! `eval "$(scripts/setup-onnxruntime.sh)"`.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// The trace the producer sampled (flag 01).
const KEPT: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The trace the producer did not sample (flag 00).
const DROPPED: &str = "5cf92f3577b34da6ffffffffffffffff";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_or_panic(name: &str, how: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {how}"),
    }
}

/// A child process killed when dropped.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn alive(&mut self) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("{} exited early: {status}", self.1);
        }
    }
}

/// The Jaeger binary: `VIGIL_JAEGER`, else built (once, cached) by `e2e/tools.sh jaeger`.
fn jaeger_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_JAEGER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(root().join("e2e/tools.sh"))
        .arg("jaeger")
        .stderr(Stdio::inherit())
        .output()
        .expect("run e2e/tools.sh jaeger");
    assert!(out.status.success(), "e2e/tools.sh jaeger failed");
    let path = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(path.lines().last().expect("a path").trim())
}

/// Jaeger all-in-one (in-memory storage) receiving OTLP/gRPC on `otlp`, its query API on
/// `query`.
fn start_jaeger(dir: &std::path::Path, otlp: u16, query: u16) -> Proc {
    let config = dir.join("jaeger.yaml");
    std::fs::write(
        &config,
        format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#,
            grpc = free_port()
        ),
    )
    .unwrap();
    let child = Command::new(jaeger_bin())
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start jaeger");
    Proc(child, "jaeger")
}

fn http_get(rt: &tokio::runtime::Runtime, url: &str) -> Option<(u16, serde_json::Value)> {
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.json::<serde_json::Value>().await.unwrap_or_default();
        Some((status, body))
    })
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The model server binary beside the test's (`cargo test --workspace` builds it; built here
/// when a narrower `cargo test` did not).
fn model_server_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("vigil-model-server");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "vigil-model-server",
                "--bin",
                "vigil-model-server",
            ])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build of vigil-model-server failed");
    }
    bin
}

fn otel_env(cmd: &mut Command, otlp: u16) -> &mut Command {
    cmd.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{otlp}"),
    )
    .env("OTEL_BSP_SCHEDULE_DELAY", "200")
    // The binaries' default samplers are under test.
    .env_remove("OTEL_TRACES_SAMPLER")
    .env_remove("OTEL_TRACES_SAMPLER_ARG")
    .env_remove("OTEL_SDK_DISABLED")
    .env_remove("OTEL_SERVICE_NAME")
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-traces-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

/// The "presses" scenario of the detector's model tests: tier `fast` (1 s) with threshold rule
/// `hot`, tier `slow` (5 s) with the reference Isolation Forest as rule `forest`.
#[allow(dead_code)] // not every helper of the scenario is used here
#[path = "../../detector/tests/model_support/presses.rs"]
mod presses;

/// The scenario's pipeline and rules, and its model as YAML (`vigil run` reads files).
fn manifests(src: &str, group: &str, alerts: &str) -> String {
    format!(
        "{}---\napiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {{name: iforest}}\nspec:\n  revision: \"1\"\n  artifact: {{uri: file://models/repository/iforest/1/model.onnx, sha256: 7e012d6a342083e143034a47c11a6858f749b9866baebfdb9d3965c8dd52e0cb}}\n  input: {{tensor: features, window: slow, features: {}}}\n  output: {{tensor: scores, anomalousWhen: Below, threshold: 0.0}}\n",
        presses::yaml(src, group, alerts),
        presses::FEATURES
    )
}

/// The scenario's events of key `a` over 12 s (every 250 ms; hot in the first half of every
/// second second). The hot event at 250 ms carries the sampled trace, the one at 2,250 ms the
/// unsampled one.
fn produce(bootstrap: &str, topic: &str) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for (i, (key, payload)) in presses::events("a", 0, 12).into_iter().enumerate() {
        let trace = match i * 250 {
            250 => Some(format!("00-{KEPT}-00f067aa0ba902b7-01")),
            2_250 => Some(format!("00-{DROPPED}-00f067aa0ba902b8-00")),
            _ => None,
        };
        let mut rec = BaseRecord::to(topic).key(key.unwrap()).payload(&payload);
        if let Some(tp) = &trace {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(tp.as_str()),
            }));
        }
        p.send(rec).map_err(|(e, _)| e).expect("enqueue");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
}

/// (window start, CloudEvent, `traceparent` header) of the `hot` firing alerts so far.
fn hot_alerts(bootstrap: &str, topic: &str) -> Vec<(i64, serde_json::Value, Option<String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let ce: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                if ce["type"] != "dev.vigil.alert.firing" || ce["data"]["rule"] != "hot" {
                    continue;
                }
                let header = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "traceparent")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                out.push((ce["data"]["windowStart"].as_i64().unwrap(), ce, header));
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None if !out.is_empty() => break,
            None => {}
        }
    }
    out
}

#[test]
fn one_trace_goes_from_the_producer_to_the_alert_through_the_model_server() {
    let bootstrap = env_or_panic(
        "KAFKA_BOOTSTRAP",
        "run `scripts/kafka.sh start && eval \"$(scripts/kafka.sh env)\"` first",
    );
    let ort = env_or_panic(
        "ORT_DYLIB_PATH",
        "run `eval \"$(scripts/setup-onnxruntime.sh)\"` first",
    );
    // reqwest's rustls needs a provider even for plain http clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (otlp, query) = (free_port(), free_port());
    let mut jaeger = start_jaeger(dir.path(), otlp, query);
    let api = format!("http://127.0.0.1:{query}/api");
    assert!(
        wait_until(Duration::from_secs(60), || {
            jaeger.alive();
            http_get(&rt, &format!("{api}/services")).is_some_and(|(s, _)| s == 200)
        }),
        "jaeger's query API did not come up"
    );

    let (grpc, http) = (free_port(), free_port());
    let mut server = Proc(
        otel_env(&mut Command::new(model_server_bin()), otlp)
            .args(["--repository", "models/repository"])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{http}")])
            .env("ORT_DYLIB_PATH", &ort)
            .env("RUST_LOG", "warn")
            .current_dir(root())
            .spawn()
            .expect("start the model server"),
        "vigil-model-server",
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            server.alive();
            std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok()
        }),
        "the model server did not listen"
    );

    let (src, alerts, group) = (unique("src"), unique("alerts"), unique("group"));
    let file = dir.path().join("traced.yaml");
    std::fs::write(&file, manifests(&src, &group, &alerts)).unwrap();
    let mut detector = Proc(
        otel_env(&mut Command::new(env!("CARGO_BIN_EXE_vigil")), otlp)
            .arg("run")
            .arg("--pipeline")
            .arg(&file)
            .arg("--rules")
            .arg(&file)
            .args(["--bootstrap-servers", &bootstrap])
            .args(["--model-server", &format!("http://127.0.0.1:{grpc}")])
            .args(["--create-topics", "--quiet", "--no-watch"])
            .env("RUST_LOG", "warn")
            .env("VIGIL_TRACE_RECORD_RATIO", "1")
            .current_dir(root())
            .spawn()
            .expect("start vigil run"),
        "vigil run",
    );
    // The detector creates the topics; produce once they exist.
    let admin: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || {
            detector.alive();
            admin
                .fetch_metadata(Some(&src), Duration::from_secs(2))
                .is_ok_and(|m| m.topics().iter().any(|t| t.partitions().len() == 1))
        }),
        "the detector did not create {src}"
    );
    produce(&bootstrap, &src);

    let mut hot = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            detector.alive();
            hot = hot_alerts(&bootstrap, &alerts);
            hot.iter().any(|(s, ..)| *s == 0) && hot.iter().any(|(s, ..)| *s == 2_000)
        }),
        "the hot alerts of windows 0 and 2000 did not arrive: {hot:?}"
    );

    // The alert of the kept trace continues it, in the header and the CloudEvent alike.
    let (_, event, header) = hot.iter().find(|(s, ..)| *s == 0).unwrap();
    let header = header
        .as_deref()
        .expect("the traced alert has a traceparent header");
    assert_eq!(&header[3..35], KEPT, "{header}");
    assert_eq!(event["traceparent"], header, "{event}");
    // The dropped trace is not carried.
    let (_, event, header) = hot.iter().find(|(s, ..)| *s == 2_000).unwrap();
    assert!(header.is_none(), "{header:?}");
    assert!(event.get("traceparent").is_none(), "{event}");

    // One trace in Jaeger, with the detector's and the model server's spans.
    let mut spans: BTreeSet<(String, String)> = BTreeSet::new();
    let want = [
        ("vigil-detector", "vigil.record"),
        ("vigil-detector", "vigil.window.fire"),
        ("vigil-detector", "vigil.alert.produce"),
        ("vigil-detector", "vigil.model.batch"),
        ("vigil-model-server", "vigil.model.infer"),
    ];
    let complete = wait_until(Duration::from_secs(60), || {
        detector.alive();
        let Some((200, body)) = http_get(&rt, &format!("{api}/traces/{KEPT}")) else {
            return false;
        };
        let traces = body["data"].as_array().cloned().unwrap_or_default();
        assert!(traces.len() <= 1, "one trace: {body}");
        spans.clear();
        for t in &traces {
            for s in t["spans"].as_array().into_iter().flatten() {
                let pid = s["processID"].as_str().unwrap_or_default();
                let service = t["processes"][pid]["serviceName"]
                    .as_str()
                    .unwrap_or_default();
                assert_eq!(
                    s["traceID"].as_str(),
                    Some(KEPT),
                    "a span of another trace: {s}"
                );
                spans.insert((
                    service.to_string(),
                    s["operationName"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        want.iter()
            .all(|(svc, op)| spans.contains(&(svc.to_string(), op.to_string())))
    });
    assert!(
        complete,
        "spans of trace {KEPT} in Jaeger: {spans:?}, want {want:?}"
    );
    eprintln!("spans of trace {KEPT} in Jaeger: {spans:?}");
    // Nothing of the dropped trace reached the backend.
    let dropped = http_get(&rt, &format!("{api}/traces/{DROPPED}"));
    assert!(
        !dropped
            .as_ref()
            .is_some_and(|(s, b)| *s == 200 && b["data"].as_array().is_some_and(|d| !d.is_empty())),
        "the dropped trace was exported: {dropped:?}"
    );
    drop(detector);
    drop(server);
}
