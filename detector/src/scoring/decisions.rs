//! Rollout decisions the operator sent to this detector (`POST /rollouts/<model>`, see
//! [`vigil_api::contract::detector::rollouts`]): a failed candidate stops getting windows, a
//! promoted one gets them all, without waiting for kubelet to refresh the rendered
//! `rules.yaml`. The run loop applies them to the engine's model rules
//! ([`vigil_core::engine::Engine::decide_rollout`]) when one arrives and after every rules
//! reload; a decision about a candidate the reloaded rules no longer roll out is forgotten.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vigil_api::contract::detector::rollouts::{Decision, RolloutDecision};

/// Decisions by model name, shared by the HTTP endpoint and the run loop; clones share them.
#[derive(Clone, Debug, Default)]
pub struct RolloutDecisions {
    inner: Arc<Mutex<(u64, BTreeMap<String, RolloutDecision>)>>,
}

impl RolloutDecisions {
    /// Records the decision about `model` (replacing an earlier one).
    pub fn set(&self, model: &str, decision: RolloutDecision) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        g.1.insert(model.to_string(), decision);
    }

    /// Forgets the decisions about candidates that `models` (the rules file just loaded) no
    /// longer roll out: the file already says what the operator decided, and a later rollout
    /// of the same revision number starts undecided.
    pub fn retain_rolled_out(&self, models: &[&vigil_api::v1alpha1::AnomalyModel]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.1.len();
        g.1.retain(|model, d| {
            models.iter().any(|m| {
                m.metadata.name.as_deref() == Some(model.as_str())
                    && m.spec
                        .rollout
                        .as_ref()
                        .is_some_and(|r| r.candidate.revision == d.candidate)
            })
        });
        if g.1.len() != before {
            g.0 += 1;
        }
    }

    /// Every decision and the version they make up.
    pub fn all(&self) -> (u64, Vec<(String, RolloutDecision)>) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (
            g.0,
            g.1.iter().map(|(m, d)| (m.clone(), d.clone())).collect(),
        )
    }

    /// The decisions when their version is not `seen`.
    pub fn changed_since(&self, seen: u64) -> Option<(u64, Vec<(String, RolloutDecision)>)> {
        // Called at every tick of the run loop: compare the version before copying anything.
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.0 != seen).then(|| {
            (
                g.0,
                g.1.iter().map(|(m, d)| (m.clone(), d.clone())).collect(),
            )
        })
    }
}

/// Applies `decisions` to `engine`; the model rules changed.
pub fn apply(
    engine: &mut vigil_core::engine::Engine,
    decisions: &[(String, RolloutDecision)],
) -> usize {
    let mut changed = 0;
    for (model, d) in decisions {
        let n = engine.decide_rollout(model, &d.candidate, d.decision == Decision::Promote);
        if n > 0 {
            tracing::info!(model = %model, candidate = %d.candidate, decision = ?d.decision, rules = n, "Rollout decision applied: the operator judged the candidate.");
        }
        changed += n;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_about_candidates_no_longer_rolled_out_are_forgotten() {
        let d = RolloutDecisions::default();
        assert!(d.changed_since(0).is_none());
        let abort = |c: &str| RolloutDecision {
            candidate: c.into(),
            decision: Decision::Abort,
        };
        d.set("a", abort("2"));
        d.set("b", abort("5"));
        let (v, all) = d.changed_since(0).unwrap();
        assert_eq!(all.len(), 2);
        assert!(d.changed_since(v).is_none());
        let model = |name: &str, candidate: Option<&str>| {
            let rollout = candidate.map_or(String::new(), |c| {
                format!("  rollout: {{candidate: {{revision: \"{c}\", artifact: {{uri: file://c.onnx, sha256: {}}}}}, strategy: Shadow}}\n", "a".repeat(64))
            });
            let yaml = format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: AnomalyModel\nmetadata: {{name: {name}}}\nspec:\n  revision: \"1\"\n  artifact: {{uri: file://m.onnx, sha256: {}}}\n  input: {{tensor: x, window: w, features: [v.mean]}}\n  output: {{tensor: s, threshold: 0.5, anomalousWhen: Above}}\n{rollout}",
                "b".repeat(64)
            );
            serde_norway::from_str::<vigil_api::v1alpha1::AnomalyModel>(&yaml).unwrap()
        };
        // `a` still rolls out 2; `b` was re-rendered without its rollout.
        let (a, b) = (model("a", Some("2")), model("b", None));
        d.retain_rolled_out(&[&a, &b]);
        let (v2, all) = d.all();
        assert_eq!(
            all.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_ne!(v2, v);
    }
}
