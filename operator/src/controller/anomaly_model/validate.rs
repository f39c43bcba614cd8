//! Pure validation of an AnomalyModel: names and revisions the model server can serve, a
//! supported artifact URI, a feature contract of `<field>.<feature>` references, and, for
//! `configmap://` artifacts, that the ConfigMap has the key and its bytes match `sha256`.

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use vigil_api::v1alpha1::{AnomalyModel, Artifact, Feature, RolloutStrategy};

use super::dereference::Dereferenced;
use crate::controller::FieldError;
use crate::labels::{MAX_MODEL_NAME, check_dns_label, check_dns_subdomain};

/// Where an artifact comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactSource {
    /// `configmap://<name>/<key>`: a key of a ConfigMap in the model's namespace (binaryData
    /// or data).
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Key.
        key: String,
    },
    /// `http://` or `https://`: downloaded by an init container.
    Http(String),
}

/// One revision the model server loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedRevision {
    /// Version directory number.
    pub version: u64,
    /// Where the artifact is.
    pub source: ArtifactSource,
    /// Lower-case hex SHA-256 of the artifact.
    pub sha256: String,
}

/// Why a model cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelProblem {
    /// The spec is wrong: wait for it to change.
    Invalid(FieldError),
    /// A `configmap://` artifact is missing or does not match its digest: check again later.
    ArtifactUnavailable(FieldError),
}

/// A model that can be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedModel {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The stable revision, then the candidate if any.
    pub revisions: Vec<ServedRevision>,
    /// `spec.tls`: the server Secret's name and whether clients must authenticate.
    pub tls: Option<(String, bool)>,
}

/// Parses an artifact URI.
///
/// # Errors
/// A message naming the unsupported or malformed URI.
pub fn parse_artifact_uri(uri: &str) -> Result<ArtifactSource, String> {
    if let Some(rest) = uri.strip_prefix("configmap://") {
        return match rest.split_once('/') {
            Some((name, key)) if !name.is_empty() && !key.is_empty() && !key.contains('/') => {
                Ok(ArtifactSource::ConfigMap {
                    name: name.into(),
                    key: key.into(),
                })
            }
            _ => Err(format!(
                "`{uri}` is not of the form configmap://<name>/<key>"
            )),
        };
    }
    if uri.starts_with("https://") || uri.starts_with("http://") {
        return Ok(ArtifactSource::Http(uri.into()));
    }
    let scheme = uri.split_once("://").map_or(uri, |(s, _)| s);
    Err(format!(
        "scheme `{scheme}` is not supported by the operator; use configmap://<name>/<key> or https://"
    ))
}

fn revision_number(field: &str, revision: &str) -> Result<u64, ModelProblem> {
    revision.parse::<u64>().map_err(|_| {
        ModelProblem::Invalid(FieldError::new(
            field,
            format!(
                "`{revision}` is not a version number; the model server serves numbered versions"
            ),
        ))
    })
}

fn config_map_bytes(cm: &ConfigMap, key: &str) -> Option<Vec<u8>> {
    cm.binary_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            cm.data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.as_bytes().to_vec())
        })
}

fn served_revision(
    field: &str,
    version: u64,
    artifact: &Artifact,
    deref: &Dereferenced,
) -> Result<ServedRevision, ModelProblem> {
    let source = parse_artifact_uri(&artifact.uri)
        .map_err(|m| ModelProblem::Invalid(FieldError::new(format!("{field}.uri"), m)))?;
    if let ArtifactSource::ConfigMap { name, key } = &source {
        let unavailable = |path: &str, m: String| {
            ModelProblem::ArtifactUnavailable(FieldError::new(format!("{field}.{path}"), m))
        };
        let cm = deref
            .config_maps
            .get(name)
            .cloned()
            .flatten()
            .ok_or_else(|| unavailable("uri", format!("ConfigMap `{name}` does not exist")))?;
        let bytes = config_map_bytes(&cm, key)
            .ok_or_else(|| unavailable("uri", format!("ConfigMap `{name}` has no key `{key}`")))?;
        let digest = format!("{:x}", Sha256::digest(&bytes));
        if digest != artifact.sha256 {
            return Err(unavailable(
                "sha256",
                format!(
                    "ConfigMap `{name}` key `{key}` has SHA-256 {digest}, not {}",
                    artifact.sha256
                ),
            ));
        }
    }
    Ok(ServedRevision {
        version,
        source,
        sha256: artifact.sha256.clone(),
    })
}

