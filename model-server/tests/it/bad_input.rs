//! Bad requests: wrong tensor names, datatypes, shapes and payload sizes are `INVALID_ARGUMENT`
//! with `BadRequest` details naming the field; unknown models and versions are `NOT_FOUND`.

use tonic::Code;
use tonic_types::StatusExt;
use vigil_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use vigil_proto::inference::{InferTensorContents, ModelInferRequest};

use crate::common::{committed_repository, metric_value, raw_f32, start};

fn features(shape: Vec<i64>, datatype: &str, name: &str) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    }
}

fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "iforest".into(),
        model_version: "1".into(),
        inputs,
        raw_input_contents: raw.into_iter().map(Into::into).collect(),
        ..Default::default()
    }
}

/// Sends `req`, expects INVALID_ARGUMENT, returns (message, violated fields).
async fn invalid(t: &crate::common::TestServer, req: ModelInferRequest) -> (String, Vec<String>) {
    let status = t.grpc.clone().model_infer(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status
        .get_details_bad_request()
        .expect("BadRequest details are attached");
    let fields = details
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    (status.message().to_owned(), fields)
}

#[tokio::test]
async fn wrong_tensor_name_names_the_expected_input() {
    let t = start(&committed_repository()).await;
    let req = request(
        vec![features(vec![1, 11], "FP32", "X")],
        vec![raw_f32(&[0.0; 11])],
    );
    let (msg, fields) = invalid(&t, req).await;
    assert_eq!(fields, vec!["inputs[0].name", "inputs"]);
    assert!(
        msg.contains("unknown input `X`") && msg.contains("features"),
        "{msg}"
    );
    assert!(
        msg.contains("and 1 more"),
        "the missing input is reported too: {msg}"
    );
}

#[tokio::test]
async fn wrong_datatype_is_rejected() {
    let t = start(&committed_repository()).await;
    let req = request(
        vec![features(vec![1, 11], "FP64", "features")],
        vec![vec![0u8; 88]],
    );
    let (msg, fields) = invalid(&t, req).await;
    assert_eq!(fields, vec!["inputs[0].datatype"]);
    assert!(
        msg.contains("is FP64") && msg.contains("needs FP32"),
        "{msg}"
    );

    let req = request(
        vec![features(vec![1, 11], "BYTES", "features")],
        vec![vec![0u8; 11]],
    );
    let (msg, _) = invalid(&t, req).await;
    assert!(msg.contains("unsupported datatype `BYTES`"), "{msg}");
}

#[tokio::test]
async fn wrong_shape_is_rejected() {
    let t = start(&committed_repository()).await;
    for shape in [vec![1, 12], vec![11], vec![1, 1, 11], vec![-1, 11]] {
        let n = shape.iter().map(|&d| d.max(1) as usize).product::<usize>();
        let req = request(
            vec![features(shape.clone(), "FP32", "features")],
            vec![raw_f32(&vec![0.0; n])],
        );
        let (msg, fields) = invalid(&t, req).await;
        assert_eq!(fields, vec!["inputs[0].shape"], "{shape:?}");
        assert!(msg.contains("[-1, 11]"), "{msg}");
    }
}

#[tokio::test]
async fn payload_size_must_match_the_shape() {
    let t = start(&committed_repository()).await;
    let req = request(
        vec![features(vec![2, 11], "FP32", "features")],
        vec![raw_f32(&[0.0; 11])],
    );
    let (msg, fields) = invalid(&t, req).await;
    assert_eq!(fields, vec!["raw_input_contents[0]"]);
    assert!(msg.contains("44 bytes") && msg.contains("need 88"), "{msg}");

    let mut typed = features(vec![2, 11], "FP32", "features");
    typed.contents = Some(InferTensorContents {
        fp32_contents: vec![0.0; 21],
        ..Default::default()
    });
    let (msg, fields) = invalid(&t, request(vec![typed], vec![])).await;
    assert_eq!(fields, vec!["inputs[0].contents"]);
    assert!(msg.contains("fp32_contents holds 21"), "{msg}");

    let (msg, fields) = invalid(
        &t,
        request(vec![features(vec![1, 11], "FP32", "features")], vec![]),
    )
    .await;
    assert_eq!(fields, vec!["inputs[0].contents"]);
    assert!(msg.contains("is empty"), "{msg}");
}

#[tokio::test]
async fn missing_input_unknown_output_and_zero_rows_are_rejected() {
    let t = start(&committed_repository()).await;
    let (msg, fields) = invalid(&t, request(vec![], vec![])).await;
    assert_eq!(fields, vec!["inputs"]);
    assert!(
        msg.contains("missing input `features` FP32 [-1, 11]"),
        "{msg}"
    );

    let mut req = request(
        vec![features(vec![1, 11], "FP32", "features")],
        vec![raw_f32(&[0.0; 11])],
    );
    req.outputs = vec![InferRequestedOutputTensor {
        name: "probability".into(),
        ..Default::default()
    }];
    let (msg, fields) = invalid(&t, req).await;
    assert_eq!(fields, vec!["outputs[0].name"]);
    assert!(msg.contains("scores, label"), "{msg}");

    let req = request(
        vec![features(vec![0, 11], "FP32", "features")],
        vec![vec![]],
    );
    let (msg, _) = invalid(&t, req).await;
    assert!(msg.contains("at least one row"), "{msg}");
}

#[tokio::test]
async fn unknown_models_and_versions_are_not_found_and_counted() {
    let t = start(&committed_repository()).await;
    let mut req = request(
        vec![features(vec![1, 11], "FP32", "features")],
        vec![raw_f32(&[0.0; 11])],
    );
    req.model_name = "no-such-model".into();
    let err = t.grpc.clone().model_infer(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no-such-model"), "{err}");

    req.model_name = "iforest".into();
    req.model_version = "7".into();
    let err = t.grpc.clone().model_infer(req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no version `7`"), "{err}");

    let bad = request(
        vec![features(vec![1, 12], "FP32", "features")],
        vec![raw_f32(&[0.0; 12])],
    );
    let _ = t.grpc.clone().model_infer(bad).await.unwrap_err();

    let text = t.server.metrics().encode();
    let errors = |labels: &str| {
        metric_value(
            &text,
            &format!("vigil_model_infer_errors_total{{{labels}}}"),
        )
    };
    assert_eq!(
        errors(r#"model="",version="",code="NotFound""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        errors(r#"model="iforest",version="7",code="NotFound""#),
        Some(1.0)
    );
    assert_eq!(
        errors(r#"model="iforest",version="1",code="InvalidArgument""#),
        Some(1.0)
    );
}

/// A request over `max_request_bytes` is refused before it is decoded or queued.
#[tokio::test]
async fn a_request_over_the_size_limit_is_refused() {
    let mut config = vigil_model_server::ServerConfig::new(committed_repository());
    config.max_request_bytes = 4096;
    let t = crate::common::start_with(config).await;
    let rows = 100; // 100 x 11 FP32 = 4400 bytes of payload
    let req = request(
        vec![features(vec![rows, 11], "FP32", "features")],
        vec![raw_f32(&vec![0.5; rows as usize * 11])],
    );
    let err = t.grpc.clone().model_infer(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(err.message().contains("too large"), "{err}");
    // A request under the limit still works.
    let req = request(
        vec![features(vec![1, 11], "FP32", "features")],
        vec![raw_f32(&[0.5; 11])],
    );
    t.grpc
        .clone()
        .model_infer(req)
        .await
        .expect("small request");
}
