//! PagerDuty's Events API v2 (`POST /v2/enqueue`, schema in PagerDuty's
//! `reference/events-v2/openapiv3.json`): a firing alert is a `trigger` event, its resolution a
//! `resolve` event, both with `dedup_key` = the alert's fingerprint (stable per pipeline, rule
//! and key), so PagerDuty opens one alert per episode and closes it. The trigger's payload:
//! `summary` = the rule's `summary` annotation (else `<rule> on <key>`), at most 1024
//! characters (PagerDuty's limit); `source` = the entity key; `severity` = the rule's
//! (`critical`, `warning`, `info`); `timestamp` = the event time the condition started;
//! `component` = the key, `group` = the pipeline, `class` = the rule; `custom_details` = labels,
//! annotations, observed value, score, window and its features. PagerDuty answers 202; 429 and
//! 5xx are retried ([`super::http`]).

use vigil_api::v1alpha1::{DEFAULT_PAGERDUTY_URL, PagerDutySink};
use vigil_core::rules::alert::{Alert, AlertStatus};

use super::NotifyError;
use super::http::{PerTransition, Request};

/// The `receiver` label.
pub const RECEIVER: &str = "pagerduty";
/// PagerDuty's limit on `payload.summary`.
pub const MAX_SUMMARY: usize = 1024;

/// The PagerDuty receiver.
pub struct PagerDuty {
    url: String,
    routing_key: String,
}

impl PagerDuty {
    /// The receiver of `spec`, its routing key from `VIGIL_PAGERDUTY_ROUTING_KEY`.
    ///
    /// # Errors
    /// [`NotifyError`]: the variable unset or empty, a URL that is not http(s).
    pub fn from_secrets(
        spec: &PagerDutySink,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, NotifyError> {
        let var = vigil_api::contract::detector::env::PAGERDUTY_ROUTING_KEY;
        let routing_key =
            secret(var)
                .filter(|k| !k.trim().is_empty())
                .ok_or(NotifyError::Secret {
                    field: "spec.sinks.pagerduty.routingKeySecret",
                    var,
                })?;
        Self::new(spec, routing_key.trim().to_string())
    }

    /// The receiver of `spec` with `routing_key`.
    ///
    /// # Errors
    /// [`NotifyError::Url`].
    pub fn new(spec: &PagerDutySink, routing_key: String) -> Result<Self, NotifyError> {
        let url = spec
            .url
            .clone()
            .unwrap_or_else(|| DEFAULT_PAGERDUTY_URL.into());
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(NotifyError::Url {
                field: "spec.sinks.pagerduty.url".into(),
                url,
            });
        }
        Ok(Self { url, routing_key })
    }

    /// The Events API v2 event of `a`.
    pub fn event(&self, a: &Alert) -> serde_json::Value {
        match a.status {
            AlertStatus::Resolved => serde_json::json!({
                "routing_key": self.routing_key,
                "event_action": "resolve",
                "dedup_key": a.fingerprint,
            }),
            AlertStatus::Firing => {
                let mut summary = a
                    .annotations
                    .get("summary")
                    .cloned()
                    .unwrap_or_else(|| format!("{} on {}", a.rule, a.key));
                if summary.len() > MAX_SUMMARY {
                    let mut cut = MAX_SUMMARY - 3;
                    while !summary.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    summary.truncate(cut);
                    summary.push_str("...");
                }
                let started =
                    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(a.active_since)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                serde_json::json!({
                    "routing_key": self.routing_key,
                    "event_action": "trigger",
                    "dedup_key": a.fingerprint,
                    "client": "Vigil",
                    "payload": {
                        "summary": summary,
                        "source": a.key,
                        "severity": a.severity.as_str(),
                        "timestamp": started,
                        "component": a.key,
                        "group": a.pipeline,
                        "class": a.rule,
                        "custom_details": {
                            "labels": a.labels,
                            "annotations": a.annotations,
                            "observed": a.value,
                            "score": a.score,
                            "window": a.window,
                            "window_start": a.window_start,
                            "window_end": a.window_end,
                            "features": a.features,
                        },
                    },
                })
            }
        }
    }
}

impl PerTransition for PagerDuty {
    const RECEIVER: &'static str = RECEIVER;

    fn request(&self, a: &Alert) -> Request {
        Request {
            url: self.url.clone(),
            headers: vec![("content-type", "application/json".into())],
            body: serde_json::to_vec(&self.event(a)).unwrap_or_default(),
        }
    }
}
