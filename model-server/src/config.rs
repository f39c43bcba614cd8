//! Configuration: the server's own settings ([`ServerConfig`]) and the per-version model config
//! file `<repository>/<model>/<version>/config.yaml` ([`ModelConfig`]).
//!
//! The model config is the contract between training (`models/vigil_models/export.py` writes it)
//! and serving: tensor names, datatypes and shapes, the feature order of the last input
//! dimension, the window tier the features come from, the score threshold, the batching policy
//! and the sha256 of the artifact. Parsing rejects unknown keys; [`ModelConfig::validate`] makes
//! the cross-field checks once, so later stages can trust the values.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::datatype::DataType;

/// File name of a model version's config inside its version directory.
pub const MODEL_CONFIG_FILE: &str = "config.yaml";

/// Platform name of ONNX models, as Triton spells it (reported by `ModelMetadata`).
pub const ONNX_PLATFORM: &str = "onnxruntime_onnx";

/// Settings of one model server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Root of the model repository: `<repository>/<model>/<version>/{model.onnx,config.yaml}`.
    pub repository: PathBuf,
    /// Models loaded at startup: `None` loads every model in the repository; `Some(list)` only
    /// those (the rest can be loaded later with `RepositoryModelLoad`).
    pub startup_models: Option<Vec<String>>,
    /// ONNX Runtime shared library; `None` reads `ORT_DYLIB_PATH`.
    pub ort_dylib_path: Option<PathBuf>,
    /// Threads ONNX Runtime uses inside one model execution; `None` keeps ONNX Runtime's default
    /// (one per physical core).
    pub intra_op_threads: Option<usize>,
    /// When true, `ServerReady` and gRPC health report not-ready while any loaded model version is
    /// unavailable (Triton's `--strict-readiness`). Default false: one broken model does not take
    /// the others out of a Kubernetes Service.
    pub strict_readiness: bool,
    /// Largest inference request accepted, bytes; a larger one is refused with
    /// `OUT_OF_RANGE` ("decoded message length too large") before it is decoded, so one huge request cannot hold a model while
    /// small ones wait. Default [`DEFAULT_MAX_REQUEST_BYTES`].
    pub max_request_bytes: usize,
    /// Who may call RepositoryModelLoad / RepositoryModelUnload (RepositoryIndex stays open).
    pub repository_api: RepositoryApi,
    /// Serve gRPC over TLS (and require client certificates with a client CA); `None`:
    /// plaintext.
    pub tls: Option<ServerTls>,
}

/// TLS of the gRPC port, PEM encoded (rustls through tonic).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate chain.
    pub cert_pem: Vec<u8>,
    /// Private key of the certificate.
    pub key_pem: Vec<u8>,
    /// Mutual TLS: clients must present a certificate issued by one of these CAs.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Access to the repository API's write calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RepositoryApi {
    /// Anyone who reaches the gRPC port (local use, tests).
    #[default]
    Open,
    /// Callers with the metadata `authorization: Bearer <token>`; others get UNAUTHENTICATED.
    Token(String),
    /// Nobody: PERMISSION_DENIED (what the operator runs in pods).
    Disabled,
}

/// Default of [`ServerConfig::max_request_bytes`]: 16 MiB, five times a 65,536-row batch of 11
/// FP32 features, and well above the detectors' batches (256 rows by default).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

impl ServerConfig {
    /// Serves every model in `repository` with ONNX Runtime from `ORT_DYLIB_PATH`.
    pub fn new(repository: impl Into<PathBuf>) -> Self {
        ServerConfig {
            repository: repository.into(),
            startup_models: None,
            ort_dylib_path: None,
            intra_op_threads: None,
            strict_readiness: false,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            repository_api: RepositoryApi::Open,
            tls: None,
        }
    }
}

/// Declared name, element type and shape of one model input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the ONNX graph and on the wire.
    pub name: String,
    /// Element type (`FP32`, `FP64`, `INT32`, `INT64`).
    pub datatype: DataType,
    /// Dimensions; `-1` is variable. For batched models the first dimension is the batch (`-1`).
    pub shape: Vec<i64>,
}

