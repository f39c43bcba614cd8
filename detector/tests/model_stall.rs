//! A model server that hangs (SIGSTOP, a real process) while the whole detector runs on a
//! real Kafka broker: rule alerts keep arriving although every model call hangs for longer
//! than the test waits for them (the run loop never waits for scoring); after SIGCONT the
//! model windows that closed meanwhile are scored, none dropped, and their model alerts
//! arrive late with their own window times.
//!
//! Needs `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"` and
//! `eval "$(scripts/setup-onnxruntime.sh)"`.

mod kafka_support;
mod model_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_support::{
    bootstrap, create_topics, json, manifests, produce, read_all, unique, wait_until,
};
use model_support::TestServer;
use model_support::presses::{events, iforest, yaml};
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::scoring::ScorerConfig;
use vigil_detector::telemetry::Metrics;

/// Longer than any wait below: a run loop that waited for the hung call would miss them all.
const DEADLINE: Duration = Duration::from_secs(90);

fn firing(b: &str, topic: &str, rule: &str, key: &str) -> Vec<serde_json::Value> {
    read_all(b, topic)
        .iter()
        .map(json)
        .filter(|a| {
            a["type"] == "dev.vigil.alert.firing"
                && a["data"]["rule"] == rule
                && a["data"]["key"] == key
        })
        .collect()
}

/// The model server process of the test below; does nothing unless it starts it.
#[test]
#[ignore = "helper: the model server process the SIGSTOP test starts and stops"]
fn child_model_server() {
    if std::env::var_os("VIGIL_CHILD_MODEL_SERVER").is_none() {
        return;
    }
    let server = TestServer::start(0);
    println!("PORT={}", server.port);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

struct ServerProcess(Child);

impl ServerProcess {
    fn start() -> (Self, u16) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_model_server", "--nocapture"])
            .env("VIGIL_CHILD_MODEL_SERVER", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the model server process");
        let stdout = child.stdout.take().unwrap();
        let port = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("PORT=").map(|p| p.parse::<u16>().unwrap()))
            .expect("the model server process says its port");
        (Self(child), port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_hung_model_server_delays_model_rules_only_and_they_catch_up() {
    let b = bootstrap();
    let (src, alerts, group) = (unique("src"), unique("alerts"), unique("group"));
    create_topics(&b, &[(&src, 1), (&alerts, 1)]);
    let (server, port) = ServerProcess::start();
    let (p, rules) = manifests(&yaml(&src, &group, &alerts));
    let mut cfg = RunnerConfig::new(p, rules, b.clone());
    // A threshold every window passes: each key's first scored window fires the model rule,
    // so the alert of a key seen only while the server hangs says when its windows were scored.
    cfg.models = iforest(1000.0).models;
    cfg.model_server = Some(format!("http://127.0.0.1:{port}"));
    cfg.scorer = ScorerConfig {
        deadline: DEADLINE,
        retries: 0,
        ..ScorerConfig::default()
    };
    let metrics = Metrics::new();
    let h = runner::spawn(cfg, metrics.clone()).expect("runner starts");
    assert!(h.rule_errors().is_empty(), "{:?}", h.rule_errors());
    let s = metrics.scoring().clone();
    let wait = Duration::from_secs(60);

    // Up: 5-second windows are scored, both rules alert.
    produce(&b, &src, &events("a", 0, 30));
    assert!(
        wait_until(wait, || s.windows_total("iforest", "scored") >= 5),
        "scored {}",
        s.windows_total("iforest", "scored")
    );
    assert!(wait_until(wait, || firing(&b, &alerts, "hot", "a").len() >= 10));
    assert!(wait_until(wait, || !firing(&b, &alerts, "forest", "a").is_empty()));

    // Hung: every model call now hangs (up to DEADLINE, longer than the waits below).
    server.signal("-STOP");
    let hot_before = firing(&b, &alerts, "hot", "a").len();
    let scored_before = s.windows_total("iforest", "scored");
    let stopped_at = Instant::now();
    let during: Vec<(Option<&str>, Vec<u8>)> = events("a", 30, 60)
        .into_iter()
        .zip(events("b", 30, 60))
        .flat_map(|(a, b)| [a, b])
        .collect();
    produce(&b, &src, &during);
    assert!(
        wait_until(Duration::from_secs(45), || firing(&b, &alerts, "hot", "a")
            .len()
            >= hot_before + 10
            && firing(&b, &alerts, "hot", "b").len() >= 10),
        "rule alerts stopped while the model server hung"
    );
    let rules_took = stopped_at.elapsed();
    assert!(
        wait_until(wait, || s.windows_total("iforest", "scored")
            == scored_before
            && metrics.scoring().backlog() >= 8),
        "the windows of both keys wait in the backlog (backlog {}, scored {})",
        metrics.scoring().backlog(),
        s.windows_total("iforest", "scored")
    );
    assert!(
        stopped_at.elapsed() < DEADLINE,
        "the hung call ended before the checks: they prove nothing"
    );
    assert!(
        firing(&b, &alerts, "forest", "b").is_empty(),
        "no model alert while the model server hangs"
    );

    // Resumed: the waiting windows are scored, none dropped; key b's model alert arrives, for
    // a window of the hung period.
    server.signal("-CONT");
    assert!(
        wait_until(wait, || metrics.scoring().backlog() == 0
            && s.windows_total("iforest", "scored") >= scored_before + 8),
        "backlog {} scored {}",
        metrics.scoring().backlog(),
        s.windows_total("iforest", "scored")
    );
    assert_eq!(s.windows_total("iforest", "dropped"), 0);
    assert!(wait_until(wait, || !firing(&b, &alerts, "forest", "b").is_empty()));
    let late = &firing(&b, &alerts, "forest", "b")[0];
    let start = late["data"]["windowStart"].as_i64().unwrap_or_default();
    assert!(
        (30_000..60_000).contains(&start),
        "key b's first model window is from the hung period: {late}"
    );
    eprintln!(
        "rule alerts during the hang after {:.1} s; model windows scored after SIGCONT: {}",
        rules_took.as_secs_f64(),
        s.windows_total("iforest", "scored") - scored_before
    );
    assert!(wait_until(wait, || metrics.events_in() >= 360));
    h.stop();
    let summary = h.join().expect("clean stop");
    assert_eq!(summary.counters.records, 120 + 240);
    drop(server);
}
