//! Entity groups: group windows assembled by the group stage from the key stages' partials
//! equal a naive recomputation over the member keys' events, for any arrival order of the
//! events and any interleaving of the two key stages' records on the group topic; group
//! rules and composite KPIs see those values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{DetectionRule, Feature};
use vigil_core::config::PipelineConfig;
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord, WindowResult};
use vigil_core::enrichment::ReferenceData;

const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: cdn}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format:
    keyField: host
    eventTime: {field: ts, format: EpochMillis}
    wide: {fields: [{name: errors}, {name: requests}]}
  windows:
  - {name: fast, size: 20s, slide: 10s, maxOutOfOrderness: 10m, allowedLateness: 30s}
  features: [count, sum, mean, min, max, stddev, p50]
  sinks: {alerts: {topic: a}}
  enrichment: {configMap: hosts}
  groups:
    by: [{name: region, attribute: region}]
    kpis:
    - {name: error_rate, expression: "features.errors.sum / features.requests.sum"}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: region-errors}
spec:
  window: fast
  group: region
  threshold: {field: errors, feature: sum, operator: ">", value: 50}
  annotations: {summary: "{{ key }}: {{ errors.sum }} errors over {{ keys.count }} hosts"}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: region-error-rate}
spec:
  window: fast
  group: region
  expression: {expr: "kpi.error_rate > 0.5"}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: host-errors}
spec:
  window: fast
  threshold: {field: errors, feature: max, operator: ">", value: 1000}
"#;

/// Hosts: `h0`..`h7`; even ones in `eu`, odd ones in `us`, `h7` unlisted (group `unknown`).
fn reference() -> Arc<ReferenceData> {
    let entries = (0..7)
        .map(|i| {
            let region = if i % 2 == 0 { "eu" } else { "us" };
            (
                format!("h{i}"),
                Arc::new(BTreeMap::from([("region".to_string(), region.to_string())])),
            )
        })
        .collect();
    Arc::new(ReferenceData::new(entries, BTreeMap::new()))
}

fn region(host: usize) -> &'static str {
    match host {
        7 => "unknown",
        h if h % 2 == 0 => "eu",
        _ => "us",
    }
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    m.add_str("groups", PIPELINE).unwrap();
    m
}

fn engines(m: &Manifests) -> (Engine, Engine, Engine) {
    let rules: Vec<&DetectionRule> = m.rules.iter().collect();
    let cfg = PipelineConfig::from_resource(&m.pipelines[0]).unwrap();
    let opts = EngineOptions {
        emit_windows: true,
        ..Default::default()
    };
    let key = |rules: &[&DetectionRule]| {
        let (mut e, errors) = Engine::new(cfg.clone(), rules, &[], opts);
        assert!(errors.is_empty(), "{errors:?}");
        e.set_reference(Some(reference()));
        e
    };
    let (group, errors) = Engine::new(cfg.group_stage().unwrap(), &rules, &[], opts);
    assert!(errors.is_empty(), "{errors:?}");
    (key(&rules), key(&rules), group)
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    host: usize,
    ts: i64,
    errors: f64,
    requests: f64,
}

/// Event time 0..120 s; a host's partition is `host % 2` (so each region spans both).
fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (0usize..8, 0i64..120_000, 0u32..40, 1u32..60).prop_map(|(host, ts, e, r)| Ev {
            host,
            ts,
            errors: f64::from(e),
            requests: f64::from(r),
        }),
        1..150,
    )
}

/// Runs the events through two key stages (partitions 0 and 1), feeding their group topic
/// records to the group stage in the interleaving `picks` gives; returns the group stage's
/// outputs.
fn run(evs: &[Ev], picks: &[bool], chunk: usize) -> Outputs {
    let m = manifests();
    let (mut k0, mut k1, mut group) = engines(&m);
    let now = 10_000_000;
    let mut queues: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut offsets = [0i64; 2];
    let drain = |out: &mut Outputs, q: &mut Vec<Vec<u8>>, progress: Vec<Vec<u8>>| {
        q.extend(out.group_records.drain(..).map(|(_, v)| v));
        q.extend(progress);
        out.clear();
    };
    for (n, ev) in evs.iter().enumerate() {
        let p = (ev.host % 2) as i32;
        let payload = format!(
            r#"{{"host":"h{}","ts":{},"errors":{},"requests":{}}}"#,
            ev.host, ev.ts, ev.errors, ev.requests
        );
        let rec = RawRecord {
            partition: p,
            offset: offsets[p as usize],
            key: None,
            payload: payload.as_bytes(),
        };
        offsets[p as usize] += 1;
        let e = if p == 0 { &mut k0 } else { &mut k1 };
        let mut out = Outputs::default();
        assert!(e.process(&rec, now, &mut out).is_some());
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        if (n + 1) % chunk == 0 {
            e.advance(now, &mut out);
            let progress = e.group_progress(&[0, 1]);
            drain(&mut out, &mut queues[p as usize], progress);
        }
    }
    for (i, e) in [&mut k0, &mut k1].into_iter().enumerate() {
        // Partitions without events still report (as an assigned, empty partition does).
        e.assign_partitions(&[i as i32], now);
        let mut out = Outputs::default();
        e.flush(now, &mut out);
        let progress = e.group_progress(&[0, 1]);
        drain(&mut out, &mut queues[i], progress);
    }
    // Interleave the two producers' records; each one's own order is kept (one producer, one
    // group topic partition).
    let mut result = Outputs::default();
    let (mut i0, mut i1, mut offset) = (0, 0, 0);
    let mut pick = picks.iter().cycle();
    while i0 < queues[0].len() || i1 < queues[1].len() {
        let from0 = i1 >= queues[1].len() || (i0 < queues[0].len() && *pick.next().unwrap());
        let value = if from0 {
            i0 += 1;
            &queues[0][i0 - 1]
        } else {
            i1 += 1;
            &queues[1][i1 - 1]
        };
        let rec = RawRecord {
            partition: 0,
            offset,
            key: None,
            payload: value,
        };
        offset += 1;
        group.process(&rec, now, &mut result);
    }
    assert_eq!(
        group.pending_group_windows(),
        0,
        "every group window fired and was purged"
    );
    result
}

