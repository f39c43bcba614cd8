//! The contract between the operator and the binaries it runs: the command lines, environment
//! variables, mount paths and ports of the detector (`vigil run`) and the model server
//! (`vigil-model-server`). The operator renders pods from these types
//! ([`detector::DetectorArgs::to_args`], [`model_server::ModelServerArgs::to_args`]) and the
//! binaries parse their command lines with the same types (`#[command(flatten)]`, feature
//! `clap`), so a flag or variable cannot be spelled differently on the two sides: a test parses
//! each rendered command line with the binary's own parser.

/// Annotation on an AnomalyModel naming its model server's gRPC endpoint (`host:port` or a
/// URI); the operator sets it on the models it renders into a detector's `rules.yaml`.
pub const MODEL_SERVER_ANNOTATION: &str = "vigil.dev/model-server";

/// `vigil run` as the operator starts it in a detector pod.
pub mod detector {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    /// The detector binary.
    pub const BINARY: &str = "vigil";
    /// Subcommand that runs a detector.
    pub const SUBCOMMAND: &str = "run";
    /// Where the pipeline's ConfigMap is mounted (as a directory: kubelet refreshes only
    /// whole-volume ConfigMap mounts, and rule reloads depend on that).
    pub const CONFIG_DIR: &str = "/etc/vigil";
    /// ConfigMap key (and file name under [`CONFIG_DIR`]) of the StreamPipeline.
    pub const PIPELINE_FILE: &str = "pipeline.yaml";
    /// ConfigMap key (and file name under [`CONFIG_DIR`]) of the selected DetectionRules and the
    /// AnomalyModels they use.
    pub const RULES_FILE: &str = "rules.yaml";
    /// Port of the detector's Prometheus `/metrics`.
    pub const METRICS_PORT: u16 = 9090;
    /// Where the `ca.crt` of `spec.source.kafka.security.caSecret` is mounted.
    pub const KAFKA_CA_DIR: &str = "/etc/vigil-kafka-ca";
    /// The CA file under [`KAFKA_CA_DIR`] ([`CA_KEY`] of the Secret); what the detector reads
    /// when [`env::KAFKA_CA_FILE`] is unset.
    pub const KAFKA_CA_FILE: &str = "/etc/vigil-kafka-ca/ca.crt";
    /// Where the `kubernetes.io/tls` Secret of `spec.source.kafka.security.clientCertSecret`
    /// is mounted.
    pub const KAFKA_CLIENT_CERT_DIR: &str = "/etc/vigil-kafka-client";
    /// The client certificate under [`KAFKA_CLIENT_CERT_DIR`] ([`TLS_CERT_KEY`]); what the
    /// detector reads when [`env::KAFKA_CERT_FILE`] is unset and a client certificate is
    /// configured.
    pub const KAFKA_CERT_FILE: &str = "/etc/vigil-kafka-client/tls.crt";
    /// The client private key under [`KAFKA_CLIENT_CERT_DIR`] ([`TLS_KEY_KEY`]).
    pub const KAFKA_KEY_FILE: &str = "/etc/vigil-kafka-client/tls.key";

