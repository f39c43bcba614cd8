//! The three controllers and what they share. Each reconciles in named steps:
//! `dereference` (I/O) -> `validate` (pure) -> `build` (pure) -> apply (`crate::apply`) ->
//! `status` (pure), in `<kind>/`.
//!
//! - [`stream_pipeline`]: a pipeline's detectors (ConfigMap, StatefulSet, Service, PDB, RBAC).
//! - [`detection_rule`]: a rule's `Accepted` condition and the pipelines that use it (rules
//!   have no children: they are rendered into pipelines' ConfigMaps).
//! - [`anomaly_model`]: a model's server (ConfigMap, Deployment, Service) and the analysis of
//!   its rollouts.
//! - [`savepoint`]: a Savepoint taken from a pipeline's detectors (no children).
//! - [`audit`]: who applied each accepted rule or model generation and what changed.
//!
//! The operator reaches detector pods directly on their metrics port (savepoints, rollout
//! evidence and verdicts, stage lag reports); the shapes are in
//! `vigil_api::contract::detector`.
//!
//! The controllers share their caches (reflector stores): the pipeline controller reads rules
//! and models, the rule controller reads pipelines and models. Watches map a changed rule or
//! model to the pipelines (and rules) it affects.

pub mod anomaly_model;
pub mod audit;
pub mod detection_rule;
pub mod pod;
pub mod savepoint;
pub mod stream_pipeline;
#[cfg(test)]
pub(crate) mod test_fixtures;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use vigil_api::conditions;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, Savepoint, StreamPipeline};

use crate::apply::ApplyError;
use crate::config::OperatorConfig;
use crate::kafka::KafkaMetadata;
use crate::labels::FIELD_MANAGER;
use crate::metrics::Metrics;

/// A problem with one field of a spec: the path (as in `kubectl explain`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Field path, e.g. `spec.windows[1].slide`.
    pub field: String,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// A reconcile that failed and is retried with backoff. Invalid specs are not errors: they
/// are reported in conditions and wait for a change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object read from the API server has no namespace (the kinds are namespaced).
    #[error("{kind} {name} has no namespace")]
    MissingNamespace {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
    },
    /// A child or status could not be written.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A pipeline's config could not be rendered.
    #[error(transparent)]
    RenderPipeline(#[from] stream_pipeline::build::RenderError),
    /// A model-server config could not be rendered.
    #[error(transparent)]
    RenderModel(#[from] anomaly_model::build::RenderError),
    /// The ConfigMap holding a model artifact could not be read.
    #[error("failed to read ConfigMap {name} holding a model artifact")]
    ReadArtifact {
        /// ConfigMap name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A cache the reconcile reads was never filled (its watcher is gone).
    #[error("the {0} cache is not available")]
    CacheUnavailable(&'static str),
    /// A pipeline's detector pods could not be listed.
    #[error("failed to list detector pods")]
    ListPods {
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Savepoint could not be created or read.
    #[error("failed to create or read Savepoint {name}")]
    Savepoint {
        /// Savepoint name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Short name for the `error` label of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Apply(ApplyError::Apply { .. }) => "apply",
            Error::Apply(ApplyError::PatchStatus { .. }) => "patch_status",
            Error::RenderPipeline(_) | Error::RenderModel(_) => "render",
            Error::ReadArtifact { .. } => "read_artifact",
            Error::CacheUnavailable(_) => "cache_unavailable",
            Error::ListPods { .. } => "list_pods",
            Error::Savepoint { .. } => "savepoint",
        }
    }
}

/// What every reconcile can reach.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator settings.
    pub config: OperatorConfig,
    /// Cache of StreamPipelines.
    pub pipelines: Store<StreamPipeline>,
    /// Cache of DetectionRules.
    pub rules: Store<DetectionRule>,
    /// Cache of AnomalyModels.
    pub models: Store<AnomalyModel>,
    /// Kafka partition lookups.
    pub kafka: KafkaMetadata,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Who publishes them.
    pub reporter: Reporter,
    /// Per cache (kind name): becomes `true` once it has had its initial list.
    pub caches_ready: Vec<(&'static str, watch::Receiver<bool>)>,
    /// The last read of the detectors per analysed model rollout.
    pub rollout_reads: anomaly_model::evidence::Reads,
}

impl Context {
    /// Waits until every cache has had its initial list.
    ///
    /// # Errors
    /// [`Error::CacheUnavailable`] if a cache's watcher is gone.
    pub async fn caches_ready(&self) -> Result<(), Error> {
        for (kind, ready) in &self.caches_ready {
            let mut ready = ready.clone();
            ready
                .wait_for(|r| *r)
                .await
                .map_err(|_| Error::CacheUnavailable(kind))?;
        }
        Ok(())
    }

    /// Publishes one Event of its own (best effort, failures logged). A fresh recorder: the
    /// shared one folds an Event with the same reason and action into the earlier one's
    /// `series` (keeping the first note), and each audit record or verdict must stay readable.
    pub async fn publish_event<K>(&self, obj: &K, reason: &str, note: String, action: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "Failed to publish an Event.");
        }
    }

    /// Publishes an Event for each condition whose status or reason changed between `old`
    /// and `new`. Failures are logged: Events are best effort.
    pub async fn publish_transitions<K>(&self, obj: &K, old: &[Condition], new: &[Condition])
    where
        K: Resource<DynamicType = ()>,
    {
        let reference = obj.object_ref(&());
        for t in transitions(old, new) {
            let event = Event {
                type_: if t.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: t.reason,
                note: Some(t.note),
                action: t.action,
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "Failed to publish an Event.");
            }
        }
    }
}

