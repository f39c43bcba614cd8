//! PagerDuty and webhook delivery against a local HTTP receiver: every request body is checked
//! against the published schemas (PagerDuty Events API v2 request, `schemas/pagerduty-events-v2.json`;
//! CloudEvents 1.0 JSON format, `schemas/cloudevents-1.0.json`), the CloudEvents HTTP binding's
//! structured-mode content type, and the Standard Webhooks signature, verified with OpenSSL (an
//! implementation independent of the detector's). Trigger and resolve of one episode share the
//! `dedup_key`. A 500 is retried and then delivered; a 400 is not retried and the transition is
//! handed back for the dead-letter topic. The alerts are real: an engine run over a series that
//! crosses a threshold rule and comes back.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::SinksSpec;
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};
use vigil_core::rules::alert::Alert;
use vigil_detector::notify::Notifier;
use vigil_detector::telemetry::Metrics;

const YAML: &str = r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: pumps}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {keyField: k, eventTime: {field: t}, wide: {fields: [{name: v}]}}
  features: [count, mean, max]
  windows: [{name: w, size: 1s, maxOutOfOrderness: 0s}]
  sinks: {alerts: {topic: a}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: hot}
spec:
  window: w
  severity: critical
  threshold: {field: v, feature: max, operator: '>', value: 50}
  labels: {team: plant}
  annotations: {summary: "{{ key }} at {{ v.max }}"}
"#;

/// Real alert transitions: two pumps, each hot for 3 s then cool again.
fn alerts() -> Vec<Alert> {
    let mut m = Manifests::default();
    m.add_str("t", YAML).unwrap();
    let rules = m.rules_for(&m.pipelines[0]);
    let (mut e, errors) =
        Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let mut out = Outputs::default();
    let base = 1_700_000_000_000_i64;
    for s in 0..12_i64 {
        for k in ["pump-1", "pump-2"] {
            let v = if (4..7).contains(&s) { 90 } else { 10 };
            let t = base + s * 1000;
            let payload = format!(r#"{{"k":"{k}","t":{t},"v":{v}}}"#);
            e.process(
                &RawRecord {
                    partition: 0,
                    offset: s,
                    key: None,
                    payload: payload.as_bytes(),
                },
                t,
                &mut out,
            );
        }
    }
    assert_eq!(out.alerts.len(), 4, "{:?}", out.alerts);
    out.alerts
}

/// What the receiver got: (path, headers, body).
type Got = Arc<Mutex<Vec<(String, Vec<(String, String)>, Vec<u8>)>>>;

/// A local receiver: `/ok` answers 202, `/flaky` 500 to the first request then 202, `/bad` 400.
struct Receiver {
    port: u16,
    got: Got,
    _rt: tokio::runtime::Runtime,
}

fn receiver() -> Receiver {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let got: Got = Arc::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let flaky_seen = Arc::new(Mutex::new(false));
    let store = got.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            let flaky_seen = flaky_seen.clone();
            async move {
                let path = uri.path().to_string();
                let hs = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                store
                    .lock()
                    .unwrap()
                    .push((path.clone(), hs, body.to_vec()));
                let status = match path.as_str() {
                    "/bad" => 400,
                    "/flaky" => {
                        let mut seen = flaky_seen.lock().unwrap();
                        let first = !*seen;
                        *seen = true;
                        if first { 500 } else { 202 }
                    }
                    _ => 202,
                };
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    r#"{"status":"success","message":"Event processed"}"#,
                )
            }
        },
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    Receiver { port, got, _rt: rt }
}