    /// Environment variables the detector reads.
    pub mod env {
        /// Kafka bootstrap servers (`--bootstrap-servers`).
        pub const BOOTSTRAP_SERVERS: &str = "VIGIL_BOOTSTRAP_SERVERS";
        /// Static group membership id, librdkafka `group.instance.id` (the pod name).
        pub const GROUP_INSTANCE_ID: &str = "VIGIL_GROUP_INSTANCE_ID";
        /// SASL user name (from `credentialsSecret`, key `username`).
        pub const KAFKA_USERNAME: &str = "VIGIL_KAFKA_USERNAME";
        /// SASL password (from `credentialsSecret`, key `password`).
        pub const KAFKA_PASSWORD: &str = "VIGIL_KAFKA_PASSWORD";
        /// Path of the CA certificate that verifies the brokers.
        pub const KAFKA_CA_FILE: &str = "VIGIL_KAFKA_CA_FILE";
        /// Path of the client certificate (PEM) presented to the brokers.
        pub const KAFKA_CERT_FILE: &str = "VIGIL_KAFKA_CERT_FILE";
        /// Path of the client certificate's private key (PEM, not encrypted).
        pub const KAFKA_KEY_FILE: &str = "VIGIL_KAFKA_KEY_FILE";
        /// Model server URI for model rules (`--model-server`).
        pub const MODEL_SERVER: &str = "VIGIL_MODEL_SERVER";
        /// Model repository served in process (`--model-repository`).
        pub const MODEL_REPOSITORY: &str = "VIGIL_MODEL_REPOSITORY";
        /// PagerDuty integration key (from `spec.sinks.pagerduty.routingKeySecret`, key
        /// `routingKey`).
        pub const PAGERDUTY_ROUTING_KEY: &str = "VIGIL_PAGERDUTY_ROUTING_KEY";
        /// Webhook HMAC key (from `spec.sinks.webhook.signingKeySecret`, key `signingKey`).
        pub const WEBHOOK_SIGNING_KEY: &str = "VIGIL_WEBHOOK_SIGNING_KEY";
        /// The reference data file (`spec.enrichment.configMap`, key `attributes.yaml`).
        pub const ENRICHMENT_FILE: &str = "VIGIL_ENRICHMENT_FILE";
    }

    /// ConfigMap key of the reference data in `spec.enrichment.configMap`.
    pub const ENRICHMENT_KEY: &str = "attributes.yaml";
    /// Where the operator mounts the enrichment ConfigMap.
    pub const ENRICHMENT_DIR: &str = "/etc/vigil-enrichment";
    /// Secret key of the integration key in `spec.sinks.pagerduty.routingKeySecret`.
    pub const ROUTING_KEY_KEY: &str = "routingKey";
    /// Secret key of the HMAC key in `spec.sinks.webhook.signingKeySecret`.
    pub const SIGNING_KEY_KEY: &str = "signingKey";

    /// Secret key of the SASL user name in `credentialsSecret`.
    pub const USERNAME_KEY: &str = "username";
    /// Secret key of the SASL password in `credentialsSecret`.
    pub const PASSWORD_KEY: &str = "password";
    /// Secret key of the CA certificate in `caSecret`.
    pub const CA_KEY: &str = "ca.crt";
    /// Secret key of the client certificate in `clientCertSecret` (a `kubernetes.io/tls` Secret).
    pub const TLS_CERT_KEY: &str = "tls.crt";
    /// Secret key of the client private key in `clientCertSecret`.
    pub const TLS_KEY_KEY: &str = "tls.key";

    /// The flags of `vigil run` that the operator sets (the rest keep their defaults). The
    /// bootstrap servers and the group instance id come from [`env`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[cfg_attr(feature = "clap", derive(clap::Args))]
    pub struct DetectorArgs {
        /// StreamPipeline manifest (the first StreamPipeline in the file is run).
        #[cfg_attr(feature = "clap", arg(long))]
        pub pipeline: PathBuf,
        /// DetectionRule manifest(s); the rules whose pipelineSelector selects the pipeline
        /// run. The pipeline file is searched too.
        #[cfg_attr(feature = "clap", arg(long, num_args = 1..))]
        pub rules: Vec<PathBuf>,
        /// Kafka bootstrap servers; overrides spec.source.kafka.bootstrapServers. Without
        /// either, an embedded mock cluster is started in this process.
        #[cfg_attr(feature = "clap", arg(long, env = env::BOOTSTRAP_SERVERS))]
        pub bootstrap_servers: Option<String>,
        /// Serve Prometheus metrics on `http://ADDR/metrics`, e.g. 127.0.0.1:9464.
        #[cfg_attr(feature = "clap", arg(long))]
        pub metrics_addr: Option<SocketAddr>,
        /// Static group membership id (librdkafka `group.instance.id`), e.g. the pod name.
        #[cfg_attr(feature = "clap", arg(long, env = env::GROUP_INSTANCE_ID))]
        pub group_instance_id: Option<String>,
    }

