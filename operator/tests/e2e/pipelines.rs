//! StreamPipeline children, status, garbage collection, replica clamping and the scale
//! subresource, with the operator running as the chart's ServiceAccount.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use vigil_api::manifest::Manifests;
use vigil_api::v1alpha1::{DetectionRule, StreamPipeline};

use crate::fixtures;
use crate::harness::{
    Operator, TestNamespace, admin, condition, create_topic, kafka_bootstrap, uuid_like, wait_for,
};

const T: Duration = Duration::from_secs(30);

async fn pipeline_condition(
    ns: &TestNamespace,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let p = ns.api::<StreamPipeline>().get_opt(name).await.ok()??;
    condition(&p.status?.conditions, type_)
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn nab_example_gets_its_detectors_config_and_status() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-nab").await;
    create_topic("nab.machine-temperature", 1).await;
    let mut op = Operator::start(&client, &ns.name, &[]).await;
    let example = std::fs::read_to_string(
        crate::harness::repo_root().join("manifests/examples/nab-machine-temperature.yaml"),
    )
    .unwrap();
    ns.apply_yaml(&example).await;
    let name = "machine-temperature";
    let child = "machine-temperature-detector";

    let sts = wait_for("the StatefulSet", T, || async {
        ns.api::<StatefulSet>().get_opt(child).await.ok().flatten()
    })
    .await;
    let pipeline = ns.api::<StreamPipeline>().get(name).await.unwrap();
    let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("StreamPipeline", name, Some(true))
    );
    assert_eq!(Some(&owner.uid), pipeline.metadata.uid.as_ref());
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some(child));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(child));
    let c = &pod.containers[0];
    assert_eq!(c.command.as_deref(), Some(&["vigil".to_string()][..]));
    assert_eq!(
        c.args.as_ref().unwrap().join(" "),
        "run --pipeline /etc/vigil/pipeline.yaml --rules /etc/vigil/rules.yaml --metrics-addr 0.0.0.0:9090"
    );
    let env = c.env.as_ref().unwrap();
    let bootstrap = env
        .iter()
        .find(|e| e.name == "VIGIL_BOOTSTRAP_SERVERS")
        .unwrap();
    assert_eq!(bootstrap.value.as_deref(), Some(kafka_bootstrap().as_str()));
    let group = env
        .iter()
        .find(|e| e.name == "VIGIL_GROUP_INSTANCE_ID")
        .unwrap();
    assert_eq!(
        group
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.name"
    );

    // Every other child exists, owned by the pipeline; the ConfigMap has all four rules once
    // the operator has seen them.
    let cm = wait_for("the four rules in the ConfigMap", T, || async {
        let cm = ns
            .api::<ConfigMap>()
            .get_opt("machine-temperature-detector-config")
            .await
            .ok()??;
        let rules = cm.data.as_ref()?.get("rules.yaml")?;
        (rules.matches("kind: DetectionRule").count() == 4).then_some(cm)
    })
    .await;
    let svc = ns.api::<Service>().get(child).await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let pdb = ns.api::<PodDisruptionBudget>().get(child).await.unwrap();
    assert!(pdb.spec.unwrap().max_unavailable.is_some());
    // Least privilege: the detectors' ServiceAccount has no token and no Role.
    let sa = ns.api::<ServiceAccount>().get(child).await.unwrap();
    assert_eq!(sa.automount_service_account_token, Some(false));
    assert!(ns.api::<Role>().get_opt(child).await.unwrap().is_none());
    assert!(
        ns.api::<RoleBinding>()
            .get_opt(child)
            .await
            .unwrap()
            .is_none()
    );
    for owners in [
        &cm.metadata.owner_references,
        &svc.metadata.owner_references,
    ] {
        assert_eq!(owners.as_ref().unwrap()[0].uid, owner.uid);
    }

    // The config is what `vigil run` reads: the pipeline with the broker filled in, the rules.
    let data = cm.data.unwrap();
    let mut m = Manifests::default();
    m.add_str("pipeline.yaml", &data["pipeline.yaml"]).unwrap();
    m.add_str("rules.yaml", &data["rules.yaml"]).unwrap();
    assert_eq!(
        m.pipelines[0]
            .spec
            .source
            .kafka
            .bootstrap_servers
            .as_deref(),
        Some(kafka_bootstrap().as_str())
    );
    assert_eq!(
        m.pipelines[0].spec,
        pipeline.spec.clone().with_bootstrap(&kafka_bootstrap())
    );
    let mut rules: Vec<_> = m
        .rules
        .iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            "erratic",
            "overheating",
            "temperature-drop",
            "temperature-shift"
        ]
    );

    // Status: kwok makes the pod Ready, the pipeline Ready; the rules Accepted, naming it.
    wait_for("Ready=True", T, || async {
        pipeline_condition(&ns, name, "Ready")
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    let p = ns.api::<StreamPipeline>().get(name).await.unwrap();
    let status = p.status.unwrap();
    assert_eq!(status.observed_generation, p.metadata.generation);
    assert_eq!(status.replicas, Some(1));
    assert_eq!(status.partitions, Some(1));
    assert_eq!(
        status.selector.as_deref(),
        Some(
            "app.kubernetes.io/instance=machine-temperature,app.kubernetes.io/name=vigil-detector"
        )
    );
    assert_eq!(
        condition(&status.conditions, "Degraded").unwrap().0,
        "False"
    );
    for rule in [
        "erratic",
        "overheating",
        "temperature-drop",
        "temperature-shift",
    ] {
        let r = wait_for("Accepted", T, || async {
            ns.api::<DetectionRule>()
                .get(rule)
                .await
                .ok()
                .filter(|r| r.status.as_ref().is_some_and(|s| !s.conditions.is_empty()))
        })
        .await;
        let s = r.status.unwrap();
        assert_eq!(
            condition(&s.conditions, "Accepted").unwrap().0,
            "True",
            "{rule}: {:?}",
            s.conditions
        );
        assert_eq!(s.pipelines, [name]);
    }
    // Events on transitions, from the operator.
    let events: Api<Event> = ns.api();
    let events = events.list(&ListParams::default()).await.unwrap();
    assert!(
        events.items.iter().any(
            |e| e.reporting_controller.as_deref() == Some("vigil-operator")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some("Running")
        ),
        "no Running event for the pipeline"
    );
    let metrics = op.metrics().await;
    assert!(
        metrics.contains("vigil_operator_reconcile_total{controller=\"stream_pipeline\"}"),
        "{metrics}"
    );
    assert!(op.running());
    assert!(
        op.terminate().await.success(),
        "the operator did not exit cleanly on SIGTERM"
    );
    ns.delete().await;
}

trait WithBootstrap {
    fn with_bootstrap(self, b: &str) -> Self;
}

impl WithBootstrap for vigil_api::v1alpha1::StreamPipelineSpec {
    fn with_bootstrap(mut self, b: &str) -> Self {
        self.source.kafka.bootstrap_servers = Some(b.to_string());
        self
    }
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn deleting_a_pipeline_garbage_collects_its_children() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-gc").await;
    let topic = format!("e2e-gc-{}", &uuid_like()[..8]);
    create_topic(&topic, 1).await;
    let op = Operator::start(&client, &ns.name, &[]).await;
    ns.apply_yaml(&fixtures::pipeline("gc", &topic, 1, "gc"))
        .await;
    wait_for("the StatefulSet", T, || async {
        ns.api::<StatefulSet>()
            .get_opt("gc-detector")
            .await
            .ok()
            .flatten()
    })
    .await;
    wait_for("the PodDisruptionBudget", T, || async {
        ns.api::<PodDisruptionBudget>()
            .get_opt("gc-detector")
            .await
            .ok()
            .flatten()
    })
    .await;

    ns.api::<StreamPipeline>()
        .delete("gc", &DeleteParams::background())
        .await
        .unwrap();
    // kube-controller-manager's garbage collector deletes the children through owner references.
    wait_for(
        "every child to be collected",
        Duration::from_secs(60),
        || async {
            let gone = ns
                .api::<StatefulSet>()
                .get_opt("gc-detector")
                .await
                .ok()?
                .is_none()
                && ns
                    .api::<ConfigMap>()
                    .get_opt("gc-detector-config")
                    .await
                    .ok()?
                    .is_none()
                && ns
                    .api::<Service>()
                    .get_opt("gc-detector")
                    .await
                    .ok()?
                    .is_none()
                && ns
                    .api::<PodDisruptionBudget>()
                    .get_opt("gc-detector")
                    .await
                    .ok()?
                    .is_none()
                && ns
                    .api::<ServiceAccount>()
                    .get_opt("gc-detector")
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
    assert!(op.terminate().await.success());
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn replicas_are_clamped_to_partitions_and_scale_follows() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-clamp").await;
    let topic = format!("e2e-clamp-{}", &uuid_like()[..8]);
    create_topic(&topic, 2).await;
    let op = Operator::start(&client, &ns.name, &[]).await;
    ns.apply_yaml(&fixtures::pipeline("clamp", &topic, 4, "clamp"))
        .await;

    let sts = wait_for("2 replicas", T, || async {
        ns.api::<StatefulSet>()
            .get_opt("clamp-detector")
            .await
            .ok()
            .flatten()
            .filter(|s| s.spec.as_ref().and_then(|s| s.replicas) == Some(2))
    })
    .await;
    assert_eq!(sts.spec.unwrap().replicas, Some(2));
    let (status, reason, message) = wait_for("ReplicasClamped", T, || async {
        pipeline_condition(&ns, "clamp", "ReplicasClamped").await
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "PartitionLimit")
    );
    assert_eq!(
        message,
        format!(
            "spec.parallelism 4 exceeds the 2 partitions of topic(s) `{topic}`; running 2 detectors"
        )
    );

    // The scale subresource reads status.replicas and the selector and writes spec.parallelism.
    let pipelines = ns.api::<StreamPipeline>();
    let scale = wait_for("scale status 2", T, || async {
        pipelines
            .get_scale("clamp")
            .await
            .ok()
            .filter(|s| s.status.as_ref().is_some_and(|st| st.replicas == 2))
    })
    .await;
    assert_eq!(scale.spec.unwrap().replicas, Some(4));
    assert_eq!(
        scale.status.unwrap().selector.as_deref(),
        Some("app.kubernetes.io/instance=clamp,app.kubernetes.io/name=vigil-detector")
    );
    pipelines
        .patch_scale(
            "clamp",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    wait_for("1 replica after scaling", T, || async {
        ns.api::<StatefulSet>()
            .get_opt("clamp-detector")
            .await
            .ok()
            .flatten()
            .filter(|s| s.spec.as_ref().and_then(|s| s.replicas) == Some(1))
    })
    .await;
    wait_for("ReplicasClamped=False", T, || async {
        pipeline_condition(&ns, "clamp", "ReplicasClamped")
            .await
            .filter(|c| c.0 == "False" && c.1 == "WithinPartitions")
    })
    .await;
    assert!(op.terminate().await.success());
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn an_unrunnable_spec_is_a_condition_not_a_crash() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-invalid").await;
    let mut op = Operator::start(&client, &ns.name, &[]).await;
    // Valid for the schema, but `group.id` is the operator's to set.
    let yaml = fixtures::pipeline("reserved", "e2e-reserved", 1, "invalid").replace(
        "consumerGroup: reserved}",
        "consumerGroup: reserved, properties: {group.id: mine}}",
    );
    ns.apply_yaml(&yaml).await;
    let (status, reason, message) = wait_for("Ready=False", T, || async {
        pipeline_condition(&ns, "reserved", "Ready")
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(reason, "InvalidSpec");
    assert_eq!(
        message,
        "invalid spec: spec.source.kafka.properties.group.id: is set by the operator and may not be overridden"
    );
    assert_eq!(status, "False");
    let p = ns.api::<StreamPipeline>().get("reserved").await.unwrap();
    assert_eq!(p.status.unwrap().observed_generation, p.metadata.generation);
    assert!(
        ns.api::<StatefulSet>()
            .get_opt("reserved-detector")
            .await
            .unwrap()
            .is_none()
    );
    // Not retried in a loop: one failure-free reconcile per change, and the process lives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(op.running());
    let metrics = op.metrics().await;
    assert!(
        !metrics.contains("vigil_operator_reconcile_errors_total{controller=\"stream_pipeline\""),
        "{metrics}"
    );

    // Fixing the spec brings the detectors.
    ns.apply_yaml(&fixtures::pipeline(
        "reserved",
        "e2e-reserved",
        1,
        "invalid",
    ))
    .await;
    wait_for("the StatefulSet after the fix", T, || async {
        ns.api::<StatefulSet>()
            .get_opt("reserved-detector")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(op.terminate().await.success());
    ns.delete().await;
}

/// With `--network-policies` every pipeline gets a NetworkPolicy the API server accepts,
/// letting into its detectors only the metrics port.
#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn network_policies_are_rendered_when_enabled() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-netpol").await;
    let topic = format!("e2e-netpol-{}", &crate::harness::uuid_like()[..8]);
    create_topic(&topic, 1).await;
    let op = Operator::start(&client, &ns.name, &["--network-policies"]).await;
    ns.apply_yaml(&crate::fixtures::pipeline("np", &topic, 1, "np"))
        .await;
    let np = wait_for("the pipeline's NetworkPolicy", T, || async {
        ns.api::<NetworkPolicy>()
            .get_opt("np-detector")
            .await
            .ok()
            .flatten()
    })
    .await;
    let spec = np.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
    let ports = spec.ingress.unwrap()[0].ports.clone().unwrap();
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9090))
    );
    assert_eq!(
        np.metadata.owner_references.unwrap()[0].name,
        "np",
        "owned by its pipeline"
    );
    assert!(op.terminate().await.success());
    ns.delete().await;
}
