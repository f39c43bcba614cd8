//! DetectionRules: a rule change reaches the detectors' ConfigMap without touching their pod
//! template (no restart) while a pipeline change rolls them; semantic errors become
//! `Accepted=False` conditions and a `Degraded` pipeline, not retries or crashes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{DetectionRule, StreamPipeline};

use crate::fixtures;
use crate::harness::{
    Operator, TestNamespace, admin, condition, create_topic, uuid_like, wait_for,
};

const T: Duration = Duration::from_secs(30);

async fn pod_uids(ns: &TestNamespace, pipeline: &str) -> BTreeSet<String> {
    let selector =
        format!("app.kubernetes.io/instance={pipeline},app.kubernetes.io/name=vigil-detector");
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid)
        .collect()
}

fn template_hash(sts: &StatefulSet) -> String {
    let t = &sts.spec.as_ref().unwrap().template;
    t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["vigil.dev/config-hash"].clone()
}

async fn rules_yaml(ns: &TestNamespace, pipeline: &str) -> Option<String> {
    let cm = ns
        .api::<ConfigMap>()
        .get_opt(&format!("{pipeline}-detector-config"))
        .await
        .ok()??;
    cm.data?.get("rules.yaml").cloned()
}

async fn ready(ns: &TestNamespace, pipeline: &str) -> bool {
    let Ok(Some(p)) = ns.api::<StreamPipeline>().get_opt(pipeline).await else {
        return false;
    };
    p.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
        .is_some_and(|c| c.0 == "True")
        && p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn a_rule_change_reaches_the_config_without_restarting_detectors() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-reload").await;
    let topic = format!("e2e-reload-{}", &uuid_like()[..8]);
    create_topic(&topic, 2).await;
    let op = Operator::start(&client, &ns.name, &[]).await;
    ns.apply_yaml(&fixtures::pipeline("reload", &topic, 2, "reload"))
        .await;
    ns.apply_yaml(&fixtures::threshold_rule("hot", "reload", "fast", 90.0))
        .await;
    wait_for("the pipeline Ready", T, || async {
        ready(&ns, "reload").await.then_some(())
    })
    .await;
    let sts_before = ns
        .api::<StatefulSet>()
        .get("reload-detector")
        .await
        .unwrap();
    let pods_before = pod_uids(&ns, "reload").await;
    assert_eq!(pods_before.len(), 2);
    assert!(
        rules_yaml(&ns, "reload")
            .await
            .unwrap()
            .contains("value: 90.0")
    );

    // Change the rule: the ConfigMap follows, the pod template does not.
    let changed = Instant::now();
    ns.apply_yaml(&fixtures::threshold_rule("hot", "reload", "fast", 95.5))
        .await;
    wait_for("rules.yaml with the new threshold", T, || async {
        rules_yaml(&ns, "reload")
            .await
            .filter(|y| y.contains("value: 95.5"))
    })
    .await;
    eprintln!(
        "DetectionRule change -> ConfigMap updated in {:?}",
        changed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sts_after = ns
        .api::<StatefulSet>()
        .get("reload-detector")
        .await
        .unwrap();
    assert_eq!(
        sts_after.metadata.generation, sts_before.metadata.generation,
        "the StatefulSet spec changed"
    );
    assert_eq!(template_hash(&sts_after), template_hash(&sts_before));
    assert_eq!(
        pod_uids(&ns, "reload").await,
        pods_before,
        "detector pods were replaced"
    );

    // The audit trail: status.lastChange and a SpecChanged Event name the applier (this
    // test's field manager) and the field that changed.
    let change = wait_for("status.lastChange of generation 2", T, || async {
        let r = ns
            .api::<vigil_api::v1alpha1::DetectionRule>()
            .get("hot")
            .await
            .ok()?;
        r.status?.last_change.filter(|c| c.generation == 2)
    })
    .await;
    assert_eq!(change.manager, crate::harness::TEST_MANAGER);
    assert_eq!(change.operation, "Apply");
    assert_eq!(change.changed, ["spec.threshold"]);
    let note = wait_for("a SpecChanged Event", T, || async {
        crate::harness::event_notes(&ns, "SpecChanged")
            .await
            .into_iter()
            .find(|n| n.starts_with("generation 2 "))
    })
    .await;
    assert_eq!(
        note,
        format!(
            "generation 2 applied by {} (Apply): spec.threshold changed",
            crate::harness::TEST_MANAGER
        )
    );

    // Change the pipeline: the hash moves and the StatefulSet rolls every pod.
    let yaml = fixtures::pipeline("reload", &topic, 2, "reload")
        .replace("maxOutOfOrderness: 5s", "maxOutOfOrderness: 10s");
    ns.apply_yaml(&yaml).await;
    let sts_rolled = wait_for("a new pod template", T, || async {
        ns.api::<StatefulSet>()
            .get("reload-detector")
            .await
            .ok()
            .filter(|s| template_hash(s) != template_hash(&sts_before))
    })
    .await;
    assert!(sts_rolled.metadata.generation > sts_before.metadata.generation);
    wait_for(
        "every pod replaced and the pipeline Ready",
        Duration::from_secs(60),
        || async {
            let now = pod_uids(&ns, "reload").await;
            (now.len() == 2 && now.is_disjoint(&pods_before) && ready(&ns, "reload").await)
                .then_some(())
        },
    )
    .await;
    assert!(op.terminate().await.success());
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn semantic_rule_errors_are_conditions() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-semantic").await;
    let topic = format!("e2e-semantic-{}", &uuid_like()[..8]);
    create_topic(&topic, 1).await;
    let mut op = Operator::start(&client, &ns.name, &[]).await;
    ns.apply_yaml(&fixtures::pipeline("sem", &topic, 1, "sem"))
        .await;
    ns.apply_yaml(&fixtures::threshold_rule("good", "sem", "fast", 90.0))
        .await;
    ns.apply_yaml(&fixtures::threshold_rule(
        "wrong-window",
        "sem",
        "slow",
        90.0,
    ))
    .await;
    ns.apply_yaml(
        &fixtures::threshold_rule("unknown-field", "sem", "fast", 1.0)
            .replace("field: value", "field: cpu"),
    )
    .await;
    ns.apply_yaml(
        r#"
apiVersion: vigil.dev/v1alpha1
kind: DetectionRule
metadata: {name: bad-cel}
spec:
  window: fast
  expression: {expr: "features.value.mean >"}
"#,
    )
    .await;

    let accepted = |name: &'static str| {
        let api = ns.api::<DetectionRule>();
        async move {
            wait_for(name, T, || async {
                let r = api.get(name).await.ok()?;
                condition(&r.status?.conditions, "Accepted")
            })
            .await
        }
    };
    let (status, reason, _) = accepted("good").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));
    // Errors against a pipeline name it; errors of the rule alone do not need to.
    for (rule, prefix) in [
        ("wrong-window", "pipeline `sem`: spec.window: "),
        ("unknown-field", "pipeline `sem`: spec.threshold.field: "),
        ("bad-cel", "spec.expression.expr: CEL does not parse"),
    ] {
        let (status, reason, message) = accepted(rule).await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "Invalid"),
            "{rule}"
        );
        assert!(message.starts_with(prefix), "{rule}: {message}");
    }

    // The pipeline runs the good rule only and says which rules it left out.
    let (status, reason, message) = wait_for("Degraded=True", T, || async {
        let p = ns.api::<StreamPipeline>().get("sem").await.ok()?;
        condition(&p.status?.conditions, "Degraded").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "RulesRejected")
    );
    for rule in ["wrong-window", "unknown-field", "bad-cel"] {
        assert!(
            message.contains(&format!("DetectionRule `{rule}` is left out")),
            "{message}"
        );
    }
    let mut m = Manifests::default();
    m.add_str("rules.yaml", &rules_yaml(&ns, "sem").await.unwrap())
        .unwrap();
    let names: Vec<_> = m
        .rules
        .iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["good"]);
    assert!(op.running());
    let metrics = op.metrics().await;
    assert!(
        !metrics.contains("vigil_operator_reconcile_errors_total"),
        "{metrics}"
    );

    // Fixing a rule includes it.
    ns.apply_yaml(&fixtures::threshold_rule(
        "wrong-window",
        "sem",
        "analysis",
        90.0,
    ))
    .await;
    wait_for("wrong-window in rules.yaml", T, || async {
        rules_yaml(&ns, "sem")
            .await
            .filter(|y| y.contains("name: wrong-window"))
    })
    .await;
    assert!(op.terminate().await.success());
    ns.delete().await;
}
