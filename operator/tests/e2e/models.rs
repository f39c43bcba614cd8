//! AnomalyModels: a pipeline whose rule needs a missing or unready model is `Degraded` and
//! names it; once the artifact is there and the model server is available the model reports
//! the revision it serves and the pipeline recovers.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Patch, PatchParams};
use sha2::{Digest, Sha256};
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline};

use crate::fixtures;
use crate::harness::{
    Operator, TEST_MANAGER, TestNamespace, admin, condition, create_topic, http_get, repo_root,
    uuid_like, wait_for,
};
use crate::kubelet::LocalPod;

const T: Duration = Duration::from_secs(30);

async fn degraded(ns: &TestNamespace) -> Option<(String, String, String)> {
    let p = ns.api::<StreamPipeline>().get("scored").await.ok()?;
    condition(&p.status?.conditions, "Degraded")
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn a_missing_model_degrades_the_pipeline_until_it_is_served() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-model").await;
    let topic = format!("e2e-model-{}", &uuid_like()[..8]);
    create_topic(&topic, 1).await;
    let op = Operator::start(&client, &ns.name, &[]).await;
    let onnx = std::fs::read(repo_root().join("models/repository/iforest/1/model.onnx")).unwrap();
    let sha = format!("{:x}", Sha256::digest(&onnx));

    ns.apply_yaml(&fixtures::pipeline("scored", &topic, 1, "scored"))
        .await;
    ns.apply_yaml(&fixtures::model_rule("iforest-score", "scored", "iforest"))
        .await;

    // 1. No AnomalyModel: the rule is rejected and the pipeline is Degraded naming it.
    let (_, reason, message) = wait_for("Degraded (model missing)", T, || async {
        degraded(&ns)
            .await
            .filter(|c| c.0 == "True" && c.2.contains("iforest"))
    })
    .await;
    assert_eq!(reason, "RulesRejected");
    assert!(
        message.contains("spec.model.modelRef: AnomalyModel `iforest` not found"),
        "{message}"
    );

    // 2. The model exists but its artifact ConfigMap does not: the model is not Ready, the
    //    rule is accepted, and the pipeline is Degraded because of the model.
    ns.apply_yaml(&fixtures::model("iforest", &sha)).await;
    let (_, reason, message) = wait_for("Degraded (model not ready)", T, || async {
        // The model may be seen before its own status is written: wait for its reason.
        degraded(&ns)
            .await
            .filter(|c| c.1 == "ModelNotReady" && c.2.contains("ArtifactUnavailable"))
    })
    .await;
    assert_eq!(reason, "ModelNotReady");
    assert!(
        message.contains("AnomalyModel `iforest` is not ready (ArtifactUnavailable"),
        "{message}"
    );
    assert!(
        message.contains("ConfigMap `iforest-onnx` does not exist"),
        "{message}"
    );
    let m = ns.api::<AnomalyModel>().get("iforest").await.unwrap();
    let (ready, reason, _) = condition(&m.status.unwrap().conditions, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "ArtifactUnavailable")
    );
    let rule = ns
        .api::<DetectionRule>()
        .get("iforest-score")
        .await
        .unwrap();
    assert_eq!(
        condition(&rule.status.unwrap().conditions, "Accepted")
            .unwrap()
            .0,
        "True"
    );

    // 3. The artifact arrives: the model server Deployment becomes available (kwok), the
    //    model serves revision 1, and the pipeline is no longer Degraded.
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("iforest-onnx".into()),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            "model.onnx".to_string(),
            ByteString(onnx),
        )])),
        ..Default::default()
    };
    ns.api::<ConfigMap>()
        .patch(
            "iforest-onnx",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
    let model = wait_for("servingRevision 1", Duration::from_secs(60), || async {
        ns.api::<AnomalyModel>()
            .get("iforest")
            .await
            .ok()
            .filter(|m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.serving_revision.as_deref())
                    == Some("1")
            })
    })
    .await;
    assert_eq!(
        condition(&model.status.unwrap().conditions, "Ready")
            .unwrap()
            .1,
        "Serving"
    );
    wait_for("Degraded=False", T, || async {
        degraded(&ns).await.filter(|c| c.0 == "False")
    })
    .await;

    let deployment = ns
        .api::<Deployment>()
        .get("iforest-model-server")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.init_containers.as_ref().unwrap()[0].name, "fetch-1");
    assert_eq!(
        pod.containers[0].args.as_ref().unwrap().join(" "),
        "--repository /models --grpc-addr 0.0.0.0:8001 --metrics-addr 0.0.0.0:8002 --disable-repository-api"
    );
    let svc = ns
        .api::<Service>()
        .get("iforest-model-server")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8001);

    // The rendered pod runs: the init container's fetch script assembles the repository and
    // checks the digest, and the real vigil-model-server starts with the rendered arguments
    // and serves the model (it once got flags it did not have and exited with 2).
    let mut server = LocalPod::start(&ns, &pod).await;
    let metrics = server.listen["0.0.0.0:8002"].clone();
    let grpc = server.listen["0.0.0.0:8001"].clone();
    let body = wait_for("the rendered model server to serve", T, || {
        let metrics = metrics.clone();
        async move {
            let body = http_get(&metrics, "/metrics").await.ok()?;
            body.contains("vigil_model_ready{model=\"iforest\",version=\"1\"} 1")
                .then_some(body)
        }
    })
    .await;
    assert!(server.running(), "{}", server.log_text());
    assert!(
        tokio::net::TcpStream::connect(&grpc).await.is_ok(),
        "gRPC port {grpc} refuses connections"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    drop(server);
    // The detectors' rules.yaml carries the model and where its server is.
    let cm = ns
        .api::<ConfigMap>()
        .get("scored-detector-config")
        .await
        .unwrap();
    let mut m = Manifests::default();
    m.add_str("rules.yaml", &cm.data.unwrap()["rules.yaml"])
        .unwrap();
    assert_eq!(m.models.len(), 1);
    assert_eq!(
        m.models[0].metadata.annotations.as_ref().unwrap()["vigil.dev/model-server"],
        format!("iforest-model-server.{}.svc:8001", ns.name)
    );
    let config = ns
        .api::<ConfigMap>()
        .get("iforest-model-server-config")
        .await
        .unwrap();
    assert!(config.data.unwrap()["1.config.yaml"].contains(&sha));

    // 4. Mutual TLS (spec.tls): the operator renders the TLS command line and HTTP probes, the
    //    rendered model server starts with the Secret's certificate and asks for a client
    //    certificate, and the detectors reach it over https:// with their Secret mounted.
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let pem = |f: &str| ByteString(std::fs::read(certs.path().join(f)).unwrap());
    for (name, keys) in [
        ("iforest-server-tls", ["server.crt", "server.key"]),
        ("iforest-client-tls", ["client.crt", "client.key"]),
    ] {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), pem(keys[0])),
                ("tls.key".to_string(), pem(keys[1])),
                ("ca.crt".to_string(), pem("ca.crt")),
            ])),
            ..Default::default()
        };
        ns.api::<Secret>()
            .patch(
                name,
                &PatchParams::apply(TEST_MANAGER),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }
    ns.api::<AnomalyModel>()
        .patch(
            "iforest",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Merge(serde_json::json!({"spec": {"tls": {
                "secretName": "iforest-server-tls",
                "clientSecretName": "iforest-client-tls",
                "clientAuth": true,
            }}})),
        )
        .await
        .unwrap();
    let pod = wait_for("the TLS model server Deployment", T, || async {
        let d = ns
            .api::<Deployment>()
            .get("iforest-model-server")
            .await
            .ok()?;
        let pod = d.spec?.template.spec?;
        pod.containers[0]
            .args
            .as_ref()?
            .contains(&"--tls-client-ca".to_string())
            .then_some(pod)
    })
    .await;
    let probe = pod.containers[0].readiness_probe.clone().unwrap();
    assert_eq!(probe.http_get.unwrap().path.as_deref(), Some("/readyz"));
    let mut server = LocalPod::start(&ns, &pod).await;
    let metrics = server.listen["0.0.0.0:8002"].clone();
    let grpc = server.listen["0.0.0.0:8001"].clone();
    wait_for("the TLS model server to be ready", T, || {
        let metrics = metrics.clone();
        async move {
            let body = http_get(&metrics, "/readyz").await.ok()?;
            body.contains("ready").then_some(())
        }
    })
    .await;
    assert!(server.running(), "{}", server.log_text());
    let handshake = |with_cert: bool| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-connect", &grpc, "-alpn", "h2", "-brief"])
            .arg("-CAfile")
            .arg(certs.path().join("ca.crt"))
            .args(["-verify_return_error"]);
        if with_cert {
            cmd.arg("-cert")
                .arg(certs.path().join("client.crt"))
                .arg("-key")
                .arg(certs.path().join("client.key"));
        }
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let ok = handshake(true);
    assert!(
        ok.contains("Verification: OK") && ok.contains("CONNECTION ESTABLISHED"),
        "TLS with the client certificate: {ok}\n{}",
        server.log_text()
    );
    drop(server);
    let cm = wait_for("https:// in the detectors' rules.yaml", T, || async {
        let cm = ns
            .api::<ConfigMap>()
            .get("scored-detector-config")
            .await
            .ok()?;
        let rules = cm.data?.remove("rules.yaml")?;
        rules
            .contains("https://iforest-model-server.")
            .then_some(rules)
    })
    .await;
    assert!(
        cm.contains("vigil.dev/model-server-tls: /etc/vigil/model-client-tls/iforest"),
        "{cm}"
    );

    // 5. Revision history and `kubectl vigil rollback` (the plugin run by the real kubectl):
    //    revision 2 is served, then rolled back to 1; the detectors get the model in their
    //    rules.yaml without a restart (the pod template does not change).
    let models = ns.api::<AnomalyModel>();
    models
        .patch(
            "iforest",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Merge(serde_json::json!({"spec": {"revision": "2"}})),
        )
        .await
        .unwrap();
    let served = |rev: &'static str, entries: usize| {
        let models = models.clone();
        move || {
            let models = models.clone();
            async move {
                let s = models.get("iforest").await.ok()?.status?;
                (s.serving_revision.as_deref() == Some(rev) && s.history.len() == entries)
                    .then_some(s)
            }
        }
    };
    let s = wait_for("revision 2 served", Duration::from_secs(60), served("2", 2)).await;
    assert_eq!(s.history[0].revision, "1");
    assert!(s.history[0].replaced_at.is_some());
    let sts_api = ns.api::<k8s_openapi::api::apps::v1::StatefulSet>();
    let template = |sts: k8s_openapi::api::apps::v1::StatefulSet| {
        sts.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["vigil.dev/config-hash"]
            .clone()
    };
    let before = template(sts_api.get("scored-detector").await.unwrap());
    let kubectl = |args: &[&str]| crate::harness::kubectl_in(&ns, args);
    let said = kubectl(&["vigil", "rollback", "am/iforest"]);
    assert!(
        said.contains("rolled back from revision 2 to revision 1"),
        "{said}"
    );
    let s = wait_for(
        "revision 1 served again",
        Duration::from_secs(60),
        served("1", 3),
    )
    .await;
    assert_eq!(
        s.history
            .iter()
            .map(|h| h.revision.as_str())
            .collect::<Vec<_>>(),
        ["1", "2", "1"]
    );
    // The audit trail names the plugin as the writer of the rollback.
    let change = wait_for("lastChange by kubectl-vigil", T, || async {
        let m = models.get("iforest").await.ok()?;
        m.status?
            .last_change
            .filter(|c| c.manager == "kubectl-vigil")
    })
    .await;
    assert_eq!(change.operation, "Update");
    assert!(
        change.changed.contains(&"spec.revision".to_string()),
        "{change:?}"
    );
    wait_for("a SpecChanged Event naming kubectl-vigil", T, || async {
        crate::harness::event_notes(&ns, "SpecChanged")
            .await
            .into_iter()
            .find(|n| {
                n.contains("applied by kubectl-vigil (Update): ") && n.contains("spec.revision")
            })
    })
    .await;
    wait_for("revision 1 in the detectors' rules.yaml", T, || async {
        let cm = ns
            .api::<ConfigMap>()
            .get("scored-detector-config")
            .await
            .ok()?;
        let mut m = Manifests::default();
        m.add_str("rules.yaml", &cm.data?["rules.yaml"]).ok()?;
        (m.models[0].spec.revision == "1").then_some(())
    })
    .await;
    assert_eq!(
        template(sts_api.get("scored-detector").await.unwrap()),
        before,
        "a rollback does not restart the detectors"
    );
    let status = kubectl(&["vigil", "status", "am/iforest"]);
    assert!(
        status.contains("revision 1  serving 1") && status.contains("HISTORY"),
        "{status}"
    );
    assert!(op.terminate().await.success());
    ns.delete().await;
}

/// A CA (`ca.crt`), a server certificate for 127.0.0.1 (`server.crt`/`.key`) and a client
/// certificate (`client.crt`/`.key`) in `dir`, made with the `openssl` CLI.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=e2e CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        let subj = format!("/CN={name}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&req);
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}
