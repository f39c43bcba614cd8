//! Alertmanager's v2 API (`POST /api/v2/alerts`, a JSON array of `postableAlert`; schema in
//! Alertmanager's `api/v2/openapi.yaml`), used the way Prometheus' notifier uses it:
//!
//! - a firing alert is posted when it starts, then again every `resendInterval` (Prometheus'
//!   `resend_delay`, default 1 min) with `endsAt` four intervals ahead, so Alertmanager
//!   resolves it by itself if the detector stops sending (Prometheus: `4 * max(resend_delay,
//!   evaluation_interval)`);
//! - a resolved alert is posted with `endsAt` = the time it resolved, and re-posted for 15 min
//!   (Prometheus keeps resolved alerts that long so a restarted Alertmanager still learns);
//! - labels are the alert's labels plus `alertname` (the rule) and `pipeline`, names made to
//!   fit Alertmanager's `[a-zA-Z_][a-zA-Z0-9_]*`, empty values left out; `startsAt` is the
//!   event time the condition started (`activeSince`);
//! - up to 64 alerts per post (Prometheus' batch); every URL gets every post; a post counts as
//!   delivered when one of them took it (an Alertmanager cluster de-duplicates);
//! - a failed post is retried as [`super::http`] says; transitions whose post still failed go
//!   back to the loop to be dead-lettered; a failed re-post is only counted (the next one
//!   carries the same alerts).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use vigil_api::v1alpha1::AlertmanagerSink;
use vigil_core::rules::alert::{Alert, AlertStatus};

use super::http::{self, Request};
use super::{Msg, NotifyError, Shared, Undelivered};
use crate::telemetry::Metrics;

/// The `receiver` label of this receiver's metrics and dead letters.
pub const RECEIVER: &str = "alertmanager";
/// Default `resendInterval`.
pub const DEFAULT_RESEND: Duration = Duration::from_secs(60);
/// How long a resolved alert is re-posted (Prometheus' resolved retention).
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);
/// Most alerts per post (Prometheus' `maxBatchSize`).
pub const MAX_BATCH: usize = 64;

struct Entry {
    alert: Alert,
    /// When it resolved (wall clock) and its `endsAt`.
    resolved: Option<(Instant, String)>,
}