/// Validates a model with what was dereferenced.
///
/// # Errors
/// [`ModelProblem::Invalid`] for a spec error, [`ModelProblem::ArtifactUnavailable`] for a
/// missing or mismatching `configmap://` artifact.
pub fn validate(
    model: &AnomalyModel,
    deref: &Dereferenced,
) -> Result<ValidatedModel, ModelProblem> {
    let name = model.metadata.name.clone().unwrap_or_default();
    let namespace = model.metadata.namespace.clone().unwrap_or_default();
    let spec = &model.spec;
    let invalid = |field: String, m: String| ModelProblem::Invalid(FieldError::new(field, m));
    check_dns_label(&name, MAX_MODEL_NAME).map_err(|m| invalid("metadata.name".into(), m))?;
    let stable = revision_number("spec.revision", &spec.revision)?;
    for (i, f) in spec.input.features.iter().enumerate() {
        let path = format!("spec.input.features[{i}]");
        let (_, feature) = f.rsplit_once('.').ok_or_else(|| {
            invalid(
                path.clone(),
                format!("`{f}` is not of the form <field>.<feature>"),
            )
        })?;
        feature
            .parse::<Feature>()
            .map_err(|e| invalid(path.clone(), format!("`{f}`: {e}")))?;
    }
    if let Some(n) = &spec.input.normalization {
        let expected = spec.input.features.len();
        for (key, values) in [("mean", &n.mean), ("scale", &n.scale)] {
            if values.len() != expected {
                return Err(invalid(
                    format!("spec.input.normalization.{key}"),
                    format!("has {} entries for {expected} features", values.len()),
                ));
            }
        }
        if let Some(i) = n.scale.iter().position(|s| *s == 0.0) {
            return Err(invalid(
                format!("spec.input.normalization.scale[{i}]"),
                "must not be 0".into(),
            ));
        }
    }
    let mut revisions = vec![served_revision(
        "spec.artifact",
        stable,
        &spec.artifact,
        deref,
    )?];
    if let Some(rollout) = &spec.rollout {
        let candidate = revision_number(
            "spec.rollout.candidate.revision",
            &rollout.candidate.revision,
        )?;
        if candidate == stable {
            return Err(invalid(
                "spec.rollout.candidate.revision".into(),
                format!("`{}` is the stable revision", rollout.candidate.revision),
            ));
        }
        if rollout.strategy == RolloutStrategy::Canary && rollout.weight.is_none() {
            return Err(invalid(
                "spec.rollout.weight".into(),
                "required for a Canary rollout".into(),
            ));
        }
        if let Some(a) = &rollout.analysis {
            check_analysis(a).map_err(|(field, reason)| invalid(field.into(), reason))?;
        }
        revisions.push(served_revision(
            "spec.rollout.candidate.artifact",
            candidate,
            &rollout.candidate.artifact,
            deref,
        )?);
    }
    // The model server's own verdict on the config.yaml each revision is served with
    // (vigil-model-server's contract renders it; its parser validates it).
    for r in &revisions {
        let config = vigil_model_server::contract::model_config(model, r.version, &r.sha256);
        config.validate().map_err(|reason| {
            invalid(
                "spec".into(),
                format!(
                    "the model server would reject the config.yaml of revision {}: {reason}",
                    r.version
                ),
            )
        })?;
    }
    if let Some(tls) = &spec.tls {
        for (field, secret) in [
            ("spec.tls.secretName", &tls.secret_name),
            ("spec.tls.clientSecretName", &tls.client_secret_name),
        ] {
            check_dns_subdomain(secret).map_err(|m| invalid(field.into(), m))?;
        }
    }
    Ok(ValidatedModel {
        name,
        namespace,
        revisions,
        tls: spec
            .tls
            .as_ref()
            .map(|t| (t.secret_name.clone(), t.client_auth)),
    })
}

