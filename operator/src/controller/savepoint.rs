//! Savepoint controller: takes a `Savepoint` of a StreamPipeline by asking each of its
//! detector pods for its part, and records the outcome in the status.
//!
//! How the operator reaches the detectors: `POST http://<pod IP>:<metrics port>/savepoints/<name>`
//! on each ready detector pod (the detectors' HTTP server, which already serves `/metrics`).
//! The detectors do not call the Kubernetes API (no token), and the operator has no Kafka
//! client, so a request it makes and whose answer it reads directly is the simplest channel
//! that reports each part's success or failure synchronously; the same endpoint works with
//! `kubectl port-forward` and curl. With `networkPolicy.enabled` the metrics port is open to
//! the operator like it is to Prometheus.
//!
//! Steps: dereference (the pipeline from the cache, the pods by the StatefulSet's selector) ->
//! validate (pure: the pipeline has checkpointing, the name can name a savepoint, pods have
//! IPs) -> take (the requests, concurrently) -> status (pure: Completed with the parts, or
//! Failed naming the pod and its reason). A savepoint is taken once: Completed and Failed are
//! final; create another to retry. The move to InProgress is conditional on the object's
//! resourceVersion, so a reconcile from a stale cache cannot take a finished savepoint again;
//! an InProgress left by an operator that died mid-way is taken again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use vigil_api::v1alpha1::{
    Savepoint, SavepointPart, SavepointPhase, SavepointStatus, StreamPipeline,
};

use super::{Context, Error, requeue_on_error};
use crate::apply::{apply_status, apply_status_if_unchanged, is_conflict};
use crate::config::DETECTOR_METRICS_PORT;
use crate::labels::detector_selector;

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "savepoint";
/// How long one detector may take to write its part.
pub const PART_TIMEOUT: Duration = Duration::from_secs(300);
/// How long connecting to a detector may take (an unreachable pod fails the savepoint).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the detectors answered: `(pod, Ok(part) | Err(reason))`.
pub type Answers = Vec<(String, Result<SavepointPart, String>)>;

/// The part a detector reports (its `_metadata.json`), reduced to what the status shows.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartAnswer {
    partitions: Vec<PartitionAnswer>,
    keys: i64,
    bytes: i64,
}

#[derive(serde::Deserialize)]
struct PartitionAnswer {
    topic: String,
    partition: i32,
    offset: i64,
}

/// Why a savepoint cannot be taken (pure check).
pub fn validate(
    name: &str,
    pipeline: Option<&StreamPipeline>,
    pods: &[(String, Option<String>)],
) -> Result<(), String> {
    if !vigil_core::config::valid_savepoint_name(name) {
        return Err(format!(
            "`{name}` cannot name a savepoint: 1-63 of a-z, 0-9, '.', '_', '-'"
        ));
    }
    let Some(p) = pipeline else {
        return Err("the StreamPipeline does not exist".into());
    };
    if p.spec.checkpointing.is_none() {
        return Err(format!(
            "StreamPipeline {} has no spec.checkpointing: there is no location to write a savepoint to",
            p.name_any()
        ));
    }
    if pods.is_empty() {
        return Err("the pipeline has no detector pod to take a savepoint from".into());
    }
    if let Some((pod, _)) = pods.iter().find(|(_, ip)| ip.is_none()) {
        return Err(format!("detector pod {pod} has no IP (not running)"));
    }
    Ok(())
}

/// The final status from the detectors' answers.
pub fn status(
    pipeline: &StreamPipeline,
    name: &str,
    answers: &Answers,
    now: Time,
) -> SavepointStatus {
    let location = pipeline.spec.checkpointing.as_ref().map(|c| {
        format!(
            "{}/{}/savepoints/{name}",
            c.location.trim_end_matches('/'),
            pipeline.name_any()
        )
    });
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(pod, a)| a.as_ref().err().map(|e| format!("{pod}: {}", e.trim())))
        .collect();
    let parts: Vec<SavepointPart> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok().cloned())
        .collect();
    SavepointStatus {
        phase: Some(if failed.is_empty() {
            SavepointPhase::Completed
        } else {
            SavepointPhase::Failed
        }),
        location,
        size_bytes: Some(parts.iter().map(|p| p.bytes).sum()),
        completed_at: Some(now),
        pipeline_generation: pipeline.metadata.generation,
        parts,
        message: (!failed.is_empty()).then(|| failed.join("; ")),
    }
}

fn failed(message: String, now: Time) -> SavepointStatus {
    SavepointStatus {
        phase: Some(SavepointPhase::Failed),
        completed_at: Some(now),
        message: Some(message),
        ..SavepointStatus::default()
    }
}

