//! Pure: an AnomalyModel's status from its old status, the validation outcome and the observed
//! Deployment. `servingRevision` becomes `spec.revision` once every replica of the current pod
//! template is available, and keeps naming the old revision while a new one rolls out.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vigil_api::conditions::{self, set_condition};
use vigil_api::v1alpha1::{
    AnomalyModel, AnomalyModelSpec, AnomalyModelStatus, HISTORY_LIMIT, RevisionOutcome,
    RevisionRecord, RolloutPhase, RolloutStatus,
};

use super::validate::ModelProblem;

/// CamelCase reasons of the model's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Ready: every replica serves the current revision.
    Serving,
    /// Ready/Progressing/Degraded: the spec cannot be served.
    InvalidSpec,
    /// Ready/Degraded: a `configmap://` artifact is missing or fails its digest.
    ArtifactUnavailable,
    /// Ready: the server is starting or rolling out.
    Starting,
    /// Progressing: a new pod template is rolling out.
    RollingOut,
    /// Progressing: the rollout finished.
    RolloutComplete,
    /// Degraded: the Deployment reports it cannot make progress.
    RolloutStuck,
    /// Degraded: nothing is wrong.
    AsExpected,
    /// Progressing: the rollout's candidate is being analysed.
    Analysing,
    /// Progressing: the candidate passed its analysis and serves every key.
    RolloutPromoted,
    /// Degraded: the candidate failed its analysis and serves no key.
    RolloutFailed,
}

impl Reason {
    /// The reason as written in conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Serving => "Serving",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::ArtifactUnavailable => "ArtifactUnavailable",
            Reason::Starting => "Starting",
            Reason::RollingOut => "RollingOut",
            Reason::RolloutComplete => "RolloutComplete",
            Reason::RolloutStuck => "RolloutStuck",
            Reason::AsExpected => "AsExpected",
            Reason::Analysing => "Analysing",
            Reason::RolloutPromoted => "RolloutPromoted",
            Reason::RolloutFailed => "RolloutFailed",
        }
    }
}

/// What the reconcile did.
pub enum Outcome<'a> {
    /// Nothing was applied.
    Problem(&'a ModelProblem),
    /// The children were applied; the Deployment as the API server returned it.
    Applied(&'a Deployment),
}

/// The new status of `model` after a reconcile; `status.rollout` of `model` is the analysis's
/// new one (it decides which revision is served: [`AnomalyModel::effective_spec`]).
pub fn status(model: &AnomalyModel, outcome: &Outcome<'_>, now: Time) -> AnomalyModelStatus {
    let generation = model.metadata.generation;
    let mut s = model.status.clone().unwrap_or_default();
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
        Outcome::Problem(problem) => {
            let (reason, message) = match problem {
                ModelProblem::Invalid(e) => (Reason::InvalidSpec, format!("invalid spec: {e}")),
                ModelProblem::ArtifactUnavailable(e) => (
                    Reason::ArtifactUnavailable,
                    format!("artifact unavailable: {e}"),
                ),
            };
            set(conditions::READY, false, reason, message.clone());
            set(conditions::PROGRESSING, false, reason, message.clone());
            set(conditions::DEGRADED, true, reason, message);
        }
        Outcome::Applied(deployment) => {
            let status = deployment.status.clone().unwrap_or_default();
            let desired = deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1);
            let observed = status.observed_generation.unwrap_or(0)
                >= deployment.metadata.generation.unwrap_or(0);
            let updated = status.updated_replicas.unwrap_or(0);
            let available = status.available_replicas.unwrap_or(0);
            let total = status.replicas.unwrap_or(0);
            let complete =
                observed && updated == desired && available == desired && total == desired;
            let effective = model.effective_spec();
            let revision = &effective.revision;
            if complete {
                s.serving_revision = Some(revision.clone());
                let promoted = s
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.phase == RolloutPhase::Promoted)
                    && effective.revision != model.spec.revision;
                record_served(&mut s.history, &effective, promoted, &now);
                if let Some(r) = s
                    .rollout
                    .clone()
                    .filter(|r| r.phase == RolloutPhase::Failed)
                {
                    record_failed(&mut s.history, model, &r);
                }
                set(
                    conditions::READY,
                    true,
                    Reason::Serving,
                    format!("revision {revision} served by {available} of {desired} replicas"),
                );
                set(
                    conditions::PROGRESSING,
                    false,
                    Reason::RolloutComplete,
                    format!("revision {revision} rolled out"),
                );
            } else {
                let serving = s
                    .serving_revision
                    .as_deref()
                    .map_or("no revision".to_string(), |r| format!("revision {r}"));
                set(
                    conditions::READY,
                    false,
                    Reason::Starting,
                    format!(
                        "{updated} of {desired} replicas run revision {revision}, {available} available; serving {serving}"
                    ),
                );
                set(
                    conditions::PROGRESSING,
                    true,
                    Reason::RollingOut,
                    format!("rolling out revision {revision}"),
                );
            }
            let stuck = status.conditions.iter().flatten().find(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            });
            match stuck {
                Some(c) => set(
                    conditions::DEGRADED,
                    true,
                    Reason::RolloutStuck,
                    format!(
                        "Deployment cannot roll out revision {revision}: {}",
                        c.message.clone().unwrap_or_default()
                    ),
                ),
                None => set(
                    conditions::DEGRADED,
                    false,
                    Reason::AsExpected,
                    "no problems".into(),
                ),
            }
            if let Some(r) = s.rollout.clone().filter(|_| complete && stuck.is_none()) {
                match r.phase {
                    RolloutPhase::Analysing => set(
                        conditions::PROGRESSING,
                        true,
                        Reason::Analysing,
                        format!(
                            "analysing candidate revision {}: {}",
                            r.candidate, r.message
                        ),
                    ),
                    RolloutPhase::Promoted => set(
                        conditions::PROGRESSING,
                        false,
                        Reason::RolloutPromoted,
                        r.message.clone(),
                    ),
                    RolloutPhase::Failed => set(
                        conditions::DEGRADED,
                        true,
                        Reason::RolloutFailed,
                        r.message.clone(),
                    ),
                }
            }
        }
    }
    s
}

