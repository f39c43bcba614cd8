//! `upgradeMode: Savepoint`: whether the detectors may be rolled to the config the spec renders
//! now, or must first take a savepoint (pure).
//!
//! An upgrade is a change of the spec's `pipeline.yaml` ([`super::build::SPEC_HASH_ANNOTATION`]
//! of the running StatefulSet differs from the spec's). Rules are not part of it: they reach
//! running detectors without a restart. In `Savepoint` mode, while detectors run, the operator
//! holds everything (ConfigMap and StatefulSet stay as they are, so running detectors do not
//! pick up the new `pipeline.yaml` either) until the `Savepoint` `<pipeline>-<spec hash>`
//! completes, then rolls the detectors with `restoreFrom` set to it. A failed savepoint holds
//! them for good (condition `SavepointFailed`); deleting it takes a new one. Without running
//! detectors there is no state to save and the roll goes ahead.

use k8s_openapi::api::apps::v1::StatefulSet;
use vigil_api::v1alpha1::{Savepoint, SavepointPhase, UpgradeMode};

use super::build::{RESTORE_FROM_ANNOTATION, SPEC_HASH_ANNOTATION};
use crate::labels::CONFIG_HASH_ANNOTATION;

/// What the reconcile does with the detectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Apply the children; with `restoreFrom` set to this savepoint when `Some`.
    Apply(Option<String>),
    /// Leave the detectors as they are until savepoint `savepoint` completes; `failed` is why
    /// it failed. The caller creates the Savepoint when it does not exist.
    Hold {
        /// Savepoint name.
        savepoint: String,
        /// Its failure.
        failed: Option<String>,
    },
}

/// The savepoint taken before rolling to spec hash `spec_hash`: `<pipeline>-<hash>`, cut to
/// 63 characters.
pub fn savepoint_name(pipeline: &str, spec_hash: &str) -> String {
    let hash = &spec_hash[..spec_hash.len().min(10)];
    let keep = 63 - hash.len() - 1;
    let base: String = pipeline.chars().take(keep).collect();
    format!("{}-{hash}", base.trim_end_matches(['-', '.']))
}

/// An annotation of a StatefulSet's pod template.
pub fn template_annotation<'a>(sts: &'a StatefulSet, key: &str) -> Option<&'a str> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Decides (see the module header). `live` is the running StatefulSet, `savepoint` the
/// Savepoint named by [`savepoint_name`] if it exists.
pub fn decide(
    mode: UpgradeMode,
    pipeline: &str,
    spec_hash: &str,
    live: Option<&StatefulSet>,
    savepoint: Option<&Savepoint>,
) -> Gate {
    let Some(live) = live else {
        return Gate::Apply(None);
    };
    // StatefulSets written before the spec hash existed carry the config hash only; without
    // restoreFrom the two are the same.
    let live_spec = template_annotation(live, SPEC_HASH_ANNOTATION)
        .or_else(|| template_annotation(live, CONFIG_HASH_ANNOTATION));
    let live_restore = template_annotation(live, RESTORE_FROM_ANNOTATION).map(str::to_string);
    if live_spec == Some(spec_hash) {
        return Gate::Apply(live_restore);
    }
    let running = live
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if mode != UpgradeMode::Savepoint || running == 0 {
        return Gate::Apply(None);
    }
    let name = savepoint_name(pipeline, spec_hash);
    let status = savepoint.and_then(|s| s.status.as_ref());
    match status.and_then(|s| s.phase) {
        Some(SavepointPhase::Completed) => Gate::Apply(Some(name)),
        Some(SavepointPhase::Failed) => Gate::Hold {
            savepoint: name,
            failed: Some(
                status
                    .and_then(|s| s.message.clone())
                    .unwrap_or_else(|| "no reason given".into()),
            ),
        },
        _ => Gate::Hold {
            savepoint: name,
            failed: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;
    use vigil_api::v1alpha1::{SavepointSpec, SavepointStatus};

    fn live(annotations: &[(&str, &str)], ready: i32) -> StatefulSet {
        StatefulSet {
            spec: Some(StatefulSetSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: Some(
                            annotations
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect::<BTreeMap<_, _>>(),
                        ),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..StatefulSetSpec::default()
            }),
            status: Some(StatefulSetStatus {
                ready_replicas: Some(ready),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        }
    }

    fn savepoint(phase: SavepointPhase, message: Option<&str>) -> Savepoint {
        let mut s = Savepoint::new(
            "p-new",
            SavepointSpec {
                pipeline: "p".into(),
            },
        );
        s.status = Some(SavepointStatus {
            phase: Some(phase),
            message: message.map(str::to_string),
            ..SavepointStatus::default()
        });
        s
    }

    #[test]
    fn only_a_spec_change_with_running_detectors_waits_for_a_savepoint() {
        let m = UpgradeMode::Savepoint;
        let old = live(&[(SPEC_HASH_ANNOTATION, "old")], 2);
        let name = savepoint_name("p", "new");
        assert_eq!(name, "p-new");
        // First deploy, and a re-apply of the same spec (keeping a restoreFrom in place).
        assert_eq!(decide(m, "p", "new", None, None), Gate::Apply(None));
        let rolled = live(
            &[
                (SPEC_HASH_ANNOTATION, "new"),
                (RESTORE_FROM_ANNOTATION, "p-new"),
            ],
            2,
        );
        assert_eq!(
            decide(m, "p", "new", Some(&rolled), None),
            Gate::Apply(Some("p-new".into()))
        );
        // An upgrade: hold until the savepoint completes, then roll restoring it.
        let hold = Gate::Hold {
            savepoint: name.clone(),
            failed: None,
        };
        assert_eq!(decide(m, "p", "new", Some(&old), None), hold);
        let in_progress = savepoint(SavepointPhase::InProgress, None);
        assert_eq!(decide(m, "p", "new", Some(&old), Some(&in_progress)), hold);
        let done = savepoint(SavepointPhase::Completed, None);
        assert_eq!(
            decide(m, "p", "new", Some(&old), Some(&done)),
            Gate::Apply(Some(name.clone()))
        );
        let failed = savepoint(SavepointPhase::Failed, Some("d-0: storage unwritable"));
        assert_eq!(
            decide(m, "p", "new", Some(&old), Some(&failed)),
            Gate::Hold {
                savepoint: name,
                failed: Some("d-0: storage unwritable".into())
            }
        );
        // Other modes, and no running detector: roll at once.
        assert_eq!(
            decide(UpgradeMode::LastState, "p", "new", Some(&old), None),
            Gate::Apply(None)
        );
        let stopped = live(&[(SPEC_HASH_ANNOTATION, "old")], 0);
        assert_eq!(
            decide(m, "p", "new", Some(&stopped), None),
            Gate::Apply(None)
        );
        // A StatefulSet from before the spec hash: its config hash stands in.
        let legacy = live(&[(CONFIG_HASH_ANNOTATION, "new")], 2);
        assert_eq!(
            decide(m, "p", "new", Some(&legacy), None),
            Gate::Apply(None)
        );
    }

    #[test]
    fn savepoint_names_fit_63_characters() {
        let long = "a".repeat(70);
        let n = savepoint_name(&long, "0123456789abcdef");
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("-0123456789"));
        assert!(vigil_core::config::valid_savepoint_name(&n));
    }
}
