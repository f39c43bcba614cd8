//! Validation of a `StreamPipeline` spec into the runtime form the engine uses: parsed paths,
//! window tiers in milliseconds, the feature set. Pure; errors name the offending field.

use std::collections::HashMap;

use vigil_api::v1alpha1::{
    CheckpointSpec, Feature, StreamPipeline, TimeFormat, UpgradeMode, duration_ms,
};

/// A spec that cannot run, with the field path (`spec.windows[1].slide`) and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    /// Dotted path of the offending field, e.g. `spec.windows[0].slide`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl InvalidSpec {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A dotted path into a JSON event, split into segments (`value.eventTimeMillis`).
pub type FieldPath = Vec<String>;

/// Splits a dotted path; empty segments are an error.
pub fn parse_path(field: &str, path: &str) -> Result<FieldPath, InvalidSpec> {
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    if segments.iter().any(String::is_empty) {
        return Err(InvalidSpec::new(
            field,
            format!("`{path}` is not a dotted path (empty segment)"),
        ));
    }
    Ok(segments)
}

/// How numeric fields are laid out in an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Several named numeric fields per event.
    Wide {
        /// (field name, path) pairs.
        fields: Vec<(String, FieldPath)>,
    },
    /// One parameter name and its value per event.
    Narrow {
        /// Path of the parameter name.
        parameter: FieldPath,
        /// Path of the value.
        value: FieldPath,
        /// Parameters kept; empty keeps every one.
        allowed: Vec<String>,
    },
}

/// One window tier, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TierConfig {
    /// Tier name, e.g. `fast`.
    pub name: String,
    /// Window size.
    pub size_ms: i64,
    /// Distance between window starts.
    pub slide_ms: i64,
    /// Pane length: `gcd(size, slide)`. Each event updates one pane; a window is the merge of
    /// `size / pane` consecutive panes (Li et al., "No pane, no gain", SIGMOD Record 2005).
    pub pane_ms: i64,
    /// Watermark delay (bounded out-of-orderness).
    pub max_out_of_orderness_ms: i64,
    /// Allowed lateness after a window fired.
    pub allowed_lateness_ms: i64,
    /// Processing-time idleness after which a partition stops holding the watermark back.
    pub idle_timeout_ms: i64,
}

/// The validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// `metadata.name` of the StreamPipeline.
    pub name: String,
    /// Path of the entity key; `None` uses the Kafka message key.
    pub key: Option<FieldPath>,
    /// Path of the event time.
    pub event_time: FieldPath,
    /// Encoding of the event time.
    pub time_format: TimeFormat,
    /// Largest lead of an event time over processing time, ms
    /// (`spec.format.eventTime.maxFutureSkew`).
    pub max_future_skew_ms: i64,
    /// Field layout.
    pub layout: Layout,
    /// Window tiers, in spec order.
    pub tiers: Vec<TierConfig>,
    /// Features computed per field and window.
    pub features: Vec<Feature>,
    /// Checkpoint settings; `None` without `spec.checkpointing`.
    pub checkpointing: Option<CheckpointConfig>,
    /// What a detector restores when the spec changed.
    pub upgrade_mode: UpgradeMode,
    /// `spec.keyState.idleTimeout` (ms of event time).
    pub key_idle_timeout_ms: i64,
    /// `spec.keyState.maxKeys`.
    pub max_keys: usize,
    /// `spec.groups`; `None` without.
    pub groups: Option<crate::groups::GroupsConfig>,
    /// The stage this engine runs: keys (the source) or groups (the group topic).
    pub stage: crate::groups::Stage,
}

/// Default `spec.keyState.idleTimeout`: 7 days.
pub const DEFAULT_KEY_IDLE_TIMEOUT_MS: i64 = 7 * 24 * 3_600_000;
/// Default `spec.keyState.maxKeys`.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Validated `spec.checkpointing`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// Time between checkpoints (ms).
    pub interval_ms: i64,
    /// Object-store URL (`file://` or `s3://`).
    pub location: String,
    /// Completed checkpoints kept per detector.
    pub retained: usize,
    /// Savepoint to start from.
    pub restore_from: Option<String>,
}

/// Whether `name` can name a savepoint: 1-63 of `[a-z0-9._-]`, starting alphanumeric (it
/// becomes a folder of the object store and a URL path segment).
pub fn valid_savepoint_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

