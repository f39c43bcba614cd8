use super::*;
use vigil_api::manifest::Manifests;

fn pipeline(format: &str) -> PipelineConfig {
    let yaml = format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {{name: p}}\nspec:\n  source: {{kafka: {{topics: [t], consumerGroup: g}}}}\n  format: {format}\n  windows: [{{name: w, size: 30s}}]\n  sinks: {{alerts: {{topic: a}}}}\n"
    );
    let mut m = Manifests::default();
    m.add_str("t", &yaml).unwrap();
    PipelineConfig::from_resource(&m.pipelines[0]).unwrap()
}

fn decode<'a>(
    cfg: &PipelineConfig,
    bytes: &'a [u8],
) -> Result<(Event<'a>, Vec<(String, f64)>), DecodeError> {
    let d = Decoder::new(cfg);
    let mut fields = FieldTable::for_layout(&cfg.layout);
    let mut values = Vec::new();
    let ev = d.decode(bytes, None, &mut fields, &mut values)?;
    let named = values
        .iter()
        .map(|&(i, v)| (fields.name(i).to_string(), v))
        .collect();
    Ok((ev, named))
}

#[test]
fn wide_event_with_datetime() {
    let cfg = pipeline(
        "{keyField: host, eventTime: {field: timestamp}, wide: {fields: [{name: value}, {name: cpu, path: m.cpu}]}}",
    );
    let (ev, vals) = decode(&cfg, br#"{"host":"a","timestamp":"2013-12-02 21:15:00","value":73.5,"m":{"cpu":"12.5","x":[1,2]},"extra":{"k":1}}"#).unwrap();
    assert_eq!(ev.key, "a");
    assert_eq!(ev.event_time_ms, 1_386_018_900_000);
    assert_eq!(
        vals,
        vec![("value".to_string(), 73.5), ("cpu".to_string(), 12.5)]
    );
}

#[test]
fn narrow_event_from_the_issue() {
    let cfg = pipeline(
        "{keyField: id, eventTime: {field: value.eventTimeMillis}, narrow: {parameterField: parameter, valueField: value.value}}",
    );
    let (ev, vals) = decode(&cfg, br#"{"id":"GT#4202137","parameter":"CurrentDownstream","value":{"eventTimeMillis":1548081433725,"value":2137.0}}"#).unwrap();
    assert_eq!(ev.key, "GT#4202137");
    assert_eq!(ev.event_time_ms, 1_548_081_433_725);
    assert_eq!(vals, vec![("CurrentDownstream".to_string(), 2137.0)]);
}

#[test]
fn rfc3339_and_numeric_key() {
    let cfg = pipeline(
        "{keyField: id, eventTime: {field: ts, format: Rfc3339}, wide: {fields: [{name: v}]}}",
    );
    let (ev, _) = decode(
        &cfg,
        br#"{"id":42,"ts":"2019-01-21T14:37:13.725+00:00","v":1}"#,
    )
    .unwrap();
    assert_eq!(ev.key, "42");
    assert_eq!(ev.event_time_ms, 1_548_081_433_725);
}

#[test]
fn errors_name_the_field() {
    let cfg = pipeline("{keyField: id, eventTime: {field: ts}, wide: {fields: [{name: v}]}}");
    let e = |b: &[u8]| decode(&cfg, b).unwrap_err().to_string();
    assert_eq!(e(br#"{"id":"a","v":1}"#), "missing event time field `ts`");
    assert_eq!(e(br#"{"ts":1,"v":1}"#), "missing key field `id`");
    assert_eq!(
        e(br#"{"id":"a","ts":1,"v":"hot"}"#),
        "field `v` is not a number"
    );
    assert_eq!(
        e(br#"{"id":"a","ts":1}"#),
        "no numeric field found (expected v)"
    );
    assert!(
        e(br#"{"id":"a","ts":"yesterday","v":1}"#)
            .starts_with("event time field `ts`: `yesterday` is neither")
    );
    assert!(e(b"not json").starts_with("invalid JSON"));
    assert!(e(br#"{"id":"a","ts":1,"v":1} trailing"#).starts_with("invalid JSON"));
}

#[test]
fn closed_parameter_set_rejects_unknown_parameters() {
    let cfg = pipeline(
        "{keyField: id, eventTime: {field: t}, narrow: {parameterField: p, valueField: v, parameters: [a]}}",
    );
    assert_eq!(
        decode(&cfg, br#"{"id":"x","t":1,"p":"b","v":2}"#).unwrap_err(),
        DecodeError::UnknownParameter("b".into())
    );
}

#[test]
fn non_finite_strings_are_errors_not_silently_dropped() {
    let cfg = pipeline("{keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}");
    for s in ["NaN", "nan", "inf", "-Infinity", "1e400"] {
        let payload = format!(r#"{{"k":"a","t":1000,"v":"{s}"}}"#);
        let e = decode(&cfg, payload.as_bytes()).unwrap_err();
        assert_eq!(e, DecodeError::NonFinite("v".into()), "{s}");
    }
    // As JSON numbers they are not JSON at all.
    for s in ["NaN", "Infinity", "1e400"] {
        let payload = format!(r#"{{"k":"a","t":1000,"v":{s}}}"#);
        assert!(
            matches!(
                decode(&cfg, payload.as_bytes()),
                Err(DecodeError::InvalidJson(_))
            ),
            "{s}"
        );
    }
}

#[test]
fn a_duplicated_member_is_an_error_not_counted_twice() {
    let cfg = pipeline("{keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}");
    let e = decode(&cfg, br#"{"k":"a","t":1000,"v":1,"v":2}"#).unwrap_err();
    assert_eq!(e, DecodeError::DuplicateMember("v".into()));
    let e = decode(&cfg, br#"{"k":"a","t":1000,"t":2000,"v":1}"#).unwrap_err();
    assert_eq!(e, DecodeError::DuplicateMember("t".into()));
    // Unmapped duplicates are none of the pipeline's business.
    decode(&cfg, br#"{"k":"a","t":1000,"v":1,"x":1,"x":2}"#).unwrap();
}

#[test]
fn event_times_outside_year_1_to_9999_are_rejected_without_overflow() {
    let cfg = pipeline("{keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}");
    for t in [
        i64::MAX.to_string(),
        i64::MIN.to_string(),
        "1e19".to_string(),
        "-1e19".to_string(),
        "253402300800000".to_string(),
    ] {
        let payload = format!(r#"{{"k":"a","t":{t},"v":1}}"#);
        let e = decode(&cfg, payload.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, DecodeError::BadEventTime { reason, .. } if reason.contains("outside the supported range")),
            "{t}: {e}"
        );
    }
    let (ev, _) = decode(&cfg, br#"{"k":"a","t":"9999-12-31 23:59:59","v":1}"#).unwrap();
    assert_eq!(ev.event_time_ms, MAX_EVENT_TIME_MS - 999);
}

#[test]
fn a_huge_bad_value_is_not_echoed_whole() {
    let cfg = pipeline("{keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}");
    let big = "x".repeat(600_000);
    let payload = format!(r#"{{"k":"a","t":"{big}","v":1}}"#);
    let e = decode(&cfg, payload.as_bytes()).unwrap_err().to_string();
    assert!(e.len() < 400, "{} bytes", e.len());
    assert!(e.contains("(600000 bytes)"), "{e}");
}
