//! Shared fixtures for the integration tests: a real model server on `127.0.0.1:0` backed by the
//! real ONNX Runtime named by `ORT_DYLIB_PATH`, copies of the committed model repository that a
//! test may modify, and the training-framework test vectors under `models/testdata/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::transport::Channel;
use vigil_model_server::{ModelServer, ServerConfig};
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

/// Fails the test with instructions when ONNX Runtime is not configured (never skips).
pub fn require_ort() {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => {}
        _ => panic!(
            "ORT_DYLIB_PATH is not set: the model server tests run the real ONNX Runtime. \
             Run `eval \"$(scripts/setup-onnxruntime.sh)\"` in the repository root first \
             (it installs onnxruntime {} into ${{VIGIL_CACHE:-$HOME/.cache/vigil}}/venv and \
             exports ORT_DYLIB_PATH)",
            vigil_model_server::runtime::EXPECTED_ORT_VERSION
        ),
    }
}

/// The committed model repository.
pub fn committed_repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/repository")
}

/// A temporary copy of the committed repository (removed when dropped).
pub fn repository_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("create temp dir");
    copy_dir(&committed_repository(), dir.path());
    dir
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Rewrites one `key: value` line of a version's config.yaml.
pub fn set_config_line(repo: &Path, model: &str, version: u64, key: &str, value: &str) {
    let path = repo
        .join(model)
        .join(version.to_string())
        .join("config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let prefix = format!("{key}:");
    assert!(
        text.lines().any(|l| l.starts_with(&prefix)),
        "{key} not in {}",
        path.display()
    );
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{key}: {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

/// A running server and a client connected to it; the server stops when this is dropped.
pub struct TestServer {
    pub server: Arc<ModelServer>,
    pub uri: String,
    pub grpc: GrpcInferenceServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a server on `127.0.0.1:0` serving `repository`.
pub async fn start(repository: &Path) -> TestServer {
    start_with(ServerConfig::new(repository)).await
}

/// Starts a server with a custom config.
pub async fn start_with(config: ServerConfig) -> TestServer {
    require_ort();
    let server = Arc::new(ModelServer::start(config).await.expect("server starts"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = server.clone();
    tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("gRPC server runs");
    });
    let grpc = GrpcInferenceServiceClient::connect(uri.clone())
        .await
        .expect("connect to the test server");
    TestServer {
        server,
        uri,
        grpc,
        stop: Some(stop),
    }
}

/// One tensor of a test vector file.
#[derive(Debug, serde::Deserialize)]
pub struct VectorTensor {
    #[serde(default)]
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f64>,
}

/// Held-back inputs and the training framework's outputs (`models/testdata/<model>-<v>.json`).
#[derive(Debug, serde::Deserialize)]
pub struct TestVectors {
    pub model: String,
    pub input: VectorTensor,
    pub outputs: std::collections::BTreeMap<String, VectorTensor>,
}

impl TestVectors {
    /// Loads `models/testdata/<file>`.
    pub fn load(file: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/testdata")
            .join(file);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// The input as f32 values.
    pub fn input_f32(&self) -> Vec<f32> {
        self.input.data.iter().map(|&v| v as f32).collect()
    }

    /// Rows in the input.
    pub fn rows(&self) -> usize {
        self.input.shape[0] as usize
    }
}

/// Asserts two float sequences agree to `tol`, relative for values above 1 in magnitude.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w} (|diff| {err:.3e} > {tol:e})"
        );
    }
}

/// FP32 raw bytes (little-endian).
pub fn raw_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// FP32 values from raw bytes.
pub fn from_raw_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// INT64 values from raw bytes.
pub fn from_raw_i64(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The value of a metric sample line in the text exposition, e.g.
/// `vigil_model_batch_rows_count{model="iforest",version="1"}`.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// A gRPC health checking client for the test server.
pub async fn health_client(
    t: &TestServer,
) -> tonic_health::pb::health_client::HealthClient<Channel> {
    let channel = Channel::from_shared(t.uri.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
}
