//! Alert notifications to HTTP receivers beside the alerts topic: Alertmanager's v2 API
//! (`spec.sinks.alertmanager`, [`alertmanager`]), PagerDuty's Events API v2
//! (`spec.sinks.pagerduty`, [`pagerduty`]) and signed CloudEvents webhooks
//! (`spec.sinks.webhook`, [`webhook`]).
//!
//! Off the run loop: the loop offers every alert transition to each receiver's bounded queue and
//! never waits (a full queue hands the transition straight back, to be dead-lettered); a worker
//! thread per receiver, with a one-thread Tokio runtime for the HTTP client, posts them, retries
//! failed posts with jittered exponential backoff ([`http`]), and hands back the transitions it
//! gave up on. The loop dead-letters those with reason `delivery`
//! ([`crate::sink::Sinks::send_undelivered`]) and counts everything in
//! `vigil_notifications_total{receiver, result}`.

pub mod alertmanager;
pub mod http;
pub mod pagerduty;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use vigil_api::v1alpha1::SinksSpec;
use vigil_core::rules::alert::Alert;

use crate::telemetry::Metrics;

/// Default `queueCapacity` of every receiver.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// An alert transition a receiver did not get.
#[derive(Debug, Clone)]
pub struct Undelivered {
    /// The transition.
    pub alert: Alert,
    /// `alertmanager`, `pagerduty` or `webhook`.
    pub receiver: &'static str,
    /// Why, for the dead letter's `vigil.error` header.
    pub error: String,
}

/// A receiver that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A URL does not parse or is not http(s).
    #[error("{field}: `{url}` is not an http:// or https:// URL")]
    Url {
        /// The field.
        field: String,
        /// The URL.
        url: String,
    },
    /// The generator URL template does not parse.
    #[error("spec.sinks.alertmanager.generatorURL: {0}")]
    Template(String),
    /// A secret the receiver needs is not in the environment.
    #[error(
        "{field}: {var} is not set (the operator sets it from the Secret; set it for `vigil run`)"
    )]
    Secret {
        /// The field naming the Secret.
        field: &'static str,
        /// The variable.
        var: &'static str,
    },
    /// The worker could not be started.
    #[error("alert notifications: {0}")]
    Start(String),
}

pub(crate) enum Msg {
    Alert(Box<Alert>),
    /// Deliver what is queued, then stop.
    Close,
}

/// What a worker shares with the handle.
pub(crate) struct Shared {
    pub queued: AtomicUsize,
    /// Set by [`Notifier::close`]: no more retries; once a post fails, the rest is handed back.
    pub closing: AtomicBool,
}

struct Channel {
    receiver: &'static str,
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// The handle the run loop holds: one queue and worker per configured receiver.
pub struct Notifier {
    channels: Vec<Channel>,
    undelivered: Receiver<Undelivered>,
    failed_tx: Sender<Undelivered>,
    metrics: Metrics,
}

/// A worker body: receives on the queue, hands back what it gave up on.
pub(crate) type Worker =
    Box<dyn FnOnce(Receiver<Msg>, Sender<Undelivered>, Arc<Shared>, Metrics) + Send>;

fn capacity(c: Option<u32>) -> usize {
    c.map_or(DEFAULT_QUEUE_CAPACITY, |c| c.max(1) as usize)
}

impl Notifier {
    /// The receivers `sinks` configures, their secrets from the environment
    /// (`VIGIL_PAGERDUTY_ROUTING_KEY`, `VIGIL_WEBHOOK_SIGNING_KEY`); `None` when there is none.
    ///
    /// # Errors
    /// [`NotifyError`] naming the field.
    pub fn from_spec(sinks: &SinksSpec, metrics: Metrics) -> Result<Option<Self>, NotifyError> {
        Self::with_secrets(sinks, metrics, &|var| std::env::var(var).ok())
    }

