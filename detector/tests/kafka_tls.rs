//! Against a real broker with TLS listeners (`scripts/kafka.sh start && eval "$(scripts/kafka.sh
//! env)"`: `KAFKA_TLS_BOOTSTRAP` is an SSL listener that requires a client certificate,
//! `KAFKA_SASL_SSL_BOOTSTRAP` a SASL_SSL listener with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512;
//! certificates made by the script with `openssl`): a detector configured through
//! `spec.source.kafka.security` and the environment the operator gives its pods
//! (`VIGIL_KAFKA_CA_FILE`, `VIGIL_KAFKA_CERT_FILE`, `VIGIL_KAFKA_KEY_FILE`,
//! `VIGIL_KAFKA_USERNAME`, `VIGIL_KAFKA_PASSWORD`) consumes, writes alerts and dead letters with
//! its producer and reads the sink topics' limits with its admin client; a wrong password, an
//! untrusted CA and a missing client certificate make the start fail with the reason.
//!
//! The detector reads its credentials from the process environment, which a test may not
//! change (`unsafe_code` is forbidden and other tests run in parallel threads): each test runs
//! its body in a child process of this test binary with its own environment.

mod kafka_support;

use std::process::Command;
use std::time::{Duration, Instant};

use kafka_support::{manifests, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use vigil_detector::runner::{self, Control, RunError, RunnerConfig};
use vigil_detector::source::{
    CA_FILE_ENV, CERT_FILE_ENV, KEY_FILE_ENV, PASSWORD_ENV, USERNAME_ENV, admin,
};
use vigil_detector::telemetry::Metrics;

/// The TLS side of the test broker, from `scripts/kafka.sh env`.
#[derive(Clone)]
struct Tls {
    ssl: String,
    sasl_ssl: String,
    ca: String,
    cert: String,
    key: String,
    user: String,
    password: String,
}

impl Tls {
    /// Panics with instructions when the broker's TLS variables are unset: these tests must
    /// not pass by skipping.
    fn from_env() -> Self {
        let var = |k: &str| match std::env::var(k) {
            Ok(v) if !v.is_empty() => v,
            _ => panic!(
                "{k} is not set. The Kafka TLS tests need the test broker's TLS listeners: run \
                 `scripts/kafka.sh start && eval \"$(scripts/kafka.sh env)\"` first (a broker \
                 started by an older scripts/kafka.sh needs `scripts/kafka.sh stop` first)."
            ),
        };
        Tls {
            ssl: var("KAFKA_TLS_BOOTSTRAP"),
            sasl_ssl: var("KAFKA_SASL_SSL_BOOTSTRAP"),
            ca: var("KAFKA_TLS_CA"),
            cert: var("KAFKA_TLS_CLIENT_CERT"),
            key: var("KAFKA_TLS_CLIENT_KEY"),
            user: var("KAFKA_SASL_USER"),
            password: var("KAFKA_SASL_PASSWORD"),
        }
    }

    /// The test's own clients (topics, input, reading the outputs): the SSL listener with the
    /// client certificate, set directly as librdkafka properties.
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.ssl)
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", &self.ca)
            .set("ssl.certificate.location", &self.cert)
            .set("ssl.key.location", &self.key);
        c
    }

    fn produce(&self, topic: &str, records: &[Vec<u8>]) {
        let p: ThreadedProducer<DefaultProducerContext> = self
            .client()
            .set("linger.ms", "1")
            .create()
            .expect("producer over SSL");
        for v in records {
            p.send(BaseRecord::<str, [u8]>::to(topic).key("a").payload(&v[..]))
                .map_err(|(e, _)| e)
                .expect("send");
        }
        p.flush(Duration::from_secs(30)).expect("flush over SSL");
    }

    fn read(&self, topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer over SSL");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                out.push(m.expect("consume over SSL").detach());
            }
        }
        out
    }
}

/// Environment variable that tells the child process which test body to run.
const CHILD: &str = "VIGIL_KAFKA_TLS_TEST_CHILD";

/// Runs `body` (case `case` of test `test`) in a child process of this test binary whose
/// environment has `env` and none of the detector's other Kafka credential variables; fails
/// with the child's output if it fails. In a child, runs `body` if `CHILD` names this case and
/// skips it otherwise.
fn in_child(test: &str, case: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    let id = format!("{test}/{case}");
    if let Ok(child) = std::env::var(CHILD) {
        if child == id {
            body();
        }
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &id);
    for k in [
        USERNAME_ENV,
        PASSWORD_ENV,
        CA_FILE_ENV,
        CERT_FILE_ENV,
        KEY_FILE_ENV,
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{id} failed in its child process:\n{text}"
    );
    // A filter that matches nothing also exits 0.
    assert!(
        text.contains("test result: ok. 1 passed"),
        "{id} did not run in its child process:\n{text}"
    );
}

