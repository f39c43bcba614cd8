use super::*;
use crate::rules::alert::{self, AlertStatus};
use proptest::prelude::*;
use vigil_api::manifest::Manifests;

/// A pipeline with one tier and the given window settings, plus rules.
fn engine_with(window: &str, rules: &str, opts: EngineOptions) -> Engine {
    let mut m = Manifests::default();
    m.add_str(
        "p",
        &format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {{name: p}}\nspec:\n  source: {{kafka: {{topics: [t], consumerGroup: g}}}}\n  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}\n  windows: [{window}]\n  sinks: {{alerts: {{topic: a}}}}\n"
        ),
    )
    .unwrap();
    if !rules.is_empty() {
        m.add_str("r", rules).unwrap();
    }
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    let (e, errors) = Engine::from_resources(&m.pipelines[0], &refs, &[], opts).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    e
}

fn rec(partition: i32, offset: i64, key: &str, t: i64, v: f64) -> Vec<u8> {
    let _ = (partition, offset);
    format!(r#"{{"k":"{key}","t":{t},"v":{v}}}"#).into_bytes()
}

fn feed(e: &mut Engine, partition: i32, offset: i64, key: &str, t: i64, v: f64, out: &mut Outputs) {
    let payload = rec(partition, offset, key, t, v);
    e.process(
        &RawRecord {
            partition,
            offset,
            key: None,
            payload: &payload,
        },
        0,
        out,
    );
}

const HOT: &str = "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: hot}\nspec: {window: w, threshold: {field: v, feature: max, operator: '>', value: 10}}\n";

#[test]
fn windows_fire_when_the_watermark_passes_their_end() {
    let mut e = engine_with(
        "{name: w, size: 10s, maxOutOfOrderness: 2s}",
        HOT,
        EngineOptions {
            emit_windows: true,
            ..Default::default()
        },
    );
    let mut out = Outputs::default();
    feed(&mut e, 0, 0, "a", 1_000, 20.0, &mut out);
    feed(&mut e, 0, 1, "a", 11_000, 1.0, &mut out);
    assert!(out.windows.is_empty(), "watermark 9s has not reached 10s");
    feed(&mut e, 0, 2, "a", 12_000, 1.0, &mut out);
    assert_eq!(out.windows.len(), 1);
    assert_eq!((out.windows[0].start, out.windows[0].end), (0, 10_000));
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(out.alerts[0].status, AlertStatus::Firing);
    assert_eq!(out.alerts[0].value, Some(20.0));
    let json: serde_json::Value =
        serde_json::from_slice(&out.alerts[0].to_cloudevent_json()).unwrap();
    assert_eq!(json["specversion"], "1.0");
    assert_eq!(json["type"], "dev.vigil.alert.firing");
    assert_eq!(json["data"]["features"]["v.max"], 20.0);
    out.clear();
    // Next window is calm: the alert resolves.
    feed(&mut e, 0, 3, "a", 22_000, 1.0, &mut out);
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(out.alerts[0].status, AlertStatus::Resolved);
    assert_eq!(
        out.alerts[0].fingerprint,
        alert::fingerprint("p", "hot", "a")
    );
}

#[test]
fn late_events_update_within_allowed_lateness_and_are_dead_lettered_after() {
    let mut e = engine_with(
        "{name: w, size: 10s, allowedLateness: 5s}",
        "",
        EngineOptions {
            emit_windows: true,
            ..Default::default()
        },
    );
    let mut out = Outputs::default();
    feed(&mut e, 0, 0, "a", 1_000, 1.0, &mut out);
    feed(&mut e, 0, 1, "a", 12_000, 1.0, &mut out); // watermark 12s: [0,10s) fires
    assert_eq!(out.windows.len(), 1);
    feed(&mut e, 0, 2, "a", 5_000, 3.0, &mut out); // late, within lateness (10s + 5s > 12s)
    assert_eq!(out.windows.len(), 2);
    let upd = &out.windows[1];
    assert!(upd.update);
    assert!(upd.features.contains(&("v.count".to_string(), 2.0)));
    assert!(upd.features.contains(&("v.max".to_string(), 3.0)));
    feed(&mut e, 0, 3, "a", 15_000, 1.0, &mut out); // watermark 15s: [0,10s) closed for good
    feed(&mut e, 0, 4, "a", 6_000, 9.0, &mut out);
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].reason.kind(), "late");
    assert_eq!(out.dead_letters[0].offset, 4);
    assert_eq!(e.counters().late_dropped, 1);
    assert_eq!(e.counters().late_updates, 1);
}

