//! Pure: a StreamPipeline's status from its old status, the validation outcome and the
//! observed StatefulSet. Conditions: `Ready`, `Progressing`, `Degraded` (per the Kubernetes API
//! conventions) and `ReplicasClamped`; `lastTransitionTime` moves only when a status flips.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vigil_api::conditions::{self, set_condition};
use vigil_api::v1alpha1::{StreamPipeline, StreamPipelineStatus};

use super::validate::{ReplicaLimit, ValidatedPipeline};
use crate::controller::FieldError;
use crate::labels::{detector_selector, selector_string};

/// Condition type: `True` when `spec.parallelism` exceeds the source partitions and fewer
/// detectors run.
pub const REPLICAS_CLAMPED: &str = "ReplicasClamped";

/// CamelCase reasons of the pipeline's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Ready: every detector is ready and runs the current config.
    Running,
    /// Ready/Progressing/Degraded: the spec cannot be run; children are left as they were.
    InvalidSpec,
    /// Ready: detectors are starting or not all ready.
    DetectorsNotReady,
    /// Progressing: a new StatefulSet revision or replica count is being rolled out.
    RollingOut,
    /// Progressing: the StatefulSet runs the desired revision with the desired replicas.
    RolloutComplete,
    /// Degraded: a model used by an accepted rule is not ready.
    ModelNotReady,
    /// Degraded: a rule that selects the pipeline was left out of its config.
    RulesRejected,
    /// Degraded: the partitions of the source topics could not be read.
    KafkaUnavailable,
    /// Degraded: nothing is wrong.
    AsExpected,
    /// ReplicasClamped: parallelism exceeds the partitions.
    PartitionLimit,
    /// ReplicasClamped: parallelism fits the partitions.
    WithinPartitions,
    /// ReplicasClamped: partitions unknown.
    PartitionsUnknown,
    /// Progressing: `upgradeMode: Savepoint`; the detectors are held until their savepoint is
    /// complete.
    SavepointInProgress,
    /// Ready: the savepoint before an upgrade failed; nothing was rolled.
    SavepointFailed,
    /// Progressing (False): a rollout of this generation has not completed within
    /// [`PROGRESS_DEADLINE_SECS`] (a Deployment's `ProgressDeadlineExceeded`), so GitOps tools
    /// stop showing it as progressing forever.
    ProgressDeadlineExceeded,
}

/// How long a rollout may stay incomplete before `Progressing` turns False with
/// `ProgressDeadlineExceeded`: 600 s, the default `progressDeadlineSeconds` of a Deployment.
pub const PROGRESS_DEADLINE_SECS: i64 = 600;

impl Reason {
    /// The reason as written in conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Running => "Running",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::DetectorsNotReady => "DetectorsNotReady",
            Reason::RollingOut => "RollingOut",
            Reason::RolloutComplete => "RolloutComplete",
            Reason::ModelNotReady => "ModelNotReady",
            Reason::RulesRejected => "RulesRejected",
            Reason::KafkaUnavailable => "KafkaUnavailable",
            Reason::AsExpected => "AsExpected",
            Reason::PartitionLimit => "PartitionLimit",
            Reason::WithinPartitions => "WithinPartitions",
            Reason::PartitionsUnknown => "PartitionsUnknown",
            Reason::SavepointInProgress => "SavepointInProgress",
            Reason::SavepointFailed => "SavepointFailed",
            Reason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
        }
    }
}

/// What the reconcile did.
pub enum Outcome<'a> {
    /// The spec is invalid; nothing was applied.
    Invalid(&'a FieldError),
    /// The children were applied; `stateful_set` as the API server returned it.
    Applied {
        /// The validated pipeline.
        validated: &'a ValidatedPipeline,
        /// The applied StatefulSet, with its status.
        stateful_set: &'a StatefulSet,
    },
}

/// Rollout state of the detectors' StatefulSet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rollout {
    desired: i32,
    ready: i32,
    current: i32,
    complete: bool,
}

fn rollout(sts: &StatefulSet, desired: i32) -> Rollout {
    let status = sts.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let same_revision =
        status.current_revision.is_some() && status.current_revision == status.update_revision;
    Rollout {
        desired,
        ready,
        current: status.replicas,
        complete: observed && status.replicas == desired && updated == desired && same_revision,
    }
}

