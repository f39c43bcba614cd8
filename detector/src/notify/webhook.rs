//! A webhook receiving every alert transition as a CloudEvent over HTTP (CloudEvents HTTP
//! protocol binding, structured content mode: `content-type: application/cloudevents+json;
//! charset=utf-8`, the body the same CloudEvents JSON as the alerts topic's records), signed as
//! the Standard Webhooks specification (<https://www.standardwebhooks.com/>) says, so its
//! libraries verify it:
//!
//! - `webhook-id`: the CloudEvent `id` (deterministic per transition: a retry or a replay
//!   carries the same id, so the receiver de-duplicates by it);
//! - `webhook-timestamp`: Unix seconds when sent (receivers reject old ones: replay defence);
//! - `webhook-signature`: `v1,` then the base64 of HMAC-SHA256 over
//!   `<webhook-id>.<webhook-timestamp>.<body>` with the signing key (a `whsec_` key is
//!   base64-decoded first, as that specification says).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use vigil_api::v1alpha1::WebhookSink;
use vigil_core::rules::alert::Alert;

use super::NotifyError;
use super::http::{PerTransition, Request};

/// The `receiver` label.
pub const RECEIVER: &str = "webhook";

/// The webhook receiver.
pub struct Webhook {
    url: String,
    key: Option<Vec<u8>>,
}

/// The HMAC key of a signing secret: a `whsec_` secret is base64 after the prefix.
pub fn signing_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// The receiver of `spec`, its signing key (when `signingKeySecret` is set) from
    /// `VIGIL_WEBHOOK_SIGNING_KEY`.
    ///
    /// # Errors
    /// [`NotifyError`]: a URL that is not http(s), the key's variable unset or empty.
    pub fn from_secrets(
        spec: &WebhookSink,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, NotifyError> {
        let var = vigil_api::contract::detector::env::WEBHOOK_SIGNING_KEY;
        let key = match &spec.signing_key_secret {
            None => None,
            Some(_) => Some(secret(var).filter(|k| !k.trim().is_empty()).ok_or(
                NotifyError::Secret {
                    field: "spec.sinks.webhook.signingKeySecret",
                    var,
                },
            )?),
        };
        Self::new(spec, key.as_deref())
    }

    /// The receiver of `spec` signing with `secret`.
    ///
    /// # Errors
    /// [`NotifyError::Url`].
    pub fn new(spec: &WebhookSink, secret: Option<&str>) -> Result<Self, NotifyError> {
        if !(spec.url.starts_with("http://") || spec.url.starts_with("https://")) {
            return Err(NotifyError::Url {
                field: "spec.sinks.webhook.url".into(),
                url: spec.url.clone(),
            });
        }
        Ok(Self {
            url: spec.url.clone(),
            key: secret.map(|s| signing_key(s.trim())),
        })
    }
}

impl PerTransition for Webhook {
    const RECEIVER: &'static str = RECEIVER;

    fn request(&self, a: &Alert) -> Request {
        let body = a.to_cloudevent_json_traced(None);
        let mut headers = vec![(
            "content-type",
            "application/cloudevents+json; charset=utf-8".to_string(),
        )];
        if let Some(key) = &self.key {
            let id = a.event_id();
            let ts = chrono::Utc::now().timestamp();
            headers.push(("webhook-signature", signature(key, &id, ts, &body)));
            headers.push(("webhook-id", id));
            headers.push(("webhook-timestamp", ts.to_string()));
        }
        Request {
            url: self.url.clone(),
            headers,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_key_secret_without_its_variable_is_named() {
        let spec = WebhookSink {
            url: "https://hooks.example/x".into(),
            signing_key_secret: Some("hook".into()),
            queue_capacity: None,
        };
        let e = Webhook::from_secrets(&spec, &|_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("spec.sinks.webhook.signingKeySecret")
                && e.contains("VIGIL_WEBHOOK_SIGNING_KEY"),
            "{e}"
        );
        let e = Webhook::new(
            &WebhookSink {
                url: "hooks.example".into(),
                signing_key_secret: None,
                queue_capacity: None,
            },
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("spec.sinks.webhook.url"), "{e}");
    }

    #[test]
    fn whsec_secrets_are_base64_and_others_raw() {
        assert_eq!(signing_key("whsec_aGVsbG8="), b"hello".to_vec());
        assert_eq!(signing_key("plain-key"), b"plain-key".to_vec());
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_id_timestamp_body() {
        // Computed independently with OpenSSL:
        // printf 'msg_1.1700000000.{"a":1}' | openssl dgst -sha256 -hmac Jefe -binary | base64
        assert_eq!(
            signature(b"Jefe", "msg_1", 1_700_000_000, b"{\"a\":1}"),
            "v1,d0RJKx1I1gWj34NuiszgvZNnbDFFnv95Rn8tyEgvdd8="
        );
    }
}