/// A condition change worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Warning (something is wrong) or Normal.
    pub warning: bool,
    /// The condition's new reason.
    pub reason: String,
    /// The condition's message.
    pub note: String,
    /// `Set<ConditionType>`, e.g. `SetReady`.
    pub action: String,
}

/// Conditions of `new` whose status or reason differ from `old`. `Progressing` is left out
/// (it changes at every rollout and says nothing new).
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Transition> {
    new.iter()
        .filter(|c| c.type_ != conditions::PROGRESSING)
        .filter(|c| {
            !old.iter()
                .any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)
        })
        .map(|c| {
            let bad_when_true = c.type_ == conditions::DEGRADED
                || c.type_ == stream_pipeline::status::REPLICAS_CLAMPED
                || c.type_ == stream_pipeline::lag::LAGGING;
            // Pods starting is progress, not a problem.
            let starting = matches!(c.reason.as_str(), "DetectorsNotReady" | "Starting");
            let warning = (c.status == "True") == bad_when_true && !starting;
            Transition {
                warning,
                reason: c.reason.clone(),
                note: format!("{} is {}: {}", c.type_, c.status, c.message),
                action: format!("Set{}", c.type_),
            }
        })
        .collect()
}

/// Requeue delay after a failed reconcile.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);

/// Runs the three controllers until `shutdown` resolves, then lets in-flight reconciles end.
/// `namespace` limits the watches to one namespace; `None` watches all of them.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace.as_deref();
    let all = watcher::Config::default().any_semantic();
    let children = watcher::Config::default()
        .any_semantic()
        .labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let controller_config = ControllerConfig::default().concurrency(16);

    let rule_controller = Controller::new(api::<DetectionRule>(&client, ns), all.clone())
        .with_config(controller_config.clone());
    let pipeline_controller = Controller::new(api::<StreamPipeline>(&client, ns), all.clone())
        .with_config(controller_config.clone());
    let model_controller = Controller::new(api::<AnomalyModel>(&client, ns), all.clone())
        .with_config(controller_config.clone());
    let savepoint_controller =
        Controller::new(api::<Savepoint>(&client, ns), all.clone()).with_config(controller_config);
    // The caches reconcilers read are reflectors of their own, not the controllers' stores:
    // `Store::wait_until_ready` wakes a single waiter (kube-runtime 5) and each controller
    // already waits on its own store, so a second waiter can hang forever. These reflectors
    // signal readiness through watch channels, which wake every waiter.
    let (pipelines, pipelines_ready, pipelines_cache) =
        shared_cache(api::<StreamPipeline>(&client, ns));
    let (rules, rules_ready, rules_cache) = shared_cache(api::<DetectionRule>(&client, ns));
    let (models, models_ready, models_cache) = shared_cache(api::<AnomalyModel>(&client, ns));
    let caches = [
        tokio::spawn(pipelines_cache),
        tokio::spawn(rules_cache),
        tokio::spawn(models_cache),
    ];
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        caches_ready: vec![
            ("StreamPipeline", pipelines_ready),
            ("DetectionRule", rules_ready),
            ("AnomalyModel", models_ready),
        ],
        client: client.clone(),
        kafka: KafkaMetadata::new(config.kafka_metadata_timeout, config.kafka_metadata_ttl),
        config,
        pipelines: pipelines.clone(),
        rules: rules.clone(),
        models: models.clone(),
        metrics,
        rollout_reads: anomaly_model::evidence::Reads::default(),
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
    });

    let network_policies = ctx.config.network_policies;
    let pipeline_controller = if network_policies {
        pipeline_controller.owns(api::<NetworkPolicy>(&client, ns), children.clone())
    } else {
        pipeline_controller
    };
    let model_controller = if network_policies {
        model_controller.owns(api::<NetworkPolicy>(&client, ns), children.clone())
    } else {
        model_controller
    };
    let pipeline_controller = pipeline_controller
        .owns(api::<ConfigMap>(&client, ns), children.clone())
        .owns(api::<StatefulSet>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<ServiceAccount>(&client, ns), children.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), children.clone())
        .owns(api::<Savepoint>(&client, ns), children.clone())
        .watches(api::<DetectionRule>(&client, ns), all.clone(), {
            let pipelines = pipelines.clone();
            move |rule| stream_pipeline::pipelines_for_rule(&rule, &pipelines.state())
        })
        .watches(api::<AnomalyModel>(&client, ns), all.clone(), {
            let (pipelines, rules) = (pipelines.clone(), rules.clone());
            move |model| {
                stream_pipeline::pipelines_for_model(&model, &rules.state(), &pipelines.state())
            }
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(
            stream_pipeline::reconcile,
            stream_pipeline::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result("StreamPipeline", r) });

    let rule_controller = rule_controller
        .watches(api::<DetectionRule>(&client, ns), all.clone(), {
            let rules = rules.clone();
            move |rule| detection_rule::rules_for_rule(&rule, &rules.state())
        })
        .watches(api::<StreamPipeline>(&client, ns), all.clone(), {
            let rules = rules.clone();
            move |pipeline| detection_rule::rules_for_pipeline(&pipeline, &rules.state())
        })
        .watches(api::<AnomalyModel>(&client, ns), all.clone(), {
            let rules = rules.clone();
            move |model| detection_rule::rules_for_model(&model, &rules.state())
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(
            detection_rule::reconcile,
            detection_rule::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result("DetectionRule", r) });

    let savepoint_controller = savepoint_controller
        .graceful_shutdown_on(shutdown.clone())
        .run(savepoint::reconcile, savepoint::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("Savepoint", r) });

    let model_controller = model_controller
        .owns(api::<Deployment>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<ConfigMap>(&client, ns), children)
        .graceful_shutdown_on(shutdown)
        .run(
            anomaly_model::reconcile,
            anomaly_model::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log_result("AnomalyModel", r) });

    tokio::join!(
        pipeline_controller,
        rule_controller,
        model_controller,
        savepoint_controller
    );
    for cache in caches {
        cache.abort();
    }
}

