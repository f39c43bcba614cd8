//! CEL expression rules (the `cel` crate): variables `key`, `features`, `baseline`, `event`
//! and `window` built per evaluation from the window's features and the key's history.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Program, Value};
use vigil_api::v1alpha1::{ExpressionRule, Feature};

use super::baseline::History;
use super::{Evaluation, WindowView};
use crate::config::PipelineConfig;

/// Variables an expression may use.
pub const VARIABLES: [&str; 5] = ["key", "features", "baseline", "event", "window"];

/// A compiled CEL rule.
pub struct Expression {
    source: String,
    program: Program,
    score: Option<Program>,
    history_ms: i64,
    uses_baseline: bool,
    features: Vec<Feature>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expression")
            .field("expr", &self.source)
            .finish_non_exhaustive()
    }
}

fn compile_one(at: &str, src: &str) -> Result<Program, (String, String)> {
    let program = Program::compile(src)
        .map_err(|e| (at.to_string(), format!("CEL does not compile: {e}")))?;
    let refs = program.references();
    for v in refs.variables() {
        if !VARIABLES.contains(&v) {
            return Err((
                at.to_string(),
                format!(
                    "unknown variable `{v}`; available: {}",
                    VARIABLES.join(", ")
                ),
            ));
        }
    }
    Ok(program)
}

impl Expression {
    /// Compiles the condition and optional score expression.
    ///
    /// # Errors
    /// `(field path, reason)` for a syntax error or an unknown variable.
    pub fn compile(e: &ExpressionRule, cfg: &PipelineConfig) -> Result<Self, (String, String)> {
        let program = compile_one("spec.expression.expr", &e.expr)?;
        let score = e
            .score
            .as_deref()
            .map(|s| compile_one("spec.expression.score", s))
            .transpose()?;
        let uses_baseline = program.references().has_variable("baseline")
            || score
                .as_ref()
                .is_some_and(|s| s.references().has_variable("baseline"));
        let history_ms = e
            .history
            .as_ref()
            .map_or(3_600_000, vigil_api::v1alpha1::duration_ms);
        if history_ms <= 0 {
            return Err(("spec.expression.history".into(), "must be positive".into()));
        }
        Ok(Self {
            source: e.expr.clone(),
            program,
            score,
            history_ms,
            uses_baseline,
            features: cfg.features.clone(),
        })
    }

    fn context(&self, w: &WindowView<'_>, history: &mut [History]) -> Context<'static, 'static> {
        let mut ctx = Context::default();
        let mut features: HashMap<String, Value> = HashMap::new();
        let mut event: HashMap<String, Value> = HashMap::new();
        let mut baseline: HashMap<String, Value> = HashMap::new();
        for (id, fv) in w.fields {
            let name = w.table.name(*id).to_string();
            let per: HashMap<String, Value> = self
                .features
                .iter()
                .map(|f| (f.as_str().to_string(), Value::Float(fv.get(*f))))
                .collect();
            features.insert(name.clone(), per.into());
            event.insert(name.clone(), Value::Float(fv.get(Feature::Last)));
            if self.uses_baseline
                && let Some(s) = history.get_mut(*id as usize).and_then(History::stats)
            {
                let b: HashMap<String, Value> = [
                    ("mean", s.mean),
                    ("stddev", s.stddev),
                    ("median", s.median),
                    ("mad", s.mad),
                    ("q1", s.q1),
                    ("q3", s.q3),
                    ("samples", s.samples as f64),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::Float(v)))
                .collect();
                baseline.insert(name, b.into());
            }
        }
        let window: HashMap<String, Value> = [
            ("start".to_string(), Value::Int(w.start)),
            ("end".to_string(), Value::Int(w.end)),
        ]
        .into_iter()
        .collect();
        ctx.add_variable_from_value("key", Value::String(Arc::new(w.key.to_string())));
        ctx.add_variable_from_value("features", features);
        ctx.add_variable_from_value("event", event);
        ctx.add_variable_from_value("baseline", baseline);
        ctx.add_variable_from_value("window", window);
        ctx
    }

    /// Evaluates the condition; a runtime error (missing field, wrong type) counts as no match.
    pub fn evaluate(&self, w: &WindowView<'_>, history: &mut [History]) -> Evaluation {
        let ctx = self.context(w, history);
        let matched = matches!(self.program.execute(&ctx), Ok(Value::Bool(true)));
        let score = match &self.score {
            Some(p) => match p.execute(&ctx) {
                Ok(Value::Float(f)) => f,
                Ok(Value::Int(i)) => i as f64,
                Ok(Value::UInt(u)) => u as f64,
                _ => 0.0,
            }
            .clamp(0.0, 1.0),
            None => f64::from(u8::from(matched)),
        };
        Evaluation {
            matched,
            score: if score.is_nan() { 0.0 } else { score },
            value: f64::NAN,
        }
    }

    /// Records each field's window mean in its history, when `baseline` is used.
    pub fn observe(&self, w: &WindowView<'_>, history: &mut Vec<History>) {
        if !self.uses_baseline {
            return;
        }
        for (id, fv) in w.fields {
            let i = *id as usize;
            if history.len() <= i {
                history.resize_with(i + 1, History::default);
            }
            history[i].push(w.end, fv.get(Feature::Mean), self.history_ms);
        }
    }
}
