//! `vigil-operator`: parses flags, sets up logging, the HTTP endpoint and leader election,
//! runs the controllers, and shuts down on SIGTERM/SIGINT (in-flight reconciles finish, the
//! Lease is released).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use vigil_operator::config::OperatorConfig;
use vigil_operator::leader::{LeaseConfig, campaign};
use vigil_operator::metrics::Metrics;
use vigil_operator::{controller, server};

/// Kubernetes operator for Vigil StreamPipelines, DetectionRules and AnomalyModels.
#[derive(Parser, Debug)]
#[command(name = "vigil-operator", version)]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "VIGIL_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Run the controllers only while holding the leader Lease.
    #[arg(long, env = "VIGIL_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "VIGIL_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "vigil-operator")]
    lease_name: String,
    /// Image of detector pods (runs `vigil run`).
    #[arg(
        long,
        env = "VIGIL_DETECTOR_IMAGE",
        default_value = "ghcr.io/vigil-dev/vigil:0.1.0"
    )]
    detector_image: String,
    /// Image of model-server pods (runs `vigil-model-server`).
    #[arg(
        long,
        env = "VIGIL_MODEL_SERVER_IMAGE",
        default_value = "ghcr.io/vigil-dev/vigil-model-server:0.1.0"
    )]
    model_server_image: String,
    /// Image of the init container that fetches model artifacts (sh, curl, sha256sum).
    #[arg(
        long,
        env = "VIGIL_ARTIFACT_FETCHER_IMAGE",
        default_value = "docker.io/curlimages/curl:8.11.1"
    )]
    artifact_fetcher_image: String,
    /// `imagePullPolicy` of created containers (default: Kubernetes' default).
    #[arg(long, env = "VIGIL_IMAGE_PULL_POLICY")]
    image_pull_policy: Option<String>,
    /// Kafka `bootstrap.servers` for pipelines that do not set one.
    #[arg(long, env = "VIGIL_KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// Longest wait for one Kafka metadata request.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    kafka_metadata_timeout: Duration,
    /// How long partition counts read from Kafka are reused.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    kafka_metadata_ttl: Duration,
    /// Every object is reconciled at least this often.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// Render a NetworkPolicy per pipeline and per model server (ingress: detectors' metrics
    /// port; model servers' gRPC port from detector pods and metrics port). Needs RBAC on
    /// networking.k8s.io networkpolicies (the chart's `networkPolicy.enabled`).
    #[arg(long, env = "VIGIL_NETWORK_POLICIES")]
    network_policies: bool,
    /// Log format (`text` or `json`); also set on the detector and model-server containers
    /// the operator renders (`VIGIL_LOG_FORMAT`).
    #[arg(long, env = vigil_telemetry::logging::LOG_FORMAT_ENV, value_enum, default_value_t)]
    log_format: vigil_telemetry::logging::LogFormat,
}

/// How long in-flight reconciles may take after SIGTERM before the process exits anyway
/// (below the chart's terminationGracePeriodSeconds of 30).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs `controllers` to completion, but gives up `SHUTDOWN_GRACE` after `stop` resolves
/// (a reconcile stuck on an unreachable API server must not hold the process).
async fn run_until_stopped(
    controllers: impl std::future::Future<Output = ()>,
    stop: Shared<BoxFuture<'static, ()>>,
) {
    let deadline = async move {
        stop.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = controllers => {}
        () = deadline => tracing::warn!(grace = ?SHUTDOWN_GRACE, "In-flight reconciles did not finish in time; exiting anyway."),
    }
}

/// Resolves on SIGTERM or SIGINT, or when the HTTP endpoint fails.
fn shutdown_signal(
    http_failed: tokio::sync::oneshot::Receiver<()>,
) -> Shared<BoxFuture<'static, ()>> {
    async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down."),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down."),
            Ok(()) = http_failed => tracing::error!("The HTTP endpoint failed; shutting down."),
        }
    }
    .boxed()
    .shared()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One rustls provider for the whole process (kube's and the savepoint requests' clients).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _telemetry = vigil_telemetry::logging::init(
        args.log_format,
        "info,kube_lease_manager=warn,rdkafka=warn",
        vigil_telemetry::trace::Defaults::OPERATOR,
    );

    let client = kube::Client::try_default()
        .await
        .context("failed to build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());
    let (http_failed_tx, http_failed) = tokio::sync::oneshot::channel();
    let signal = shutdown_signal(http_failed);
    let http = tokio::spawn({
        let (metrics, signal, addr) = (metrics.clone(), signal.clone(), args.metrics_addr);
        async move {
            let result = server::serve(addr, metrics, signal).await;
            if result.is_err() {
                let _ = http_failed_tx.send(());
            }
            result
        }
    });

    let config = OperatorConfig {
        detector_image: args.detector_image,
        model_server_image: args.model_server_image,
        artifact_fetcher_image: args.artifact_fetcher_image,
        image_pull_policy: args.image_pull_policy,
        default_bootstrap_servers: args.kafka_bootstrap_servers,
        kafka_metadata_timeout: args.kafka_metadata_timeout,
        kafka_metadata_ttl: args.kafka_metadata_ttl,
        resync: args.resync,
        network_policies: args.network_policies,
        log_format: args.log_format,
        otel_env: vigil_telemetry::trace::forwarded_env(),
    };

    let mut lost_leadership = false;
    if args.leader_elect {
        let lease = LeaseConfig {
            namespace: args
                .lease_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into()),
            name: args.lease_name,
            identity: std::env::var("POD_NAME").unwrap_or_else(|_| {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "vigil-operator".into());
                format!("{host}-{}", std::process::id())
            }),
            duration_s: 15,
            grace_s: 5,
        };
        let mut campaign = campaign(client.clone(), &lease).await?;
        tracing::info!(identity = %lease.identity, lease = %lease.name, namespace = %lease.namespace, "Waiting for the leader Lease.");
        let acquired = tokio::select! {
            _ = campaign.acquired() => true,
            _ = signal.clone() => false,
        };
        if acquired {
            tracing::info!("Acquired the leader Lease; starting the controllers.");
            metrics.leader.set(1);
            let lost = campaign.lost().shared();
            let stop = {
                let (signal, lost) = (signal.clone(), lost.clone());
                async move {
                    tokio::select! {
                        _ = signal => {},
                        _ = lost => tracing::error!("Lost the leader Lease; stopping the controllers."),
                    }
                }
                .boxed()
                .shared()
            };
            run_until_stopped(
                controller::run(
                    client,
                    config,
                    metrics.clone(),
                    args.namespace,
                    stop.clone(),
                ),
                stop,
            )
            .await;
            metrics.leader.set(0);
            lost_leadership = lost.now_or_never().is_some();
        }
        campaign.release(Duration::from_secs(5)).await;
    } else {
        run_until_stopped(
            controller::run(
                client,
                config,
                metrics.clone(),
                args.namespace,
                signal.clone(),
            ),
            signal.clone(),
        )
        .await;
    }
    if lost_leadership {
        // Restarting is the simplest way to campaign again with clean caches.
        anyhow::bail!("lost the leader Lease");
    }
    if http.is_finished() {
        // The endpoint failed (e.g. the address is taken): say why, exit non-zero.
        http.await?.context("the HTTP endpoint failed")?;
    } else {
        http.abort();
    }
    tracing::info!("Stopped.");
    Ok(())
}
