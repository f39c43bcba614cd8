//! What every e2e test needs: an admin client for the cluster started by `e2e/cluster.sh`, a
//! fresh namespace per test, the `vigil-operator` binary run as a local process with the
//! chart's ServiceAccount token (so the chart's RBAC is what it gets), Kafka topics, and
//! polling with deadlines.
//!
//! Environment (set by `e2e/tests/operator.sh`):
//! - `KUBECONFIG`: admin kubeconfig of the cluster.
//! - `VIGIL_E2E_RELEASE_NAMESPACE` (default `vigil-system`) and `VIGIL_E2E_OPERATOR_SA`
//!   (default `vigil-operator`): where `helm install` put the operator's ServiceAccount.
//! - `KAFKA_BOOTSTRAP`: a real broker (`scripts/kafka.sh start`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Field manager of objects the tests apply.
pub const TEST_MANAGER: &str = "vigil-e2e";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The NAB dataset root: `VIGIL_NAB_DATA`, else the repository's `data/nab`.
pub fn nab_data() -> PathBuf {
    std::env::var_os("VIGIL_NAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("data/nab"))
}

/// The Kafka bootstrap address.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP")
        .expect("KAFKA_BOOTSTRAP is not set: run the e2e through e2e/tests/operator.sh")
}

/// Admin client of the e2e cluster.
pub async fn admin() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the e2e through e2e/tests/operator.sh"
    );
    Client::try_default()
        .await
        .expect("admin client from KUBECONFIG")
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A namespace created for one test, named `<prefix>-<random>`.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates the namespace.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", &uuid_like()[..8]);
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"vigil.dev/e2e": "true"}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Server-side applies YAML documents (each with apiVersion and kind) into the namespace.
    pub async fn apply_yaml(&self, yaml: &str) {
        for doc in serde_norway::Deserializer::from_str(yaml) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if value.is_null() {
                continue;
            }
            self.apply_value(value).await.expect("apply");
        }
    }

    /// Server-side applies one object given as JSON; returns the API error if rejected.
    pub async fn apply_value(&self, value: serde_json::Value) -> Result<(), kube::Error> {
        let kind = value["kind"].as_str().unwrap().to_string();
        let name = value["metadata"]["name"].as_str().unwrap().to_string();
        let pp = PatchParams::apply(TEST_MANAGER).force();
        match kind.as_str() {
            "StreamPipeline" => {
                patch::<vigil_api::v1alpha1::StreamPipeline>(self, &name, &pp, value).await
            }
            "DetectionRule" => {
                patch::<vigil_api::v1alpha1::DetectionRule>(self, &name, &pp, value).await
            }
            "AnomalyModel" => {
                patch::<vigil_api::v1alpha1::AnomalyModel>(self, &name, &pp, value).await
            }
            "ConfigMap" => {
                patch::<k8s_openapi::api::core::v1::ConfigMap>(self, &name, &pp, value).await
            }
            "Secret" => patch::<k8s_openapi::api::core::v1::Secret>(self, &name, &pp, value).await,
            "Savepoint" => patch::<vigil_api::v1alpha1::Savepoint>(self, &name, &pp, value).await,
            other => panic!("apply_value: unsupported kind {other}"),
        }
    }

    /// Deletes the namespace (best effort; the cluster is torn down after the run anyway).
    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::background()).await;
    }
}

async fn patch<K>(
    ns: &TestNamespace,
    name: &str,
    pp: &PatchParams,
    value: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    ns.api::<K>()
        .patch(name, pp, &Patch::Apply(value))
        .await
        .map(|_| ())
}

/// A random hex string (no extra dependency: time and pid are unique enough per run).
pub fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// A loopback address of its own for a "pod" (127.0.0.2..=251) whose `port` is free: handed
/// out once per test process (tests run in parallel; two detectors on one address collided on
/// their metrics port), starting from `seed` so that concurrent test processes spread out.
pub fn pod_ip(seed: u8, port: u16) -> String {
    use std::sync::Mutex;
    static TAKEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap();
    for i in 0..250u16 {
        let last = 2 + ((u16::from(seed) + i) % 250) as u8;
        if taken.contains(&last) {
            continue;
        }
        let ip = format!("127.0.0.{last}");
        if std::net::TcpListener::bind((ip.as_str(), port)).is_ok() {
            taken.push(last);
            return ip;
        }
    }
    panic!("no loopback address 127.0.0.2..=251 has port {port} free");
}

