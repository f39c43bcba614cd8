//! Every file under `manifests/examples/` applied to the real control plane as a user would
//! (`kubectl apply -f manifests/examples/ -R`): the API server takes every object, every
//! DetectionRule becomes `Accepted=True` (the recommended NAB set included, whose detector and
//! ensemble rules the operator once rejected), and the config the operator renders for the
//! recommended NAB pipeline detects exactly what `vigil` does with the example files: a
//! detector (`vigil run` on the real broker) run with the rendered `pipeline.yaml` and
//! `rules.yaml` raises the same alerts as one run with the example files, and `vigil score`
//! gives the same per-event scores from both.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use vigil_api::v1alpha1::DetectionRule;

use crate::datapath::vigil_bin;
use crate::harness::{Operator, TestNamespace, admin, condition, nab_data, repo_root};

/// An `Accepted` condition as (status, reason, message).
type Verdict = (String, String, String);

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
}

/// Runs a detector on the real broker over `input` and returns its alert lines, sorted. The
/// files get their own topics and consumer group (`tag`), nothing else is changed.
fn detect(dir: &Path, tag: &str, files: &[(&str, String)], input: &Path) -> Vec<String> {
    let sfx = &crate::harness::uuid_like()[..8];
    let rename = |text: &str| {
        text.replace("nab.metrics", &format!("e2e-{tag}-{sfx}"))
            .replace("vigil.alerts", &format!("e2e-{tag}-{sfx}.alerts"))
            .replace("vigil-nab", &format!("e2e-{tag}-{sfx}"))
    };
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, text)| {
            let p = dir.join(format!("{tag}-{name}"));
            std::fs::write(&p, rename(text)).unwrap();
            p
        })
        .collect();
    let out = Command::new(vigil_bin())
        .arg("run")
        .arg("--pipeline")
        .arg(&paths[0])
        .arg("--rules")
        .args(&paths[1..])
        .args(["--bootstrap-servers", &crate::harness::kafka_bootstrap()])
        .arg("--replay")
        .arg(input)
        .args(["--replay-key", "series", "--exit-when-idle", "--no-watch"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("vigil run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vigil run ({tag}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut alerts: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("ALERT"))
        .map(str::to_string)
        .collect();
    alerts.sort();
    alerts
}

fn score(pipeline: &Path, rules: &[&Path], input: &Path, output: &Path) -> String {
    let out = Command::new(vigil_bin())
        .arg("score")
        .arg("--pipeline")
        .arg(pipeline)
        .arg("--rules")
        .args(rules)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .env("RUST_LOG", "warn")
        .output()
        .expect("vigil score");
    assert!(
        out.status.success(),
        "vigil score failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(output).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn every_example_applies_and_every_rule_is_accepted() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-examples").await;
    let op = Operator::start(&client, &ns.name, &[]).await;
    let examples = repo_root().join("manifests/examples");
    let mut files = Vec::new();
    yaml_files(&examples, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("nab/rules.yaml")),
        "{files:?}"
    );
    let mut rules = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["kind"] == "DetectionRule" {
                rules.insert(v["metadata"]["name"].as_str().unwrap().to_string());
            }
        }
        ns.apply_yaml(&text).await;
    }
    assert!(rules.contains("nab-ensemble") && rules.contains("nab-seasonal"));

    // Every rule Accepted=True.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = ns
            .api::<DetectionRule>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let verdicts: Vec<(String, Option<Verdict>)> = listed
            .iter()
            .map(|r| {
                let c = r
                    .status
                    .as_ref()
                    .and_then(|s| condition(&s.conditions, "Accepted"));
                (r.metadata.name.clone().unwrap(), c)
            })
            .collect();
        let accepted: BTreeSet<String> = verdicts
            .iter()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.0 == "True"))
            .map(|(n, _)| n.clone())
            .collect();
        if accepted == rules {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every example rule is Accepted=True within 60 s: {:#?}\n{}",
            verdicts
                .iter()
                .filter(|(n, _)| !accepted.contains(n))
                .collect::<Vec<_>>(),
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The durable-state example: its detectors get the checkpoint store's credentials from the
    // Secret, and the Secret was taken by the API server with the rest.
    let deadline = Instant::now() + Duration::from_secs(60);
    let sts = loop {
        match ns
            .api::<k8s_openapi::api::apps::v1::StatefulSet>()
            .get_opt("service-latency-detector")
            .await
            .unwrap()
        {
            Some(s) => break s,
            None => {
                assert!(
                    Instant::now() < deadline,
                    "no StatefulSet for the durable-state example: {}",
                    op.log_text()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let env_from = pod.containers[0].env_from.clone().unwrap_or_default();
    assert_eq!(
        env_from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
        Some("vigil-checkpoint-credentials")
    );
    assert!(
        ns.api::<k8s_openapi::api::core::v1::Secret>()
            .get_opt("vigil-checkpoint-credentials")
            .await
            .unwrap()
            .is_some()
    );

    // The rendered config of the recommended pipeline carries every rule that selects it, and
    // scores a series exactly as the example files do.
    let cm = crate::harness::wait_for(
        "the nab pipeline's config with its rules",
        Duration::from_secs(30),
        || async {
            let cm = ns
                .api::<ConfigMap>()
                .get_opt("nab-detector-config")
                .await
                .ok()??;
            let data = cm.data?;
            data.get("rules.yaml")?
                .contains("name: nab-ensemble")
                .then_some(data)
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, rendered_rules) = (
        dir.path().join("pipeline.yaml"),
        dir.path().join("rules.yaml"),
    );
    std::fs::write(&pipeline, &cm["pipeline.yaml"]).unwrap();
    std::fs::write(&rendered_rules, &cm["rules.yaml"]).unwrap();
    let input = nab_data().join("data/artificialWithAnomaly/art_daily_jumpsup.csv");
    let from_cluster = score(
        &pipeline,
        &[&rendered_rules],
        &input,
        &dir.path().join("a.csv"),
    );
    let from_files = score(
        &examples.join("nab/pipeline.yaml"),
        &[
            &examples.join("nab/rules.yaml"),
            &examples.join("nab/comparison.yaml"),
        ],
        &input,
        &dir.path().join("b.csv"),
    );
    assert_eq!(from_cluster.lines().count(), 4033);
    assert!(
        from_cluster
            .lines()
            .skip(1)
            .any(|l| l.rsplit(',').next().unwrap().parse::<f64>().unwrap() > 0.5),
        "the rendered config never scores an anomaly on a series with one"
    );
    assert!(
        from_cluster == from_files,
        "the rendered config scores differently from the example files"
    );

    // Detectors: the rendered config alerts exactly as the example files do.
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let rendered = detect(
        dir.path(),
        "rendered",
        &[
            ("pipeline.yaml", cm["pipeline.yaml"].clone()),
            ("rules.yaml", cm["rules.yaml"].clone()),
        ],
        &input,
    );
    let files = detect(
        dir.path(),
        "files",
        &[
            ("pipeline.yaml", read(examples.join("nab/pipeline.yaml"))),
            ("rules.yaml", read(examples.join("nab/rules.yaml"))),
            (
                "comparison.yaml",
                read(examples.join("nab/comparison.yaml")),
            ),
        ],
        &input,
    );
    assert!(
        rendered.iter().any(|l| l.contains("rule=nab-ensemble")),
        "the recommended ensemble raised no alert on a series with an anomaly: {rendered:#?}"
    );
    assert_eq!(
        rendered, files,
        "the rendered config alerts differently from the example files"
    );
    eprintln!(
        "alerts from the rendered config and the files: {}",
        rendered.len()
    );
    assert!(op.terminate().await.success());
    ns.delete().await;
}
