//! Names and labels of the children the operator creates. Every child has a fixed name derived
//! from its owner's name, the recommended `app.kubernetes.io/*` labels, and a selector made of
//! `app.kubernetes.io/name` + `app.kubernetes.io/instance` (immutable once a workload exists).

use std::collections::BTreeMap;

/// Server-side apply field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "vigil-operator";
/// `app.kubernetes.io/name` of detector pods.
pub const DETECTOR_APP: &str = "vigil-detector";
/// `app.kubernetes.io/name` of model-server pods.
pub const MODEL_SERVER_APP: &str = "vigil-model-server";
/// Label naming the StreamPipeline that owns a child.
pub const PIPELINE_LABEL: &str = "vigil.dev/pipeline";
/// Label naming the AnomalyModel that owns a child.
pub const MODEL_LABEL: &str = "vigil.dev/model";
/// Pod-template annotation: hash of the rendered `pipeline.yaml`. A change rolls the detectors;
/// rules live in another key and do not feed it.
pub const CONFIG_HASH_ANNOTATION: &str = "vigil.dev/config-hash";
/// Pod-template annotation: digests of the artifacts a model server loads. A change rolls it.
pub const ARTIFACT_HASH_ANNOTATION: &str = "vigil.dev/artifact-sha256";

/// Longest StreamPipeline name: `<name>-detector` names a StatefulSet, whose pods carry the
/// label `controller-revision-hash=<name>-detector-<10 chars>`, at most 63 characters.
pub const MAX_PIPELINE_NAME: usize = 40;
/// Longest AnomalyModel name: `<name>-model-server` names a Service (a DNS-1035 label, at
/// most 63 characters).
pub const MAX_MODEL_NAME: usize = 50;

/// StatefulSet, headless Service, ServiceAccount, Role, RoleBinding and PodDisruptionBudget of
/// a pipeline's detectors.
pub fn detector_name(pipeline: &str) -> String {
    format!("{pipeline}-detector")
}

/// ConfigMap holding `pipeline.yaml` and `rules.yaml` of a pipeline.
pub fn detector_config_name(pipeline: &str) -> String {
    format!("{pipeline}-detector-config")
}

/// Deployment and Service of a model's server.
pub fn model_server_name(model: &str) -> String {
    format!("{model}-model-server")
}

/// The in-cluster gRPC address (`host:port`) of a model's server.
pub fn model_server_grpc_address(model: &str, namespace: &str, port: i32) -> String {
    format!("{}.{namespace}.svc:{port}", model_server_name(model))
}

/// Selector labels of a pipeline's detector pods.
pub fn detector_selector(pipeline: &str) -> BTreeMap<String, String> {
    selector(DETECTOR_APP, pipeline)
}

/// Selector labels of a model's server pods.
pub fn model_server_selector(model: &str) -> BTreeMap<String, String> {
    selector(MODEL_SERVER_APP, model)
}

/// The selector as the string form used by the scale subresource (`a=b,c=d`).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// All labels of a pipeline's children.
pub fn detector_labels(pipeline: &str) -> BTreeMap<String, String> {
    let mut labels = detector_selector(pipeline);
    labels.insert("app.kubernetes.io/component".into(), "detector".into());
    labels.insert("app.kubernetes.io/part-of".into(), "vigil".into());
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels.insert(PIPELINE_LABEL.into(), pipeline.into());
    labels
}

/// All labels of a model's children.
pub fn model_server_labels(model: &str) -> BTreeMap<String, String> {
    let mut labels = model_server_selector(model);
    labels.insert("app.kubernetes.io/component".into(), "model-server".into());
    labels.insert("app.kubernetes.io/part-of".into(), "vigil".into());
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels.insert(MODEL_LABEL.into(), model.into());
    labels
}

fn selector(app: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), app.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            instance.to_string(),
        ),
    ])
}

/// Checks that `name` is a DNS-1035 label (`[a-z]([-a-z0-9]*[a-z0-9])?`) of at most `max`
/// characters, so that names derived from it are valid Service and pod names.
///
/// # Errors
/// A message saying which rule the name breaks.
pub fn check_dns_label(name: &str, max: usize) -> Result<(), String> {
    if name.len() > max {
        return Err(format!(
            "`{name}` is {} characters long; at most {max} are allowed because child names are derived from it",
            name.len()
        ));
    }
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)"
        ))
    }
}

/// Checks that `name` can name a Secret or ConfigMap: a DNS-1123 subdomain (at most 253
/// lower-case letters, digits, '-' and '.', starting and ending with a letter or digit).
///
/// # Errors
/// A message naming the offending name.
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 253
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes.iter().all(|b| alnum(*b) || *b == b'-' || *b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a DNS-1123 subdomain (at most 253 lower-case letters, digits, '-' and '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_dns_subdomains() {
        for ok in ["tls", "iforest-server.tls", "a1"] {
            assert!(check_dns_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "-lead",
            "trail.",
            "under_score",
            &"a".repeat(254),
        ] {
            let e = check_dns_subdomain(bad).unwrap_err();
            assert!(e.contains("DNS-1123 subdomain"), "{bad}: {e}");
        }
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("nab-cpu", 40).is_ok());
        assert!(
            check_dns_label("1nab", 40)
                .unwrap_err()
                .contains("DNS-1035")
        );
        assert!(check_dns_label("nab-", 40).is_err());
        assert!(check_dns_label("Nab", 40).is_err());
        assert!(
            check_dns_label(&"a".repeat(41), 40)
                .unwrap_err()
                .contains("41 characters")
        );
        assert!(check_dns_label("", 40).is_err());
    }

    #[test]
    fn selector_string_is_sorted_pairs() {
        assert_eq!(
            selector_string(&detector_selector("p")),
            "app.kubernetes.io/instance=p,app.kubernetes.io/name=vigil-detector"
        );
    }
}