impl CheckpointConfig {
    /// Default `spec.checkpointing.interval`.
    pub const DEFAULT_INTERVAL_MS: i64 = 60_000;
    /// Default `spec.checkpointing.retained`.
    pub const DEFAULT_RETAINED: usize = 3;

    fn from_spec(c: &CheckpointSpec) -> Result<Self, InvalidSpec> {
        let interval_ms = c
            .interval
            .map_or(Self::DEFAULT_INTERVAL_MS, |d| duration_ms(&d));
        if interval_ms < 1_000 {
            return Err(InvalidSpec::new(
                "spec.checkpointing.interval",
                "must be at least 1s",
            ));
        }
        let scheme = c.location.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("file" | "s3")) {
            return Err(InvalidSpec::new(
                "spec.checkpointing.location",
                format!(
                    "`{}` is not a file:///path or s3://bucket/prefix URL",
                    c.location
                ),
            ));
        }
        let retained = c.retained.map_or(Self::DEFAULT_RETAINED, |r| r as usize);
        if retained == 0 {
            return Err(InvalidSpec::new(
                "spec.checkpointing.retained",
                "must be at least 1",
            ));
        }
        if let Some(name) = &c.restore_from
            && !valid_savepoint_name(name)
        {
            return Err(InvalidSpec::new(
                "spec.checkpointing.restoreFrom",
                format!(
                    "`{name}` is not a savepoint name (1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)"
                ),
            ));
        }
        Ok(Self {
            interval_ms,
            location: c.location.clone(),
            retained,
            restore_from: c.restore_from.clone(),
        })
    }
}

