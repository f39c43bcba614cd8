//! A small client for scoring rows of features over the Open Inference Protocol v2, for the
//! detector and the benchmark. Works against any v2 server (Vigil, Triton, KServe runtimes).
//!
//! [`InferenceClient::infer`] sends `n` rows of `n_features` FP32 values to a model with one
//! FP32 input of shape `[-1, d1, d2, ...]` (`d1 * d2 * ... = n_features`) and returns the first
//! output, which must hold one FP32 value per row (shape `[-1]` or `[-1, 1]`). The model's
//! signature is read once with `ModelMetadata` and cached per `(model, version)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use vigil_proto::inference::{ModelInferRequest, ModelMetadataRequest};

use crate::MAX_MESSAGE_BYTES;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URI is not a valid endpoint.
    #[error("invalid model server URI `{uri}`")]
    InvalidUri {
        /// The URI given.
        uri: String,
        /// Parser error.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection could be made.
    #[error("failed to connect to the model server at {uri}")]
    Connect {
        /// The URI given.
        uri: String,
        /// Transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{call} failed")]
    Rpc {
        /// RPC name.
        call: &'static str,
        /// The status (code and message).
        #[source]
        status: tonic::Status,
    },
    /// The model's inputs or outputs do not fit `infer` (see the module docs).
    #[error("model `{model}` version `{version}` cannot be called with rows of features: {reason}")]
    Signature {
        /// Model name.
        model: String,
        /// Requested version.
        version: String,
        /// What does not fit.
        reason: String,
    },
    /// `rows` is not a whole number of rows.
    #[error("{len} values are not a whole number of rows of {n_features} features")]
    RowShape {
        /// `rows.len()`.
        len: usize,
        /// Features per row.
        n_features: usize,
    },
    /// The response does not hold one score per row.
    #[error("malformed response: {0}")]
    Response(String),
}

impl ClientError {
    /// Whether retrying later may succeed (server unreachable, overloaded, model loading).
    /// Errors in the request itself are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Rpc { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
            ),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct Signature {
    input: String,
    row_dims: Vec<i64>,
    output: String,
}

/// Client of one model server; cheap to clone (clones share the connection and the cache).
#[derive(Clone, Debug)]
pub struct InferenceClient {
    grpc: GrpcInferenceServiceClient<Channel>,
    signatures: Arc<Mutex<HashMap<(String, String), Signature>>>,
}

impl InferenceClient {
    /// Connects to `uri` (`http://host:port`).
    ///
    /// # Errors
    /// [`ClientError::InvalidUri`], [`ClientError::Connect`].
    pub async fn connect(uri: impl Into<String>) -> Result<Self, ClientError> {
        let uri = uri.into();
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|source| ClientError::InvalidUri {
                uri: uri.clone(),
                source,
            })?
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect { uri, source })?;
        Ok(Self::new(channel))
    }

    /// A client over an existing channel (for custom TLS, timeouts or lazy connection).
    pub fn new(channel: Channel) -> Self {
        InferenceClient {
            grpc: GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            signatures: Arc::default(),
        }
    }

    /// The generated protocol client, for the RPCs this wrapper does not cover.
    pub fn grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        self.grpc.clone()
    }

    async fn signature(&self, model: &str, version: &str) -> Result<Signature, ClientError> {
        let key = (model.to_owned(), version.to_owned());
        if let Some(sig) = self.signatures.lock().expect("signature cache").get(&key) {
            return Ok(sig.clone());
        }
        let meta = self
            .grpc
            .clone()
            .model_metadata(ModelMetadataRequest {
                name: model.to_owned(),
                version: version.to_owned(),
            })
            .await
            .map_err(|status| ClientError::Rpc {
                call: "ModelMetadata",
                status,
            })?
            .into_inner();
        let unfit = |reason: String| ClientError::Signature {
            model: model.to_owned(),
            version: version.to_owned(),
            reason,
        };
        let [input] = meta.inputs.as_slice() else {
            return Err(unfit(format!("it has {} inputs, not 1", meta.inputs.len())));
        };
        if input.datatype != "FP32" || input.shape.first() != Some(&-1) {
            return Err(unfit(format!(
                "input `{}` is {} {:?}, not FP32 [-1, ...]",
                input.name, input.datatype, input.shape
            )));
        }
        let row_dims = input.shape[1..].to_vec();
        if row_dims.iter().any(|&d| d < 1) {
            return Err(unfit(format!(
                "input `{}` has variable row dimensions {:?}",
                input.name, input.shape
            )));
        }
        let output = meta
            .outputs
            .first()
            .ok_or_else(|| unfit("it has no outputs".into()))?;
        let per_row = output.shape.get(1..).unwrap_or(&[]).iter().product::<i64>();
        if output.datatype != "FP32" || output.shape.first() != Some(&-1) || per_row != 1 {
            return Err(unfit(format!(
                "first output `{}` is {} {:?}, not FP32 [-1] or [-1, 1]",
                output.name, output.datatype, output.shape
            )));
        }
        let sig = Signature {
            input: input.name.clone(),
            row_dims,
            output: output.name.clone(),
        };
        self.signatures
            .lock()
            .expect("signature cache")
            .insert(key, sig.clone());
        Ok(sig)
    }

    /// Scores `rows.len() / n_features` rows; returns one value per row, in order.
    ///
    /// `version` may be empty to let the server pick (highest ready version).
    ///
    /// # Errors
    /// [`ClientError::RowShape`] when `rows` is not whole rows, [`ClientError::Signature`] when
    /// the model does not take rows of `n_features` FP32 values, [`ClientError::Rpc`] for server
    /// errors (see [`ClientError::is_transient`]), [`ClientError::Response`] for malformed
    /// responses.
    pub async fn infer(
        &self,
        model: &str,
        version: &str,
        rows: &[f32],
        n_features: usize,
    ) -> Result<Vec<f32>, ClientError> {
        self.infer_traced(model, version, rows, n_features, None)
            .await
    }

    /// [`Self::infer`] within a trace: `traceparent` (W3C trace context) is sent in the
    /// request's gRPC metadata, where the model server continues the trace.
    ///
    /// # Errors
    /// As [`Self::infer`].
    pub async fn infer_traced(
        &self,
        model: &str,
        version: &str,
        rows: &[f32],
        n_features: usize,
        traceparent: Option<&str>,
    ) -> Result<Vec<f32>, ClientError> {
        if n_features == 0 || !rows.len().is_multiple_of(n_features) {
            return Err(ClientError::RowShape {
                len: rows.len(),
                n_features,
            });
        }
        let sig = self.signature(model, version).await?;
        let row_len: i64 = sig.row_dims.iter().product();
        if usize::try_from(row_len).ok() != Some(n_features) {
            return Err(ClientError::Signature {
                model: model.to_owned(),
                version: version.to_owned(),
                reason: format!(
                    "input `{}` takes rows of {:?} = {row_len} values, not {n_features}",
                    sig.input, sig.row_dims
                ),
            });
        }
        let n = rows.len() / n_features;
        let mut shape = Vec::with_capacity(1 + sig.row_dims.len());
        shape.push(i64::try_from(n).expect("row count fits i64"));
        shape.extend_from_slice(&sig.row_dims);
        let mut raw = Vec::with_capacity(rows.len() * 4);
        for v in rows {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        let request = ModelInferRequest {
            model_name: model.to_owned(),
            model_version: version.to_owned(),
            inputs: vec![InferInputTensor {
                name: sig.input.clone(),
                datatype: "FP32".to_owned(),
                shape,
                ..Default::default()
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: sig.output.clone(),
                ..Default::default()
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        };
        let mut request = tonic::Request::new(request);
        if let Some(tp) = traceparent.and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("traceparent", tp);
        }
        let resp = match self.grpc.clone().model_infer(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                if matches!(status.code(), Code::InvalidArgument | Code::NotFound) {
                    // The model may have been reloaded with another signature.
                    self.signatures
                        .lock()
                        .expect("signature cache")
                        .remove(&(model.to_owned(), version.to_owned()));
                }
                return Err(ClientError::Rpc {
                    call: "ModelInfer",
                    status,
                });
            }
        };
        let idx = resp
            .outputs
            .iter()
            .position(|o| o.name == sig.output)
            .ok_or_else(|| ClientError::Response(format!("no output `{}`", sig.output)))?;
        let scores: Vec<f32> = if let Some(bytes) = resp.raw_output_contents.get(idx) {
            if bytes.len() != n * 4 {
                return Err(ClientError::Response(format!(
                    "output `{}` has {} bytes for {n} rows",
                    sig.output,
                    bytes.len()
                )));
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        } else {
            resp.outputs[idx]
                .contents
                .as_ref()
                .map(|c| c.fp32_contents.clone())
                .unwrap_or_default()
        };
        if scores.len() != n {
            return Err(ClientError::Response(format!(
                "output `{}` has {} values for {n} rows",
                sig.output,
                scores.len()
            )));
        }
        Ok(scores)
    }
}
