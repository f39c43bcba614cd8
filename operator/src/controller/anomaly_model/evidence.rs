//! The analysis's I/O: reads the per-revision counters of every detector pod of the model's
//! namespace (`GET /rollouts` on the metrics port, [`vigil_api::contract::detector::rollouts`])
//! and tells them a verdict (`POST /rollouts/<model>`), the channel the Savepoint controller
//! uses (see [`crate::controller::savepoint`] for why the operator calls pods directly). A pod
//! that does not answer is left out of the read (its windows count at the next read it
//! answers); a decision it missed reaches it through the rendered `rules.yaml`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use vigil_api::contract::detector::rollouts::{ROLLOUTS_PATH, RolloutDecision, RolloutEvidence};

use super::analysis::Sample;
use crate::config::DETECTOR_METRICS_PORT;
use crate::controller::{Context, Error};
use crate::labels::DETECTOR_APP;

/// How long one detector may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The last read per rollout (`namespace/name`): which candidate (revision and digest) it is
/// about, when it was taken, and what the pods answered. In memory: an operator that restarts
/// (or loses its lease) starts the interval in progress over.
#[derive(Debug, Default)]
pub struct Reads(Mutex<BTreeMap<String, (String, Instant, Sample)>>);

impl Reads {
    /// The last read of `key` if it is about `candidate`.
    pub fn get(&self, key: &str, candidate: &str) -> Option<(Instant, Sample)> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.get(key)
            .filter(|(c, _, _)| c == candidate)
            .map(|(_, at, s)| (*at, s.clone()))
    }

    /// Records a read.
    pub fn put(&self, key: &str, candidate: &str, at: Instant, sample: Sample) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.insert(key.to_string(), (candidate.to_string(), at, sample));
    }

    /// Forgets `key` (its rollout ended).
    pub fn remove(&self, key: &str) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.remove(key);
    }
}

/// Detector pods of `namespace` with an IP: (name, IP).
async fn detector_pods(ctx: &Context, namespace: &str) -> Result<Vec<(String, String)>, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={DETECTOR_APP}")))
        .await
        .map_err(|source| Error::ListPods { source })?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((p.name_any(), ip))
        })
        .collect())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// Reads every detector pod of `namespace`.
///
/// # Errors
/// Listing the pods failed.
pub async fn read(ctx: &Context, namespace: &str) -> Result<Sample, Error> {
    let pods = detector_pods(ctx, namespace).await?;
    let http = http();
    let answers = futures::future::join_all(pods.into_iter().map(|(pod, ip)| {
        let http = http.clone();
        async move {
            let url = format!("http://{ip}:{DETECTOR_METRICS_PORT}{ROLLOUTS_PATH}");
            let r = async {
                let body = http
                    .get(&url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::from_slice::<RolloutEvidence>(&body).map_err(|e| e.to_string())
            }
            .await;
            match r {
                Ok(e) => Some((pod, e)),
                Err(e) => {
                    tracing::debug!(pod = %pod, error = %e, "Detector did not answer the rollout read.");
                    None
                }
            }
        }
    }))
    .await;
    Ok(answers.into_iter().flatten().collect())
}

/// Tells every detector pod of `namespace` the decision about `model`; the pods that took it.
///
/// # Errors
/// Listing the pods failed.
pub async fn tell(
    ctx: &Context,
    namespace: &str,
    model: &str,
    decision: &RolloutDecision,
) -> Result<usize, Error> {
    let pods = detector_pods(ctx, namespace).await?;
    let http = http();
    let answers = futures::future::join_all(pods.into_iter().map(|(pod, ip)| {
        let http = http.clone();
        async move {
            let url = format!("http://{ip}:{DETECTOR_METRICS_PORT}{ROLLOUTS_PATH}/{model}");
            let body = serde_json::to_vec(decision).unwrap_or_default();
            let sent = http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            match sent {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(pod = %pod, error = %e, "Detector did not take the rollout decision; it follows when rules.yaml is refreshed.");
                    false
                }
            }
        }
    }))
    .await;
    Ok(answers.into_iter().filter(|ok| *ok).count())
}