/// Overrides `s` for a pipeline whose detectors are held for savepoint `savepoint` before an
/// upgrade: `Progressing=True` (`SavepointInProgress`) while it is taken, `Ready=False`
/// (`SavepointFailed`) with the reason when it failed.
pub fn hold_for_savepoint(
    s: &mut StreamPipelineStatus,
    savepoint: &str,
    failed: Option<&str>,
    generation: Option<i64>,
    now: Time,
) {
    match failed {
        None => set_condition(
            &mut s.conditions,
            conditions::PROGRESSING,
            true,
            Reason::SavepointInProgress.as_str(),
            format!("taking savepoint {savepoint} before rolling the detectors to the new spec"),
            generation,
            now,
        ),
        Some(why) => {
            let message = format!(
                "savepoint {savepoint} failed: {why}; no detector was rolled (delete Savepoint {savepoint} to try again)"
            );
            set_condition(
                &mut s.conditions,
                conditions::READY,
                false,
                Reason::SavepointFailed.as_str(),
                message.clone(),
                generation,
                now.clone(),
            );
            set_condition(
                &mut s.conditions,
                conditions::PROGRESSING,
                false,
                Reason::SavepointFailed.as_str(),
                message,
                generation,
                now,
            );
        }
    }
}

/// The new status of `pipeline` after a reconcile.
pub fn status(pipeline: &StreamPipeline, outcome: &Outcome<'_>, now: Time) -> StreamPipelineStatus {
    let old = pipeline.status.clone().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let mut s = old.clone();
    s.observed_generation = generation;
    let mut set = |type_: &str, ok: bool, reason: Reason, message: String| {
        set_condition(
            &mut s.conditions,
            type_,
            ok,
            reason.as_str(),
            message,
            generation,
            now.clone(),
        );
    };
    match outcome {
        Outcome::Invalid(error) => {
            let message = format!("invalid spec: {error}");
            set(
                conditions::READY,
                false,
                Reason::InvalidSpec,
                message.clone(),
            );
            set(
                conditions::PROGRESSING,
                false,
                Reason::InvalidSpec,
                message.clone(),
            );
            set(conditions::DEGRADED, true, Reason::InvalidSpec, message);
        }
        Outcome::Applied {
            validated: v,
            stateful_set,
        } => {
            let r = rollout(stateful_set, v.replicas);
            if r.complete && r.ready == r.desired {
                set(
                    conditions::READY,
                    true,
                    Reason::Running,
                    format!("{} of {} detectors ready", r.ready, r.desired),
                );
            } else {
                set(
                    conditions::READY,
                    false,
                    Reason::DetectorsNotReady,
                    format!("{} of {} detectors ready", r.ready, r.desired),
                );
            }
            if r.complete {
                set(
                    conditions::PROGRESSING,
                    false,
                    Reason::RolloutComplete,
                    format!("{} detectors run the current config", r.desired),
                );
            } else if let Some(since) = past_deadline(&old, generation, &now) {
                set(
                    conditions::PROGRESSING,
                    false,
                    Reason::ProgressDeadlineExceeded,
                    format!(
                        "the rollout of {} detectors started at {since} has not completed within {PROGRESS_DEADLINE_SECS} s ({} running the current config)",
                        r.desired, r.current
                    ),
                );
            } else {
                set(
                    conditions::PROGRESSING,
                    true,
                    Reason::RollingOut,
                    format!(
                        "rolling out {} detectors ({} running)",
                        r.desired, r.current
                    ),
                );
            }
            let (reason, message) = degraded(v);
            set(
                conditions::DEGRADED,
                reason != Reason::AsExpected,
                reason,
                message,
            );
            let (clamped, reason, message) = match &v.limit {
                ReplicaLimit::Clamped {
                    requested,
                    partitions,
                } => (
                    true,
                    Reason::PartitionLimit,
                    format!(
                        "spec.parallelism {requested} exceeds the {partitions} partitions of topic(s) {}; running {} detectors",
                        topics(validated_topics(v)),
                        v.replicas
                    ),
                ),
                ReplicaLimit::Within { partitions } => (
                    false,
                    Reason::WithinPartitions,
                    format!("{} detectors for {partitions} partitions", v.replicas),
                ),
                ReplicaLimit::Unknown { reason } => (
                    false,
                    Reason::PartitionsUnknown,
                    format!(
                        "running spec.parallelism {} detectors unclamped: {reason}",
                        v.replicas
                    ),
                ),
            };
            set(REPLICAS_CLAMPED, clamped, reason, message);
            s.replicas = Some(r.current);
            s.selector = Some(selector_string(&detector_selector(&v.name)));
            s.partitions = match &v.limit {
                ReplicaLimit::Within { partitions } | ReplicaLimit::Clamped { partitions, .. } => {
                    Some(*partitions)
                }
                ReplicaLimit::Unknown { .. } => None,
            };
            s.rules = v
                .rules
                .iter()
                .filter_map(|r| r.metadata.name.clone())
                .collect();
        }
    }
    s
}