/// Appends the served stable revision (of the effective spec) to `history` when it is not
/// its newest stable entry (same revision and digest), marking that one replaced; keeps
/// [`HISTORY_LIMIT`] entries. `promoted`: it got there by its rollout analysis.
fn record_served(
    history: &mut Vec<RevisionRecord>,
    spec: &AnomalyModelSpec,
    promoted: bool,
    now: &Time,
) {
    let last_stable = history.iter_mut().rev().find(|h| h.was_stable());
    if let Some(last) = last_stable {
        if last.revision == spec.revision
            && last.uri == spec.artifact.uri
            && last.sha256 == spec.artifact.sha256
        {
            return;
        }
        last.replaced_at = Some(now.clone());
    }
    history.push(RevisionRecord {
        revision: spec.revision.clone(),
        uri: spec.artifact.uri.clone(),
        sha256: spec.artifact.sha256.clone(),
        served_at: now.clone(),
        replaced_at: None,
        outcome: Some(if promoted {
            RevisionOutcome::Promoted
        } else {
            RevisionOutcome::Served
        }),
    });
    let over = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..over);
}

/// Records a candidate that failed its analysis (once per revision and digest): served from
/// the start of its analysis until it failed.
fn record_failed(history: &mut Vec<RevisionRecord>, model: &AnomalyModel, r: &RolloutStatus) {
    let Some(candidate) = model.spec.rollout.as_ref().map(|ro| &ro.candidate) else {
        return;
    };
    if history
        .iter()
        .any(|h| !h.was_stable() && h.revision == r.candidate && h.sha256 == r.sha256)
    {
        return;
    }
    history.push(RevisionRecord {
        revision: r.candidate.clone(),
        uri: candidate.artifact.uri.clone(),
        sha256: r.sha256.clone(),
        served_at: r.started_at.clone(),
        replaced_at: r.finished_at.clone(),
        outcome: Some(RevisionOutcome::Failed),
    });
    let over = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..over);
}