#[derive(Debug, Default)]
struct Naive {
    errors: Vec<f64>,
    requests: Vec<f64>,
    hosts: BTreeSet<usize>,
}

/// Group windows of 20 s sliding by 10 s, recomputed from the events.
fn naive(evs: &[Ev]) -> BTreeMap<(String, i64), Naive> {
    let mut w: BTreeMap<(String, i64), Naive> = BTreeMap::new();
    for ev in evs {
        let last = ev.ts - ev.ts.rem_euclid(10_000);
        for start in [last, last - 10_000] {
            let g = w
                .entry((format!("region/{}", region(ev.host)), start))
                .or_default();
            g.errors.push(ev.errors);
            g.requests.push(ev.requests);
            g.hosts.insert(ev.host);
        }
    }
    w
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn stats(v: &[f64]) -> [(Feature, f64); 6] {
    let n = v.len() as f64;
    let sum: f64 = v.iter().sum();
    let mean = sum / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    [
        (Feature::Count, n),
        (Feature::Sum, sum),
        (Feature::Mean, mean),
        (
            Feature::Min,
            v.iter().copied().fold(f64::INFINITY, f64::min),
        ),
        (
            Feature::Max,
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ),
        (Feature::Stddev, var.sqrt()),
    ]
}

fn check(evs: &[Ev], out: &Outputs) -> Result<(), TestCaseError> {
    let want = naive(evs);
    let got: HashMap<(String, i64), &WindowResult> = out
        .windows
        .iter()
        .filter(|w| !w.update)
        .map(|w| ((w.key.clone(), w.start), w))
        .collect();
    prop_assert_eq!(got.len(), want.len(), "group windows fired once each");
    for ((group, start), n) in &want {
        let w = got
            .get(&(group.clone(), *start))
            .ok_or_else(|| TestCaseError::fail(format!("no window {group} @ {start}")))?;
        let f: HashMap<&str, f64> = w.features.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for (field, values) in [("errors", &n.errors), ("requests", &n.requests)] {
            for (feature, x) in stats(values) {
                let name = format!("{field}.{feature}");
                prop_assert!(
                    close(f[name.as_str()], x),
                    "{group} @ {start} {name}: {} != {x}",
                    f[name.as_str()]
                );
            }
            // Quantiles from the merged member sketches: within the sketch's 1% of a value.
            let p50 = f[format!("{field}.p50").as_str()];
            prop_assert!(
                values
                    .iter()
                    .any(|v| (v - p50).abs() <= 0.01 * v.abs() + 1e-9)
            );
        }
        prop_assert_eq!(f["keys.count"], n.hosts.len() as f64);
        let rate = n.errors.iter().sum::<f64>() / n.requests.iter().sum::<f64>();
        prop_assert!(
            close(f["kpi.error_rate"], rate),
            "{} != {rate}",
            f["kpi.error_rate"]
        );
    }
    // Group rules fire on the group windows only, and exactly where the naive values say.
    let fired: BTreeSet<(String, String)> = out
        .alerts
        .iter()
        .filter(|a| a.status == vigil_core::rules::alert::AlertStatus::Firing)
        .map(|a| (a.rule.clone(), a.key.clone()))
        .collect();
    prop_assert!(
        fired
            .iter()
            .all(|(r, k)| r != "host-errors" && k.starts_with("region/"))
    );
    let over = |pred: &dyn Fn(&Naive) -> bool| -> BTreeSet<String> {
        want.iter()
            .filter(|(_, n)| pred(n))
            .map(|((g, _), _)| g.clone())
            .collect()
    };
    let errors_over: BTreeSet<String> = over(&|n| n.errors.iter().sum::<f64>() > 50.0);
    let fired_errors: BTreeSet<String> = fired
        .iter()
        .filter(|(r, _)| r == "region-errors")
        .map(|(_, k)| k.clone())
        .collect();
    prop_assert_eq!(fired_errors, errors_over);
    let rate_over = over(&|n| n.errors.iter().sum::<f64>() / n.requests.iter().sum::<f64>() > 0.5);
    let fired_rate: BTreeSet<String> = fired
        .iter()
        .filter(|(r, _)| r == "region-error-rate")
        .map(|(_, k)| k.clone())
        .collect();
    prop_assert_eq!(fired_rate, rate_over);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any arrival order of the events (the watermark allows it), any interleaving of the two
    /// key stages' records, any cadence of progress reports: the group windows equal the
    /// naive recomputation.
    #[test]
    fn group_windows_equal_naive_recomputation(
        evs in events(),
        picks in prop::collection::vec(any::<bool>(), 1..64),
        chunk in 1usize..40,
    ) {
        let out = run(&evs, &picks, chunk);
        check(&evs, &out)?;
    }
}

#[test]
fn a_late_member_window_updates_the_group_window_within_allowed_lateness() {
    let m = manifests();
    let (mut k0, _, mut group) = engines(&m);
    let now = 10_000_000;
    let mut offset = 0;
    let mut feed = |e: &mut Engine, group: &mut Engine, json: &str, out: &mut Outputs| {
        let mut o = Outputs::default();
        let rec = RawRecord {
            partition: 0,
            offset,
            key: None,
            payload: json.as_bytes(),
        };
        offset += 1;
        e.process(&rec, now, &mut o);
        let mut records: Vec<Vec<u8>> = o.group_records.drain(..).map(|(_, v)| v).collect();
        records.extend(e.group_progress(&[0]));
        for (i, v) in records.iter().enumerate() {
            let rec = RawRecord {
                partition: 0,
                offset: i as i64,
                key: None,
                payload: v,
            };
            group.process(&rec, now, out);
        }
    };
    let mut out = Outputs::default();
    feed(
        &mut k0,
        &mut group,
        r#"{"host":"h0","ts":1000,"errors":1,"requests":2}"#,
        &mut out,
    );
    // 10 min out-of-orderness: the watermark passes [0, 20s) at 620 s.
    feed(
        &mut k0,
        &mut group,
        r#"{"host":"h2","ts":621000,"errors":1,"requests":2}"#,
        &mut out,
    );
    let first: Vec<&WindowResult> = out.windows.iter().filter(|w| w.start == 0).collect();
    assert_eq!(first.len(), 1, "{:?}", out.windows);
    assert!(!first[0].update);
    out.clear();
    // A late event of another eu host within allowed lateness (30 s): an update with 2 keys.
    feed(
        &mut k0,
        &mut group,
        r#"{"host":"h4","ts":2000,"errors":5,"requests":5}"#,
        &mut out,
    );
    let upd: Vec<&WindowResult> = out.windows.iter().filter(|w| w.start == 0).collect();
    assert_eq!(upd.len(), 1, "{:?}", out.windows);
    assert!(upd[0].update);
    let f: HashMap<&str, f64> = upd[0]
        .features
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!((f["keys.count"], f["errors.sum"]), (2.0, 6.0));
}

#[test]
fn group_rules_are_checked_against_the_groupings() {
    let mut m = manifests();
    m.add_str(
        "bad",
        "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: bad}\nspec:\n  window: fast\n  group: site\n  threshold: {field: errors, feature: sum, operator: \">\", value: 1}\n---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: per-event}\nspec:\n  window: fast\n  group: region\n  detector: {field: errors, changePoint: {}}\n",
    )
    .unwrap();
    let rules: Vec<&DetectionRule> = m.rules.iter().collect();
    let (_, errors) =
        Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default()).unwrap();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{text:?}");
    assert!(
        text[0].contains("spec.group")
            && text[0].contains("grouping `site` is not one of the pipeline's (region)"),
        "{text:?}"
    );
    assert!(
        text[1].contains("threshold, baseline and expression rules, not detector"),
        "{text:?}"
    );
    // Without enrichment there is nothing to group by.
    let mut no_ref = m.pipelines[0].clone();
    no_ref.spec.enrichment = None;
    let e = PipelineConfig::from_resource(&no_ref).unwrap_err();
    assert!(
        e.to_string().contains("spec.groups.by[0].attribute")
            && e.to_string().contains("needs spec.enrichment"),
        "{e}"
    );
    // A composite KPI may only read features and key.
    let mut bad_kpi = m.pipelines[0].clone();
    bad_kpi.spec.groups.as_mut().unwrap().kpis[0].expression = "baseline.errors.mean".into();
    let e = PipelineConfig::from_resource(&bad_kpi).unwrap_err();
    assert!(
        e.to_string().contains("spec.groups.kpis[0].expression")
            && e.to_string().contains("unknown variable `baseline`"),
        "{e}"
    );
}
