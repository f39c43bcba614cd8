//! Pure: the desired children of a validated AnomalyModel.
//!
//! - ConfigMap `<name>-model-server-config`: one `config.yaml` per served revision (key
//!   `<version>.config.yaml`) in vigil-model-server's format, made from the spec's feature
//!   contract and output.
//! - Deployment `<name>-model-server`: one init container per revision puts the artifact and
//!   its config into `/models/<name>/<version>/` (copied from a `configmap://` ConfigMap or
//!   downloaded from `https://`) and checks the SHA-256 before the server starts; the server
//!   runs with the command line of the model-server contract (`ModelServerArgs::in_pod`:
//!   `/models`, both ports on 0.0.0.0, repository API off). Its pod template carries a hash of the revisions,
//!   digests and configs, so a new revision rolls it (old pods serve until new ones are ready).
//!   With `spec.tls` the Secret is mounted at `/etc/vigil/model-tls`, gRPC is served over TLS
//!   (`ModelServerArgs::in_pod_tls`, mutual with `clientAuth`) and the probes use the HTTP
//!   port (`/readyz`, `/healthz`): the kubelet's gRPC probe cannot speak TLS.
//! - Service `<name>-model-server`: gRPC (Open Inference Protocol v2) and metrics ports.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    GRPCAction, HTTPGetAction, KeyToPath, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use vigil_api::contract::model_server::{ModelServerArgs, TLS_DIR as MODEL_TLS_DIR};
use vigil_api::v1alpha1::AnomalyModel;

use super::validate::{ArtifactSource, ValidatedModel};
use crate::config::{
    MODEL_REPOSITORY_DIR, MODEL_SERVER_BINARY, MODEL_SERVER_GRPC_PORT, MODEL_SERVER_HTTP_PORT,
    OperatorConfig,
};
use crate::controller::pod::{
    Ingress, child_meta, ingress_policy, resources, restricted_container_security,
    restricted_pod_security,
};
use crate::labels::{
    ARTIFACT_HASH_ANNOTATION, model_server_labels, model_server_name, model_server_selector,
};

pub use vigil_model_server::contract::{DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US};
/// Where the server-config ConfigMap is mounted in init containers.
const CONFIG_DIR: &str = "/config";
/// Where a `configmap://` artifact is mounted in its init container.
const ARTIFACT_DIR: &str = "/artifact";

/// Script of the init containers: put the artifact in place, check its digest, add the config.
const FETCH_SCRIPT: &str = r#"set -eu
dir="$MODEL_REPOSITORY/$MODEL/$VERSION"
mkdir -p "$dir"
if [ -n "${SOURCE_FILE:-}" ]; then
  cp "$SOURCE_FILE" "$dir/model.onnx.part"
else
  curl -fsSL --retry 5 --retry-connrefused -o "$dir/model.onnx.part" "$URI"
fi
echo "$SHA256  $dir/model.onnx.part" | sha256sum -c -
mv "$dir/model.onnx.part" "$dir/model.onnx"
cp "$CONFIG_FILE" "$dir/config.yaml"
"#;

/// The desired children of one model.
#[derive(Clone, Debug)]
pub struct ModelServerChildren {
    /// `config.yaml` per revision.
    pub config_map: ConfigMap,
    /// The model server.
    pub deployment: Deployment,
    /// Its gRPC and metrics endpoints.
    pub service: Service,
    /// Ingress to the server: gRPC from detector pods, metrics (`--network-policies`).
    pub network_policy: Option<k8s_openapi::api::networking::v1::NetworkPolicy>,
}

/// Failure to serialise a model-server config.
#[derive(Debug, thiserror::Error)]
#[error("failed to render the model-server config of version {version}")]
pub struct RenderError {
    version: u64,
    #[source]
    source: serde_norway::Error,
}

/// The `config.yaml` of one served version, as the model server's own contract renders it.
fn server_config(model: &AnomalyModel, version: u64, sha256: &str) -> Result<String, RenderError> {
    let config = vigil_model_server::contract::model_config(model, version, sha256);
    serde_norway::to_string(&config).map_err(|source| RenderError { version, source })
}

/// ConfigMap key of a version's config.
fn config_key(version: u64) -> String {
    format!("{version}.config.yaml")
}