/// Whether a status patch would change more than timestamps.
pub fn changed(old: Option<&AnomalyModelStatus>, new: &AnomalyModelStatus) -> bool {
    let Some(old) = old else { return true };
    !(conditions::eq_time_insensitive(&old.conditions, &new.conditions)
        && old.observed_generation == new.observed_generation
        && old.serving_revision == new.serving_revision
        && old.history == new.history
        && old.rollout == new.rollout
        && old.last_change == new.last_change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::FieldError;
    use crate::controller::test_fixtures::{model, time};
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    fn deployment(
        generation: i64,
        observed: i64,
        updated: i32,
        available: i32,
        total: i32,
    ) -> Deployment {
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                replicas: Some(total),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        };
        d.metadata.generation = Some(generation);
        d
    }

    fn cond<'a>(
        s: &'a AnomalyModelStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn serving_revision_follows_completed_rollouts() {
        let mut m = model();
        let s = status(&m, &Outcome::Applied(&deployment(1, 1, 0, 0, 1)), time(1));
        assert_eq!(s.serving_revision, None);
        assert_eq!(cond(&s, "Ready").reason, "Starting");
        let s = status(&m, &Outcome::Applied(&deployment(1, 1, 1, 1, 1)), time(2));
        assert_eq!(s.serving_revision.as_deref(), Some("1"));
        assert_eq!(
            cond(&s, "Ready").message,
            "revision 1 served by 1 of 1 replicas"
        );
        m.status = Some(s);
        m.spec.revision = "2".into();
        let s = status(&m, &Outcome::Applied(&deployment(2, 2, 1, 1, 2)), time(3));
        assert_eq!(s.serving_revision.as_deref(), Some("1"));
        assert_eq!(cond(&s, "Progressing").reason, "RollingOut");
        assert!(cond(&s, "Ready").message.contains("serving revision 1"));
    }

    #[test]
    fn history_records_each_served_revision_once_and_keeps_ten() {
        let mut m = model();
        let done = |g| deployment(g, g, 1, 1, 1);
        let s = status(&m, &Outcome::Applied(&done(1)), time(2));
        assert_eq!(s.history.len(), 1);
        assert_eq!(
            (
                s.history[0].revision.as_str(),
                &s.history[0].served_at,
                &s.history[0].replaced_at
            ),
            ("1", &time(2), &None)
        );
        m.status = Some(s);
        // Reconciling the same revision again records nothing.
        let s = status(&m, &Outcome::Applied(&done(1)), time(3));
        assert_eq!(s.history.len(), 1);
        m.status = Some(s);
        m.spec.revision = "2".into();
        m.spec.artifact.sha256 = "c".repeat(64);
        // Not served until its rollout completes.
        let s = status(&m, &Outcome::Applied(&deployment(2, 2, 1, 1, 2)), time(4));
        assert_eq!(s.history.len(), 1);
        let s = status(&m, &Outcome::Applied(&done(2)), time(5));
        assert_eq!(
            s.history
                .iter()
                .map(|h| h.revision.as_str())
                .collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert_eq!(s.history[0].replaced_at, Some(time(5)));
        assert_eq!(s.history[1].sha256, "c".repeat(64));
        m.status = Some(s);
        for r in 3..20 {
            m.spec.revision = r.to_string();
            let s = status(&m, &Outcome::Applied(&done(r)), time(10 + r));
            m.status = Some(s);
        }
        let h = &m.status.as_ref().unwrap().history;
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(
            (h[0].revision.as_str(), h[9].revision.as_str()),
            ("10", "19")
        );
    }

    #[test]
    fn problems_set_reasons() {
        let m = model();
        let p = ModelProblem::ArtifactUnavailable(FieldError::new(
            "spec.artifact.uri",
            "ConfigMap `x` does not exist",
        ));
        let s = status(&m, &Outcome::Problem(&p), time(1));
        assert_eq!(cond(&s, "Ready").reason, "ArtifactUnavailable");
        assert_eq!(
            cond(&s, "Degraded").message,
            "artifact unavailable: spec.artifact.uri: ConfigMap `x` does not exist"
        );
        assert!(!changed(
            Some(&s),
            &status(&m, &Outcome::Problem(&p), time(5))
        ));
    }

    #[test]
    fn an_analysed_rollout_sets_conditions_and_a_promotion_is_served_and_recorded() {
        use vigil_api::v1alpha1::{
            Artifact, CandidateRevision, Rollout, RolloutAnalysis, RolloutStatus, RolloutStrategy,
        };
        let mut m = model();
        let candidate = Artifact {
            uri: "file://m2.onnx".into(),
            sha256: "cd".repeat(32),
        };
        m.spec.rollout = Some(Rollout {
            candidate: CandidateRevision {
                revision: "2".into(),
                artifact: candidate.clone(),
            },
            strategy: RolloutStrategy::Canary,
            weight: Some(20),
            analysis: Some(RolloutAnalysis {
                interval: None,
                iterations: None,
                min_samples: None,
                max_anomaly_rate_ratio: None,
                max_error_rate: None,
                max_latency_p99: None,
                progress_deadline: None,
            }),
        });
        let with = |m: &AnomalyModel, phase| {
            let mut m = m.clone();
            m.status.get_or_insert_default().rollout = Some(RolloutStatus {
                candidate: "2".into(),
                sha256: candidate.sha256.clone(),
                phase,
                message: format!("{phase:?} because"),
                passed_intervals: 0,
                started_at: time(1),
                finished_at: None,
                last_analysis: None,
            });
            m
        };
        let done = deployment(1, 1, 1, 1, 1);
        let s = status(
            &with(&m, RolloutPhase::Analysing),
            &Outcome::Applied(&done),
            time(2),
        );
        assert_eq!(cond(&s, "Progressing").reason, "Analysing");
        assert_eq!(s.serving_revision.as_deref(), Some("1"));

        let failed = status(
            &with(&m, RolloutPhase::Failed),
            &Outcome::Applied(&done),
            time(3),
        );
        let d = cond(&failed, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "RolloutFailed")
        );
        assert_eq!(
            cond(&failed, "Ready").status,
            "True",
            "the stable revision serves"
        );
        assert_eq!(failed.serving_revision.as_deref(), Some("1"));
        let h: Vec<_> = failed
            .history
            .iter()
            .map(|h| (h.revision.as_str(), h.outcome, h.replaced_at.is_some()))
            .collect();
        assert_eq!(
            h,
            [
                ("1", Some(RevisionOutcome::Served), false),
                ("2", Some(RevisionOutcome::Failed), false)
            ],
            "the failed candidate is recorded, the stable one is not replaced"
        );
        // Recorded once, and the stable entry is not appended again after it.
        let mut again = with(&m, RolloutPhase::Failed);
        again.status.as_mut().unwrap().history = failed.history.clone();
        let s2 = status(&again, &Outcome::Applied(&done), time(5));
        assert_eq!(s2.history, failed.history);

        m.status = Some(s);
        let promoted = status(
            &with(&m, RolloutPhase::Promoted),
            &Outcome::Applied(&done),
            time(4),
        );
        assert_eq!(cond(&promoted, "Progressing").reason, "RolloutPromoted");
        assert_eq!(promoted.serving_revision.as_deref(), Some("2"));
        let last = promoted.history.last().unwrap();
        assert_eq!(
            (last.revision.as_str(), last.uri.as_str()),
            ("2", "file://m2.onnx")
        );
        assert_eq!(promoted.history.len(), 2);
        assert_eq!(promoted.history[0].replaced_at, Some(time(4)));
        // The rendered spec follows: promoted serves revision 2 alone, failed revision 1 alone.
        let mut p = with(&m, RolloutPhase::Promoted);
        let eff = p.effective_spec();
        assert_eq!((eff.revision.as_str(), eff.rollout.is_none()), ("2", true));
        assert_eq!(eff.artifact, candidate);
        let eff = with(&m, RolloutPhase::Failed).effective_spec();
        assert_eq!((eff.revision.as_str(), eff.rollout.is_none()), ("1", true));
        // A verdict about another candidate changes nothing.
        p.spec.rollout.as_mut().unwrap().candidate.artifact.sha256 = "ef".repeat(32);
        assert_eq!(p.effective_spec(), p.spec);
    }
}