/// Which side of the threshold is anomalous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnomalousWhen {
    /// Scores above the threshold are anomalous (reconstruction error, distance).
    Above,
    /// Scores below the threshold are anomalous (Isolation Forest `decision_function`).
    Below,
}

/// How to turn the model's output into an anomaly decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// Output that carries one score per row (shape `[-1, 1]` or `[-1]`).
    pub output: String,
    /// Decision threshold, in the units of the score output.
    pub threshold: f64,
    /// Which side of `threshold` is anomalous.
    pub anomalous_when: AnomalousWhen,
}

/// The window tier the model's features are computed on (must match the detector's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Tier name in the pipeline (`analysis`).
    pub tier: String,
    /// `tumbling` or `hopping` (informative; implied by size and slide).
    pub kind: String,
    /// Window length in seconds.
    pub size_secs: u64,
    /// Distance between window starts in seconds; window start = `ts - ts % slide_secs`.
    pub slide_secs: u64,
}

/// Config of one model version (`config.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// Must be `onnxruntime_onnx`.
    pub platform: String,
    /// Artifact file name inside the version directory.
    #[serde(default = "default_artifact")]
    pub artifact: String,
    /// Lower-case hex SHA-256 of the artifact; checked before the model is served.
    pub sha256: String,
    /// Inputs, in the order clients usually send them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs; the first is the default score output for [`crate::client::InferenceClient`].
    pub outputs: Vec<TensorSpec>,
    /// Most rows the dynamic batcher puts in one execution; 0 disables batching (each request
    /// runs alone). A single request larger than this runs alone, unsplit.
    #[serde(default)]
    pub max_batch_size: usize,
    /// Longest time, in microseconds, the oldest queued request waits for others to join its
    /// batch (Triton's `max_queue_delay_microseconds`). 0 batches only what is already queued.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Feature names in the order of the last input dimension (`value.mean`, ...).
    #[serde(default)]
    pub features: Vec<String>,
    /// Consecutive windows per input row (1 for per-window models, N for sequence models).
    #[serde(default = "default_lookback")]
    pub lookback: usize,
    /// Window tier the features come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Score output and threshold.
    #[serde(default)]
    pub score: Option<ScoreSpec>,
    /// Provenance recorded by the training script (free-form, not interpreted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub training: BTreeMap<String, serde_json::Value>,
}

fn default_artifact() -> String {
    "model.onnx".to_owned()
}

fn default_lookback() -> usize {
    1
}

impl ModelConfig {
    /// Parses a YAML model config.
    ///
    /// # Errors
    /// YAML syntax errors, unknown keys, wrong types.
    pub fn from_yaml(text: &str) -> Result<Self, serde_norway::Error> {
        serde_norway::from_str(text)
    }

