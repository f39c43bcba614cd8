//! AnomalyModel controller: serves a model with vigil-model-server (ConfigMap of per-version
//! configs, Deployment, Service) and reports the revision being served.

pub mod build;
pub mod dereference;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use vigil_api::v1alpha1::AnomalyModel;

use self::status::Outcome;
use self::validate::ModelProblem;
use super::{Context, Error, requeue_on_error};
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
pub async fn reconcile(model: Arc<AnomalyModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
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
    let (new_status, action) = match validate::validate(&model, &deref) {
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
            let (_, deployment, _) = tokio::try_join!(
                apply(client, &children.config_map),
                apply(client, &children.deployment),
                apply(client, &children.service),
            )?;
            ctx.metrics.applied(CONTROLLER, started);
            (
                status::status(&model, &Outcome::Applied(&deployment), now),
                Action::requeue(ctx.config.resync),
            )
        }
    };
    let old = model.status.as_ref();
    if status::changed(old, &new_status) {
        apply_status(&ctx.client, model.as_ref(), &new_status).await?;
        let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
        ctx.publish_transitions(model.as_ref(), old_conditions, &new_status.conditions)
            .await;
    }
    Ok(action)
}

/// Retries failed reconciles after a delay.
pub fn error_policy(_model: Arc<AnomalyModel>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_on_error(CONTROLLER, error, &ctx)
}