#[test]
fn malformed_events_are_dead_lettered_with_reason() {
    let mut e = engine_with("{name: w, size: 10s}", "", EngineOptions::default());
    let mut out = Outputs::default();
    e.process(
        &RawRecord {
            partition: 3,
            offset: 7,
            key: Some(b"x"),
            payload: b"{\"k\":\"a\",\"v\":1}",
        },
        0,
        &mut out,
    );
    assert_eq!(out.dead_letters.len(), 1);
    let d = &out.dead_letters[0];
    assert_eq!((d.partition, d.offset), (3, 7));
    assert_eq!(d.payload, b"{\"k\":\"a\",\"v\":1}");
    assert_eq!(d.reason.to_string(), "decode: missing event time field `t`");
    // Its offset is done: nothing holds it.
    assert_eq!(e.committable_offsets(), vec![(3, 8)]);
}

#[test]
fn each_partition_fires_on_its_own_watermark_and_an_idle_one_follows_the_others() {
    let mut e = engine_with(
        "{name: w, size: 10s, idleTimeout: 5s}",
        "",
        EngineOptions {
            emit_windows: true,
            ..Default::default()
        },
    );
    let mut out = Outputs::default();
    let p = |t: i64| format!(r#"{{"k":"a","t":{t},"v":1}}"#).into_bytes();
    let mut send = |e: &mut Engine, partition: i32, offset: i64, t: i64, now: i64| {
        e.process(
            &RawRecord {
                partition,
                offset,
                key: None,
                payload: &p(t),
            },
            now,
            &mut out,
        );
    };
    send(&mut e, 0, 0, 1_000, 0);
    send(&mut e, 1, 0, 500, 0);
    send(&mut e, 0, 1, 30_000, 1_000);
    // Partition 0's [0, 10s) fires on its own watermark; partition 1 (at 0.5 s) does not hold it.
    assert_eq!(e.partition_watermark(0, 0), Watermark::EventTime(30_000));
    assert_eq!(e.partition_watermark(1, 0), Watermark::EventTime(500));
    assert_eq!(
        e.watermarks()[0].1,
        Watermark::EventTime(500),
        "the furthest behind"
    );
    let mut out2 = Outputs::default();
    // Partition 1 idle for 7 s > 5 s: it follows the others and fires its window too.
    e.advance(7_000, &mut out2);
    assert_eq!(e.partition_watermark(1, 0), Watermark::EventTime(30_000));
    assert_eq!(out2.windows.len(), 1, "{:?}", out2.windows);
}

/// The data loss of a takeover: a partition assigned after the others have read far ahead
/// replays its backlog against its own watermark, so none of it is late.
#[test]
fn a_taken_over_partition_replays_its_backlog_without_late_events() {
    let mut e = engine_with("{name: w, size: 10s}", HOT, EngineOptions::default());
    let mut out = Outputs::default();
    for i in 0..100 {
        feed(&mut e, 0, i, "a", i * 1_000, 1.0, &mut out);
    }
    assert_eq!(e.partition_watermark(0, 0), Watermark::EventTime(99_000));
    e.assign_partitions(&[1], 0);
    for i in 0..100 {
        feed(&mut e, 1, i, "b", i * 1_000, 20.0, &mut out);
    }
    assert!(
        out.dead_letters.is_empty(),
        "{:?}",
        out.dead_letters.first()
    );
    assert_eq!(e.counters().late_dropped, 0);
    assert!(
        out.alerts.iter().any(|a| a.key == "b"),
        "the backlog's windows fired"
    );
}

#[test]
fn committable_offsets_never_pass_an_open_window() {
    let mut e = engine_with("{name: w, size: 10s}", "", EngineOptions::default());
    let mut out = Outputs::default();
    feed(&mut e, 0, 100, "a", 1_000, 1.0, &mut out);
    feed(&mut e, 0, 101, "b", 2_000, 1.0, &mut out);
    assert_eq!(e.committable_offsets(), vec![(0, 100)]);
    feed(&mut e, 0, 102, "a", 10_500, 1.0, &mut out); // [0,10s) fires and is purged
    assert_eq!(e.committable_offsets(), vec![(0, 102)]);
    e.revoke_partitions(&[0]);
    assert_eq!(e.key_count(), 0);
    assert!(e.committable_offsets().is_empty());
}

#[test]
fn rule_reload_keeps_state_of_unchanged_rules() {
    let mut e = engine_with("{name: w, size: 10s}", HOT, EngineOptions::default());
    let mut out = Outputs::default();
    feed(&mut e, 0, 0, "a", 1_000, 20.0, &mut out);
    feed(&mut e, 0, 1, "a", 10_000, 20.0, &mut out);
    assert_eq!(out.alerts.len(), 1);
    let mut m = Manifests::default();
    m.add_str("r", HOT).unwrap();
    m.add_str(
        "r2",
        &HOT.replace("name: hot", "name: cold")
            .replace("'>'", "'<'")
            .replace("value: 10", "value: 0"),
    )
    .unwrap();
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    assert!(e.replace_rules(&refs, &[]).is_empty());
    assert_eq!(e.rule_names(), vec!["hot", "cold"]);
    feed(&mut e, 0, 2, "a", 20_000, 20.0, &mut out);
    // `hot` was already firing: no second firing after the reload.
    assert_eq!(out.alerts.len(), 1);
}

#[test]
fn duplicate_and_backwards_timestamps_are_counted_once_each() {
    let mut e = engine_with(
        "{name: w, size: 10s, maxOutOfOrderness: 5s}",
        "",
        EngineOptions {
            emit_windows: true,
            ..Default::default()
        },
    );
    let mut out = Outputs::default();
    for (i, t) in [3_000, 3_000, 2_000, 9_000, 1_000].into_iter().enumerate() {
        feed(&mut e, 0, i as i64, "a", t, i as f64, &mut out);
    }
    e.flush(0, &mut out);
    assert_eq!(out.windows.len(), 1);
    let f = &out.windows[0].features;
    assert!(f.contains(&("v.count".to_string(), 5.0)));
    assert!(
        f.contains(&("v.last".to_string(), 3.0)),
        "last is the value at the greatest event time: {f:?}"
    );
}

proptest! {
    /// Whatever the arrival order, with out-of-orderness covering it, each fired hopping window
    /// equals a naive recomputation over its events.
    #[test]
    fn fired_windows_match_naive(mut events in prop::collection::vec((0i64..120_000, 0.0f64..100.0), 1..120), seed in any::<u64>()) {
        // Shuffle deterministically, then bound disorder by sorting within 20 s buckets.
        events.sort_by_key(|e| (e.0 / 20_000, (e.0 as u64).wrapping_mul(seed | 1) % 97));
        let mut e = engine_with("{name: w, size: 30s, slide: 10s, maxOutOfOrderness: 40s}", "", EngineOptions { emit_windows: true, ..Default::default() });
        let mut out = Outputs::default();
        for (i, &(t, v)) in events.iter().enumerate() {
            feed(&mut e, 0, i as i64, "k", t, v, &mut out);
        }
        e.flush(0, &mut out);
        prop_assert_eq!(e.counters().late_dropped, 0);
        let mut seen = std::collections::BTreeSet::new();
        for w in &out.windows {
            prop_assert!(seen.insert(w.start), "window {} fired twice", w.start);
            let inside: Vec<f64> = events.iter().filter(|x| x.0 >= w.start && x.0 < w.end).map(|x| x.1).collect();
            let get = |n: &str| w.features.iter().find(|f| f.0 == n).map(|f| f.1).unwrap();
            prop_assert_eq!(get("v.count"), inside.len() as f64);
            let sum: f64 = inside.iter().sum();
            prop_assert!((get("v.sum") - sum).abs() < 1e-6);
        }
        // Every window with events fired.
        let expected: std::collections::BTreeSet<i64> = events.iter().flat_map(|x| {
            let last = x.0 - x.0 % 10_000;
            (0..3).map(move |i| last - i * 10_000)
        }).collect();
        prop_assert_eq!(seen, expected);
    }
}

/// One event far in the future (a device with a wrong clock, a year-9999 typo) is dead-lettered
/// with reason `future` and does not move the clock: the events after it are not late.
#[test]
fn a_far_future_event_does_not_poison_the_watermark() {
    let mut e = engine_with(
        "{name: w, size: 10s, maxOutOfOrderness: 1s}",
        HOT,
        EngineOptions::default(),
    );
    let mut out = Outputs::default();
    let now = 1_700_000_000_000;
    let send = |e: &mut Engine, offset: i64, t: i64, out: &mut Outputs| {
        let payload = rec(0, offset, "a", t, 20.0);
        e.process(
            &RawRecord {
                partition: 0,
                offset,
                key: None,
                payload: &payload,
            },
            now,
            out,
        )
    };
    assert!(send(&mut e, 0, now - 60_000, &mut out).is_some());
    // Ten minutes ahead of processing time, and year 9999.
    assert!(send(&mut e, 1, now + 600_000, &mut out).is_none());
    assert!(send(&mut e, 2, 253_402_300_000_000, &mut out).is_none());
    assert_eq!(out.dead_letters.len(), 2);
    assert!(out.dead_letters.iter().all(|d| d.reason.kind() == "future"));
    assert!(
        out.dead_letters[0]
            .reason
            .to_string()
            .contains("more than maxFutureSkew 300000 ms"),
        "{}",
        out.dead_letters[0].reason
    );
    out.dead_letters.clear();
    // Valid events after them are processed, not late; within the skew is fine.
    for (i, t) in [now - 59_000, now - 30_000, now + 60_000]
        .into_iter()
        .enumerate()
    {
        assert!(send(&mut e, 3 + i as i64, t, &mut out).is_some());
    }
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(e.counters().future_dropped, 2);
    assert_eq!(e.counters().late_dropped, 0);
    assert_eq!(e.dead_letter_reasons().top(1)[0].1, 2);
}

#[test]
fn idle_keys_expire_after_the_idle_timeout_and_active_ones_stay() {
    let mut m = Manifests::default();
    m.add_str(
        "p",
        "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}\n  windows: [{name: w, size: 1s, maxOutOfOrderness: 0s, allowedLateness: 2s}]\n  sinks: {alerts: {topic: a}}\n  keyState: {idleTimeout: 10s, maxKeys: 3}\n",
    )
    .unwrap();
    m.add_str("r", HOT).unwrap();
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    let (mut e, _) =
        Engine::from_resources(&m.pipelines[0], &refs, &[], EngineOptions::default()).unwrap();
    let mut out = Outputs::default();
    let mut offset = 0;
    let mut send = |e: &mut Engine, key: &str, t: i64, out: &mut Outputs| {
        offset += 1;
        feed(e, 0, offset, key, t, 1.0, out);
    };
    for t in (0..3_000).step_by(500) {
        send(&mut e, "a", t, &mut out);
        send(&mut e, "b", t, &mut out);
    }
    assert_eq!(e.key_count(), 2);
    // Only `a` goes on: `b` expires once 10 s of event time passed and its panes are gone.
    for t in (3_000..12_000).step_by(500) {
        send(&mut e, "a", t, &mut out);
    }
    assert_eq!(
        e.key_count(),
        2,
        "b is idle for less than 10 s plus its last window"
    );
    for t in (12_000..20_000).step_by(500) {
        send(&mut e, "a", t, &mut out);
    }
    assert_eq!(e.key_count(), 1);
    assert_eq!(e.counters().keys_expired, 1);
    // A returning key starts fresh; a fourth key beyond maxKeys = 3 is dead-lettered.
    send(&mut e, "b", 20_000, &mut out);
    send(&mut e, "c", 20_000, &mut out);
    assert_eq!(e.key_count(), 3);
    assert!(out.dead_letters.is_empty());
    send(&mut e, "d", 20_000, &mut out);
    assert_eq!(e.key_count(), 3);
    assert_eq!(e.counters().keys_refused, 1);
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].reason.kind(), "keys");
    assert!(
        out.dead_letters[0]
            .reason
            .to_string()
            .contains("maxKeys = 3"),
        "{}",
        out.dead_letters[0].reason
    );
    // Known keys go on.
    send(&mut e, "a", 20_500, &mut out);
    assert_eq!(out.dead_letters.len(), 1);
}

