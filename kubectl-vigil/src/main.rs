//! `kubectl-vigil`: a kubectl plugin (kubectl runs `kubectl-vigil` from `PATH` for
//! `kubectl vigil ...`) for Vigil's resources.
//!
//! - `kubectl vigil status sp/NAME | am/NAME | svp/NAME`: conditions, the served revision and
//!   its history, the rollout, and a pipeline's savepoints.
//! - `kubectl vigil rollback am/NAME [--to-revision N]`: serve an earlier revision from
//!   `status.history` again (default: the one served before the current one); any rollout is
//!   ended.
//! - `kubectl vigil promote am/NAME`: the rollout's candidate becomes the stable revision.
//! - `kubectl vigil abort am/NAME`: end the rollout; the stable revision keeps serving.
//!
//! The three writes are JSON merge patches of the AnomalyModel's `spec` (field manager
//! `kubectl-vigil`), like `kubectl rollout undo` patches a Deployment from its history: the
//! operator then rolls the model server and rewrites the detectors' `rules.yaml`, which the
//! detectors reload in place (no restart; window state is kept). Under GitOps the spec in Git
//! still wins at the next sync: revert the commit there too. What to patch is decided by pure
//! functions ([`rollback`], [`promote`], [`abort`]) tested below.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use vigil_api::v1alpha1::{
    AnomalyModel, RevisionOutcome, RevisionRecord, Savepoint, StreamPipeline,
};

/// Field manager of the plugin's writes.
const MANAGER: &str = "kubectl-vigil";

