//! Hostile input on a real broker (`KAFKA_BOOTSTRAP`): every bad record reaches the dead-letter
//! topic with a reason, the dead-letter record always fits (the original bytes are cut to
//! `maxPayloadBytes` and the record says so), an output the broker refuses for good is counted
//! instead of stopping the detector, far-future and out-of-range event times do not poison the
//! watermark, and every valid record is processed.

mod kafka_support;

use std::time::Duration;

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use vigil_detector::runner::{self, Control, RunnerConfig};
use vigil_detector::source::admin;
use vigil_detector::telemetry::Metrics;

fn pipeline(src: &str, group: &str, alerts: &str, kpis: &str, dead: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: hostile}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s}}]
  sinks: {{alerts: {{topic: {alerts}}}, kpis: {{topic: {kpis}}}, deadLetter: {{topic: {dead}}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: high}}
spec: {{window: w, threshold: {{field: v, feature: max, operator: '>', value: 100}}}}
"#
    )
}

/// The dead-letter reason and a part of its error text; `None` for a valid record.
type Expected = Option<(&'static str, &'static str)>;

/// Produces records up to 8 MB (the topic's `max.message.bytes` decides what it takes).
fn produce_large(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "8000000")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    for (k, v) in records {
        p.send(BaseRecord::<str, [u8]>::to(topic).key(k).payload(&v[..]))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

#[test]
fn hostile_records_are_dead_lettered_and_processing_goes_on() {
    let b = bootstrap();
    let (src, alerts, kpis, dead, group) = (
        unique("src"),
        unique("alerts"),
        unique("kpis"),
        unique("dead"),
        unique("group"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&kpis, 1), (&dead, 1)]);
    let (p, rules) = manifests(&pipeline(&src, &group, &alerts, &kpis, &dead));
    let metrics = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), metrics.clone()).unwrap();

    let now = vigil_detector::runner::wall_clock_ms();
    let t0 = now - 60_000;
    let ok = |t: i64, v: f64| format!(r#"{{"k":"a","t":{t},"v":{v}}}"#).into_bytes();
    let big_key = "K".repeat(999_000);
    let huge_time = "9".repeat(600_000);
    let mut huge_json = b"{\"k\":\"a\",\"t\":".to_vec();
    huge_json.extend(std::iter::repeat_n(b'[', 1_040_000));
    // (record, expected dead-letter reason and error, or None for a valid record)
    let cases: Vec<(Vec<u8>, Expected)> = vec![
        (ok(t0, 1.0), None),
        (huge_json.clone(), Some(("decode", "invalid JSON"))),
        (Vec::new(), Some(("decode", "invalid JSON"))),
        (b"null".to_vec(), Some(("decode", "missing key field `k`"))),
        (
            vec![0xff, 0xfe, 0x00, 0x01],
            Some(("decode", "invalid JSON")),
        ),
        (
            format!(r#"{{"k":"a","t":{t0},"v":"NaN"}}"#).into_bytes(),
            Some(("decode", "field `v` is not a finite number")),
        ),
        (
            format!(r#"{{"k":"a","t":{t0},"v":"1e400"}}"#).into_bytes(),
            Some(("decode", "field `v` is not a finite number")),
        ),
        (
            format!(r#"{{"k":"a","t":{t0},"v":1,"v":2}}"#).into_bytes(),
            Some(("decode", "member `v` occurs more than once")),
        ),
        (
            format!(r#"{{"k":"a","t":"{huge_time}","v":1}}"#).into_bytes(),
            Some(("decode", "(600000 bytes)")),
        ),
        (
            format!(r#"{{"k":"a","t":{},"v":1}}"#, i64::MAX).into_bytes(),
            Some(("decode", "outside the supported range")),
        ),
        (
            br#"{"k":"a","t":"9999-12-31T00:00:00Z","v":1}"#.to_vec(),
            Some(("future", "more than maxFutureSkew")),
        ),
        (
            format!(r#"{{"k":"a","t":{},"v":1}}"#, now + 600_000).into_bytes(),
            Some(("future", "more than maxFutureSkew")),
        ),
        (
            format!("{{\"k\":\"a\",\"t\":{t0},\"v\":\"\\u0000\"}}").into_bytes(),
            Some(("decode", "not a number")),
        ),
        // A valid event of a 999 kB key: its alert and KPI records are larger than the
        // producer takes; they are refused for good, counted, and processing goes on.
        (
            format!(r#"{{"k":"{big_key}","t":{t0},"v":500}}"#).into_bytes(),
            None,
        ),
        (ok(t0 + 500, 200.0), None),
        (ok(t0 + 1_500, 1.0), None),
        (ok(t0 + 3_000, 1.0), None),
    ];
    let records: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(v, _)| ("a".to_string(), v.clone()))
        .collect();
    produce_large(&b, &src, &records);
    let ends = admin::high_watermarks(&b, &src, Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .map(|(p, o)| (src.clone(), p, o))
        .collect();
    h.control()
        .send(Control::DrainAndStop { end_offsets: ends })
        .unwrap();
    let s = h.join().expect("the detector never stops on bad input");
    assert!(s.drained);
    let bad: Vec<(usize, (&str, &str))> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (_, e))| e.map(|e| (i, e)))
        .collect();
    assert_eq!(s.counters.records, cases.len() as u64);
    assert_eq!(
        s.dead_letters,
        bad.len() as u64,
        "{:?}",
        s.dead_letter_reasons
    );
    assert_eq!(s.counters.late_dropped, 0, "nothing valid became late");

    let got = read(&b, &dead, bad.len(), Duration::from_secs(30));
    assert_eq!(got.len(), bad.len());
    for (m, (i, (reason, error))) in got.iter().zip(&bad) {
        let offset = header(m, "vigil.source.offset").unwrap();
        assert_eq!(offset, i.to_string());
        assert_eq!(
            header(m, "vigil.reason").as_deref(),
            Some(*reason),
            "offset {i}"
        );
        let e = header(m, "vigil.error").unwrap();
        assert!(e.contains(error), "offset {i}: {e:?} lacks {error:?}");
        assert!(
            e.len() <= 1024,
            "offset {i}: a {} byte error header",
            e.len()
        );
        let original = &cases[*i].0;
        let payload = m.payload().unwrap_or_default();
        // maxPayloadBytes (900000) bounds key and value together; the key gets at most a
        // quarter of it.
        let key_len = m.key().map_or(0, <[u8]>::len);
        assert!(key_len <= 225_000, "offset {i}: a {key_len} byte key");
        let room = 900_000 - key_len;
        if original.len() > room {
            assert_eq!(
                payload,
                &original[..room],
                "offset {i}: cut to maxPayloadBytes"
            );
            assert_eq!(
                header(m, "vigil.truncated"),
                Some(original.len().to_string())
            );
        } else {
            assert_eq!(payload, &original[..], "offset {i}: original bytes");
            assert_eq!(header(m, "vigil.truncated"), None);
        }
    }
    // The valid records were processed: windows fired and the 200.0 event alerted.
    let alerts_read = read(&b, &alerts, 1, Duration::from_secs(20));
    assert!(
        alerts_read.iter().any(|m| json(m)["data"]["key"] == "a"),
        "no alert for key a"
    );
    let text = metrics.encode();
    assert!(
        text.contains(
            "vigil_outputs_rejected_total{sink=\"alerts\",code=\"MessageSizeTooLarge\"} 1"
        ) || text
            .contains("vigil_outputs_rejected_total{sink=\"kpis\",code=\"MessageSizeTooLarge\"} 1"),
        "{}",
        text.lines()
            .filter(|l| l.contains("rejected") || l.contains("delivery"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        text.contains("vigil_dead_letters_total{reason=\"future\"} 2"),
        "{text}"
    );
}

/// Resident set size of this process, bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Twelve rounds of hostile records, 5 MB values and 1 MB keys among them, on a source topic
/// that takes 6 MB records: the detector keeps going and its memory levels off; what a record
/// leaves behind (dead-letter copies, error texts, decode buffers) is not kept. The detector
/// runs in this test process, so the process's RSS is the detector's (plus the test's
/// producer, flushed between rounds).
#[test]
fn memory_stays_bounded_under_repeated_hostile_records() {
    let b = bootstrap();
    let (src, alerts, dead, group) = (
        unique("src"),
        unique("alerts"),
        unique("dead"),
        unique("group"),
    );
    create_topic_with(&b, &src, 1, &[("max.message.bytes", "6000000")]);
    create_topics(&b, &[(&alerts, 1), (&dead, 1)]);
    let yaml = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: hostile}}
spec:
  source: {{kafka: {{topics: [{src}], consumerGroup: {group}}}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  windows: [{{name: w, size: 1s}}]
  sinks: {{alerts: {{topic: {alerts}}}, deadLetter: {{topic: {dead}}}}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {{name: high}}
spec: {{window: w, threshold: {{field: v, feature: max, operator: '>', value: 100}}}}
"#
    );
    let (p, rules) = manifests(&yaml);
    let metrics = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), metrics.clone()).unwrap();
    let now = vigil_detector::runner::wall_clock_ms();
    let big_key = "K".repeat(1_000_000);
    let five_mb_string = format!(r#"{{"k":"a","t":{now},"v":"{}"}}"#, "9".repeat(5_000_000));
    let mut five_mb_nesting = b"{\"k\":\"a\",\"t\":".to_vec();
    five_mb_nesting.extend(std::iter::repeat_n(b'[', 5_000_000));
    let round = |r: i64| -> Vec<(String, Vec<u8>)> {
        let t = now - 600_000 + r * 10_000;
        vec![
            ("a".into(), five_mb_string.clone().into_bytes()),
            ("a".into(), five_mb_nesting.clone()),
            (
                big_key.clone(),
                format!(r#"{{"k":"{big_key}","t":{t},"v":1}}"#).into_bytes(),
            ),
            ("a".into(), vec![0xff; 1_000_000]),
            (
                "a".into(),
                format!(r#"{{"k":"a","t":{t},"v":"NaN"}}"#).into_bytes(),
            ),
            (
                "a".into(),
                format!(r#"{{"k":"a","t":{t},"v":500}}"#).into_bytes(),
            ),
        ]
    };
    const ROUNDS: i64 = 12;
    let per_round = round(0).len() as u64;
    let mut rss = Vec::new();
    for r in 0..ROUNDS {
        produce_large(&b, &src, &round(r));
        let want = per_round * (r as u64 + 1);
        assert!(
            wait_until(Duration::from_secs(60), || metrics.events_in() >= want),
            "round {r}: {} of {want} records processed",
            metrics.events_in()
        );
        rss.push(rss_bytes());
    }
    h.stop();
    let s = h.join().expect("the detector never stops on bad input");
    assert_eq!(s.counters.records, per_round * ROUNDS as u64);
    assert_eq!(
        s.dead_letters,
        4 * ROUNDS as u64,
        "{:?}",
        s.dead_letter_reasons
    );
    let mb = |b: u64| b as f64 / 1e6;
    let warm = rss[1];
    let last = *rss.last().unwrap();
    eprintln!(
        "RSS after each round (MB): {:?}; {:.0} MB of records in all",
        rss.iter().map(|b| mb(*b).round()).collect::<Vec<_>>(),
        mb(ROUNDS as u64
            * round(0)
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>())
    );
    // After the second round the process holds what it needs; ten more rounds (about 120 MB
    // of records) may add allocator slack, not a copy of what passed through.
    assert!(
        last <= warm + 48_000_000,
        "RSS grew from {:.0} MB to {:.0} MB over {} rounds: {:?}",
        mb(warm),
        mb(last),
        ROUNDS - 2,
        rss
    );
}
