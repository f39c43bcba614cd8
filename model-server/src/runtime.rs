//! ONNX Runtime through `ort` with `load-dynamic`: loading the shared library named by
//! `ORT_DYLIB_PATH` once per process, creating sessions from verified artifact bytes, checking a
//! session's graph signature against the model config, and running one batch.
//!
//! Scheduling (which batch runs when, on which thread) belongs to `batcher`; this module runs
//! whatever it is given, synchronously.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, ValueType};

use crate::config::{ModelConfig, TensorSpec};
use crate::tensor::{DataType, Tensor, TensorData};

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

/// ONNX Runtime release the project pins (`scripts/setup-onnxruntime.sh`). `ort`'s `api-31`
/// feature needs 1.31 or later.
pub const EXPECTED_ORT_VERSION: &str = "1.31.1";

/// File name of the pinned library as the `onnxruntime` wheel ships it.
pub fn expected_library_name() -> String {
    format!("libonnxruntime.so.{EXPECTED_ORT_VERSION}")
}

/// Why ONNX Runtime could not be loaded. Each message names `ORT_DYLIB_PATH` and the file that
/// was expected, because this is the first thing a new deployment gets wrong.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Neither the config nor the environment names the library.
    #[error(
        "ORT_DYLIB_PATH is not set: point it at the ONNX Runtime shared library ({}, from the \
         `onnxruntime` wheel); `eval \"$(scripts/setup-onnxruntime.sh)\"` installs it and sets the variable",
        expected_library_name()
    )]
    DylibPathUnset,
    /// The named file does not exist.
    #[error(
        "ORT_DYLIB_PATH={} does not exist: expected the ONNX Runtime shared library {} \
         (run scripts/setup-onnxruntime.sh)",
        path.display(),
        expected_library_name()
    )]
    DylibMissing {
        /// The configured path.
        path: PathBuf,
    },
    /// The file exists but is not a usable ONNX Runtime (not a library, too old, ...).
    #[error(
        "failed to load ONNX Runtime from ORT_DYLIB_PATH={} (expected {} or a later 1.x release)",
        path.display(),
        expected_library_name()
    )]
    DylibLoad {
        /// The configured path.
        path: PathBuf,
        /// What `ort` reported.
        #[source]
        source: ort::LoadDynamicError,
    },
    /// ONNX Runtime loaded but refused to create an environment.
    #[error("failed to create the ONNX Runtime environment")]
    Environment(#[source] ort::Error),
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
/// Held while the environment is created: ONNX Runtime allows one environment per process, so
/// two servers starting at once (tests run in parallel threads) must not both build one.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Loads ONNX Runtime (once per process) and returns the process-wide environment.
///
/// `dylib` overrides `ORT_DYLIB_PATH`. Later calls return the first environment whatever path
/// they pass: `ort` supports one library per process.
///
/// # Errors
/// [`RuntimeError`] when the path is unset, missing, or not a compatible ONNX Runtime.
pub fn init(dylib: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _creating = INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = match dylib {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os(ORT_DYLIB_PATH) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => return Err(RuntimeError::DylibPathUnset),
        },
    };
    if !path.is_file() {
        return Err(RuntimeError::DylibMissing { path });
    }
    let builder = ort::init_from(&path).map_err(|source| RuntimeError::DylibLoad {
        path: path.clone(),
        source,
    })?;
    let env = builder
        .with_name("vigil-model-server")
        .build()
        .map_err(RuntimeError::Environment)?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Why a session could not be created or does not match its config.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// ONNX Runtime rejected the artifact (corrupt, unsupported opset, ...).
    #[error("ONNX Runtime could not load the model")]
    Create(#[source] ort::Error),
    /// The graph's inputs or outputs differ from the config.
    #[error("model does not match its config: {0}")]
    Signature(String),
}

/// One ONNX Runtime session plus the config it serves. `run` takes `&mut self` (ONNX Runtime
/// sessions are not safe to run concurrently), so each session belongs to one batcher thread.
pub struct OnnxSession {
    session: Session,
    outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for OnnxSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxSession")
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl OnnxSession {
    /// Creates a session from the artifact bytes (already digest-checked by the caller) and
    /// checks its signature against `config`.
    ///
    /// `intra_op_threads`: threads inside one execution; `None` keeps ONNX Runtime's default.
    ///
    /// # Errors
    /// [`SessionError::Create`] for artifacts ONNX Runtime rejects, [`SessionError::Signature`]
    /// when names, datatypes or shapes differ from the config.
    pub fn new(
        env: &Environment,
        artifact: &[u8],
        config: &ModelConfig,
        intra_op_threads: Option<usize>,
    ) -> Result<Self, SessionError> {
        let session = (|| -> ort::Result<Session> {
            let mut builder = Session::builder(env)?;
            if let Some(n) = intra_op_threads {
                builder = builder.with_intra_threads(n)?;
            }
            builder.commit_from_memory(artifact)
        })()
        .map_err(SessionError::Create)?;
        check_signature(&session, config).map_err(SessionError::Signature)?;
        Ok(OnnxSession {
            session,
            outputs: config.outputs.clone(),
        })
    }

    /// Runs one execution. `inputs` pairs each config input name with its tensor; the result
    /// holds the config's outputs, in config order.
    ///
    /// # Errors
    /// Whatever ONNX Runtime reports (shape errors inside the graph, allocation failures).
    pub fn run(&mut self, inputs: Vec<(String, Tensor)>) -> ort::Result<Vec<Tensor>> {
        let mut feeds: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let value: DynValue = match t.data {
                TensorData::Fp32(v) => ort::value::Tensor::from_array((t.shape, v))?.into_dyn(),
                TensorData::Fp64(v) => ort::value::Tensor::from_array((t.shape, v))?.into_dyn(),
                TensorData::Int32(v) => ort::value::Tensor::from_array((t.shape, v))?.into_dyn(),
                TensorData::Int64(v) => ort::value::Tensor::from_array((t.shape, v))?.into_dyn(),
            };
            feeds.push((name, value.into()));
        }
        let outputs = self.session.run(feeds)?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = &outputs[spec.name.as_str()];
                let (shape, data) = match spec.datatype {
                    DataType::Fp32 => {
                        let (s, d) = value.try_extract_tensor::<f32>()?;
                        (s, TensorData::Fp32(d.to_vec()))
                    }
                    DataType::Fp64 => {
                        let (s, d) = value.try_extract_tensor::<f64>()?;
                        (s, TensorData::Fp64(d.to_vec()))
                    }
                    DataType::Int32 => {
                        let (s, d) = value.try_extract_tensor::<i32>()?;
                        (s, TensorData::Int32(d.to_vec()))
                    }
                    DataType::Int64 => {
                        let (s, d) = value.try_extract_tensor::<i64>()?;
                        (s, TensorData::Int64(d.to_vec()))
                    }
                };
                Ok(Tensor {
                    shape: shape.to_vec(),
                    data,
                })
            })
            .collect()
    }
}