    /// Maximum queue delay as a duration.
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }

    /// Whether requests are batched along dimension 0.
    pub fn batching(&self) -> bool {
        self.max_batch_size > 0
    }

    /// Cross-field checks.
    ///
    /// # Errors
    /// A message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.platform != ONNX_PLATFORM {
            return Err(format!(
                "platform: `{}` is not supported, expected `{ONNX_PLATFORM}`",
                self.platform
            ));
        }
        if self.artifact.is_empty() || self.artifact.contains(['/', '\\']) || self.artifact == ".."
        {
            return Err(format!(
                "artifact: `{}` must be a file name inside the version directory",
                self.artifact
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("sha256: expected 64 lower-case hex digits".to_owned());
        }
        if self.inputs.is_empty() {
            return Err("inputs: at least one input is required".to_owned());
        }
        if self.outputs.is_empty() {
            return Err("outputs: at least one output is required".to_owned());
        }
        for (key, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            let mut seen = HashSet::new();
            for (i, spec) in specs.iter().enumerate() {
                if !seen.insert(spec.name.as_str()) {
                    return Err(format!(
                        "{key}[{i}].name: `{}` is declared twice",
                        spec.name
                    ));
                }
                if spec.shape.iter().any(|&d| d < -1 || d == 0) {
                    return Err(format!(
                        "{key}[{i}].shape: dimensions must be positive or -1, got {:?}",
                        spec.shape
                    ));
                }
                if self.batching() && spec.shape.first() != Some(&-1) {
                    return Err(format!(
                        "{key}[{i}].shape: max_batch_size > 0 needs a variable first (batch) \
                         dimension -1, got {:?}",
                        spec.shape
                    ));
                }
            }
        }
        if !self.features.is_empty() {
            let last = self.inputs[0].shape.last().copied().unwrap_or(-1);
            if last != -1 && usize::try_from(last).ok() != Some(self.features.len()) {
                return Err(format!(
                    "features: {} names for an input whose last dimension is {last}",
                    self.features.len()
                ));
            }
        }
        if self.lookback == 0 {
            return Err("lookback: must be at least 1".to_owned());
        }
        if let Some(w) = &self.window
            && (w.size_secs == 0 || w.slide_secs == 0 || w.size_secs % w.slide_secs != 0)
        {
            return Err(format!(
                "window: size_secs ({}) must be a positive multiple of slide_secs ({})",
                w.size_secs, w.slide_secs
            ));
        }
        if let Some(score) = &self.score
            && !self.outputs.iter().any(|o| o.name == score.output)
        {
            return Err(format!(
                "score.output: `{}` is not one of the declared outputs",
                score.output
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
platform: onnxruntime_onnx
sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
inputs: [{name: features, datatype: FP32, shape: [-1, 2]}]
outputs: [{name: scores, datatype: FP32, shape: [-1, 1]}]
max_batch_size: 8
max_queue_delay_us: 250
features: [value.mean, value.max]
window: {tier: analysis, kind: tumbling, size_secs: 3600, slide_secs: 3600}
score: {output: scores, threshold: 0.0, anomalous_when: below}
"#;

    #[test]
    fn valid_config_parses_with_defaults() {
        let c = ModelConfig::from_yaml(VALID).unwrap();
        c.validate().unwrap();
        assert_eq!(c.artifact, "model.onnx");
        assert_eq!(c.lookback, 1);
        assert_eq!(c.inputs[0].datatype, DataType::Fp32);
        assert_eq!(c.max_queue_delay(), Duration::from_micros(250));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = ModelConfig::from_yaml(&format!("{VALID}colour: blue\n")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn cross_field_errors_name_the_key() {
        let cases = [
            (
                "max_batch_size: 8",
                "inputs: [{name: features, datatype: FP32, shape: [4, 2]}]",
                "inputs[0].shape",
            ),
            ("output: scores", "output: nope", "score.output"),
            ("sha256: 0123", "sha256: XYZ3", "sha256"),
            (
                "features: [value.mean, value.max]",
                "features: [value.mean]",
                "features",
            ),
            (
                "platform: onnxruntime_onnx",
                "platform: tensorflow",
                "platform",
            ),
        ];
        for (from, to, key) in cases {
            let text = if from.starts_with("max_batch_size") {
                VALID.replace(
                    "inputs: [{name: features, datatype: FP32, shape: [-1, 2]}]",
                    to,
                )
            } else {
                VALID.replace(from, to)
            };
            let c = ModelConfig::from_yaml(&text).unwrap();
            let err = c.validate().unwrap_err();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn committed_reference_configs_are_valid() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/repository");
        let mut seen = 0;
        for model in std::fs::read_dir(root).unwrap() {
            for version in std::fs::read_dir(model.unwrap().path()).unwrap() {
                let path = version.unwrap().path().join(MODEL_CONFIG_FILE);
                let c = ModelConfig::from_yaml(&std::fs::read_to_string(&path).unwrap()).unwrap();
                c.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected the iforest and lstm-ae reference models"
        );
    }
}
