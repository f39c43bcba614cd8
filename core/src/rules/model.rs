//! `spec.model`: an AnomalyModel scores the window's feature vector. Compile resolves the model
//! and its feature contract against the pipeline ([`crate::model::ModelContract`]); scoring
//! happens outside the core (the engine emits [`crate::model::ModelInput`] rows and takes the
//! raw scores back), so evaluation here only reports the last scored window.

use std::sync::Arc;

use vigil_api::v1alpha1::{AnomalyModel, ModelRule};

use super::scope::Scope;
use super::{Evaluation, RuleState};
use crate::config::InvalidSpec;
use crate::model::ModelContract;

/// A compiled model rule.
#[derive(Debug)]
pub struct Model {
    /// AnomalyModel name.
    pub model: String,
    /// Threshold override.
    pub threshold: Option<f64>,
    /// The model's feature contract in this pipeline.
    pub contract: Arc<ModelContract>,
}

fn find<'m>(m: &ModelRule, models: &[&'m AnomalyModel]) -> Result<&'m AnomalyModel, InvalidSpec> {
    models
        .iter()
        .copied()
        .find(|x| x.metadata.name.as_deref() == Some(m.model_ref.as_str()))
        .ok_or_else(|| {
            InvalidSpec::new(
                "spec.model.modelRef",
                format!("AnomalyModel `{}` not found", m.model_ref),
            )
        })
}

/// Checks what needs no pipeline: the model exists, the threshold is finite.
///
/// # Errors
/// The first problem, with its field path.
pub fn validate(m: &ModelRule, models: &[&AnomalyModel]) -> Result<(), InvalidSpec> {
    find(m, models)?;
    if m.threshold.is_some_and(|t| !t.is_finite()) {
        return Err(InvalidSpec::new(
            "spec.model.threshold",
            "must be a finite number",
        ));
    }
    Ok(())
}

impl Model {
    /// Compiles against a pipeline: the model's contract fits the pipeline, and the rule reads
    /// the model's window.
    ///
    /// # Errors
    /// See [`validate`]; a contract the pipeline cannot feed; another window.
    pub fn compile(
        m: &ModelRule,
        window: &str,
        scope: &mut Scope<'_>,
    ) -> Result<Self, InvalidSpec> {
        validate(m, scope.models)?;
        let am = find(m, scope.models)?;
        let contract = ModelContract::compile(am, scope.cfg, scope.table).map_err(|e| {
            InvalidSpec::new(
                "spec.model.modelRef",
                format!(
                    "AnomalyModel `{}` does not fit the pipeline: {}: {}",
                    m.model_ref, e.field, e.reason
                ),
            )
        })?;
        if am.spec.input.window != window {
            return Err(InvalidSpec::new(
                "spec.window",
                format!(
                    "must be `{}`, the window of AnomalyModel `{}` (spec.input.window)",
                    am.spec.input.window, m.model_ref
                ),
            ));
        }
        Ok(Model {
            model: m.model_ref.clone(),
            threshold: m.threshold,
            contract: Arc::new(contract),
        })
    }

    /// Scored asynchronously (the engine's `apply_model_scores`): the score of the last scored
    /// window, never a match of its own.
    pub fn evaluate(&self, state: &RuleState) -> Evaluation {
        Evaluation {
            score: state.last_window_score.unwrap_or(0.0),
            ..Evaluation::NONE
        }
    }
}
