//! AnomalyModel controller: serves a model with vigil-model-server (ConfigMap of per-version
//! configs, Deployment, Service) and reports the revision being served. With
//! `spec.rollout.analysis` it also judges the candidate every interval ([`analysis`], pure;
//! [`evidence`], the detectors' counters), tells the detectors a verdict and records it in
//! `status.rollout`; every accepted generation leaves an audit record
//! ([`crate::controller::audit`]).

pub mod analysis;
pub mod build;
pub mod dereference;
pub mod evidence;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use vigil_api::contract::detector::rollouts::{Decision, RolloutDecision};
use vigil_api::v1alpha1::{AnomalyModel, RolloutPhase, RolloutStatus};

use self::status::Outcome;
use self::validate::ModelProblem;
use super::{Context, Error, audit, requeue_on_error};
use crate::apply::{apply, apply_status};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "anomaly_model";
/// Requeue delay while a `configmap://` artifact is missing or does not match its digest
/// (user ConfigMaps are not watched).
const ARTIFACT_RETRY: Duration = Duration::from_secs(15);

/// Reconciles one AnomalyModel.
///
/// # Errors
/// Transient failures (API reads and writes); spec problems are reported in the status.
#[tracing::instrument(name = "reconcile", skip_all, fields(trace_id, kind = "AnomalyModel", name = %model.name_any(), namespace = model.namespace().unwrap_or_default()))]
pub async fn reconcile(model: Arc<AnomalyModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    vigil_telemetry::trace::record_trace_id(&tracing::Span::current());
    if model.namespace().is_none() {
        return Err(Error::MissingNamespace {
            kind: "AnomalyModel",
            name: model.name_any(),
        });
    }
    if model.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let deref = dereference::dereference(&model, &ctx).await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let valid_spec = validate::validate(&model, &deref);
    let valid = valid_spec.is_ok();
    let (new_status, action) = match valid_spec {
        Err(problem) => {
            let action = match &problem {
                ModelProblem::Invalid(_) => Action::await_change(),
                ModelProblem::ArtifactUnavailable(_) => Action::requeue(ARTIFACT_RETRY),
            };
            (
                status::status(&model, &Outcome::Problem(&problem), now),
                action,
            )
        }
        Ok(validated) => {
            let children = build::build(&model, &validated, &ctx.config)?;
            let started = Instant::now();
            let client = &ctx.client;
            if let Some(np) = &children.network_policy {
                apply(client, np).await?;
            }
            // The config first: a pod of a new revision then never waits on its volume.
            apply(client, &children.config_map).await?;
            let (deployment, _) = tokio::try_join!(
                apply(client, &children.deployment),
                apply(client, &children.service),
            )?;
            ctx.metrics.applied(CONTROLLER, started);
            let available = deployment
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
                > 0;
            let (rollout, next) = analyse(&model, &ctx, &now, available).await?;
            let mut judged = (*model).clone();
            judged.status.get_or_insert_default().rollout = rollout;
            (
                status::status(&judged, &Outcome::Applied(&deployment), now),
                Action::requeue(next.map_or(ctx.config.resync, |n| n.min(ctx.config.resync))),
            )
        }
    };
    let mut new_status = new_status;
    let old = model.status.as_ref();
    // Audit trail: an accepted (valid) new generation records who applied it and what changed.
    let previous = old.and_then(|s| s.last_change.as_ref());
    let change = valid
        .then(|| audit::spec_change(&model.metadata, &model.spec, previous))
        .flatten();
    if let Some(c) = &change {
        new_status.last_change = Some(c.clone());
    }
    if status::changed(old, &new_status) {
        apply_status(&ctx.client, model.as_ref(), &new_status).await?;
        let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
        ctx.publish_transitions(model.as_ref(), old_conditions, &new_status.conditions)
            .await;
    }
    if let Some(c) = &change {
        let note = audit::sentence(c, previous.is_none());
        tracing::info!(model = %model.name_any(), %note, "AnomalyModel change accepted.");
        ctx.publish_event(model.as_ref(), audit::REASON, note, "Accept")
            .await;
    }
    decide(
        &model,
        &ctx,
        old.and_then(|s| s.rollout.as_ref()),
        new_status.rollout.as_ref(),
    )
    .await?;
    Ok(action)
}

