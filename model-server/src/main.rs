//! `vigil-model-server`: serves the models of a repository over gRPC (Open Inference Protocol
//! v2 + health checking) and Prometheus metrics over HTTP, until SIGTERM or Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vigil_api::contract::model_server::ModelServerArgs;
use vigil_model_server::{ModelServer, ServerConfig};

/// Vigil model server: ONNX models over the Open Inference Protocol v2 (gRPC).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Repository and listen addresses: the flags the operator renders (vigil-api's contract).
    #[command(flatten)]
    contract: ModelServerArgs,
    /// Load only these models at startup (repeatable); default: every model in the repository.
    #[arg(
        long = "model",
        env = "VIGIL_MODEL_STARTUP_MODELS",
        value_delimiter = ','
    )]
    models: Vec<String>,
    /// ONNX Runtime threads per model execution (default: ONNX Runtime's, one per core).
    #[arg(long, env = "VIGIL_MODEL_INTRA_OP_THREADS")]
    intra_op_threads: Option<usize>,
    /// Report not-ready while any loaded model version is unavailable.
    #[arg(long, env = "VIGIL_MODEL_STRICT_READINESS")]
    strict_readiness: bool,
    /// Seconds between reporting not-ready and closing listeners on shutdown, so load balancers
    /// stop routing first.
    #[arg(long, env = "VIGIL_MODEL_SHUTDOWN_GRACE_SECS", default_value_t = 0)]
    shutdown_grace_secs: u64,
    /// Require `authorization: Bearer <token>` on RepositoryModelLoad / RepositoryModelUnload
    /// (ignored with --disable-repository-api).
    #[arg(long, env = "VIGIL_MODEL_REPOSITORY_API_TOKEN", hide_env_values = true)]
    repository_api_token: Option<String>,
    /// Largest inference request accepted, bytes (larger ones get OUT_OF_RANGE).
    #[arg(long, env = "VIGIL_MODEL_MAX_REQUEST_BYTES", default_value_t = vigil_model_server::config::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Log format (`text` or `json`).
    #[arg(long, env = vigil_telemetry::logging::LOG_FORMAT_ENV, value_enum, default_value_t)]
    log_format: vigil_telemetry::logging::LogFormat,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ModelServerArgs {
        repository,
        grpc_addr,
        metrics_addr,
        disable_repository_api,
        tls_cert,
        tls_key,
        tls_client_ca,
    } = args.contract.clone();
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("failed to read the TLS {what} {}", p.display()))
    };
    let tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => Some(vigil_model_server::config::ServerTls {
            cert_pem: read(cert, "certificate")?,
            key_pem: read(key, "key")?,
            client_ca_pem: tls_client_ca
                .as_deref()
                .map(|ca| read(ca, "client CA"))
                .transpose()?,
        }),
        _ => None,
    };
    let repository_api = match (disable_repository_api, &args.repository_api_token) {
        (true, _) => vigil_model_server::config::RepositoryApi::Disabled,
        (false, Some(t)) => vigil_model_server::config::RepositoryApi::Token(t.clone()),
        (false, None) => vigil_model_server::config::RepositoryApi::Open,
    };
    let _telemetry = vigil_telemetry::logging::init(
        args.log_format,
        "info",
        vigil_telemetry::trace::Defaults::MODEL_SERVER,
    );

    let config = ServerConfig {
        repository: repository.clone(),
        startup_models: (!args.models.is_empty()).then(|| args.models.clone()),
        ort_dylib_path: None,
        intra_op_threads: args.intra_op_threads,
        strict_readiness: args.strict_readiness,
        max_request_bytes: args.max_request_bytes,
        repository_api,
        tls,
    };
    let server = ModelServer::start(config)
        .await
        .context("failed to start the model server")?;
    let grpc = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("failed to bind gRPC address {}", grpc_addr))?;
    let metrics = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("failed to bind metrics address {}", metrics_addr))?;
    tracing::info!(
        grpc = %grpc_addr,
        metrics = %metrics_addr,
        repository = %repository.display(),
        tls = tls_cert.is_some(),
        client_auth = tls_client_ca.is_some(),
        "Model server listening."
    );

    let server = std::sync::Arc::new(server);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    {
        let server = server.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!(grace_secs = grace.as_secs(), "Shutting down.");
            server.begin_shutdown().await;
            tokio::time::sleep(grace).await;
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (grpc_result, metrics_result) = tokio::join!(
        server.serve(grpc, stopped(stop_rx.clone())),
        server.serve_metrics(metrics, stopped(stop_rx)),
    );
    grpc_result.context("gRPC server failed")?;
    metrics_result.context("metrics server failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line the operator renders for model-server pods parses with this binary's
    /// own parser (it once passed flags the binary did not have, and the pods exited with 2).
    #[test]
    fn operator_rendered_command_parses() {
        let rendered = ModelServerArgs::in_pod();
        let argv = std::iter::once(vigil_api::contract::model_server::BINARY.to_string())
            .chain(rendered.to_args());
        let parsed = Args::try_parse_from(argv).unwrap();
        assert_eq!(parsed.contract, rendered);
        assert!(parsed.contract.grpc_addr.ip().is_unspecified());
    }
}
