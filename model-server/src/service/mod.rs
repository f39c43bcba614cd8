//! The `inference.GRPCInferenceService` implementation: the Open Inference Protocol v2 core RPCs
//! plus the model repository extension, mapped onto [`ModelManager`].
//!
//! Status codes: unknown model or version -> `NOT_FOUND`; a version that failed to load ->
//! `UNAVAILABLE` with the reason; bad tensors -> `INVALID_ARGUMENT` with `BadRequest` details; a
//! full queue -> `RESOURCE_EXHAUSTED`; execution failures -> `INTERNAL`.
//!
//! Traces: a `ModelInfer` request whose metadata carries a W3C `traceparent` that the sampler
//! keeps runs in a `vigil.model.infer` span (server kind) continuing the caller's trace (the
//! detector's `vigil.model.batch`), exported when OTLP is configured (`vigil_telemetry::trace`).

mod infer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use vigil_proto::SERVICE_NAME;
use vigil_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use vigil_proto::inference::model_metadata_response::TensorMetadata;
use vigil_proto::inference::repository_index_response::ModelIndex;
use vigil_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, RepositoryIndexRequest, RepositoryIndexResponse,
    RepositoryModelLoadRequest, RepositoryModelLoadResponse, RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};

use crate::batcher::BatchError;
use crate::config::{ONNX_PLATFORM, TensorSpec};
use crate::manager::{LoadError, LookupError, ModelManager, error_chain};
use crate::metrics::Metrics;
use crate::repository::RepositoryError;

/// Name reported by `ServerMetadata`.
pub const SERVER_NAME: &str = "vigil-model-server";

/// Protocol extensions reported by `ServerMetadata` (Triton's names).
pub const EXTENSIONS: &[&str] = &["model_repository"];

/// Readiness shared by the gRPC service, gRPC health checking and the embedding server.
#[derive(Debug)]
pub struct Readiness {
    started: AtomicBool,
    stopping: AtomicBool,
    strict: bool,
    health: HealthReporter,
}

impl Readiness {
    pub(crate) fn new(strict: bool, health: HealthReporter) -> Self {
        Readiness {
            started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            strict,
            health,
        }
    }

    /// Whether the server is ready: startup loading finished, not shutting down, and (with
    /// strict readiness) every loaded version ready.
    pub fn is_ready(&self, manager: &ModelManager) -> bool {
        self.started.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
            && (!self.strict || manager.all_ready())
    }

    pub(crate) fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Publishes the current readiness to gRPC health checking (service "" and
    /// `inference.GRPCInferenceService`).
    pub(crate) async fn publish(&self, manager: &ModelManager) {
        let status = if self.is_ready(manager) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status("", status).await;
        self.health.set_service_status(SERVICE_NAME, status).await;
    }
}

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct InferenceService {
    manager: Arc<ModelManager>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    repository_api: crate::config::RepositoryApi,
}

impl InferenceService {
    pub(crate) fn new(
        manager: Arc<ModelManager>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        repository_api: crate::config::RepositoryApi,
    ) -> Self {
        InferenceService {
            manager,
            metrics,
            readiness,
            repository_api,
        }
    }

    /// Whether a repository write call (load, unload) may proceed.
    fn authorize_repository_write<T>(&self, request: &Request<T>) -> Result<(), Status> {
        use crate::config::RepositoryApi;
        match &self.repository_api {
            RepositoryApi::Open => Ok(()),
            RepositoryApi::Disabled => Err(Status::permission_denied(
                "the repository API is disabled on this server (--disable-repository-api)",
            )),
            RepositoryApi::Token(token) => {
                let presented = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match presented {
                    // Constant-time comparison is not needed for a process-local secret compare
                    // of this size, but never log the token.
                    Some(t) if t == token => Ok(()),
                    Some(_) => Err(Status::unauthenticated("wrong repository API token")),
                    None => Err(Status::unauthenticated(
                        "the repository API needs `authorization: Bearer <token>`",
                    )),
                }
            }
        }
    }
}

fn lookup_status(e: &LookupError) -> Status {
    match e {
        LookupError::ModelNotFound(_) | LookupError::VersionNotFound { .. } => {
            Status::not_found(e.to_string())
        }
        LookupError::NotReady { .. } => Status::unavailable(e.to_string()),
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_owned(),
            shape: s.shape.clone(),
        })
        .collect()
}

