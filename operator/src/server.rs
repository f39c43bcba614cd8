//! The operator's HTTP endpoint: `/metrics` (OpenMetrics text, the handler shared by Vigil's
//! binaries), `/healthz` and `/readyz` (200 while the process serves requests).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;

use crate::metrics::Metrics;

/// Failure to start the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("failed to bind {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves until `shutdown` resolves.
///
/// # Errors
/// [`ServerError`] when binding or serving fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = vigil_telemetry::router(metrics).route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve)
}
