//! `ModelInfer` payloads: validating a request against the model's declared inputs and decoding
//! it into tensors, and encoding outputs into a response.
//!
//! Every problem with a request becomes an `INVALID_ARGUMENT` status whose message names the
//! first problem and whose details (`google.rpc.BadRequest`) list every field violation, with
//! the field path as in the request (`inputs[0].shape`, `raw_input_contents[1]`, ...).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::model_infer_response::InferOutputTensor;
use vigil_proto::inference::{ModelInferRequest, ModelInferResponse};

use crate::config::{ModelConfig, TensorSpec};
use crate::tensor::{DataType, Tensor, TensorData, element_count};

/// How the client sent its tensors; the response answers in kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `raw_input_contents` / `raw_output_contents`.
    Raw,
    /// `InferTensorContents` typed fields.
    Typed,
}

/// A validated request.
#[derive(Debug)]
pub(crate) struct DecodedRequest {
    /// Input tensors in config order.
    pub inputs: Vec<Tensor>,
    /// Batch rows (dimension 0; 1 for models without batching).
    pub rows: usize,
    /// Encoding for the response.
    pub encoding: Encoding,
    /// Indices into the config's outputs to return, in response order.
    pub outputs: Vec<usize>,
}

fn describe(spec: &TensorSpec) -> String {
    format!("`{}` {} {:?}", spec.name, spec.datatype, spec.shape)
}

fn shape_matches(declared: &[i64], given: &[i64]) -> bool {
    declared.len() == given.len()
        && declared
            .iter()
            .zip(given)
            .all(|(&d, &g)| g >= 0 && (d == -1 || d == g))
}

