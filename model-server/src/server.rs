//! Assembling and running a model server: load ONNX Runtime, load the startup models, then serve
//! `inference.GRPCInferenceService` plus gRPC health checking on one listener and Prometheus
//! `/metrics` on another. Used by the `vigil-model-server` binary and by anything that embeds the
//! server in-process (`vigil run`, tests, the benchmark).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use vigil_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;

use crate::MAX_MESSAGE_BYTES;
use crate::config::ServerConfig;
use crate::manager::{LoadError, LoadReport, ModelManager, error_chain};
use crate::metrics::Metrics;
use crate::repository::{ModelRepository, RepositoryError};
use crate::runtime::{self, RuntimeError};
use crate::service::{InferenceService, Readiness};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The repository root could not be listed.
    #[error("failed to read the model repository")]
    Repository(#[source] RepositoryError),
    /// A model named in `startup_models` could not be loaded at all.
    #[error("failed to load startup model `{model}`")]
    StartupModel {
        /// The model.
        model: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
    /// The TLS certificate, key or client CA was refused.
    #[error("invalid TLS configuration of the gRPC port")]
    Tls(#[source] tonic::transport::Error),
    /// The metrics HTTP server failed.
    #[error("metrics server failed")]
    Metrics(#[source] std::io::Error),
}

/// A started model server: models loaded, ready to serve on listeners the caller binds.
#[derive(Debug)]
pub struct ModelServer {
    max_request_bytes: usize,
    repository_api: crate::config::RepositoryApi,
    tls: Option<crate::config::ServerTls>,
    manager: Arc<ModelManager>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    health: HealthReporter,
}

impl ModelServer {
    /// Loads ONNX Runtime and the startup models.
    ///
    /// Every model in the repository is loaded unless `config.startup_models` names some.
    /// Versions that fail (digest mismatch, corrupt artifact, config mismatch) are reported
    /// as unavailable and do not stop the server.
    ///
    /// # Errors
    /// [`ServerError::Runtime`] when `ORT_DYLIB_PATH` is unset or wrong,
    /// [`ServerError::Repository`] when the repository root cannot be listed,
    /// [`ServerError::StartupModel`] when an explicitly named model has no usable directory.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let env = runtime::init(config.ort_dylib_path.as_deref())?;
        let metrics = Arc::new(Metrics::new());
        let repository = ModelRepository::new(&config.repository);
        let manager = Arc::new(ModelManager::new(
            repository.clone(),
            env,
            config.intra_op_threads,
            metrics.clone(),
        ));
        let health = HealthReporter::new();
        let readiness = Arc::new(Readiness::new(config.strict_readiness, health.clone()));
        readiness.publish(&manager).await; // not serving until startup loading is done

        let (names, explicit) = match config.startup_models {
            Some(names) => (names, true),
            None => (
                repository.model_names().map_err(ServerError::Repository)?,
                false,
            ),
        };
        for model in names {
            match manager.load(&model).await {
                Ok(report) => tracing::info!(
                    model,
                    ready = ?report.ready,
                    failed = report.failed.len(),
                    "Model loaded."
                ),
                Err(source) if explicit => {
                    return Err(ServerError::StartupModel { model, source });
                }
                Err(e) => tracing::warn!(model, error = %error_chain(&e), "Model skipped."),
            }
        }
        readiness.set_started();
        readiness.publish(&manager).await;
        Ok(ModelServer {
            max_request_bytes: config.max_request_bytes,
            repository_api: config.repository_api.clone(),
            tls: config.tls.clone(),
            manager,
            metrics,
            readiness,
            health,
        })
    }

    /// The loaded models (resolve and inspect them in-process; load and unload through
    /// [`Self::load_model`] and [`Self::unload_model`] so health checking follows).
    pub fn manager(&self) -> &Arc<ModelManager> {
        &self.manager
    }

    /// Loads or reloads `model` from the repository (as `RepositoryModelLoad` does) and
    /// republishes readiness.
    ///
    /// # Errors
    /// See [`ModelManager::load`]; per-version failures are in the report, not errors.
    pub async fn load_model(&self, model: &str) -> Result<LoadReport, LoadError> {
        let result = self.manager.load(model).await;
        self.readiness.publish(&self.manager).await;
        result
    }

    /// Unloads `model` (as `RepositoryModelUnload` does) and republishes readiness. Returns
    /// whether it was loaded.
    pub async fn unload_model(&self, model: &str) -> bool {
        let unloaded = self.manager.unload(model).await;
        self.readiness.publish(&self.manager).await;
        unloaded
    }

    /// The server's metrics (encode them into another `/metrics` when embedding).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether `ServerReady` currently answers true.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready(&self.manager)
    }

    /// Reports not-ready from now on (`ServerReady` false, health NOT_SERVING) while still
    /// serving, so load balancers and Kubernetes stop routing here before listeners close.
    pub async fn begin_shutdown(&self) {
        self.readiness.set_stopping();
        self.readiness.publish(&self.manager).await;
    }

    /// Serves the inference service and gRPC health checking on `listener` until `shutdown`
    /// completes. On shutdown the server reports not-ready (see [`Self::begin_shutdown`]), then
    /// stops accepting and finishes in-flight requests.
    ///
    /// # Errors
    /// [`ServerError::Grpc`] when the transport fails.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let service = InferenceService::new(
            self.manager.clone(),
            self.metrics.clone(),
            self.readiness.clone(),
            self.repository_api.clone(),
        );
        let inference = GrpcInferenceServiceServer::new(service)
            .max_decoding_message_size(self.max_request_bytes)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let health = HealthServer::new(HealthService::from_health_reporter(self.health.clone()));
        let readiness = self.readiness.clone();
        let manager = self.manager.clone();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            let mut cfg = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
            );
            if let Some(ca) = &tls.client_ca_pem {
                // Mutual TLS: a client without a certificate of this CA fails the handshake.
                cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(cfg).map_err(ServerError::Tls)?;
        }
        builder
            .add_service(health)
            .add_service(inference)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                readiness.set_stopping();
                readiness.publish(&manager).await;
            })
            .await
            .map_err(ServerError::Grpc)
    }

    /// Serves `GET /metrics` (Prometheus text format), `GET /healthz` and `GET /readyz` (200
    /// while ready, else 503) on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// [`ServerError::Metrics`] when the HTTP server fails.
    pub async fn serve_metrics(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (readiness, manager) = (self.readiness.clone(), self.manager.clone());
        // `/readyz` mirrors gRPC health (ServerReady): the kubelet's gRPC probe cannot speak TLS,
        // so a pod serving gRPC over TLS is probed here.
        let readyz = axum::routing::get(move || {
            let ready = readiness.is_ready(&manager);
            async move {
                if ready {
                    (axum::http::StatusCode::OK, "ready")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
        });
        let router = self.metrics.clone().router().route("/readyz", readyz);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServerError::Metrics)
    }
}

/// Starts a model server with `config` and serves gRPC on `listener` until the returned future
/// is dropped. For metrics or graceful shutdown use [`ModelServer`] directly.
///
/// # Errors
/// See [`ModelServer::start`] and [`ModelServer::serve`].
pub async fn serve(config: ServerConfig, listener: TcpListener) -> Result<(), ServerError> {
    ModelServer::start(config)
        .await?
        .serve(listener, std::future::pending())
        .await
}