#[derive(Debug, Parser)]
#[command(
    name = "kubectl vigil",
    version,
    about = "Vigil's pipelines and models from kubectl"
)]
struct Args {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Conditions, served revision and history, rollout, savepoints.
    Status {
        /// `sp/NAME` (StreamPipeline), `am/NAME` (AnomalyModel) or `svp/NAME` (Savepoint).
        resource: String,
    },
    /// Serve an earlier revision of an AnomalyModel again.
    Rollback {
        /// `am/NAME`.
        resource: String,
        /// The revision (from `status.history`); default the one served before the current.
        #[arg(long)]
        to_revision: Option<String>,
    },
    /// Make the rollout's candidate the stable revision.
    Promote {
        /// `am/NAME`.
        resource: String,
    },
    /// End the rollout; the stable revision keeps serving.
    Abort {
        /// `am/NAME`.
        resource: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pipeline,
    Model,
    Savepoint,
}

/// `kind/name` with kubectl's spellings of the kinds.
fn parse_resource(s: &str) -> anyhow::Result<(Kind, String)> {
    let Some((kind, name)) = s.split_once('/') else {
        bail!("`{s}`: expected KIND/NAME, e.g. am/iforest or sp/payments");
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "sp" | "streampipeline" | "streampipelines" => Kind::Pipeline,
        "am" | "anomalymodel" | "anomalymodels" => Kind::Model,
        "svp" | "savepoint" | "savepoints" => Kind::Savepoint,
        other => bail!("`{other}` is not a Vigil kind: sp, am or svp"),
    };
    if name.is_empty() {
        bail!("`{s}`: the name is empty");
    }
    Ok((kind, name.to_string()))
}

/// The spec patch that serves `to` (default: the revision served before the current one)
/// again, and a sentence saying so.
fn rollback(m: &AnomalyModel, to: Option<&str>) -> anyhow::Result<(Value, String)> {
    let history = m
        .status
        .as_ref()
        .map(|s| &s.history[..])
        .unwrap_or_default();
    let current = &m.effective_spec().revision;
    let target = match to {
        Some(r) => history
            .iter()
            .rev()
            .filter(|h| h.was_stable())
            .find(|h| h.revision == r)
            .with_context(|| {
                format!(
                    "revision {r} was not served as stable by am/{} (served: {})",
                    m.name_any(),
                    revisions(m)
                )
            })?,
        None => history
            .iter()
            .rev()
            .filter(|h| h.was_stable())
            .find(|h| !is_spec(h, m))
            .with_context(|| {
                format!(
                    "am/{} has no earlier served revision to roll back to (served: {})",
                    m.name_any(),
                    revisions(m)
                )
            })?,
    };
    if is_spec(target, m) && m.spec.rollout.is_none() {
        bail!("am/{} already serves revision {current}", m.name_any());
    }
    let patch = json!({"spec": {
        "revision": target.revision,
        "artifact": {"uri": target.uri, "sha256": target.sha256},
        "rollout": null,
    }});
    Ok((
        patch,
        format!(
            "am/{} rolled back from revision {current} to revision {} ({})",
            m.name_any(),
            target.revision,
            target.uri
        ),
    ))
}

/// Whether `h` is what is served now: the spec, or the candidate its analysis promoted
/// ([`AnomalyModel::effective_spec`]).
fn is_spec(h: &RevisionRecord, m: &AnomalyModel) -> bool {
    let spec = m.effective_spec();
    h.revision == spec.revision && h.uri == spec.artifact.uri && h.sha256 == spec.artifact.sha256
}

fn revisions(m: &AnomalyModel) -> String {
    let h: Vec<&str> = m
        .status
        .iter()
        .flat_map(|s| &s.history)
        .filter(|h| h.was_stable())
        .map(|h| h.revision.as_str())
        .collect();
    if h.is_empty() {
        "none yet".into()
    } else {
        h.join(", ")
    }
}

/// The spec patch that makes the rollout's candidate stable.
fn promote(m: &AnomalyModel) -> anyhow::Result<(Value, String)> {
    let Some(r) = &m.spec.rollout else {
        bail!("am/{} has no rollout to promote", m.name_any());
    };
    Ok((
        json!({"spec": {
            "revision": r.candidate.revision,
            "artifact": r.candidate.artifact,
            "rollout": null,
        }}),
        format!(
            "am/{} promoted: revision {} replaces revision {}",
            m.name_any(),
            r.candidate.revision,
            m.spec.revision
        ),
    ))
}

/// The spec patch that ends the rollout.
fn abort(m: &AnomalyModel) -> anyhow::Result<(Value, String)> {
    let Some(r) = &m.spec.rollout else {
        bail!("am/{} has no rollout to abort", m.name_any());
    };
    Ok((
        json!({"spec": {"rollout": null}}),
        format!(
            "am/{} rollout of revision {} aborted; revision {} keeps serving",
            m.name_any(),
            r.candidate.revision,
            m.spec.revision
        ),
    ))
}

fn conditions_text(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String {
    let mut out = String::from("CONDITION     STATUS  REASON                     MESSAGE\n");
    for c in conditions {
        out.push_str(&format!(
            "{:<13} {:<7} {:<26} {}\n",
            c.type_, c.status, c.reason, c.message
        ));
    }
    out
}

fn model_text(m: &AnomalyModel) -> String {
    let s = m.status.clone().unwrap_or_default();
    let mut out = format!(
        "AnomalyModel {}/{}  revision {}  serving {}  observedGeneration {}/{}\n",
        m.namespace().unwrap_or_default(),
        m.name_any(),
        m.spec.revision,
        s.serving_revision.as_deref().unwrap_or("none"),
        s.observed_generation.unwrap_or(0),
        m.metadata.generation.unwrap_or(0)
    );
    if let Some(r) = &m.spec.rollout {
        out.push_str(&format!(
            "rollout: {:?} of revision {}{}\n",
            r.strategy,
            r.candidate.revision,
            r.weight
                .map(|w| format!(" at {w}% of keys"))
                .unwrap_or_default()
        ));
    }
    if let Some(r) = &s.rollout {
        out.push_str(&format!(
            "analysis: revision {} {:?}, {} intervals passed: {}\n",
            r.candidate, r.phase, r.passed_intervals, r.message
        ));
        if let Some(a) = &r.last_analysis {
            out.push_str(&format!(
                "last interval ({}): {}\n  candidate: {} windows, {} failed, {} anomalous per 1,000, {} alerts, p99 {}\n  stable:    {} windows, {} failed, {} anomalous per 1,000, {} alerts, p99 {}\n",
                a.at.0,
                a.verdict,
                a.candidate.windows,
                a.candidate.failed,
                a.candidate.anomaly_rate_per_mille,
                a.candidate.alerts,
                a.candidate.latency_p99_ms.map_or("-".into(), |p| format!("{p} ms")),
                a.stable.windows,
                a.stable.failed,
                a.stable.anomaly_rate_per_mille,
                a.stable.alerts,
                a.stable.latency_p99_ms.map_or("-".into(), |p| format!("{p} ms")),
            ));
        }
    }
    out.push_str(&conditions_text(&s.conditions));
    out.push_str(
        "HISTORY  REVISION  OUTCOME   SERVED AT             REPLACED AT           ARTIFACT\n",
    );
    for (i, h) in s.history.iter().enumerate() {
        out.push_str(&format!(
            "{:<8} {:<9} {:<9} {:<21} {:<21} {}\n",
            i + 1,
            h.revision,
            format!("{:?}", h.outcome.unwrap_or(RevisionOutcome::Served)),
            h.served_at.0,
            h.replaced_at
                .as_ref()
                .map_or("-".to_string(), |t| t.0.to_string()),
            h.uri
        ));
    }
    out
}

fn pipeline_text(p: &StreamPipeline, savepoints: &[Savepoint]) -> String {
    let s = p.status.clone().unwrap_or_default();
    let mut out = format!(
        "StreamPipeline {}/{}  parallelism {}  replicas {}  observedGeneration {}/{}\n",
        p.namespace().unwrap_or_default(),
        p.name_any(),
        p.spec.parallelism,
        s.replicas.unwrap_or(0),
        s.observed_generation.unwrap_or(0),
        p.metadata.generation.unwrap_or(0)
    );
    if !s.rules.is_empty() {
        out.push_str(&format!("rules: {}\n", s.rules.join(", ")));
    }
    out.push_str(&conditions_text(&s.conditions));
    if !savepoints.is_empty() {
        out.push_str("SAVEPOINT                      PHASE       SIZE       LOCATION\n");
        for sp in savepoints {
            let st = sp.status.clone().unwrap_or_default();
            out.push_str(&format!(
                "{:<30} {:<11} {:<10} {}\n",
                sp.name_any(),
                st.phase.map_or("Pending".to_string(), |p| format!("{p:?}")),
                st.size_bytes.map_or("-".to_string(), |b| b.to_string()),
                st.location.unwrap_or_default()
            ));
        }
    }
    out
}

async fn patch_model(
    api: &Api<AnomalyModel>,
    name: &str,
    plan: (Value, String),
) -> anyhow::Result<()> {
    let (patch, said) = plan;
    api.patch(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("failed to patch am/{name}"))?;
    println!("{said}");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    // What is asked for is checked before any request.
    match &args.command {
        Command::Status { resource } => {
            parse_resource(resource)?;
        }
        Command::Rollback { resource, .. }
        | Command::Promote { resource }
        | Command::Abort { resource } => {
            if parse_resource(resource)?.0 != Kind::Model {
                bail!("`{resource}`: only AnomalyModels (am/NAME) have revisions");
            }
        }
    }
    let client = Client::try_default()
        .await
        .context("no Kubernetes client (KUBECONFIG or in-cluster config)")?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let models: Api<AnomalyModel> = Api::namespaced(client.clone(), &ns);
    let model_only = |r: &str| -> anyhow::Result<String> {
        match parse_resource(r)? {
            (Kind::Model, name) => Ok(name),
            _ => bail!("`{r}`: only AnomalyModels (am/NAME) have revisions"),
        }
    };
    match &args.command {
        Command::Status { resource } => match parse_resource(resource)? {
            (Kind::Model, name) => {
                let m = models
                    .get(&name)
                    .await
                    .with_context(|| format!("am/{name}"))?;
                print!("{}", model_text(&m));
            }
            (Kind::Pipeline, name) => {
                let p = Api::<StreamPipeline>::namespaced(client.clone(), &ns)
                    .get(&name)
                    .await
                    .with_context(|| format!("sp/{name}"))?;
                let savepoints: Vec<Savepoint> = Api::<Savepoint>::namespaced(client, &ns)
                    .list(&ListParams::default())
                    .await
                    .context("listing savepoints")?
                    .items
                    .into_iter()
                    .filter(|s| s.spec.pipeline == name)
                    .collect();
                print!("{}", pipeline_text(&p, &savepoints));
            }
            (Kind::Savepoint, name) => {
                let sp = Api::<Savepoint>::namespaced(client, &ns)
                    .get(&name)
                    .await
                    .with_context(|| format!("svp/{name}"))?;
                println!("{}", serde_json::to_string_pretty(&sp.status)?);
            }
        },
        Command::Rollback {
            resource,
            to_revision,
        } => {
            let name = model_only(resource)?;
            let m = models
                .get(&name)
                .await
                .with_context(|| format!("am/{name}"))?;
            patch_model(&models, &name, rollback(&m, to_revision.as_deref())?).await?;
        }
        Command::Promote { resource } => {
            let name = model_only(resource)?;
            let m = models
                .get(&name)
                .await
                .with_context(|| format!("am/{name}"))?;
            patch_model(&models, &name, promote(&m)?).await?;
        }
        Command::Abort { resource } => {
            let name = model_only(resource)?;
            let m = models
                .get(&name)
                .await
                .with_context(|| format!("am/{name}"))?;
            patch_model(&models, &name, abort(&m)?).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use vigil_api::v1alpha1::AnomalyModelStatus;

    fn model(revision: &str, served: &[&str], rollout: bool) -> AnomalyModel {
        let artifact =
            |r: &str| format!("{{uri: 'https://m/{r}.onnx', sha256: '{}'}}", r.repeat(64));
        let mut yaml = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {{name: iforest, namespace: ns}}\nspec:\n  revision: \"{revision}\"\n  artifact: {}\n  input: {{tensor: x, window: w, features: [v.mean]}}\n  output: {{tensor: s, threshold: 0.5, anomalousWhen: Above}}\n",
            artifact(revision)
        );
        if rollout {
            yaml.push_str(&format!(
                "  rollout: {{candidate: {{revision: \"9\", artifact: {}}}, strategy: Canary, weight: 10}}\n",
                artifact("9")
            ));
        }
        let mut m: AnomalyModel = from_yaml(&yaml);
        let t = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        m.status = Some(AnomalyModelStatus {
            history: served
                .iter()
                .map(|r| RevisionRecord {
                    revision: (*r).into(),
                    uri: format!("https://m/{r}.onnx"),
                    sha256: r.repeat(64),
                    served_at: t.clone(),
                    replaced_at: None,
                    outcome: None,
                })
                .collect(),
            ..AnomalyModelStatus::default()
        });
        m
    }

    fn from_yaml(yaml: &str) -> AnomalyModel {
        let mut m = vigil_api::manifest::Manifests::default();
        m.add_str("test", yaml).unwrap();
        m.models.remove(0)
    }

    #[test]
    fn rollback_goes_to_the_previous_served_revision_or_the_one_asked_for() {
        let m = model("3", &["1", "2", "3"], false);
        let (patch, said) = rollback(&m, None).unwrap();
        assert_eq!(patch["spec"]["revision"], "2");
        assert_eq!(patch["spec"]["artifact"]["uri"], "https://m/2.onnx");
        assert_eq!(patch["spec"]["artifact"]["sha256"], "2".repeat(64));
        assert!(patch["spec"]["rollout"].is_null() && patch["spec"].get("rollout").is_some());
        assert_eq!(
            said,
            "am/iforest rolled back from revision 3 to revision 2 (https://m/2.onnx)"
        );
        let (patch, _) = rollback(&m, Some("1")).unwrap();
        assert_eq!(patch["spec"]["revision"], "1");
        let e = rollback(&m, Some("7")).unwrap_err().to_string();
        assert!(
            e.contains("revision 7 was not served as stable") && e.contains("1, 2, 3"),
            "{e}"
        );
        // Spec at 4, not yet served: back to the newest served one.
        let m = model("4", &["1", "2", "3"], false);
        assert_eq!(rollback(&m, None).unwrap().0["spec"]["revision"], "3");
        let e = rollback(&model("1", &["1"], false), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no earlier served revision"), "{e}");
        // Revision 9, the candidate, was promoted by its analysis and is served: a rollback
        // returns to 3 (the spec's own revision), not to 9.
        let mut m = model("3", &["1", "2", "3", "9"], true);
        m.status.as_mut().unwrap().rollout = Some(vigil_api::v1alpha1::RolloutStatus {
            candidate: "9".into(),
            sha256: "9".repeat(64),
            phase: vigil_api::v1alpha1::RolloutPhase::Promoted,
            message: String::new(),
            passed_intervals: 5,
            started_at: Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap()),
            finished_at: None,
            last_analysis: None,
        });
        let (patch, said) = rollback(&m, None).unwrap();
        assert_eq!(patch["spec"]["revision"], "3");
        assert!(said.contains("from revision 9 to revision 3"), "{said}");
        // A candidate that failed its analysis is history, never a rollback target.
        let mut m = model("3", &["2", "3", "8"], false);
        m.status.as_mut().unwrap().history[2].outcome = Some(RevisionOutcome::Failed);
        assert_eq!(rollback(&m, None).unwrap().0["spec"]["revision"], "2");
        let e = rollback(&m, Some("8")).unwrap_err().to_string();
        assert!(
            e.contains("revision 8 was not served as stable") && e.contains("2, 3"),
            "{e}"
        );
    }

    #[test]
    fn promote_and_abort_need_a_rollout() {
        let m = model("3", &["3"], true);
        let (patch, said) = promote(&m).unwrap();
        assert_eq!(
            (
                &patch["spec"]["revision"],
                &patch["spec"]["artifact"]["uri"]
            ),
            (&json!("9"), &json!("https://m/9.onnx"))
        );
        assert!(said.contains("revision 9 replaces revision 3"), "{said}");
        let (patch, said) = abort(&m).unwrap();
        assert_eq!(patch, json!({"spec": {"rollout": null}}));
        assert!(said.contains("revision 3 keeps serving"), "{said}");
        let plain = model("3", &["3"], false);
        assert!(
            promote(&plain)
                .unwrap_err()
                .to_string()
                .contains("no rollout")
        );
        assert!(
            abort(&plain)
                .unwrap_err()
                .to_string()
                .contains("no rollout")
        );
    }

    #[test]
    fn resources_are_named_as_kubectl_names_them() {
        assert_eq!(parse_resource("am/x").unwrap(), (Kind::Model, "x".into()));
        assert_eq!(
            parse_resource("StreamPipelines/p").unwrap(),
            (Kind::Pipeline, "p".into())
        );
        assert_eq!(
            parse_resource("svp/s").unwrap(),
            (Kind::Savepoint, "s".into())
        );
        assert!(parse_resource("deploy/x").is_err());
        assert!(parse_resource("am").is_err());
        assert!(parse_resource("am/").is_err());
    }

    #[test]
    fn model_status_shows_history_and_rollout() {
        let text = model_text(&model("3", &["2", "3"], true));
        assert!(text.contains("revision 3  serving none"), "{text}");
        assert!(
            text.contains("rollout: Canary of revision 9 at 10% of keys"),
            "{text}"
        );
        assert!(
            text.contains("https://m/2.onnx") && text.contains("https://m/3.onnx"),
            "{text}"
        );
    }
}
