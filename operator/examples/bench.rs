//! Measures the operator against a running cluster (see `scripts/measure-operator.sh`, which
//! starts the cluster, the broker and a release build of the operator):
//!
//! - `latency`: sequential spec changes of StreamPipelines, each timed from the API server's
//!   acknowledgement of the patch to the watch event showing the StatefulSet with its new
//!   pod template (CR change -> children applied), and DetectionRule changes timed to the
//!   ConfigMap event carrying the new rule. Prints p50/p90/p99/max.
//! - `scale`: creates N StreamPipelines, waits until every one has its StatefulSet and a
//!   `Ready` status, then reads the operator's resident memory (`/proc/<pid>/status`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use vigil_api::v1alpha1::StreamPipeline;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Creates a Kafka topic (idempotent).
    CreateTopic {
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Kafka bootstrap servers.
        #[arg(long)]
        bootstrap_servers: String,
    },
    /// CR change -> children applied latency.
    Latency {
        /// Namespace to create and use.
        #[arg(long, default_value = "bench-latency")]
        namespace: String,
        /// Source topic (must exist).
        #[arg(long)]
        topic: String,
        /// Pipelines to spread the changes over.
        #[arg(long, default_value_t = 10)]
        pipelines: usize,
        /// Changes to time (each kind).
        #[arg(long, default_value_t = 200)]
        changes: usize,
    },
    /// Operator memory with many pipelines.
    Scale {
        /// Namespace to create and use.
        #[arg(long, default_value = "bench-scale")]
        namespace: String,
        /// Source topic (must exist).
        #[arg(long)]
        topic: String,
        /// Pipelines to create.
        #[arg(long, default_value_t = 1000)]
        pipelines: usize,
        /// Process id of the operator.
        #[arg(long)]
        operator_pid: u32,
        /// Longest wait for every pipeline to be Ready.
        #[arg(long, default_value = "9m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

const MANAGER: &str = "vigil-bench";

fn pipeline(name: &str, topic: &str, out_of_orderness_s: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "vigil.dev/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": name, "labels": {"bench": "true"}},
        "spec": {
            "source": {"kafka": {"topics": [topic], "consumerGroup": name}},
            "format": {"eventTime": {"field": "timestamp"}, "wide": {"fields": [{"name": "value"}]}},
            "windows": [{"name": "fast", "size": "30s", "slide": "15s", "maxOutOfOrderness": format!("{out_of_orderness_s}s")}],
            "parallelism": 1,
            "sinks": {"alerts": {"topic": format!("{topic}.alerts")}}
        }
    })
}

fn rule(name: &str, value: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "vigil.dev/v1alpha1",
        "kind": "DetectionRule",
        "metadata": {"name": name},
        "spec": {
            "pipelineSelector": {"matchLabels": {"bench": "true"}},
            "window": "fast",
            "threshold": {"field": "value", "feature": "max", "operator": ">", "value": value}
        }
    })
}

async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        api.create(&PostParams::default(), &ns).await?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap())
    );
}

/// Latest pod-template hash per StatefulSet and rules.yaml per ConfigMap, with the time the
/// watch delivered them.
#[derive(Default)]
struct Seen {
    hashes: HashMap<String, (String, Instant)>,
    rules: HashMap<String, (String, Instant)>,
}

