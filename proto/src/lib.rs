//! Generated Rust types for the Open Inference Protocol v2 gRPC API (package `inference`,
//! service `GRPCInferenceService`): the core protocol of KServe and Triton plus Triton's model
//! repository extension. The `.proto` source is `proto/inference/grpc_service.proto`; field
//! numbers match upstream, so this crate talks to Triton and KServe servers and their clients.
//!
//! Features: `client` generates [`inference::grpc_inference_service_client`], `server` generates
//! [`inference::grpc_inference_service_server`]. Both are on by default.
//!
//! This crate owns only the wire types; the model server (`vigil-model-server`) owns behaviour.

#![warn(missing_docs)]

/// Messages and services of the protobuf package `inference`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Fully qualified gRPC service name, as used by gRPC health checking and reflection.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";
