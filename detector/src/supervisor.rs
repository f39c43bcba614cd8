//! The detector's supervisor: the configuration a detector runs, read from its manifest files
//! (in Kubernetes the pipeline's ConfigMap, mounted as a directory), watched for changes and
//! applied to the running [`crate::runner`]:
//! - changed DetectionRules or AnomalyModels are swapped in place ([`Control::ReplaceRules`]):
//!   window state and the per-key state of unchanged rules are kept;
//! - a changed StreamPipeline restarts the runner in the same process (flush, commit, a new
//!   consumer);
//! - an invalid edit is logged and the running configuration kept.
//!
//! Edits are debounced ([`DEBOUNCE`]): editors and kubelet write in several steps. What is
//! loaded, compared and rejected is pure ([`load`], [`diff`]); the file watch is `notify`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vigil_api::manifest::{ManifestError, Manifests};
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline};
use vigil_core::config::{FieldTable, InvalidSpec, PipelineConfig};
use vigil_core::rules::{RuleError, RuleSet};

use crate::runner::{Control, RunError, RunnerHandle};

/// Quiet time after the last file event before a change is applied.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What a detector runs: its StreamPipeline, the DetectionRules that select it and the
/// AnomalyModels of the files.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The first StreamPipeline of the files.
    pub pipeline: StreamPipeline,
    /// Rules whose `pipelineSelector` selects it.
    pub rules: Vec<DetectionRule>,
    /// Every AnomalyModel of the files.
    pub models: Vec<AnomalyModel>,
}

/// A configuration that cannot be loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A manifest file could not be read or parsed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No StreamPipeline in the files.
    #[error("{0}: no StreamPipeline found")]
    NoPipeline(PathBuf),
    /// The StreamPipeline's spec does not validate.
    #[error("StreamPipeline {name}: {error}")]
    Pipeline {
        /// `metadata.name`.
        name: String,
        /// The field and why.
        error: InvalidSpec,
    },
    /// Rules that select the pipeline cannot run in it (unknown window, field, feature, ...).
    #[error("{files}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Rules {
        /// The manifest files, comma-separated.
        files: String,
        /// Each rule that does not compile, with its field path and what was expected.
        errors: Vec<RuleError>,
    },
    /// The files now hold another pipeline.
    #[error(
        "the StreamPipeline's name changed from {from:?} to {to:?}; restart the detector to switch pipelines"
    )]
    NameChanged {
        /// The running pipeline's name.
        from: Option<String>,
        /// The name in the files.
        to: Option<String>,
    },
}

/// Reads manifest files (the pipeline and its rules may share a file; each file is read once).
///
/// # Errors
/// A file that cannot be read or parsed.
pub fn read_manifests(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
    let mut m = Manifests::default();
    let mut seen = HashSet::new();
    for p in paths {
        if !seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())) {
            continue;
        }
        m.add_file(p)?;
    }
    Ok(m)
}

/// Loads the configuration from `files`; `pipeline_file` names the file in messages. Every
/// rule that selects the pipeline must compile in it (the same check as the operator's), so a
/// mistake stops `vigil run` at start and an edit with one is rejected by a reload.
///
/// # Errors
/// [`ConfigError`]: unreadable files, no pipeline, an invalid pipeline spec, rules that cannot
/// run.
pub fn load(files: &[PathBuf], pipeline_file: &Path) -> Result<Config, ConfigError> {
    let m = read_manifests(files)?;
    let Some(pipeline) = m.pipelines.first().cloned() else {
        return Err(ConfigError::NoPipeline(pipeline_file.to_path_buf()));
    };
    let cfg = PipelineConfig::from_resource(&pipeline).map_err(|error| ConfigError::Pipeline {
        name: pipeline.metadata.name.clone().unwrap_or_default(),
        error,
    })?;
    let selected = m.rules_for(&pipeline);
    let models: Vec<&AnomalyModel> = m.models.iter().collect();
    let mut table = FieldTable::for_layout(&cfg.layout);
    let (_, errors) = RuleSet::compile(&selected, &cfg, &mut table, &models);
    if !errors.is_empty() {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(ConfigError::Rules {
            files: files.join(", "),
            errors,
        });
    }
    let rules = selected.into_iter().cloned().collect();
    Ok(Config {
        pipeline,
        rules,
        models: m.models.clone(),
    })
}

/// How a new configuration differs from the running one.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Nothing the detector runs changed.
    Unchanged,
    /// Only rules or models changed: swap them in place.
    Rules(Config),
    /// The StreamPipeline's spec changed: restart the runner.
    Pipeline(Config),
}