/// The Alertmanager receiver's state: the alerts it keeps posting.
pub struct Alertmanager {
    endpoints: Vec<String>,
    resend: Duration,
    generator_url: Option<String>,
    active: HashMap<String, Entry>,
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A label name Alertmanager accepts: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl Alertmanager {
    /// Checks the spec: http(s) URLs, a generator URL template that parses.
    ///
    /// # Errors
    /// [`NotifyError`] naming the field.
    pub fn new(spec: &AlertmanagerSink) -> Result<Self, NotifyError> {
        let mut endpoints = Vec::new();
        for (index, u) in spec.urls.iter().enumerate() {
            let bad = || NotifyError::Url {
                field: format!("spec.sinks.alertmanager.urls[{index}]"),
                url: u.clone(),
            };
            let parsed = url::Url::parse(u).map_err(|_| bad())?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad());
            }
            endpoints.push(format!("{}/api/v2/alerts", u.trim_end_matches('/')));
        }
        if let Some(t) = &spec.generator_url {
            vigil_core::rules::alert::check_template(t).map_err(NotifyError::Template)?;
        }
        Ok(Self {
            endpoints,
            resend: spec
                .resend_interval
                .as_ref()
                .map(
                    |d| Duration::from_millis(vigil_api::v1alpha1::duration_ms(d).max(1000) as u64),
                )
                .unwrap_or(DEFAULT_RESEND),
            generator_url: spec.generator_url.clone(),
            active: HashMap::new(),
        })
    }

    /// The `postableAlert` of `a` with `endsAt`.
    pub fn payload(&self, a: &Alert, ends_at: &str) -> serde_json::Value {
        let mut labels = serde_json::Map::new();
        for (k, v) in &a.labels {
            if !v.is_empty() {
                labels.insert(label_name(k), v.clone().into());
            }
        }
        labels.insert("alertname".into(), a.rule.clone().into());
        labels.insert("pipeline".into(), a.pipeline.clone().into());
        let mut body = serde_json::json!({
            "labels": labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.active_since),
            "endsAt": ends_at,
        });
        if let Some(t) = &self.generator_url {
            let one = std::collections::BTreeMap::from([(String::new(), t.clone())]);
            if let Some(u) = vigil_core::rules::alert::render(&one, a).remove("") {
                body["generatorURL"] = u.into();
            }
        }
        body
    }

    /// Records a transition; its payload.
    fn record(&mut self, a: Alert) -> serde_json::Value {
        let firing_ends = rfc3339(now_ms() + 4 * self.resend.as_millis() as i64);
        let entry = match a.status {
            AlertStatus::Firing => Entry {
                alert: a,
                resolved: None,
            },
            AlertStatus::Resolved => {
                let ends = rfc3339(now_ms().max(a.active_since));
                Entry {
                    alert: a,
                    resolved: Some((Instant::now(), ends)),
                }
            }
        };
        let body = self.payload(
            &entry.alert,
            entry.resolved.as_ref().map_or(&firing_ends, |r| &r.1),
        );
        self.active.insert(entry.alert.fingerprint.clone(), entry);
        body
    }

    /// Payloads of every alert still posted (firing, or resolved within the retention).
    fn resend_payloads(&mut self) -> Vec<serde_json::Value> {
        self.active.retain(|_, e| {
            e.resolved
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() < RESOLVED_RETENTION)
        });
        let firing_ends = rfc3339(now_ms() + 4 * self.resend.as_millis() as i64);
        self.active
            .values()
            .map(|e| self.payload(&e.alert, e.resolved.as_ref().map_or(&firing_ends, |r| &r.1)))
            .collect()
    }

    /// Posts `alerts` to every endpoint (with retries); delivered when one took them.
    async fn post(
        &self,
        client: &reqwest::Client,
        alerts: &[serde_json::Value],
        shared: &Shared,
        metrics: &Metrics,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(alerts).unwrap_or_default();
        let mut errors = Vec::new();
        for url in &self.endpoints {
            let req = Request {
                url: url.clone(),
                headers: vec![("content-type", "application/json".into())],
                body: body.clone(),
            };
            if let Err(e) = http::post(client, &req, shared, metrics, RECEIVER).await {
                errors.push(e);
            }
        }
        if errors.len() < self.endpoints.len() {
            if !errors.is_empty() {
                tracing::warn!(errors = ?errors, "Some Alertmanagers did not take the alerts; the others did.");
            }
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The worker: posts transitions as they come (in batches of up to [`MAX_BATCH`]), re-posts
    /// every `resendInterval`, until [`Msg::Close`] or the handle is gone.
    pub(super) fn run(
        mut self,
        rx: &Receiver<Msg>,
        failed: &Sender<Undelivered>,
        shared: &Shared,
        metrics: &Metrics,
    ) {
        // Set once a post failed while closing: the rest is handed back without trying.
        let mut given_up: Option<String> = None;
        let (rt, client) = match http::runtime().and_then(|rt| http::client().map(|c| (rt, c))) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "Alertmanager notification worker could not start; its alerts are dead-lettered.");
                for m in rx.iter() {
                    if let Msg::Alert(a) = m {
                        let _ = failed.send(Undelivered {
                            alert: *a,
                            receiver: RECEIVER,
                            error: format!("alertmanager: worker not started: {e}"),
                        });
                    }
                }
                return;
            }
        };
        let mut next_resend = Instant::now() + self.resend;
        let mut close_seen = false;
        while !close_seen {
            let wait = next_resend.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(Msg::Alert(a)) => *a,
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    next_resend = Instant::now() + self.resend;
                    let all = self.resend_payloads();
                    for chunk in all.chunks(MAX_BATCH) {
                        match rt.block_on(self.post(&client, chunk, shared, metrics)) {
                            Ok(()) => metrics.notifications(RECEIVER, "resent", chunk.len() as u64),
                            Err(e) => {
                                metrics.notifications(
                                    RECEIVER,
                                    "resend_failed",
                                    chunk.len() as u64,
                                );
                                tracing::warn!(error = %e, alerts = chunk.len(), "Re-posting alerts to Alertmanager failed; the next re-post carries them.");
                            }
                        }
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Alert(a)) => batch.push(*a),
                    Ok(Msg::Close) => {
                        close_seen = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let left = shared
                .queued
                .fetch_sub(batch.len(), Ordering::Relaxed)
                .saturating_sub(batch.len());
            metrics.notification_queue(RECEIVER, left);
            let bodies: Vec<serde_json::Value> =
                batch.iter().map(|a| self.record(a.clone())).collect();
            let posted = match &given_up {
                Some(e) => Err(format!("not tried at shutdown after a failure: {e}")),
                None => rt.block_on(self.post(&client, &bodies, shared, metrics)),
            };
            match posted {
                Ok(()) => metrics.notifications(RECEIVER, "sent", batch.len() as u64),
                Err(e) => {
                    if shared.closing.load(Ordering::Relaxed) && given_up.is_none() {
                        given_up = Some(e.clone());
                    }
                    metrics.notifications(RECEIVER, "failed", batch.len() as u64);
                    tracing::error!(error = %e, alerts = batch.len(), "Alerts not delivered to Alertmanager; they go to the dead-letter topic.");
                    for alert in batch {
                        let _ = failed.send(Undelivered {
                            alert,
                            receiver: RECEIVER,
                            error: format!("alertmanager: {e}"),
                        });
                    }
                }
            }
            if close_seen {
                // Nothing is queued behind the close message (it comes last).
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_fit_alertmanager() {
        assert_eq!(label_name("severity"), "severity");
        assert_eq!(
            label_name("app.kubernetes.io/part-of"),
            "app_kubernetes_io_part_of"
        );
        assert_eq!(label_name("1st"), "_1st");
        assert_eq!(label_name(""), "_");
    }

    #[test]
    fn urls_must_be_http() {
        let spec = |u: &str| AlertmanagerSink {
            urls: vec![u.into()],
            resend_interval: None,
            generator_url: None,
            queue_capacity: None,
        };
        assert!(Alertmanager::new(&spec("http://am:9093/")).is_ok());
        let e = Alertmanager::new(&spec("am:9093"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("spec.sinks.alertmanager.urls[0]"), "{e}");
        assert!(Alertmanager::new(&spec("ftp://am")).is_err());
    }
}
