//! Pure: the desired children of a validated StreamPipeline, as typed objects.
//!
//! - ConfigMap `<name>-detector-config`: `pipeline.yaml` (the pipeline, `bootstrapServers`
//!   filled in) and `rules.yaml` (accepted DetectionRules, then the AnomalyModels they use,
//!   each annotated with its model server's gRPC address).
//! - StatefulSet `<name>-detector`: stable pod names, passed as `VIGIL_GROUP_INSTANCE_ID` for
//!   Kafka static membership. Its pod template carries a hash of `pipeline.yaml` only, so a
//!   pipeline change rolls the pods while a rule change reaches them through the mounted
//!   ConfigMap (kubelet refreshes it; the detector reloads `rules.yaml`).
//! - headless Service, PodDisruptionBudget (one detector down at a time), and a ServiceAccount
//!   without a token: detectors do not call the Kubernetes API, so they get no Role and no
//!   credentials (least privilege).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, Probe, SecretEnvSource, SecretKeySelector, SecretVolumeSource, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, StreamPipeline};

use super::validate::ValidatedPipeline;
use crate::config::{
    DETECTOR_CONFIG_DIR, DETECTOR_METRICS_PORT, MODEL_SERVER_GRPC_PORT, OperatorConfig,
};
use crate::controller::pod::{
    Ingress, child_meta, ingress_policy, resources, restricted_container_security,
    restricted_pod_security,
};
use crate::labels::{
    CONFIG_HASH_ANNOTATION, detector_config_name, detector_labels, detector_name,
    detector_selector, model_server_grpc_address,
};

/// Annotation on rendered AnomalyModels: `host:port` of the model server's gRPC endpoint.
pub use vigil_api::contract::MODEL_SERVER_ANNOTATION;
use vigil_api::contract::detector::{
    self as contract, DetectorArgs, KAFKA_CA_DIR, PIPELINE_FILE as PIPELINE_KEY,
    RULES_FILE as RULES_KEY, env as contract_env,
};
use vigil_api::contract::model_server::{CLIENT_TLS_ANNOTATION, client_tls_dir};
/// Env var holding the pod name, used as Kafka `group.instance.id`.
pub const GROUP_INSTANCE_ENV: &str = contract_env::GROUP_INSTANCE_ID;
/// Env var holding the bootstrap servers.
pub const BOOTSTRAP_ENV: &str = contract_env::BOOTSTRAP_SERVERS;

/// The desired children of one pipeline.
#[derive(Clone, Debug)]
pub struct DetectorChildren {
    /// `pipeline.yaml` and `rules.yaml`.
    pub config_map: ConfigMap,
    /// Identity of the detector pods.
    pub service_account: ServiceAccount,
    /// Headless Service giving the pods stable DNS names.
    pub service: Service,
    /// The detectors.
    pub stateful_set: StatefulSet,
    /// At most one detector voluntarily down at a time.
    pub pdb: PodDisruptionBudget,
    /// Ingress to the detectors: the metrics port only (`--network-policies`).
    pub network_policy: Option<k8s_openapi::api::networking::v1::NetworkPolicy>,
}

/// Failure to serialise the rendered config.
#[derive(Debug, thiserror::Error)]
#[error("failed to render {what} as YAML")]
pub struct RenderError {
    what: &'static str,
    #[source]
    source: serde_norway::Error,
}

/// Builds every child of a validated pipeline.
///
/// # Errors
/// [`RenderError`] if a resource cannot be written as YAML (not expected for valid objects).
pub fn build(
    v: &ValidatedPipeline,
    config: &OperatorConfig,
) -> Result<DetectorChildren, RenderError> {
    build_restoring(v, config, None)
}

/// Pod-template annotation: [`config_hash`] of `pipeline.yaml` as the spec renders it, before
/// `restoreFrom` is set for an upgrade (what tells an upgrade from a re-apply).
pub const SPEC_HASH_ANNOTATION: &str = "vigil.dev/spec-hash";
/// Pod-template annotation: the savepoint the detectors were rolled to restore from.
pub const RESTORE_FROM_ANNOTATION: &str = "vigil.dev/restore-from";

