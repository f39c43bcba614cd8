//! The contract between an AnomalyModel and the model server's per-version `config.yaml`: what
//! detectors send (the feature vector's tensor, shape and feature order) and how they read the
//! answer (score output, threshold, side). One place for both directions:
//! - [`model_config`] renders the `config.yaml` the operator serves an AnomalyModel revision with;
//! - [`check`] says whether an existing repository's `config.yaml` fits an AnomalyModel
//!   (`vigil run` / `vigil score --model-repository`), naming the AnomalyModel field that
//!   differs.

use vigil_api::v1alpha1::{AnomalyModel, ScoreDirection};

use crate::config::{AnomalousWhen, ModelConfig, ONNX_PLATFORM, ScoreSpec, TensorSpec};
use crate::datatype::DataType;

/// Batch size when `spec.batching.maxBatchSize` is absent (the CRD's documented default).
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 256;
/// Queue delay when `spec.batching.maxQueueDelayUs` is absent (the CRD's documented default).
pub const DEFAULT_MAX_QUEUE_DELAY_US: u64 = 500;

/// The `config.yaml` that serves `model` as `version`, with its artifact digest.
pub fn model_config(model: &AnomalyModel, version: u64, sha256: &str) -> ModelConfig {
    let spec = &model.spec;
    let features = spec.input.features.len() as i64;
    let lookback = spec.input.lookback.unwrap_or(1);
    let input_shape = if spec.input.lookback.is_some() {
        vec![-1, i64::from(lookback), features]
    } else {
        vec![-1, features]
    };
    let batching = spec.batching.as_ref();
    ModelConfig {
        description: format!(
            "AnomalyModel {}/{} version {version}, rendered by vigil-operator",
            model.metadata.namespace.as_deref().unwrap_or_default(),
            model.metadata.name.as_deref().unwrap_or_default()
        ),
        platform: ONNX_PLATFORM.to_string(),
        artifact: "model.onnx".into(),
        sha256: sha256.to_string(),
        inputs: vec![TensorSpec {
            name: spec.input.tensor.clone(),
            datatype: DataType::Fp32,
            shape: input_shape,
        }],
        outputs: vec![TensorSpec {
            name: spec.output.tensor.clone(),
            datatype: DataType::Fp32,
            shape: vec![-1, 1],
        }],
        max_batch_size: batching
            .and_then(|b| b.max_batch_size)
            .unwrap_or(DEFAULT_MAX_BATCH_SIZE) as usize,
        max_queue_delay_us: batching
            .and_then(|b| b.max_queue_delay_us)
            .unwrap_or(DEFAULT_MAX_QUEUE_DELAY_US),
        features: spec.input.features.clone(),
        lookback: lookback as usize,
        window: None,
        score: Some(ScoreSpec {
            output: spec.output.tensor.clone(),
            threshold: spec.output.threshold,
            anomalous_when: match spec.output.anomalous_when {
                ScoreDirection::Above => AnomalousWhen::Above,
                ScoreDirection::Below => AnomalousWhen::Below,
            },
        }),
        training: Default::default(),
    }
}

/// An AnomalyModel field that disagrees with the served `config.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {declared} but the model server's config.yaml has {served}")]
pub struct Mismatch {
    /// The AnomalyModel field, e.g. `spec.input.features`.
    pub field: &'static str,
    /// Its value in the AnomalyModel.
    pub declared: String,
    /// What the config says.
    pub served: String,
}

/// Checks that `config` serves what `model` declares: artifact digest, feature order, lookback,
/// input tensor, and the first output (the score the v2 client reads).
///
/// # Errors
/// The first [`Mismatch`].
pub fn check(model: &AnomalyModel, config: &ModelConfig) -> Result<(), Mismatch> {
    let spec = &model.spec;
    let mismatch = |field, declared: String, served: String| Mismatch {
        field,
        declared,
        served,
    };
    if config.sha256 != spec.artifact.sha256 {
        return Err(mismatch(
            "spec.artifact.sha256",
            spec.artifact.sha256.clone(),
            config.sha256.clone(),
        ));
    }
    if !config.features.is_empty() && config.features != spec.input.features {
        return Err(mismatch(
            "spec.input.features",
            format!("{:?}", spec.input.features),
            format!("{:?}", config.features),
        ));
    }
    let lookback = spec.input.lookback.unwrap_or(1) as usize;
    if config.lookback != lookback {
        return Err(mismatch(
            "spec.input.lookback",
            lookback.to_string(),
            config.lookback.to_string(),
        ));
    }
    let input = config.inputs.first().map(|t| t.name.as_str()).unwrap_or("");
    if input != spec.input.tensor {
        return Err(mismatch(
            "spec.input.tensor",
            spec.input.tensor.clone(),
            format!("input `{input}`"),
        ));
    }
    let output = config
        .outputs
        .first()
        .map(|t| t.name.as_str())
        .unwrap_or("");
    if output != spec.output.tensor {
        return Err(mismatch(
            "spec.output.tensor",
            spec.output.tensor.clone(),
            format!("first output `{output}`"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> AnomalyModel {
        serde_norway::from_str(
            r#"
apiVersion: vigil.dev/v1alpha1
kind: AnomalyModel
metadata: {name: iforest, namespace: ns}
spec:
  revision: "1"
  artifact: {uri: "configmap://iforest/model.onnx", sha256: "abababababababababababababababababababababababababababababababab"}
  input: {tensor: X, window: analysis, features: [value.mean, value.stddev]}
  output: {tensor: scores, anomalousWhen: Below, threshold: 0.0}
"#,
        )
        .unwrap()
    }

    /// What the operator renders parses and validates as the server reads it, and fits the
    /// model it was rendered from.
    #[test]
    fn rendered_config_is_valid_and_fits_its_model() {
        let m = model();
        let rendered = model_config(&m, 1, &m.spec.artifact.sha256);
        let yaml = serde_norway::to_string(&rendered).unwrap();
        let parsed = ModelConfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed, rendered);
        parsed.validate().unwrap();
        check(&m, &parsed).unwrap();
        assert_eq!(parsed.inputs[0].shape, [-1, 2]);

        let mut seq = m.clone();
        seq.spec.input.lookback = Some(6);
        let c = model_config(&seq, 1, &seq.spec.artifact.sha256);
        c.validate().unwrap();
        assert_eq!(c.inputs[0].shape, [-1, 6, 2]);
    }

    #[test]
    fn mismatches_name_the_anomaly_model_field() {
        let m = model();
        let mut c = model_config(&m, 1, &m.spec.artifact.sha256);
        c.features.reverse();
        let e = check(&m, &c).unwrap_err();
        assert_eq!(e.field, "spec.input.features");
        let mut c = model_config(&m, 1, &"cd".repeat(32));
        assert_eq!(check(&m, &c).unwrap_err().field, "spec.artifact.sha256");
        c.sha256 = m.spec.artifact.sha256.clone();
        c.outputs[0].name = "label".into();
        let e = check(&m, &c).unwrap_err();
        assert_eq!(e.field, "spec.output.tensor");
        assert!(e.to_string().contains("first output `label`"), "{e}");
    }
}