/// When the incomplete rollout of `generation` started, if that is more than
/// [`PROGRESS_DEADLINE_SECS`] before `now` (or the deadline was already declared for it).
fn past_deadline(
    old: &StreamPipelineStatus,
    generation: Option<i64>,
    now: &Time,
) -> Option<String> {
    let c = old
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::PROGRESSING && c.observed_generation == generation)?;
    let since = c.last_transition_time.0;
    let exceeded = c.reason == Reason::ProgressDeadlineExceeded.as_str()
        || (c.status == "True"
            && c.reason == Reason::RollingOut.as_str()
            && now.0.as_second() - since.as_second() > PROGRESS_DEADLINE_SECS);
    exceeded.then(|| since.to_string())
}

fn validated_topics(v: &ValidatedPipeline) -> &[String] {
    &v.pipeline.spec.source.kafka.topics
}

fn topics(topics: &[String]) -> String {
    topics
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `Degraded` reason (the most important problem) and a message naming every problem.
fn degraded(v: &ValidatedPipeline) -> (Reason, String) {
    let mut problems = Vec::new();
    let mut reason = Reason::AsExpected;
    for m in &v.unready_models {
        problems.push(format!(
            "AnomalyModel `{}` is not ready ({})",
            m.name, m.why
        ));
    }
    if !v.unready_models.is_empty() {
        reason = Reason::ModelNotReady;
    }
    for r in &v.rejected_rules {
        problems.push(format!(
            "DetectionRule `{}` is left out: {}",
            r.name, r.error
        ));
    }
    if reason == Reason::AsExpected && !v.rejected_rules.is_empty() {
        reason = Reason::RulesRejected;
    }
    if let ReplicaLimit::Unknown { reason: why } = &v.limit {
        problems.push(format!("cannot read the source partitions: {why}"));
        if reason == Reason::AsExpected {
            reason = Reason::KafkaUnavailable;
        }
    }
    if problems.is_empty() {
        (reason, "all rules accepted and their models ready".into())
    } else {
        (reason, problems.join("; "))
    }
}

/// Whether a status patch would change more than timestamps.
pub fn changed(old: Option<&StreamPipelineStatus>, new: &StreamPipelineStatus) -> bool {
    let Some(old) = old else { return true };
    !(conditions::eq_time_insensitive(&old.conditions, &new.conditions)
        && old.observed_generation == new.observed_generation
        && old.replicas == new.replicas
        && old.selector == new.selector
        && old.partitions == new.partitions
        && old.rules == new.rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::stream_pipeline::dereference::Partitions;
    use crate::controller::stream_pipeline::validate::validate;
    use crate::controller::test_fixtures::{nab_fixture, ready_model, time};
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn sts(
        generation: i64,
        observed: i64,
        replicas: i32,
        ready: i32,
        revisions: (&str, &str),
    ) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.generation = Some(generation);
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(observed),
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(replicas),
            current_revision: Some(revisions.0.into()),
            update_revision: Some(revisions.1.into()),
            ..StatefulSetStatus::default()
        });
        s
    }

    fn cond<'a>(
        s: &'a StreamPipelineStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_when_all_detectors_run_the_current_revision() {
        let (p, mut d) = nab_fixture();
        d.models.insert("iforest".into(), Arc::new(ready_model()));
        d.rules
            .retain(|r| r.metadata.name.as_deref() != Some("wrong-window"));
        let v = validate(&p, &d, None).unwrap();
        let s = status(
            &p,
            &Outcome::Applied {
                validated: &v,
                stateful_set: &sts(2, 2, 4, 4, ("a", "a")),
            },
            time(10),
        );
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Ready").reason, "Running");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, REPLICAS_CLAMPED).reason, "WithinPartitions");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!((s.replicas, s.partitions), (Some(4), Some(8)));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=nab,app.kubernetes.io/name=vigil-detector")
        );
        assert_eq!(s.rules, ["iforest-score", "spike"]);

        let rolling = status(
            &p,
            &Outcome::Applied {
                validated: &v,
                stateful_set: &sts(3, 2, 4, 4, ("a", "b")),
            },
            time(20),
        );
        assert_eq!(cond(&rolling, "Ready").reason, "DetectorsNotReady");
        assert_eq!(cond(&rolling, "Progressing").reason, "RollingOut");

        // Still incomplete 600 s later: Progressing=False, ProgressDeadlineExceeded (and it
        // stays so for this generation); complete again: RolloutComplete.
        let mut p2 = (*p).clone();
        p2.status = Some(rolling.clone());
        let step = |p: &StreamPipeline, at: i64, sts: &StatefulSet| {
            status(
                p,
                &Outcome::Applied {
                    validated: &v,
                    stateful_set: sts,
                },
                time(at),
            )
        };
        let stuck = sts(3, 2, 4, 4, ("a", "b"));
        let within = step(&p2, 20 + PROGRESS_DEADLINE_SECS, &stuck);
        assert_eq!(cond(&within, "Progressing").reason, "RollingOut");
        let late = step(&p2, 21 + PROGRESS_DEADLINE_SECS, &stuck);
        let c = cond(&late, "Progressing");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ProgressDeadlineExceeded")
        );
        assert!(
            c.message.contains("has not completed within 600 s"),
            "{}",
            c.message
        );
        p2.status = Some(late);
        let later = step(&p2, 5000, &stuck);
        assert_eq!(
            cond(&later, "Progressing").reason,
            "ProgressDeadlineExceeded"
        );
        let done = step(&p2, 5001, &sts(3, 3, 4, 4, ("b", "b")));
        assert_eq!(cond(&done, "Progressing").reason, "RolloutComplete");
        // A new generation starts a new rollout clock.
        p2.status = Some(later);
        p2.metadata.generation = Some(4);
        let next = step(&p2, 5002, &stuck);
        assert_eq!(cond(&next, "Progressing").reason, "RollingOut");
    }

    #[test]
    fn missing_or_unready_model_degrades_and_names_it() {
        let (p, d) = nab_fixture();
        let v = validate(&p, &d, None).unwrap();
        let s = status(
            &p,
            &Outcome::Applied {
                validated: &v,
                stateful_set: &sts(1, 1, 4, 4, ("a", "a")),
            },
            time(10),
        );
        let c = cond(&s, "Degraded");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ModelNotReady")
        );
        assert!(
            c.message.contains("AnomalyModel `iforest` is not ready"),
            "{}",
            c.message
        );
        assert!(
            c.message
                .contains("DetectionRule `wrong-window` is left out: spec.window"),
            "{}",
            c.message
        );
    }

    #[test]
    fn clamp_is_reported() {
        let (p, mut d) = nab_fixture();
        d.partitions = Partitions::Known(BTreeMap::from([("nab".into(), 2)]));
        let v = validate(&p, &d, None).unwrap();
        let s = status(
            &p,
            &Outcome::Applied {
                validated: &v,
                stateful_set: &sts(1, 1, 2, 2, ("a", "a")),
            },
            time(10),
        );
        let c = cond(&s, REPLICAS_CLAMPED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "PartitionLimit")
        );
        assert_eq!(
            c.message,
            "spec.parallelism 4 exceeds the 2 partitions of topic(s) `nab`; running 2 detectors"
        );
        assert_eq!(cond(&s, "Ready").status, "True");
    }

    #[test]
    fn invalid_spec_sets_conditions_and_keeps_transition_times() {
        let (mut p, _) = nab_fixture();
        let e = FieldError::new("spec.windows[0].slide", "7000 ms does not divide");
        let s1 = status(&p, &Outcome::Invalid(&e), time(10));
        assert_eq!(
            cond(&s1, "Ready").message,
            "invalid spec: spec.windows[0].slide: 7000 ms does not divide"
        );
        Arc::make_mut(&mut p).status = Some(s1.clone());
        let s2 = status(&p, &Outcome::Invalid(&e), time(20));
        assert_eq!(cond(&s2, "Ready").last_transition_time, time(10));
        assert!(!changed(Some(&s1), &s2));
        assert!(changed(None, &s2));
    }
}