    impl DetectorArgs {
        /// What the operator runs in a pod: the mounted config, metrics on all interfaces;
        /// bootstrap servers and instance id from the environment.
        pub fn in_pod() -> Self {
            DetectorArgs {
                pipeline: PathBuf::from(CONFIG_DIR).join(PIPELINE_FILE),
                rules: vec![PathBuf::from(CONFIG_DIR).join(RULES_FILE)],
                bootstrap_servers: None,
                metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], METRICS_PORT))),
                group_instance_id: None,
            }
        }

        /// The command line after the binary: `run --pipeline P --rules R ...`.
        pub fn to_args(&self) -> Vec<String> {
            let mut args = vec![SUBCOMMAND.to_string(), "--pipeline".into()];
            args.push(self.pipeline.display().to_string());
            args.push("--rules".into());
            args.extend(self.rules.iter().map(|r| r.display().to_string()));
            if let Some(b) = &self.bootstrap_servers {
                args.extend(["--bootstrap-servers".into(), b.clone()]);
            }
            if let Some(a) = &self.metrics_addr {
                args.extend(["--metrics-addr".into(), a.to_string()]);
            }
            if let Some(g) = &self.group_instance_id {
                args.extend(["--group-instance-id".into(), g.clone()]);
            }
            args
        }
    }

    pub mod lag {
        //! `GET /lag` on the detector's metrics port: the p50/p95/p99 of each stage's latency
        //! over the last minute and where each stands against `spec.lag` (the operator's
        //! `Lagging` condition reads it).
        use serde::{Deserialize, Serialize};

        /// Path of the report.
        pub const LAG_PATH: &str = "/lag";

        /// What `GET /lag` answers.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct LagReport {
            /// `spec.lag.warn`, seconds.
            pub warn_seconds: f64,
            /// `spec.lag.critical`, seconds.
            pub critical_seconds: f64,
            /// One entry per stage with samples in the last minute.
            pub stages: Vec<StageLag>,
        }

        /// One stage over the last minute.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct StageLag {
            /// Stage name (`processed_to_delivered`, ...).
            pub stage: String,
            /// Samples (per-event stages are sampled 1 in 16).
            pub samples: u64,
            /// Percentiles, seconds.
            pub p50: f64,
            /// 95th percentile, seconds.
            pub p95: f64,
            /// 99th percentile, seconds.
            pub p99: f64,
            /// `Ok`, `Warn` or `Critical`: the p99 against the thresholds.
            pub level: LagLevel,
        }

        /// Where a stage's p99 stands.
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
        )]
        pub enum LagLevel {
            /// Under `warn`.
            #[default]
            Ok,
            /// Past `warn`.
            Warn,
            /// Past `critical`.
            Critical,
        }
    }

    /// The rollout channel on the detector's metrics port, between the operator's analysis
    /// of an AnomalyModel rollout and each detector (the savepoint channel's shape: the
    /// operator calls each ready detector pod directly).
    /// - `GET /rollouts`: [`RolloutEvidence`], this detector's windows per model revision since
    ///   it started (counters; the operator takes differences between two reads).
    /// - `POST /rollouts/<model>` with a [`RolloutDecision`]: stop routing windows to a
    ///   failed candidate, or serve a promoted one for every key, at once (the rendered
    ///   `rules.yaml` follows when kubelet refreshes the ConfigMap; the decision holds
    ///   until then and is moot after).
    pub mod rollouts {
        use serde::{Deserialize, Serialize};

        /// Path of the evidence; decisions go to `<ROLLOUTS_PATH>/<model>`.
        pub const ROLLOUTS_PATH: &str = "/rollouts";

        /// Upper bounds (ms) of the batch latency buckets of [`RevisionEvidence::latency`];
        /// its last count is over the last bound.
        pub const LATENCY_BOUNDS_MS: [f64; 14] = [
            1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            30000.0,
        ];

        /// What `GET /rollouts` answers.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct RolloutEvidence {
            /// Differs between two runs of the process: counters restarted from zero.
            pub instance: String,
            /// One entry per (model, revision) seen.
            pub revisions: Vec<RevisionEvidence>,
        }

        /// Windows of one model revision, served or shadow, counted since the process
        /// started.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct RevisionEvidence {
            /// AnomalyModel name.
            pub model: String,
            /// Model version on the server.
            pub revision: String,
            /// Windows scored.
            pub scored: u64,
            /// Windows whose scoring failed (after retries).
            pub failed: u64,
            /// Scored windows past the model's threshold.
            pub anomalous: u64,
            /// Alerts of the model's rules that fired on this revision's scores (counted
            /// while a rollout runs).
            #[serde(default)]
            pub alerts: u64,
            /// Scored batches by latency bucket ([`LATENCY_BOUNDS_MS`], then one overflow).
            pub latency: Vec<u64>,
        }

        /// What the operator decided about a rollout's candidate.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Decision {
            /// The candidate failed: the stable revision scores every key.
            Abort,
            /// The candidate passed: it scores every key.
            Promote,
        }

        /// Body of `POST /rollouts/<model>`.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct RolloutDecision {
            /// The candidate revision decided on; a detector whose model has another
            /// candidate ignores it.
            pub candidate: String,
            /// What to do.
            pub decision: Decision,
        }
    }
}

