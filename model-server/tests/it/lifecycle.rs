//! Model lifecycle: several versions at once, load / reload / unload while clients are
//! inferring, requests in flight during an unload, digest mismatches, corrupt artifacts and
//! configs that do not match the graph, strict readiness, and startup errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use vigil_model_server::ServerConfig;
use vigil_model_server::repository::sha256_hex;
use vigil_proto::inference::{
    ModelMetadataRequest, ModelReadyRequest, RepositoryIndexRequest, RepositoryModelLoadRequest,
    RepositoryModelUnloadRequest, ServerReadyRequest,
};

use crate::common::{
    TestServer, TestVectors, copy_dir, metric_value, repository_copy, set_config_line, start,
    start_with,
};
use crate::conformance::raw_request;

async fn ready(t: &TestServer, name: &str, version: &str) -> bool {
    t.grpc
        .clone()
        .model_ready(ModelReadyRequest {
            name: name.into(),
            version: version.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .ready
}

async fn load(t: &TestServer, name: &str) -> Result<(), tonic::Status> {
    t.grpc
        .clone()
        .repository_model_load(RepositoryModelLoadRequest {
            model_name: name.into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn unload(t: &TestServer, name: &str) {
    t.grpc
        .clone()
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn index(t: &TestServer) -> Vec<(String, String, String, String)> {
    t.grpc
        .clone()
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .map(|m| (m.name, m.version, m.state, m.reason))
        .collect()
}

#[tokio::test]
async fn versions_load_and_unload_while_clients_infer() {
    let repo = repository_copy();
    let t = start(repo.path()).await;
    let v = TestVectors::load("iforest-1.json");

    // Clients infer without naming a version for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, mut grpc) = (stop.clone(), ok.clone(), t.grpc.clone());
        let req = raw_request(&v, "");
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let resp = grpc
                    .model_infer(req.clone())
                    .await
                    .expect("no request fails");
                assert_eq!(resp.into_inner().outputs.len(), 2);
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // A second version appears on disk and is loaded next to the first.
    copy_dir(
        &repo.path().join("iforest/1"),
        &repo.path().join("iforest/2"),
    );
    load(&t, "iforest").await.unwrap();
    assert!(ready(&t, "iforest", "1").await && ready(&t, "iforest", "2").await);
    let meta = t
        .grpc
        .clone()
        .model_metadata(ModelMetadataRequest {
            name: "iforest".into(),
            version: "2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1".to_owned(), "2".to_owned()]);
    let resp = t
        .grpc
        .clone()
        .model_infer(raw_request(&v, "1"))
        .await
        .unwrap();
    assert_eq!(resp.into_inner().model_version, "1");

    // Version 1 leaves the disk; a reload drops it while version 2 keeps serving.
    std::fs::remove_dir_all(repo.path().join("iforest/1")).unwrap();
    load(&t, "iforest").await.unwrap();
    assert!(!ready(&t, "iforest", "1").await);
    let err = t
        .grpc
        .clone()
        .model_infer(raw_request(&v, "1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let resp = t
        .grpc
        .clone()
        .model_infer(raw_request(&v, ""))
        .await
        .unwrap();
    assert_eq!(resp.into_inner().model_version, "2");

    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        ok.load(Ordering::Relaxed) > 4,
        "clients kept inferring across reloads"
    );

    unload(&t, "iforest").await;
    assert!(!ready(&t, "iforest", "").await);
    let err = t
        .grpc
        .clone()
        .model_infer(raw_request(&v, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(ready(&t, "lstm-ae", "").await, "other models keep serving");
    let states: Vec<(String, String, String)> = index(&t)
        .await
        .into_iter()
        .map(|(n, v, s, r)| (n, v, format!("{s} {r}")))
        .collect();
    assert_eq!(
        states,
        vec![
            (
                "iforest".into(),
                "2".into(),
                "UNAVAILABLE not loaded".into()
            ),
            ("lstm-ae".into(), "1".into(), "READY ".into()),
        ]
    );
    unload(&t, "iforest").await; // unloading twice is fine
    load(&t, "iforest").await.unwrap();
    assert!(ready(&t, "iforest", "2").await);
}

#[tokio::test]
async fn unload_finishes_requests_already_queued() {
    let repo = repository_copy();
    // Requests wait up to 300 ms for a batch: the unload lands while they are queued.
    set_config_line(repo.path(), "iforest", 1, "max_queue_delay_us", "300000");
    let t = start(repo.path()).await;
    let v = TestVectors::load("iforest-1.json");
    let mut inflight = Vec::new();
    for _ in 0..8 {
        let mut grpc = t.grpc.clone();
        let req = raw_request(&v, "1");
        inflight.push(tokio::spawn(async move { grpc.model_infer(req).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    unload(&t, "iforest").await;
    assert!(!ready(&t, "iforest", "1").await);
    for r in inflight {
        let resp = r
            .await
            .unwrap()
            .expect("queued request completes after unload");
        assert_eq!(resp.into_inner().outputs[0].shape, vec![v.rows() as i64, 1]);
    }
}

#[tokio::test]
async fn digest_mismatch_makes_only_that_model_unavailable() {
    let repo = repository_copy();
    let artifact = repo.path().join("iforest/1/model.onnx");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // a single flipped bit
    std::fs::write(&artifact, &bytes).unwrap();

    let t = start(repo.path()).await;
    assert!(
        t.grpc
            .clone()
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(!ready(&t, "iforest", "1").await);
    assert!(ready(&t, "lstm-ae", "1").await);

    let v = TestVectors::load("iforest-1.json");
    let err = t
        .grpc
        .clone()
        .model_infer(raw_request(&v, "1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("sha256 mismatch"), "{err}");
    assert!(err.message().contains(&sha256_hex(&bytes)), "{err}");

    let entries = index(&t).await;
    let (_, _, state, reason) = entries.iter().find(|e| e.0 == "iforest").unwrap();
    assert_eq!(state, "UNAVAILABLE");
    assert!(reason.contains("sha256 mismatch"), "{reason}");

    let err = load(&t, "iforest").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("sha256 mismatch"), "{err}");

    let lstm = TestVectors::load("lstm-ae-1.json");
    t.grpc
        .clone()
        .model_infer(raw_request(&lstm, "1"))
        .await
        .expect("other model serves");
    let text = t.server.metrics().encode();
    assert_eq!(
        metric_value(&text, r#"vigil_model_ready{model="iforest",version="1"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, r#"vigil_model_ready{model="lstm-ae",version="1"}"#),
        Some(1.0)
    );

    // Restoring the artifact and reloading brings the version back.
    bytes[last] ^= 0x01;
    std::fs::write(&artifact, &bytes).unwrap();
    load(&t, "iforest").await.unwrap();
    assert!(ready(&t, "iforest", "1").await);
}

#[tokio::test]
async fn corrupt_artifact_with_matching_digest_is_unavailable() {
    let repo = repository_copy();
    let garbage = b"this is not an ONNX model".to_vec();
    std::fs::write(repo.path().join("iforest/1/model.onnx"), &garbage).unwrap();
    set_config_line(repo.path(), "iforest", 1, "sha256", &sha256_hex(&garbage));
    let t = start(repo.path()).await;
    assert!(!ready(&t, "iforest", "1").await);
    let entries = index(&t).await;
    let reason = &entries.iter().find(|e| e.0 == "iforest").unwrap().3;
    assert!(
        reason.contains("ONNX Runtime could not load the model"),
        "{reason}"
    );
    assert!(ready(&t, "lstm-ae", "1").await);
}

#[tokio::test]
async fn config_that_does_not_match_the_graph_is_unavailable() {
    let repo = repository_copy();
    let path = repo.path().join("iforest/1/config.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("- name: features", "- name: X");
    std::fs::write(&path, text).unwrap();
    let t = start(repo.path()).await;
    assert!(!ready(&t, "iforest", "1").await);
    let reason = index(&t)
        .await
        .into_iter()
        .find(|e| e.0 == "iforest")
        .unwrap()
        .3;
    assert!(
        reason.contains("graph input `features` is not declared"),
        "{reason}"
    );
}

#[tokio::test]
async fn strict_readiness_reports_not_serving_while_a_model_is_broken() {
    let repo = repository_copy();
    set_config_line(repo.path(), "iforest", 1, "sha256", &"0".repeat(64));
    let mut config = ServerConfig::new(repo.path());
    config.strict_readiness = true;
    let t = start_with(config).await;
    let ready_now = t
        .grpc
        .clone()
        .server_ready(ServerReadyRequest {})
        .await
        .unwrap()
        .into_inner()
        .ready;
    assert!(!ready_now);
    let mut health = crate::common::health_client(&t).await;
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    // Unloading the broken model makes every loaded version ready again.
    unload(&t, "iforest").await;
    assert!(
        t.grpc
            .clone()
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn begin_shutdown_reports_not_ready_before_listeners_close() {
    let t = start(&crate::common::committed_repository()).await;
    t.server.begin_shutdown().await;
    let ready_now = t
        .grpc
        .clone()
        .server_ready(ServerReadyRequest {})
        .await
        .unwrap()
        .into_inner()
        .ready;
    assert!(!ready_now);
    let v = TestVectors::load("iforest-1.json");
    t.grpc
        .clone()
        .model_infer(raw_request(&v, "1"))
        .await
        .expect("still serving meanwhile");
}

#[tokio::test]
async fn startup_errors_are_explicit() {
    crate::common::require_ort();
    let mut config = ServerConfig::new(crate::common::committed_repository());
    config.startup_models = Some(vec!["no-such-model".into()]);
    let err = vigil_model_server::ModelServer::start(config)
        .await
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("no-such-model") && chain.contains("not in the repository"),
        "{chain}"
    );

    let err = vigil_model_server::ModelServer::start(ServerConfig::new("/nonexistent/repo"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("model repository"), "{err}");
}

#[test]
fn missing_onnx_runtime_is_a_clear_startup_error() {
    // A separate process: ONNX Runtime is loaded once per process, and this one has it.
    for (value, expect) in [
        (None, "ORT_DYLIB_PATH is not set"),
        (
            Some("/nonexistent/libonnxruntime.so.1.31.1"),
            "does not exist",
        ),
        (
            Some("/etc/hostname"),
            "failed to load ONNX Runtime from ORT_DYLIB_PATH=/etc/hostname",
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-model-server"));
        cmd.args([
            "--repository",
            "/nonexistent",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ]);
        cmd.env_remove("ORT_DYLIB_PATH").env("RUST_BACKTRACE", "0");
        if let Some(v) = value {
            cmd.env("ORT_DYLIB_PATH", v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expect), "{value:?}: {stderr}");
        assert!(
            stderr.contains("libonnxruntime.so.1.31.1"),
            "names the expected file: {stderr}"
        );
    }
}

/// A bad push to a serving version (a flipped bit in the artifact) is refused, and the last good
/// load keeps serving: the reload reports the failure, inference and readiness are unchanged.
#[tokio::test]
async fn a_failed_reload_keeps_the_last_good_version_serving() {
    let repo = repository_copy();
    let t = start(repo.path()).await;
    assert!(ready(&t, "iforest", "1").await);
    let v = TestVectors::load("iforest-1.json");
    t.grpc
        .clone()
        .model_infer(raw_request(&v, "1"))
        .await
        .expect("serves before the bad push");

    let artifact = repo.path().join("iforest/1/model.onnx");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&artifact, &bytes).unwrap();

    let err = load(&t, "iforest").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("sha256 mismatch"), "{err}");
    assert!(err.message().contains("keeps serving"), "{err}");
    assert!(
        ready(&t, "iforest", "1").await,
        "the last good load still serves"
    );
    t.grpc
        .clone()
        .model_infer(raw_request(&v, "1"))
        .await
        .expect("serves after the refused reload");
    let text = t.server.metrics().encode();
    assert_eq!(
        metric_value(&text, r#"vigil_model_ready{model="iforest",version="1"}"#),
        Some(1.0)
    );
}

/// Only callers allowed by the repository API setting may load or unload models.
#[tokio::test]
async fn the_repository_api_can_be_switched_off_or_need_a_token() {
    use vigil_model_server::config::RepositoryApi;
    let repo = repository_copy();
    let mut config = ServerConfig::new(repo.path());
    config.repository_api = RepositoryApi::Disabled;
    let t = start_with(config).await;
    let err = load(&t, "iforest").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(ready(&t, "iforest", "1").await, "serving is unaffected");

    let mut config = ServerConfig::new(repo.path());
    config.repository_api = RepositoryApi::Token("s3cret".into());
    let t = start_with(config).await;
    let err = load(&t, "iforest").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let mut req = tonic::Request::new(RepositoryModelLoadRequest {
        model_name: "iforest".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    let err = t.grpc.clone().repository_model_load(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let mut req = tonic::Request::new(RepositoryModelLoadRequest {
        model_name: "iforest".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    t.grpc
        .clone()
        .repository_model_load(req)
        .await
        .expect("the token opens it");
}