/// Largest number of panes per window; more would make every fired window expensive.
pub const MAX_PANES_PER_WINDOW: i64 = 1024;

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl PipelineConfig {
    /// Validates a StreamPipeline.
    ///
    /// # Errors
    /// [`InvalidSpec`] naming the first offending field.
    pub fn from_resource(p: &StreamPipeline) -> Result<Self, InvalidSpec> {
        let spec = &p.spec;
        let name = p.metadata.name.clone().unwrap_or_else(|| "pipeline".into());
        let f = &spec.format;
        let key = f
            .key_field
            .as_deref()
            .map(|k| parse_path("spec.format.keyField", k))
            .transpose()?;
        let checkpointing = spec
            .checkpointing
            .as_ref()
            .map(CheckpointConfig::from_spec)
            .transpose()?;
        let http_url = |field: &str, u: &str| -> Result<(), InvalidSpec> {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(InvalidSpec::new(
                    field,
                    format!("`{u}` is not an http:// or https:// URL with a host"),
                ));
            }
            Ok(())
        };
        if let Some(am) = &spec.sinks.alertmanager {
            for (i, u) in am.urls.iter().enumerate() {
                http_url(&format!("spec.sinks.alertmanager.urls[{i}]"), u)?;
            }
            if let Some(t) = &am.generator_url {
                crate::rules::alert::check_template(t)
                    .map_err(|r| InvalidSpec::new("spec.sinks.alertmanager.generatorURL", r))?;
            }
        }
        if let Some(k) = &spec.sinks.kpi_store {
            let scheme = k.location.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("file" | "s3")) {
                return Err(InvalidSpec::new(
                    "spec.sinks.kpiStore.location",
                    format!(
                        "`{}` is not a file:///path or s3://bucket/prefix URL",
                        k.location
                    ),
                ));
            }
            if k.flush_interval
                .as_ref()
                .is_some_and(|d| duration_ms(d) < 1_000)
            {
                return Err(InvalidSpec::new(
                    "spec.sinks.kpiStore.flushInterval",
                    "must be at least 1s",
                ));
            }
        }
        if let Some(u) = spec.sinks.pagerduty.as_ref().and_then(|p| p.url.as_deref()) {
            http_url("spec.sinks.pagerduty.url", u)?;
        }
        if let Some(w) = &spec.sinks.webhook {
            http_url("spec.sinks.webhook.url", &w.url)?;
        }
        if spec.source.kafka.partitioner.is_some() && checkpointing.is_none() {
            return Err(InvalidSpec::new(
                "spec.source.kafka.partitioner",
                "keys follow a partition count change through the checkpoint store: needs spec.checkpointing",
            ));
        }
        match spec.upgrade_mode {
            UpgradeMode::Stateless => {}
            UpgradeMode::LastState | UpgradeMode::Savepoint if checkpointing.is_some() => {}
            mode @ (UpgradeMode::LastState | UpgradeMode::Savepoint) => {
                return Err(InvalidSpec::new(
                    "spec.upgradeMode",
                    format!("{mode:?} restores checkpointed state and needs spec.checkpointing"),
                ));
            }
        }
        let ks = spec.key_state.clone().unwrap_or_default();
        let key_idle_timeout_ms = ks
            .idle_timeout
            .map_or(DEFAULT_KEY_IDLE_TIMEOUT_MS, |d| duration_ms(&d));
        if key_idle_timeout_ms <= 0 {
            return Err(InvalidSpec::new(
                "spec.keyState.idleTimeout",
                "must be positive",
            ));
        }
        let (lag_warn_ms, lag_critical_ms) =
            vigil_api::v1alpha1::LagThresholds::millis(spec.lag.as_ref());
        if lag_warn_ms <= 0 {
            return Err(InvalidSpec::new("spec.lag.warn", "must be positive"));
        }
        if lag_critical_ms <= lag_warn_ms {
            return Err(InvalidSpec::new(
                "spec.lag.critical",
                format!("must be longer than spec.lag.warn ({lag_warn_ms} ms)"),
            ));
        }
        let max_keys = ks.max_keys.map_or(DEFAULT_MAX_KEYS, |m| m as usize);
        if max_keys == 0 {
            return Err(InvalidSpec::new(
                "spec.keyState.maxKeys",
                "must be at least 1",
            ));
        }
        let event_time = parse_path("spec.format.eventTime.field", &f.event_time.field)?;
        let max_future_skew_ms = f.event_time.max_future_skew_ms();
        if max_future_skew_ms <= 0 {
            return Err(InvalidSpec::new(
                "spec.format.eventTime.maxFutureSkew",
                "must be positive",
            ));
        }
        let layout = match (&f.wide, &f.narrow) {
            (Some(w), None) => {
                if w.fields.is_empty() {
                    return Err(InvalidSpec::new(
                        "spec.format.wide.fields",
                        "at least one field is required",
                    ));
                }
                let mut fields = Vec::new();
                for (i, m) in w.fields.iter().enumerate() {
                    let at = format!("spec.format.wide.fields[{i}]");
                    if fields.iter().any(|(n, _)| n == &m.name) {
                        return Err(InvalidSpec::new(
                            format!("{at}.name"),
                            format!("duplicate field `{}`", m.name),
                        ));
                    }
                    let path =
                        parse_path(&format!("{at}.path"), m.path.as_deref().unwrap_or(&m.name))?;
                    fields.push((m.name.clone(), path));
                }
                Layout::Wide { fields }
            }
            (None, Some(n)) => Layout::Narrow {
                parameter: parse_path("spec.format.narrow.parameterField", &n.parameter_field)?,
                value: parse_path("spec.format.narrow.valueField", &n.value_field)?,
                allowed: n.parameters.clone(),
            },
            _ => {
                return Err(InvalidSpec::new(
                    "spec.format",
                    "exactly one of wide or narrow must be set",
                ));
            }
        };
        if spec.windows.is_empty() {
            return Err(InvalidSpec::new(
                "spec.windows",
                "at least one window is required",
            ));
        }
        let mut tiers: Vec<TierConfig> = Vec::new();
        for (i, w) in spec.windows.iter().enumerate() {
            let at = format!("spec.windows[{i}]");
            let (size, slide) = (w.size_ms(), w.slide_ms());
            if tiers.iter().any(|t| t.name == w.name) {
                return Err(InvalidSpec::new(
                    format!("{at}.name"),
                    format!("duplicate window `{}`", w.name),
                ));
            }
            if size <= 0 {
                return Err(InvalidSpec::new(format!("{at}.size"), "must be positive"));
            }
            if slide <= 0 || slide > size {
                return Err(InvalidSpec::new(
                    format!("{at}.slide"),
                    format!("must be in (0, size]; got {slide} ms for size {size} ms"),
                ));
            }
            let pane = gcd(size, slide);
            if size / pane > MAX_PANES_PER_WINDOW {
                return Err(InvalidSpec::new(
                    format!("{at}.slide"),
                    format!(
                        "gcd(size, slide) = {pane} ms gives {} panes per window, more than {MAX_PANES_PER_WINDOW}",
                        size / pane
                    ),
                ));
            }
            for (field, v) in [
                ("maxOutOfOrderness", w.max_out_of_orderness_ms()),
                ("allowedLateness", w.allowed_lateness_ms()),
                ("idleTimeout", w.idle_timeout_ms()),
            ] {
                if v < 0 {
                    return Err(InvalidSpec::new(
                        format!("{at}.{field}"),
                        "must not be negative",
                    ));
                }
            }
            tiers.push(TierConfig {
                name: w.name.clone(),
                size_ms: size,
                slide_ms: slide,
                pane_ms: pane,
                max_out_of_orderness_ms: w.max_out_of_orderness_ms(),
                allowed_lateness_ms: w.allowed_lateness_ms(),
                idle_timeout_ms: w.idle_timeout_ms(),
            });
        }
        if let Some(e) = &spec.enrichment {
            let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
            if set(&e.config_map) == set(&e.topic) {
                return Err(InvalidSpec::new(
                    "spec.enrichment",
                    "exactly one of configMap or topic must be set (and not empty)",
                ));
            }
        }
        let groups = spec
            .groups
            .as_ref()
            .map(|g| groups_config(&name, g, spec.enrichment.is_some()))
            .transpose()?;
        let mut features = spec
            .features
            .clone()
            .unwrap_or_else(|| Feature::ALL.to_vec());
        features.sort();
        features.dedup();
        Ok(Self {
            name,
            key,
            event_time,
            time_format: f.event_time.format,
            max_future_skew_ms,
            layout,
            tiers,
            features,
            checkpointing,
            upgrade_mode: spec.upgrade_mode,
            key_idle_timeout_ms,
            max_keys,
            groups,
            stage: crate::groups::Stage::Keys,
        })
    }

    /// The configuration of this pipeline's group stage (`spec.groups`), or `None` without
    /// groups.
    pub fn group_stage(&self) -> Option<Self> {
        self.groups.as_ref()?;
        Some(Self {
            stage: crate::groups::Stage::Groups,
            checkpointing: None,
            ..self.clone()
        })
    }

    /// Index of a tier by name.
    pub fn tier(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    /// Whether any configured feature needs a quantile sketch.
    pub fn needs_sketch(&self) -> bool {
        self.features.iter().any(|f| f.needs_sketch())
    }
}

