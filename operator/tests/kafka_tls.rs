//! The operator's partition lookup against a real broker with TLS listeners
//! (`scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"`): SSL with a client
//! certificate, SASL_SSL with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN, the credentials, CA and
//! client certificate taken from Secret contents as the operator reads them from the API
//! server; a wrong password and an untrusted CA give a reason, not partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use vigil_api::v1alpha1::KafkaSource;
use vigil_operator::kafka::{
    ClusterRef, KafkaMetadata, Partitions, SecretData, connection_properties,
};

fn var(k: &str) -> String {
    match std::env::var(k) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{k} is not set. This test needs the test broker's TLS listeners: run \
             `scripts/kafka.sh start && eval \"$(scripts/kafka.sh env)\"` first (a broker \
             started by an older scripts/kafka.sh needs `scripts/kafka.sh stop` first)."
        ),
    }
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A topic with `partitions` partitions, created over the SSL listener.
async fn create_topic(partitions: i32) -> String {
    let topic = format!(
        "operator-tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", var("KAFKA_TLS_BOOTSTRAP"))
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", var("KAFKA_TLS_CA"))
        .set("ssl.certificate.location", var("KAFKA_TLS_CLIENT_CERT"))
        .set("ssl.key.location", var("KAFKA_TLS_CLIENT_KEY"))
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    r[0].as_ref().unwrap();
    topic
}

/// What the operator would read from the API server: a SASL user Secret (`password` given),
/// a CA Secret and a `kubernetes.io/tls` Secret.
fn secrets(password: &str, ca: &str) -> SecretData {
    let mut s = SecretData::new();
    s.insert(
        "kafka-user".into(),
        BTreeMap::from([
            ("username".into(), var("KAFKA_SASL_USER").into_bytes()),
            ("password".into(), password.as_bytes().to_vec()),
        ]),
    );
    s.insert(
        "kafka-ca".into(),
        BTreeMap::from([("ca.crt".into(), read(ca))]),
    );
    s.insert(
        "kafka-client".into(),
        BTreeMap::from([
            ("tls.crt".into(), read(&var("KAFKA_TLS_CLIENT_CERT"))),
            ("tls.key".into(), read(&var("KAFKA_TLS_CLIENT_KEY"))),
        ]),
    );
    s
}

async fn lookup(
    md: &KafkaMetadata,
    bootstrap: &str,
    topic: &str,
    security: &str,
    secrets: &SecretData,
) -> Partitions {
    let kafka: KafkaSource = serde_norway::from_str(&format!(
        "{{topics: [{topic}], consumerGroup: g, security: {security}}}"
    ))
    .unwrap();
    let cluster = ClusterRef::of_source(bootstrap, "tests", &kafka);
    let source = &kafka;
    md.partitions(&cluster, &kafka.topics, || async move {
        connection_properties(source, secrets)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_lookup_over_ssl_and_sasl_ssl() {
    let (ssl, sasl_ssl) = (var("KAFKA_TLS_BOOTSTRAP"), var("KAFKA_SASL_SSL_BOOTSTRAP"));
    let topic = create_topic(3).await;
    let good = secrets(&var("KAFKA_SASL_PASSWORD"), &var("KAFKA_TLS_CA"));
    let md = KafkaMetadata::new(Duration::from_secs(10), Duration::from_secs(60));
    let want = Partitions::Known(BTreeMap::from([(topic.clone(), 3)]));
    for (bootstrap, security) in [
        (
            &ssl,
            "{protocol: SSL, caSecret: kafka-ca, clientCertSecret: kafka-client}",
        ),
        (
            &sasl_ssl,
            "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-256, credentialsSecret: kafka-user, caSecret: kafka-ca}",
        ),
        (
            &sasl_ssl,
            "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, credentialsSecret: kafka-user, caSecret: kafka-ca}",
        ),
        (
            &sasl_ssl,
            "{protocol: SASL_SSL, saslMechanism: PLAIN, credentialsSecret: kafka-user, caSecret: kafka-ca}",
        ),
    ] {
        assert_eq!(
            lookup(&md, bootstrap, &topic, security, &good).await,
            want,
            "{security}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_an_untrusted_ca_is_reported() {
    let (ssl, sasl_ssl) = (var("KAFKA_TLS_BOOTSTRAP"), var("KAFKA_SASL_SSL_BOOTSTRAP"));
    let topic = create_topic(1).await;
    let md = KafkaMetadata::new(Duration::from_secs(5), Duration::from_secs(60));
    let wrong = format!("{}-wrong", var("KAFKA_SASL_PASSWORD"));
    let started = std::time::Instant::now();
    let got = lookup(
        &md,
        &sasl_ssl,
        &topic,
        "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, credentialsSecret: kafka-user, caSecret: kafka-ca}",
        &secrets(&wrong, &var("KAFKA_TLS_CA")),
    )
    .await;
    let Partitions::Unknown(reason) = got else {
        panic!("{got:?}")
    };
    assert!(reason.contains("Authentication failed"), "{reason}");
    assert!(reason.contains(&sasl_ssl), "{reason}");
    assert!(!reason.contains(&wrong), "no password in {reason}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // The broker's CA is not among the system's (no caSecret: `ssl.ca.location=probe`).
    let got = lookup(
        &md,
        &ssl,
        &topic,
        "{protocol: SSL, clientCertSecret: kafka-client}",
        &secrets(&wrong, &var("KAFKA_TLS_CA")),
    )
    .await;
    let Partitions::Unknown(reason) = got else {
        panic!("{got:?}")
    };
    assert!(reason.contains("certificate verify failed"), "{reason}");
}