    /// [`Self::from_spec`] with the secrets' variables read by `secret`.
    ///
    /// # Errors
    /// [`NotifyError`] naming the field.
    pub fn with_secrets(
        sinks: &SinksSpec,
        metrics: Metrics,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, NotifyError> {
        let (failed_tx, failed_rx) = std::sync::mpsc::channel();
        let mut n = Self {
            channels: Vec::new(),
            undelivered: failed_rx,
            failed_tx,
            metrics,
        };
        if let Some(am) = &sinks.alertmanager {
            let r = alertmanager::Alertmanager::new(am)?;
            n.start(
                alertmanager::RECEIVER,
                capacity(am.queue_capacity),
                Box::new(move |rx, failed, shared, metrics| r.run(&rx, &failed, &shared, &metrics)),
            )?;
        }
        if let Some(pd) = &sinks.pagerduty {
            let r = pagerduty::PagerDuty::from_secrets(pd, secret)?;
            n.start(
                pagerduty::RECEIVER,
                capacity(pd.queue_capacity),
                Box::new(move |rx, failed, shared, metrics| {
                    http::run_per_transition(r, &rx, &failed, &shared, &metrics);
                }),
            )?;
        }
        if let Some(w) = &sinks.webhook {
            let r = webhook::Webhook::from_secrets(w, secret)?;
            n.start(
                webhook::RECEIVER,
                capacity(w.queue_capacity),
                Box::new(move |rx, failed, shared, metrics| {
                    http::run_per_transition(r, &rx, &failed, &shared, &metrics);
                }),
            )?;
        }
        Ok((!n.channels.is_empty()).then_some(n))
    }

    fn start(
        &mut self,
        receiver: &'static str,
        capacity: usize,
        worker: Worker,
    ) -> Result<(), NotifyError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
        });
        let handle = {
            let shared = shared.clone();
            let failed = self.failed_tx.clone();
            let metrics = self.metrics.clone();
            std::thread::Builder::new()
                .name(format!("vigil-{receiver}"))
                .spawn(move || worker(rx, failed, shared, metrics))
                .map_err(|e| NotifyError::Start(e.to_string()))?
        };
        self.channels.push(Channel {
            receiver,
            tx,
            shared,
            worker: Some(handle),
        });
        Ok(())
    }

    /// Queues an alert transition for every receiver; those whose queue is full hand it back
    /// as undelivered.
    pub fn offer(&self, alert: &Alert) -> Vec<Undelivered> {
        let mut back = Vec::new();
        for c in &self.channels {
            // Counted before it is visible to the worker, which counts it down.
            let n = c.shared.queued.fetch_add(1, Ordering::Relaxed) + 1;
            match c.tx.try_send(Msg::Alert(Box::new(alert.clone()))) {
                Ok(()) => self.metrics.notification_queue(c.receiver, n),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    c.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.metrics.notifications(c.receiver, "dropped", 1);
                    back.push(Undelivered {
                        alert: alert.clone(),
                        receiver: c.receiver,
                        error: format!(
                            "the notification queue is full (spec.sinks.{}.queueCapacity): the receiver is slower than the alerts",
                            c.receiver
                        ),
                    });
                }
            }
        }
        back
    }

    /// Transitions the workers gave up on since the last call.
    pub fn undelivered(&self) -> Vec<Undelivered> {
        self.undelivered.try_iter().collect()
    }

    /// Lets the workers deliver what is queued (at most `timeout` in all; no retries any more,
    /// and once a post fails the rest is not tried), then stops them; what they gave up on is
    /// returned.
    pub fn close(mut self, timeout: Duration) -> Vec<Undelivered> {
        let deadline = Instant::now() + timeout;
        for c in &self.channels {
            c.shared.closing.store(true, Ordering::Relaxed);
            let mut close = Msg::Close;
            loop {
                match c.tx.try_send(close) {
                    Ok(()) => break,
                    Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                        close = m;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        }
        for c in &mut self.channels {
            if let Some(w) = c.worker.take() {
                while !w.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if w.is_finished() {
                    let _ = w.join();
                } else {
                    tracing::warn!(
                        receiver = c.receiver,
                        queued = c.shared.queued.load(Ordering::Relaxed),
                        "Alert notifications still queued at shutdown were not delivered."
                    );
                }
            }
        }
        self.undelivered()
    }
}