const HOT: &str = "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: hot}\nspec: {window: w, threshold: {field: v, feature: max, operator: '>', value: 10}}\n";

fn pipeline(
    name: &str,
    security: &str,
    properties: &str,
) -> (String, String, String, String, String) {
    let (src, alerts, dead, group) = (
        unique("tls-src"),
        unique("tls-alerts"),
        unique("tls-dead"),
        unique("tls-group"),
    );
    let yaml = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {{name: {name}}}
spec:
  source:
    kafka:
      topics: [{src}]
      consumerGroup: {group}
      security: {security}
      properties: {{{properties}}}
  format: {{keyField: k, eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}
  windows: [{{name: w, size: 1s, maxOutOfOrderness: 0s}}]
  sinks: {{alerts: {{topic: {alerts}}}, deadLetter: {{topic: {dead}}}}}
---
{HOT}"#
    );
    (yaml, src, alerts, dead, group)
}

/// A detector on `bootstrap` with `security` (and `properties`) consumes an undecodable record
/// and two events, writes the firing alert and the dead letter through its producer, reads the
/// sink topics' limits through its admin client and drains.
fn detector_round_trip(t: &Tls, bootstrap: &str, security: &str, properties: &str) {
    let (yaml, src, alerts, dead, _group) = pipeline("tls", security, properties);
    let tls = t.client();
    admin::ensure_topics(&tls, &[(&src, 1), (&alerts, 1), (&dead, 1)]).expect("topics over SSL");
    let (p, rules) = manifests(&yaml);
    let mut cfg = RunnerConfig::new(p, rules, bootstrap);
    cfg.connect_timeout = Duration::from_secs(20);
    let metrics = Metrics::new();
    let h = runner::spawn(cfg, metrics.clone()).expect("the detector starts");
    t.produce(
        &src,
        &[
            b"not json".to_vec(),
            br#"{"k":"a","t":1000,"v":20}"#.to_vec(),
            br#"{"k":"a","t":2100,"v":1}"#.to_vec(),
        ],
    );
    let fired = t.read(&alerts, 1, Duration::from_secs(30));
    assert_eq!(fired.len(), 1, "the firing alert over {bootstrap}");
    let alert: serde_json::Value = serde_json::from_slice(fired[0].payload().unwrap()).unwrap();
    assert_eq!(alert["type"], "dev.vigil.alert.firing");
    assert_eq!(alert["data"]["value"], 20.0);
    let letters = t.read(&dead, 1, Duration::from_secs(30));
    assert_eq!(letters.len(), 1, "the dead letter over {bootstrap}");
    assert_eq!(letters[0].payload(), Some(&b"not json"[..]));
    let reason = letters[0]
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "vigil.reason"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(reason.as_deref(), Some("decode"));

    let ends = admin::high_watermarks(&tls, &src, Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .map(|(p, o)| (src.clone(), p, o))
        .collect();
    h.control()
        .send(Control::DrainAndStop { end_offsets: ends })
        .unwrap();
    let s = h.join().expect("drained");
    assert!(s.drained);
    assert_eq!((s.counters.records, s.dead_letters), (3, 1));
    assert!(s.alerts_sent >= 1);
    let text = metrics.encode();
    assert!(
        text.contains("vigil_events_out_total{sink=\"dead_letters\"} 1"),
        "{text}"
    );
}

/// The start fails within its timeout, and the error names the problem (`needle`).
fn start_fails(bootstrap: &str, security: &str, needle: &str) -> String {
    let (yaml, ..) = pipeline("tls-fail", security, "");
    let (p, rules) = manifests(&yaml);
    let mut cfg = RunnerConfig::new(p, rules, bootstrap);
    cfg.connect_timeout = Duration::from_secs(5);
    let started = Instant::now();
    let e = match runner::spawn(cfg, Metrics::new()) {
        Ok(h) => {
            h.stop();
            panic!("the detector started on {bootstrap} with {security}");
        }
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, RunError::Unreachable(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("cannot reach Kafka at {bootstrap}: ")),
        "{text}"
    );
    assert!(text.contains(needle), "{needle:?} not in: {text}");
    text
}

#[test]
fn ssl_with_a_client_certificate() {
    let t = Tls::from_env();
    in_child(
        "ssl_with_a_client_certificate",
        "client certificate",
        &[
            (CA_FILE_ENV, &t.ca),
            (CERT_FILE_ENV, &t.cert),
            (KEY_FILE_ENV, &t.key),
        ],
        || {
            detector_round_trip(
                &t,
                &t.ssl,
                "{protocol: SSL, caSecret: kafka-ca, clientCertSecret: kafka-client}",
                "",
            )
        },
    );
}

#[test]
fn ssl_without_the_client_certificate_is_refused() {
    let t = Tls::from_env();
    in_child(
        "ssl_without_the_client_certificate_is_refused",
        "no client certificate",
        &[(CA_FILE_ENV, &t.ca)],
        || {
            // The listener requires a certificate: the handshake fails, and the start says so.
            start_fails(&t.ssl, "{protocol: SSL, caSecret: kafka-ca}", "SSL");
        },
    );
}

fn sasl_env(t: &Tls) -> [(&'static str, &str); 3] {
    [
        (CA_FILE_ENV, &t.ca),
        (USERNAME_ENV, &t.user),
        (PASSWORD_ENV, &t.password),
    ]
}

#[test]
fn sasl_ssl_with_scram_sha_256() {
    let t = Tls::from_env();
    in_child(
        "sasl_ssl_with_scram_sha_256",
        "scram",
        &sasl_env(&t),
        || {
            detector_round_trip(
                &t,
                &t.sasl_ssl,
                "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-256, credentialsSecret: kafka-user, caSecret: kafka-ca}",
                "",
            )
        },
    );
}

#[test]
fn sasl_ssl_with_scram_sha_512() {
    let t = Tls::from_env();
    in_child(
        "sasl_ssl_with_scram_sha_512",
        "scram",
        &sasl_env(&t),
        || {
            detector_round_trip(
                &t,
                &t.sasl_ssl,
                "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, credentialsSecret: kafka-user, caSecret: kafka-ca}",
                "",
            )
        },
    );
}

/// PLAIN, with the CA given as `ssl.ca.location` in `spec.source.kafka.properties` instead of
/// `caSecret`: without it the clients would look for the system's CAs, which do not know the
/// test CA, so the alerts and dead letters arriving show that the property reached the
/// producer and the admin client too, not only the consumer.
#[test]
fn sasl_ssl_with_plain_and_the_ca_from_properties() {
    let t = Tls::from_env();
    let env = [(USERNAME_ENV, t.user.as_str()), (PASSWORD_ENV, &t.password)];
    in_child(
        "sasl_ssl_with_plain_and_the_ca_from_properties",
        "plain",
        &env,
        || {
            detector_round_trip(
                &t,
                &t.sasl_ssl,
                "{protocol: SASL_SSL, saslMechanism: PLAIN, credentialsSecret: kafka-user}",
                &format!("ssl.ca.location: '{}', fetch.min.bytes: '1'", t.ca),
            )
        },
    );
}

#[test]
fn a_wrong_password_fails_the_start_with_the_reason() {
    let t = Tls::from_env();
    let wrong = format!("{}-wrong", t.password);
    let env = [
        (CA_FILE_ENV, t.ca.as_str()),
        (USERNAME_ENV, &t.user),
        (PASSWORD_ENV, &wrong),
    ];
    in_child(
        "a_wrong_password_fails_the_start_with_the_reason",
        "wrong password",
        &env,
        || {
            for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
                let text = start_fails(
                    &t.sasl_ssl,
                    &format!(
                        "{{protocol: SASL_SSL, saslMechanism: {mechanism}, credentialsSecret: kafka-user, caSecret: kafka-ca}}"
                    ),
                    "SASL authentication error: Authentication failed",
                );
                // The broker names the mechanism for SCRAM ("... invalid credentials with SASL
                // mechanism SCRAM-SHA-256"), not for PLAIN ("Invalid username or password").
                if mechanism != "PLAIN" {
                    assert!(text.contains(mechanism), "{text}");
                }
                assert!(!text.contains(&wrong), "the password is not in the message");
            }
        },
    );
}

#[test]
fn an_untrusted_ca_fails_the_start_with_the_reason() {
    let t = Tls::from_env();
    // A CA of its own that did not sign the broker's certificate.
    let dir = tempfile::tempdir().unwrap();
    let (key, ca) = (dir.path().join("other.key"), dir.path().join("other.crt"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Some other CA",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(status.status.success(), "{status:?}");
    let other = ca.to_str().unwrap().to_string();
    let env = [
        (CA_FILE_ENV, other.as_str()),
        (CERT_FILE_ENV, &t.cert),
        (KEY_FILE_ENV, &t.key),
    ];
    in_child(
        "an_untrusted_ca_fails_the_start_with_the_reason",
        "other CA",
        &env,
        || {
            start_fails(
                &t.ssl,
                "{protocol: SSL, caSecret: kafka-ca, clientCertSecret: kafka-client}",
                "certificate verify failed",
            );
        },
    );
    // Without a CA the system's are used (`ssl.ca.location=probe`): they do not know the test
    // CA either.
    let env = [(USERNAME_ENV, t.user.as_str()), (PASSWORD_ENV, &t.password)];
    in_child(
        "an_untrusted_ca_fails_the_start_with_the_reason",
        "system CAs",
        &env,
        || {
            start_fails(
                &t.sasl_ssl,
                "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-256, credentialsSecret: kafka-user}",
                "certificate verify failed",
            );
        },
    );
}
