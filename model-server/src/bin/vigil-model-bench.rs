//! `vigil-model-bench`: the same ONNX model run in-process with `ort` and through the model
//! server over loopback gRPC, at several batch sizes; prints rows/s and per-call p50/p99, then a
//! `BENCH ...` summary line for batch 256.
//!
//! ```text
//! eval "$(scripts/setup-onnxruntime.sh)"
//! cargo run --release -p vigil-model-server --bin vigil-model-bench
//! ```
//! Both sides use the same session options (`--intra-op-threads`, default 1). The server side
//! goes through [`vigil_model_server::client::InferenceClient`] (what the detector uses), one
//! call in flight; the last column adds `--clients` concurrent callers (dynamic batching).
//! The two sides alternate in `--rounds` short rounds; `ratio` is the median over rounds of
//! server rows/s / in-process rows/s (the range follows it), which keeps a busy machine's load
//! bursts from landing on one side only. `b1_overhead_p99_ms` = server p99 - in-process p99 at
//! batch 1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use vigil_model_server::client::InferenceClient;
use vigil_model_server::repository::ModelRepository;
use vigil_model_server::runtime::{self, OnnxSession};
use vigil_model_server::tensor::{Tensor, TensorData};
use vigil_model_server::{ModelServer, ServerConfig};

/// In-process ONNX Runtime vs the model server over loopback gRPC.
#[derive(Debug, Parser)]
struct Args {
    /// Model repository.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/repository"))]
    repository: PathBuf,
    /// Model to benchmark (a model with one FP32 input [-1, F] and a per-row first output).
    #[arg(long, default_value = "iforest")]
    model: String,
    /// Version.
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// Batch sizes (rows per call).
    #[arg(long, value_delimiter = ',', default_value = "1,64,256,1024")]
    batches: Vec<usize>,
    /// Measured seconds per batch size and side (after a short warm-up).
    #[arg(long, default_value_t = 3.5)]
    seconds: f64,
    /// Alternating rounds per side and batch size (`--seconds` is split between them).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// ONNX Runtime intra-op threads, same on both sides.
    #[arg(long, default_value_t = 1)]
    intra_op_threads: usize,
    /// Concurrent clients for an extra server-throughput row per batch size (0 = skip).
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

#[derive(Clone, Copy, Debug)]
struct Stats {
    rows_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Per-call latencies and the wall time they took.
#[derive(Debug, Default)]
struct Samples {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
    }

    fn rows_per_s(&self, rows_per_call: usize) -> f64 {
        (self.latencies.len() * rows_per_call) as f64 / self.wall.as_secs_f64()
    }

    fn stats(mut self, rows_per_call: usize) -> Stats {
        let rows_per_s = self.rows_per_s(rows_per_call);
        self.latencies.sort_unstable();
        let pick = |q: f64| {
            let idx = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies[idx].as_secs_f64() * 1e3
        };
        Stats {
            rows_per_s,
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
        }
    }
}

/// `batch` rows taken cyclically from the model's test vectors (real window features).
fn rows(model: &str, version: u64, batch: usize) -> anyhow::Result<(Vec<f32>, usize)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/testdata")
        .join(format!("{model}-{version}.json"));
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?,
    )?;
    let shape: Vec<usize> = serde_json::from_value(doc["input"]["shape"].clone())?;
    let data: Vec<f32> = serde_json::from_value(doc["input"]["data"].clone())?;
    let row_len: usize = shape[1..].iter().product();
    let n = shape[0];
    let out = (0..batch)
        .flat_map(|i| {
            data[(i % n) * row_len..(i % n + 1) * row_len]
                .iter()
                .copied()
        })
        .collect();
    Ok((out, row_len))
}

fn bench_inproc(
    session: &mut OnnxSession,
    input: &str,
    row_shape: &[i64],
    data: &[f32],
    batch: usize,
    seconds: f64,
) -> anyhow::Result<Samples> {
    let mut shape = vec![batch as i64];
    shape.extend_from_slice(row_shape);
    let mut samples = Samples::default();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || samples.latencies.len() < 10 {
        let t = Instant::now();
        let feed = Tensor {
            shape: shape.clone(),
            data: TensorData::Fp32(data.to_vec()),
        };
        let out = session.run(vec![(input.to_owned(), feed)])?;
        std::hint::black_box(out);
        samples.latencies.push(t.elapsed());
    }
    samples.wall = start.elapsed();
    Ok(samples)
}

/// The served model a benchmark calls.
#[derive(Clone)]
struct Target {
    client: InferenceClient,
    model: String,
    version: String,
    row_len: usize,
}

impl Target {
    async fn call(&self, data: &[f32]) -> anyhow::Result<usize> {
        let scores = self
            .client
            .infer(&self.model, &self.version, data, self.row_len)
            .await?;
        Ok(scores.len())
    }
}

