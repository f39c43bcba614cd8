//! DetectionRule controller: validates a rule against the pipelines it selects (each with the
//! other rules that select it, as its detectors compile them) and reports `Accepted` and
//! `status.pipelines`. A rule has no children of its own; the StreamPipeline controller renders
//! accepted rules into each pipeline's ConfigMap with the same call.

pub mod dereference;
pub mod status;
pub mod validate;

#[cfg(test)]
mod agreement;

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline};

use self::status::Outcome;
use self::validate::{validate_rule, validate_rules_for_pipeline};
use super::{Context, Error, audit, requeue_on_error};
use crate::apply::apply_status;
use crate::controller::stream_pipeline::dereference::selecting_rules;

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "detection_rule";

/// Validates a rule against what it refers to (pure).
pub fn check(rule: &DetectionRule, deref: &dereference::Dereferenced) -> Outcome {
    if let Err(e) = validate_rule(&rule.spec, &deref.models) {
        return Outcome::Invalid(e);
    }
    let name = rule.name_any();
    Outcome::Checked(
        deref
            .pipelines
            .iter()
            .filter_map(|p| {
                // The pipeline's selection as its detectors see it: this rule as given here
                // (it may be newer than the cache) and the others from the cache.
                let mut selection: Vec<Arc<DetectionRule>> =
                    selecting_rules(p, deref.rules.iter().cloned())
                        .into_iter()
                        .filter(|r| r.name_any() != name)
                        .collect();
                selection.push(Arc::new(rule.clone()));
                // A pipeline whose own spec is invalid runs nothing; it reports that itself.
                let verdicts = validate_rules_for_pipeline(p, &selection, &deref.models).ok()?;
                Some((p.name_any(), verdicts.get(&name).cloned().unwrap_or(Ok(()))))
            })
            .collect(),
    )
}

/// Reconciles one DetectionRule.
///
/// # Errors
/// Transient failures (the status write).
#[tracing::instrument(name = "reconcile", skip_all, fields(trace_id, kind = "DetectionRule", name = %rule.name_any(), namespace = rule.namespace().unwrap_or_default()))]
pub async fn reconcile(rule: Arc<DetectionRule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    vigil_telemetry::trace::record_trace_id(&tracing::Span::current());
    if rule.namespace().is_none() {
        return Err(Error::MissingNamespace {
            kind: "DetectionRule",
            name: rule.name_any(),
        });
    }
    if rule.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await?;
    let deref = dereference::dereference(&rule, &ctx);
    let outcome = check(&rule, &deref);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut new_status = status::status(&rule, &outcome, now);
    let old = rule.status.as_ref();
    // Audit trail: an accepted new generation records who applied it and what changed.
    let accepted = new_status
        .conditions
        .iter()
        .any(|c| c.type_ == vigil_api::conditions::ACCEPTED && c.status == "True");
    let previous = old.and_then(|s| s.last_change.as_ref());
    let change = accepted
        .then(|| audit::spec_change(&rule.metadata, &rule.spec, previous))
        .flatten();
    if let Some(c) = &change {
        new_status.last_change = Some(c.clone());
    }
    if status::changed(old, &new_status) {
        if let Outcome::Invalid(e) = &outcome {
            tracing::info!(rule = %rule.name_any(), error = %e, "Rule is invalid.");
        }
        apply_status(&ctx.client, rule.as_ref(), &new_status).await?;
        let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
        ctx.publish_transitions(rule.as_ref(), old_conditions, &new_status.conditions)
            .await;
    }
    if let Some(c) = &change {
        let note = audit::sentence(c, previous.is_none());
        tracing::info!(rule = %rule.name_any(), %note, "DetectionRule change accepted.");
        ctx.publish_event(rule.as_ref(), audit::REASON, note, "Accept")
            .await;
    }
    // Changes of the pipelines and models it reads trigger it through watches.
    Ok(Action::requeue(ctx.config.resync))
}

/// Retries failed reconciles after a delay.
pub fn error_policy(_rule: Arc<DetectionRule>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_on_error(CONTROLLER, error, &ctx)
}

/// Rules to re-check when `pipeline` changes: rules of its namespace that select it now or
/// list it in their status.
pub fn rules_for_pipeline(
    pipeline: &StreamPipeline,
    rules: &[Arc<DetectionRule>],
) -> Vec<ObjectRef<DetectionRule>> {
    let name = pipeline.name_any();
    rules
        .iter()
        .filter(|r| r.metadata.namespace == pipeline.metadata.namespace)
        .filter(|r| {
            !dereference::selected_pipelines(r, [Arc::new(pipeline.clone())]).is_empty()
                || r.status
                    .as_ref()
                    .is_some_and(|s| s.pipelines.contains(&name))
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Rules to re-check when `changed` changes: the ensembles of its namespace that name it as a
/// member (a member that becomes invalid or disappears makes the ensemble invalid).
pub fn rules_for_rule(
    changed: &DetectionRule,
    rules: &[Arc<DetectionRule>],
) -> Vec<ObjectRef<DetectionRule>> {
    let name = changed.name_any();
    rules
        .iter()
        .filter(|r| r.metadata.namespace == changed.metadata.namespace)
        .filter(|r| {
            r.spec
                .ensemble
                .as_ref()
                .is_some_and(|e| e.members.iter().any(|m| m.rule == name))
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Rules to re-check when `model` changes: rules of its namespace that use it.
pub fn rules_for_model(
    model: &AnomalyModel,
    rules: &[Arc<DetectionRule>],
) -> Vec<ObjectRef<DetectionRule>> {
    let name = model.name_any();
    rules
        .iter()
        .filter(|r| r.metadata.namespace == model.metadata.namespace)
        .filter(|r| r.spec.model.as_ref().is_some_and(|m| m.model_ref == name))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_fixtures::{model, nab_fixture};

    #[test]
    fn check_reports_per_pipeline() {
        let (nab, d) = nab_fixture();
        let deref = dereference::Dereferenced {
            pipelines: vec![nab.clone()],
            rules: d.rules.clone(),
            models: d.models.clone(),
        };
        let by_name = |n: &str| d.rules.iter().find(|r| r.name_any() == n).unwrap().clone();
        assert_eq!(
            check(&by_name("spike"), &deref),
            Outcome::Checked(vec![("nab".into(), Ok(()))])
        );
        let Outcome::Checked(r) = check(&by_name("wrong-window"), &deref) else {
            panic!()
        };
        assert_eq!(r[0].1.as_ref().unwrap_err().field, "spec.window");
        let no_models = dereference::Dereferenced {
            pipelines: vec![nab],
            rules: d.rules.clone(),
            models: Default::default(),
        };
        let Outcome::Invalid(e) = check(&by_name("iforest-score"), &no_models) else {
            panic!()
        };
        assert_eq!(e.field, "spec.model.modelRef");
        let refs = rules_for_model(&model(), &d.rules);
        assert_eq!(refs.len(), 1);
        assert_eq!(rules_for_pipeline(&d_pipeline(), &d.rules).len(), 3);
    }

    fn d_pipeline() -> StreamPipeline {
        (*nab_fixture().0).clone()
    }
}