/// The analysis step of a reconcile (see [`analysis`]): `status.rollout` after it, and when
/// to come back. Reads the detectors at most once per interval; the first read of a rollout
/// only starts its first interval. Waits for the model server to be available (it serves
/// both revisions).
async fn analyse(
    model: &AnomalyModel,
    ctx: &Context,
    now: &Time,
    available: bool,
) -> Result<(Option<RolloutStatus>, Option<Duration>), Error> {
    let ns = model.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", model.name_any());
    let (Some(r), Some(a)) = (
        &model.spec.rollout,
        model
            .spec
            .rollout
            .as_ref()
            .and_then(|r| r.analysis.as_ref()),
    ) else {
        ctx.rollout_reads.remove(&key);
        return Ok((None, None));
    };
    let old = model.status.as_ref().and_then(|s| s.rollout.as_ref());
    let current = analysis::step(old, r, None, now);
    if current.phase != RolloutPhase::Analysing {
        ctx.rollout_reads.remove(&key);
        return Ok((Some(current), None));
    }
    if !available {
        return Ok((Some(current), Some(Duration::from_secs(5))));
    }
    let candidate = format!("{}@{}", r.candidate.revision, r.candidate.artifact.sha256);
    let interval = Duration::from_millis(u64::try_from(analysis::interval_ms(a)).unwrap_or(1000));
    let Some((at, before)) = ctx.rollout_reads.get(&key, &candidate) else {
        let sample = evidence::read(ctx, &ns).await?;
        ctx.rollout_reads
            .put(&key, &candidate, Instant::now(), sample);
        return Ok((Some(current), Some(interval)));
    };
    let elapsed = at.elapsed();
    if elapsed < interval {
        return Ok((Some(current), Some(interval - elapsed)));
    }
    let after = evidence::read(ctx, &ns).await?;
    ctx.rollout_reads
        .put(&key, &candidate, Instant::now(), after.clone());
    let totals = analysis::delta(&before, &after, &model.name_any());
    let cand = totals
        .get(&r.candidate.revision)
        .cloned()
        .unwrap_or_default();
    let stable = totals
        .get(&model.spec.revision)
        .cloned()
        .unwrap_or_default();
    let verdict = analysis::judge(a, &cand, &stable);
    tracing::info!(model = %key, candidate = %r.candidate.revision, pods = after.len(), ?verdict, "Rollout interval judged.");
    let next = analysis::step(Some(&current), r, Some((verdict, &cand, &stable)), now);
    Ok((Some(next), Some(interval)))
}

/// Tells the detectors a final verdict (every reconcile while it stands, so a detector that
/// started since hears it too) and raises a `RolloutPromoted` Event when the candidate was
/// just promoted (a failure raises `RolloutFailed` through the Degraded condition).
async fn decide(
    model: &AnomalyModel,
    ctx: &Context,
    old: Option<&RolloutStatus>,
    new: Option<&RolloutStatus>,
) -> Result<(), Error> {
    let Some(new) = new else { return Ok(()) };
    let decision = match new.phase {
        RolloutPhase::Analysing => return Ok(()),
        RolloutPhase::Failed => Decision::Abort,
        RolloutPhase::Promoted => Decision::Promote,
    };
    let ns = model.namespace().unwrap_or_default();
    let told = evidence::tell(
        ctx,
        &ns,
        &model.name_any(),
        &RolloutDecision {
            candidate: new.candidate.clone(),
            decision,
        },
    )
    .await?;
    let fresh = old.is_none_or(|o| o.phase != new.phase || o.candidate != new.candidate);
    if fresh {
        tracing::info!(model = %model.name_any(), candidate = %new.candidate, phase = ?new.phase, detectors = told, message = %new.message, "Rollout decided.");
        if new.phase == RolloutPhase::Promoted {
            ctx.publish_event(model, "RolloutPromoted", new.message.clone(), "Promote")
                .await;
        }
    }
    Ok(())
}

/// Retries failed reconciles after a delay.
pub fn error_policy(_model: Arc<AnomalyModel>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_on_error(CONTROLLER, error, &ctx)
}