/// Compares a newly loaded configuration with the running one.
///
/// # Errors
/// [`ConfigError::NameChanged`]: the files now hold another pipeline.
pub fn diff(current: &Config, new: Config) -> Result<Change, ConfigError> {
    if new.pipeline.metadata.name != current.pipeline.metadata.name {
        return Err(ConfigError::NameChanged {
            from: current.pipeline.metadata.name.clone(),
            to: new.pipeline.metadata.name,
        });
    }
    Ok(if new.pipeline.spec != current.pipeline.spec {
        Change::Pipeline(new)
    } else if new.rules != current.rules || new.models != current.models {
        Change::Rules(new)
    } else {
        Change::Unchanged
    })
}

/// Watches `files` and calls `on_change` on every relevant event. The directories are
/// watched, not the files: editors replace a file by renaming a new one over it, and kubelet
/// updates a ConfigMap volume by swapping its `..data` symlink (events on `..*` entries count;
/// a reload that finds nothing changed is a no-op).
///
/// # Errors
/// A directory that cannot be watched.
pub fn watch(
    files: &[PathBuf],
    on_change: impl Fn(Instant) + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let targets: HashSet<PathBuf> = files.iter().map(abs).collect();
    let dirs: HashSet<PathBuf> = targets
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    let wanted = targets.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = |p: &PathBuf| {
            wanted.contains(p)
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".."))
        };
        if ev.paths.iter().any(relevant) {
            on_change(Instant::now());
        }
    })?;
    for d in &dirs {
        w.watch(d, RecursiveMode::NonRecursive)?;
    }
    tracing::info!(files = ?targets, "Watching the manifests for changes.");
    Ok(w)
}

/// What [`Supervisor::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// No change pending, or nothing changed.
    Nothing,
    /// Rules or models swapped in place.
    Rules,
    /// The runner restarted with the new pipeline.
    Restarted,
    /// The change was invalid; the running configuration is kept.
    Rejected,
}