async fn bench_server(
    target: &Target,
    data: Arc<Vec<f32>>,
    batch: usize,
    seconds: f64,
    clients: usize,
) -> anyhow::Result<Samples> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (target, data) = (target.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed().as_secs_f64() < seconds || lat.len() < 10 {
                let t = Instant::now();
                let n = target.call(&data).await?;
                lat.push(t.elapsed());
                anyhow::ensure!(n == batch, "got {n} scores for {batch} rows");
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut samples = Samples::default();
    for t in tasks {
        samples.latencies.extend(t.await??);
    }
    samples.wall = start.elapsed();
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = runtime::init(None)?;
    let verified =
        ModelRepository::new(&args.repository).read_version(&args.model, args.version)?;
    let input = verified.config.inputs[0].name.clone();
    let row_shape = verified.config.inputs[0].shape[1..].to_vec();
    let mut session = OnnxSession::new(
        env,
        &verified.artifact,
        &verified.config,
        Some(args.intra_op_threads),
    )?;

    let mut config = ServerConfig::new(&args.repository);
    config.startup_models = Some(vec![args.model.clone()]);
    config.intra_op_threads = Some(args.intra_op_threads);
    let server = Arc::new(ModelServer::start(config).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let uri = format!("http://{}", listener.local_addr()?);
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    let mut target = Target {
        client: InferenceClient::connect(uri).await?,
        model: args.model.clone(),
        version: args.version.to_string(),
        row_len: 0,
    };

    println!(
        "model={} version={} intra_op_threads={} seconds={} (latencies are per call)",
        args.model, args.version, args.intra_op_threads, args.seconds
    );
    println!(
        "{:>6} | {:>12} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>16} | {:>16}",
        "batch",
        "inproc row/s",
        "p50 ms",
        "p99 ms",
        "server row/s",
        "p50 ms",
        "p99 ms",
        "ratio (rounds)",
        format!("{} clients row/s", args.clients)
    );
    let mut results = Vec::new();
    for &batch in &args.batches {
        let (data, row_len) = rows(&args.model, args.version, batch)?;
        target.row_len = row_len;
        let data = Arc::new(data);
        // Warm up both sides, then alternate short rounds so load changes on the machine hit
        // both sides alike.
        bench_inproc(&mut session, &input, &row_shape, &data, batch, 0.3)?;
        bench_server(&target, data.clone(), batch, 0.3, 1).await?;
        let (mut inproc, mut served) = (Samples::default(), Samples::default());
        let mut round_ratios = Vec::with_capacity(args.rounds);
        let round = args.seconds / args.rounds as f64;
        for _ in 0..args.rounds {
            // Off the async worker, so the server's tasks are not queued behind it.
            let local = tokio::task::block_in_place(|| {
                bench_inproc(&mut session, &input, &row_shape, &data, batch, round)
            })?;
            let remote = bench_server(&target, data.clone(), batch, round, 1).await?;
            round_ratios.push(remote.rows_per_s(batch) / local.rows_per_s(batch));
            inproc.add(local);
            served.add(remote);
        }
        round_ratios.sort_by(f64::total_cmp);
        let ratio = round_ratios[round_ratios.len() / 2];
        let spread = format!(
            "{:.2}-{:.2}",
            round_ratios[0],
            round_ratios[round_ratios.len() - 1]
        );
        let (inproc, server_stats) = (inproc.stats(batch), served.stats(batch));
        let concurrent = if args.clients > 1 {
            let s = bench_server(&target, data, batch, args.seconds, args.clients).await?;
            format!("{:.0}", s.stats(batch).rows_per_s)
        } else {
            "-".to_owned()
        };
        println!(
            "{batch:>6} | {:>12.0} {:>8.3} {:>8.3} | {:>12.0} {:>8.3} {:>8.3} | {ratio:>6.3} {spread:>9} | {concurrent:>16}",
            inproc.rows_per_s,
            inproc.p50_ms,
            inproc.p99_ms,
            server_stats.rows_per_s,
            server_stats.p50_ms,
            server_stats.p99_ms,
        );
        results.push((batch, inproc, server_stats, ratio));
    }

    let at = |b: usize| results.iter().find(|(batch, ..)| *batch == b);
    let (_, inproc_256, server_256, ratio_256) =
        at(256).context("the summary needs batch 256 in --batches")?;
    let (_, inproc_1, server_1, _) = at(1).context("the summary needs batch 1 in --batches")?;
    println!(
        "BENCH model={} batch=256 server_rows_per_s={:.0} inproc_rows_per_s={:.0} ratio={:.3} b1_overhead_p99_ms={:.3}",
        args.model,
        server_256.rows_per_s,
        inproc_256.rows_per_s,
        ratio_256,
        server_1.p99_ms - inproc_1.p99_ms,
    );
    Ok(())
}