/// [`config_hash`] of the spec's `pipeline.yaml` (see [`SPEC_HASH_ANNOTATION`]).
///
/// # Errors
/// [`RenderError`] as [`build`].
pub fn spec_hash(v: &ValidatedPipeline) -> Result<String, RenderError> {
    Ok(config_hash(&render_pipeline(v)?))
}

/// [`build`], with `spec.checkpointing.restoreFrom` set to `restore_from` in the rendered
/// `pipeline.yaml` (an `upgradeMode: Savepoint` roll).
///
/// # Errors
/// [`RenderError`] as [`build`].
pub fn build_restoring(
    v: &ValidatedPipeline,
    config: &OperatorConfig,
    restore_from: Option<&str>,
) -> Result<DetectorChildren, RenderError> {
    let owner = owner_reference(&v.pipeline);
    let labels = detector_labels(&v.name);
    let name = detector_name(&v.name);
    let config_name = detector_config_name(&v.name);
    let meta = |n: &str| child_meta(n.to_string(), &v.namespace, labels.clone(), owner.clone());

    let spec_hash = spec_hash(v)?;
    let pipeline_yaml = render_pipeline_restoring(v, restore_from)?;
    let rules_yaml = render_rules(&v.rules, &v.models)?;
    let config_hash = config_hash(&pipeline_yaml);
    let mut template_annotations = BTreeMap::from([
        (CONFIG_HASH_ANNOTATION.to_string(), config_hash),
        (SPEC_HASH_ANNOTATION.to_string(), spec_hash),
    ]);
    if let Some(name) = restore_from {
        template_annotations.insert(RESTORE_FROM_ANNOTATION.to_string(), name.to_string());
    }

    let config_map = ConfigMap {
        metadata: meta(&config_name),
        data: Some(BTreeMap::from([
            (PIPELINE_KEY.to_string(), pipeline_yaml),
            (RULES_KEY.to_string(), rules_yaml),
        ])),
        ..ConfigMap::default()
    };
    // Detectors do not call the Kubernetes API: no token, no Role (least privilege).
    let service_account = ServiceAccount {
        metadata: meta(&name),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let service = Service {
        metadata: meta(&name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(detector_selector(&v.name)),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: DETECTOR_METRICS_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let selector = LabelSelector {
        match_labels: Some(detector_selector(&v.name)),
        ..LabelSelector::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(&name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector.clone()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    let stateful_set = StatefulSet {
        metadata: meta(&name),
        spec: Some(StatefulSetSpec {
            replicas: Some(v.replicas),
            service_name: Some(name.clone()),
            selector,
            // Detectors of one group start and stop together: no ordering between them.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(template_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(detector_pod(v, config, &name, &config_name)),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    let network_policy = config.network_policies.then(|| {
        ingress_policy(
            meta(&name),
            detector_selector(&v.name),
            vec![Ingress {
                port: DETECTOR_METRICS_PORT,
                from_pods: None,
            }],
        )
    });
    Ok(DetectorChildren {
        config_map,
        service_account,
        service,
        stateful_set,
        pdb,
        network_policy,
    })
}

/// The pipeline as a controller owner reference of its children.
pub fn owner_reference(pipeline: &StreamPipeline) -> OwnerReference {
    // `controller_owner_ref` needs a uid, which every object read from the API server has.
    pipeline.controller_owner_ref(&()).unwrap_or_default()
}

fn detector_pod(
    v: &ValidatedPipeline,
    config: &OperatorConfig,
    name: &str,
    config_name: &str,
) -> PodSpec {
    let mut env = vec![
        EnvVar {
            name: BOOTSTRAP_ENV.into(),
            value: Some(v.bootstrap_servers.clone()),
            ..EnvVar::default()
        },
        field_env(GROUP_INSTANCE_ENV, "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        EnvVar {
            name: vigil_telemetry::logging::LOG_FORMAT_ENV.into(),
            value: Some(config.log_format.as_str().into()),
            ..EnvVar::default()
        },
    ];
    env.extend(config.otel_env.iter().map(|(k, v)| EnvVar {
        name: k.clone(),
        value: Some(v.clone()),
        ..EnvVar::default()
    }));
    // The config is mounted as a directory, never with subPath: kubelet only refreshes
    // whole-volume ConfigMap mounts, and rule reloads depend on that.
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: DETECTOR_CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_name.to_string(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    // The reference data ConfigMap, as a whole directory (kubelet refreshes it in place).
    // (Reference data from a topic needs nothing here: detectors read it with their source's
    // client settings.)
    if let Some(cm) = v
        .pipeline
        .spec
        .enrichment
        .as_ref()
        .and_then(|e| e.config_map.as_ref())
    {
        mounts.push(VolumeMount {
            name: "enrichment".into(),
            mount_path: contract::ENRICHMENT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "enrichment".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        env.push(EnvVar {
            name: contract_env::ENRICHMENT_FILE.into(),
            value: Some(format!(
                "{}/{}",
                contract::ENRICHMENT_DIR,
                contract::ENRICHMENT_KEY
            )),
            ..EnvVar::default()
        });
    }
    let sinks = &v.pipeline.spec.sinks;
    if let Some(pd) = &sinks.pagerduty {
        env.push(secret_env(
            contract_env::PAGERDUTY_ROUTING_KEY,
            &pd.routing_key_secret,
            contract::ROUTING_KEY_KEY,
        ));
    }
    if let Some(secret) = sinks
        .webhook
        .as_ref()
        .and_then(|w| w.signing_key_secret.as_ref())
    {
        env.push(secret_env(
            contract_env::WEBHOOK_SIGNING_KEY,
            secret,
            contract::SIGNING_KEY_KEY,
        ));
    }
    if let Some(security) = &v.pipeline.spec.source.kafka.security {
        if let Some(secret) = &security.credentials_secret {
            env.push(secret_env(
                contract_env::KAFKA_USERNAME,
                secret,
                contract::USERNAME_KEY,
            ));
            env.push(secret_env(
                contract_env::KAFKA_PASSWORD,
                secret,
                contract::PASSWORD_KEY,
            ));
        }
        if let Some(secret) = &security.ca_secret {
            env.push(EnvVar {
                name: contract_env::KAFKA_CA_FILE.into(),
                value: Some(contract::KAFKA_CA_FILE.into()),
                ..EnvVar::default()
            });
            mounts.push(VolumeMount {
                name: "kafka-ca".into(),
                mount_path: KAFKA_CA_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            volumes.push(Volume {
                name: "kafka-ca".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        if let Some(secret) = &security.client_cert_secret {
            for (name, value) in [
                (contract_env::KAFKA_CERT_FILE, contract::KAFKA_CERT_FILE),
                (contract_env::KAFKA_KEY_FILE, contract::KAFKA_KEY_FILE),
            ] {
                env.push(EnvVar {
                    name: name.into(),
                    value: Some(value.into()),
                    ..EnvVar::default()
                });
            }
            mounts.push(VolumeMount {
                name: "kafka-client-cert".into(),
                mount_path: contract::KAFKA_CLIENT_CERT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            volumes.push(Volume {
                name: "kafka-client-cert".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }
    // Client TLS of the model servers (AnomalyModel spec.tls), one directory per model; the
    // rendered model names it (see `render_rules`).
    for (i, model) in v.models.iter().enumerate() {
        if let Some(tls) = &model.spec.tls {
            let volume = format!("model-tls-{i}");
            mounts.push(VolumeMount {
                name: volume.clone(),
                mount_path: client_tls_dir(model.metadata.name.as_deref().unwrap_or_default()),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            volumes.push(Volume {
                name: volume,
                secret: Some(SecretVolumeSource {
                    secret_name: Some(tls.client_secret_name.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }
    let mut env_from = Vec::new();
    // The KPI store's object store credentials (`AWS_*`), as the checkpoints'.
    if let Some(secret) = v
        .pipeline
        .spec
        .sinks
        .kpi_store
        .as_ref()
        .and_then(|k| k.credentials_secret.as_ref())
    {
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                ..SecretEnvSource::default()
            }),
            ..EnvFromSource::default()
        });
    }
    if let Some(c) = &v.pipeline.spec.checkpointing {
        if let (Some(claim), Some(path)) = (&c.volume_claim, c.location.strip_prefix("file://")) {
            mounts.push(VolumeMount {
                name: "checkpoints".into(),
                mount_path: path.to_string(),
                ..VolumeMount::default()
            });
            volumes.push(Volume {
                name: "checkpoints".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    ..PersistentVolumeClaimVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        if let Some(secret) = &c.credentials_secret {
            env_from.push(EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.clone(),
                    ..SecretEnvSource::default()
                }),
                ..EnvFromSource::default()
            });
        }
    }
    PodSpec {
        service_account_name: Some(name.to_string()),
        automount_service_account_token: Some(false),
        security_context: Some(restricted_pod_security()),
        // Time to finish in-flight windows' outputs and commit offsets (static members keep
        // their partitions across a restart within session.timeout.ms).
        termination_grace_period_seconds: Some(30),
        containers: vec![Container {
            name: "detector".into(),
            image: Some(config.detector_image.clone()),
            image_pull_policy: config.image_pull_policy.clone(),
            command: Some(vec![contract::BINARY.into()]),
            args: Some(DetectorArgs::in_pod().to_args()),
            env: Some(env),
            env_from: (!env_from.is_empty()).then_some(env_from),
            ports: Some(vec![ContainerPort {
                name: Some("metrics".into()),
                container_port: DETECTOR_METRICS_PORT,
                ..ContainerPort::default()
            }]),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/metrics".into()),
                    port: IntOrString::String("metrics".into()),
                    ..HTTPGetAction::default()
                }),
                period_seconds: Some(10),
                ..Probe::default()
            }),
            resources: Some(resources("100m", "128Mi", "512Mi")),
            security_context: Some(restricted_container_security()),
            volume_mounts: Some(mounts),
            ..Container::default()
        }],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Hex SHA-256 (first 16 digits) of the rendered `pipeline.yaml`.
pub fn config_hash(pipeline_yaml: &str) -> String {
    let digest = Sha256::digest(pipeline_yaml.as_bytes());
    format!("{digest:x}")[..16].to_string()
}

/// Metadata kept in rendered resources: name, namespace and labels.
fn rendered_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone().filter(|l| !l.is_empty()),
        ..ObjectMeta::default()
    }
}

/// `pipeline.yaml`: the pipeline with metadata name/namespace/labels only and
/// `bootstrapServers` filled in.
pub fn render_pipeline(v: &ValidatedPipeline) -> Result<String, RenderError> {
    render_pipeline_restoring(v, None)
}

/// [`render_pipeline`] with `spec.checkpointing.restoreFrom` set to `restore_from` (when the
/// pipeline has checkpointing).
pub fn render_pipeline_restoring(
    v: &ValidatedPipeline,
    restore_from: Option<&str>,
) -> Result<String, RenderError> {
    let mut spec = v.pipeline.spec.clone();
    spec.source.kafka.bootstrap_servers = Some(v.bootstrap_servers.clone());
    if let (Some(name), Some(c)) = (restore_from, spec.checkpointing.as_mut()) {
        c.restore_from = Some(name.to_string());
    }
    let mut rendered = StreamPipeline::new(&v.name, spec);
    rendered.metadata = rendered_meta(&v.pipeline.metadata);
    serde_norway::to_string(&rendered).map_err(|source| RenderError {
        what: PIPELINE_KEY,
        source,
    })
}

/// `rules.yaml`: the rules (sorted by name), then the models they use, as `---`-separated
/// documents; a model's spec as its rollout analysis left it ([`AnomalyModel::effective_spec`]:
/// a failed candidate dropped, a promoted one served as stable). Models carry the [`MODEL_SERVER_ANNOTATION`] (`https://` with `spec.tls`, and then
/// the [`CLIENT_TLS_ANNOTATION`] naming the mounted client Secret). Empty when there are no
/// rules.
pub fn render_rules(
    rules: &[std::sync::Arc<DetectionRule>],
    models: &[std::sync::Arc<AnomalyModel>],
) -> Result<String, RenderError> {
    let err = |source| RenderError {
        what: RULES_KEY,
        source,
    };
    let mut docs = Vec::new();
    for rule in rules {
        let mut r = DetectionRule::new(
            rule.metadata.name.as_deref().unwrap_or_default(),
            rule.spec.clone(),
        );
        r.metadata = rendered_meta(&rule.metadata);
        docs.push(serde_norway::to_string(&r).map_err(err)?);
    }
    for model in models {
        let name = model.metadata.name.as_deref().unwrap_or_default();
        let namespace = model.metadata.namespace.as_deref().unwrap_or_default();
        let mut m = AnomalyModel::new(name, model.effective_spec());
        m.metadata = rendered_meta(&model.metadata);
        let address = model_server_grpc_address(name, namespace, MODEL_SERVER_GRPC_PORT);
        m.metadata.annotations = Some(match &model.spec.tls {
            Some(_) => BTreeMap::from([
                (
                    MODEL_SERVER_ANNOTATION.to_string(),
                    format!("https://{address}"),
                ),
                (CLIENT_TLS_ANNOTATION.to_string(), client_tls_dir(name)),
            ]),
            None => BTreeMap::from([(MODEL_SERVER_ANNOTATION.to_string(), address)]),
        });
        docs.push(serde_norway::to_string(&m).map_err(err)?);
    }
    Ok(docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (Secret, key) an environment variable is taken from.
    fn secret_key(e: &EnvVar) -> (String, String) {
        let s = e
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        (s.name.clone(), s.key.clone())
    }

    /// The detector pod a pipeline builds into (with the NAB fixture's dereference).
    fn pod_of(
        p: &std::sync::Arc<StreamPipeline>,
        d: &crate::controller::stream_pipeline::dereference::Dereferenced,
    ) -> PodSpec {
        let v = validate(p, d, None).unwrap();
        build(&v, &OperatorConfig::test())
            .unwrap()
            .stateful_set
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }
    use crate::controller::stream_pipeline::validate::validate;
    use crate::controller::test_fixtures::nab_fixture;
    use vigil_api::manifest::Manifests;

    fn children() -> (ValidatedPipeline, DetectorChildren) {
        let (p, d) = nab_fixture();
        let v = validate(&p, &d, None).unwrap();
        let c = build(&v, &OperatorConfig::test()).unwrap();
        (v, c)
    }

    #[test]
    fn checkpoint_storage_is_mounted_or_passed_as_environment() {
        let (_, d) = nab_fixture();
        let render = |c: &str| {
            let p = crate::controller::test_fixtures::parse_pipeline(move |s| {
                s.replace(
                    "  parallelism: 4\n",
                    &format!("  parallelism: 4\n  checkpointing: {c}\n"),
                )
            });
            let v = validate(&p, &d, None).unwrap();
            let sts = build(&v, &OperatorConfig::test()).unwrap().stateful_set;
            sts.spec.unwrap().template.spec.unwrap()
        };
        let pod = render("{location: 'file:///var/lib/vigil', volumeClaim: vigil-state}");
        let c = &pod.containers[0];
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "checkpoints")
            .unwrap();
        assert_eq!(mount.mount_path, "/var/lib/vigil");
        let vol = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "checkpoints")
            .unwrap();
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "vigil-state"
        );
        assert!(c.env_from.is_none());
        let pod = render("{location: 's3://bucket/vigil', credentialsSecret: s3-creds}");
        let c = &pod.containers[0];
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "s3-creds"
        );
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .all(|m| m.name != "checkpoints")
        );
    }

    #[test]
    fn receiver_secrets_kpi_store_credentials_and_reference_data_reach_the_pod() {
        let (_, d) = nab_fixture();
        let p = crate::controller::test_fixtures::parse_pipeline(|s| {
            s.replace(
                "topic: nab-alerts}",
                "topic: nab-alerts}, pagerduty: {routingKeySecret: pd}, \
                 webhook: {url: 'https://hooks.example/vigil', signingKeySecret: hook}",
            )
        });
        let pod = pod_of(&p, &d);
        let env = pod.containers[0].env.clone().unwrap();
        let from = |name: &str| secret_key(env.iter().find(|e| e.name == name).unwrap());
        assert_eq!(
            from(contract_env::PAGERDUTY_ROUTING_KEY),
            ("pd".into(), "routingKey".into())
        );
        assert_eq!(
            from(contract_env::WEBHOOK_SIGNING_KEY),
            ("hook".into(), "signingKey".into())
        );
        // The reference data ConfigMap: mounted as a directory, its file named.
        let p = crate::controller::test_fixtures::parse_pipeline(|s| {
            s.replace(
                "sinks: {alerts: {topic: nab-alerts}}",
                "sinks: {alerts: {topic: nab-alerts}}\n  enrichment: {configMap: machines}",
            )
        });
        let pod = pod_of(&p, &d);
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "enrichment")
            .unwrap();
        assert_eq!(vol.config_map.unwrap().name, "machines");
        let c = &pod.containers[0];
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "enrichment"
                    && m.mount_path == "/etc/vigil-enrichment"
                    && m.sub_path.is_none())
        );
        let file = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == contract_env::ENRICHMENT_FILE)
            .unwrap();
        assert_eq!(
            file.value.as_deref(),
            Some("/etc/vigil-enrichment/attributes.yaml")
        );
        // Reference data from a topic: detectors read it with their source's client; nothing
        // is mounted.
        let p = crate::controller::test_fixtures::parse_pipeline(|s| {
            s.replace(
                "sinks: {alerts: {topic: nab-alerts}}",
                "sinks: {alerts: {topic: nab-alerts}}\n  enrichment: {topic: machines}",
            )
        });
        let pod = pod_of(&p, &d);
        assert!(!pod.volumes.unwrap().iter().any(|v| v.name == "enrichment"));
        assert!(
            !pod.containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == contract_env::ENRICHMENT_FILE)
        );
        // The KPI store's credentials Secret: its keys become the environment.
        let p = crate::controller::test_fixtures::parse_pipeline(|s| {
            s.replace(
                "topic: nab-alerts}",
                "topic: nab-alerts}, kpiStore: {location: 's3://kpis/nab', credentialsSecret: kpi-s3}",
            )
        });
        let pod = pod_of(&p, &d);
        let from = pod.containers[0].env_from.clone().unwrap();
        assert_eq!(from[0].secret_ref.as_ref().unwrap().name, "kpi-s3");
    }

    #[test]
    fn kafka_security_secrets_are_mounted_and_named_in_the_environment() {
        let (_, d) = nab_fixture();
        let p = crate::controller::test_fixtures::parse_pipeline(|s| {
            s.replace(
                "consumerGroup: nab",
                "consumerGroup: nab, security: {protocol: SASL_SSL, saslMechanism: SCRAM-SHA-256, \
                 credentialsSecret: creds, caSecret: ca, clientCertSecret: client-tls}",
            )
        });
        let pod = pod_of(&p, &d);
        let c = &pod.containers[0];
        let env: BTreeMap<&str, &EnvVar> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let secret_ref = |name: &str| secret_key(env[name]);
        assert_eq!(
            secret_ref(contract_env::KAFKA_USERNAME),
            ("creds".into(), "username".into())
        );
        assert_eq!(
            secret_ref(contract_env::KAFKA_PASSWORD),
            ("creds".into(), "password".into())
        );
        let value = |name: &str| env[name].value.as_deref().unwrap();
        assert_eq!(
            value(contract_env::KAFKA_CA_FILE),
            "/etc/vigil-kafka-ca/ca.crt"
        );
        assert_eq!(
            value(contract_env::KAFKA_CERT_FILE),
            "/etc/vigil-kafka-client/tls.crt"
        );
        assert_eq!(
            value(contract_env::KAFKA_KEY_FILE),
            "/etc/vigil-kafka-client/tls.key"
        );
        let mounts = c.volume_mounts.as_ref().unwrap();
        let volumes = pod.volumes.as_ref().unwrap();
        for (volume, dir, secret) in [
            ("kafka-ca", "/etc/vigil-kafka-ca", "ca"),
            ("kafka-client-cert", "/etc/vigil-kafka-client", "client-tls"),
        ] {
            let m = mounts.iter().find(|m| m.name == volume).unwrap();
            assert_eq!((m.mount_path.as_str(), m.read_only), (dir, Some(true)));
            let v = volumes.iter().find(|v| v.name == volume).unwrap();
            assert_eq!(
                v.secret.as_ref().unwrap().secret_name.as_deref(),
                Some(secret)
            );
        }
    }

    #[test]
    fn the_operators_tracing_settings_reach_the_detector() {
        let (_, d) = nab_fixture();
        let p = crate::controller::test_fixtures::parse_pipeline(|s| s.to_string());
        let v = validate(&p, &d, None).unwrap();
        let env = |config: &OperatorConfig| {
            let pod = build(&v, config)
                .unwrap()
                .stateful_set
                .spec
                .unwrap()
                .template
                .spec
                .unwrap();
            pod.containers[0]
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.name, e.value.unwrap_or_default()))
                .filter(|(n, _)| n.starts_with("OTEL_"))
                .collect::<Vec<_>>()
        };
        assert!(env(&OperatorConfig::test()).is_empty(), "off by default");
        let mut config = OperatorConfig::test();
        config.otel_env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "http://c:4317".into()),
            ("OTEL_TRACES_SAMPLER_ARG".into(), "0.1".into()),
        ];
        assert_eq!(env(&config), config.otel_env);
    }

    #[test]
    fn config_map_round_trips_through_the_manifest_loader() {
        let (v, c) = children();
        let data = c.config_map.data.unwrap();
        let mut m = Manifests::default();
        m.add_str(PIPELINE_KEY, &data[PIPELINE_KEY]).unwrap();
        m.add_str(RULES_KEY, &data[RULES_KEY]).unwrap();
        assert_eq!(m.pipelines.len(), 1);
        let p = &m.pipelines[0];
        assert_eq!(
            p.spec.source.kafka.bootstrap_servers.as_deref(),
            Some("127.0.0.1:9092")
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()["dataset"], "nab");
        assert!(p.metadata.uid.is_none() && p.metadata.annotations.is_none());
        assert!(!data[PIPELINE_KEY].contains("status"));
        let names: Vec<_> = m
            .rules
            .iter()
            .map(|r| r.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["iforest-score", "spike"]);
        assert_eq!(m.models.len(), 1);
        assert_eq!(
            m.models[0].metadata.annotations.as_ref().unwrap()[MODEL_SERVER_ANNOTATION],
            "iforest-model-server.anomaly.svc:8001"
        );
        assert_eq!(v.rules.len(), 2);
    }

    #[test]
    fn a_tls_model_is_reached_over_https_with_its_client_secret_mounted() {
        let (p, d) = nab_fixture();
        let mut v = validate(&p, &d, None).unwrap();
        let mut model = (*v.models[0]).clone();
        model.spec.tls = Some(vigil_api::v1alpha1::ModelServerTls {
            secret_name: "iforest-server-tls".into(),
            client_secret_name: "iforest-client-tls".into(),
            client_auth: true,
        });
        v.models[0] = std::sync::Arc::new(model);
        let c = build(&v, &OperatorConfig::test()).unwrap();
        let mut m = Manifests::default();
        m.add_str(RULES_KEY, &c.config_map.data.unwrap()[RULES_KEY])
            .unwrap();
        let a = m.models[0].metadata.annotations.clone().unwrap();
        assert_eq!(
            a[MODEL_SERVER_ANNOTATION],
            "https://iforest-model-server.anomaly.svc:8001"
        );
        assert_eq!(
            a[CLIENT_TLS_ANNOTATION],
            "/etc/vigil/model-client-tls/iforest"
        );
        let pod = c.stateful_set.spec.unwrap().template.spec.unwrap();
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == a[CLIENT_TLS_ANNOTATION])
            .expect("the client Secret is mounted where the annotation says")
            .clone();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|vol| vol.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("iforest-client-tls")
        );
    }

    #[test]
    fn stateful_set_runs_the_detector_contract() {
        let (_, c) = children();
        let sts = c.stateful_set;
        assert_eq!(sts.metadata.name.as_deref(), Some("nab-detector"));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("StreamPipeline", "nab", Some(true))
        );
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("nab-detector"));
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_ref().unwrap().join(" "),
            "run --pipeline /etc/vigil/pipeline.yaml --rules /etc/vigil/rules.yaml --metrics-addr 0.0.0.0:9090"
        );
        let env = container.env.as_ref().unwrap();
        let bootstrap = env.iter().find(|e| e.name == BOOTSTRAP_ENV).unwrap();
        assert_eq!(bootstrap.value.as_deref(), Some("127.0.0.1:9092"));
        let group = env.iter().find(|e| e.name == GROUP_INSTANCE_ENV).unwrap();
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
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.sub_path.as_deref()),
            ("/etc/vigil", None)
        );
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        assert_eq!(
            container
                .security_context
                .as_ref()
                .unwrap()
                .allow_privilege_escalation,
            Some(false)
        );
    }

    fn template_hash(c: &DetectorChildren) -> String {
        let t = &c.stateful_set.spec.as_ref().unwrap().template;
        t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION].clone()
    }

    #[test]
    fn rule_changes_keep_the_pod_template_and_pipeline_changes_roll_it() {
        let (p, d) = nab_fixture();
        let config = OperatorConfig::test();
        let base = build(&validate(&p, &d, None).unwrap(), &config).unwrap();

        let mut d2 = d.clone();
        let mut rule = (*d2.rules[0]).clone();
        rule.spec.threshold.as_mut().unwrap().value += 1.0;
        d2.rules[0] = std::sync::Arc::new(rule);
        let rules_changed = build(&validate(&p, &d2, None).unwrap(), &config).unwrap();
        assert_ne!(base.config_map.data, rules_changed.config_map.data);
        assert_eq!(
            base.stateful_set.spec.as_ref().unwrap().template,
            rules_changed.stateful_set.spec.as_ref().unwrap().template
        );

        let mut p2 = (*p).clone();
        p2.spec.windows[0].max_out_of_orderness = Some("10s".parse().unwrap());
        let pipeline_changed = build(
            &validate(&std::sync::Arc::new(p2), &d, None).unwrap(),
            &config,
        )
        .unwrap();
        assert_ne!(template_hash(&base), template_hash(&pipeline_changed));
    }

    #[test]
    fn headless_service_pdb_and_no_credentials() {
        let (_, c) = children();
        let svc = c.service.spec.unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        assert_eq!(
            c.pdb.spec.unwrap().max_unavailable,
            Some(IntOrString::Int(1))
        );
        assert_eq!(
            c.service_account.automount_service_account_token,
            Some(false)
        );
        let pod = c.stateful_set.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("nab-detector"));
    }

    #[test]
    fn network_policy_only_when_enabled_and_only_the_metrics_port() {
        let (v, c) = children();
        assert!(c.network_policy.is_none());
        let config = OperatorConfig {
            network_policies: true,
            ..OperatorConfig::test()
        };
        let np = build(&v, &config).unwrap().network_policy.unwrap();
        assert_eq!(np.metadata.name.as_deref(), Some("nab-detector"));
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            detector_selector("nab")
        );
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let ingress = spec.ingress.unwrap();
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(DETECTOR_METRICS_PORT))
        );
        assert!(ingress[0].from.is_none());
    }
}
