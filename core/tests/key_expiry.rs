//! Bounded key state: 500,000 distinct keys, each seen once, expire after
//! `spec.keyState.idleTimeout` of event time; the key count returns to the active keys and the
//! process's resident memory stays bounded when another 500,000 new keys follow (the memory of
//! the expired keys is reused). Its own test binary, so no other test allocates meanwhile.

use vigil_api::manifest::Manifests;
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn half_a_million_idle_keys_expire_and_memory_stays_bounded() {
    let mut m = Manifests::default();
    m.add_str(
        "p",
        "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}\n  features: [count, mean, max]\n  windows: [{name: w, size: 10s, maxOutOfOrderness: 0s}]\n  sinks: {alerts: {topic: a}}\n  keyState: {idleTimeout: 1m}\n---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: z}\nspec: {window: w, baseline: {field: v, feature: mean, method: ZScore, history: 10m, threshold: 4}}\n",
    )
    .unwrap();
    let rules = m.rules_for(&m.pipelines[0]);
    let (mut e, _) =
        Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default()).unwrap();
    let mut out = Outputs::default();
    let mut offset = 0i64;
    let mut wave = |e: &mut Engine, first: usize, t0: i64| {
        const N: usize = 500_000;
        let mut send = |e: &mut Engine, key: &str, t: i64, v: usize| {
            let p = format!(r#"{{"k":"{key}","t":{t},"v":{v}}}"#);
            offset += 1;
            e.process(
                &RawRecord {
                    partition: 0,
                    offset,
                    key: None,
                    payload: p.as_bytes(),
                },
                t,
                &mut out,
            );
            out.clear();
        };
        // 500k keys over 50 s of event time, then a heartbeat key for 3 minutes.
        for i in first..first + N {
            let t = t0 + (i - first) as i64 / 10_000 * 1_000;
            send(e, &format!("key-{i}"), t, i % 7);
        }
        let peak = e.key_count();
        for s in 0..180 {
            send(e, "heartbeat", t0 + 50_000 + s * 1_000, 1);
        }
        peak
    };
    let peak = wave(&mut e, 0, 1_700_000_000_000);
    assert_eq!(peak, 500_000);
    assert_eq!(e.key_count(), 1, "only the heartbeat key is left");
    assert_eq!(e.counters().keys_expired, 500_000);
    let after_first = rss_bytes();
    wave(&mut e, 500_000, 1_700_000_300_000);
    assert_eq!(e.key_count(), 1);
    // The second wave's keys, and the first heartbeat (idle for over a minute in between).
    assert_eq!(e.counters().keys_expired, 1_000_001);
    let after_second = rss_bytes();
    eprintln!(
        "resident memory after the first wave {} MB, after the second {} MB",
        after_first >> 20,
        after_second >> 20
    );
    assert!(
        after_second <= after_first + after_first / 4,
        "resident memory grew from {} MB to {} MB over a second wave of expired keys",
        after_first >> 20,
        after_second >> 20
    );
}