/// `vigil-model-server` as the operator starts it for an AnomalyModel.
pub mod model_server {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    /// The model server binary.
    pub const BINARY: &str = "vigil-model-server";
    /// Where the model repository is assembled in the pod.
    pub const REPOSITORY_DIR: &str = "/models";
    /// gRPC port (Open Inference Protocol v2 + grpc.health.v1); 8001 is Triton's.
    pub const GRPC_PORT: u16 = 8001;
    /// Prometheus `/metrics` port; 8002 is Triton's.
    pub const METRICS_PORT: u16 = 8002;

    /// Environment variables the model server reads.
    pub mod env {
        /// `--repository`.
        pub const REPOSITORY: &str = "VIGIL_MODEL_REPOSITORY";
        /// `--grpc-addr`.
        pub const GRPC_ADDR: &str = "VIGIL_MODEL_GRPC_ADDR";
        /// `--metrics-addr`.
        pub const METRICS_ADDR: &str = "VIGIL_MODEL_METRICS_ADDR";
        /// `--tls-cert`.
        pub const TLS_CERT: &str = "VIGIL_MODEL_TLS_CERT";
        /// `--tls-key`.
        pub const TLS_KEY: &str = "VIGIL_MODEL_TLS_KEY";
        /// `--tls-client-ca`.
        pub const TLS_CLIENT_CA: &str = "VIGIL_MODEL_TLS_CLIENT_CA";
    }

    /// Where the operator mounts `spec.tls.secretName` in the model server pod.
    pub const TLS_DIR: &str = "/etc/vigil/model-tls";
    /// Annotation on the AnomalyModels the operator renders for detectors: a directory with
    /// `ca.crt` (verifies the model server) and, for mutual TLS, `tls.crt` + `tls.key` (the
    /// detector's client certificate). Set together with an `https://` model server address.
    pub const CLIENT_TLS_ANNOTATION: &str = "vigil.dev/model-server-tls";
    /// Where the operator mounts the client TLS Secret of AnomalyModel `model` in detector pods.
    pub fn client_tls_dir(model: &str) -> String {
        format!("/etc/vigil/model-client-tls/{model}")
    }
    /// Secret keys (the `kubernetes.io/tls` layout plus `ca.crt`, as cert-manager writes).
    pub const TLS_CERT_KEY: &str = "tls.crt";
    /// See [`TLS_CERT_KEY`].
    pub const TLS_KEY_KEY: &str = "tls.key";
    /// See [`TLS_CERT_KEY`].
    pub const TLS_CA_KEY: &str = "ca.crt";