#[test]
fn a_traced_event_gives_its_trace_to_the_window_it_lands_in_when_a_later_record_fires_it() {
    let mut e = engine_with(
        "{name: w, size: 10s, maxOutOfOrderness: 2s}",
        HOT,
        EngineOptions::default(),
    );
    let mut out = Outputs::default();
    let tp: crate::TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into();
    let traced = rec(0, 0, "a", 1_000, 20.0);
    e.process_traced(
        &RawRecord {
            partition: 0,
            offset: 0,
            key: None,
            payload: &traced,
        },
        tp.clone(),
        0,
        &mut out,
    );
    // Key b is hot in the same window but untraced.
    feed(&mut e, 0, 1, "b", 2_000, 30.0, &mut out);
    assert!(out.fired_traces.is_empty());
    // An untraced record of another key moves the watermark past the window's end.
    feed(&mut e, 0, 2, "c", 12_000, 1.0, &mut out);
    assert_eq!(out.alerts.len(), 2, "{:?}", out.alerts);
    let by_key = |k: &str| out.alerts.iter().find(|a| a.key == k).unwrap();
    assert_eq!(by_key("a").trace.as_ref(), Some(&tp));
    assert_eq!(by_key("b").trace, None);
    assert_eq!(out.fired_traces.len(), 1);
    assert_eq!(
        (
            &*out.fired_traces[0].key,
            out.fired_traces[0].start,
            out.fired_traces[0].end
        ),
        ("a", 0, 10_000)
    );
    // The CloudEvent carries it as the `traceparent` extension; the data does not.
    let json: serde_json::Value =
        serde_json::from_slice(&by_key("a").to_cloudevent_json()).unwrap();
    assert_eq!(json["traceparent"], &*tp);
    assert!(json["data"].get("trace").is_none());
    let json: serde_json::Value =
        serde_json::from_slice(&by_key("b").to_cloudevent_json()).unwrap();
    assert!(json.get("traceparent").is_none());
    // The next window of a holds no traced event.
    out.clear();
    feed(&mut e, 0, 3, "a", 13_000, 50.0, &mut out);
    feed(&mut e, 0, 4, "c", 40_000, 1.0, &mut out);
    assert!(
        out.alerts.iter().all(|a| a.trace.is_none()),
        "{:?}",
        out.alerts
    );
    assert!(out.fired_traces.is_empty());
}

