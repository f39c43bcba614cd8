//! Pure: the audit trail of DetectionRules and AnomalyModels. When a reconcile accepts a new
//! generation, [`spec_change`] says who applied it (the field manager that last wrote `spec`,
//! from `metadata.managedFields`) and which top-level spec fields changed since the previous
//! accepted generation (compared by digest, so status does not carry old specs); the
//! reconciler records it in `status.lastChange` and raises a `SpecChanged` Event with
//! [`sentence`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use sha2::{Digest, Sha256};
use vigil_api::v1alpha1::SpecChange;

/// Event reason of an accepted spec change.
pub const REASON: &str = "SpecChanged";

/// Per top-level field of `spec`, the first 16 hex digits of the SHA-256 of its JSON.
fn digests(spec: &impl Serialize) -> BTreeMap<String, String> {
    let value = serde_json::to_value(spec).unwrap_or_default();
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let hex = format!("{:x}", Sha256::digest(v.to_string().as_bytes()));
                    (k.clone(), hex[..16].to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The manager that wrote `spec` last: among the managedFields entries of the main resource
/// (not a subresource) that own fields under `spec`, those owning one of the `changed` fields
/// (`spec.<field>`) if any, and of them the one with the latest time. managedFields times have
/// one-second resolution; ownership breaks the tie when two managers wrote in the same second
/// (an Update takes the fields it changes from the earlier writer).
fn spec_writer(
    meta: &ObjectMeta,
    changed: &[String],
) -> (
    String,
    String,
    Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) {
    let writers: Vec<_> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").is_some())
        })
        .collect();
    let owns_changed = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry| {
        let spec = m.fields_v1.as_ref().and_then(|f| f.0.get("f:spec"));
        changed.iter().any(|c| {
            let field = c.strip_prefix("spec.").unwrap_or(c);
            spec.and_then(|s| s.get(format!("f:{field}"))).is_some()
        })
    };
    let owners: Vec<_> = writers
        .iter()
        .copied()
        .filter(|m| owns_changed(m))
        .collect();
    let pool = if owners.is_empty() { writers } else { owners };
    let best = pool.into_iter().max_by(|a, b| {
        a.time
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.time.as_ref().map(|t| t.0))
    });
    match best {
        Some(m) => (
            m.manager.clone().unwrap_or_else(|| "unknown".into()),
            m.operation.clone().unwrap_or_default(),
            m.time.clone(),
        ),
        None => ("unknown".into(), String::new(), None),
    }
}

/// The change to record when `meta.generation` is accepted, or `None` when `previous`
/// already records that generation.
pub fn spec_change(
    meta: &ObjectMeta,
    spec: &impl Serialize,
    previous: Option<&SpecChange>,
) -> Option<SpecChange> {
    let generation = meta.generation.unwrap_or(0);
    if previous.is_some_and(|p| p.generation == generation) {
        return None;
    }
    let field_digests = digests(spec);
    let before = previous.map(|p| &p.field_digests);
    let mut changed: Vec<String> = field_digests
        .iter()
        .filter(|(k, d)| before.and_then(|b| b.get(*k)) != Some(*d))
        .map(|(k, _)| format!("spec.{k}"))
        .collect();
    if let Some(b) = before {
        changed.extend(
            b.keys()
                .filter(|k| !field_digests.contains_key(*k))
                .map(|k| format!("spec.{k}")),
        );
        changed.sort();
    }
    let (manager, operation, time) = spec_writer(meta, &changed);
    Some(SpecChange {
        generation,
        manager,
        operation,
        time,
        changed,
        field_digests,
    })
}

