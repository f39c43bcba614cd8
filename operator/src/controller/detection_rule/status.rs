//! Pure: a DetectionRule's status: `Accepted` (True, or False with reason `Invalid` and a
//! message naming the pipeline, field and problem) and `pipelines`, the pipelines whose
//! rendered config includes the rule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vigil_api::conditions::{self, set_condition};
use vigil_api::v1alpha1::{DetectionRule, DetectionRuleStatus};

use crate::controller::FieldError;

/// Reason of `Accepted=True`.
pub const REASON_ACCEPTED: &str = "Accepted";
/// Reason of `Accepted=False`.
pub const REASON_INVALID: &str = "Invalid";

/// The result of validating a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The rule itself is invalid; no pipeline runs it.
    Invalid(FieldError),
    /// The rule is valid on its own; per selected pipeline, whether it fits that pipeline.
    Checked(Vec<(String, Result<(), FieldError>)>),
}

/// The new status of `rule`.
pub fn status(rule: &DetectionRule, outcome: &Outcome, now: Time) -> DetectionRuleStatus {
    let generation = rule.metadata.generation;
    let mut s = rule.status.clone().unwrap_or_default();
    s.observed_generation = generation;
    let (ok, reason, message) = match outcome {
        Outcome::Invalid(e) => {
            s.pipelines.clear();
            (false, REASON_INVALID, e.to_string())
        }
        Outcome::Checked(results) => {
            s.pipelines = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(p, _)| p.clone())
                .collect();
            let failures: Vec<_> = results
                .iter()
                .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("pipeline `{p}`: {e}")))
                .collect();
            if failures.is_empty() {
                let message = if s.pipelines.is_empty() {
                    "valid; selects no pipeline in this namespace".to_string()
                } else {
                    format!("used by pipeline(s) {}", s.pipelines.join(", "))
                };
                (true, REASON_ACCEPTED, message)
            } else {
                (false, REASON_INVALID, failures.join("; "))
            }
        }
    };
    set_condition(
        &mut s.conditions,
        conditions::ACCEPTED,
        ok,
        reason,
        message,
        generation,
        now,
    );
    s
}

/// Whether a status patch would change more than timestamps.
pub fn changed(old: Option<&DetectionRuleStatus>, new: &DetectionRuleStatus) -> bool {
    let Some(old) = old else { return true };
    !(conditions::eq_time_insensitive(&old.conditions, &new.conditions)
        && old.observed_generation == new.observed_generation
        && old.pipelines == new.pipelines
        && old.last_change == new.last_change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_fixtures::time;

    fn rule() -> DetectionRule {
        let mut r: DetectionRule = serde_norway::from_str(
            "{apiVersion: vigil.dev/v1alpha1, kind: DetectionRule, metadata: {name: r, generation: 2}, spec: {window: fast, threshold: {field: value, feature: max, operator: '>', value: 1}}}",
        )
        .unwrap();
        r.metadata.generation = Some(2);
        r
    }

    #[test]
    fn accepted_lists_pipelines() {
        let s = status(
            &rule(),
            &Outcome::Checked(vec![("a".into(), Ok(())), ("b".into(), Ok(()))]),
            time(1),
        );
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(c.message, "used by pipeline(s) a, b");
        assert_eq!(s.pipelines, ["a", "b"]);
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn invalid_names_pipeline_and_field() {
        let e = FieldError::new(
            "spec.window",
            "window `slow` is not a window of pipeline `b`",
        );
        let s = status(
            &rule(),
            &Outcome::Checked(vec![("a".into(), Ok(())), ("b".into(), Err(e))]),
            time(1),
        );
        let c = &s.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        assert_eq!(
            c.message,
            "pipeline `b`: spec.window: window `slow` is not a window of pipeline `b`"
        );
        assert_eq!(s.pipelines, ["a"]);

        let s = status(
            &rule(),
            &Outcome::Invalid(FieldError::new(
                "spec.expression.expr",
                "CEL does not parse",
            )),
            time(1),
        );
        assert_eq!(
            s.conditions[0].message,
            "spec.expression.expr: CEL does not parse"
        );
        assert!(s.pipelines.is_empty());
    }
}
