//! Vigil model server: serves ONNX anomaly models over the Open Inference Protocol v2
//! (KServe / Triton `inference.GRPCInferenceService`, including the model repository
//! extension), with gRPC health checking, dynamic batching per model version, SHA-256 verified
//! artifacts and Prometheus metrics.
//!
//! Layout (one concern per module):
//! - [`config`]: server settings and the per-version `config.yaml` format.
//! - [`contract`]: an AnomalyModel vs a `config.yaml`: the config the operator renders, and the
//!   check of an existing repository (feature `contract`, no gRPC: what the operator links).
//! - [`client`]: the v2 inference client detectors score with (feature `client`).
//! - [`repository`]: the on-disk repository and digest verification.
//! - [`runtime`]: ONNX Runtime loading (`ORT_DYLIB_PATH`) and sessions.
//! - [`manager`]: which versions are loaded, their states, load / unload / resolve.
//! - `batcher`: the per-version dynamic batching queue and worker thread.
//! - `service`: the gRPC service (request validation, status codes).
//! - [`metrics`]: metric names and the `/metrics` endpoint.
//! - [`server`]: start and serve, in a binary or embedded ([`serve`], [`ModelServer`]).
//! - [`client`]: [`client::InferenceClient`] for scoring rows of features.
//!
//! Embedding:
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vigil_model_server::{ModelServer, ServerConfig};
//! let server = ModelServer::start(ServerConfig::new("models/repository")).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let uri = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
//! let client = vigil_model_server::client::InferenceClient::connect(uri).await?;
//! let scores = client.infer("iforest", "", &[0.0; 11], 11).await?;
//! # Ok(()) }
//! ```

//!
//! Features: `server` (default) is everything above; with `default-features = false` the crate
//! is only [`client`], without ONNX Runtime or the HTTP stack.

#![warn(missing_docs)]

/// Largest gRPC message the server accepts or sends and the client accepts, bytes (tonic's
/// default is 4 MiB; a batch of 65,536 rows of 11 FP32 features is 2.9 MB, so allow headroom for
/// sequence models).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "contract")]
pub mod config;
#[cfg(feature = "contract")]
pub mod contract;
#[cfg(feature = "contract")]
pub mod datatype;

#[cfg(feature = "server")]
mod batcher;
#[cfg(feature = "server")]
pub mod manager;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod repository;
#[cfg(feature = "server")]
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod service;
#[cfg(feature = "server")]
pub mod tensor;

#[cfg(feature = "server")]
pub use batcher::{BatchError, BatchPolicy, MAX_QUEUED_REQUESTS};
#[cfg(feature = "contract")]
pub use config::{ModelConfig, ServerConfig};
#[cfg(feature = "server")]
pub use server::{ModelServer, ServerError, serve};
#[cfg(feature = "server")]
pub use service::{EXTENSIONS, SERVER_NAME};
