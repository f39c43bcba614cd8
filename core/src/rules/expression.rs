//! `spec.expression`: CEL rules (the `cel` crate). Variables `key`, `features`, `baseline`,
//! `event` and `window` are built per evaluation from the window's features and the key's
//! history. Compile checks every `features.<field>.<feature>`, `baseline.<field>.<stat>` and
//! `event.<field>` reference against the pipeline, with comprehension variables (`x` in
//! `[1, 2].exists(x, x > 1)`) in scope.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Program, Value};
use vigil_api::v1alpha1::{ExpressionRule, Feature};

use super::baseline::History;
use super::scope::Scope;
use super::{Evaluation, WindowView};
use crate::config::InvalidSpec;

/// Variables an expression may use.
pub const VARIABLES: [&str; 7] = [
    "key",
    "features",
    "baseline",
    "event",
    "window",
    "attributes",
    "kpi",
];
/// Variables a composite KPI (`spec.groups.kpis`) may use.
pub const KPI_VARIABLES: [&str; 2] = ["features", "key"];
/// Statistics of `baseline.<field>`.
pub const BASELINE_STATS: [&str; 7] = ["mean", "stddev", "median", "mad", "q1", "q3", "samples"];
/// Trailing history kept for `baseline` when `spec.expression.history` is unset.
pub const DEFAULT_HISTORY_MS: i64 = 3_600_000;

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

/// Parses CEL, naming `at` when it does not parse.
fn parse(at: &str, src: &str) -> Result<Program, InvalidSpec> {
    Program::compile(src).map_err(|e| {
        InvalidSpec::new(
            at,
            format!("CEL does not parse: {}", e.to_string().replace('\n', " ")),
        )
    })
}

/// Parses one expression and checks its references; with a scope, also the fields, features
/// and statistics they select.
fn compile_one(at: &str, src: &str, scope: Option<&mut Scope<'_>>) -> Result<Program, InvalidSpec> {
    let program = parse(at, src)?;
    let mut bound = Vec::new();
    let mut scope = scope;
    walk(program.expression(), &mut bound, &mut |chain| {
        check_chain(at, chain, scope.as_deref_mut())
    })?;
    Ok(program)
}

/// Checks what needs no pipeline: both expressions parse and use only [`VARIABLES`]; the
/// history is positive.
///
/// # Errors
/// The first problem, with its field path.
pub fn validate(e: &ExpressionRule) -> Result<(), InvalidSpec> {
    compile_one("spec.expression.expr", &e.expr, None)?;
    if let Some(s) = &e.score {
        compile_one("spec.expression.score", s, None)?;
    }
    history_ms(e).map(drop)
}

fn history_ms(e: &ExpressionRule) -> Result<i64, InvalidSpec> {
    let ms = e
        .history
        .as_ref()
        .map_or(DEFAULT_HISTORY_MS, vigil_api::v1alpha1::duration_ms);
    if ms <= 0 {
        return Err(InvalidSpec::new(
            "spec.expression.history",
            "must be positive",
        ));
    }
    Ok(ms)
}

impl Expression {
    /// Compiles the condition and optional score expression against a pipeline.
    ///
    /// # Errors
    /// A syntax error, an unknown variable, or a reference to a field, feature or statistic
    /// the pipeline does not have, with its field path.
    pub fn compile(e: &ExpressionRule, scope: &mut Scope<'_>) -> Result<Self, InvalidSpec> {
        let program = compile_one("spec.expression.expr", &e.expr, Some(scope))?;
        let score = e
            .score
            .as_deref()
            .map(|s| compile_one("spec.expression.score", s, Some(scope)))
            .transpose()?;
        let uses_baseline = program.references().has_variable("baseline")
            || score
                .as_ref()
                .is_some_and(|s| s.references().has_variable("baseline"));
        Ok(Self {
            source: e.expr.clone(),
            program,
            score,
            history_ms: history_ms(e)?,
            uses_baseline,
            features: scope.cfg.features.clone(),
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
        // The key's reference data (`spec.enrichment`): attribute name -> text.
        let attributes: HashMap<String, Value> = w
            .attributes
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), Value::String(Arc::new(v.clone()))))
                    .collect()
            })
            .unwrap_or_default();
        ctx.add_variable_from_value("attributes", attributes);
        // Composite KPIs of group windows (`spec.groups.kpis`): name -> value.
        let kpi: HashMap<String, Value> = w
            .kpis
            .iter()
            .map(|(k, v)| (k.clone(), Value::Float(*v)))
            .collect();
        ctx.add_variable_from_value("kpi", kpi);
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

