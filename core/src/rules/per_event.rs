//! What the per-event kinds (`spec.detector`, `spec.ensemble`) share: an alarm threshold in
//! [0, 1], a cooldown after an alarm, and the panes of event scores that a window evaluation
//! reads (a per-event rule's window score is the highest alarm score of its panes).

use super::{Evaluation, MAX_PANES, RuleState, WindowView};
use crate::config::InvalidSpec;

/// Default alarm threshold: one in 100 000.
const DEFAULT_THRESHOLD: f64 = 0.5;

/// An alarm threshold in [0, 1] (default 0.5).
pub(super) fn threshold(at: &str, v: Option<f64>) -> Result<f64, InvalidSpec> {
    let t = v.unwrap_or(DEFAULT_THRESHOLD);
    if (0.0..=1.0).contains(&t) {
        Ok(t)
    } else {
        Err(InvalidSpec::new(at, "must be a number in [0, 1]"))
    }
}

/// A cooldown in ms (0 when absent).
pub(super) fn cooldown_ms(at: &str, v: Option<i64>) -> Result<i64, InvalidSpec> {
    let ms = v.unwrap_or(0);
    if ms < 0 {
        Err(InvalidSpec::new(at, "must not be negative"))
    } else {
        Ok(ms)
    }
}

/// Alarm settings of a per-event rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarm {
    /// Alarm threshold on the score.
    pub threshold: f64,
    /// Event-time span after an alarm during which the rule reports 0 (0: none).
    pub cooldown_ms: i64,
}

impl Alarm {
    /// The highest alarm score recorded in the window's panes.
    pub fn evaluate(&self, w: &WindowView<'_>, state: &RuleState) -> Evaluation {
        let top = state
            .panes
            .iter()
            .filter(|(p, _, _)| *p >= w.start && *p < w.end)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match top {
            Some(&(_, score, value)) => Evaluation {
                matched: score >= self.threshold,
                score,
                value,
            },
            None => Evaluation::NONE,
        }
    }

    /// Windows are evaluated in end order: panes before this window's start are done.
    pub fn observe(&self, w: &WindowView<'_>, state: &mut RuleState) {
        state.panes.retain(|(p, _, _)| *p >= w.start);
    }

    /// Turns an event's score into its alarm score (0 within a cooldown after an alarm; an
    /// alarm at or above the threshold starts one) and records it in the pane of `t_ms`
    /// (panes of `pane_ms`). Returns the alarm score.
    pub fn record(
        &self,
        state: &mut RuleState,
        pane_ms: i64,
        t_ms: i64,
        score: f64,
        value: f64,
    ) -> f64 {
        let score = if state.cooldown_until.is_some_and(|u| t_ms < u) {
            0.0
        } else {
            score
        };
        if score >= self.threshold && self.cooldown_ms > 0 {
            state.cooldown_until = Some(t_ms.saturating_add(self.cooldown_ms));
        }
        let pane = t_ms - t_ms.rem_euclid(pane_ms.max(1));
        match state.panes.iter_mut().rev().find(|(p, _, _)| *p == pane) {
            Some(entry) if score > entry.1 => *entry = (pane, score, value),
            Some(_) => {}
            None => {
                // Usually the newest pane; out-of-order events insert in place.
                let at = state
                    .panes
                    .iter()
                    .rposition(|(p, _, _)| *p < pane)
                    .map_or(0, |i| i + 1);
                state.panes.insert(at, (pane, score, value));
                if state.panes.len() > MAX_PANES {
                    state.panes.pop_front();
                }
            }
        }
        score
    }
}
