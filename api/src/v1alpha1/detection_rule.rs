//! `DetectionRule`: when a key of a pipeline is anomalous, and what alert says so.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Feature;

/// A detection rule evaluated per key over one window tier of every pipeline it selects.
/// Exactly one of `threshold`, `baseline`, `expression`, `model`, `detector` or `ensemble` is
/// set.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "DetectionRule",
    namespaced,
    status = "DetectionRuleStatus",
    shortname = "dr",
    category = "vigil",
    derive = "PartialEq",
    doc = "A detection rule: threshold, dynamic baseline, CEL expression or model, with severity, labels and annotations.",
    printcolumn(name = "Severity", type_ = "string", json_path = ".spec.severity"),
    printcolumn(name = "Window", type_ = "string", json_path = ".spec.window"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("[has(self.threshold), has(self.baseline), has(self.expression), has(self.model), has(self.detector), has(self.ensemble)].filter(x, x).size() == 1").message("exactly one of threshold, baseline, expression, model, detector or ensemble must be set"))]
pub struct DetectionRuleSpec {
    /// Pipelines (by label) this rule applies to. Empty: every pipeline in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_selector: Option<LabelSelector>,
    /// Window tier of the pipeline the rule reads, e.g. `fast`.
    pub window: String,
    /// A grouping of the pipeline (`spec.groups.by[].name`): the rule reads the grouping's
    /// group windows (key `<grouping>/<group>`, features merged over the member keys, plus
    /// `keys.count` and composite KPIs) instead of each key's. Default: per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Severity of the alerts. Default `warning`.
    #[serde(default)]
    pub severity: super::Severity,
    /// The condition must hold continuously for this long in event time before the alert
    /// fires (like Prometheus `for`). Default `0s`: fire on the first match.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_duration: Option<Duration>,
    /// Labels added to every alert. Values may use `{{ key }}`, `{{ rule }}`, `{{ window }}`,
    /// `{{ <field>.<feature> }}` (e.g. `{{ value.mean }}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations (e.g. `summary`, `runbook_url`) with the same templates as labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Static threshold on one feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdRule>,
    /// Dynamic per-key baseline: z-score, median/MAD or IQR fences over trailing windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineRule>,
    /// A CEL expression over features, baselines and the last event's fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<ExpressionRule>,
    /// An AnomalyModel scoring the window's feature vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRule>,
    /// A streaming detector scoring every event of one field (seasonal baseline, random cut
    /// forest, change point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<super::DetectorRule>,
    /// Combines the scores of other rules (weighted mean, max or k-of-n vote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<super::EnsembleRule>,
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Operator {
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
}

impl Operator {
    /// Applies the comparison `lhs <op> rhs`.
    pub fn holds(self, lhs: f64, rhs: f64) -> bool {
        match self {
            Operator::Gt => lhs > rhs,
            Operator::Ge => lhs >= rhs,
            Operator::Lt => lhs < rhs,
            Operator::Le => lhs <= rhs,
        }
    }
}

/// `<field>.<feature> <operator> <value>`, e.g. `cpu.mean > 85`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThresholdRule {
    /// Numeric field of the pipeline, e.g. `value`.
    pub field: String,
    /// Feature of that field in the window.
    pub feature: Feature,
    /// Comparison.
    pub operator: Operator,
    /// Threshold, in the field's unit.
    pub value: f64,
}

/// Baseline methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BaselineMethod {
    /// `|x - mean| / stddev` over the trailing baseline.
    ZScore,
    /// `|x - median| / (1.4826 * MAD)` (robust z-score; Iglewicz & Hoaglin 1993).
    Mad,
    /// Tukey's fences: below `Q1 - k*IQR` or above `Q3 + k*IQR`; the score is the distance
    /// past the fence in IQRs.
    Iqr,
}

/// Which side of the baseline is anomalous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Direction {
    /// Only values above the baseline.
    Above,
    /// Only values below the baseline.
    Below,
    /// Both sides.
    #[default]
    Both,
}

