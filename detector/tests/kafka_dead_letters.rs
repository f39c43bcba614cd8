//! Against a real broker (`KAFKA_BOOTSTRAP`): undecodable and too-late events go to the
//! dead-letter topic with their original bytes and the reason in headers; without a dead-letter
//! sink they are counted, and the detector keeps running.

mod kafka_support;

use std::time::Duration;

use kafka_support::*;
use rdkafka::Message;
use vigil_detector::runner::{self, Control, RunnerConfig};
use vigil_detector::source::admin;
use vigil_detector::telemetry::Metrics;

fn pipeline(src: &str, group: &str, alerts: &str, dead: Option<&str>) -> String {
    let dead = dead
        .map(|d| format!(", deadLetter: {{topic: {d}}}"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: dlq}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s}}]
  sinks: {{alerts: {{topic: {alerts}}}{dead}}}
"#
    )
}

fn records() -> Vec<(Option<&'static str>, Vec<u8>)> {
    vec![
        (Some("a"), b"not json".to_vec()),
        (Some("a"), br#"{"k":"a","v":1}"#.to_vec()),
        (Some("a"), br#"{"k":"a","t":5000,"v":1}"#.to_vec()),
        (Some("a"), br#"{"k":"a","t":7000,"v":1}"#.to_vec()),
        // Behind the watermark (7000) by more than the allowed lateness (0).
        (Some("a"), br#"{"k":"a","t":1000,"v":1}"#.to_vec()),
    ]
}

fn drain(h: &runner::RunnerHandle, b: &str, src: &str) {
    let ends = admin::high_watermarks(b, src, Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .map(|(p, o)| (src.to_string(), p, o))
        .collect();
    h.control()
        .send(Control::DrainAndStop { end_offsets: ends })
        .unwrap();
}

#[test]
fn malformed_and_late_events_reach_the_dead_letter_topic_with_reason_headers() {
    let b = bootstrap();
    let (src, alerts, dead, group) = (
        unique("src"),
        unique("alerts"),
        unique("dead"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&dead, 1)]);
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts, Some(&dead)));
    let metrics = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), metrics.clone()).unwrap();
    let input = records();
    produce(&b, &src, &input);
    drain(&h, &b, &src);
    let s = h.join().expect("drained");
    assert!(s.drained);
    assert_eq!(
        (
            s.counters.records,
            s.counters.decode_errors,
            s.counters.late_dropped,
            s.dead_letters
        ),
        (5, 2, 1, 3)
    );

    let got = read(&b, &dead, 3, Duration::from_secs(20));
    assert_eq!(got.len(), 3);
    let expect = [
        (0, "decode", "invalid JSON"),
        (1, "decode", "missing event time field `t`"),
        (4, "late", "late: event time 1000 ms"),
    ];
    for (m, (offset, reason, error)) in got.iter().zip(expect) {
        assert_eq!(
            m.payload(),
            Some(&input[offset].1[..]),
            "original bytes are kept"
        );
        assert_eq!(m.key(), Some(&b"a"[..]), "original key is kept");
        assert_eq!(header(m, "vigil.reason").as_deref(), Some(reason));
        let e = header(m, "vigil.error").unwrap();
        assert!(
            e.contains(error),
            "vigil.error {e:?} should contain {error:?}"
        );
        assert_eq!(
            header(m, "vigil.source.topic").as_deref(),
            Some(src.as_str())
        );
        assert_eq!(header(m, "vigil.source.partition").as_deref(), Some("0"));
        assert_eq!(header(m, "vigil.source.offset"), Some(offset.to_string()));
    }
    let text = metrics.encode();
    assert!(
        text.contains("vigil_dead_letters_total{reason=\"decode\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("vigil_dead_letters_total{reason=\"late\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("vigil_events_out_total{sink=\"dead_letters\"} 3"),
        "{text}"
    );
}

#[test]
fn without_a_dead_letter_sink_bad_events_are_counted_and_processing_goes_on() {
    let b = bootstrap();
    let (src, alerts, group) = (unique("src"), unique("alerts"), unique("group"));
    create_topics(&b, &[(&src, 1), (&alerts, 1)]);
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts, None));
    let metrics = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), metrics.clone()).unwrap();
    produce(&b, &src, &records());
    drain(&h, &b, &src);
    let s = h.join().expect("no crash");
    assert_eq!((s.counters.records, s.dead_letters), (5, 3));
    assert_eq!(
        s.counters.windows_fired, 2,
        "[5000, 6000) by the watermark and [7000, 8000) at the end of input"
    );
    assert!(
        metrics
            .encode()
            .contains("vigil_dead_letters_total{reason=\"decode\"} 2")
    );
}

/// A dead-letter topic that takes less than `maxPayloadBytes` (its `max.message.bytes` is
/// 100 kB): the copy of a 300 kB bad record, and of one with a 300 kB key as well, is cut to
/// fit the topic instead of being refused by the broker, and says how long the original was.
#[test]
fn dead_letter_copies_are_cut_to_what_the_topic_takes() {
    let b = bootstrap();
    let (src, alerts, dead, group) = (
        unique("src"),
        unique("alerts"),
        unique("dead"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1)]);
    create_topic_with(&b, &dead, 1, &[("max.message.bytes", "100000")]);
    let limits = admin::max_message_bytes(&b, &[dead.as_str()], Duration::from_secs(10)).unwrap();
    assert_eq!(
        limits,
        vec![(dead.clone(), 100_000)],
        "the topic reports its limit"
    );
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts, Some(&dead)));
    let metrics = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), metrics.clone()).unwrap();
    let big_value = vec![b'x'; 300_000];
    let big_key = "K".repeat(300_000);
    produce(
        &b,
        &src,
        &[
            (Some("a"), big_value.clone()),
            (Some(big_key.as_str()), big_value),
        ],
    );
    drain(&h, &b, &src);
    let summary = h.join().unwrap();
    assert_eq!(summary.dead_letters, 2);
    let got = read(&b, &dead, 2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "both dead letters reached the 100 kB topic");
    for m in &got {
        let size = m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len);
        assert!(size < 100_000, "{size} bytes");
        assert_eq!(header(m, "vigil.truncated").as_deref(), Some("300000"));
    }
    assert_eq!(
        header(&got[1], "vigil.key.truncated").as_deref(),
        Some("300000")
    );
    assert!(
        !metrics
            .encode()
            .lines()
            .any(|l| l.starts_with("vigil_outputs_rejected_total{") && !l.ends_with(" 0")),
        "no output was refused by the broker"
    );
}
