//! The harness plays kubelet for a rendered pod (pods do not run under kwok): every volume is
//! laid out in a temporary directory once its source exists (ConfigMaps and Secrets written as files, `items` honoured
//! for ConfigMaps; emptyDirs empty), each init container's command runs to completion, then the first container starts,
//! all with the rendered command, arguments and environment, where mount paths are mapped to
//! the local directories and `0.0.0.0:<port>` listen addresses to free loopback ports (many
//! "pods" share this host). Binaries other than `sh` come from the cargo target directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Secret};

use crate::harness::{TestNamespace, free_port, wait_for};

/// A binary built next to this test (`target/<profile>/<name>`).
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} not found: build it first (e2e/tests/operator.sh does)",
        bin.display()
    );
    bin
}

/// A pod's first container running as a local process.
pub struct LocalPod {
    child: Option<Child>,
    log: PathBuf,
    /// Container listen address (`0.0.0.0:<port>`) -> the loopback address used instead.
    pub listen: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

struct Mapping {
    mounts: Vec<(String, PathBuf)>,
    listen: BTreeMap<String, String>,
}

impl Mapping {
    fn map(&mut self, value: &str) -> String {
        if let Some(port) = value.strip_prefix("0.0.0.0:") {
            let local = self
                .listen
                .entry(format!("0.0.0.0:{port}"))
                .or_insert_with(|| format!("127.0.0.1:{}", free_port()));
            return local.clone();
        }
        for (mount, local) in &self.mounts {
            if value == mount {
                return local.display().to_string();
            }
            if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
                return local.join(rest).display().to_string();
            }
        }
        value.to_string()
    }
}

async fn write_volumes(ns: &TestNamespace, spec: &PodSpec, dir: &Path) {
    for v in spec.volumes.iter().flatten() {
        let local = dir.join(&v.name);
        std::fs::create_dir_all(&local).unwrap();
        if let Some(source) = &v.config_map {
            // Like kubelet, wait for the volume's source: the operator applies a workload and
            // its ConfigMaps in separate calls.
            let cm = wait_for(
                &format!("ConfigMap {} for volume {}", source.name, v.name),
                Duration::from_secs(30),
                || async { ns.api::<ConfigMap>().get_opt(&source.name).await.ok()? },
            )
            .await;
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, s) in cm.data.unwrap_or_default() {
                files.insert(k, s.into_bytes());
            }
            for (k, b) in cm.binary_data.unwrap_or_default() {
                files.insert(k, b.0);
            }
            match &source.items {
                Some(items) => {
                    for item in items {
                        std::fs::write(local.join(&item.path), &files[&item.key]).unwrap();
                    }
                }
                None => {
                    for (k, bytes) in files {
                        std::fs::write(local.join(k), bytes).unwrap();
                    }
                }
            }
        } else if let Some(source) = &v.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let secret = wait_for(
                &format!("Secret {name} for volume {}", v.name),
                Duration::from_secs(30),
                || async { ns.api::<Secret>().get_opt(&name).await.ok()? },
            )
            .await;
            for (k, b) in secret.data.unwrap_or_default() {
                std::fs::write(local.join(k), b.0).unwrap();
            }
        } else if v.empty_dir.is_none() && v.projected.is_none() {
            panic!(
                "volume {} is neither a ConfigMap, a Secret nor an emptyDir",
                v.name
            );
        }
    }
}

fn command(c: &Container, dir: &Path, listen: &mut BTreeMap<String, String>, ns: &str) -> Command {
    let mut m = Mapping {
        mounts: c
            .volume_mounts
            .iter()
            .flatten()
            .map(|vm| (vm.mount_path.clone(), dir.join(&vm.name)))
            .collect(),
        listen: std::mem::take(listen),
    };
    let argv = c.command.clone().unwrap_or_default();
    let program = match argv.first().map(String::as_str) {
        Some("sh") => PathBuf::from("sh"),
        Some(name) => target_bin(name),
        None => panic!("container {} has no command", c.name),
    };
    let mut cmd = Command::new(program);
    for a in argv.iter().skip(1).chain(c.args.iter().flatten()) {
        cmd.arg(m.map(a));
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => m.map(v),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => format!("{}-local", c.name),
                Some("metadata.namespace") => ns.to_string(),
                other => panic!("unsupported env source {other:?} for {}", e.name),
            },
            (None, None) => String::new(),
        };
        cmd.env(&e.name, value);
    }
    *listen = m.listen;
    cmd
}

impl LocalPod {
    /// Runs the init containers of `spec`, then starts its first container.
    pub async fn start(ns: &TestNamespace, spec: &PodSpec) -> Self {
        Self::start_listening(ns, spec, BTreeMap::new()).await
    }

    /// [`Self::start`] with listen addresses mapped as `listen` says (a restarted "pod" keeps
    /// its ports, like a Service in front of it would).
    pub async fn start_listening(
        ns: &TestNamespace,
        spec: &PodSpec,
        mut listen: BTreeMap<String, String>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_volumes(ns, spec, dir.path()).await;
        for c in spec.init_containers.iter().flatten() {
            let out = command(c, dir.path(), &mut listen, &ns.name)
                .output()
                .expect("init container");
            assert!(
                out.status.success(),
                "init container {} failed: {}{}",
                c.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let c = &spec.containers[0];
        let log = dir.path().join(format!("{}.log", c.name));
        let file = std::fs::File::create(&log).unwrap();
        let child = command(c, dir.path(), &mut listen, &ns.name)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn the container");
        LocalPod {
            child: Some(child),
            log,
            listen,
            _dir: dir,
        }
    }

    /// The container's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }
}

impl Drop for LocalPod {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- local pod log ---\n{}", self.log_text());
            }
        }
    }
}