/// Validates `spec.groups`.
fn groups_config(
    pipeline: &str,
    g: &vigil_api::v1alpha1::GroupsSpec,
    has_enrichment: bool,
) -> Result<crate::groups::GroupsConfig, InvalidSpec> {
    use crate::groups::{DEFAULT_GROUP, Grouping, GroupsConfig};
    if g.by.is_empty() {
        return Err(InvalidSpec::new(
            "spec.groups.by",
            "needs at least one grouping",
        ));
    }
    let mut by: Vec<Grouping> = Vec::new();
    for (i, b) in g.by.iter().enumerate() {
        if !has_enrichment {
            return Err(InvalidSpec::new(
                format!("spec.groups.by[{i}].attribute"),
                "groups come from the keys' reference data: needs spec.enrichment",
            ));
        }
        if b.name.is_empty() || b.name.contains('/') {
            return Err(InvalidSpec::new(
                format!("spec.groups.by[{i}].name"),
                "must be a non-empty name without `/`",
            ));
        }
        if by.iter().any(|o| o.name == b.name) {
            return Err(InvalidSpec::new(
                format!("spec.groups.by[{i}].name"),
                format!("grouping `{}` is declared twice", b.name),
            ));
        }
        by.push(Grouping {
            name: b.name.clone(),
            attribute: b.attribute.clone(),
            default: b
                .default
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| DEFAULT_GROUP.into()),
        });
    }
    let mut kpis: Vec<(String, String)> = Vec::new();
    for (i, k) in g.kpis.iter().enumerate() {
        let at = format!("spec.groups.kpis[{i}]");
        if kpis.iter().any(|(n, _)| *n == k.name) {
            return Err(InvalidSpec::new(
                format!("{at}.name"),
                format!("KPI `{}` is declared twice", k.name),
            ));
        }
        crate::rules::expression::check_kpi(&format!("{at}.expression"), &k.expression)?;
        kpis.push((k.name.clone(), k.expression.clone()));
    }
    let topic = g
        .topic
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("{pipeline}.groups"));
    Ok(GroupsConfig { topic, by, kpis })
}

/// Numeric field names interned to small ids. Wide layouts fix the set up front; narrow
/// layouts add parameters as they are first seen (unless the spec lists them).
#[derive(Debug, Clone, Default)]
pub struct FieldTable {
    names: Vec<String>,
    ids: HashMap<String, u16>,
    fixed: bool,
}

