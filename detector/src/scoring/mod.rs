//! Model scoring: DetectionRules of type `model` score a key's window features with an
//! AnomalyModel served over the Open Inference Protocol v2 (the Vigil model server, Triton,
//! KServe).
//!
//! The work is split between a pure half in the engine and an I/O half here:
//! 1. At each close of the model's window tier the [`vigil_core::engine::Engine`] builds the key's
//!    input row from the window's features in the model's contract order, normalised, and for
//!    sequence models from the key's last `lookback` consecutive windows ([`vigil_core::model`]), and
//!    pushes a [`ModelInput`] into [`vigil_core::engine::Outputs::model_inputs`].
//! 2. The caller hands those inputs to a [`ModelScorer`] ([`scorer`]), which batches them per
//!    model across keys, calls the model server with a deadline, retries transient failures
//!    with exponential backoff and stops calling a failing server through a circuit breaker.
//!    In the detector the scorer runs on its own thread ([`worker`]): the run loop never waits
//!    for a model server, and windows not scored during an outage wait in a bounded backlog
//!    and are scored when the server recovers ([`ScoringMetrics`] counts every outcome).
//! 3. The raw scores go back to [`vigil_core::engine::Engine::apply_model_scores`], which maps them
//!    to [0, 1] and a match ([`ModelContract::map_score`]) and runs the alert lifecycle.
//!
//! A model rule's event score (`vigil score`, ensembles) is the score of its last scored
//! window.

pub mod decisions;
pub mod metrics;
pub mod scorer;
pub mod shadow;
pub mod worker;

pub use decisions::RolloutDecisions;
pub use metrics::ScoringMetrics;
pub use scorer::{Inference, ModelScorer, ScoreReport, ScorerConfig, ScoringError};
pub use shadow::ShadowVerdict;
pub use vigil_api::contract::MODEL_SERVER_ANNOTATION;
pub use vigil_core::model::{ModelContract, ModelInput, ModelRollout, ModelState, WindowVector};
pub use worker::ScoringWorker;
