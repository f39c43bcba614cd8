//! The I/O before an AnomalyModel is validated: the ConfigMaps holding `configmap://`
//! artifacts, so that their presence and SHA-256 are checked before any pod starts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use vigil_api::v1alpha1::AnomalyModel;

use super::validate::{ArtifactSource, parse_artifact_uri};
use crate::controller::{Context, Error};

/// What a model refers to.
#[derive(Clone, Debug, Default)]
pub struct Dereferenced {
    /// ConfigMaps named by `configmap://` artifacts (stable and candidate): name -> the
    /// ConfigMap, or `None` when it does not exist.
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
}

/// Reads the ConfigMaps the model's artifacts live in.
///
/// # Errors
/// [`Error::ReadArtifact`] when the API server cannot be asked (not when a ConfigMap is
/// missing: that is recorded as `None`).
pub async fn dereference(model: &AnomalyModel, ctx: &Context) -> Result<Dereferenced, Error> {
    let namespace = model.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut uris = vec![model.spec.artifact.uri.as_str()];
    if let Some(rollout) = &model.spec.rollout {
        uris.push(rollout.candidate.artifact.uri.as_str());
    }
    let mut config_maps = BTreeMap::new();
    for uri in uris {
        if let Ok(ArtifactSource::ConfigMap { name, .. }) = parse_artifact_uri(uri) {
            if config_maps.contains_key(&name) {
                continue;
            }
            let cm = api
                .get_opt(&name)
                .await
                .map_err(|source| Error::ReadArtifact {
                    name: name.clone(),
                    source,
                })?;
            config_maps.insert(name, cm);
        }
    }
    Ok(Dereferenced { config_maps })
}