/// Most distinct fields per pipeline; more parameters than this are dead-lettered.
pub const MAX_FIELDS: usize = 4096;

impl FieldTable {
    /// The table for a layout.
    pub fn for_layout(layout: &Layout) -> Self {
        let mut t = Self::default();
        match layout {
            Layout::Wide { fields } => {
                for (n, _) in fields {
                    t.intern(n);
                }
                t.fixed = true;
            }
            Layout::Narrow { allowed, .. } => {
                for n in allowed {
                    t.intern(n);
                }
                t.fixed = !allowed.is_empty();
            }
        }
        t
    }

    /// The id of `name`, adding it when the table is open. `None` when the table is fixed and
    /// does not know the name, or is full.
    pub fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(&id) = self.ids.get(name) {
            return Some(id);
        }
        if self.fixed || self.names.len() >= MAX_FIELDS {
            return None;
        }
        let id = self.names.len() as u16;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        Some(id)
    }

    /// The id of `name`, adding it even to a fixed table (the group stage's `keys`).
    pub fn intern_always(&mut self, name: &str) -> u16 {
        let fixed = std::mem::replace(&mut self.fixed, false);
        let id = self.intern(name).unwrap_or(0);
        self.fixed = fixed;
        id
    }

    /// The id of a known field.
    pub fn get(&self, name: &str) -> Option<u16> {
        self.ids.get(name).copied()
    }

    /// Whether new names can still be added.
    pub fn is_open(&self) -> bool {
        !self.fixed
    }

    /// The name of a field id.
    pub fn name(&self, id: u16) -> &str {
        &self.names[id as usize]
    }

    /// Number of fields known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no field is known.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::manifest::Manifests;

    fn pipeline(extra: &str) -> Result<PipelineConfig, InvalidSpec> {
        let yaml = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {{name: p}}\nspec:\n  source: {{kafka: {{topics: [t], consumerGroup: g}}}}\n  format: {{eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}\n  windows: [{{name: w, size: 30s}}]\n  sinks: {{alerts: {{topic: a}}}}\n{extra}"
        );
        let mut m = Manifests::default();
        m.add_str("t", &yaml).unwrap();
        PipelineConfig::from_resource(&m.pipelines[0])
    }

    #[test]
    fn alertmanager_urls_and_generator_url_are_checked() {
        let sinks = |am: &str| {
            let yaml = format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {{name: p}}\nspec:\n  source: {{kafka: {{topics: [t], consumerGroup: g}}}}\n  format: {{eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}\n  windows: [{{name: w, size: 30s}}]\n  sinks: {{alerts: {{topic: a}}, alertmanager: {am}}}\n"
            );
            let mut m = Manifests::default();
            m.add_str("t", &yaml).unwrap();
            PipelineConfig::from_resource(&m.pipelines[0])
        };
        assert!(sinks("{urls: ['http://am:9093']}").is_ok());
        let e = sinks("{urls: ['http://am:9093', 'am:9093']}").unwrap_err();
        assert_eq!(e.field, "spec.sinks.alertmanager.urls[1]");
        let e = sinks("{urls: ['https://am'], generatorURL: 'http://g/{{ key'}").unwrap_err();
        assert_eq!(e.field, "spec.sinks.alertmanager.generatorURL");
        let e = sinks("{urls: ['https://am']}, kpiStore: {location: '/tmp/k'}").unwrap_err();
        assert_eq!(e.field, "spec.sinks.kpiStore.location");
        assert!(
            sinks("{urls: ['https://am']}, kpiStore: {location: 's3://b/k', flushInterval: 10s}")
                .is_ok()
        );
        let e = sinks("{urls: ['https://am']}, webhook: {url: 'hooks.example'}").unwrap_err();
        assert_eq!(e.field, "spec.sinks.webhook.url");
        let e = sinks("{urls: ['https://am']}, pagerduty: {routingKeySecret: pd, url: 'ftp://x'}")
            .unwrap_err();
        assert_eq!(e.field, "spec.sinks.pagerduty.url");
    }

    #[test]
    fn a_partitioner_needs_checkpointing() {
        let with = |extra: &str| {
            let yaml = format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {{name: p}}\nspec:\n  source: {{kafka: {{topics: [t], consumerGroup: g, partitioner: Crc32}}}}\n  format: {{eventTime: {{field: t}}, wide: {{fields: [{{name: v}}]}}}}\n  windows: [{{name: w, size: 30s}}]\n  sinks: {{alerts: {{topic: a}}}}\n{extra}"
            );
            let mut m = Manifests::default();
            m.add_str("t", &yaml).unwrap();
            PipelineConfig::from_resource(&m.pipelines[0])
        };
        let e = with("").unwrap_err();
        assert_eq!(e.field, "spec.source.kafka.partitioner");
        assert!(e.reason.contains("needs spec.checkpointing"), "{e}");
        assert!(with("  checkpointing: {location: 'file:///c'}\n").is_ok());
    }

    /// Declared, not implemented: refused with the field named, never silently ignored.
    #[test]
    fn checkpointing_and_upgrade_mode_are_validated() {
        assert!(pipeline("  lag: {warn: 1s, critical: 30s}\n").is_ok());
        let p = pipeline("").unwrap();
        assert!(p.checkpointing.is_none());
        assert_eq!(p.upgrade_mode, UpgradeMode::Stateless);
        let p =
            pipeline("  checkpointing: {location: 'file:///tmp/c'}\n  upgradeMode: LastState\n")
                .unwrap();
        let c = p.checkpointing.unwrap();
        assert_eq!(c.interval_ms, 60_000);
        assert_eq!(c.retained, 3);
        let c = pipeline("  checkpointing: {interval: 10s, location: 's3://b/p', retained: 5}\n")
            .unwrap()
            .checkpointing
            .unwrap();
        assert_eq!((c.interval_ms, c.retained), (10_000, 5));
        for (yaml, field, says) in [
            (
                "  checkpointing: {interval: 100ms, location: 'file:///c'}\n",
                "spec.checkpointing.interval",
                "at least 1s",
            ),
            (
                "  checkpointing: {location: '/tmp/c'}\n",
                "spec.checkpointing.location",
                "not a file:///path",
            ),
            (
                "  checkpointing: {location: 'gs://b'}\n",
                "spec.checkpointing.location",
                "not a file:///path",
            ),
            (
                "  checkpointing: {location: 'file:///c', retained: 0}\n",
                "spec.checkpointing.retained",
                "at least 1",
            ),
            (
                "  upgradeMode: LastState\n",
                "spec.upgradeMode",
                "needs spec.checkpointing",
            ),
            (
                "  upgradeMode: Savepoint\n",
                "spec.upgradeMode",
                "needs spec.checkpointing",
            ),
            (
                "  checkpointing: {location: 'file:///c', restoreFrom: 'Bad/Name'}\n",
                "spec.checkpointing.restoreFrom",
                "not a savepoint name",
            ),
            (
                "  lag: {warn: 20s, critical: 10s}\n",
                "spec.lag.critical",
                "longer than spec.lag.warn",
            ),
            (
                "  lag: {critical: 10s}\n",
                "spec.lag.critical",
                "(15000 ms)",
            ),
            ("  lag: {warn: 0s}\n", "spec.lag.warn", "positive"),
        ] {
            let e = pipeline(yaml).unwrap_err();
            assert_eq!(e.field, field, "{yaml}");
            assert!(e.reason.contains(says), "{e}");
        }
    }

    #[test]
    fn max_future_skew_defaults_to_five_minutes_and_is_read_from_the_spec() {
        assert_eq!(pipeline("").unwrap().max_future_skew_ms, 300_000);
        let mut m = Manifests::default();
        m.add_str(
            "t",
            "apiVersion: vigil.dev/v1alpha1\nkind: StreamPipeline\nmetadata: {name: p}\nspec:\n  source: {kafka: {topics: [t], consumerGroup: g}}\n  format: {eventTime: {field: t, maxFutureSkew: 1h}, wide: {fields: [{name: v}]}}\n  windows: [{name: w, size: 30s}]\n  sinks: {alerts: {topic: a}}\n",
        )
        .unwrap();
        let cfg = PipelineConfig::from_resource(&m.pipelines[0]).unwrap();
        assert_eq!(cfg.max_future_skew_ms, 3_600_000);
    }

    #[test]
    fn enrichment_names_exactly_one_source() {
        assert!(pipeline("  enrichment: {configMap: c}\n").is_ok());
        assert!(pipeline("  enrichment: {topic: hosts}\n").is_ok());
        for bad in ["{}", "{configMap: c, topic: t}", "{topic: ''}"] {
            let e = pipeline(&format!("  enrichment: {bad}\n")).unwrap_err();
            assert_eq!(e.field, "spec.enrichment");
            assert!(
                e.reason.contains("exactly one of configMap or topic"),
                "{e}"
            );
        }
    }
}
