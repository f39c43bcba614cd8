//! Reading Vigil resources from YAML files, the way `kubectl apply -f` would take them: one or
//! more `---`-separated documents, each with `apiVersion` and `kind`. Used by `vigil run` and
//! `vigil score` so that local runs and the cluster share one format.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

use crate::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline};

/// Failure to read a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML or does not match its kind's schema.
    #[error("{path}: document {index}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based document number.
        index: usize,
        /// What is wrong, with the field path where serde gives it.
        message: String,
    },
}

/// Every Vigil resource found in a set of manifests.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    /// StreamPipelines, in file order.
    pub pipelines: Vec<StreamPipeline>,
    /// DetectionRules, in file order.
    pub rules: Vec<DetectionRule>,
    /// AnomalyModels, in file order.
    pub models: Vec<AnomalyModel>,
    /// Objects of other API groups in the same files (the Secret beside a pipeline that
    /// `kubectl apply` also creates), skipped: `<apiVersion> <kind>/<name>`.
    pub skipped: Vec<String>,
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

impl Manifests {
    /// Reads a YAML file and appends its documents.
    ///
    /// # Errors
    /// [`ManifestError::Read`] when the file cannot be read; [`ManifestError::Invalid`] naming
    /// the document and field when a document is not a valid Vigil resource.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.add_str(&path.display().to_string(), &text)
    }

    /// Parses YAML text (`origin` names it in errors) and appends its documents.
    ///
    /// # Errors
    /// [`ManifestError::Invalid`] naming the document and what is wrong.
    pub fn add_str(&mut self, origin: &str, text: &str) -> Result<(), ManifestError> {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let index = i + 1;
            let invalid = |message: String| ManifestError::Invalid {
                path: origin.to_string(),
                index,
                message,
            };
            let value =
                serde_norway::Value::deserialize(doc).map_err(|e| invalid(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let meta: TypeMeta =
                serde_norway::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?;
            match meta.api_version.as_deref() {
                Some("vigil.dev/v1alpha1") => {}
                Some(other) if !other.starts_with("vigil.dev/") => {
                    let name = value
                        .get("metadata")
                        .and_then(|m| m.get("name"))
                        .and_then(|n| n.as_str())
                        .unwrap_or_default();
                    self.skipped.push(format!(
                        "{other} {}/{name}",
                        meta.kind.as_deref().unwrap_or_default()
                    ));
                    continue;
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "apiVersion is \"{other}\", expected \"vigil.dev/v1alpha1\""
                    )));
                }
                None => {
                    return Err(invalid(
                        "apiVersion is missing, expected \"vigil.dev/v1alpha1\"".into(),
                    ));
                }
            }
            let kind = meta.kind.unwrap_or_default();
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(serde_norway::Value::as_str)
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            // The field path of a schema error (`spec.windows[0].size`), by serde_path_to_error.
            let parse_err = |e: serde_path_to_error::Error<serde_norway::Error>| {
                invalid(format!("{kind}{name}: {}: {}", e.path(), e.inner()))
            };
            match kind.as_str() {
                "StreamPipeline" => self
                    .pipelines
                    .push(serde_path_to_error::deserialize(value).map_err(parse_err)?),
                "DetectionRule" => self
                    .rules
                    .push(serde_path_to_error::deserialize(value).map_err(parse_err)?),
                "AnomalyModel" => self
                    .models
                    .push(serde_path_to_error::deserialize(value).map_err(parse_err)?),
                other => {
                    return Err(invalid(format!(
                        "kind {other:?} is not one of StreamPipeline, DetectionRule, AnomalyModel"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The rules whose `pipelineSelector` selects `pipeline` (all rules without a selector).
    pub fn rules_for<'a>(&'a self, pipeline: &StreamPipeline) -> Vec<&'a DetectionRule> {
        let labels = pipeline.metadata.labels.clone().unwrap_or_default();
        self.rules
            .iter()
            .filter(|r| {
                r.spec
                    .pipeline_selector
                    .as_ref()
                    .is_none_or(|s| selector_matches(s, &labels))
            })
            .collect()
    }
}

/// Whether `selector` selects an object with `labels`, by kube's [`kube::core::Selector`]
/// (`matchLabels` and the `In`, `NotIn`, `Exists`, `DoesNotExist` expressions). An invalid
/// selector (an unknown operator, `In` without values) selects nothing; rules report it as
/// invalid through [`crate::v1alpha1::DetectionRuleSpec::selector`].
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    use kube::core::{Selector, SelectorExt};
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: p, labels: {team: infra}}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {eventTime: {field: timestamp}, wide: {fields: [{name: value}]}}
  windows: [{name: fast, size: 30s, slide: 15s, maxOutOfOrderness: 5s}]
  sinks: {alerts: {topic: alerts}}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: hot}
spec:
  pipelineSelector: {matchLabels: {team: infra}}
  window: fast
  for: 5m
  threshold: {field: value, feature: mean, operator: ">", value: 85}
---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: other-team}
spec:
  pipelineSelector: {matchLabels: {team: web}}
  window: fast
  threshold: {field: value, feature: max, operator: ">", value: 1}
"#;

    #[test]
    fn parses_documents_and_selects_rules() {
        let mut m = Manifests::default();
        m.add_str("test.yaml", PIPELINE).unwrap();
        assert_eq!(m.pipelines.len(), 1);
        assert_eq!(m.rules.len(), 2);
        let w = &m.pipelines[0].spec.windows[0];
        assert_eq!(
            (w.size_ms(), w.slide_ms(), w.max_out_of_orderness_ms()),
            (30_000, 15_000, 5_000)
        );
        let selected = m.rules_for(&m.pipelines[0]);
        assert_eq!(selected.len(), 1);
        assert_eq!(selected[0].spec.for_ms(), 300_000);
    }

    #[test]
    fn unknown_field_names_document_and_field() {
        let bad = "apiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: x}\nspec: {window: fast, treshold: {}}\n";
        let err = Manifests::default()
            .add_str("bad.yaml", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.yaml: document 1"), "{err}");
        assert!(err.contains("treshold"), "{err}");
    }

    #[test]
    fn wrong_api_version_is_rejected() {
        let bad = "apiVersion: vigil.dev/v1\nkind: StreamPipeline\nmetadata: {name: x}\n";
        let err = Manifests::default()
            .add_str("p.yaml", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected \"vigil.dev/v1alpha1\""), "{err}");
    }

    #[test]
    fn objects_of_other_api_groups_are_skipped_and_listed() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\n---\napiVersion: vigil.dev/v1alpha1\nkind: DetectionRule\nmetadata: {name: r}\nspec: {window: w, threshold: {field: v, feature: max, operator: '>', value: 1}}\n";
        let mut m = Manifests::default();
        m.add_str("mixed.yaml", text).unwrap();
        assert_eq!(m.rules.len(), 1);
        assert_eq!(m.skipped, vec!["v1 Secret/creds".to_string()]);
    }
}