fn sinks(yaml: &str) -> SinksSpec {
    serde_norway::from_str(yaml).unwrap()
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schemas")
        .join(name);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::validator_for(&v).unwrap()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// HMAC-SHA256 by OpenSSL, base64.
fn openssl_hmac(key: &str, message: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-binary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl is needed to verify webhook signatures independently");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

#[test]
fn pagerduty_and_webhook_payloads_follow_their_schemas_and_signatures_verify() {
    let alerts = alerts();
    let r = receiver();
    let spec = sinks(&format!(
        "alerts: {{topic: a}}\npagerduty: {{routingKeySecret: pd, url: 'http://127.0.0.1:{p}/pd'}}\nwebhook: {{url: 'http://127.0.0.1:{p}/hook', signingKeySecret: hook}}\n",
        p = r.port
    ));
    let m = Metrics::new();
    // The Secrets' values, as the operator's environment variables would carry them.
    let secrets = |var: &str| match var {
        "VIGIL_PAGERDUTY_ROUTING_KEY" => Some("R0UT1NGK3Y".to_string()),
        "VIGIL_WEBHOOK_SIGNING_KEY" => Some("s3cr3t-signing-key".to_string()),
        _ => None,
    };
    let n = Notifier::with_secrets(&spec, m.clone(), &secrets)
        .unwrap()
        .unwrap();
    for a in &alerts {
        assert!(n.offer(a).is_empty());
    }
    let left = n.close(Duration::from_secs(20));
    assert!(left.is_empty(), "{left:?}");
    let got = r.got.lock().unwrap().clone();

    // PagerDuty: one event per transition, valid, trigger then resolve per episode.
    let pd_schema = schema("pagerduty-events-v2.json");
    // The schema bites: a trigger without its payload, a severity PagerDuty lacks.
    assert!(
        !pd_schema.is_valid(&serde_json::json!({"routing_key": "k", "event_action": "trigger"}))
    );
    assert!(!pd_schema.is_valid(
        &serde_json::json!({"routing_key": "k", "event_action": "trigger",
        "payload": {"summary": "s", "source": "x", "severity": "high"}})
    ));
    let pd: Vec<serde_json::Value> = got
        .iter()
        .filter(|g| g.0 == "/pd")
        .map(|g| serde_json::from_slice(&g.2).unwrap())
        .collect();
    assert_eq!(pd.len(), alerts.len());
    for (event, alert) in pd.iter().zip(&alerts) {
        let errors: Vec<String> = pd_schema
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{event}: {errors:?}");
        assert_eq!(event["routing_key"], "R0UT1NGK3Y");
        assert_eq!(event["dedup_key"], alert.fingerprint.as_str());
    }
    let triggers: Vec<&serde_json::Value> = pd
        .iter()
        .filter(|e| e["event_action"] == "trigger")
        .collect();
    let resolves: Vec<&serde_json::Value> = pd
        .iter()
        .filter(|e| e["event_action"] == "resolve")
        .collect();
    assert_eq!((triggers.len(), resolves.len()), (2, 2));
    for t in &triggers {
        assert!(resolves.iter().any(|r| r["dedup_key"] == t["dedup_key"]));
        assert_eq!(t["payload"]["severity"], "critical");
        assert_eq!(t["payload"]["group"], "pumps");
        assert_eq!(t["payload"]["class"], "hot");
        let key = t["payload"]["source"].as_str().unwrap();
        assert_eq!(t["payload"]["summary"], format!("{key} at 90.0"));
    }

    // Webhook: CloudEvents in structured mode, signed per Standard Webhooks.
    let ce_schema = schema("cloudevents-1.0.json");
    let hooks: Vec<_> = got.iter().filter(|g| g.0 == "/hook").collect();
    assert_eq!(hooks.len(), alerts.len());
    for (path, headers, body) in hooks {
        assert_eq!(path, "/hook");
        assert!(
            header(headers, "content-type")
                .is_some_and(|c| c.starts_with("application/cloudevents+json")),
            "{headers:?}"
        );
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        let errors: Vec<String> = ce_schema
            .iter_errors(&event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{event}: {errors:?}");
        assert!(
            event["type"]
                .as_str()
                .unwrap()
                .starts_with("dev.vigil.alert.")
        );
        let id = header(headers, "webhook-id").unwrap();
        assert_eq!(id, event["id"].as_str().unwrap());
        let ts = header(headers, "webhook-timestamp").unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!((now - ts.parse::<i64>().unwrap()).abs() < 60);
        let mut signed = format!("{id}.{ts}.").into_bytes();
        signed.extend_from_slice(body);
        assert_eq!(
            header(headers, "webhook-signature").unwrap(),
            format!("v1,{}", openssl_hmac("s3cr3t-signing-key", &signed))
        );
    }
    let metrics = m.encode();
    for receiver in ["pagerduty", "webhook"] {
        assert!(
            metrics.contains(&format!(
                "vigil_notifications_total{{receiver=\"{receiver}\",result=\"sent\"}} 4"
            )),
            "{metrics}"
        );
    }
}

#[test]
fn a_server_error_is_retried_and_a_refusal_is_handed_back() {
    let alerts = alerts();
    let r = receiver();
    let m = Metrics::new();
    // Without a signing key the webhook is not signed; no environment needed.
    let flaky = Notifier::from_spec(
        &sinks(&format!(
            "alerts: {{topic: a}}\nwebhook: {{url: 'http://127.0.0.1:{}/flaky'}}\n",
            r.port
        )),
        m.clone(),
    )
    .unwrap()
    .unwrap();
    assert!(flaky.offer(&alerts[0]).is_empty());
    // Delivered after one retry (closing would stop retries, so wait for it first).
    let sent = "vigil_notifications_total{receiver=\"webhook\",result=\"sent\"} 1";
    for _ in 0..200 {
        if m.encode().contains(sent) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let left = flaky.close(Duration::from_secs(20));
    assert!(left.is_empty(), "{left:?}");
    let metrics = m.encode();
    assert!(
        metrics.contains("vigil_notifications_total{receiver=\"webhook\",result=\"retried\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vigil_notifications_total{receiver=\"webhook\",result=\"sent\"} 1"),
        "{metrics}"
    );
    let flaky_posts = r
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.0 == "/flaky")
        .count();
    assert_eq!(flaky_posts, 2);

    let m = Metrics::new();
    let bad = Notifier::from_spec(
        &sinks(&format!(
            "alerts: {{topic: a}}\nwebhook: {{url: 'http://127.0.0.1:{}/bad'}}\n",
            r.port
        )),
        m.clone(),
    )
    .unwrap()
    .unwrap();
    assert!(bad.offer(&alerts[0]).is_empty());
    // Handed back once the worker gave up (no retry for a 400).
    let mut back = Vec::new();
    for _ in 0..200 {
        back.extend(bad.undelivered());
        if !back.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].receiver, "webhook");
    assert!(back[0].error.contains("HTTP 400"), "{}", back[0].error);
    assert_eq!(back[0].alert.fingerprint, alerts[0].fingerprint);
    let bad_posts = r
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.0 == "/bad")
        .count();
    assert_eq!(bad_posts, 1, "a 400 is not retried");
    assert!(bad.close(Duration::from_secs(5)).is_empty());
}
