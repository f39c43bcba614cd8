//! Alert notifications to HTTP receivers beside the alerts topic: Alertmanager's v2 API
//! (`spec.sinks.alertmanager`, [`alertmanager`]).
//!
//! Off the run loop: the loop offers every alert transition to a bounded queue and never waits
//! (a full queue hands the transition straight back, to be dead-lettered); a worker thread of
//! its own, with a one-thread Tokio runtime for the HTTP client, posts them, retries failed
//! posts with jittered exponential backoff, re-posts firing alerts on its own clock, and hands
//! back the transitions it gave up on. The loop dead-letters those with reason `delivery`
//! ([`crate::sink::Sinks::send_undelivered`]) and counts everything in
//! `vigil_notifications_total{receiver, result}`.

pub mod alertmanager;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use vigil_api::v1alpha1::AlertmanagerSink;
use vigil_core::rules::alert::Alert;

use crate::telemetry::Metrics;

/// Default `queueCapacity`.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// An alert transition a receiver did not get.
#[derive(Debug, Clone)]
pub struct Undelivered {
    /// The transition.
    pub alert: Alert,
    /// `alertmanager`.
    pub receiver: &'static str,
    /// Why, for the dead letter's `vigil.error` header.
    pub error: String,
}

/// A receiver that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A URL does not parse or is not http(s).
    #[error("spec.sinks.alertmanager.urls[{index}]: `{url}` is not an http:// or https:// URL")]
    Url {
        /// Position in the list.
        index: usize,
        /// The URL.
        url: String,
    },
    /// The generator URL template does not parse.
    #[error("spec.sinks.alertmanager.generatorURL: {0}")]
    Template(String),
    /// The HTTP client or the worker could not be started.
    #[error("alert notifications: {0}")]
    Start(String),
}

enum Msg {
    Alert(Box<Alert>),
    /// Deliver what is queued, then stop.
    Close,
}

/// The handle the run loop holds.
pub struct Notifier {
    tx: SyncSender<Msg>,
    undelivered: Receiver<Undelivered>,
    queued: Arc<AtomicUsize>,
    /// Set by [`Notifier::close`]: no more retries; once a post fails, the rest is handed back.
    closing: Arc<AtomicBool>,
    metrics: Metrics,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Notifier {
    /// Starts delivery to the Alertmanagers of `spec`.
    ///
    /// # Errors
    /// [`NotifyError`] naming the field.
    pub fn alertmanager(
        spec: &AlertmanagerSink,
        pipeline: &str,
        metrics: Metrics,
    ) -> Result<Self, NotifyError> {
        let receiver = alertmanager::Alertmanager::new(spec, pipeline)?;
        let capacity = spec
            .queue_capacity
            .map_or(DEFAULT_QUEUE_CAPACITY, |c| c.max(1) as usize);
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let (failed_tx, failed_rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let worker = {
            let queued = queued.clone();
            let closing = closing.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("vigil-notify".into())
                .spawn(move || receiver.run(&rx, &failed_tx, &queued, &closing, &metrics))
                .map_err(|e| NotifyError::Start(e.to_string()))?
        };
        Ok(Self {
            tx,
            undelivered: failed_rx,
            queued,
            closing,
            metrics,
            worker: Some(worker),
        })
    }

    /// Queues an alert transition; when the queue is full it comes back as undelivered.
    pub fn offer(&self, alert: &Alert) -> Option<Undelivered> {
        // Counted before it is visible to the worker, which counts it down.
        let n = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match self.tx.try_send(Msg::Alert(Box::new(alert.clone()))) {
            Ok(()) => {
                self.metrics.notification_queue(n);
                None
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.metrics
                    .notifications(alertmanager::RECEIVER, "dropped", 1);
                Some(Undelivered {
                    alert: alert.clone(),
                    receiver: alertmanager::RECEIVER,
                    error: "the notification queue is full (spec.sinks.alertmanager.queueCapacity): the receiver is slower than the alerts".into(),
                })
            }
        }
    }

    /// Transitions the worker gave up on since the last call.
    pub fn undelivered(&self) -> Vec<Undelivered> {
        self.undelivered.try_iter().collect()
    }

    /// Lets the worker deliver what is queued (at most `timeout`; no retries any more, and
    /// once a post fails the rest is not tried), then stops it; what it gave up on is returned.
    pub fn close(mut self, timeout: Duration) -> Vec<Undelivered> {
        let deadline = Instant::now() + timeout;
        self.closing.store(true, Ordering::Relaxed);
        // A full queue: wait for room (the worker drains it) until the deadline.
        let mut close = Msg::Close;
        loop {
            match self.tx.try_send(close) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    close = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break,
            }
        }
        if let Some(w) = self.worker.take() {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            } else {
                tracing::warn!(
                    queued = self.queued.load(Ordering::Relaxed),
                    "Alert notifications still queued at shutdown were not delivered."
                );
            }
        }
        self.undelivered()
    }
}
