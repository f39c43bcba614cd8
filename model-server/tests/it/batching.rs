//! Dynamic batching under concurrent clients: every response holds exactly its own rows, in
//! order; batches really form (fewer executions than requests) and never exceed
//! `max_batch_size`.

use std::sync::Arc;

use tokio::sync::Barrier;
use vigil_model_server::repository::ModelRepository;
use vigil_model_server::runtime::{self, OnnxSession};
use vigil_model_server::tensor::{Tensor, TensorData};
use vigil_proto::inference::ModelInferRequest;
use vigil_proto::inference::model_infer_request::InferInputTensor;

use crate::common::{
    TestServer, TestVectors, from_raw_f32, metric_value, raw_f32, repository_copy, set_config_line,
    start,
};

const ROW: usize = 6 * 11; // lstm-ae: 6 windows of 11 features

/// `n` distinct lstm-ae input rows: the held-back rows, each scaled and shifted differently.
fn distinct_rows(n: usize) -> Vec<f32> {
    let v = TestVectors::load("lstm-ae-1.json");
    let base = v.input_f32();
    let base_rows = v.rows();
    (0..n)
        .flat_map(|i| {
            let row = &base[(i % base_rows) * ROW..(i % base_rows + 1) * ROW];
            let (scale, shift) = (1.0 + 0.002 * i as f32, 0.5 * i as f32);
            row.iter()
                .map(move |x| x * scale + shift)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Scores of `rows` computed in-process in one ONNX Runtime call (the reference).
fn reference_scores(repo: &std::path::Path, rows: &[f32]) -> Vec<f32> {
    let env = runtime::init(None).expect("ONNX Runtime loads");
    let verified = ModelRepository::new(repo)
        .read_version("lstm-ae", 1)
        .unwrap();
    let mut session = OnnxSession::new(env, &verified.artifact, &verified.config, Some(1)).unwrap();
    let n = (rows.len() / ROW) as i64;
    let out = session
        .run(vec![(
            "windows".into(),
            Tensor {
                shape: vec![n, 6, 11],
                data: TensorData::Fp32(rows.to_vec()),
            },
        )])
        .unwrap();
    match &out[0].data {
        TensorData::Fp32(v) => v.clone(),
        other => panic!("score is FP32, got {:?}", other.datatype()),
    }
}

fn request(id: usize, rows: &[f32]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "lstm-ae".into(),
        model_version: "1".into(),
        id: id.to_string(),
        inputs: vec![InferInputTensor {
            name: "windows".into(),
            datatype: "FP32".into(),
            shape: vec![(rows.len() / ROW) as i64, 6, 11],
            ..Default::default()
        }],
        raw_input_contents: vec![raw_f32(rows).into()],
        ..Default::default()
    }
}

/// Sends `sizes.len()` requests at once (request `i` carries `sizes[i]` consecutive rows of
/// `rows`) and checks each response against `reference`. Returns the number of requests.
async fn concurrent_round(
    t: &TestServer,
    rows: &Arc<Vec<f32>>,
    reference: &Arc<Vec<f32>>,
    sizes: &[usize],
) {
    let barrier = Arc::new(Barrier::new(sizes.len()));
    let mut tasks = Vec::new();
    let mut offset = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let (rows, reference, barrier) = (rows.clone(), reference.clone(), barrier.clone());
        let mut grpc = t.grpc.clone();
        let start = offset;
        offset += n;
        tasks.push(tokio::spawn(async move {
            let mine = &rows[start * ROW..(start + n) * ROW];
            barrier.wait().await;
            let resp = grpc
                .model_infer(request(i, mine))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(resp.id, i.to_string(), "response id");
            assert_eq!(resp.outputs[0].shape, vec![n as i64, 1]);
            assert_eq!(resp.outputs[1].shape, vec![n as i64, 6, 11]);
            let got = from_raw_f32(&resp.raw_output_contents[0]);
            for (k, g) in got.iter().enumerate() {
                let want = reference[start + k];
                assert!(
                    (g - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "request {i} row {k}: got {g}, want {want} (row {})",
                    start + k
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_clients_get_exactly_their_rows() {
    let repo = repository_copy();
    set_config_line(repo.path(), "lstm-ae", 1, "max_batch_size", "64");
    set_config_line(repo.path(), "lstm-ae", 1, "max_queue_delay_us", "20000");
    let sizes: Vec<usize> = (0..40).map(|i| 1 + i % 5).collect();
    let total: usize = sizes.iter().sum();
    let rows = Arc::new(distinct_rows(total));
    let reference = Arc::new(reference_scores(repo.path(), &rows));

    // The check below could not tell swapped rows apart if two rows scored alike.
    let mut sorted = reference.to_vec();
    sorted.sort_by(f32::total_cmp);
    let min_gap = sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f32::INFINITY, f32::min);
    assert!(
        min_gap > 1e-4,
        "reference scores too close to detect a swap: {min_gap}"
    );

    let t = start(repo.path()).await;
    concurrent_round(&t, &rows, &reference, &sizes).await;

    let text = t.server.metrics().encode();
    let labels = r#"{model="lstm-ae",version="1"}"#;
    let batches = metric_value(&text, &format!("vigil_model_batch_rows_count{labels}")).unwrap();
    let batch_rows = metric_value(&text, &format!("vigil_model_batch_rows_sum{labels}")).unwrap();
    assert_eq!(batch_rows, total as f64, "every row executed exactly once");
    assert!(
        batches < sizes.len() as f64 / 2.0,
        "{} requests ran in {batches} batches: dynamic batching did not combine them",
        sizes.len()
    );
    let requests = metric_value(&text, &format!("vigil_model_infer_requests_total{labels}"));
    assert_eq!(requests, Some(sizes.len() as f64));
}

#[tokio::test]
async fn batches_never_exceed_max_batch_size() {
    let repo = repository_copy();
    set_config_line(repo.path(), "lstm-ae", 1, "max_batch_size", "8");
    set_config_line(repo.path(), "lstm-ae", 1, "max_queue_delay_us", "20000");
    let mut sizes = vec![3; 20];
    sizes.push(20); // larger than max_batch_size: runs alone, unsplit
    let total: usize = sizes.iter().sum();
    let rows = Arc::new(distinct_rows(total));
    let reference = Arc::new(reference_scores(repo.path(), &rows));
    let t = start(repo.path()).await;
    concurrent_round(&t, &rows, &reference, &sizes).await;

    let text = t.server.metrics().encode();
    let labels = r#"model="lstm-ae",version="1""#;
    let count = metric_value(&text, &format!("vigil_model_batch_rows_count{{{labels}}}")).unwrap();
    let within_8 = metric_value(
        &text,
        &format!("vigil_model_batch_rows_bucket{{le=\"8.0\",{labels}}}"),
    )
    .unwrap();
    let within_16 = metric_value(
        &text,
        &format!("vigil_model_batch_rows_bucket{{le=\"16.0\",{labels}}}"),
    )
    .unwrap();
    assert_eq!(
        within_8,
        count - 1.0,
        "only the oversized request exceeds 8 rows:\n{text}"
    );
    assert_eq!(
        within_16,
        count - 1.0,
        "the oversized request ran alone (20 rows)"
    );
    assert!(
        count < 20.0,
        "3-row requests were batched in pairs: {count} batches"
    );
}

#[tokio::test]
async fn without_batching_each_request_runs_alone() {
    let repo = repository_copy();
    set_config_line(repo.path(), "lstm-ae", 1, "max_batch_size", "0");
    let sizes = vec![2; 6];
    let rows = Arc::new(distinct_rows(12));
    let reference = Arc::new(reference_scores(repo.path(), &rows));
    let t = start(repo.path()).await;
    concurrent_round(&t, &rows, &reference, &sizes).await;
    let text = t.server.metrics().encode();
    let count = metric_value(
        &text,
        r#"vigil_model_batch_rows_count{model="lstm-ae",version="1"}"#,
    );
    assert_eq!(count, Some(6.0));
}
