//! Profiling harness for the in-memory engine: decode -> 2 window tiers -> 5 rules over
//! pre-built JSON events. `cargo run --release -p vigil-detector --example engine_profile`.

use std::time::Instant;

use vigil_api::manifest::Manifests;
use vigil_detector::engine::{Engine, EngineOptions, Outputs, RawRecord};

const MANIFESTS: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: bench}
spec:
  source: {kafka: {topics: [bench], consumerGroup: bench}}
  format: {keyField: host, eventTime: {field: ts}, wide: {fields: [{name: cpu}]}}
  features: [count, sum, mean, min, max, stddev, last, rate]
  windows:
    - {name: fast, size: 30s, slide: 15s, maxOutOfOrderness: 5s}
    - {name: analysis, size: 300s, slide: 60s, maxOutOfOrderness: 30s}
  sinks: {alerts: {topic: alerts}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: hot}
spec: {window: fast, for: 1m, threshold: {field: cpu, feature: mean, operator: ">", value: 95}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: spiky}
spec: {window: fast, threshold: {field: cpu, feature: max, operator: ">", value: 99.5}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: z}
spec: {window: analysis, baseline: {field: cpu, method: ZScore, history: 1h, threshold: 4}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: mad}
spec: {window: analysis, baseline: {field: cpu, method: Mad, history: 1h, threshold: 5}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: idle}
spec: {window: fast, threshold: {field: cpu, feature: count, operator: "<", value: 1}}
"#;

fn main() {
    let keys: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(2_000_000);
    let mut m = Manifests::default();
    m.add_str("bench", MANIFESTS).unwrap();
    let rules = m.rules_for(&m.pipelines[0]);
    let (mut e, errs) = Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default()).unwrap();
    assert!(errs.is_empty());
    // One event per key per second of event time.
    let events: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let t = 1_700_000_000_000i64 + (i / keys) as i64 * 1000;
            let v = 50.0 + ((i * 7919) % 1000) as f64 / 25.0;
            format!(r#"{{"host":"host-{:05}","ts":{t},"cpu":{v:.2},"region":"eu-west-1"}}"#, i % keys).into_bytes()
        })
        .collect();
    let mut out = Outputs::default();
    let start = Instant::now();
    for (i, ev) in events.iter().enumerate() {
        e.process(&RawRecord { partition: 0, offset: i as i64, key: None, payload: ev }, 0, &mut out);
        if out.alerts.len() > 1024 {
            out.clear();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "events={n} keys={keys} secs={secs:.3} eps={:.0} state_bytes_per_key={} windows_fired={} alerts={}",
        n as f64 / secs,
        e.state_bytes_per_key(),
        e.counters().windows_fired,
        e.counters().alerts_firing
    );
}