/// Visits every maximal `ident(.field)*` chain of an expression, leaving out chains rooted at
/// a bound comprehension variable.
fn walk<'e>(
    expr: &'e IdedExpr,
    bound: &mut Vec<&'e str>,
    visit: &mut dyn FnMut(&[&'e str]) -> Result<(), InvalidSpec>,
) -> Result<(), InvalidSpec> {
    if let Some(chain) = chain(expr) {
        if !bound.contains(&chain[0]) && !chain[0].starts_with('@') {
            visit(&chain)?;
        }
        return Ok(());
    }
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, bound, visit)?;
            }
            for arg in &call.args {
                walk(arg, bound, visit)?;
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, visit)?;
            walk(&c.accu_init, bound, visit)?;
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                bound.push(v);
            }
            bound.push(&c.accu_var);
            walk(&c.loop_cond, bound, visit)?;
            walk(&c.loop_step, bound, visit)?;
            walk(&c.result, bound, visit)?;
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for e in &list.elements {
                walk(e, bound, visit)?;
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => walk(&f.value, bound, visit)?,
                    EntryExpr::MapEntry(e) => {
                        walk(&e.key, bound, visit)?;
                        walk(&e.value, bound, visit)?;
                    }
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    walk(&f.value, bound, visit)?;
                }
            }
        }
        Expr::Select(select) => walk(&select.operand, bound, visit)?,
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
    Ok(())
}

/// `a.b.c` as `[a, b, c]` when the expression is only an identifier and field selections.
fn chain(expr: &IdedExpr) -> Option<Vec<&str>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(select) => {
            let mut c = chain(&select.operand)?;
            c.push(select.field.as_str());
            Some(c)
        }
        _ => None,
    }
}

/// Checks a composite KPI's CEL (`spec.groups.kpis[].expression`): it parses and uses only
/// [`KPI_VARIABLES`].
///
/// # Errors
/// A syntax error or another variable, at `at`.
pub fn check_kpi(at: &str, src: &str) -> Result<Program, InvalidSpec> {
    let program = parse(at, src)?;
    let mut bound = Vec::new();
    walk(program.expression(), &mut bound, &mut |chain| {
        if KPI_VARIABLES.contains(&chain[0]) {
            Ok(())
        } else {
            Err(InvalidSpec::new(
                at,
                format!(
                    "unknown variable `{}`; a composite KPI reads {}",
                    chain[0],
                    KPI_VARIABLES.join(", ")
                ),
            ))
        }
    })?;
    Ok(program)
}

/// Evaluates composite KPIs over a window's features: `(name, value)` of each that gives a
/// finite number (a missing feature or a division by zero leaves the KPI out).
pub fn eval_kpis(
    kpis: &[(String, Program)],
    w: &WindowView<'_>,
    features: &[Feature],
    out: &mut Vec<(String, f64)>,
) {
    out.clear();
    if kpis.is_empty() {
        return;
    }
    let mut map: HashMap<String, Value> = HashMap::new();
    for (id, fv) in w.fields {
        let per: HashMap<String, Value> = features
            .iter()
            .map(|f| (f.as_str().to_string(), Value::Float(fv.get(*f))))
            .collect();
        map.insert(w.table.name(*id).to_string(), per.into());
    }
    let mut ctx = Context::default();
    ctx.add_variable_from_value("features", map);
    ctx.add_variable_from_value("key", Value::String(Arc::new(w.key.to_string())));
    for (name, p) in kpis {
        let v = match p.execute(&ctx) {
            Ok(Value::Float(f)) => f,
            Ok(Value::Int(i)) => i as f64,
            Ok(Value::UInt(u)) => u as f64,
            _ => continue,
        };
        if v.is_finite() {
            out.push((name.clone(), v));
        }
    }
}

fn check_chain(at: &str, chain: &[&str], scope: Option<&mut Scope<'_>>) -> Result<(), InvalidSpec> {
    let root = chain[0];
    if !VARIABLES.contains(&root) {
        return Err(InvalidSpec::new(
            at,
            format!(
                "unknown variable `{root}`; available: {}",
                VARIABLES.join(", ")
            ),
        ));
    }
    let Some(scope) = scope else { return Ok(()) };
    match (root, chain.get(1), chain.get(2)) {
        ("features", Some(field), feature) => {
            scope.has_field(at, field)?;
            if let Some(feature) = feature {
                let feature: Feature = feature.parse().map_err(|e: String| {
                    InvalidSpec::new(at, format!("features.{field}.{feature}: {e}"))
                })?;
                scope.feature(at, feature)?;
            }
        }
        ("baseline", Some(field), stat) => {
            scope.has_field(at, field)?;
            if let Some(stat) = stat
                && !BASELINE_STATS.contains(stat)
            {
                return Err(InvalidSpec::new(
                    at,
                    format!(
                        "baseline.{field}.{stat}: unknown statistic `{stat}`, expected one of {}",
                        BASELINE_STATS.join(", ")
                    ),
                ));
            }
        }
        ("event", Some(field), _) => scope.has_field(at, field)?,
        _ => {}
    }
    Ok(())
}
