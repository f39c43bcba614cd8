//! What the receivers share: the HTTP client, one post with the retry rule every receiver's
//! API documents (retry network errors, 5xx and 429; not other 4xx), jittered exponential
//! backoff from 200 ms doubling to 5 s for 5 retries (`backon`), and the worker of the
//! receivers that post one request per alert transition (PagerDuty, webhooks).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use vigil_core::rules::alert::Alert;

use super::{Msg, Shared, Undelivered};
use crate::telemetry::Metrics;

/// One HTTP POST.
#[derive(Debug, Clone)]
pub struct Request {
    /// Where.
    pub url: String,
    /// Headers, `content-type` included.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A failed post and whether it is worth retrying.
#[derive(Debug)]
pub struct PostError {
    /// What happened, with the URL.
    pub message: String,
    /// Network error, 5xx or 429.
    pub retry: bool,
}

/// The receivers' HTTP client (rustls on ring, 10 s per request).
///
/// # Errors
/// The client's build error.
pub fn client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

/// A one-thread runtime for a worker.
///
/// # Errors
/// The runtime's build error.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Posts once; any 2xx is success.
///
/// # Errors
/// [`PostError`] with the status and body, or the transport error.
pub async fn post_once(client: &reqwest::Client, req: &Request) -> Result<(), PostError> {
    let mut b = client.post(&req.url).body(req.body.clone());
    for (k, v) in &req.headers {
        b = b.header(*k, v);
    }
    let r = b.send().await.map_err(|e| PostError {
        message: format!("{}: {e}", req.url),
        retry: true,
    })?;
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    let text = r.text().await.unwrap_or_default();
    Err(PostError {
        message: format!("{}: HTTP {status}: {}", req.url, text.trim()),
        retry: status.is_server_error() || status.as_u16() == 429,
    })
}

/// Posts with retries (none once the notifier is closing).
///
/// # Errors
/// The last attempt's message.
pub(crate) async fn post(
    client: &reqwest::Client,
    req: &Request,
    shared: &Shared,
    metrics: &Metrics,
    receiver: &'static str,
) -> Result<(), String> {
    (|| post_once(client, req))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(5)
                .with_jitter(),
        )
        .when(|e| e.retry && !shared.closing.load(Ordering::Relaxed))
        .notify(|e, after| {
            metrics.notifications(receiver, "retried", 1);
            tracing::debug!(receiver, error = %e.message, retry_in = ?after, "Notification post failed; retrying.");
        })
        .await
        .map_err(|e| e.message)
}

/// A receiver that posts one request per alert transition.
pub trait PerTransition: Send + 'static {
    /// The `receiver` label.
    const RECEIVER: &'static str;
    /// The request announcing `alert`.
    fn request(&self, alert: &Alert) -> Request;
}

/// The worker of a [`PerTransition`] receiver: posts each transition in order until closed.
pub(crate) fn run_per_transition<R: PerTransition>(
    r: R,
    rx: &Receiver<Msg>,
    failed: &Sender<Undelivered>,
    shared: &Shared,
    metrics: &Metrics,
) {
    let (rt, client) = match runtime().and_then(|rt| client().map(|c| (rt, c))) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(receiver = R::RECEIVER, error = %e, "Notification worker could not start; its alerts are dead-lettered.");
            for m in rx.iter() {
                if let Msg::Alert(a) = m {
                    let _ = failed.send(Undelivered {
                        alert: *a,
                        receiver: R::RECEIVER,
                        error: format!("{}: worker not started: {e}", R::RECEIVER),
                    });
                }
            }
            return;
        }
    };
    let mut given_up: Option<String> = None;
    for m in rx.iter() {
        let Msg::Alert(alert) = m else { break };
        let left = shared
            .queued
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics.notification_queue(R::RECEIVER, left);
        let req = r.request(&alert);
        let posted = match &given_up {
            Some(e) => Err(format!("not tried at shutdown after a failure: {e}")),
            None => rt.block_on(post(&client, &req, shared, metrics, R::RECEIVER)),
        };
        match posted {
            Ok(()) => metrics.notifications(R::RECEIVER, "sent", 1),
            Err(e) => {
                if shared.closing.load(Ordering::Relaxed) && given_up.is_none() {
                    given_up = Some(e.clone());
                }
                metrics.notifications(R::RECEIVER, "failed", 1);
                tracing::error!(receiver = R::RECEIVER, error = %e, rule = %alert.rule, key = %alert.key, "Alert not delivered; it goes to the dead-letter topic.");
                let _ = failed.send(Undelivered {
                    alert: *alert,
                    receiver: R::RECEIVER,
                    error: format!("{}: {e}", R::RECEIVER),
                });
            }
        }
    }
}
