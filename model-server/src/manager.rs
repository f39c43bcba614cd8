//! The set of served model versions and their states: loading a model (every numeric version
//! directory at once, so canary and shadow versions run side by side), reloading, unloading,
//! resolving a `(model, version)` request to a ready version, and the repository index.
//!
//! A version is either ready (it holds a [`LoadedVersion`] with its own batcher thread) or
//! unavailable with a human-readable reason (bad config, digest mismatch, ONNX Runtime refused
//! the artifact, signature mismatch). One broken version never affects the others.
//!
//! Swaps are atomic per model: a reload builds the new version set first, then replaces the old
//! one under a short write lock. Requests hold an `Arc<LoadedVersion>`, so a version that is
//! unloaded or replaced finishes every request it already accepted before its worker stops.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ort::environment::Environment;

use crate::batcher::{BatchError, BatchPolicy, Batcher};
use crate::config::ModelConfig;
use crate::metrics::{Metrics, VersionMetrics};
use crate::repository::{ModelRepository, RepositoryError};
use crate::runtime::OnnxSession;
use crate::tensor::Tensor;

/// State names of the repository index (Triton's spelling).
pub mod state {
    /// Loaded and serving.
    pub const READY: &str = "READY";
    /// Known but not serving; the entry's reason says why.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
}

/// A model version that is loaded and serving.
#[derive(Debug)]
pub struct LoadedVersion {
    model: String,
    version: String,
    config: ModelConfig,
    batcher: Batcher,
    metrics: VersionMetrics,
}

impl LoadedVersion {
    /// Model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Version (decimal string, as on disk).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The validated config of this version.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Metric handles of this version.
    pub fn metrics(&self) -> &VersionMetrics {
        &self.metrics
    }

    /// Runs inference through the version's dynamic batcher.
    ///
    /// `inputs` must match the config (order, datatypes, shapes; callers validate) and share
    /// dimension 0 = `rows`. Outputs come back in config order with `rows` rows each.
    ///
    /// # Errors
    /// [`BatchError`] when the queue is full, the worker stopped, or execution failed.
    pub async fn infer(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>, BatchError> {
        self.batcher.infer(inputs, rows).await
    }
}

/// State of one model version.
#[derive(Clone, Debug)]
pub enum VersionState {
    /// Serving.
    Ready(Arc<LoadedVersion>),
    /// Not serving, with the reason.
    Unavailable(String),
}

/// One row of the repository index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// [`state::READY`] or [`state::UNAVAILABLE`].
    pub state: &'static str,
    /// Why the version is unavailable (empty when ready).
    pub reason: String,
}

/// Outcome of loading one model.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Versions now ready.
    pub ready: Vec<String>,
    /// Versions that failed, with the reason (including those in `kept`).
    pub failed: Vec<(String, String)>,
    /// Versions whose reload failed while an earlier load of them was serving: the earlier one
    /// keeps serving (a bad push must not take a working model out of service).
    pub kept: Vec<String>,
}

/// Why a request could not be routed to a ready version.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No such model is loaded.
    #[error("model `{0}` is not loaded")]
    ModelNotFound(String),
    /// The model is loaded but has no such version.
    #[error("model `{model}` has no version `{version}`")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// Requested version.
        version: String,
    },
    /// The version (or, when none was named, every version) is unavailable.
    #[error("model `{model}` version `{version}` is not ready: {reason}")]
    NotReady {
        /// Model name.
        model: String,
        /// Version (empty when the request named none).
        version: String,
        /// Why.
        reason: String,
    },
}

/// Why a load request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The repository could not be read for this model.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The model directory has no numeric version directories.
    #[error("model `{0}` has no version directories")]
    NoVersions(String),
}