/// Compares the graph's declared inputs and outputs with the config: every graph input must be
/// declared (the server could not feed it otherwise), every declared tensor must exist with the
/// same element type and rank, and fixed dimensions must agree.
fn check_signature(session: &Session, config: &ModelConfig) -> Result<(), String> {
    let describe = |outlets: &[ort::value::Outlet]| -> String {
        outlets
            .iter()
            .map(|o| o.name().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for graph_input in session.inputs() {
        if !config.inputs.iter().any(|s| s.name == graph_input.name()) {
            return Err(format!(
                "graph input `{}` is not declared in the config",
                graph_input.name()
            ));
        }
    }
    for (kind, specs, outlets) in [
        ("input", &config.inputs, session.inputs()),
        ("output", &config.outputs, session.outputs()),
    ] {
        for spec in specs {
            let outlet = outlets
                .iter()
                .find(|o| o.name() == spec.name)
                .ok_or_else(|| {
                    format!(
                        "config {kind} `{}` is not in the graph (graph {kind}s: {})",
                        spec.name,
                        describe(outlets)
                    )
                })?;
            let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(format!("graph {kind} `{}` is not a tensor", spec.name));
            };
            if DataType::from_ort(*ty) != Some(spec.datatype) {
                return Err(format!(
                    "{kind} `{}`: config says {}, graph has {ty:?}",
                    spec.name, spec.datatype
                ));
            }
            let graph_dims: &[i64] = shape;
            if graph_dims.len() != spec.shape.len() {
                return Err(format!(
                    "{kind} `{}`: config shape {:?} has rank {}, graph shape {graph_dims:?} has rank {}",
                    spec.name,
                    spec.shape,
                    spec.shape.len(),
                    graph_dims.len()
                ));
            }
            for (i, (&c, &g)) in spec.shape.iter().zip(graph_dims).enumerate() {
                if g >= 0 && c != g {
                    return Err(format!(
                        "{kind} `{}`: dimension {i} is {g} in the graph, {c} in the config",
                        spec.name
                    ));
                }
            }
        }
    }
    Ok(())
}