/// Asks one detector for its part.
async fn take_part(
    http: &reqwest::Client,
    pod: String,
    ip: String,
    name: &str,
) -> (String, Result<SavepointPart, String>) {
    let url = format!("http://{ip}:{DETECTOR_METRICS_PORT}/savepoints/{name}");
    let result = async {
        let resp = http
            .post(&url)
            .timeout(PART_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| format!("POST {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("POST {url}: {status}: {}", body.trim()));
        }
        let a: PartAnswer =
            serde_json::from_str(&body).map_err(|e| format!("POST {url}: answer: {e}"))?;
        Ok(SavepointPart {
            pod: pod.clone(),
            partitions: a
                .partitions
                .iter()
                .map(|p| format!("{}/{}@{}", p.topic, p.partition, p.offset))
                .collect(),
            keys: a.keys,
            bytes: a.bytes,
        })
    }
    .await;
    (pod, result)
}

/// Reconciles one Savepoint.
///
/// # Errors
/// Transient failures (API reads and writes); a savepoint that cannot be taken is `Failed`.
#[tracing::instrument(name = "reconcile", skip_all, fields(trace_id, kind = "Savepoint", name = %sp.name_any(), namespace = sp.namespace().unwrap_or_default()))]
pub async fn reconcile(sp: Arc<Savepoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    vigil_telemetry::trace::record_trace_id(&tracing::Span::current());
    let Some(ns) = sp.namespace() else {
        return Err(Error::MissingNamespace {
            kind: "Savepoint",
            name: sp.name_any(),
        });
    };
    let phase = sp.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    if matches!(phase, SavepointPhase::Completed | SavepointPhase::Failed)
        || sp.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await?;
    let name = sp.name_any();
    let now = || Time(k8s_openapi::jiff::Timestamp::now());
    // Dereference.
    let pipeline = ctx.pipelines.state().into_iter().find(|p| {
        p.namespace().as_deref() == Some(ns.as_str()) && p.name_any() == sp.spec.pipeline
    });
    let selector = detector_selector(&sp.spec.pipeline)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Vec<(String, Option<String>)> = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListPods { source })?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            (p.name_any(), ip)
        })
        .collect();
    // Validate.
    if let Err(reason) = validate(&name, pipeline.as_deref(), &pods) {
        tracing::warn!(savepoint = %name, %reason, "Savepoint cannot be taken.");
        apply_status(&ctx.client, sp.as_ref(), &failed(reason, now())).await?;
        return Ok(Action::await_change());
    }
    let pipeline = pipeline.expect("validated");
    // Claim: InProgress only if nobody wrote the status since this copy was read. The copy
    // comes from the watch cache, which can lag this controller's own last write (the
    // Completed status of the run just finished); taking the savepoint again from that stale
    // InProgress would reopen a finished savepoint. A conflict waits for the cache.
    let claimed = apply_status_if_unchanged(
        &ctx.client,
        sp.as_ref(),
        &SavepointStatus {
            phase: Some(SavepointPhase::InProgress),
            pipeline_generation: pipeline.metadata.generation,
            ..SavepointStatus::default()
        },
    )
    .await;
    match claimed {
        Err(e) if is_conflict(&e) => {
            tracing::debug!(savepoint = %name, "Savepoint changed since it was read; waiting for the cache.");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        other => other?,
    }
    // Take: every detector at once; each answers when its part is written.
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .unwrap_or_default();
    let answers: Answers = futures::future::join_all(
        pods.into_iter()
            .map(|(pod, ip)| take_part(&http, pod, ip.unwrap_or_default(), &name)),
    )
    .await;
    let s = status(&pipeline, &name, &answers, now());
    tracing::info!(savepoint = %name, phase = ?s.phase, bytes = ?s.size_bytes, message = ?s.message, "Savepoint taken.");
    apply_status(&ctx.client, sp.as_ref(), &s).await?;
    Ok(Action::await_change())
}

/// Retries failed reconciles after a delay.
pub fn error_policy(_sp: Arc<Savepoint>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_on_error(CONTROLLER, error, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_fixtures::parse_pipeline;

    fn time() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    #[test]
    fn validation_names_what_is_missing() {
        let plain = parse_pipeline(str::to_string);
        let durable = parse_pipeline(|s| {
            s.replace(
                "  parallelism: 4\n",
                "  parallelism: 4\n  checkpointing: {location: 's3://b/v'}\n",
            )
        });
        let pods = vec![("p-detector-0".to_string(), Some("10.0.0.1".to_string()))];
        assert!(validate("sp-1", Some(&durable), &pods).is_ok());
        for (name, p, pods, says) in [
            (
                "Bad Name",
                Some(&*durable),
                pods.clone(),
                "cannot name a savepoint",
            ),
            ("sp", None, pods.clone(), "does not exist"),
            ("sp", Some(&*plain), pods.clone(), "no spec.checkpointing"),
            ("sp", Some(&*durable), vec![], "no detector pod"),
            (
                "sp",
                Some(&*durable),
                vec![("p-detector-1".into(), None)],
                "p-detector-1 has no IP",
            ),
        ] {
            let e = validate(name, p, &pods).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn status_completes_with_every_part_or_fails_naming_the_pod() {
        let p = parse_pipeline(|s| {
            s.replace(
                "  parallelism: 4\n",
                "  parallelism: 4\n  checkpointing: {location: 's3://b/v/'}\n",
            )
        });
        let part = |pod: &str, bytes| SavepointPart {
            pod: pod.into(),
            partitions: vec!["t/0@10".into()],
            keys: 2,
            bytes,
        };
        let ok: Answers = vec![
            ("d-0".into(), Ok(part("d-0", 100))),
            ("d-1".into(), Ok(part("d-1", 50))),
        ];
        let s = status(&p, "sp-1", &ok, time());
        assert_eq!(s.phase, Some(SavepointPhase::Completed));
        assert_eq!(s.size_bytes, Some(150));
        assert_eq!(s.location.as_deref(), Some("s3://b/v/nab/savepoints/sp-1"));
        assert!(s.message.is_none());
        let bad: Answers = vec![
            ("d-0".into(), Ok(part("d-0", 100))),
            (
                "d-1".into(),
                Err("POST http://x: 500: storage unwritable\n".into()),
            ),
        ];
        let s = status(&p, "sp-1", &bad, time());
        assert_eq!(s.phase, Some(SavepointPhase::Failed));
        assert_eq!(
            s.message.as_deref(),
            Some("d-1: POST http://x: 500: storage unwritable")
        );
    }
}