/// A feature compared with its own trailing history per key (e.g. "3 sigma above the 24 h
/// mean"). The baseline holds the feature's values of the closed windows within `history`
/// before the current window (not the current one).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.threshold > 0.0").message("threshold must be positive"))]
pub struct BaselineRule {
    /// Numeric field, e.g. `value`.
    pub field: String,
    /// Feature compared with its own history. Default `mean`.
    #[serde(default = "default_baseline_feature")]
    pub feature: Feature,
    /// Statistic of the baseline.
    pub method: BaselineMethod,
    /// Span of trailing history, e.g. `24h`.
    pub history: Duration,
    /// Score that fires: sigmas (ZScore), robust sigmas (Mad) or the fence multiplier k (Iqr,
    /// usually 1.5 or 3).
    pub threshold: f64,
    /// Anomalous side. Default `Both`.
    #[serde(default)]
    pub direction: Direction,
    /// Windows of history needed before the rule can fire. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub min_samples: Option<u32>,
}

fn default_baseline_feature() -> Feature {
    Feature::Mean
}

/// A CEL expression returning a bool. Variables: `key` (string), `features` (map: field ->
/// feature -> number, e.g. `features.cpu.mean`), `baseline` (field -> {mean, stddev, median,
/// mad, q1, q3, samples} over the rule's `history`), `event` (the last event's numeric fields),
/// `window` ({start, end} in epoch ms).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpressionRule {
    /// The condition, e.g. `features.cpu.mean > 85.0 && features.cpu.p99 > 95.0`.
    pub expr: String,
    /// Span of trailing history kept for `baseline`. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Duration>,
    /// An optional CEL expression returning a number in [0, 1] used as the anomaly score;
    /// default: 1 when `expr` holds, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
}

/// Scores the window's feature vector with an AnomalyModel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRule {
    /// Name of an AnomalyModel in the same namespace.
    pub model_ref: String,
    /// Overrides the model's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// Observed state of a DetectionRule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DetectionRuleStatus {
    /// `Accepted` (True, or False with reason `Invalid` and a message naming the field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pipelines whose detectors run this rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<String>,
    /// The last accepted spec change: generation, who applied it, what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<crate::v1alpha1::SpecChange>,
}

/// The kinds of DetectionRule: one per member of the spec's one-of. Everything that walks
/// every kind (the CRD's CEL rule, the core's compile, the agreement tests) is generated from
/// [`RuleKindName::ALL`], so a new kind cannot be forgotten in one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKindName {
    /// `spec.threshold`.
    Threshold,
    /// `spec.baseline`.
    Baseline,
    /// `spec.expression`.
    Expression,
    /// `spec.model`.
    Model,
    /// `spec.detector`.
    Detector,
    /// `spec.ensemble`.
    Ensemble,
}

impl RuleKindName {
    /// Every kind, in the order of the spec's fields.
    pub const ALL: [RuleKindName; 6] = [
        RuleKindName::Threshold,
        RuleKindName::Baseline,
        RuleKindName::Expression,
        RuleKindName::Model,
        RuleKindName::Detector,
        RuleKindName::Ensemble,
    ];

    /// The spec field that declares this kind, e.g. `threshold`.
    pub fn field(self) -> &'static str {
        match self {
            RuleKindName::Threshold => "threshold",
            RuleKindName::Baseline => "baseline",
            RuleKindName::Expression => "expression",
            RuleKindName::Model => "model",
            RuleKindName::Detector => "detector",
            RuleKindName::Ensemble => "ensemble",
        }
    }

    /// `threshold, baseline, expression, model, detector or ensemble`.
    pub fn one_of_message() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|k| k.field()).collect();
        let (last, rest) = names.split_last().expect("kinds");
        format!("exactly one of {} or {last} must be set", rest.join(", "))
    }
}

impl std::fmt::Display for RuleKindName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.field())
    }
}