/// The Event note: `generation 4 applied by kubectl-client-side-apply (Update): spec.threshold
/// changed`.
pub fn sentence(c: &SpecChange, first: bool) -> String {
    let op = if c.operation.is_empty() {
        String::new()
    } else {
        format!(" ({})", c.operation)
    };
    let what = if first {
        "created".to_string()
    } else if c.changed.is_empty() {
        "no spec field changed (metadata-only generation bump)".to_string()
    } else {
        format!("{} changed", c.changed.join(", "))
    };
    format!(
        "generation {} applied by {}{op}: {what}",
        c.generation, c.manager
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};

    fn entry(
        manager: &str,
        op: &str,
        secs: i64,
        spec: bool,
        sub: Option<&str>,
    ) -> ManagedFieldsEntry {
        let fields = if spec {
            serde_json::json!({"f:spec": {"f:threshold": {}}})
        } else {
            serde_json::json!({"f:metadata": {"f:labels": {}}})
        };
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(op.into()),
            time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
            )),
            fields_v1: Some(FieldsV1(fields)),
            subresource: sub.map(Into::into),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn the_last_spec_writer_and_the_changed_fields_are_recorded_once_per_generation() {
        let mut meta = ObjectMeta {
            generation: Some(1),
            managed_fields: Some(vec![entry("argocd-controller", "Apply", 100, true, None)]),
            ..ObjectMeta::default()
        };
        let v1 = serde_json::json!({"window": "fast", "threshold": {"value": 90}, "severity": "critical"});
        let first = spec_change(&meta, &v1, None).unwrap();
        assert_eq!(first.manager, "argocd-controller");
        assert_eq!(first.changed.len(), 3);
        assert_eq!(
            sentence(&first, true),
            "generation 1 applied by argocd-controller (Apply): created"
        );
        // The same generation again: nothing new.
        assert!(spec_change(&meta, &v1, Some(&first)).is_none());
        // Generation 2: kubectl edits the threshold and drops the severity; the operator's
        // status writes and a label-only writer do not count.
        meta.generation = Some(2);
        meta.managed_fields.as_mut().unwrap().extend([
            entry("kubectl-edit", "Update", 200, true, None),
            entry("vigil-operator", "Apply", 300, true, Some("status")),
            entry("labeller", "Update", 400, false, None),
        ]);
        let v2 = serde_json::json!({"window": "fast", "threshold": {"value": 95.5}});
        let second = spec_change(&meta, &v2, Some(&first)).unwrap();
        assert_eq!(
            (second.manager.as_str(), second.operation.as_str()),
            ("kubectl-edit", "Update")
        );
        assert_eq!(second.changed, ["spec.severity", "spec.threshold"]);
        assert_eq!(
            sentence(&second, false),
            "generation 2 applied by kubectl-edit (Update): spec.severity, spec.threshold changed"
        );
        // Two writers in the same second: the one that owns the changed field wins.
        meta.generation = Some(3);
        let owner = |manager: &str, field: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(500).unwrap(),
            )),
            fields_v1: Some(FieldsV1(
                serde_json::json!({"f:spec": {format!("f:{field}"): {}}}),
            )),
            ..ManagedFieldsEntry::default()
        };
        meta.managed_fields = Some(vec![
            owner("kubectl-vigil", "window"),
            owner("vigil-e2e", "threshold"),
        ]);
        let v3 = serde_json::json!({"window": "slow", "threshold": {"value": 95.5}});
        let tie = spec_change(&meta, &v3, Some(&second)).unwrap();
        assert_eq!(tie.changed, ["spec.window"]);
        assert_eq!(tie.manager, "kubectl-vigil");
        meta.managed_fields = Some(vec![
            owner("vigil-e2e", "window"),
            owner("kubectl-vigil", "threshold"),
        ]);
        assert_eq!(
            spec_change(&meta, &v3, Some(&second)).unwrap().manager,
            "vigil-e2e"
        );
        // Without managedFields the writer is unknown.
        meta.generation = Some(4);
        meta.managed_fields = None;
        let third = spec_change(&meta, &v2, Some(&second)).unwrap();
        assert_eq!(third.manager, "unknown");
        assert!(third.changed.is_empty());
    }
}