/// Every served model version, keyed by model name then numeric version.
pub struct ModelManager {
    repository: ModelRepository,
    env: &'static Environment,
    intra_op_threads: Option<usize>,
    metrics: Arc<Metrics>,
    models: RwLock<BTreeMap<String, BTreeMap<u64, VersionState>>>,
    load_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

/// A chain of error messages, outermost first, joined by `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl ModelManager {
    /// A manager with nothing loaded.
    pub fn new(
        repository: ModelRepository,
        env: &'static Environment,
        intra_op_threads: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ModelManager {
            repository,
            env,
            intra_op_threads,
            metrics,
            models: RwLock::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The repository this manager loads from.
    pub fn repository(&self) -> &ModelRepository {
        &self.repository
    }

    /// Loads or reloads every version of `model` from disk.
    ///
    /// Each version's digest is verified and a session created; versions whose config and
    /// digest did not change keep their running session. Versions no longer on disk are
    /// unloaded. A version that fails to load stays listed as unavailable with its reason,
    /// unless it was serving before: then the last good load keeps serving and the failure is
    /// reported (`failed` and `kept`).
    ///
    /// # Errors
    /// [`LoadError`] when the model directory is missing, unreadable or has no versions; the
    /// served set is then unchanged.
    pub async fn load(&self, model: &str) -> Result<LoadReport, LoadError> {
        let _serialised = self.load_lock.lock().await;
        let repo = self.repository.clone();
        let name = model.to_owned();
        let versions = tokio::task::spawn_blocking(move || repo.versions(&name))
            .await
            .expect("listing versions does not panic")?;
        if versions.is_empty() {
            return Err(LoadError::NoVersions(model.to_owned()));
        }
        let current = self.models.read().expect("models lock").get(model).cloned();

        let mut next = BTreeMap::new();
        let mut report = LoadReport::default();
        for v in versions {
            let previous = current
                .as_ref()
                .and_then(|c| c.get(&v))
                .and_then(|s| match s {
                    VersionState::Ready(l) => Some(l.clone()),
                    VersionState::Unavailable(_) => None,
                });
            let state = match (
                self.load_version(model, v, previous.clone()).await,
                previous,
            ) {
                (VersionState::Unavailable(reason), Some(last_good)) => {
                    tracing::warn!(model, version = v, reason = %reason, "Reloading the model version failed; the last good load keeps serving.");
                    report.failed.push((
                        v.to_string(),
                        format!("{reason} (the previously loaded version {v} keeps serving)"),
                    ));
                    report.kept.push(v.to_string());
                    report.ready.push(v.to_string());
                    VersionState::Ready(last_good)
                }
                (state, _) => {
                    match &state {
                        VersionState::Ready(_) => {
                            tracing::info!(model, version = v, "Model version ready.");
                            report.ready.push(v.to_string());
                        }
                        VersionState::Unavailable(reason) => {
                            tracing::warn!(model, version = v, reason = %reason, "Model version unavailable.");
                            report.failed.push((v.to_string(), reason.clone()));
                        }
                    }
                    state
                }
            };
            self.metrics.set_ready(
                model,
                &v.to_string(),
                Some(matches!(state, VersionState::Ready(_))),
            );
            next.insert(v, state);
        }
        if let Some(old) = &current {
            for v in old.keys().filter(|v| !next.contains_key(v)) {
                self.metrics.set_ready(model, &v.to_string(), None);
            }
        }
        self.models
            .write()
            .expect("models lock")
            .insert(model.to_owned(), next);
        Ok(report)
    }

    async fn load_version(
        &self,
        model: &str,
        version: u64,
        previous: Option<Arc<LoadedVersion>>,
    ) -> VersionState {
        let repo = self.repository.clone();
        let name = model.to_owned();
        let env = self.env;
        let threads = self.intra_op_threads;
        let metrics = self.metrics.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Arc<LoadedVersion>, String> {
            let verified = repo
                .read_version(&name, version)
                .map_err(|e| error_chain(&e))?;
            if let Some(prev) = previous
                && prev.config == verified.config
            {
                return Ok(prev); // same config and digest: keep the running session
            }
            let session = OnnxSession::new(env, &verified.artifact, &verified.config, threads)
                .map_err(|e| error_chain(&e))?;
            let version = version.to_string();
            let version_metrics = metrics.version(&name, &version);
            let policy = BatchPolicy {
                max_batch_size: verified.config.max_batch_size,
                max_queue_delay: verified.config.max_queue_delay(),
            };
            let input_names = verified
                .config
                .inputs
                .iter()
                .map(|s| s.name.clone())
                .collect();
            let batcher = Batcher::start(
                &format!("{name}-{version}"),
                session,
                input_names,
                policy,
                version_metrics.clone(),
            )
            .map_err(|e| format!("failed to start the batch worker thread: {e}"))?;
            Ok(Arc::new(LoadedVersion {
                model: name,
                version,
                config: verified.config,
                batcher,
                metrics: version_metrics,
            }))
        })
        .await;
        match loaded {
            Ok(Ok(v)) => VersionState::Ready(v),
            Ok(Err(reason)) => VersionState::Unavailable(reason),
            Err(join) => VersionState::Unavailable(format!("loading panicked: {join}")),
        }
    }

    /// Unloads every version of `model`. Requests already accepted still complete. Returns
    /// whether anything was loaded.
    pub async fn unload(&self, model: &str) -> bool {
        let _serialised = self.load_lock.lock().await;
        let removed = self.models.write().expect("models lock").remove(model);
        match removed {
            Some(versions) => {
                for v in versions.keys() {
                    self.metrics.set_ready(model, &v.to_string(), None);
                }
                tracing::info!(model, "Model unloaded.");
                true
            }
            None => false,
        }
    }

    /// The ready version a request for `(model, version)` goes to; an empty `version` picks the
    /// highest ready version.
    ///
    /// # Errors
    /// [`LookupError`] for unknown models or versions and for unavailable ones.
    pub fn resolve(&self, model: &str, version: &str) -> Result<Arc<LoadedVersion>, LookupError> {
        let models = self.models.read().expect("models lock");
        let versions = models
            .get(model)
            .ok_or_else(|| LookupError::ModelNotFound(model.to_owned()))?;
        if version.is_empty() {
            if let Some(ready) = versions.values().rev().find_map(|s| match s {
                VersionState::Ready(l) => Some(l.clone()),
                VersionState::Unavailable(_) => None,
            }) {
                return Ok(ready);
            }
            let reasons: Vec<String> = versions
                .iter()
                .filter_map(|(v, s)| match s {
                    VersionState::Unavailable(r) => Some(format!("version {v}: {r}")),
                    VersionState::Ready(_) => None,
                })
                .collect();
            return Err(LookupError::NotReady {
                model: model.to_owned(),
                version: String::new(),
                reason: reasons.join("; "),
            });
        }
        let state = version
            .parse::<u64>()
            .ok()
            .and_then(|v| versions.get(&v))
            .ok_or_else(|| LookupError::VersionNotFound {
                model: model.to_owned(),
                version: version.to_owned(),
            })?;
        match state {
            VersionState::Ready(l) => Ok(l.clone()),
            VersionState::Unavailable(reason) => Err(LookupError::NotReady {
                model: model.to_owned(),
                version: version.to_owned(),
                reason: reason.clone(),
            }),
        }
    }

    /// Ready versions of `model`, ascending.
    pub fn ready_versions(&self, model: &str) -> Vec<String> {
        let models = self.models.read().expect("models lock");
        models
            .get(model)
            .map(|vs| {
                vs.iter()
                    .filter(|(_, s)| matches!(s, VersionState::Ready(_)))
                    .map(|(v, _)| v.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether every loaded version is ready (used for strict readiness).
    pub fn all_ready(&self) -> bool {
        let models = self.models.read().expect("models lock");
        models
            .values()
            .flat_map(|vs| vs.values())
            .all(|s| matches!(s, VersionState::Ready(_)))
    }

    /// The repository index: every loaded version with its state, plus every model and version
    /// on disk that is not loaded (unavailable, reason `not loaded`). Sorted by name, version.
    ///
    /// # Errors
    /// [`RepositoryError`] when the repository root cannot be listed.
    pub async fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>, RepositoryError> {
        let repo = self.repository.clone();
        let on_disk = tokio::task::spawn_blocking(move || {
            let mut all = BTreeMap::new();
            for name in repo.model_names()? {
                all.insert(name.clone(), repo.versions(&name).unwrap_or_default());
            }
            Ok::<_, RepositoryError>(all)
        })
        .await
        .expect("listing the repository does not panic")?;

        let models = self.models.read().expect("models lock");
        let mut entries = Vec::new();
        let mut names: Vec<&String> = on_disk.keys().chain(models.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let loaded = models.get(name);
            let mut versions: Vec<u64> = on_disk.get(name).cloned().unwrap_or_default();
            versions.extend(loaded.into_iter().flat_map(|l| l.keys().copied()));
            versions.sort_unstable();
            versions.dedup();
            for v in versions {
                let (state, reason) = match loaded.and_then(|l| l.get(&v)) {
                    Some(VersionState::Ready(_)) => (state::READY, String::new()),
                    Some(VersionState::Unavailable(r)) => (state::UNAVAILABLE, r.clone()),
                    None => (state::UNAVAILABLE, "not loaded".to_owned()),
                };
                if ready_only && state != state::READY {
                    continue;
                }
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: v.to_string(),
                    state,
                    reason,
                });
            }
        }
        Ok(entries)
    }
}
