//! The Argo CD health checks shipped in `charts/vigil/argocd/health/` (Lua, the
//! `resource.customizations.health.<group>_<kind>` format), run by a real Lua 5.4 interpreter
//! (`mlua`, vendored) against status fixtures for every phase, the way Argo CD runs them: the
//! resource as the global `obj`, the script's return value `{status, message}`. Also checks
//! that `charts/vigil/argocd/argocd-cm.yaml` carries the scripts as they are
//! (`UPDATE_ARGOCD_CM=1 cargo test -p vigil-operator --test argocd_health` rewrites it).

use std::path::PathBuf;

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{Value, json};

const KINDS: [&str; 3] = ["StreamPipeline", "AnomalyModel", "Savepoint"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/vigil/argocd")
}

fn script(kind: &str) -> String {
    std::fs::read_to_string(dir().join(format!("health/vigil.dev_{kind}.lua"))).unwrap()
}

/// Runs `kind`'s health check on `obj`: (status, message).
fn health(kind: &str, obj: Value) -> (String, String) {
    let lua = Lua::new();
    lua.globals()
        .set("obj", lua.to_value(&obj).unwrap())
        .unwrap();
    let hs: Table = lua
        .load(script(kind))
        .set_name(kind)
        .eval()
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    (
        hs.get::<String>("status").unwrap(),
        hs.get::<Option<String>>("message")
            .unwrap()
            .unwrap_or_default(),
    )
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-30T10:00:00Z", "observedGeneration": 2})
}

fn resource(generation: i64, observed: Option<i64>, conditions: Vec<Value>) -> Value {
    let mut status = json!({"conditions": conditions});
    if let Some(o) = observed {
        status["observedGeneration"] = json!(o);
    }
    json!({"apiVersion": "vigil.dev/v1alpha1", "metadata": {"name": "x", "generation": generation},
           "spec": {}, "status": status})
}

#[test]
fn stream_pipeline_health_for_every_phase() {
    let ok = |r: &str| cond("Ready", "True", r, "4 of 4 detectors ready");
    let not_degraded = cond("Degraded", "False", "AsExpected", "");
    let done = cond(
        "Progressing",
        "False",
        "RolloutComplete",
        "4 detectors run the current config",
    );
    let cases = [
        (
            json!({"metadata": {"name": "x", "generation": 1}, "spec": {}}),
            "Progressing",
            "Waiting for the operator",
        ),
        (
            resource(3, Some(2), vec![ok("Running")]),
            "Progressing",
            "observe generation 3",
        ),
        (
            resource(
                2,
                Some(2),
                vec![ok("Running"), done.clone(), not_degraded.clone()],
            ),
            "Healthy",
            "4 of 4 detectors ready",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    cond(
                        "Ready",
                        "False",
                        "DetectorsNotReady",
                        "2 of 4 detectors ready",
                    ),
                    cond(
                        "Progressing",
                        "True",
                        "RollingOut",
                        "rolling out 4 detectors (2 running)",
                    ),
                    not_degraded.clone(),
                ],
            ),
            "Progressing",
            "rolling out",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    ok("Running"),
                    cond(
                        "Progressing",
                        "True",
                        "SavepointInProgress",
                        "taking savepoint s-1",
                    ),
                    not_degraded.clone(),
                ],
            ),
            "Progressing",
            "savepoint",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    cond(
                        "Ready",
                        "False",
                        "DetectorsNotReady",
                        "2 of 4 detectors ready",
                    ),
                    cond(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        "has not completed within 600 s",
                    ),
                    not_degraded.clone(),
                ],
            ),
            "Degraded",
            "600 s",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    cond(
                        "Ready",
                        "False",
                        "SavepointFailed",
                        "durable-detector-0: refused; no detector was rolled",
                    ),
                    done.clone(),
                    not_degraded.clone(),
                ],
            ),
            "Degraded",
            "no detector was rolled",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    ok("Running"),
                    done.clone(),
                    cond(
                        "Degraded",
                        "True",
                        "ModelNotReady",
                        "AnomalyModel `iforest` is not ready",
                    ),
                ],
            ),
            "Degraded",
            "iforest",
        ),
    ];
    for (i, (obj, status, says)) in cases.into_iter().enumerate() {
        let (got, message) = health("StreamPipeline", obj);
        assert_eq!(got, status, "case {i}: {message}");
        assert!(
            message.contains(says),
            "case {i}: {message:?} lacks {says:?}"
        );
    }
}

