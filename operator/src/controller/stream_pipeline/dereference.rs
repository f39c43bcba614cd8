//! The I/O before a StreamPipeline is validated: the DetectionRules that select it and the
//! AnomalyModels of its namespace (from the operator's caches) and the partitions of its
//! source topics (from Kafka).

use std::collections::BTreeMap;
use std::sync::Arc;

use vigil_api::manifest::selector_matches;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, SecurityProtocol, StreamPipeline};

use crate::controller::Context;
pub use crate::kafka::Partitions;

/// What a pipeline refers to.
#[derive(Clone, Debug)]
pub struct Dereferenced {
    /// DetectionRules of the namespace whose `pipelineSelector` selects the pipeline.
    pub rules: Vec<Arc<DetectionRule>>,
    /// AnomalyModels of the namespace, by name.
    pub models: BTreeMap<String, Arc<AnomalyModel>>,
    /// Partitions of the source topics.
    pub partitions: Partitions,
}

/// Rules of `rules` (any namespace) that select `pipeline`.
pub fn selecting_rules(
    pipeline: &StreamPipeline,
    rules: impl IntoIterator<Item = Arc<DetectionRule>>,
) -> Vec<Arc<DetectionRule>> {
    let labels = pipeline.metadata.labels.clone().unwrap_or_default();
    rules
        .into_iter()
        .filter(|r| r.metadata.namespace == pipeline.metadata.namespace)
        .filter(|r| {
            r.spec
                .pipeline_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &labels))
        })
        .collect()
}

/// Models of `namespace` by name.
pub fn namespace_models(
    namespace: Option<&str>,
    models: impl IntoIterator<Item = Arc<AnomalyModel>>,
) -> BTreeMap<String, Arc<AnomalyModel>> {
    models
        .into_iter()
        .filter(|m| m.metadata.namespace.as_deref() == namespace)
        .map(|m| (m.metadata.name.clone().unwrap_or_default(), m))
        .collect()
}

/// Reads the rules, models and partitions a pipeline refers to.
pub async fn dereference(pipeline: &StreamPipeline, ctx: &Context) -> Dereferenced {
    let rules = selecting_rules(pipeline, ctx.rules.state());
    let models = namespace_models(pipeline.metadata.namespace.as_deref(), ctx.models.state());
    let kafka = &pipeline.spec.source.kafka;
    let bootstrap = kafka
        .bootstrap_servers
        .as_deref()
        .or(ctx.config.default_bootstrap_servers.as_deref());
    let partitions = match (bootstrap, kafka.security.as_ref().map(|s| s.protocol)) {
        (None, _) => Partitions::Unknown("no bootstrap servers".into()),
        (Some(_), Some(p)) if p != SecurityProtocol::Plaintext => Partitions::Unknown(format!(
            "the operator reads partition counts over PLAINTEXT only and the source uses {p:?}"
        )),
        (Some(bootstrap), _) => ctx.kafka.partitions(bootstrap, &kafka.topics).await,
    };
    Dereferenced {
        rules,
        models,
        partitions,
    }
}
