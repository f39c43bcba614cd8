//! Following the reference data file (`spec.enrichment`): read at start (a file that cannot be
//! read or parsed stops the run, naming it), then checked every second and reloaded when its
//! bytes change (kubelet swaps a mounted ConfigMap's files atomically, within about a minute of
//! the ConfigMap's change). A reload that does not parse keeps the data in use and says why.
//! The engine sees a reload from its next alert on ([`vigil_core::enrichment::ReferenceData`]
//! is shared).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use vigil_api::v1alpha1::EnrichmentSpec;
use vigil_core::enrichment::{ReferenceData, parse};

use crate::telemetry::Metrics;

/// How often the file is checked.
pub const POLL: Duration = Duration::from_secs(1);

/// Reference data that cannot be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum EnrichmentError {
    /// No file to read.
    #[error(
        "spec.enrichment: {0} is not set (the operator sets it to the mounted ConfigMap's attributes.yaml; set it for `vigil run`)"
    )]
    NoFile(&'static str),
    /// The file cannot be read or parsed.
    #[error("spec.enrichment: {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

fn load(
    path: &Path,
) -> Result<
    (
        Vec<u8>,
        std::collections::HashMap<String, vigil_core::enrichment::Attributes>,
    ),
    String,
> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let data = parse(&bytes)?;
    Ok((bytes, data))
}

/// Loads `file` and follows it on a thread of its own, which ends when the returned data is
/// dropped.
///
/// # Errors
/// [`EnrichmentError`] naming the file.
pub fn follow(
    spec: &EnrichmentSpec,
    file: Option<&Path>,
    metrics: Metrics,
) -> Result<Arc<ReferenceData>, EnrichmentError> {
    let path: PathBuf = file
        .ok_or(EnrichmentError::NoFile(
            vigil_api::contract::detector::env::ENRICHMENT_FILE,
        ))?
        .to_path_buf();
    let (mut seen, data) = load(&path).map_err(|reason| EnrichmentError::File {
        path: path.display().to_string(),
        reason,
    })?;
    metrics.enrichment(data.len(), "loaded");
    tracing::info!(file = %path.display(), keys = data.len(), "Reference data loaded.");
    let reference = Arc::new(ReferenceData::new(data, spec.default.clone()));
    let weak: Weak<ReferenceData> = Arc::downgrade(&reference);
    let spawned = std::thread::Builder::new()
        .name("vigil-enrichment".into())
        .spawn(move || {
            loop {
                std::thread::sleep(POLL);
                let Some(reference) = weak.upgrade() else { return };
                let Ok(bytes) = std::fs::read(&path) else {
                    continue; // mid-swap or gone: the data in use stays
                };
                if bytes == seen {
                    continue;
                }
                let t0 = Instant::now();
                match parse(&bytes) {
                    Ok(data) => {
                        let n = data.len();
                        reference.replace(data);
                        metrics.enrichment(n, "reloaded");
                        tracing::info!(file = %path.display(), keys = n, parse_ms = t0.elapsed().as_secs_f64() * 1e3,
                            "Reference data reloaded; the next alerts carry it.");
                    }
                    Err(e) => {
                        metrics.enrichment(reference.len(), "invalid");
                        tracing::error!(file = %path.display(), error = %e, "Reference data changed but does not parse; the previous data stays in use.");
                    }
                }
                seen = bytes;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Reference data is not followed (no thread); it stays as loaded.");
    }
    Ok(reference)
}
