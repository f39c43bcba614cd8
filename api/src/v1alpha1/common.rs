//! Types shared by several kinds: window features, severities and duration helpers.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An aggregate computed per key, per numeric field, per window.
///
/// Written `<field>.<feature>` in CEL expressions and model feature contracts (`value.mean`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Feature {
    /// Number of events in the window.
    Count,
    /// Sum of the values.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Population standard deviation (Welford's online algorithm).
    Stddev,
    /// Value of the event with the greatest event time (not the last to arrive).
    Last,
    /// Events per second of window size (`count / size`).
    Rate,
    /// Median, from a DDSketch (1% relative error).
    P50,
    /// 95th percentile, from a DDSketch (1% relative error).
    P95,
    /// 99th percentile, from a DDSketch (1% relative error).
    P99,
}

impl Feature {
    /// Every feature, in declaration order.
    pub const ALL: [Feature; 11] = [
        Feature::Count,
        Feature::Sum,
        Feature::Mean,
        Feature::Min,
        Feature::Max,
        Feature::Stddev,
        Feature::Last,
        Feature::Rate,
        Feature::P50,
        Feature::P95,
        Feature::P99,
    ];

    /// The lower-case name used in YAML, CEL and feature contracts.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Count => "count",
            Feature::Sum => "sum",
            Feature::Mean => "mean",
            Feature::Min => "min",
            Feature::Max => "max",
            Feature::Stddev => "stddev",
            Feature::Last => "last",
            Feature::Rate => "rate",
            Feature::P50 => "p50",
            Feature::P95 => "p95",
            Feature::P99 => "p99",
        }
    }

    /// Whether computing this feature needs a quantile sketch.
    pub fn needs_sketch(self) -> bool {
        matches!(self, Feature::P50 | Feature::P95 | Feature::P99)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Feature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Feature::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Feature::ALL.iter().map(|f| f.as_str()).collect();
                format!(
                    "unknown feature `{s}`, expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How urgent an alert is; mapped to the `severity` label of emitted alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For dashboards; nobody is paged.
    Info,
    /// Needs attention during working hours.
    #[default]
    Warning,
    /// Pages someone now.
    Critical,
}

impl Severity {
    /// The lower-case name used in alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Milliseconds in a Kubernetes duration (`"30s"`, `"5m"`, `"1h30m"`); negative durations give
/// negative values.
pub fn duration_ms(d: &kube::core::Duration) -> i64 {
    let ms = std::time::Duration::from(*d).as_millis() as i64;
    if d.is_negative() { -ms } else { ms }
}

/// The last accepted change of an object's spec (the audit trail in status; each one is also
/// a `SpecChanged` Event): which generation, who applied it (the field manager that last
/// wrote `spec`, from `metadata.managedFields`), and which top-level spec fields changed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpecChange {
    /// `metadata.generation` of the change.
    pub generation: i64,
    /// Field manager that wrote `spec` last, e.g. `kubectl-client-side-apply`,
    /// `argocd-controller`, `kubectl-vigil`, `helm`; `unknown` without managedFields.
    pub manager: String,
    /// Its operation: `Apply` (server-side apply) or `Update`.
    pub operation: String,
    /// When the manager wrote it (managedFields time, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Top-level spec fields added, removed or changed since the previous accepted
    /// generation, e.g. `spec.threshold`; every field for the first one.
    pub changed: Vec<String>,
    /// Per top-level spec field, the first 16 hex digits of the SHA-256 of its JSON: what the
    /// next change is compared with.
    pub field_digests: std::collections::BTreeMap<String, String>,
}
