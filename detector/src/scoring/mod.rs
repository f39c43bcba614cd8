//! Model scoring: DetectionRules of type `model` score a key's window features with an
//! AnomalyModel served over the Open Inference Protocol v2 (the Vigil model server, Triton,
//! KServe).
//!
//! The work is split between a pure half in the engine and an I/O half here:
//! 1. At each close of the model's window tier the [`crate::engine::Engine`] builds the key's
//!    input row from the window's features in the model's contract order, normalised, and for
//!    sequence models from the key's last `lookback` consecutive windows ([`contract`]), and
//!    pushes a [`ModelInput`] into [`crate::engine::Outputs::model_inputs`].
//! 2. The caller hands those inputs to a [`ModelScorer`] ([`scorer`]), which batches them per
//!    model across keys, calls the model server with a deadline, retries transient failures
//!    with exponential backoff and stops calling a failing server through a circuit breaker.
//!    It never blocks longer than its retry budget; inputs it cannot score are counted and
//!    dropped ([`ScoringMetrics`]), so rule-based detection and offset commits go on.
//! 3. The raw scores go back to [`crate::engine::Engine::apply_model_scores`], which maps them
//!    to [0, 1] and a match ([`ModelContract::map_score`]) and runs the alert lifecycle.
//!
//! A model rule's event score (`vigil score`, ensembles) is the score of its last scored
//! window.

pub mod contract;
pub mod metrics;
pub mod scorer;

pub use contract::{ModelContract, ModelState, WindowVector};
pub use metrics::ScoringMetrics;
pub use scorer::{Inference, ModelScorer, ScoreReport, ScorerConfig, ScoringError};

use std::sync::Arc;

use crate::window::KeyId;

/// Annotation on an AnomalyModel naming its model server's gRPC endpoint (`host:port` or a
/// URI); the operator sets it on the models it renders for a detector.
pub const MODEL_SERVER_ANNOTATION: &str = "vigil.dev/model-server";

/// The input of one model rule for one key's closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    /// Index of the rule in the engine's rule set when the window closed.
    pub rule: usize,
    /// `metadata.name` of that rule (scores for a rule replaced meanwhile are dropped).
    pub rule_name: String,
    /// The model's contract (model name and version on the server, row length).
    pub contract: Arc<ModelContract>,
    /// The key's state id in the engine.
    pub key_id: KeyId,
    /// Entity key.
    pub key: Box<str>,
    /// Start of the newest window of the input, epoch ms.
    pub window_start: i64,
    /// End (exclusive) of the newest window, epoch ms.
    pub window_end: i64,
    /// The row sent to the model: `lookback * features` normalised values, oldest window
    /// first, features in contract order.
    pub values: Vec<f32>,
    /// Raw (not normalised) features of the newest window in contract order, for the alert.
    pub raw_features: Vec<f64>,
}
