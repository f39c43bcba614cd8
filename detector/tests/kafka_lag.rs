//! Stage lag thresholds (`spec.lag`) against a real broker (`KAFKA_BOOTSTRAP`) that is made
//! slow: the broker process is stopped (SIGSTOP) for 3 s, so the records produced meanwhile
//! reach the detector, and the alerts they fire reach the alerts topic, seconds late. The
//! delivered stage (`kafka_to_delivered`: Kafka timestamp of the record that fired a window ->
//! alert acknowledged by the broker) goes past `warn` (1 s) but not `critical` (30 s):
//! `GET /lag` and `vigil_stage_lag_level` say so, and once the slow samples are older than a
//! minute both clear.
//!
//! Needs `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"` (`KAFKA_PID_FILE` names the
//! broker process). The broker is shared: this test is alone in its binary, and cargo runs
//! test binaries one at a time.

mod kafka_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_support::{bootstrap, create_topics, manifests, unique, wait_until};
use vigil_api::contract::detector::lag::{LagLevel, LagReport};
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::telemetry::Metrics;

fn pipeline(src: &str, group: &str, alerts: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: slow}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  windows: [{{name: w, size: 1s}}]
  sinks: {{alerts: {{topic: {alerts}}}}}
  lag: {{warn: 1s, critical: 30s}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: hot}}
spec: {{window: w, threshold: {{field: v, feature: max, operator: '>', value: 50}}}}
"#
    )
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn delivered_level(addr: std::net::SocketAddr) -> Option<(LagLevel, f64)> {
    let r: LagReport = serde_json::from_str(&http_get(addr, "/lag")).ok()?;
    r.stages
        .iter()
        .find(|s| s.stage == "kafka_to_delivered")
        .map(|s| (s.level, s.p99))
}

fn signal(sig: &str, pid: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_stalled_broker_pushes_the_delivered_stage_past_warn_and_it_clears() {
    let pid_file =
        std::env::var("KAFKA_PID_FILE").expect("KAFKA_PID_FILE (eval \"$(scripts/kafka.sh env)\")");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let b = bootstrap();
    let (src, alerts, group) = (unique("src"), unique("alerts"), unique("group"));
    create_topics(&b, &[(&src, 1), (&alerts, 1)]);
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts));
    let metrics = Metrics::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, serve) = rt
        .block_on(vigil_detector::telemetry::serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
        ))
        .unwrap();
    rt.spawn(serve);
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), metrics.clone())
        .expect("runner starts");

    // Real-time events for 5 keys, every 100 ms; hot in even seconds, so every key's alert
    // fires and resolves every second and deliveries never stop.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (b, src, stop) = (b.clone(), src.clone(), stop.clone());
        std::thread::spawn(move || {
            use rdkafka::ClientConfig;
            use rdkafka::producer::{
                BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
            };
            let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .set("linger.ms", "1")
                .create()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let now = vigil_detector::runner::wall_clock_ms();
                let v = if (now / 1000) % 2 == 0 { 90 } else { 10 };
                for k in 0..5 {
                    let payload = format!(r#"{{"k":"k{k}","t":{now},"v":{v}}}"#);
                    let _ = p.send(BaseRecord::<str, str>::to(&src).payload(&payload));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = p.flush(Duration::from_secs(10));
        })
    };

    // Healthy first.
    assert!(
        wait_until(Duration::from_secs(30), || {
            delivered_level(addr).is_some_and(|(l, _)| l == LagLevel::Ok)
        }),
        "{}",
        http_get(addr, "/lag")
    );

    // The broker stops for 3 s: what is produced meanwhile arrives late, and so do its alerts.
    signal("-STOP", &pid);
    std::thread::sleep(Duration::from_secs(3));
    signal("-CONT", &pid);
    let slow_since = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || {
            delivered_level(addr).is_some_and(|(l, _)| l == LagLevel::Warn)
        }),
        "{}",
        http_get(addr, "/lag")
    );
    let (_, p99) = delivered_level(addr).unwrap();
    assert!((1.0..30.0).contains(&p99), "p99 {p99} s");
    assert!(
        metrics
            .encode()
            .contains(r#"vigil_stage_lag_level{stage="kafka_to_delivered"} 1"#),
        "{}",
        metrics.encode()
    );
    println!("LAG kafka_to_delivered p99 {p99:.2} s after a 3 s broker stop (warn 1 s)");

    // A minute later the slow samples have aged out.
    assert!(
        wait_until(Duration::from_secs(90), || {
            delivered_level(addr).is_some_and(|(l, _)| l == LagLevel::Ok)
        }),
        "{}",
        http_get(addr, "/lag")
    );
    assert!(
        slow_since.elapsed() >= Duration::from_secs(50),
        "cleared too early"
    );
    assert!(
        metrics
            .encode()
            .contains(r#"vigil_stage_lag_level{stage="kafka_to_delivered"} 0"#)
    );
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    h.stop();
    h.join().expect("clean stop");
}