/// A reflector cache of one kind (managed fields dropped), a flag set once its initial list
/// is in, and the future that keeps it up to date.
fn shared_cache<K>(
    api: Api<K>,
) -> (
    Store<K>,
    watch::Receiver<bool>,
    impl Future<Output = ()> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let (ready_tx, ready_rx) = watch::channel(false);
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
        .reflect(writer);
    let run = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    ready_tx.send_replace(true);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "Watch failed; retrying.");
                }
            }
        }
    };
    (store, ready_rx, run)
}

fn log_result<K, E: std::error::Error, Q: std::error::Error>(
    kind: &str,
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E, Q>>,
) where
    K: Resource,
{
    match result {
        Ok((obj, _)) => tracing::debug!(kind, object = %obj, "Reconciled."),
        Err(e) => tracing::warn!(kind, error = %e, "Reconcile failed."),
    }
}

/// The `error_policy` shared by the controllers: count the failure and requeue after a delay.
pub fn requeue_on_error(controller: &'static str, error: &Error, ctx: &Context) -> Action {
    tracing::warn!(controller, error = %error, source = ?std::error::Error::source(error), "Reconcile failed; retrying.");
    ctx.metrics.failure(controller, error.metric_label());
    Action::requeue(ERROR_REQUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_fixtures::time;
    use vigil_api::conditions::set_condition;

    #[test]
    fn transitions_are_events_with_polarity() {
        let mut old = Vec::new();
        set_condition(
            &mut old,
            "Ready",
            false,
            "DetectorsNotReady",
            "0 of 1",
            Some(1),
            time(1),
        );
        set_condition(
            &mut old,
            "Degraded",
            false,
            "AsExpected",
            "ok",
            Some(1),
            time(1),
        );
        let mut new = old.clone();
        set_condition(
            &mut new,
            "Ready",
            true,
            "Running",
            "1 of 1",
            Some(1),
            time(2),
        );
        set_condition(
            &mut new,
            "Degraded",
            true,
            "ModelNotReady",
            "AnomalyModel `m` is not ready",
            Some(1),
            time(2),
        );
        set_condition(
            &mut new,
            "Progressing",
            false,
            "RolloutComplete",
            "done",
            Some(1),
            time(2),
        );
        let t = transitions(&old, &new);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].warning, t[0].reason.as_str()), (false, "Running"));
        assert_eq!((t[1].warning, t[1].action.as_str()), (true, "SetDegraded"));
        assert!(transitions(&new, &new).is_empty());
    }
}