/// Validates and decodes `req` for a model with `config`.
///
/// # Errors
/// `INVALID_ARGUMENT` with a `BadRequest` detail listing every field violation.
pub(crate) fn decode_request(
    config: &ModelConfig,
    req: ModelInferRequest,
) -> Result<DecodedRequest, Status> {
    let mut violations: Vec<FieldViolation> = Vec::new();
    let mut bad = |field: String, description: String| {
        violations.push(FieldViolation::new(field, description));
    };
    let encoding = if req.raw_input_contents.is_empty() {
        Encoding::Typed
    } else {
        Encoding::Raw
    };
    if encoding == Encoding::Raw && req.raw_input_contents.len() != req.inputs.len() {
        bad(
            "raw_input_contents".into(),
            format!(
                "has {} entries for {} inputs; give one per input, in the same order",
                req.raw_input_contents.len(),
                req.inputs.len()
            ),
        );
    }

    let mut slots: Vec<Option<Tensor>> = vec![None; config.inputs.len()];
    let mut mentioned = vec![false; config.inputs.len()];
    let mut raw = req.raw_input_contents.into_iter();
    for (i, input) in req.inputs.into_iter().enumerate() {
        let raw_bytes = raw.next();
        let InferInputTensor {
            name,
            datatype,
            shape,
            contents,
            ..
        } = input;
        let Some(slot) = config.inputs.iter().position(|s| s.name == name) else {
            let names: Vec<&str> = config.inputs.iter().map(|s| s.name.as_str()).collect();
            bad(
                format!("inputs[{i}].name"),
                format!(
                    "unknown input `{name}`; the model's inputs are {}",
                    names.join(", ")
                ),
            );
            continue;
        };
        let spec = &config.inputs[slot];
        if mentioned[slot] {
            bad(
                format!("inputs[{i}].name"),
                format!("input `{name}` is given twice"),
            );
            continue;
        }
        mentioned[slot] = true;
        match datatype.parse::<DataType>() {
            Ok(dt) if dt == spec.datatype => {}
            Ok(dt) => {
                bad(
                    format!("inputs[{i}].datatype"),
                    format!("is {dt}, input {} needs {}", describe(spec), spec.datatype),
                );
                continue;
            }
            Err(e) => {
                bad(format!("inputs[{i}].datatype"), e);
                continue;
            }
        }
        if !shape_matches(&spec.shape, &shape) {
            bad(
                format!("inputs[{i}].shape"),
                format!(
                    "{shape:?} does not match input {} (-1 = any size)",
                    describe(spec)
                ),
            );
            continue;
        }
        let len = element_count(&shape);
        let data = match (encoding, raw_bytes, contents) {
            (Encoding::Raw, _, Some(_)) => Err((
                format!("inputs[{i}].contents"),
                "must be empty when raw_input_contents is used".to_owned(),
            )),
            (Encoding::Raw, Some(bytes), None) => TensorData::from_raw(spec.datatype, &bytes, len)
                .map_err(|e| (format!("raw_input_contents[{i}]"), e)),
            (Encoding::Raw, None, None) => continue, // counted above
            (Encoding::Typed, _, Some(c)) => TensorData::from_contents(spec.datatype, c, len)
                .map_err(|e| (format!("inputs[{i}].contents"), e)),
            (Encoding::Typed, _, None) => Err((
                format!("inputs[{i}].contents"),
                "is empty; send the tensor in contents or raw_input_contents".to_owned(),
            )),
        };
        match data {
            Ok(data) => slots[slot] = Some(Tensor { shape, data }),
            Err((field, msg)) => bad(field, msg),
        }
    }

    for (spec, _) in config.inputs.iter().zip(&mentioned).filter(|(_, m)| !**m) {
        violations.push(FieldViolation::new(
            "inputs",
            format!("missing input {}", describe(spec)),
        ));
    }

    let mut outputs = Vec::with_capacity(req.outputs.len().max(config.outputs.len()));
    if req.outputs.is_empty() {
        outputs.extend(0..config.outputs.len());
    } else {
        for (i, o) in req.outputs.iter().enumerate() {
            match config.outputs.iter().position(|s| s.name == o.name) {
                Some(idx) if outputs.contains(&idx) => violations.push(FieldViolation::new(
                    format!("outputs[{i}].name"),
                    format!("output `{}` is requested twice", o.name),
                )),
                Some(idx) => outputs.push(idx),
                None => {
                    let names: Vec<&str> = config.outputs.iter().map(|s| s.name.as_str()).collect();
                    violations.push(FieldViolation::new(
                        format!("outputs[{i}].name"),
                        format!(
                            "unknown output `{}`; the model's outputs are {}",
                            o.name,
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
    }

    let mut rows = 1;
    if violations.is_empty() && config.batching() {
        let inputs: Vec<&Tensor> = slots.iter().flatten().collect();
        let first = inputs[0].shape[0];
        if let Some(i) = inputs.iter().position(|t| t.shape[0] != first) {
            violations.push(FieldViolation::new(
                "inputs",
                format!(
                    "inputs disagree on the batch dimension: `{}` has {}, `{}` has {first}",
                    config.inputs[i].name, inputs[i].shape[0], config.inputs[0].name
                ),
            ));
        } else if first == 0 {
            violations.push(FieldViolation::new(
                "inputs",
                "batch dimension is 0; send at least one row",
            ));
        }
        rows = usize::try_from(first).unwrap_or(0);
    }

    if let Some(first) = violations.first() {
        let more = match violations.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        let message = format!("{}: {}{more}", first.field, first.description);
        return Err(Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(violations),
        ));
    }
    Ok(DecodedRequest {
        inputs: slots.into_iter().map(|s| s.expect("validated")).collect(),
        rows,
        encoding,
        outputs,
    })
}

/// Builds the response for one request from the version's outputs (config order).
pub(crate) fn encode_response(
    config: &ModelConfig,
    model: &str,
    version: &str,
    id: String,
    outputs: Vec<Tensor>,
    selection: &[usize],
    encoding: Encoding,
) -> ModelInferResponse {
    let mut by_index: HashMap<usize, Tensor> = outputs.into_iter().enumerate().collect();
    let mut resp = ModelInferResponse {
        model_name: model.to_owned(),
        model_version: version.to_owned(),
        id,
        ..Default::default()
    };
    for &idx in selection {
        let spec = &config.outputs[idx];
        let tensor = by_index.remove(&idx).expect("each output is selected once");
        let mut out = InferOutputTensor {
            name: spec.name.clone(),
            datatype: spec.datatype.as_str().to_owned(),
            shape: tensor.shape,
            ..Default::default()
        };
        match encoding {
            Encoding::Raw => resp.raw_output_contents.push(tensor.data.to_raw().into()),
            Encoding::Typed => out.contents = Some(tensor.data.into_contents()),
        }
        resp.outputs.push(out);
    }
    resp
}
