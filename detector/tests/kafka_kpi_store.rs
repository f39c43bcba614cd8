//! The KPI store against a real broker (`KAFKA_BOOTSTRAP`) and DuckDB (the PyPI package, in the
//! Python named by `VIGIL_DUCKDB_PYTHON`, scripts/setup-duckdb.sh): the NAB machine-temperature
//! series through the example pipeline (two tiers) with both a KPI topic and a `file://` KPI
//! store; DuckDB reads the Parquet files as they are (Hive partitions, no schema given) and its
//! aggregates per tier equal those of the KPI topic's records.

mod kafka_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kafka_support::*;
use vigil_detector::runner::{self, RunnerConfig};
use vigil_detector::telemetry::Metrics;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn duckdb_python() -> String {
    std::env::var("VIGIL_DUCKDB_PYTHON").unwrap_or_else(|_| {
        panic!(
            "VIGIL_DUCKDB_PYTHON is not set: run `eval \"$(scripts/setup-duckdb.sh)\"` first \
             (scripts/test.sh does); this test must not pass by skipping"
        )
    })
}

/// Per tier: (rows, windows with a mean, sum of `value.mean`, sum of `value.count`, first start,
/// last end in epoch ms).
type Aggregates = BTreeMap<String, (u64, u64, f64, f64, i64, i64)>;

#[test]
fn duckdb_reads_the_kpi_store_and_its_aggregates_equal_the_kpi_topics() {
    let b = bootstrap();
    let (src, group, alerts, kpis) = (
        unique("kpi-src"),
        unique("kpi-store"),
        unique("alerts"),
        unique("kpis"),
    );
    create_topics(&b, &[(&src, 1), (&alerts, 1), (&kpis, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(repo("manifests/examples/nab-machine-temperature.yaml"))
        .unwrap()
        .replace("topics: [nab.machine-temperature]", &format!("topics: [{src}]"))
        .replace("consumerGroup: vigil-machine-temperature", &format!("consumerGroup: {group}"))
        .replace("topic: vigil.alerts", &format!("topic: {alerts}"))
        .replace(
            "topic: vigil.kpis\n",
            &format!(
                "topic: {kpis}\n    kpiStore: {{location: 'file://{}', maxRows: 2000, flushInterval: 1s}}\n",
                dir.path().display()
            ),
        )
        .replace("    deadLetter:\n      topic: vigil.dead-letters\n", "");
    assert!(yaml.contains("kpiStore"), "{yaml}");
    let (_, rows) = vigil_core::input::read_rows(&repo(
        "data/nab/data/realKnownCause/machine_temperature_system_failure.csv",
    ))
    .unwrap();
    let records: Vec<(Option<&str>, Vec<u8>)> = rows
        .iter()
        .map(|r| (Some("machine-1"), r.json.clone()))
        .collect();
    produce(&b, &src, &records);
    let (p, rules) = manifests(&yaml);
    let m = Metrics::new();
    let h = runner::spawn(RunnerConfig::new(p, rules, b.clone()), m.clone()).unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || m.events_in()
            >= records.len() as u64),
        "read {} of {}",
        m.events_in(),
        records.len()
    );
    h.stop();
    h.join().unwrap();

    // The KPI topic's records.
    let mut want = Aggregates::new();
    for msg in read_all(&b, &kpis) {
        let j = json(&msg);
        let e = want
            .entry(j["window"].as_str().unwrap().to_string())
            .or_insert((0, 0, 0.0, 0.0, i64::MAX, i64::MIN));
        e.0 += 1;
        if let Some(mean) = j["features"]["value.mean"].as_f64() {
            e.1 += 1;
            e.2 += mean;
        }
        e.3 += j["features"]["value.count"].as_f64().unwrap_or(0.0);
        e.4 = e.4.min(j["start"].as_i64().unwrap());
        e.5 = e.5.max(j["end"].as_i64().unwrap());
    }
    assert_eq!(want.len(), 2, "two tiers: {want:?}");
    assert!(want["fast"].0 > 5000, "{want:?}");

    // DuckDB on the files, as an analyst would query them.
    let files = walk(dir.path());
    assert!(files.len() > 10, "{files:?}");
    assert!(
        files.iter().all(|f| {
            let s = f.to_string_lossy();
            s.contains("/machine-temperature/tier=")
                && s.contains("/date=20")
                && s.ends_with(".parquet")
        }),
        "{files:?}"
    );
    let query = format!(
        "import duckdb, json\n\
         rows = duckdb.sql(\"\"\"select tier, count(*), count(\"value.mean\"), sum(\"value.mean\"), sum(\"value.count\"),\n\
           epoch_ms(min(window_start)), epoch_ms(max(window_end))\n\
           from read_parquet('{}/machine-temperature/**/*.parquet', hive_partitioning = true, union_by_name = true)\n\
           group by tier order by tier\"\"\").fetchall()\n\
         print(json.dumps([[r[0], r[1], r[2], r[3], r[4], r[5], r[6]] for r in rows]))\n",
        dir.path().display()
    );
    let out = Command::new(duckdb_python())
        .args(["-c", &query])
        .output()
        .expect("run DuckDB");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for row in &got {
        let tier = row[0].as_str().unwrap();
        let w = &want[tier];
        assert_eq!(row[1].as_u64().unwrap(), w.0, "{tier}: rows");
        assert_eq!(row[2].as_u64().unwrap(), w.1, "{tier}: windows with a mean");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            close(row[3].as_f64().unwrap(), w.2),
            "{tier}: sum of means {} vs {}",
            row[3],
            w.2
        );
        assert!(
            close(row[4].as_f64().unwrap(), w.3),
            "{tier}: sum of counts {} vs {}",
            row[4],
            w.3
        );
        assert_eq!(row[5].as_i64().unwrap(), w.4, "{tier}: first start");
        assert_eq!(row[6].as_i64().unwrap(), w.5, "{tier}: last end");
    }
    assert!(
        m.encode()
            .contains("vigil_kpi_rows_total{result=\"written\"}"),
        "{}",
        m.encode()
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
