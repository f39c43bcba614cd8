//! The model repository on disk: `<root>/<model>/<version>/{config.yaml, model.onnx}`, with
//! numeric version directories as in Triton. Reads a version's config, reads its artifact and
//! verifies the artifact's SHA-256 against the config before anything else sees the bytes.
//!
//! Which versions are loaded, and their state, belongs to `manager`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{MODEL_CONFIG_FILE, ModelConfig};

/// Why the repository could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The model name could escape the repository or is not a plain directory name.
    #[error(
        "invalid model name `{0}`: use letters, digits, `.`, `_` and `-`, not starting with `.`"
    )]
    InvalidName(String),
    /// No directory for this model.
    #[error("model `{model}` is not in the repository {}", root.display())]
    ModelNotFound {
        /// Requested model.
        model: String,
        /// Repository root.
        root: PathBuf,
    },
    /// A directory could not be read.
    #[error("failed to list {}", path.display())]
    List {
        /// Directory being listed.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why one model version could not be read from disk.
#[derive(Debug, thiserror::Error)]
pub enum ReadVersionError {
    /// The config file could not be read.
    #[error("failed to read {}", path.display())]
    ReadConfig {
        /// Config path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for [`ModelConfig`].
    #[error("failed to parse {}", path.display())]
    ParseConfig {
        /// Config path.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_norway::Error,
    },
    /// The config parsed but its values are inconsistent.
    #[error("invalid {}: {reason}", path.display())]
    InvalidConfig {
        /// Config path.
        path: PathBuf,
        /// Which key is wrong and why.
        reason: String,
    },
    /// The artifact could not be read.
    #[error("failed to read {}", path.display())]
    ReadArtifact {
        /// Artifact path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The artifact's digest differs from the config's `sha256`.
    #[error("sha256 mismatch for {}: config expects {expected}, file has {actual}", path.display())]
    DigestMismatch {
        /// Artifact path.
        path: PathBuf,
        /// `sha256` from the config.
        expected: String,
        /// Digest of the file.
        actual: String,
    },
}

/// A version's config and its digest-verified artifact bytes.
#[derive(Debug)]
pub struct VerifiedVersion {
    /// The validated config.
    pub config: ModelConfig,
    /// The artifact, whose SHA-256 equals `config.sha256`.
    pub artifact: Vec<u8>,
}

/// A model repository rooted at one directory.
#[derive(Clone, Debug)]
pub struct ModelRepository {
    root: PathBuf,
}

/// Whether `name` is safe as a directory name inside the repository.
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn subdirectories(path: &Path) -> Result<Vec<String>, RepositoryError> {
    let list = |source| RepositoryError::List {
        path: path.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(list)? {
        let entry = entry.map_err(list)?;
        if entry.file_type().map_err(list)?.is_dir()
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

impl ModelRepository {
    /// A repository rooted at `root` (not read until asked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelRepository { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the model directories, sorted.
    ///
    /// # Errors
    /// [`RepositoryError::List`] when the root cannot be read.
    pub fn model_names(&self) -> Result<Vec<String>, RepositoryError> {
        Ok(subdirectories(&self.root)?
            .into_iter()
            .filter(|n| is_valid_model_name(n))
            .collect())
    }

    /// Numeric version directories of `model`, ascending. Other directories are ignored.
    ///
    /// # Errors
    /// [`RepositoryError::InvalidName`], [`RepositoryError::ModelNotFound`],
    /// [`RepositoryError::List`].
    pub fn versions(&self, model: &str) -> Result<Vec<u64>, RepositoryError> {
        if !is_valid_model_name(model) {
            return Err(RepositoryError::InvalidName(model.to_owned()));
        }
        let dir = self.root.join(model);
        if !dir.is_dir() {
            return Err(RepositoryError::ModelNotFound {
                model: model.to_owned(),
                root: self.root.clone(),
            });
        }
        let mut versions: Vec<u64> = subdirectories(&dir)?
            .iter()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|n| n.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Directory of one version.
    pub fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.root.join(model).join(version.to_string())
    }

    /// Reads and validates a version's config, reads its artifact and verifies its digest.
    ///
    /// # Errors
    /// [`ReadVersionError`] for unreadable or invalid configs, unreadable artifacts and digest
    /// mismatches.
    pub fn read_version(
        &self,
        model: &str,
        version: u64,
    ) -> Result<VerifiedVersion, ReadVersionError> {
        let dir = self.version_dir(model, version);
        let config_path = dir.join(MODEL_CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| {
            ReadVersionError::ReadConfig {
                path: config_path.clone(),
                source,
            }
        })?;
        let config =
            ModelConfig::from_yaml(&text).map_err(|source| ReadVersionError::ParseConfig {
                path: config_path.clone(),
                source,
            })?;
        config
            .validate()
            .map_err(|reason| ReadVersionError::InvalidConfig {
                path: config_path.clone(),
                reason,
            })?;
        let artifact_path = dir.join(&config.artifact);
        let artifact =
            std::fs::read(&artifact_path).map_err(|source| ReadVersionError::ReadArtifact {
                path: artifact_path.clone(),
                source,
            })?;
        let actual = sha256_hex(&artifact);
        if actual != config.sha256 {
            return Err(ReadVersionError::DigestMismatch {
                path: artifact_path,
                expected: config.sha256.clone(),
                actual,
            });
        }
        Ok(VerifiedVersion { config, artifact })
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_root_are_invalid() {
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "x y"] {
            assert!(!is_valid_model_name(bad), "{bad:?}");
        }
        for good in ["iforest", "lstm-ae", "m_1.v2"] {
            assert!(is_valid_model_name(good), "{good:?}");
        }
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        // FIPS 180-2 example "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digest_mismatch_is_reported_with_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let vdir = dir.path().join("m").join("3");
        std::fs::create_dir_all(&vdir).unwrap();
        std::fs::write(vdir.join("model.onnx"), b"not the trained model").unwrap();
        let expected = sha256_hex(b"the trained model");
        std::fs::write(
            vdir.join(MODEL_CONFIG_FILE),
            format!(
                "platform: onnxruntime_onnx\nsha256: {expected}\n\
                 inputs: [{{name: x, datatype: FP32, shape: [-1, 1]}}]\n\
                 outputs: [{{name: y, datatype: FP32, shape: [-1, 1]}}]\n"
            ),
        )
        .unwrap();
        let repo = ModelRepository::new(dir.path());
        assert_eq!(repo.versions("m").unwrap(), vec![3]);
        let err = repo.read_version("m", 3).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ReadVersionError::DigestMismatch { .. }),
            "{msg}"
        );
        assert!(msg.contains(&expected) && msg.contains(&sha256_hex(b"not the trained model")));
    }
}
