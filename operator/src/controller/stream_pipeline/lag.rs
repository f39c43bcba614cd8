//! The pipeline's `Lagging` condition from its detectors' stage lag reports (`GET /lag` on
//! each detector pod's metrics port, [`vigil_api::contract::detector::lag`]; the channel of
//! savepoints and rollouts). `read` is the I/O; [`condition`] is pure.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use vigil_api::contract::detector::lag::{LAG_PATH, LagLevel, LagReport};

use crate::config::DETECTOR_METRICS_PORT;
use crate::controller::{Context, Error};
use crate::labels::{detector_selector, selector_string};

/// Condition type: True while a stage's p99 is past `spec.lag.warn` on some detector.
pub const LAGGING: &str = "Lagging";
/// How often a pipeline with detectors is read again.
pub const LAG_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// The detector pods of `pipeline` with an IP, and the reports of those that answered:
/// `(pods, [(pod, report)])`.
///
/// # Errors
/// Listing the pods failed.
pub async fn read(
    ctx: &Context,
    namespace: &str,
    pipeline: &str,
) -> Result<(usize, Vec<(String, LagReport)>), Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&selector_string(&detector_selector(pipeline))))
        .await
        .map_err(|source| Error::ListPods { source })?;
    let http = reqwest::Client::builder()
        // Detector pods answer in milliseconds; one that does not is left out this time.
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let targets: Vec<(String, String)> = pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.name_any(), p.status?.pod_ip?)))
        .collect();
    let pods = targets.len();
    let answers = futures::future::join_all(targets.into_iter().map(|(pod, ip)| {
        let http = http.clone();
        async move {
            let url = format!("http://{ip}:{DETECTOR_METRICS_PORT}{LAG_PATH}");
            let body = http
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .ok()?
                .bytes()
                .await
                .ok()?;
            serde_json::from_slice::<LagReport>(&body)
                .ok()
                .map(|r| (pod, r))
        }
    }))
    .await;
    Ok((pods, answers.into_iter().flatten().collect()))
}

/// `(lagging, reason, message)` of the `Lagging` condition; `None` when no detector answered.
pub fn condition(reports: &[(String, LagReport)]) -> Option<(bool, &'static str, String)> {
    let first = &reports.first()?.1;
    let mut over: Vec<(LagLevel, String)> = Vec::new();
    for (pod, r) in reports {
        for s in &r.stages {
            let (what, limit) = match s.level {
                LagLevel::Ok => continue,
                LagLevel::Warn => ("warn", r.warn_seconds),
                LagLevel::Critical => ("critical", r.critical_seconds),
            };
            over.push((
                s.level,
                format!(
                    "{pod}: stage {} p99 {:.1} s over {what} {limit} s",
                    s.stage, s.p99
                ),
            ));
        }
    }
    if over.is_empty() {
        return Some((
            false,
            "WithinThresholds",
            format!(
                "p99 of every stage under {} s (spec.lag.warn) over the last minute on {} detector(s)",
                first.warn_seconds,
                reports.len()
            ),
        ));
    }
    over.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let reason = if over[0].0 == LagLevel::Critical {
        "StageLagCritical"
    } else {
        "StageLagWarning"
    };
    let message = over
        .into_iter()
        .map(|(_, m)| m)
        .collect::<Vec<_>>()
        .join("; ");
    Some((true, reason, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_api::contract::detector::lag::StageLag;

    fn report(stages: &[(&str, f64, LagLevel)]) -> LagReport {
        LagReport {
            warn_seconds: 15.0,
            critical_seconds: 45.0,
            stages: stages
                .iter()
                .map(|(s, p99, level)| StageLag {
                    stage: (*s).into(),
                    samples: 100,
                    p50: 0.1,
                    p95: 0.2,
                    p99: *p99,
                    level: *level,
                })
                .collect(),
        }
    }

    #[test]
    fn the_worst_stage_names_the_reason_and_every_one_past_warn_is_listed() {
        assert_eq!(condition(&[]), None);
        let ok = (
            "d-0".to_string(),
            report(&[("kafka_to_processed", 0.3, LagLevel::Ok)]),
        );
        let (lagging, reason, message) = condition(std::slice::from_ref(&ok)).unwrap();
        assert!(!lagging);
        assert_eq!(reason, "WithinThresholds");
        assert!(message.contains("under 15 s"), "{message}");
        let warn = (
            "d-1".to_string(),
            report(&[("processed_to_delivered", 17.24, LagLevel::Warn)]),
        );
        let (lagging, reason, message) = condition(&[ok.clone(), warn.clone()]).unwrap();
        assert!(lagging);
        assert_eq!(reason, "StageLagWarning");
        assert_eq!(
            message,
            "d-1: stage processed_to_delivered p99 17.2 s over warn 15 s"
        );
        let crit = (
            "d-2".to_string(),
            report(&[("kafka_to_delivered", 50.0, LagLevel::Critical)]),
        );
        let (_, reason, message) = condition(&[ok, warn, crit]).unwrap();
        assert_eq!(reason, "StageLagCritical");
        assert!(
            message.starts_with("d-2: stage kafka_to_delivered p99 50.0 s over critical 45 s; d-1"),
            "{message}"
        );
    }
}