/// Builds the children of a validated model.
///
/// # Errors
/// [`RenderError`] if a config cannot be written as YAML (not expected).
pub fn build(
    model: &AnomalyModel,
    v: &ValidatedModel,
    config: &OperatorConfig,
) -> Result<ModelServerChildren, RenderError> {
    let owner: OwnerReference = model.controller_owner_ref(&()).unwrap_or_default();
    let name = model_server_name(&v.name);
    let labels = model_server_labels(&v.name);
    let meta = |n: &str| child_meta(n.to_string(), &v.namespace, labels.clone(), owner.clone());

    let mut data = BTreeMap::new();
    for r in &v.revisions {
        data.insert(
            config_key(r.version),
            server_config(model, r.version, &r.sha256)?,
        );
    }
    let mut hasher = Sha256::new();
    for (key, value) in &data {
        hasher.update(key.as_bytes());
        hasher.update(value.as_bytes());
    }
    for r in &v.revisions {
        hasher.update(format!("{:?}", r.source).as_bytes());
    }
    let template_hash = format!("{:x}", hasher.finalize())[..16].to_string();
    let config_map = ConfigMap {
        metadata: meta(&format!("{name}-config")),
        data: Some(data),
        ..ConfigMap::default()
    };

    let mut volumes = vec![
        Volume {
            name: "models".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "server-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: format!("{name}-config"),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut init_containers = Vec::new();
    for r in &v.revisions {
        let mut mounts = vec![
            VolumeMount {
                name: "models".into(),
                mount_path: MODEL_REPOSITORY_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "server-config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ];
        let mut env = vec![
            env_var("MODEL_REPOSITORY", MODEL_REPOSITORY_DIR),
            env_var("MODEL", &v.name),
            env_var("VERSION", &r.version.to_string()),
            env_var("SHA256", &r.sha256),
            env_var(
                "CONFIG_FILE",
                &format!("{CONFIG_DIR}/{}", config_key(r.version)),
            ),
        ];
        match &r.source {
            ArtifactSource::ConfigMap { name: cm, key } => {
                let volume = format!("artifact-{}", r.version);
                volumes.push(Volume {
                    name: volume.clone(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: cm.clone(),
                        items: Some(vec![KeyToPath {
                            key: key.clone(),
                            path: "model.onnx".into(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                });
                mounts.push(VolumeMount {
                    name: volume,
                    mount_path: ARTIFACT_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
                env.push(env_var(
                    "SOURCE_FILE",
                    &format!("{ARTIFACT_DIR}/model.onnx"),
                ));
                env.push(env_var("URI", &format!("configmap://{cm}/{key}")));
            }
            ArtifactSource::Http(uri) => env.push(env_var("URI", uri)),
        }
        init_containers.push(Container {
            name: format!("fetch-{}", r.version),
            image: Some(config.artifact_fetcher_image.clone()),
            image_pull_policy: config.image_pull_policy.clone(),
            command: Some(vec!["sh".into(), "-c".into(), FETCH_SCRIPT.into()]),
            env: Some(env),
            resources: Some(resources("50m", "32Mi", "128Mi")),
            security_context: Some(restricted_container_security()),
            volume_mounts: Some(mounts),
            ..Container::default()
        });
    }
    let grpc_probe = |period: i32| Probe {
        grpc: Some(GRPCAction {
            port: MODEL_SERVER_GRPC_PORT,
            service: None,
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    // The kubelet's gRPC probe cannot speak TLS: with TLS the pod is probed over HTTP on the
    // metrics port (`/readyz` mirrors gRPC health, `/healthz` answers while the process runs).
    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let (args, readiness_probe, liveness_probe) = match &v.tls {
        Some((_, client_auth)) => (
            ModelServerArgs::in_pod_tls(*client_auth),
            http_probe("/readyz", 5),
            http_probe("/healthz", 20),
        ),
        None => (ModelServerArgs::in_pod(), grpc_probe(5), grpc_probe(20)),
    };
    let mut server_mounts = vec![VolumeMount {
        name: "models".into(),
        mount_path: MODEL_REPOSITORY_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if let Some((secret, _)) = &v.tls {
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        server_mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: MODEL_TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let server = Container {
        name: "model-server".into(),
        image: Some(config.model_server_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec![MODEL_SERVER_BINARY.into()]),
        args: Some(args.to_args()),
        env: Some(
            std::iter::once(env_var(
                vigil_telemetry::logging::LOG_FORMAT_ENV,
                config.log_format.as_str(),
            ))
            .chain(config.otel_env.iter().map(|(k, v)| env_var(k, v)))
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: MODEL_SERVER_GRPC_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: MODEL_SERVER_HTTP_PORT,
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(readiness_probe),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(30),
            ..liveness_probe
        }),
        resources: Some(resources("250m", "256Mi", "1Gi")),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(server_mounts),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: meta(&name),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(model_server_selector(&v.name)),
                ..LabelSelector::default()
            },
            // Keep the old revision serving until the new pod is ready.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(BTreeMap::from([(
                        ARTIFACT_HASH_ANNOTATION.to_string(),
                        template_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod_security()),
                    init_containers: Some(init_containers),
                    containers: vec![server],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = Service {
        metadata: meta(&name),
        spec: Some(ServiceSpec {
            selector: Some(model_server_selector(&v.name)),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: MODEL_SERVER_GRPC_PORT,
                    target_port: Some(IntOrString::String("grpc".into())),
                    app_protocol: Some("grpc".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("http".into()),
                    port: MODEL_SERVER_HTTP_PORT,
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let network_policy = config.network_policies.then(|| {
        ingress_policy(
            meta(&name),
            model_server_selector(&v.name),
            vec![
                Ingress {
                    port: MODEL_SERVER_GRPC_PORT,
                    from_pods: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_string(),
                        crate::labels::DETECTOR_APP.to_string(),
                    )])),
                },
                Ingress {
                    port: MODEL_SERVER_HTTP_PORT,
                    from_pods: None,
                },
            ],
        )
    });
    Ok(ModelServerChildren {
        network_policy,
        config_map,
        deployment,
        service,
    })
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::anomaly_model::validate::ServedRevision;
    use crate::controller::test_fixtures::model;

    fn validated(sources: Vec<(u64, ArtifactSource)>) -> ValidatedModel {
        ValidatedModel {
            name: "iforest".into(),
            namespace: "anomaly".into(),
            revisions: sources
                .into_iter()
                .map(|(version, source)| ServedRevision {
                    version,
                    source,
                    sha256: "ab".repeat(32),
                })
                .collect(),
            tls: None,
        }
    }

    #[test]
    fn tls_mounts_the_secret_serves_tls_and_probes_over_http() {
        let mut v = validated(vec![(1, ArtifactSource::Http("https://m/1".into()))]);
        v.tls = Some(("iforest-tls".into(), true));
        let c = build(&model(), &v, &OperatorConfig::test()).unwrap();
        let pod = c.deployment.spec.unwrap().template.spec.unwrap();
        let server = &pod.containers[0];
        assert!(
            server.args.as_ref().unwrap().join(" ").ends_with(
                "--tls-cert /etc/vigil/model-tls/tls.crt --tls-key /etc/vigil/model-tls/tls.key --tls-client-ca /etc/vigil/model-tls/ca.crt"
            ),
            "{:?}",
            server.args
        );
        let mount = server
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == MODEL_TLS_DIR)
            .expect("the Secret is mounted");
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|vol| vol.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("iforest-tls")
        );
        let probe = server.readiness_probe.as_ref().unwrap();
        assert!(probe.grpc.is_none(), "the kubelet's gRPC probe has no TLS");
        assert_eq!(
            probe.http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz")
        );
        // Without client authentication the CA is not passed.
        v.tls = Some(("iforest-tls".into(), false));
        let c = build(&model(), &v, &OperatorConfig::test()).unwrap();
        let args = c.deployment.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(!args.join(" ").contains("--tls-client-ca"), "{args:?}");
        assert!(args.join(" ").contains("--tls-cert"), "{args:?}");
    }

    #[test]
    fn the_operators_tracing_settings_reach_the_model_server() {
        let v = validated(vec![(1, ArtifactSource::Http("https://m/1".into()))]);
        let mut config = OperatorConfig::test();
        config.otel_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), "http://c:4317".into())];
        let c = build(&model(), &v, &config).unwrap();
        let pod = c.deployment.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        assert!(
            env.iter().any(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT"
                && e.value.as_deref() == Some("http://c:4317")),
            "{env:?}"
        );
    }

    #[test]
    fn server_config_matches_the_model_server_format() {
        let yaml = server_config(&model(), 1, &"ab".repeat(32)).unwrap();
        let v: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(v["platform"], "onnxruntime_onnx");
        assert_eq!(v["inputs"][0]["name"], "X");
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!([-1, 2]));
        assert_eq!(v["outputs"][0]["name"], "scores");
        assert_eq!(v["score"]["anomalous_when"], "below");
        assert_eq!(
            v["features"],
            serde_json::json!(["value.mean", "value.stddev"])
        );
        let mut m = model();
        m.spec.input.lookback = Some(6);
        let v: serde_json::Value =
            serde_norway::from_str(&server_config(&m, 1, "x").unwrap()).unwrap();
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!([-1, 6, 2]));
    }

    #[test]
    fn deployment_fetches_every_revision_and_serves_the_repository() {
        let v = validated(vec![
            (
                1,
                ArtifactSource::ConfigMap {
                    name: "iforest-onnx".into(),
                    key: "model.onnx".into(),
                },
            ),
            (2, ArtifactSource::Http("https://m.example/2.onnx".into())),
        ]);
        let c = build(&model(), &v, &OperatorConfig::test()).unwrap();
        assert_eq!(
            c.deployment.metadata.name.as_deref(),
            Some("iforest-model-server")
        );
        let pod = c.deployment.spec.unwrap().template.spec.unwrap();
        let inits = pod.init_containers.unwrap();
        assert_eq!(
            inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["fetch-1", "fetch-2"]
        );
        let env = |c: &Container, n: &str| {
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            env(&inits[0], "SOURCE_FILE").as_deref(),
            Some("/artifact/model.onnx")
        );
        assert_eq!(env(&inits[1], "SOURCE_FILE"), None);
        assert_eq!(
            env(&inits[1], "URI").as_deref(),
            Some("https://m.example/2.onnx")
        );
        assert_eq!(
            pod.containers[0].args.as_ref().unwrap().join(" "),
            "--repository /models --grpc-addr 0.0.0.0:8001 --metrics-addr 0.0.0.0:8002 --disable-repository-api"
        );
        assert_eq!(
            pod.containers[0].command.as_ref().unwrap()[0],
            MODEL_SERVER_BINARY
        );
        let keys: Vec<_> = c.config_map.data.unwrap().into_keys().collect();
        assert_eq!(keys, ["1.config.yaml", "2.config.yaml"]);
        assert_eq!(c.service.spec.unwrap().ports.unwrap()[0].port, 8001);
    }

    #[test]
    fn a_new_revision_changes_the_pod_template() {
        let hash = |v: &ValidatedModel| {
            let d = build(&model(), v, &OperatorConfig::test())
                .unwrap()
                .deployment;
            d.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[ARTIFACT_HASH_ANNOTATION]
                .clone()
        };
        let a = validated(vec![(1, ArtifactSource::Http("https://m/1".into()))]);
        let b = validated(vec![(2, ArtifactSource::Http("https://m/2".into()))]);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&a.clone()));
    }

    #[test]
    fn network_policy_lets_only_detectors_reach_grpc() {
        let v = validated(vec![(
            1,
            ArtifactSource::ConfigMap {
                name: "iforest-onnx".into(),
                key: "model.onnx".into(),
            },
        )]);
        assert!(
            build(&model(), &v, &OperatorConfig::test())
                .unwrap()
                .network_policy
                .is_none()
        );
        let config = OperatorConfig {
            network_policies: true,
            ..OperatorConfig::test()
        };
        let spec = build(&model(), &v, &config)
            .unwrap()
            .network_policy
            .unwrap()
            .spec
            .unwrap();
        let ingress = spec.ingress.unwrap();
        let grpc = &ingress[0];
        assert_eq!(
            grpc.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(MODEL_SERVER_GRPC_PORT))
        );
        let from = grpc.from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap();
        assert_eq!(
            from.match_labels.as_ref().unwrap()["app.kubernetes.io/name"],
            crate::labels::DETECTOR_APP
        );
        assert_eq!(
            ingress[1].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(MODEL_SERVER_HTTP_PORT))
        );
        assert!(ingress[1].from.is_none());
    }
}
