//! The workloads of `vigil bench`: their pipelines and rules, and their event generators
//! (deterministic, so runs compare).

use vigil_api::manifest::Manifests;

/// What `vigil bench` runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Host metrics, one event per key per second: 2 tiers, 5 rules (threshold, `for`,
    /// baselines).
    Dense,
    /// The peer job: `{"key","ts","value"}`, values ~ N(50, 10) with rare spikes, event time
    /// +10 ms per event, two hopping tiers 30s/15s and 300s/60s with 5 s out-of-orderness,
    /// count/mean/stddev/min/max, a threshold (mean > 80) per tier.
    Sparse,
}

impl Workload {
    pub(super) fn name(self) -> &'static str {
        match self {
            Workload::Dense => "dense",
            Workload::Sparse => "sparse",
        }
    }

    /// The bench pipeline and rules; `tiny` adds the latency phase's 100 ms tier and rule.
    pub(super) fn manifests(
        self,
        topic: &str,
        group: &str,
        alerts: &str,
        tiny: bool,
    ) -> anyhow::Result<Manifests> {
        match self {
            Workload::Dense => manifests(topic, group, alerts, tiny),
            // The latency phase runs the same tiny pipeline for both workloads.
            Workload::Sparse if tiny => manifests(topic, group, alerts, tiny),
            Workload::Sparse => {
                let text = SPARSE
                    .replace("TOPIC", topic)
                    .replace("GROUP", group)
                    .replace("ALERTS", alerts);
                let mut m = Manifests::default();
                m.add_str("bench-sparse", &text)?;
                Ok(m)
            }
        }
    }

    /// Event `i` of `keys` keys from event time `base_ms`: (message key, JSON, event time).
    pub(super) fn event(self, i: usize, keys: usize, base_ms: i64) -> (String, Vec<u8>, i64) {
        match self {
            Workload::Dense => {
                let (k, payload) = event(i, keys, base_ms);
                (k, payload, base_ms + (i / keys) as i64 * 1000)
            }
            Workload::Sparse => sparse_event(i, keys, base_ms),
        }
    }
}

/// The peer comparison's job (`../shared/bench/peer/vigil/vigil-peer.yaml.tmpl`, threshold 80).
const SPARSE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: peer, labels: {app: peer}}
spec:
  source: {kafka: {topics: [TOPIC], consumerGroup: GROUP, startOffset: Earliest}}
  format: {keyField: key, eventTime: {field: ts, format: EpochMillis}, wide: {fields: [{name: value}]}}
  features: [count, mean, stddev, min, max]
  windows:
    - {name: fast, size: 30s, slide: 15s, maxOutOfOrderness: 5s, idleTimeout: 10s}
    - {name: analysis, size: 300s, slide: 60s, maxOutOfOrderness: 5s, idleTimeout: 10s}
  sinks: {alerts: {topic: ALERTS}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: mean-high-fast}
spec: {window: fast, threshold: {field: value, feature: mean, operator: ">", value: 80}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: mean-high-analysis}
spec: {window: analysis, threshold: {field: value, feature: mean, operator: ">", value: 80}}
"#;

/// SplitMix64: a small, well-mixed deterministic sequence for the generators.
pub(super) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Event `i` of the sparse workload, the shape of `gen_events.py`: a random key of `keys`,
/// event time `base_ms + 10 i`, value ~ N(50, 10) (Box-Muller), 500 with probability 1e-4.
fn sparse_event(i: usize, keys: usize, base_ms: i64) -> (String, Vec<u8>, i64) {
    let r = |salt: u64| splitmix((i as u64).wrapping_mul(4).wrapping_add(salt));
    let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
    let key = format!("k{}", r(0) % keys as u64);
    let v = if unit(r(1)) < 1e-4 {
        500.0
    } else {
        let (u1, u2) = (unit(r(2)).max(f64::MIN_POSITIVE), unit(r(3)));
        50.0 + 10.0 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let ts = base_ms + i as i64 * 10;
    let payload = format!(r#"{{"key": "{key}", "ts": {ts}, "value": {v:.3}}}"#).into_bytes();
    (key, payload, ts)
}

const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: bench}
spec:
  source: {kafka: {topics: [TOPIC], consumerGroup: GROUP}}
  format: {keyField: host, eventTime: {field: ts}, wide: {fields: [{name: cpu}]}}
  features: [count, sum, mean, min, max, stddev, last, rate]
  windows:
    - {name: fast, size: 30s, slide: 15s, maxOutOfOrderness: 5s}
    - {name: analysis, size: 300s, slide: 60s, maxOutOfOrderness: 30s}
    TINY
  sinks: {alerts: {topic: ALERTS}}
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

const TINY_TIER: &str = "- {name: tiny, size: 100ms, maxOutOfOrderness: 0s, idleTimeout: 1s}";
const TINY_RULE: &str = r#"---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: latency}
spec: {window: tiny, threshold: {field: cpu, feature: max, operator: ">", value: 50}}
"#;

pub(super) fn manifests(
    topic: &str,
    group: &str,
    alerts: &str,
    tiny: bool,
) -> anyhow::Result<Manifests> {
    let mut text = PIPELINE
        .replace("TOPIC", topic)
        .replace("GROUP", group)
        .replace("ALERTS", alerts)
        .replace("TINY", if tiny { TINY_TIER } else { "" });
    if tiny {
        text.push_str(TINY_RULE);
    }
    let mut m = Manifests::default();
    m.add_str("bench", &text)?;
    Ok(m)
}

/// One event per key per second of event time (the shape of detector/examples/engine_profile.rs).
fn event(i: usize, keys: usize, base_ms: i64) -> (String, Vec<u8>) {
    let t = base_ms + (i / keys) as i64 * 1000;
    let v = 50.0 + ((i * 7919) % 1000) as f64 / 25.0;
    let host = format!("host-{:05}", i % keys);
    let payload =
        format!(r#"{{"host":"{host}","ts":{t},"cpu":{v:.2},"region":"eu-west-1"}}"#).into_bytes();
    (host, payload)
}