impl InferenceService {
    /// `ModelInfer`, inside its span when traced.
    async fn infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let received = Instant::now();
        let mut req = request.into_inner();
        let loaded = match self.manager.resolve(&req.model_name, &req.model_version) {
            Ok(l) => l,
            Err(e) => {
                let status = lookup_status(&e);
                // Unknown names get no label set of their own (clients could create any number).
                let (model, version) = match &e {
                    LookupError::ModelNotFound(_) => ("", ""),
                    _ => (req.model_name.as_str(), req.model_version.as_str()),
                };
                self.metrics.error(model, version, status.code());
                return Err(status);
            }
        };
        let metrics = loaded.metrics();
        metrics.request();
        let id = std::mem::take(&mut req.id);
        let result = async {
            let decoded = infer::decode_request(loaded.config(), req)?;
            metrics.rows(decoded.rows);
            let outputs =
                loaded
                    .infer(decoded.inputs, decoded.rows)
                    .await
                    .map_err(|e| match e {
                        BatchError::QueueFull => Status::resource_exhausted(e.to_string()),
                        BatchError::Stopped => Status::unavailable(e.to_string()),
                        BatchError::Execute(_) => Status::internal(e.to_string()),
                    })?;
            Ok::<_, Status>(infer::encode_response(
                loaded.config(),
                loaded.model(),
                loaded.version(),
                id,
                outputs,
                &decoded.outputs,
                decoded.encoding,
            ))
        }
        .await;
        metrics.request_done(received.elapsed());
        match result {
            Ok(resp) => Ok(Response::new(resp)),
            Err(status) => {
                self.metrics
                    .error(loaded.model(), loaded.version(), status.code());
                Err(status)
            }
        }
    }
}

/// The `vigil.model.infer` span of a request whose metadata carries a sampled `traceparent`.
fn infer_span(request: &Request<ModelInferRequest>) -> Option<tracing::Span> {
    use vigil_telemetry::trace as otel;
    if !otel::enabled() {
        return None;
    }
    let md = request.metadata();
    let header = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
    let parent = otel::remote_context(header(otel::TRACEPARENT)?, header(otel::TRACESTATE))?;
    if !otel::sampled(&parent, "vigil.model.infer", otel::SpanKind::Server) {
        return None;
    }
    let req = request.get_ref();
    let span = tracing::info_span!(
        "vigil.model.infer",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "inference.GRPCInferenceService",
        rpc.method = "ModelInfer",
        vigil.model = %req.model_name,
        vigil.revision = %req.model_version,
    );
    otel::set_parent(&span, parent);
    Some(span)
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.readiness.is_ready(&self.manager),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let req = request.into_inner();
        let ready = self.manager.resolve(&req.name, &req.version).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: EXTENSIONS.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let req = request.into_inner();
        let loaded = self
            .manager
            .resolve(&req.name, &req.version)
            .map_err(|e| lookup_status(&e))?;
        let config = loaded.config();
        Ok(Response::new(ModelMetadataResponse {
            name: req.name.clone(),
            versions: self.manager.ready_versions(&req.name),
            platform: ONNX_PLATFORM.to_owned(),
            inputs: tensor_metadata(&config.inputs),
            outputs: tensor_metadata(&config.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        match infer_span(&request) {
            None => self.infer(request).await,
            Some(span) => {
                use tracing::Instrument as _;
                let result = self.infer(request).instrument(span.clone()).await;
                let status = if result.is_ok() { "ok" } else { "error" };
                span.record("otel.status_code", status);
                result
            }
        }
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let req = request.into_inner();
        let entries = self
            .manager
            .index(req.ready)
            .await
            .map_err(|e| Status::internal(error_chain(&e)))?;
        Ok(Response::new(RepositoryIndexResponse {
            models: entries
                .into_iter()
                .map(|e| ModelIndex {
                    name: e.name,
                    version: e.version,
                    state: e.state.to_owned(),
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.authorize_repository_write(&request)?;
        let req = request.into_inner();
        if let Some(key) = req.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "parameters: `{key}` is not supported; the model is always loaded from the repository"
            )));
        }
        let result = self.manager.load(&req.model_name).await;
        self.readiness.publish(&self.manager).await;
        let report = result.map_err(|e| {
            let code = match &e {
                LoadError::Repository(RepositoryError::InvalidName(_)) => Code::InvalidArgument,
                LoadError::Repository(RepositoryError::ModelNotFound { .. })
                | LoadError::NoVersions(_) => Code::NotFound,
                LoadError::Repository(RepositoryError::List { .. }) => Code::Internal,
            };
            Status::new(code, error_chain(&e))
        })?;
        if !report.failed.is_empty() {
            let failures: Vec<String> = report
                .failed
                .iter()
                .map(|(v, reason)| format!("version {v}: {reason}"))
                .collect();
            return Err(Status::failed_precondition(format!(
                "model `{}` loaded with errors (ready versions: [{}]); {}",
                req.model_name,
                report.ready.join(", "),
                failures.join("; ")
            )));
        }
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.authorize_repository_write(&request)?;
        let req = request.into_inner();
        if let Some(key) = req.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "parameters: `{key}` is not supported"
            )));
        }
        // Unloading a model that is not loaded succeeds, as in Triton.
        self.manager.unload(&req.model_name).await;
        self.readiness.publish(&self.manager).await;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
