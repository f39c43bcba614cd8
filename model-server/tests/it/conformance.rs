//! Protocol conformance: every RPC of `inference.GRPCInferenceService` and grpc.health.v1, and
//! inference results equal to the training framework's on held-back rows.

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use vigil_model_server::client::InferenceClient;
use vigil_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use vigil_proto::inference::{
    InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
    RepositoryIndexRequest, ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};

use crate::common::{
    TestVectors, assert_close, committed_repository, from_raw_f32, from_raw_i64, raw_f32, start,
};

/// A raw-encoded request for `vectors`' input.
pub fn raw_request(v: &TestVectors, version: &str) -> ModelInferRequest {
    ModelInferRequest {
        model_name: v.model.clone(),
        model_version: version.to_owned(),
        id: "req-1".into(),
        inputs: vec![InferInputTensor {
            name: v.input.name.clone(),
            datatype: "FP32".into(),
            shape: v.input.shape.clone(),
            ..Default::default()
        }],
        raw_input_contents: vec![raw_f32(&v.input_f32()).into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn server_live_ready_and_metadata() {
    let t = start(&committed_repository()).await;
    let mut c = t.grpc.clone();
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "vigil-model-server");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(meta.extensions, vec!["model_repository".to_owned()]);
}

#[tokio::test]
async fn model_ready_distinguishes_known_and_unknown() {
    let t = start(&committed_repository()).await;
    let mut c = t.grpc.clone();
    for (name, version, want) in [
        ("iforest", "", true),
        ("iforest", "1", true),
        ("lstm-ae", "1", true),
        ("iforest", "9", false),
        ("iforest", "latest", false),
        ("no-such-model", "", false),
    ] {
        let ready = c
            .model_ready(ModelReadyRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .ready;
        assert_eq!(ready, want, "{name} version {version:?}");
    }
}

#[tokio::test]
async fn model_metadata_reports_the_config() {
    let t = start(&committed_repository()).await;
    let mut c = t.grpc.clone();
    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: "iforest".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "iforest");
    assert_eq!(meta.versions, vec!["1".to_owned()]);
    assert_eq!(meta.platform, "onnxruntime_onnx");
    assert_eq!(meta.inputs.len(), 1);
    assert_eq!(
        (
            meta.inputs[0].name.as_str(),
            meta.inputs[0].datatype.as_str(),
            meta.inputs[0].shape.clone()
        ),
        ("features", "FP32", vec![-1, 11])
    );
    let outputs: Vec<(&str, &str)> = meta
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.datatype.as_str()))
        .collect();
    assert_eq!(outputs, vec![("scores", "FP32"), ("label", "INT64")]);

    let err = c
        .model_metadata(ModelMetadataRequest {
            name: "no-such-model".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn model_infer_reproduces_the_training_framework() {
    let t = start(&committed_repository()).await;
    let mut c = t.grpc.clone();

    let v = TestVectors::load("iforest-1.json");
    let resp = c
        .model_infer(raw_request(&v, "1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (resp.model_name.as_str(), resp.model_version.as_str()),
        ("iforest", "1")
    );
    assert_eq!(resp.id, "req-1");
    let names: Vec<&str> = resp.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["scores", "label"]);
    assert_eq!(resp.outputs[0].shape, vec![v.rows() as i64, 1]);
    assert_eq!(resp.outputs[1].datatype, "INT64");
    assert_close(
        &from_raw_f32(&resp.raw_output_contents[0]),
        &v.outputs["scores"].data,
        1e-4,
        "iforest scores vs scikit-learn decision_function",
    );
    let labels = from_raw_i64(&resp.raw_output_contents[1]);
    let want: Vec<i64> = v.outputs["label"].data.iter().map(|&x| x as i64).collect();
    assert_eq!(labels, want, "iforest labels vs scikit-learn predict");

    let v = TestVectors::load("lstm-ae-1.json");
    assert_eq!(v.input.shape[1..], [6, 11]);
    let resp = c
        .model_infer(raw_request(&v, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.model_version, "1",
        "empty version picks the highest ready one"
    );
    assert_eq!(resp.outputs[0].name, "score");
    assert_close(
        &from_raw_f32(&resp.raw_output_contents[0]),
        &v.outputs["score"].data,
        1e-4,
        "lstm-ae score vs numpy",
    );
    assert_eq!(resp.outputs[1].shape, vec![v.rows() as i64, 6, 11]);
}

#[tokio::test]
async fn typed_contents_are_answered_in_typed_contents() {
    let t = start(&committed_repository()).await;
    let v = TestVectors::load("iforest-1.json");
    let req = ModelInferRequest {
        model_name: "iforest".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: v.input.shape.clone(),
            contents: Some(InferTensorContents {
                fp32_contents: v.input_f32(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "scores".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = t.grpc.clone().model_infer(req).await.unwrap().into_inner();
    assert!(resp.raw_output_contents.is_empty());
    assert_eq!(resp.outputs.len(), 1, "only the requested output");
    let scores = &resp.outputs[0].contents.as_ref().unwrap().fp32_contents;
    assert_close(scores, &v.outputs["scores"].data, 1e-4, "typed scores");
}

#[tokio::test]
async fn requested_outputs_come_back_in_request_order() {
    let t = start(&committed_repository()).await;
    let v = TestVectors::load("iforest-1.json");
    let mut req = raw_request(&v, "1");
    req.outputs = ["label", "scores"]
        .into_iter()
        .map(|n| InferRequestedOutputTensor {
            name: n.into(),
            ..Default::default()
        })
        .collect();
    let resp = t.grpc.clone().model_infer(req).await.unwrap().into_inner();
    let names: Vec<&str> = resp.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["label", "scores"]);
    assert_eq!(resp.raw_output_contents[0].len(), v.rows() * 8);
    assert_eq!(resp.raw_output_contents[1].len(), v.rows() * 4);
}

#[tokio::test]
async fn repository_index_lists_every_version() {
    let t = start(&committed_repository()).await;
    let idx = t
        .grpc
        .clone()
        .repository_index(RepositoryIndexRequest {
            repository_name: String::new(),
            ready: false,
        })
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(String, String, String)> = idx
        .models
        .into_iter()
        .map(|m| (m.name, m.version, m.state))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("iforest".into(), "1".into(), "READY".into()),
            ("lstm-ae".into(), "1".into(), "READY".into()),
        ]
    );
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let t = start(&committed_repository()).await;
    let mut health = crate::common::health_client(&t).await;
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn inference_client_scores_rows() {
    let t = start(&committed_repository()).await;
    let client = InferenceClient::connect(t.uri.clone()).await.unwrap();

    let v = TestVectors::load("iforest-1.json");
    let scores = client
        .infer("iforest", "1", &v.input_f32(), 11)
        .await
        .unwrap();
    assert_close(&scores, &v.outputs["scores"].data, 1e-4, "client iforest");

    let v = TestVectors::load("lstm-ae-1.json");
    let scores = client
        .infer("lstm-ae", "", &v.input_f32(), 66)
        .await
        .unwrap();
    assert_close(&scores, &v.outputs["score"].data, 1e-4, "client lstm-ae");

    let err = client
        .infer("iforest", "1", &[0.0; 12], 12)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not 12"), "{err}");
    let err = client
        .infer("iforest", "1", &[0.0; 12], 11)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test]
async fn metrics_endpoint_serves_per_version_metrics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let t = start(&committed_repository()).await;
    let v = TestVectors::load("iforest-1.json");
    t.grpc
        .clone()
        .model_infer(raw_request(&v, "1"))
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = t.server.clone();
    tokio::spawn(async move { server.serve_metrics(listener, std::future::pending()).await });
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let labels = r#"{model="iforest",version="1"}"#;
    for (sample, want) in [
        ("vigil_model_infer_requests_total", 1.0),
        ("vigil_model_infer_rows_total", v.rows() as f64),
        ("vigil_model_infer_request_duration_seconds_count", 1.0),
        ("vigil_model_queue_duration_seconds_count", 1.0),
        ("vigil_model_batch_rows_sum", v.rows() as f64),
        ("vigil_model_ready", 1.0),
    ] {
        let got = crate::common::metric_value(&body, &format!("{sample}{labels}"));
        assert_eq!(got, Some(want), "{sample}");
    }
}
