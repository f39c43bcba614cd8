//! Status conditions per the Kubernetes API conventions: `Ready`, `Progressing`, `Degraded`
//! (and `Accepted` for rules), CamelCase reasons, `observedGeneration` always set, and
//! `lastTransitionTime` kept unless the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the resource does what its spec asks.
pub const READY: &str = "Ready";
/// Condition type: the operator is moving towards the spec.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: running, but something it depends on is missing or failing.
pub const DEGRADED: &str = "Degraded";
/// Condition type (DetectionRule): the rule is valid and compiled.
pub const ACCEPTED: &str = "Accepted";

/// Inserts or updates the condition of `type_` in `conditions`.
///
/// `lastTransitionTime` is set to `now` only when the condition is new or its status changes;
/// reason, message and observedGeneration are always replaced.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: now,
        }),
    }
}

/// Whether two condition lists are equal ignoring `lastTransitionTime` (to skip status patches
/// that would only move timestamps).
pub fn eq_time_insensitive(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set_condition(&mut c, READY, false, "Reconciling", "a", Some(1), t(10));
        set_condition(&mut c, READY, false, "Waiting", "b", Some(2), t(20));
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].reason, "Waiting");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, READY, true, "Running", "c", Some(2), t(30));
        assert_eq!(c[0].last_transition_time, t(30));
        assert_eq!(c.len(), 1);
    }
}
