//! The reads before a DetectionRule is validated, all from the operator's caches: the
//! pipelines of its namespace that it selects, the other rules of its namespace (a pipeline's
//! rules are compiled together: ensembles name their members) and the AnomalyModels of its
//! namespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use vigil_api::manifest::selector_matches;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline};

use crate::controller::Context;
use crate::controller::stream_pipeline::dereference::namespace_models;

/// What a rule refers to.
#[derive(Clone, Debug, Default)]
pub struct Dereferenced {
    /// Pipelines selected by the rule, sorted by name.
    pub pipelines: Vec<Arc<StreamPipeline>>,
    /// DetectionRules of the namespace.
    pub rules: Vec<Arc<DetectionRule>>,
    /// AnomalyModels of the namespace, by name.
    pub models: BTreeMap<String, Arc<AnomalyModel>>,
}

/// Pipelines of `pipelines` (any namespace) that `rule` selects, sorted by name.
pub fn selected_pipelines(
    rule: &DetectionRule,
    pipelines: impl IntoIterator<Item = Arc<StreamPipeline>>,
) -> Vec<Arc<StreamPipeline>> {
    let mut selected: Vec<_> = pipelines
        .into_iter()
        .filter(|p| p.metadata.namespace == rule.metadata.namespace)
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            rule.spec
                .pipeline_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &labels))
        })
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    selected
}

/// Reads the pipelines and models a rule refers to.
pub fn dereference(rule: &DetectionRule, ctx: &Context) -> Dereferenced {
    Dereferenced {
        pipelines: selected_pipelines(rule, ctx.pipelines.state()),
        rules: ctx
            .rules
            .state()
            .into_iter()
            .filter(|r| r.metadata.namespace == rule.metadata.namespace)
            .collect(),
        models: namespace_models(rule.metadata.namespace.as_deref(), ctx.models.state()),
    }
}