    /// Where the model server reads models and listens.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[cfg_attr(feature = "clap", derive(clap::Args))]
    pub struct ModelServerArgs {
        /// Model repository: <repository>/<model>/<version>/{model.onnx,config.yaml}.
        #[cfg_attr(feature = "clap", arg(long, env = env::REPOSITORY))]
        pub repository: PathBuf,
        /// gRPC listen address (inference + grpc.health.v1). Pods listen on 0.0.0.0.
        #[cfg_attr(feature = "clap", arg(long, env = env::GRPC_ADDR, default_value = "127.0.0.1:8001"))]
        pub grpc_addr: SocketAddr,
        /// Prometheus /metrics listen address.
        #[cfg_attr(feature = "clap", arg(long, env = env::METRICS_ADDR, default_value = "127.0.0.1:8002"))]
        pub metrics_addr: SocketAddr,
        /// Refuse the repository API (RepositoryModelLoad / RepositoryModelUnload) with
        /// PERMISSION_DENIED: in a pod the repository is assembled by init containers and
        /// nobody who reaches the port may swap models.
        #[cfg_attr(feature = "clap", arg(long))]
        pub disable_repository_api: bool,
        /// Serve gRPC over TLS with this PEM certificate chain (needs --tls-key).
        #[cfg_attr(feature = "clap", arg(long, env = env::TLS_CERT, requires = "tls_key"))]
        pub tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[cfg_attr(feature = "clap", arg(long, env = env::TLS_KEY, requires = "tls_cert"))]
        pub tls_key: Option<PathBuf>,
        /// Mutual TLS: require a client certificate issued by this PEM CA bundle (needs
        /// --tls-cert).
        #[cfg_attr(feature = "clap", arg(long, env = env::TLS_CLIENT_CA, requires = "tls_cert"))]
        pub tls_client_ca: Option<PathBuf>,
    }

    impl ModelServerArgs {
        /// What the operator runs in a pod: the assembled repository, both ports on all
        /// interfaces (the Service and the kubelet's probes reach the pod IP, not loopback).
        pub fn in_pod() -> Self {
            ModelServerArgs {
                repository: PathBuf::from(REPOSITORY_DIR),
                grpc_addr: SocketAddr::from(([0, 0, 0, 0], GRPC_PORT)),
                metrics_addr: SocketAddr::from(([0, 0, 0, 0], METRICS_PORT)),
                disable_repository_api: true,
                tls_cert: None,
                tls_key: None,
                tls_client_ca: None,
            }
        }

        /// [`Self::in_pod`] serving TLS from the Secret mounted at [`TLS_DIR`]; with
        /// `client_auth`, clients must present a certificate of the Secret's `ca.crt`.
        pub fn in_pod_tls(client_auth: bool) -> Self {
            let file = |key: &str| Some(PathBuf::from(format!("{TLS_DIR}/{key}")));
            ModelServerArgs {
                tls_cert: file(TLS_CERT_KEY),
                tls_key: file(TLS_KEY_KEY),
                tls_client_ca: if client_auth { file(TLS_CA_KEY) } else { None },
                ..Self::in_pod()
            }
        }

        /// The command line after the binary.
        pub fn to_args(&self) -> Vec<String> {
            let mut args = vec![
                "--repository".into(),
                self.repository.display().to_string(),
                "--grpc-addr".into(),
                self.grpc_addr.to_string(),
                "--metrics-addr".into(),
                self.metrics_addr.to_string(),
            ];
            if self.disable_repository_api {
                args.push("--disable-repository-api".into());
            }
            for (flag, path) in [
                ("--tls-cert", &self.tls_cert),
                ("--tls-key", &self.tls_key),
                ("--tls-client-ca", &self.tls_client_ca),
            ] {
                if let Some(p) = path {
                    args.extend([flag.to_string(), p.display().to_string()]);
                }
            }
            args
        }
    }
}

#[cfg(test)]
mod tests {
    use super::detector::*;

    #[test]
    fn ca_file_is_the_ca_key_under_the_mount() {
        assert_eq!(KAFKA_CA_FILE, format!("{KAFKA_CA_DIR}/{CA_KEY}"));
        assert_eq!(
            KAFKA_CERT_FILE,
            format!("{KAFKA_CLIENT_CERT_DIR}/{TLS_CERT_KEY}")
        );
        assert_eq!(
            KAFKA_KEY_FILE,
            format!("{KAFKA_CLIENT_CERT_DIR}/{TLS_KEY_KEY}")
        );
    }

    #[test]
    fn detector_args_render_every_set_flag() {
        let mut a = DetectorArgs::in_pod();
        assert_eq!(
            a.to_args().join(" "),
            "run --pipeline /etc/vigil/pipeline.yaml --rules /etc/vigil/rules.yaml --metrics-addr 0.0.0.0:9090"
        );
        a.bootstrap_servers = Some("k:9092".into());
        a.group_instance_id = Some("p-0".into());
        assert!(a.to_args().join(" ").ends_with(
            "--bootstrap-servers k:9092 --metrics-addr 0.0.0.0:9090 --group-instance-id p-0"
        ));
    }
}
