//! The data path through the cluster's config: for each detector pod the operator created,
//! the harness plays kubelet (pods do not run under kwok): it runs a local `vigil` with that
//! pod's command, arguments and environment (downward API resolved, `$(VAR)` expanded) and
//! its ConfigMap volume written to a directory, against the real broker. The NAB
//! machine-temperature series is replayed into the source topic and alerts must come out,
//! from a consumer group member whose static id is the pod name. A rule change then reaches
//! the running detectors through the ConfigMap (synced into the "volume" the way kubelet
//! does it) and they reload it without restarting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use crate::harness::{
    Operator, TestNamespace, admin, create_topic, free_port, kafka_bootstrap, repo_root, uuid_like,
    wait_for,
};

/// The `vigil` binary: `VIGIL_BIN`, else next to this test's target directory.
pub fn vigil_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("vigil");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p vigil` or set VIGIL_BIN",
        bin.display()
    );
    bin
}

/// The NAB machine-temperature series ([`crate::harness::nab_data`]).
fn nab_csv() -> PathBuf {
    let csv = crate::harness::nab_data()
        .join("data/realKnownCause/machine_temperature_system_failure.csv");
    assert!(
        csv.exists(),
        "{} not found (set VIGIL_NAB_DATA)",
        csv.display()
    );
    csv
}

/// A detector container run as a local process.
pub struct LocalDetector {
    pod: String,
    child: Option<Child>,
    log: PathBuf,
    /// ConfigMap name -> the directory it is "mounted" at.
    volumes: Vec<(String, PathBuf)>,
    /// Host names replaced in the mounted files (this host has no cluster DNS).
    hosts: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// `data` with each `(name, address)` of `hosts` replaced: what cluster DNS would resolve.
fn resolved(
    data: BTreeMap<String, String>,
    hosts: &[(String, String)],
) -> BTreeMap<String, String> {
    data.into_iter()
        .map(|(k, mut v)| {
            for (name, addr) in hosts {
                v = v.replace(name.as_str(), addr);
            }
            (k, v)
        })
        .collect()
}

/// Writes `data` into `dir` the way kubelet's AtomicWriter lays out a ConfigMap volume:
/// the files are in a timestamped directory `..<stamp>`, `..data` is a symlink to it, and
/// each key is a symlink `<key> -> ..data/<key>`. An update writes a new directory and
/// renames a new `..data` link over the old one, so readers see all new files or none.
fn atomic_write(dir: &Path, data: &BTreeMap<String, String>) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..{}", crate::harness::uuid_like());
    let target = dir.join(&stamp);
    std::fs::create_dir(&target).unwrap();
    for (key, value) in data {
        std::fs::write(target.join(key), value).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for key in data.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

impl LocalDetector {
    /// Runs the first container of `pod` the way kubelet would, with mounted ConfigMaps as
    /// files under a temporary directory.
    pub async fn start(ns: &TestNamespace, pod: &Pod) -> Self {
        Self::start_at(ns, pod, None).await
    }

    /// [`Self::start`]; with `pod_ip`, the container's `0.0.0.0:<port>` listen addresses bind
    /// `<pod_ip>:<port>` (a loopback address, one per "pod"), so a client that reaches pods by
    /// IP (the operator's savepoint requests) reaches this process.
    pub async fn start_at(ns: &TestNamespace, pod: &Pod, pod_ip: Option<&str>) -> Self {
        Self::start_with(ns, pod, pod_ip, &[]).await
    }

    /// [`Self::start_at`], with each `(name, address)` of `hosts` replaced in the mounted
    /// ConfigMaps (a model server's Service name -> the local process serving it).
    pub async fn start_with(
        ns: &TestNamespace,
        pod: &Pod,
        pod_ip: Option<&str>,
        hosts: &[(String, String)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pod_name = pod.metadata.name.clone().unwrap();
        let spec = pod.spec.as_ref().unwrap();
        let container = &spec.containers[0];
        // Volumes: ConfigMaps written out, mount paths mapped to local directories.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let mut volumes: Vec<(String, PathBuf)> = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .unwrap();
            if volume.projected.is_some() {
                // The ServiceAccount token admission adds; `vigil run` does not call the API.
                continue;
            }
            let source = volume
                .config_map
                .as_ref()
                .unwrap_or_else(|| panic!("volume {} is not a ConfigMap", m.name));
            let cm = ns.api::<ConfigMap>().get(&source.name).await.unwrap();
            let local = dir.path().join(&m.name);
            std::fs::create_dir_all(&local).unwrap();
            atomic_write(&local, &resolved(cm.data.unwrap_or_default(), hosts));
            mounts.push((m.mount_path.clone(), local));
            volumes.push((source.name.clone(), dir.path().join(&m.name)));
        }
        // Environment: Secrets given whole (envFrom), then values and the downward API.
        let mut env = BTreeMap::new();
        for from in container.env_from.iter().flatten() {
            if let Some(secret) = &from.secret_ref {
                let s = ns
                    .api::<k8s_openapi::api::core::v1::Secret>()
                    .get(&secret.name)
                    .await
                    .unwrap();
                for (k, v) in s.data.unwrap_or_default() {
                    env.insert(k, String::from_utf8(v.0).unwrap());
                }
            }
        }
        for e in container.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => pod_name.clone(),
                        Some("metadata.namespace") => ns.name.clone(),
                        other => panic!("unsupported env source {other:?} for {}", e.name),
                    }
                }
                (None, None) => String::new(),
            };
            env.insert(e.name.clone(), value);
        }
        let metrics = format!("127.0.0.1:{}", free_port());
        let args: Vec<String> = container
            .args
            .iter()
            .flatten()
            .map(|a| {
                let mut a = a.clone();
                for (k, v) in &env {
                    a = a.replace(&format!("$({k})"), v);
                }
                for (mount, local) in &mounts {
                    if let Some(rest) = a.strip_prefix(mount.as_str()) {
                        a = format!("{}{rest}", local.display());
                    }
                }
                // Many "pods" share this host: give each its own metrics port, or its own
                // loopback IP.
                if let Some(port) = a.strip_prefix("0.0.0.0:") {
                    a = match pod_ip {
                        Some(ip) => format!("{ip}:{port}"),
                        None => metrics.clone(),
                    };
                }
                a
            })
            .collect();
        assert_eq!(
            container.command.as_deref(),
            Some(&["vigil".to_string()][..])
        );
        let log = dir.path().join("vigil.log");
        let child = Command::new(vigil_bin())
            .args(&args)
            .envs(&env)
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("spawn vigil");
        LocalDetector {
            pod: pod_name,
            child: Some(child),
            log,
            volumes,
            hosts: hosts.to_vec(),
            _dir: dir,
        }
    }

    /// Does what kubelet's ConfigMap volume sync does: rewrites every mounted ConfigMap
    /// from the API server, atomically.
    pub async fn sync_volumes(&self, ns: &TestNamespace) {
        for (name, dir) in &self.volumes {
            let cm = ns.api::<ConfigMap>().get(name).await.unwrap();
            atomic_write(dir, &resolved(cm.data.unwrap_or_default(), &self.hosts));
        }
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within 30 s.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "vigil for pod {} did not stop within 30 s:\n{}",
                    self.pod,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalDetector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- vigil (pod {}) log ---\n{}", self.pod, self.log_text());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn detectors_run_the_rendered_config_and_alert_on_nab() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-data").await;
    let sfx = &uuid_like()[..8];
    let (source, alerts, kpis, dead) = (
        format!("e2e-nab-{sfx}"),
        format!("e2e-nab-{sfx}.alerts"),
        format!("e2e-nab-{sfx}.kpis"),
        format!("e2e-nab-{sfx}.dead-letters"),
    );
    for t in [&source, &alerts, &kpis, &dead] {
        create_topic(t, 1).await;
    }
    let example = std::fs::read_to_string(
        repo_root().join("manifests/examples/nab-machine-temperature.yaml"),
    )
    .unwrap()
    .replace("nab.machine-temperature", &source)
    .replace("vigil.alerts", &alerts)
    .replace("vigil.kpis", &kpis)
    .replace("vigil.dead-letters", &dead)
    .replace(
        "consumerGroup: vigil-machine-temperature",
        &format!("consumerGroup: e2e-{sfx}"),
    );
    let op = Operator::start(&client, &ns.name, &[]).await;
    ns.apply_yaml(&example).await;

    // The detector pods, once the config has every rule.
    let selector =
        "app.kubernetes.io/instance=machine-temperature,app.kubernetes.io/name=vigil-detector";
    let pods = wait_for(
        "detector pods and a complete config",
        Duration::from_secs(30),
        || async {
            let cm = ns
                .api::<ConfigMap>()
                .get_opt("machine-temperature-detector-config")
                .await
                .ok()??;
            (cm.data?
                .get("rules.yaml")?
                .matches("kind: DetectionRule")
                .count()
                == 4)
                .then_some(())?;
            let pods = ns
                .api::<Pod>()
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?
                .items;
            (!pods.is_empty()).then_some(pods)
        },
    )
    .await;
    let mut detectors = Vec::new();
    for pod in &pods {
        detectors.push(LocalDetector::start(&ns, pod).await);
    }

    // Replay the series with the real `vigil replay`.
    let replay = Command::new(vigil_bin())
        .args(["replay", "--input"])
        .arg(nab_csv())
        .args([
            "--topic",
            &source,
            "--bootstrap-servers",
            &kafka_bootstrap(),
        ])
        .output()
        .expect("vigil replay");
    assert!(
        replay.status.success(),
        "vigil replay failed: {}",
        String::from_utf8_lossy(&replay.stderr)
    );

    // Alerts come out of the alerts topic.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", format!("e2e-reader-{sfx}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&alerts]).unwrap();
    let rules = [
        "temperature-drop",
        "temperature-shift",
        "overheating",
        "erratic",
    ];
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.values().sum::<usize>() < 5 && Instant::now() < deadline {
        let Some(msg) = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(500)))
        else {
            continue;
        };
        let msg = msg.expect("consume alerts");
        let value: serde_json::Value =
            serde_json::from_slice(msg.payload().unwrap_or_default()).expect("alert JSON");
        let alert = value.get("data").unwrap_or(&value);
        assert_eq!(alert["pipeline"], "machine-temperature", "{value}");
        let rule = alert["rule"].as_str().unwrap_or_default().to_string();
        assert!(
            rules.contains(&rule.as_str()),
            "alert from an unknown rule: {value}"
        );
        *seen.entry(rule).or_default() += 1;
    }
    assert!(
        seen.values().sum::<usize>() >= 5,
        "fewer than 5 alerts within 120 s: {seen:?}\n{}",
        detectors
            .iter()
            .map(|d| d.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    eprintln!("alerts by rule: {seen:?}");

    // Static membership: the group's member ids start with the pod names.
    let group = format!("e2e-{sfx}");
    let groups = tokio::task::block_in_place(|| {
        consumer.fetch_group_list(Some(&group), Duration::from_secs(10))
    })
    .unwrap();
    let members: Vec<String> = groups
        .groups()
        .iter()
        .flat_map(|g| g.members().iter().map(|m| m.id().to_string()))
        .collect();
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap();
        assert!(
            members.iter().any(|m| m.starts_with(name)),
            "no member of group {group} for pod {name}: {members:?}"
        );
    }

    // A rule change reaches the running detectors through the ConfigMap, without a restart.
    let changed = Instant::now();
    ns.apply_yaml(
        &example
            .split("---")
            .find(|d| d.contains("name: overheating"))
            .unwrap()
            .replace("value: 105", "value: 104.5"),
    )
    .await;
    wait_for(
        "the ConfigMap with the changed rule",
        Duration::from_secs(30),
        || async {
            let cm = ns
                .api::<ConfigMap>()
                .get("machine-temperature-detector-config")
                .await
                .ok()?;
            cm.data?
                .get("rules.yaml")?
                .contains("value: 104.5")
                .then_some(())
        },
    )
    .await;
    let in_config_map = changed.elapsed();
    for d in &detectors {
        d.sync_volumes(&ns).await;
    }
    let synced = Instant::now();
    for d in &mut detectors {
        wait_for(
            "the detector to reload its rules",
            Duration::from_secs(30),
            || {
                let log = d.log_text();
                async move { log.contains("Rules changed; replacing them.").then_some(()) }
            },
        )
        .await;
        assert!(d.running(), "the detector for pod {} exited", d.pod);
        assert!(
            !d.log_text().contains("restarting the detector"),
            "a rule change restarted the detector"
        );
    }
    eprintln!(
        "rule change: in the ConfigMap after {in_config_map:?}; detectors reloaded {:?} after the volume sync",
        synced.elapsed()
    );

    for d in detectors {
        let pod = d.pod.clone();
        assert!(
            d.terminate().await.success(),
            "vigil for pod {pod} did not exit cleanly"
        );
    }
    assert!(op.terminate().await.success());
    ns.delete().await;
}
