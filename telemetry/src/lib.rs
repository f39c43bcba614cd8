//! The one `/metrics` handler of Vigil's three binaries (detector, model server, operator):
//! a prometheus-client registry encoded in the OpenMetrics text format, served with that
//! format's content type (`application/openmetrics-text; version=1.0.0; charset=utf-8`, as
//! the OpenMetrics 1.0 specification and Prometheus' scrape negotiation name it), plus
//! `/healthz`. What each binary measures stays in its own telemetry module; how it is exposed
//! lives here, and so do the log format ([`logging`]) and OpenTelemetry traces ([`trace`]).

pub mod logging;
pub mod trace;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Content type of the OpenMetrics text exposition that `prometheus_client::encoding::text`
/// writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Something that can write its metrics in the OpenMetrics text format.
pub trait Exposition: Send + Sync + 'static {
    /// The text exposition, ending with `# EOF`.
    fn encode(&self) -> String;
}

impl Exposition for Registry {
    fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, self)
            .expect("writing to a String cannot fail");
        out
    }
}

impl<T: Exposition> Exposition for Arc<T> {
    fn encode(&self) -> String {
        T::encode(self)
    }
}

impl<T: Exposition> Exposition for Mutex<T> {
    fn encode(&self) -> String {
        self.lock().unwrap_or_else(|e| e.into_inner()).encode()
    }
}

/// `GET /metrics` (OpenMetrics text) and `GET /healthz` (`ok`).
pub fn router(metrics: impl Exposition + Clone) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                        m.encode(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn serves_openmetrics_with_its_content_type() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("vigil_test_events", "Events.", c.clone());
        c.inc();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::new(registry));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let lower = response.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{response}");
        assert!(
            lower.contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
            "{response}"
        );
        assert!(response.contains("vigil_test_events_total 1"), "{response}");
        assert!(response.trim_end().ends_with("# EOF"), "{response}");
    }
}
