//! What a rule is compiled against: the pipeline's validated config, its field table, the
//! AnomalyModels in scope and the rule's window tier. The checks every kind shares (a field
//! exists, a feature is computed) live here so each kind's module states only its own.

use vigil_api::v1alpha1::{AnomalyModel, Feature};

use crate::config::{FieldTable, InvalidSpec, PipelineConfig, TierConfig};

/// The pipeline side of a compile.
pub struct Scope<'a> {
    /// The pipeline.
    pub cfg: &'a PipelineConfig,
    /// Its numeric fields; open tables (narrow events without a parameter list) take new
    /// names.
    pub table: &'a mut FieldTable,
    /// AnomalyModels the rule may reference (its namespace).
    pub models: &'a [&'a AnomalyModel],
    /// Index of the rule's window tier in `cfg.tiers`.
    pub tier: usize,
}

impl Scope<'_> {
    /// The rule's window tier.
    pub fn tier(&self) -> &TierConfig {
        &self.cfg.tiers[self.tier]
    }

    /// The id of numeric field `name`, interned when the table is open.
    ///
    /// # Errors
    /// The field is not one of the pipeline's (the message lists them).
    pub fn field(&mut self, at: &str, name: &str) -> Result<u16, InvalidSpec> {
        self.table
            .get(name)
            .or_else(|| self.table.intern(name))
            .ok_or_else(|| {
                let names: Vec<&str> = (0..self.table.len() as u16)
                    .map(|i| self.table.name(i))
                    .collect();
                InvalidSpec::new(
                    at,
                    format!(
                        "field `{name}` is not a field of the pipeline (fields: {})",
                        names.join(", ")
                    ),
                )
            })
    }

    /// Checks that field `name` exists without interning it (references inside CEL).
    ///
    /// # Errors
    /// As [`Self::field`].
    pub fn has_field(&mut self, at: &str, name: &str) -> Result<(), InvalidSpec> {
        if self.table.is_open() {
            return Ok(());
        }
        self.field(at, name).map(drop)
    }

    /// Checks that the pipeline computes `feature`.
    ///
    /// # Errors
    /// The feature is not in `spec.features` (the message lists them).
    pub fn feature(&self, at: &str, feature: Feature) -> Result<(), InvalidSpec> {
        if self.cfg.features.contains(&feature) {
            return Ok(());
        }
        let computed: Vec<&str> = self.cfg.features.iter().map(|f| f.as_str()).collect();
        Err(InvalidSpec::new(
            at,
            format!(
                "feature `{feature}` is not computed by the pipeline (spec.features: {})",
                computed.join(", ")
            ),
        ))
    }
}
