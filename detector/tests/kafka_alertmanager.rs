//! Alerts to a real Alertmanager (Debian `prometheus-alertmanager`, started here; path from
//! `VIGIL_ALERTMANAGER` or `PATH`, installed by scripts/setup-alertmanager.sh) from a detector
//! on a real broker (`KAFKA_BOOTSTRAP`): the NAB machine-temperature series through the example
//! rules; the alerts arrive, Alertmanager groups them by `alertname` and notifies its webhook
//! receiver, and they resolve. And when no Alertmanager answers, every alert transition ends in
//! the dead-letter topic with reason `delivery`, nothing lost.

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_support::*;
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::telemetry::Metrics;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn alertmanager_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_ALERTMANAGER") {
        return PathBuf::from(p);
    }
    for name in ["prometheus-alertmanager", "alertmanager"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!(
        "Alertmanager is not installed: run scripts/setup-alertmanager.sh (Debian package \
         prometheus-alertmanager) or set VIGIL_ALERTMANAGER; these tests must not pass by skipping"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A webhook receiver for Alertmanager's notifications: every JSON body posted to it.
struct Hook {
    port: u16,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    _rt: tokio::runtime::Runtime,
}

impl Hook {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let store = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        store.lock().unwrap().push(v);
                    }
                    "ok"
                }
            }),
        );
        rt.spawn(async move { axum::serve(listener, app).await });
        Self {
            port,
            bodies,
            _rt: rt,
        }
    }
}

