//! StreamPipeline controller: runs a pipeline as a StatefulSet of detectors in one Kafka
//! consumer group, with its rules rendered into a ConfigMap, and reports its detectors' stage
//! lag against `spec.lag` as the `Lagging` condition ([`lag`]).

pub mod build;
pub mod dereference;
pub mod lag;
pub mod status;
pub mod upgrade;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, Savepoint, SavepointSpec, StreamPipeline};

use self::build::DetectorChildren;
use self::status::Outcome;
use self::validate::ReplicaLimit;
use super::detection_rule::dereference::selected_pipelines;
use super::{Context, Error, requeue_on_error};
use crate::apply::{apply, apply_status};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "stream_pipeline";
/// Requeue delay while the partitions of the source topics cannot be read.
const KAFKA_RETRY: Duration = Duration::from_secs(30);

/// Reconciles one StreamPipeline.
///
/// # Errors
/// Transient failures (API writes); an invalid spec is reported in the status instead.
#[tracing::instrument(name = "reconcile", skip_all, fields(trace_id, kind = "StreamPipeline", name = %pipeline.name_any(), namespace = pipeline.namespace().unwrap_or_default()))]
pub async fn reconcile(pipeline: Arc<StreamPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    vigil_telemetry::trace::record_trace_id(&tracing::Span::current());
    if pipeline.namespace().is_none() {
        return Err(Error::MissingNamespace {
            kind: "StreamPipeline",
            name: pipeline.name_any(),
        });
    }
    if pipeline.metadata.deletion_timestamp.is_some() {
        // Children go with it (owner references); nothing outside the cluster to clean up.
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await?;
    let deref = dereference::dereference(&pipeline, &ctx).await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (new_status, action) = match validate::validate(
        &pipeline,
        &deref,
        ctx.config.default_bootstrap_servers.as_deref(),
    ) {
        Err(error) => {
            tracing::info!(pipeline = %pipeline.name_any(), %error, "Pipeline spec is invalid.");
            let s = status::status(&pipeline, &Outcome::Invalid(&error), now);
            (s, Action::await_change())
        }
        Ok(validated) => {
            let gate = savepoint_gate(&pipeline, &validated, &ctx).await?;
            if let upgrade::Gate::Hold { savepoint, failed } = &gate {
                let live = live_stateful_set(&pipeline, &ctx)
                    .await?
                    .unwrap_or_default();
                let mut s = status::status(
                    &pipeline,
                    &Outcome::Applied {
                        validated: &validated,
                        stateful_set: &live,
                    },
                    now.clone(),
                );
                status::hold_for_savepoint(
                    &mut s,
                    savepoint,
                    failed.as_deref(),
                    pipeline.metadata.generation,
                    now,
                );
                let old = pipeline.status.as_ref();
                if status::changed(old, &s) {
                    apply_status(&ctx.client, pipeline.as_ref(), &s).await?;
                    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
                    ctx.publish_transitions(pipeline.as_ref(), old_conditions, &s.conditions)
                        .await;
                }
                // The Savepoint is owned by the pipeline: its changes requeue it too.
                return Ok(Action::requeue(SAVEPOINT_POLL));
            }
            let restore_from = match &gate {
                upgrade::Gate::Apply(r) => r.as_deref(),
                upgrade::Gate::Hold { .. } => None,
            };
            let children = build::build_restoring(&validated, &ctx.config, restore_from)?;
            let started = Instant::now();
            // `selector` is written only after the children were applied once.
            let existing = pipeline
                .status
                .as_ref()
                .is_some_and(|s| s.selector.is_some());
            let stateful_set = apply_children(&ctx, &children, existing).await?;
            ctx.metrics.applied(CONTROLLER, started);
            let mut s = status::status(
                &pipeline,
                &Outcome::Applied {
                    validated: &validated,
                    stateful_set: &stateful_set,
                },
                now.clone(),
            );
            // Stage lag against spec.lag, from the detectors' reports.
            let ns = pipeline.namespace().unwrap_or_default();
            let (pods, reports) = lag::read(&ctx, &ns, &pipeline.name_any()).await?;
            if let Some((lagging, reason, message)) = lag::condition(&reports) {
                vigil_api::conditions::set_condition(
                    &mut s.conditions,
                    lag::LAGGING,
                    lagging,
                    reason,
                    message,
                    pipeline.metadata.generation,
                    now,
                );
            }
            let action = match validated.limit {
                ReplicaLimit::Unknown { .. } => Action::requeue(KAFKA_RETRY),
                _ if pods > 0 => Action::requeue(ctx.config.resync.min(lag::LAG_POLL)),
                _ => Action::requeue(ctx.config.resync),
            };
            (s, action)
        }
    };
    let old = pipeline.status.as_ref();
    if status::changed(old, &new_status) {
        apply_status(&ctx.client, pipeline.as_ref(), &new_status).await?;
        let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
        ctx.publish_transitions(pipeline.as_ref(), old_conditions, &new_status.conditions)
            .await;
    }
    Ok(action)
}

/// How often a pipeline held for a savepoint looks at it again (its changes also requeue it).
const SAVEPOINT_POLL: Duration = Duration::from_secs(5);

async fn live_stateful_set(
    pipeline: &StreamPipeline,
    ctx: &Context,
) -> Result<Option<k8s_openapi::api::apps::v1::StatefulSet>, Error> {
    let ns = pipeline.namespace().unwrap_or_default();
    let name = crate::labels::detector_name(&pipeline.name_any());
    kube::Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(|source| Error::Savepoint {
            name: name.clone(),
            source,
        })
}

/// The [`upgrade::Gate`] of a pipeline with checkpointing (others always apply), creating the
/// Savepoint the gate waits for when it does not exist yet.
async fn savepoint_gate(
    pipeline: &Arc<StreamPipeline>,
    validated: &validate::ValidatedPipeline,
    ctx: &Context,
) -> Result<upgrade::Gate, Error> {
    if pipeline.spec.checkpointing.is_none() {
        return Ok(upgrade::Gate::Apply(None));
    }
    let ns = pipeline.namespace().unwrap_or_default();
    let spec_hash = build::spec_hash(validated)?;
    let live = live_stateful_set(pipeline, ctx).await?;
    let name = upgrade::savepoint_name(&pipeline.name_any(), &spec_hash);
    let api = kube::Api::<Savepoint>::namespaced(ctx.client.clone(), &ns);
    let err = |source| Error::Savepoint {
        name: name.clone(),
        source,
    };
    let existing = api.get_opt(&name).await.map_err(err)?;
    let gate = upgrade::decide(
        pipeline.spec.upgrade_mode,
        &pipeline.name_any(),
        &spec_hash,
        live.as_ref(),
        existing.as_ref(),
    );
    if let upgrade::Gate::Hold { savepoint, .. } = &gate
        && existing.is_none()
    {
        let mut sp = Savepoint::new(
            savepoint,
            SavepointSpec {
                pipeline: pipeline.name_any(),
            },
        );
        sp.metadata.namespace = Some(ns.clone());
        sp.metadata.owner_references = Some(vec![build::owner_reference(pipeline)]);
        sp.metadata.labels = Some(std::collections::BTreeMap::from([
            (
                crate::labels::PIPELINE_LABEL.to_string(),
                pipeline.name_any(),
            ),
            (
                "app.kubernetes.io/managed-by".to_string(),
                crate::labels::FIELD_MANAGER.to_string(),
            ),
        ]));
        tracing::info!(pipeline = %pipeline.name_any(), savepoint = %savepoint, "Spec changed with upgradeMode Savepoint: taking a savepoint before rolling the detectors.");
        match api.create(&kube::api::PostParams::default(), &sp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {} // created meanwhile
            Err(source) => return Err(err(source)),
        }
    }
    Ok(gate)
}

/// Applies the children. The first time, in two rounds: what others refer to first
/// (ServiceAccount, ConfigMap, Service), then the StatefulSet (its pods need the ServiceAccount
/// and the ConfigMap) and the PodDisruptionBudget. Once they all exist (`existing`: a previous
/// apply succeeded), in one round, which halves the latency of a change. Returns the applied
/// StatefulSet.
async fn apply_children(
    ctx: &Context,
    c: &DetectorChildren,
    existing: bool,
) -> Result<k8s_openapi::api::apps::v1::StatefulSet, Error> {
    let client = &ctx.client;
    if let Some(np) = &c.network_policy {
        apply(client, np).await?;
    }
    if existing {
        let (_, _, _, stateful_set, _) = tokio::try_join!(
            apply(client, &c.service_account),
            apply(client, &c.config_map),
            apply(client, &c.service),
            apply(client, &c.stateful_set),
            apply(client, &c.pdb)
        )?;
        return Ok(stateful_set);
    }
    tokio::try_join!(
        apply(client, &c.service_account),
        apply(client, &c.config_map),
        apply(client, &c.service),
    )?;
    let (stateful_set, _) =
        tokio::try_join!(apply(client, &c.stateful_set), apply(client, &c.pdb))?;
    Ok(stateful_set)
}

/// Retries failed reconciles after a delay.
pub fn error_policy(_pipeline: Arc<StreamPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_on_error(CONTROLLER, error, &ctx)
}

/// Pipelines to reconcile when `rule` changes: those it selects now and those whose config
/// includes it (it may have stopped selecting them, or been deleted).
pub fn pipelines_for_rule(
    rule: &DetectionRule,
    pipelines: &[Arc<StreamPipeline>],
) -> Vec<ObjectRef<StreamPipeline>> {
    let name = rule.name_any();
    let selected = selected_pipelines(rule, pipelines.iter().cloned());
    pipelines
        .iter()
        .filter(|p| p.metadata.namespace == rule.metadata.namespace)
        .filter(|p| {
            selected.iter().any(|s| Arc::ptr_eq(s, p))
                || p.status.as_ref().is_some_and(|s| s.rules.contains(&name))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Pipelines to reconcile when `model` changes: those selected by a rule that uses it.
pub fn pipelines_for_model(
    model: &AnomalyModel,
    rules: &[Arc<DetectionRule>],
    pipelines: &[Arc<StreamPipeline>],
) -> Vec<ObjectRef<StreamPipeline>> {
    let name = model.name_any();
    let mut refs: Vec<ObjectRef<StreamPipeline>> = rules
        .iter()
        .filter(|r| r.metadata.namespace == model.metadata.namespace)
        .filter(|r| r.spec.model.as_ref().is_some_and(|m| m.model_ref == name))
        .flat_map(|r| pipelines_for_rule(r, pipelines))
        .collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    refs.dedup();
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_fixtures::{model, nab_fixture, parse_pipeline};

    #[test]
    fn rule_and_model_changes_map_to_the_pipelines_they_affect() {
        let (nab, d) = nab_fixture();
        let other = parse_pipeline(|s| {
            s.replace("name: nab\n", "name: other\n")
                .replace("dataset: nab", "dataset: web")
        });
        let pipelines = vec![nab.clone(), other.clone()];
        let spike = d.rules.iter().find(|r| r.name_any() == "spike").unwrap();
        let names = |refs: Vec<ObjectRef<StreamPipeline>>| {
            refs.into_iter().map(|r| r.name).collect::<Vec<_>>()
        };
        // `spike` selects dataset=nab only; `iforest-score` has no selector.
        assert_eq!(names(pipelines_for_rule(spike, &pipelines)), ["nab"]);
        assert_eq!(
            names(pipelines_for_model(&model(), &d.rules, &pipelines)),
            ["nab", "other"]
        );
        // A rule that stopped selecting a pipeline still maps to it while its config has it.
        let mut other_with_rule = (*other).clone();
        other_with_rule.status = Some(vigil_api::v1alpha1::StreamPipelineStatus {
            rules: vec!["spike".into()],
            ..Default::default()
        });
        let pipelines = vec![nab, Arc::new(other_with_rule)];
        assert_eq!(
            names(pipelines_for_rule(spike, &pipelines)),
            ["nab", "other"]
        );
    }
}
