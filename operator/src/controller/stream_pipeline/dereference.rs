//! The I/O before a StreamPipeline is validated: the DetectionRules that select it and the
//! AnomalyModels of its namespace (from the operator's caches) and the partitions of its
//! source topics (from Kafka).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use vigil_api::manifest::selector_matches;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, KafkaSource, StreamPipeline};

use crate::controller::Context;
pub use crate::kafka::Partitions;
use crate::kafka::{ClusterRef, SecretData, connection_properties, referenced_secrets};

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

/// Reads the rules, models and partitions a pipeline refers to. The partition lookup connects
/// with the pipeline's security settings; the Secrets they name are read from the pipeline's
/// namespace only when the lookup is not cached.
pub async fn dereference(pipeline: &StreamPipeline, ctx: &Context) -> Dereferenced {
    let rules = selecting_rules(pipeline, ctx.rules.state());
    let models = namespace_models(pipeline.metadata.namespace.as_deref(), ctx.models.state());
    let kafka = &pipeline.spec.source.kafka;
    let bootstrap = kafka
        .bootstrap_servers
        .as_deref()
        .or(ctx.config.default_bootstrap_servers.as_deref());
    let namespace = pipeline.metadata.namespace.clone().unwrap_or_default();
    let partitions = match bootstrap {
        None => Partitions::Unknown("no bootstrap servers".into()),
        Some(bootstrap) => {
            let cluster = ClusterRef::of_source(bootstrap, &namespace, kafka);
            let namespace = namespace.as_str();
            ctx.kafka
                .partitions(&cluster, &kafka.topics, || async move {
                    let secrets = read_secrets(&ctx.client, namespace, kafka).await?;
                    connection_properties(kafka, &secrets)
                })
                .await
        }
    };
    Dereferenced {
        rules,
        models,
        partitions,
    }
}

/// The data of the Secrets `kafka.security` names, from `namespace`.
///
/// # Errors
/// A message naming the field and the Secret when one cannot be read (missing, or the
/// operator may not `get` Secrets there).
async fn read_secrets(
    client: &kube::Client,
    namespace: &str,
    kafka: &KafkaSource,
) -> Result<SecretData, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut data = SecretData::new();
    for (field, name) in referenced_secrets(kafka) {
        if data.contains_key(&name) {
            continue;
        }
        let secret = api.get(&name).await.map_err(|e| {
            format!(
                "spec.source.kafka.security.{field}: cannot read Secret `{namespace}/{name}` for the partition lookup: {e}"
            )
        })?;
        let values = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        data.insert(name, values);
    }
    Ok(data)
}