/// `spec.rollout.analysis`: the interval at least 1 s, rates and ratios finite and in range.
fn check_analysis(a: &vigil_api::v1alpha1::RolloutAnalysis) -> Result<(), (&'static str, String)> {
    if let Some(i) = &a.interval
        && vigil_api::v1alpha1::duration_ms(i) < 1000
    {
        return Err((
            "spec.rollout.analysis.interval",
            "must be at least 1s".into(),
        ));
    }
    if let Some(r) = a.max_error_rate
        && !(0.0..=1.0).contains(&r)
    {
        return Err((
            "spec.rollout.analysis.maxErrorRate",
            format!("{r} is not a rate in 0..=1"),
        ));
    }
    if let Some(r) = a.max_anomaly_rate_ratio
        && !(r.is_finite() && r > 0.0)
    {
        return Err((
            "spec.rollout.analysis.maxAnomalyRateRatio",
            format!("{r} is not a positive number"),
        ));
    }
    if let Some(p) = &a.progress_deadline
        && vigil_api::v1alpha1::duration_ms(p) < 1000
    {
        return Err((
            "spec.rollout.analysis.progressDeadline",
            "must be at least 1s".into(),
        ));
    }
    if let Some(l) = &a.max_latency_p99
        && vigil_api::v1alpha1::duration_ms(l) <= 0
    {
        return Err((
            "spec.rollout.analysis.maxLatencyP99",
            "must be positive".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_fixtures::model;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    const ONNX: &[u8] = b"test";
    const ONNX_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn with_cm(bytes: &[u8]) -> Dereferenced {
        let cm = ConfigMap {
            binary_data: Some(BTreeMap::from([(
                "model.onnx".to_string(),
                ByteString(bytes.to_vec()),
            )])),
            ..ConfigMap::default()
        };
        Dereferenced {
            config_maps: BTreeMap::from([("iforest-onnx".to_string(), Some(cm))]),
        }
    }

    #[test]
    fn configmap_artifact_with_matching_digest_validates() {
        assert_eq!(format!("{:x}", Sha256::digest(ONNX)), ONNX_SHA);
        let v = validate(&model(), &with_cm(ONNX)).unwrap();
        assert_eq!(v.revisions.len(), 1);
        assert_eq!(v.revisions[0].version, 1);
        assert_eq!(
            v.revisions[0].source,
            ArtifactSource::ConfigMap {
                name: "iforest-onnx".into(),
                key: "model.onnx".into()
            }
        );
    }

    #[test]
    fn missing_or_mismatching_artifact_is_unavailable() {
        let e = validate(&model(), &Dereferenced::default()).unwrap_err();
        let ModelProblem::ArtifactUnavailable(e) = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            e.to_string(),
            "spec.artifact.uri: ConfigMap `iforest-onnx` does not exist"
        );
        let ModelProblem::ArtifactUnavailable(e) =
            validate(&model(), &with_cm(b"other")).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(e.field, "spec.artifact.sha256");
        assert!(e.message.contains(ONNX_SHA));
    }

    #[test]
    fn analysis_settings_out_of_range_name_the_field() {
        let analysis = |yaml: &str| -> vigil_api::v1alpha1::RolloutAnalysis {
            serde_norway::from_str(yaml).unwrap()
        };
        assert_eq!(
            check_analysis(&analysis("{interval: 30s, maxErrorRate: 0.1}")),
            Ok(())
        );
        for (yaml, field) in [
            ("{interval: 500ms}", "spec.rollout.analysis.interval"),
            ("{maxErrorRate: 1.5}", "spec.rollout.analysis.maxErrorRate"),
            (
                "{maxAnomalyRateRatio: 0}",
                "spec.rollout.analysis.maxAnomalyRateRatio",
            ),
            ("{maxLatencyP99: 0s}", "spec.rollout.analysis.maxLatencyP99"),
            (
                "{progressDeadline: 0s}",
                "spec.rollout.analysis.progressDeadline",
            ),
        ] {
            assert_eq!(
                check_analysis(&analysis(yaml)).unwrap_err().0,
                field,
                "{yaml}"
            );
        }
    }

    #[test]
    fn spec_errors_name_the_field() {
        let mut m = model();
        m.spec.artifact.uri = "s3://bucket/model.onnx".into();
        let ModelProblem::Invalid(e) = validate(&m, &with_cm(ONNX)).unwrap_err() else {
            panic!()
        };
        assert_eq!(e.field, "spec.artifact.uri");
        assert!(e.message.contains("scheme `s3`"));

        let mut m = model();
        m.spec.revision = "v2".into();
        let ModelProblem::Invalid(e) = validate(&m, &with_cm(ONNX)).unwrap_err() else {
            panic!()
        };
        assert_eq!(e.field, "spec.revision");

        let mut m = model();
        m.spec.input.features.push("value.avg".into());
        let ModelProblem::Invalid(e) = validate(&m, &with_cm(ONNX)).unwrap_err() else {
            panic!()
        };
        assert_eq!(e.field, "spec.input.features[2]");
    }

    #[test]
    fn https_artifacts_need_no_lookup() {
        let mut m = model();
        m.spec.artifact.uri = "https://models.example/iforest/1/model.onnx".into();
        let v = validate(&m, &Dereferenced::default()).unwrap();
        assert!(matches!(v.revisions[0].source, ArtifactSource::Http(_)));
        assert!(parse_artifact_uri("configmap://only-name").is_err());
    }
}