/// A rule's one kind with its settings ([`DetectionRuleSpec::kind`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RuleKindSpec<'a> {
    /// `spec.threshold`.
    Threshold(&'a ThresholdRule),
    /// `spec.baseline`.
    Baseline(&'a BaselineRule),
    /// `spec.expression`.
    Expression(&'a ExpressionRule),
    /// `spec.model`.
    Model(&'a ModelRule),
    /// `spec.detector`.
    Detector(&'a super::DetectorRule),
    /// `spec.ensemble`.
    Ensemble(&'a super::EnsembleRule),
}

impl RuleKindSpec<'_> {
    /// Which kind this is.
    pub fn name(&self) -> RuleKindName {
        match self {
            RuleKindSpec::Threshold(_) => RuleKindName::Threshold,
            RuleKindSpec::Baseline(_) => RuleKindName::Baseline,
            RuleKindSpec::Expression(_) => RuleKindName::Expression,
            RuleKindSpec::Model(_) => RuleKindName::Model,
            RuleKindSpec::Detector(_) => RuleKindName::Detector,
            RuleKindSpec::Ensemble(_) => RuleKindName::Ensemble,
        }
    }
}

/// A spec with none or several kinds set (the API server's CEL rule rejects it too; files
/// read by `vigil` are checked here).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}; set: [{}]", RuleKindName::one_of_message(), .set.iter().map(|k| k.field()).collect::<Vec<_>>().join(", "))]
pub struct KindError {
    /// The kinds that are set.
    pub set: Vec<RuleKindName>,
}

impl DetectionRuleSpec {
    /// The rule's one kind: the only place that decides the spec's one-of.
    ///
    /// # Errors
    /// [`KindError`] when no kind or more than one is set.
    pub fn kind(&self) -> Result<RuleKindSpec<'_>, KindError> {
        let all = [
            self.threshold.as_ref().map(RuleKindSpec::Threshold),
            self.baseline.as_ref().map(RuleKindSpec::Baseline),
            self.expression.as_ref().map(RuleKindSpec::Expression),
            self.model.as_ref().map(RuleKindSpec::Model),
            self.detector.as_ref().map(RuleKindSpec::Detector),
            self.ensemble.as_ref().map(RuleKindSpec::Ensemble),
        ];
        let set: Vec<RuleKindSpec<'_>> = all.into_iter().flatten().collect();
        match set.as_slice() {
            [one] => Ok(*one),
            _ => Err(KindError {
                set: set.iter().map(RuleKindSpec::name).collect(),
            }),
        }
    }

    /// `pipelineSelector` as kube's [`kube::core::Selector`]; `None` selects every pipeline.
    ///
    /// # Errors
    /// An expression with an unknown operator, or `In`/`NotIn` without values.
    pub fn selector(
        &self,
    ) -> Result<Option<kube::core::Selector>, kube::core::ParseExpressionError> {
        self.pipeline_selector
            .clone()
            .map(kube::core::Selector::try_from)
            .transpose()
    }

    /// The `for` duration in milliseconds (0 when absent).
    pub fn for_ms(&self) -> i64 {
        self.for_duration.as_ref().map_or(0, super::duration_ms)
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    /// The API server's one-of rule names every kind, and says so in the same words as
    /// [`DetectionRuleSpec::kind`].
    #[test]
    fn crd_one_of_rule_covers_every_kind() {
        let crd = serde_json::to_value(DetectionRule::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules = spec["x-kubernetes-validations"].as_array().unwrap();
        let one_of = rules
            .iter()
            .find(|r| r["rule"].as_str().unwrap().contains("has(self.threshold)"))
            .expect("one-of rule");
        for kind in RuleKindName::ALL {
            let has = format!("has(self.{})", kind.field());
            assert!(one_of["rule"].as_str().unwrap().contains(&has), "{has}");
            assert!(spec["properties"].get(kind.field()).is_some(), "{kind}");
        }
        assert_eq!(one_of["message"], RuleKindName::one_of_message());
    }

    #[test]
    fn kind_is_the_one_set_member() {
        let spec: DetectionRuleSpec = serde_norway::from_str(
            "{window: w, threshold: {field: v, feature: mean, operator: '>', value: 1}}",
        )
        .unwrap();
        assert_eq!(spec.kind().unwrap().name(), RuleKindName::Threshold);
        let mut two = spec.clone();
        two.expression = Some(ExpressionRule {
            expr: "true".into(),
            history: None,
            score: None,
        });
        let e = two.kind().unwrap_err();
        assert_eq!(e.set, [RuleKindName::Threshold, RuleKindName::Expression]);
        assert!(
            e.to_string().contains("set: [threshold, expression]"),
            "{e}"
        );
        let mut none = spec;
        none.threshold = None;
        assert!(none.kind().unwrap_err().set.is_empty());
    }
}
