//! `spec.threshold`: `<field>.<feature> <operator> <value>` on each window. Stateless.

use vigil_api::v1alpha1::{Feature, Operator, ThresholdRule};

use super::scope::Scope;
use super::{Evaluation, WindowView};
use crate::config::InvalidSpec;

/// A compiled threshold rule.
#[derive(Debug)]
pub struct Threshold {
    /// Field id.
    pub field: u16,
    /// Feature of the field.
    pub feature: Feature,
    /// Comparison.
    pub operator: Operator,
    /// Threshold, in the field's unit.
    pub value: f64,
}

/// Checks what needs no pipeline.
///
/// # Errors
/// A non-finite `value`.
pub fn validate(t: &ThresholdRule) -> Result<(), InvalidSpec> {
    if t.value.is_finite() {
        Ok(())
    } else {
        Err(InvalidSpec::new(
            "spec.threshold.value",
            "must be a finite number",
        ))
    }
}

impl Threshold {
    /// Compiles against a pipeline.
    ///
    /// # Errors
    /// The field or feature is not the pipeline's; see [`validate`].
    pub fn compile(t: &ThresholdRule, scope: &mut Scope<'_>) -> Result<Self, InvalidSpec> {
        validate(t)?;
        let field = scope.field("spec.threshold.field", &t.field)?;
        scope.feature("spec.threshold.feature", t.feature)?;
        Ok(Threshold {
            field,
            feature: t.feature,
            operator: t.operator,
            value: t.value,
        })
    }

    /// Matches when the window's feature satisfies the comparison; score 1 or 0.
    pub fn evaluate(&self, w: &WindowView<'_>) -> Evaluation {
        let Some(x) = w.feature(self.field, self.feature) else {
            return Evaluation::NONE;
        };
        let matched = self.operator.holds(x, self.value);
        Evaluation {
            matched,
            score: if matched { 1.0 } else { 0.0 },
            value: x,
        }
    }
}
