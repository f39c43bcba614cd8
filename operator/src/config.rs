//! Operator-wide settings taken from the command line (see `main.rs`): images of the workloads
//! the operator creates, the Kafka default, and timing. Reconcilers read them from the context;
//! nothing here does I/O.

use std::time::Duration;

use vigil_api::contract::{detector, model_server};

/// Port of the detectors' Prometheus endpoint (the detector contract's).
pub const DETECTOR_METRICS_PORT: i32 = detector::METRICS_PORT as i32;
/// Directory where detectors find `pipeline.yaml` and `rules.yaml`.
pub const DETECTOR_CONFIG_DIR: &str = detector::CONFIG_DIR;
/// The model server binary in its image.
pub const MODEL_SERVER_BINARY: &str = model_server::BINARY;
/// Open Inference Protocol v2 gRPC port of model servers.
pub const MODEL_SERVER_GRPC_PORT: i32 = model_server::GRPC_PORT as i32;
/// Prometheus metrics port of model servers.
pub const MODEL_SERVER_HTTP_PORT: i32 = model_server::METRICS_PORT as i32;
/// Directory of the model repository inside model-server pods.
pub const MODEL_REPOSITORY_DIR: &str = model_server::REPOSITORY_DIR;

/// Settings shared by every reconcile.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Image of the `vigil` binary run by detector pods.
    pub detector_image: String,
    /// Image of `vigil-model-server`.
    pub model_server_image: String,
    /// Image of the init container that copies or downloads a model artifact and checks its
    /// SHA-256 (needs `sh`, `cp`, `mkdir`, `sha256sum` and `curl`, e.g. `curlimages/curl`).
    pub artifact_fetcher_image: String,
    /// `imagePullPolicy` of created containers; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// `bootstrap.servers` for pipelines whose spec has none.
    pub default_bootstrap_servers: Option<String>,
    /// How long one Kafka metadata request may take.
    pub kafka_metadata_timeout: Duration,
    /// How long partition counts read from Kafka are reused.
    pub kafka_metadata_ttl: Duration,
    /// Resync period: every object is reconciled at least this often.
    pub resync: Duration,
    /// Render a NetworkPolicy per pipeline (detectors: metrics port only) and per model server
    /// (gRPC from detector pods, metrics port).
    pub network_policies: bool,
    /// Log format of the detector and model-server containers (`VIGIL_LOG_FORMAT`): the
    /// operator's own.
    pub log_format: vigil_telemetry::logging::LogFormat,
    /// OpenTelemetry variables set on the detector and model-server containers: the
    /// operator's own ([`vigil_telemetry::trace::FORWARDED_ENV`]).
    pub otel_env: Vec<(String, String)>,
}

impl OperatorConfig {
    /// Settings for tests: placeholder images, no Kafka default.
    pub fn test() -> Self {
        OperatorConfig {
            detector_image: "vigil:test".into(),
            model_server_image: "vigil-model-server:test".into(),
            artifact_fetcher_image: "curl:test".into(),
            image_pull_policy: None,
            default_bootstrap_servers: None,
            kafka_metadata_timeout: Duration::from_secs(3),
            kafka_metadata_ttl: Duration::from_secs(15),
            resync: Duration::from_secs(300),
            network_policies: false,
            log_format: vigil_telemetry::logging::LogFormat::Text,
            otel_env: Vec::new(),
        }
    }
}
