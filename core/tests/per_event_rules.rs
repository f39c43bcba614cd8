//! Detector and ensemble rules through the engine: per-event scores, alerts at window end,
//! cooldown, ensemble members, compile errors, bounded state and rule reloads.

use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::DetectionRule;
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_core::rules::RuleError;
use vigil_core::rules::alert::AlertStatus;

const MIN: i64 = 60_000;

fn manifests(rules: &str) -> Manifests {
    let mut m = Manifests::default();
    m.add_str(
        "p",
        "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}\n  windows: [{name: w, size: 10m}]\n  sinks: {alerts: {topic: a}}\n",
    )
    .unwrap();
    m.add_str("r", rules).unwrap();
    m
}

fn engine(rules: &str) -> (Engine, Vec<RuleError>) {
    let m = manifests(rules);
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    Engine::from_resources(
        &m.pipelines[0],
        &refs,
        &[],
        EngineOptions {
            event_scores: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn rule(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {{name: {name}}}\nspec:\n  window: w\n{body}\n"
    )
}

/// A level detector that scores from its 50th event: the last 6 values forecast the next.
const LEVEL: &str = "  detector:\n    field: v\n    seasonal: {periods: [24h], levelEvents: 6, minEvents: 50}\n    calibration: {events: 500, minEvents: 50}\n    threshold: 0.5\n";

/// Deterministic noise in [-1, 1).
fn noise(i: i64) -> f64 {
    let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    2.0 * (x as f64 / (1u64 << 53) as f64) - 1.0
}

/// Feeds one event per minute from minute `from` to `to` (exclusive); `value(i)` gives the
/// value of minute `i`. Returns the event scores.
fn feed(
    e: &mut Engine,
    key: &str,
    from: i64,
    to: i64,
    value: impl Fn(i64) -> f64,
    out: &mut Outputs,
) -> Vec<f64> {
    let mut scores = Vec::new();
    for i in from..to {
        let t = i * MIN;
        let payload = format!(r#"{{"k":"{key}","t":{t},"v":{}}}"#, value(i));
        e.process(
            &RawRecord {
                partition: 0,
                offset: i,
                key: None,
                payload: payload.as_bytes(),
            },
            t,
            out,
        );
        scores.append(&mut out.event_scores);
    }
    scores
}

#[test]
fn a_detector_scores_every_event_and_alerts_for_the_window_of_an_outlier() {
    let (mut e, errors) = engine(&rule("level", LEVEL));
    assert!(errors.is_empty(), "{errors:?}");
    let mut out = Outputs::default();
    let calm = feed(&mut e, "a", 0, 600, noise, &mut out);
    assert_eq!(calm.len(), 600);
    assert!(calm[..50].iter().all(|s| *s == 0.0), "warming up");
    assert!(out.alerts.is_empty(), "{:?}", out.alerts);
    let spike = feed(&mut e, "a", 600, 601, |_| 40.0, &mut out);
    assert!(
        spike[0] > 0.5,
        "an outlier far beyond the last 500 errors: {}",
        spike[0]
    );
    feed(&mut e, "a", 601, 625, noise, &mut out);
    let firing: Vec<_> = out
        .alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{:?}", out.alerts);
    assert_eq!(
        (firing[0].rule.as_str(), firing[0].window_start),
        ("level", 600 * MIN)
    );
    assert_eq!(firing[0].value, Some(40.0));
    assert!(
        out.alerts.iter().any(|a| a.status == AlertStatus::Resolved),
        "the next window is calm"
    );
}

#[test]
fn a_cooldown_reports_zero_after_an_alarm() {
    let with = LEVEL.replace("threshold: 0.5\n", "threshold: 0.5\n    cooldown: 30m\n");
    let (mut e, _) = engine(&rule("level", &with));
    let (mut plain, _) = engine(&rule("level", LEVEL));
    let mut out = Outputs::default();
    let series = |i: i64| match i {
        600 => 40.0,
        610 => 80.0,
        _ => noise(i),
    };
    let cooled = feed(&mut e, "a", 0, 700, series, &mut out);
    let raw = feed(&mut plain, "a", 0, 700, series, &mut out);
    assert!(
        raw[600] > 0.5 && raw[610] > 0.5,
        "{} {}",
        raw[600],
        raw[610]
    );
    assert_eq!(cooled[600], raw[600]);
    assert_eq!(cooled[610], 0.0, "within 30 min of the alarm");
    assert_eq!(cooled[650..], raw[650..], "after the cooldown");
}

#[test]
fn ensemble_members_feed_the_ensemble_only() {
    let ens = "  ensemble:\n    members: [{rule: level, weight: 0.5}]\n    combine: Max\n    threshold: 0.2\n";
    let rules = rule("level", LEVEL) + &rule("combined", ens);
    let (mut e, errors) = engine(&rules);
    assert!(errors.is_empty(), "{errors:?}");
    let (mut alone, _) = engine(&rule("level", LEVEL));
    let mut out = Outputs::default();
    let series = |i: i64| if i == 600 { 40.0 } else { noise(i) };
    let combined = feed(&mut e, "a", 0, 620, series, &mut out);
    let alerts = std::mem::take(&mut out.alerts);
    let member = feed(&mut alone, "a", 0, 620, series, &mut out);
    for (c, m) in combined.iter().zip(&member) {
        assert!((c - 0.5 * m).abs() < 1e-12, "{c} vs {m}");
    }
    assert!(!alerts.is_empty());
    assert!(alerts.iter().all(|a| a.rule == "combined"), "{alerts:?}");
}

#[test]
fn invalid_ensembles_and_detectors_are_reported_with_their_field() {
    let cases = [
        (
            "  ensemble:\n    members: [{rule: nope}]\n",
            "spec.ensemble.members[0].rule",
        ),
        (
            "  detector:\n    field: v\n    seasonal: {periods: [7m]}\n",
            "spec.detector.seasonal.periods[0]",
        ),
        (
            "  detector:\n    field: v\n    seasonal: {}\n    changePoint: {}\n",
            "spec.detector",
        ),
        (
            "  detector:\n    field: nope\n    changePoint: {}\n",
            "spec.detector.field",
        ),
        (
            "  detector:\n    field: v\n    contextual: {levels: 0}\n",
            "spec.detector.contextual.levels",
        ),
        (
            "  detector:\n    field: v\n    contextual: {order: 5}\n",
            "spec.detector.contextual.order",
        ),
        (
            "  detector:\n    field: v\n    contextual: {warmupEvents: 1}\n",
            "spec.detector.contextual.warmupEvents",
        ),
        (
            "  ensemble:\n    members: [{rule: level}]\n    votes: 1\n",
            "spec.ensemble.votes",
        ),
    ];
    for (body, field) in cases {
        let (_, errors) = engine(&(rule("level", LEVEL) + &rule("bad", body)));
        assert_eq!(errors.len(), 1, "{body}: {errors:?}");
        assert_eq!(
            (errors[0].rule.as_str(), errors[0].error.field.as_str()),
            ("bad", field),
            "{body}"
        );
    }
    let nested = rule("level", LEVEL)
        + &rule("e1", "  ensemble:\n    members: [{rule: level}]\n")
        + &rule("e2", "  ensemble:\n    members: [{rule: e1}]\n");
    let (_, errors) = engine(&nested);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].rule, "e2");
}

#[test]
fn state_per_key_stays_bounded() {
    let rules = rule("level", LEVEL)
        + &rule(
            "cp",
            "  detector:\n    field: v\n    changePoint: {maxRunLength: 50}\n",
        );
    let (mut e, _) = engine(&rules);
    let mut out = Outputs::default();
    feed(&mut e, "a", 0, 3000, noise, &mut out);
    let bytes = e.state_bytes_per_key();
    feed(&mut e, "a", 3000, 6000, noise, &mut out);
    assert_eq!(e.state_bytes_per_key(), bytes);
}

#[test]
fn unchanged_detectors_keep_their_state_across_rule_reloads_and_replays_repeat() {
    let rules = rule("level", LEVEL)
        + &rule(
            "forest",
            "  detector:\n    field: v\n    randomCutForest: {trees: 10, sampleSize: 32}\n",
        )
        + &rule(
            "contextual",
            "  detector:\n    field: v\n    contextual: {warmupEvents: 50}\n    calibration: {minEvents: 50}\n",
        );
    let m = manifests(&rules);
    let refs: Vec<&DetectionRule> = m.rules.iter().collect();
    let (mut a, _) = engine(&rules);
    let (mut b, _) = engine(&rules);
    let mut out = Outputs::default();
    let series =
        |i: i64| (i as f64 / 30.0).sin() + 0.1 * noise(i) + if i == 500 { 5.0 } else { 0.0 };
    let mut first = feed(&mut a, "a", 0, 300, series, &mut out);
    assert!(a.replace_rules(&refs, &[]).is_empty());
    first.extend(feed(&mut a, "a", 300, 600, series, &mut out));
    let second = feed(&mut b, "a", 0, 600, series, &mut out);
    assert_eq!(first, second);
    assert!(first[500] > first[400]);
}