#[test]
fn reference_data_reaches_templates_and_cel_and_a_reload_applies_to_the_next_alert() {
    let rules = "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: hot}\nspec:\n  window: w\n  threshold: {field: v, feature: max, operator: '>', value: 10}\n  labels: {site: '{{ attributes.site }}'}\n  annotations: {owner: '{{ attributes.owner }}'}\n---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: berlin-hot}\nspec:\n  window: w\n  expression: {expr: \"attributes.site == 'berlin' && features.v.max > 10.0\"}\n---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: owned-hot}\nspec:\n  window: w\n  expression: {expr: \"has(attributes.owner) && features.v.max > 10.0\"}\n";
    let mut e = engine_with("{name: w, size: 10s}", rules, EngineOptions::default());
    let data = crate::enrichment::parse(b"pump-1: {site: berlin, owner: ana}\n").unwrap();
    let reference = std::sync::Arc::new(crate::enrichment::ReferenceData::new(
        data,
        std::collections::BTreeMap::from([("site".to_string(), "unknown".to_string())]),
    ));
    e.set_reference(Some(reference.clone()));
    let mut out = Outputs::default();
    // Both keys hot in [0, 10s); the next event fires the window.
    feed(&mut e, 0, 0, "pump-1", 1_000, 50.0, &mut out);
    feed(&mut e, 0, 1, "pump-2", 1_000, 50.0, &mut out);
    feed(&mut e, 0, 2, "pump-1", 11_000, 1.0, &mut out);
    let firing = |out: &Outputs, rule: &str, key: &str| {
        out.alerts
            .iter()
            .find(|a| a.rule == rule && a.key == key && a.status == AlertStatus::Firing)
            .cloned()
    };
    let a = firing(&out, "hot", "pump-1").expect("pump-1 fires");
    assert_eq!(a.labels["site"], "berlin");
    assert_eq!(a.annotations["owner"], "ana");
    // Not listed: the default attributes; a missing attribute renders empty.
    let b = firing(&out, "hot", "pump-2").expect("pump-2 fires");
    assert_eq!(b.labels["site"], "unknown");
    assert_eq!(b.annotations["owner"], "");
    // CEL sees the attributes: only the Berlin pump matches.
    assert!(firing(&out, "berlin-hot", "pump-1").is_some());
    assert!(firing(&out, "berlin-hot", "pump-2").is_none());
    assert!(firing(&out, "owned-hot", "pump-1").is_some());
    assert!(
        firing(&out, "owned-hot", "pump-2").is_none(),
        "no owner attribute"
    );
    // A reload: pump-2 moves to Berlin; its next alert says so.
    reference.replace(crate::enrichment::parse(b"pump-2: {site: berlin, owner: ben}\n").unwrap());
    out.clear();
    feed(&mut e, 0, 3, "pump-2", 21_000, 50.0, &mut out);
    feed(&mut e, 0, 4, "pump-2", 31_000, 1.0, &mut out);
    assert!(
        firing(&out, "berlin-hot", "pump-2").is_some(),
        "{:?}",
        out.alerts
    );
}