struct Alertmanager {
    child: Child,
    port: u16,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    /// Groups by `alertname`, notifies `hook` at once and again on every change, resolved too.
    fn start(dir: &Path, hook: u16) -> Self {
        let port = free_port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{hook}/hook\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let child = Command::new(alertmanager_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Alertmanager");
        let am = Self { child, port };
        assert!(
            wait_until(Duration::from_secs(30), || am.get("/-/ready").is_some()),
            "Alertmanager did not become ready"
        );
        am
    }

    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{}{path}", self.port)])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The example pipeline with its source, topics and `alertmanager` sink replaced.
fn pipeline(src: &str, group: &str, alerts: &str, dead: &str, sink: &str) -> String {
    let yaml =
        std::fs::read_to_string(repo("manifests/examples/nab-machine-temperature.yaml")).unwrap();
    let replaced = yaml
        .replace(
            "topics: [nab.machine-temperature]",
            &format!("topics: [{src}]"),
        )
        .replace(
            "consumerGroup: vigil-machine-temperature",
            &format!("consumerGroup: {group}"),
        )
        .replace("topic: vigil.alerts", &format!("topic: {alerts}"))
        .replace("topic: vigil.dead-letters", &format!("topic: {dead}"))
        .replace("    kpis:\n      topic: vigil.kpis\n", "")
        .replace(
            "    deadLetter:\n",
            &format!("    alertmanager: {sink}\n    deadLetter:\n"),
        );
    assert!(
        replaced.contains(sink) && replaced.contains(src),
        "{replaced}"
    );
    replaced
}

/// Produces the rows of the NAB machine-temperature series (22,695 rows) whose timestamp is
/// in `from..to` as JSON events.
fn produce_series(b: &str, topic: &str, from: &str, to: &str) -> usize {
    let (_, rows) = vigil_core::input::read_rows(&repo(
        "data/nab/data/realKnownCause/machine_temperature_system_failure.csv",
    ))
    .unwrap();
    let records: Vec<(Option<&str>, Vec<u8>)> = rows
        .iter()
        .filter(|r| (from..to).contains(&r.cells[0].as_str()))
        .map(|r| (Some("machine-1"), r.json.clone()))
        .collect();
    produce(b, topic, &records);
    records.len()
}

#[test]
fn nab_alerts_reach_alertmanager_are_grouped_and_resolve() {
    let b = bootstrap();
    let (src, group, alerts_topic, dead) = (
        unique("nab-src"),
        unique("nab-am"),
        unique("alerts"),
        unique("dead"),
    );
    create_topics(&b, &[(&src, 1), (&alerts_topic, 1), (&dead, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start();
    let am = Alertmanager::start(dir.path(), hook.port);
    let yaml = pipeline(
        &src,
        &group,
        &alerts_topic,
        &dead,
        &format!(
            "{{urls: ['http://127.0.0.1:{}'], resendInterval: 2s, generatorURL: 'http://grafana.example/d/vigil?var-key={{{{ key }}}}'}}",
            am.port
        ),
    );
    // Up to noon on Feb 7, when the temperature drop before the failure fires
    // (manifests/rule-tests/nab-machine-temperature.test.yaml pins the rules down).
    let mut total = produce_series(&b, &src, "", "2014-02-07 12:00:00");
    let (p, rules) = manifests(&yaml);
    let m = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), m.clone()).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || m.events_in() >= total as u64),
        "read {} of {total}",
        m.events_in()
    );
    // While it fires, Alertmanager's API lists it with its labels.
    let mut active = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            active = am.get("/api/v2/alerts?active=true").unwrap_or_default();
            active.contains("\"alertname\":\"temperature-drop\"")
        }),
        "no alert in Alertmanager: {active}; {}; dead letters: {:?}",
        m.encode()
            .lines()
            .filter(|l| l.contains("notification"))
            .collect::<Vec<_>>()
            .join("\n"),
        read_all(&b, &dead)
            .iter()
            .map(|l| header(l, "vigil.error"))
            .collect::<Vec<_>>()
    );
    let listed: serde_json::Value = serde_json::from_str(&active).unwrap();
    let first = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "temperature-drop")
        .unwrap();
    assert_eq!(first["labels"]["severity"], "critical", "{first}");
    assert_eq!(first["labels"]["team"], "plant-ops", "{first}");
    assert!(
        first["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("Machine machine-1 runs ")),
        "{first}"
    );
    assert_eq!(
        first["labels"]["pipeline"], "machine-temperature",
        "{first}"
    );
    assert_eq!(first["labels"]["key"], "machine-1", "{first}");
    assert!(
        first["generatorURL"]
            .as_str()
            .is_some_and(|u| u.ends_with("var-key=machine-1")),
        "{first}"
    );
    // While it fires it is posted again every resendInterval (2 s here).
    assert!(
        wait_until(Duration::from_secs(15), || m.encode().lines().any(|l| l
            .starts_with(
                "vigil_notifications_total{receiver=\"alertmanager\",result=\"resent\"}"
            )
            && !l.ends_with(" 0"))),
        "{}",
        m.encode()
    );
    // The rest of the series: it recovers, and more alerts come and go.
    total += produce_series(&b, &src, "2014-02-07 12:00:00", "9");
    assert!(
        wait_until(Duration::from_secs(120), || m.events_in() >= total as u64),
        "read {} of {total}",
        m.events_in()
    );
    h.stop();
    let summary = h.join().unwrap();
    assert!(summary.alerts_sent > 10, "{}", summary.alerts_sent);

    // The transitions of the alerts topic: firing and resolved per rule.
    let mut fired: BTreeSet<String> = BTreeSet::new();
    let mut resolved: BTreeSet<String> = BTreeSet::new();
    let mut transitions = 0_u64;
    for msg in read_all(&b, &alerts_topic) {
        let j = json(&msg);
        transitions += 1;
        let rule = j["data"]["rule"].as_str().unwrap().to_string();
        match j["data"]["status"].as_str().unwrap() {
            "firing" => fired.insert(rule),
            _ => resolved.insert(rule),
        };
    }
    assert!(fired.len() >= 2, "rules that fired: {fired:?}");
    // Alertmanager took every transition (each post answered 200).
    let sent = format!(
        "vigil_notifications_total{{receiver=\"alertmanager\",result=\"sent\"}} {transitions}"
    );
    assert!(m.encode().contains(&sent), "{sent} not in {}", m.encode());

    // Alertmanager notified its receiver per group (alertname), firing, then resolved. An
    // episode that fires and resolves within the group's wait is never notified: Alertmanager
    // sends a resolved notification only after a firing one (the `erratic` rule's one-window
    // episodes can be that short), so the long episodes are required and the rest checked for
    // consistency.
    let seen = |status: &str| -> BTreeMap<String, usize> {
        let mut by_group = BTreeMap::new();
        for n in hook.bodies.lock().unwrap().iter() {
            let group = n["groupLabels"]["alertname"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let count = n["alerts"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|x| x["status"] == status).count());
            if count > 0 {
                *by_group.entry(group).or_default() += count;
            }
        }
        by_group
    };
    let long = ["temperature-drop", "temperature-shift", "overheating"];
    let ok = wait_until(Duration::from_secs(60), || {
        let f = seen("firing");
        let r = seen("resolved");
        long.iter()
            .all(|rule| !fired.contains(*rule) || f.contains_key(*rule))
            && f.keys().all(|g| !resolved.contains(g) || r.contains_key(g))
    });
    let (f, r) = (seen("firing"), seen("resolved"));
    assert!(
        ok && f.len() >= 2 && f.keys().all(|g| fired.contains(g)),
        "Alertmanager's notifications: firing {f:?}, resolved {r:?}; the detector fired {fired:?} and resolved {resolved:?}"
    );
    // Every notification is one group: all its alerts share the group's alertname.
    for n in hook.bodies.lock().unwrap().iter() {
        let group = &n["groupLabels"]["alertname"];
        for a in n["alerts"].as_array().unwrap() {
            assert_eq!(&a["labels"]["alertname"], group, "{n}");
        }
    }
    let metrics = m.encode();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("vigil_notifications_total{receiver=\"alertmanager\",result=\"sent\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        read_all(&b, &dead).is_empty(),
        "nothing is dead-lettered when Alertmanager takes every alert"
    );
}