async fn latency(
    client: Client,
    ns: &str,
    topic: &str,
    pipelines: usize,
    changes: usize,
) -> anyhow::Result<()> {
    ensure_namespace(&client, ns).await?;
    let sp: Api<StreamPipeline> = Api::namespaced(client.clone(), ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let rules: Api<vigil_api::v1alpha1::DetectionRule> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply(MANAGER).force();
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        let seen_sts = seen.clone();
        tokio::spawn(
            watcher(sts.clone(), watcher::Config::default())
                .applied_objects()
                .try_for_each(move |s| {
                    let now = Instant::now();
                    let hash = s
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.metadata.as_ref())
                        .and_then(|m| m.annotations.as_ref())
                        .and_then(|a| a.get("vigil.dev/config-hash").cloned())
                        .unwrap_or_default();
                    seen_sts
                        .lock()
                        .unwrap()
                        .hashes
                        .insert(s.metadata.name.clone().unwrap_or_default(), (hash, now));
                    futures::future::ready(Ok(()))
                }),
        );
        let seen_cms = seen.clone();
        tokio::spawn(
            watcher(cms.clone(), watcher::Config::default())
                .applied_objects()
                .try_for_each(move |c| {
                    let now = Instant::now();
                    let rules = c
                        .data
                        .as_ref()
                        .and_then(|d| d.get("rules.yaml").cloned())
                        .unwrap_or_default();
                    seen_cms
                        .lock()
                        .unwrap()
                        .rules
                        .insert(c.metadata.name.clone().unwrap_or_default(), (rules, now));
                    futures::future::ready(Ok(()))
                }),
        );
    }
    let names: Vec<String> = (0..pipelines).map(|i| format!("lat-{i}")).collect();
    for n in &names {
        sp.patch(n, &pp, &Patch::Apply(pipeline(n, topic, 0)))
            .await?;
    }
    rules
        .patch("lat-rule", &pp, &Patch::Apply(rule("lat-rule", 0)))
        .await?;
    // Wait for every pipeline's StatefulSet with the rule in its config.
    let start = Instant::now();
    loop {
        let ready = {
            let s = seen.lock().unwrap();
            names.iter().all(|n| {
                s.hashes.contains_key(&format!("{n}-detector"))
                    && s.rules
                        .get(&format!("{n}-detector-config"))
                        .is_some_and(|(r, _)| r.contains("value: 0"))
            })
        };
        if ready {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("pipelines not applied within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut pipeline_samples = Vec::new();
    for k in 1..=changes {
        let n = &names[k % names.len()];
        let key = format!("{n}-detector");
        let before = seen
            .lock()
            .unwrap()
            .hashes
            .get(&key)
            .map(|h| h.0.clone())
            .unwrap_or_default();
        sp.patch(n, &pp, &Patch::Apply(pipeline(n, topic, k)))
            .await?;
        let acked = Instant::now();
        let deadline = acked + Duration::from_secs(30);
        loop {
            let seen_now = seen.lock().unwrap().hashes.get(&key).cloned();
            if let Some((hash, at)) = seen_now
                && hash != before
            {
                pipeline_samples.push(at.saturating_duration_since(acked));
                break;
            }
            if Instant::now() > deadline {
                bail!("change {k} of {n} not applied within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    report(
        "StreamPipeline change -> StatefulSet applied",
        pipeline_samples,
    );

    let mut rule_samples = Vec::new();
    for k in 1..=changes {
        rules
            .patch("lat-rule", &pp, &Patch::Apply(rule("lat-rule", k)))
            .await?;
        let acked = Instant::now();
        let needle = format!("value: {k}.0");
        let deadline = acked + Duration::from_secs(30);
        // Time until the ConfigMap of every selected pipeline carries the new rule.
        loop {
            let done = {
                let s = seen.lock().unwrap();
                names
                    .iter()
                    .map(|n| s.rules.get(&format!("{n}-detector-config")))
                    .try_fold(acked, |latest, r| match r {
                        Some((rules, at)) if rules.contains(&needle) => Some(latest.max(*at)),
                        _ => None,
                    })
            };
            if let Some(last) = done {
                rule_samples.push(last.saturating_duration_since(acked));
                break;
            }
            if Instant::now() > deadline {
                bail!("rule change {k} not in every ConfigMap within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    report(
        &format!(
            "DetectionRule change -> ConfigMaps of all {pipelines} selected pipelines updated"
        ),
        rule_samples,
    );
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("read /proc/<pid>/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

async fn scale(
    client: Client,
    ns: &str,
    topic: &str,
    n: usize,
    pid: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    ensure_namespace(&client, ns).await?;
    let sp: Api<StreamPipeline> = Api::namespaced(client.clone(), ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply(MANAGER).force();
    let (rss0, _) = rss_kib(pid)?;
    println!("operator RSS before: {:.1} MiB", rss0 as f64 / 1024.0);
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let sp = sp.clone();
            let pp = pp.clone();
            async move {
                let name = format!("scale-{i}");
                sp.patch(&name, &pp, &Patch::Apply(pipeline(&name, topic, 0)))
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "created {n} StreamPipelines in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let mut peak = 0;
    loop {
        let with_sts = sts.list_metadata(&ListParams::default()).await?.items.len();
        let ready = sp
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        let (rss, _) = rss_kib(pid)?;
        peak = peak.max(rss);
        println!(
            "t={:>5.1} s  StatefulSets {with_sts}/{n}  Ready {ready}/{n}  operator RSS {:.1} MiB",
            start.elapsed().as_secs_f64(),
            rss as f64 / 1024.0
        );
        if with_sts >= n && ready >= n {
            break;
        }
        if start.elapsed() > timeout {
            bail!("not every pipeline Ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    println!(
        "all {n} pipelines applied and Ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // Steady state: let the requeues and watch events settle.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (rss, hwm) = rss_kib(pid)?;
    println!(
        "operator memory with {n} StreamPipelines: RSS {:.1} MiB (sampled peak {:.1} MiB, VmHWM {:.1} MiB)",
        rss as f64 / 1024.0,
        peak.max(rss) as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("create topic {t}: {e}"),
        }
    }
    eprintln!("topic {topic}: {partitions} partitions");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::try_default().await?;
    match args.command {
        Cmd::CreateTopic {
            topic,
            partitions,
            bootstrap_servers,
        } => create_topic(&bootstrap_servers, &topic, partitions).await,
        Cmd::Latency {
            namespace,
            topic,
            pipelines,
            changes,
        } => latency(client, &namespace, &topic, pipelines, changes).await,
        Cmd::Scale {
            namespace,
            topic,
            pipelines,
            operator_pid,
            timeout,
        } => scale(client, &namespace, &topic, pipelines, operator_pid, timeout).await,
    }
}