/// Waits for pod `name` to be Ready (kwok's `pod-ready` stage done) and accepted by `accept`
/// (not being deleted), then gives it `ip` as its pod IP, so that the operator and the
/// detector's reports reach the local process standing in for it. Patching earlier races kwok,
/// whose own `pod-ready` patch then adds a second IPv4 address, is refused, and leaves the pod
/// unready (the StatefulSet then reports no ready replica).
pub async fn ready_pod_with_ip(
    ns: &TestNamespace,
    name: &str,
    ip: &str,
    accept: impl Fn(&k8s_openapi::api::core::v1::Pod) -> bool,
) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::Pod;
    let api = ns.api::<Pod>();
    let pod = wait_for(
        &format!("pod {name} Ready"),
        Duration::from_secs(60),
        || async {
            let pod = api.get_opt(name).await.ok()??;
            let ready = pod
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && pod.metadata.deletion_timestamp.is_none() && accept(&pod)).then_some(pod)
        },
    )
    .await;
    let patch = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("pod {name} IP {ip}: {e}"));
    pod
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a kubeconfig that authenticates as the chart's operator ServiceAccount with a
/// fresh token from the TokenRequest API.
pub async fn operator_kubeconfig(admin: &Client, dir: &Path) -> PathBuf {
    let release_ns = env_or("VIGIL_E2E_RELEASE_NAMESPACE", "vigil-system");
    let sa = env_or("VIGIL_E2E_OPERATOR_SA", "vigil-operator");
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), &release_ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| {
            panic!("token for ServiceAccount {release_ns}/{sa} (was the chart installed?): {e}")
        });
    let token = token.status.expect("token status").token;
    let admin_config = Kubeconfig::read().expect("read the admin kubeconfig");
    let cluster = admin_config.clusters[0].cluster.clone().expect("cluster");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "operator"}}],
        "current-context": "e2e",
    });
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

/// A `vigil-operator` process.
pub struct Operator {
    child: Option<Child>,
    /// Its /metrics address.
    pub metrics_addr: String,
    /// Its log file.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator watching `namespace` as the chart's ServiceAccount, with leader
    /// election off, plus `extra_args`.
    pub async fn start(admin: &Client, namespace: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = operator_kubeconfig(admin, dir.path()).await;
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("operator.log");
        let mut args = vec![
            format!("--namespace={namespace}"),
            format!("--metrics-addr={metrics_addr}"),
            format!("--kafka-bootstrap-servers={}", kafka_bootstrap()),
            "--resync=1m".to_string(),
        ];
        if !extra_args.iter().any(|a| a.starts_with("--leader-elect")) {
            args.push("--leader-elect=false".into());
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_vigil-operator"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,vigil_operator=debug")
            .env_remove("POD_NAME")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("spawn vigil-operator");
        let op = Operator {
            child: Some(child),
            metrics_addr,
            log,
            _dir: dir,
        };
        let addr = op.metrics_addr.clone();
        wait_for("the operator's /healthz", Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { http_get(&addr, "/healthz").await.ok() }
        })
        .await;
        op
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its metrics in the Prometheus text format.
    pub async fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics")
            .await
            .expect("GET /metrics")
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the operator did not exit within 20 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- vigil-operator log ---\n{}", self.log_text());
            }
        }
    }
}

/// GET `http://addr/path`, body as text (HTTP/1.0, no client library needed).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("GET {path}: {head}")));
    }
    Ok(body.to_string())
}

/// Creates a topic with `partitions` partitions on the e2e broker.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .expect("Kafka admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("CreateTopics");
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => panic!("create topic {t}: {e}"),
        }
    }
}

/// The condition `type_` of a status's conditions, as (status, reason, message).
pub fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// `kubectl <args> -n <namespace>` with the built `kubectl-vigil` plugin on PATH (kubectl's
/// plugin convention); its stdout and stderr. Fails the test when kubectl does.
pub fn kubectl_in(ns: &TestNamespace, args: &[&str]) -> String {
    let plugin_dir = crate::kubelet::target_bin("kubectl-vigil")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("kubectl")
        .args(args)
        .args(["-n", &ns.name])
        .env("PATH", path)
        .output()
        .expect("kubectl runs (e2e/cluster.sh env puts it on PATH)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?}: {text}");
    text
}

/// Notes of the events.k8s.io Events of the namespace with `reason`.
pub async fn event_notes(ns: &TestNamespace, reason: &str) -> Vec<String> {
    ns.api::<k8s_openapi::api::events::v1::Event>()
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .filter_map(|e| e.note)
                .collect()
        })
        .unwrap_or_default()
}