/// A restart that failed.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// The old runner failed while stopping, or the new one could not start.
    #[error(transparent)]
    Runner(#[from] RunError),
    /// The caller's preparation for the new pipeline failed (e.g. creating its topics).
    #[error("failed to prepare the restarted detector")]
    Prepare(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Owns the running runner and applies debounced configuration changes to it.
pub struct Supervisor<S> {
    files: Vec<PathBuf>,
    pipeline_file: PathBuf,
    current: Config,
    /// `None` only while a restart is under way (or after it failed).
    handle: Option<RunnerHandle>,
    spawn: S,
    /// (first, last) file event of a pending change.
    changed: Option<(Instant, Instant)>,
}

impl<S> Supervisor<S>
where
    S: FnMut(&Config) -> Result<RunnerHandle, RunError>,
{
    /// Starts a runner for `config` with `spawn`.
    ///
    /// # Errors
    /// The runner could not start.
    pub fn start(
        files: Vec<PathBuf>,
        pipeline_file: PathBuf,
        config: Config,
        mut spawn: S,
    ) -> Result<Self, RunError> {
        let handle = spawn(&config)?;
        Ok(Self {
            files,
            pipeline_file,
            current: config,
            handle: Some(handle),
            spawn,
            changed: None,
        })
    }

    /// The configuration running now.
    pub fn config(&self) -> &Config {
        &self.current
    }

    /// The running runner (`None` after a restart that failed).
    pub fn handle(&self) -> Option<&RunnerHandle> {
        self.handle.as_ref()
    }

    /// Records a file event at `at`.
    pub fn files_changed(&mut self, at: Instant) {
        self.changed = Some((self.changed.map_or(at, |c| c.0), at));
    }

    /// Applies a pending change once the files have been quiet for [`DEBOUNCE`]. `on_restart`
    /// runs before a restarted runner starts (e.g. to create the new pipeline's topics).
    ///
    /// # Errors
    /// [`RestartError`]: a restart failed; no runner is running then.
    pub fn poll(
        &mut self,
        on_restart: impl FnOnce(&Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<Applied, RestartError> {
        let Some((first, last)) = self.changed else {
            return Ok(Applied::Nothing);
        };
        if last.elapsed() < DEBOUNCE {
            return Ok(Applied::Nothing);
        }
        self.changed = None;
        let change = load(&self.files, &self.pipeline_file).and_then(|c| diff(&self.current, c));
        match change {
            Ok(Change::Unchanged) => Ok(Applied::Nothing),
            Ok(Change::Rules(c)) => {
                tracing::info!(
                    since_change_ms = first.elapsed().as_secs_f64() * 1e3,
                    rules = c.rules.len(),
                    "Rules changed; replacing them."
                );
                let ctl = Control::ReplaceRules {
                    rules: c.rules.clone(),
                    models: c.models.clone(),
                    changed_at: first,
                };
                if self
                    .handle
                    .as_ref()
                    .is_some_and(|h| h.control().send(ctl).is_ok())
                {
                    self.current = c;
                }
                Ok(Applied::Rules)
            }
            Ok(Change::Pipeline(c)) => {
                tracing::info!(
                    pipeline = c.pipeline.metadata.name.as_deref().unwrap_or(""),
                    "The StreamPipeline changed; restarting the detector in place (flush, commit, new consumer)."
                );
                if let Some(old) = self.handle.take() {
                    old.stop();
                    let s = old.join()?;
                    tracing::info!(events = s.counters.records, "Previous detector stopped.");
                }
                on_restart(&c).map_err(RestartError::Prepare)?;
                self.handle = Some((self.spawn)(&c)?);
                tracing::info!(
                    took_ms = first.elapsed().as_secs_f64() * 1e3,
                    "Detector restarted with the new StreamPipeline."
                );
                self.current = c;
                Ok(Applied::Restarted)
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "Ignoring the changed manifests; the running configuration is kept."
                );
                Ok(Applied::Rejected)
            }
        }
    }

    /// Hands back the runner (to stop or join it); `None` after a restart that failed.
    pub fn into_handle(self) -> Option<RunnerHandle> {
        self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = "apiVersion: vigil.dev/v1alpha1
kind: StreamPipeline
metadata: {name: p}
spec:
  source: {kafka: {topics: [t], consumerGroup: g}}
  format: {eventTime: {field: timestamp}, wide: {fields: [{name: value}]}}
  windows: [{name: fast, size: 30s}]
  sinks: {alerts: {topic: alerts}}
";
    const RULE: &str = "---
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: hot}
spec: {window: fast, threshold: {field: value, feature: mean, operator: '>', value: 1}}
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn changes_are_classified_and_bad_edits_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "pipeline.yaml", PIPELINE);
        let r = write(dir.path(), "rules.yaml", RULE);
        let files = [p.clone(), r.clone()];
        let current = load(&files, &p).unwrap();
        assert_eq!(current.rules.len(), 1);
        let again = load(&files, &p).unwrap();
        assert_eq!(diff(&current, again).unwrap(), Change::Unchanged);

        write(
            dir.path(),
            "rules.yaml",
            &RULE.replace("value: 1}", "value: 2}"),
        );
        let c = diff(&current, load(&files, &p).unwrap()).unwrap();
        assert!(
            matches!(c, Change::Rules(ref n) if n.rules.len() == 1),
            "{c:?}"
        );

        write(
            dir.path(),
            "pipeline.yaml",
            &PIPELINE.replace("size: 30s", "size: 60s"),
        );
        let c = diff(&current, load(&files, &p).unwrap()).unwrap();
        assert!(matches!(c, Change::Pipeline(_)), "{c:?}");

        write(
            dir.path(),
            "rules.yaml",
            &RULE.replace("window: fast", "window: slow"),
        );
        let e = load(&files, &p).unwrap_err();
        assert!(matches!(e, ConfigError::Rules { .. }), "{e}");
        assert!(
            e.to_string().contains("rules.yaml")
                && e.to_string()
                    .contains("DetectionRule hot: spec.window: window `slow`"),
            "{e}"
        );
        write(dir.path(), "rules.yaml", RULE);

        write(
            dir.path(),
            "pipeline.yaml",
            &PIPELINE.replace("size: 30s", "size: -5s"),
        );
        let e = load(&files, &p).unwrap_err();
        assert!(matches!(e, ConfigError::Pipeline { .. }), "{e}");

        write(
            dir.path(),
            "pipeline.yaml",
            &PIPELINE.replace("name: p}", "name: q}"),
        );
        let e = diff(&current, load(&files, &p).unwrap()).unwrap_err();
        assert!(e.to_string().contains("name changed"), "{e}");

        write(dir.path(), "pipeline.yaml", "kind: [");
        assert!(matches!(load(&files, &p), Err(ConfigError::Manifest(_))));
        std::fs::write(&p, RULE).unwrap();
        assert!(matches!(
            load(std::slice::from_ref(&p), &p),
            Err(ConfigError::NoPipeline(_))
        ));
    }

    #[test]
    fn watch_reports_an_atomic_rename_over_a_watched_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "pipeline.yaml", PIPELINE);
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = watch(std::slice::from_ref(&p), move |at| {
            let _ = tx.send(at);
        })
        .unwrap();
        let tmp = write(dir.path(), "pipeline.yaml.tmp", PIPELINE);
        std::fs::rename(tmp, &p).unwrap();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a change event within 5 s");
    }
}