#[test]
fn alerts_no_alertmanager_takes_are_dead_lettered_not_lost() {
    let b = bootstrap();
    let (src, group, alerts_topic, dead) = (
        unique("nab-src"),
        unique("nab-am-down"),
        unique("alerts"),
        unique("dead"),
    );
    create_topics(&b, &[(&src, 1), (&alerts_topic, 1), (&dead, 1)]);
    // Nothing listens on the port; the queue holds 2 transitions, so a burst overflows it too.
    let yaml = pipeline(
        &src,
        &group,
        &alerts_topic,
        &dead,
        &format!(
            "{{urls: ['http://127.0.0.1:{}'], queueCapacity: 2}}",
            free_port()
        ),
    );
    let total = produce_series(&b, &src, "", "9");
    let (p, rules) = manifests(&yaml);
    let m = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), m.clone()).unwrap();
    assert!(wait_until(Duration::from_secs(120), || m.events_in() >= total as u64));
    h.stop();
    let summary = h.join().unwrap();
    let alerts = read_all(&b, &alerts_topic);
    assert_eq!(alerts.len() as u64, summary.alerts_sent);
    assert!(alerts.len() > 10);
    // Every transition is in the dead-letter topic with why, as its CloudEvent.
    let letters = read(&b, &dead, alerts.len(), Duration::from_secs(30));
    assert_eq!(letters.len(), alerts.len(), "dead letters vs alerts");
    let ids = |ms: &[rdkafka::message::OwnedMessage]| -> BTreeSet<String> {
        ms.iter()
            .map(|m| json(m)["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&letters), ids(&alerts));
    for l in &letters {
        assert_eq!(header(l, "vigil.reason").as_deref(), Some("delivery"));
        assert_eq!(header(l, "vigil.receiver").as_deref(), Some("alertmanager"));
    }
    let why: BTreeSet<String> = letters
        .iter()
        .filter_map(|l| header(l, "vigil.error"))
        .map(|e| {
            if e.contains("queue is full") {
                "queue full".into()
            } else if e.contains("alertmanager: http://127.0.0.1") {
                "unreachable".into()
            } else {
                e
            }
        })
        .collect();
    assert!(why.contains("unreachable"), "{why:?}");
    assert!(why.contains("queue full"), "{why:?}");
}
