//! `spec.ensemble`: combines other rules' event scores (max, weighted mean or k-of-n vote).
//! Members are named here and resolved to rules of the same pipeline by
//! [`super::RuleSet::compile`], which rejects an ensemble whose member is absent, invalid or
//! itself an ensemble.

use vigil_api::v1alpha1::{CombineMethod, EnsembleRule, duration_ms};

use super::per_event::{self, Alarm};
use crate::config::InvalidSpec;
use crate::detectors::{self, Combine};

/// One member of an ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleMember {
    /// Member rule name.
    pub rule: String,
    /// Index of the member in the [`super::RuleSet`] (resolved by [`super::RuleSet::compile`]).
    pub index: usize,
    /// Weight of its score.
    pub weight: f64,
}

/// A compiled ensemble rule.
#[derive(Debug)]
pub struct Ensemble {
    /// Members.
    pub members: Vec<EnsembleMember>,
    /// Combination.
    pub combine: Combine,
    /// Alarm threshold and cooldown.
    pub alarm: Alarm,
}

impl Ensemble {
    /// Combines the members' scores for the current event (`scores` indexed like the rule
    /// set; `None`: no score).
    pub fn combine(&self, scores: &[Option<f64>]) -> f64 {
        let members = self
            .members
            .iter()
            .map(|m| (scores.get(m.index).copied().flatten(), m.weight));
        detectors::combine(self.combine, members)
    }
}

fn invalid(at: &str, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec::new(at, reason)
}

/// An ensemble with its members by name (indices are resolved by `RuleSet::compile`).
///
/// # Errors
/// The first problem, with its field path.
pub fn compile(e: &EnsembleRule) -> Result<Ensemble, InvalidSpec> {
    if e.members.is_empty() {
        return Err(invalid(
            "spec.ensemble.members",
            "at least one member is required",
        ));
    }
    let mut members = Vec::with_capacity(e.members.len());
    for (i, m) in e.members.iter().enumerate() {
        let weight = m.weight.unwrap_or(1.0);
        if !(weight >= 0.0 && weight.is_finite()) {
            return Err(invalid(
                &format!("spec.ensemble.members[{i}].weight"),
                "must be a non-negative number",
            ));
        }
        if e.members[..i].iter().any(|x| x.rule == m.rule) {
            return Err(invalid(
                &format!("spec.ensemble.members[{i}].rule"),
                "duplicate member",
            ));
        }
        members.push(EnsembleMember {
            rule: m.rule.clone(),
            index: usize::MAX,
            weight,
        });
    }
    let combine = match e.combine {
        CombineMethod::Max => Combine::Max,
        CombineMethod::WeightedMean => Combine::WeightedMean,
        CombineMethod::Vote => {
            let k = e.votes.map_or(members.len() / 2 + 1, |v| v as usize);
            if k == 0 || k > members.len() {
                return Err(invalid(
                    "spec.ensemble.votes",
                    "must be between 1 and the number of members",
                ));
            }
            Combine::Vote(k)
        }
    };
    if e.votes.is_some() && e.combine != CombineMethod::Vote {
        return Err(invalid(
            "spec.ensemble.votes",
            "only applies to `combine: Vote`",
        ));
    }
    Ok(Ensemble {
        members,
        combine,
        alarm: Alarm {
            threshold: per_event::threshold("spec.ensemble.threshold", e.threshold)?,
            cooldown_ms: per_event::cooldown_ms(
                "spec.ensemble.cooldown",
                e.cooldown.as_ref().map(duration_ms),
            )?,
        },
    })
}
