//! Scoring over TLS and mutual TLS against the real model server (ONNX Runtime from
//! `ORT_DYLIB_PATH`), routed the way the operator renders it: an `https://` address in
//! `vigil.dev/model-server` and a directory of `ca.crt` (+ `tls.crt`, `tls.key`) in
//! `vigil.dev/model-server-tls`. Certificates are made in the test with the `openssl` CLI.
//! With client authentication on, a detector without a client certificate, or with one of
//! another CA, is refused; with its certificate it scores.

mod model_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use model_support::TestServer;
use vigil_api::contract::model_server::CLIENT_TLS_ANNOTATION;
use vigil_api::v1alpha1::{AnomalyModel, Feature, ScoreDirection};
use vigil_detector::scoring::{
    MODEL_SERVER_ANNOTATION, ModelContract, ModelInput, ModelScorer, ScorerConfig, ScoringMetrics,
};
use vigil_model_server::config::ServerTls;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `<name>-ca.{crt,key}` in `dir`.
fn ca(dir: &Path, name: &str) {
    let (crt, key) = (format!("{name}-ca.crt"), format!("{name}-ca.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// A leaf `<name>.{crt,key}` signed by CA `<ca>`, valid for 127.0.0.1 and localhost.
fn leaf(dir: &Path, ca: &str, name: &str, usage: &str) {
    let (crt, key, csr) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}-ca.crt"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext.display().to_string(),
        ],
    );
}

/// A client TLS directory as the operator mounts it: `ca.crt` (+ `tls.crt`, `tls.key`).
fn client_dir(root: &Path, name: &str, server_ca: &str, cert: Option<&str>) -> String {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(root.join(format!("{server_ca}-ca.crt")), d.join("ca.crt")).unwrap();
    if let Some(c) = cert {
        std::fs::copy(root.join(format!("{c}.crt")), d.join("tls.crt")).unwrap();
        std::fs::copy(root.join(format!("{c}.key")), d.join("tls.key")).unwrap();
    }
    d.display().to_string()
}

fn model(uri: &str, tls_dir: &str) -> AnomalyModel {
    let mut m: AnomalyModel = serde_norway::from_str(
        "apiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {name: iforest}\nspec:\n  revision: \"1\"\n  artifact: {uri: file://models/repository/iforest/1/model.onnx, sha256: 7e012d6a342083e143034a47c11a6858f749b9866baebfdb9d3965c8dd52e0cb}\n  input: {tensor: features, window: w, features: [v.mean]}\n  output: {tensor: scores, anomalousWhen: Below, threshold: 0.0}\n",
    )
    .unwrap();
    let a = m.metadata.annotations.get_or_insert_with(Default::default);
    a.insert(MODEL_SERVER_ANNOTATION.into(), uri.into());
    a.insert(CLIENT_TLS_ANNOTATION.into(), tls_dir.into());
    m
}

/// Two rows of the reference Isolation Forest's 11 features.
fn inputs() -> Vec<ModelInput> {
    let contract = Arc::new(ModelContract {
        model: "iforest".into(),
        version: "1".into(),
        tier: 0,
        slide_ms: 1000,
        features: vec![(0, Feature::Mean); 11],
        feature_names: (0..11).map(|i| format!("f{i}")).collect(),
        normalization: Vec::new(),
        lookback: 1,
        threshold: 0.0,
        anomalous_when: ScoreDirection::Below,
        scale: 1.0,
        rollout: None,
    });
    (0..2)
        .map(|k| ModelInput {
            rule: 0,
            rule_name: "r".into(),
            contract: contract.clone(),
            key_id: k,
            key: format!("k{k}").into(),
            window_start: 0,
            window_end: 1000,
            values: vec![50.0 + k as f32; 11],
            raw_features: vec![50.0; 11],
            candidate: false,
            shadow: false,
            trace: None,
            closed_ms: 0,
        })
        .collect()
}

/// Scores [`inputs`] through the detector's scorer routed by `model`'s annotations; the
/// number scored and the scorer (for its error counters).
fn score(m: &AnomalyModel) -> (usize, ScoringMetrics) {
    let metrics = ScoringMetrics::default();
    let mut s = ModelScorer::new(
        ScorerConfig {
            retries: 0,
            ..ScorerConfig::default()
        },
        metrics.clone(),
    )
    .unwrap();
    s.route_models(&[m], None)
        .expect("the TLS files are readable");
    (s.score(inputs()).scored.len(), metrics)
}

#[test]
fn mutual_tls_scores_with_the_client_certificate_and_refuses_without() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    ca(root, "vigil");
    ca(root, "rogue");
    leaf(root, "vigil", "server", "serverAuth");
    leaf(root, "vigil", "detector", "clientAuth");
    leaf(root, "rogue", "intruder", "clientAuth");
    let read = |f: &str| std::fs::read(root.join(f)).unwrap();
    let server = TestServer::start_with(
        0,
        Some(ServerTls {
            cert_pem: read("server.crt"),
            key_pem: read("server.key"),
            client_ca_pem: Some(read("vigil-ca.crt")),
        }),
    );
    let uri = format!("https://127.0.0.1:{}", server.port);

    let with_cert = client_dir(root, "with-cert", "vigil", Some("detector"));
    let (scored, _) = score(&model(&uri, &with_cert));
    assert_eq!(scored, 2, "a detector with its client certificate scores");

    for (name, cert) in [("no-cert", None), ("rogue-cert", Some("intruder"))] {
        let d = client_dir(root, name, "vigil", cert);
        let (scored, metrics) = score(&model(&uri, &d));
        assert_eq!(scored, 0, "{name}: refused");
        assert!(metrics.windows_total("iforest", "failed") == 2, "{name}");
    }

    // Server verification: a client that trusts another CA does not talk to this server.
    let wrong_ca = client_dir(root, "wrong-ca", "rogue", Some("detector"));
    assert_eq!(score(&model(&uri, &wrong_ca)).0, 0, "untrusted server");

    // Plaintext to the TLS port fails too.
    let plain = model(&format!("http://127.0.0.1:{}", server.port), &with_cert);
    let mut no_tls = plain.clone();
    no_tls
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(CLIENT_TLS_ANNOTATION);
    assert_eq!(score(&no_tls).0, 0, "plaintext client");

    // The same client without a certificate scores where the server does not ask for one
    // (TLS without client authentication): the refusal above is the client authentication.
    let one_way = TestServer::start_with(
        0,
        Some(ServerTls {
            cert_pem: read("server.crt"),
            key_pem: read("server.key"),
            client_ca_pem: None,
        }),
    );
    let no_cert = client_dir(root, "no-cert-one-way", "vigil", None);
    let uri = format!("https://127.0.0.1:{}", one_way.port);
    assert_eq!(
        score(&model(&uri, &no_cert)).0,
        2,
        "TLS without client auth"
    );
}

#[test]
fn an_unreadable_tls_directory_is_refused_when_routing() {
    let m = model("https://127.0.0.1:1", "/nonexistent/vigil-tls");
    let mut s = ModelScorer::new(ScorerConfig::default(), ScoringMetrics::default()).unwrap();
    let e = s.route_models(&[&m], None).unwrap_err().to_string();
    assert!(
        e.contains("iforest") && e.contains("/nonexistent/vigil-tls/ca.crt"),
        "{e}"
    );
}