#[test]
fn anomaly_model_health_for_every_phase() {
    let cases = [
        (resource(1, None, vec![]), "Progressing"),
        (
            resource(
                2,
                Some(2),
                vec![
                    cond("Ready", "True", "Serving", "serving revision 1"),
                    cond("Progressing", "False", "RolloutComplete", ""),
                    cond("Degraded", "False", "AsExpected", ""),
                ],
            ),
            "Healthy",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    cond("Ready", "False", "Starting", "starting"),
                    cond(
                        "Progressing",
                        "True",
                        "RollingOut",
                        "rolling out revision 2",
                    ),
                    cond("Degraded", "False", "AsExpected", ""),
                ],
            ),
            "Progressing",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    cond(
                        "Ready",
                        "False",
                        "ArtifactUnavailable",
                        "ConfigMap `m` does not exist",
                    ),
                    cond("Progressing", "False", "ArtifactUnavailable", ""),
                    cond("Degraded", "False", "AsExpected", ""),
                ],
            ),
            "Degraded",
        ),
        (
            resource(
                2,
                Some(2),
                vec![
                    cond("Ready", "False", "Starting", ""),
                    cond("Progressing", "False", "RolloutComplete", ""),
                    cond(
                        "Degraded",
                        "True",
                        "RolloutStuck",
                        "ProgressDeadlineExceeded",
                    ),
                ],
            ),
            "Degraded",
        ),
        // An analysed rollout: analysing, promoted, failed (spec.rollout.analysis).
        (
            resource(
                3,
                Some(3),
                vec![
                    cond("Ready", "True", "Serving", "revision 1 served"),
                    cond(
                        "Progressing",
                        "True",
                        "Analysing",
                        "analysing candidate revision 2: 1 of 5 intervals passed",
                    ),
                    cond("Degraded", "False", "AsExpected", ""),
                ],
            ),
            "Progressing",
        ),
        (
            resource(
                3,
                Some(3),
                vec![
                    cond("Ready", "True", "Serving", "revision 2 served"),
                    cond(
                        "Progressing",
                        "False",
                        "RolloutPromoted",
                        "revision 2 passed",
                    ),
                    cond("Degraded", "False", "AsExpected", ""),
                ],
            ),
            "Healthy",
        ),
        (
            resource(
                3,
                Some(3),
                vec![
                    cond("Ready", "True", "Serving", "revision 1 served"),
                    cond("Progressing", "False", "RolloutComplete", ""),
                    cond(
                        "Degraded",
                        "True",
                        "RolloutFailed",
                        "revision 2 failed the analysis and gets no windows",
                    ),
                ],
            ),
            "Degraded",
        ),
    ];
    for (i, (obj, status)) in cases.into_iter().enumerate() {
        let (got, message) = health("AnomalyModel", obj);
        assert_eq!(got, status, "case {i}: {message}");
    }
}

#[test]
fn savepoint_health_for_every_phase() {
    for (status, expected) in [
        (json!(null), "Progressing"),
        (json!({"phase": "InProgress"}), "Progressing"),
        (
            json!({"phase": "Completed", "location": "s3://b/p/savepoints/s"}),
            "Healthy",
        ),
        (
            json!({"phase": "Failed", "message": "d-0: refused"}),
            "Degraded",
        ),
    ] {
        let mut obj = json!({"metadata": {"name": "s"}, "spec": {"pipeline": "p"}});
        if !status.is_null() {
            obj["status"] = status.clone();
        }
        assert_eq!(health("Savepoint", obj).0, expected, "{status}");
    }
}

/// What `argocd-cm.yaml` holds: the three checks as argocd-cm data keys.
fn argocd_cm() -> String {
    let mut out = String::from(
        "# Generated from health/*.lua by operator/tests/argocd_health.rs (UPDATE_ARGOCD_CM=1); do not edit.\n\
         # Merge into Argo CD's argocd-cm ConfigMap, e.g.\n\
         #   kubectl -n argocd patch configmap argocd-cm --patch-file argocd-cm.yaml\n\
         data:\n",
    );
    for kind in KINDS {
        out.push_str(&format!(
            "  resource.customizations.health.vigil.dev_{kind}: |\n"
        ));
        for line in script(kind).lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[test]
fn the_argocd_cm_patch_carries_the_scripts() {
    let path = dir().join("argocd-cm.yaml");
    let want = argocd_cm();
    if std::env::var_os("UPDATE_ARGOCD_CM").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date: UPDATE_ARGOCD_CM=1 cargo test -p vigil-operator --test argocd_health",
        path.display()
    );
    // It is valid YAML whose values are the scripts.
    let v: serde_json::Value = serde_norway::from_str(&have).unwrap();
    for kind in KINDS {
        assert_eq!(
            v["data"][format!("resource.customizations.health.vigil.dev_{kind}")],
            json!(script(kind))
        );
    }
}

/// Every example carries an Argo CD sync wave: CRDs (the default wave 0, and Argo CD applies
/// CustomResourceDefinitions first within a wave), then AnomalyModels (1), then StreamPipelines
/// and DetectionRules (2), so a pipeline never waits for a model that is applied after it.
#[test]
fn examples_apply_models_before_pipelines() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        if e.path().is_dir() {
            files.extend(
                std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path()),
            );
        } else {
            files.push(e.path());
        }
    }
    let mut seen = 0;
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "yaml"))
    {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            let want = match v["kind"].as_str() {
                Some("AnomalyModel") => "1",
                Some("StreamPipeline" | "DetectionRule") => "2",
                _ => continue,
            };
            assert_eq!(
                v["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"],
                json!(want),
                "{}: {}",
                f.display(),
                v["metadata"]["name"]
            );
            seen += 1;
        }
    }
    assert!(seen >= 20, "{seen} resources checked");
}
