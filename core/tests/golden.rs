//! Golden test: the NAB machine-temperature series through a fixed pipeline and rules gives the
//! checked-in list of alert transitions (tests/golden/machine-temperature.alerts.jsonl).
//! Processing time follows event time, so the output is deterministic.

use std::path::PathBuf;

use vigil_api::manifest::Manifests;
use vigil_core::engine::{Engine, EngineOptions, Outputs, RawRecord};

fn shared() -> PathBuf {
    let root = std::env::var_os("VIGIL_NAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/nab"));
    let p = root.join("data");
    assert!(
        p.is_dir(),
        "NAB data not found at {} (set VIGIL_NAB_DATA)",
        p.display()
    );
    p
}

#[test]
fn machine_temperature_alerts_match_golden() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut m = Manifests::default();
    m.add_file(&dir.join("machine-temperature.yaml")).unwrap();
    let rules = m.rules_for(&m.pipelines[0]);
    assert_eq!(rules.len(), 4);
    let (mut engine, errors) =
        Engine::from_resources(&m.pipelines[0], &rules, &[], EngineOptions::default()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let (_, rows) = vigil_core::input::read_rows(
        &shared().join("realKnownCause/machine_temperature_system_failure.csv"),
    )
    .unwrap();
    let mut out = Outputs::default();
    let mut lines = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let now = vigil_core::decode::parse_event_time(&row.cells[0], Default::default()).unwrap();
        engine.process(
            &RawRecord {
                partition: 0,
                offset: i as i64,
                key: Some(b"machine-1"),
                payload: &row.json,
            },
            now,
            &mut out,
        );
        for a in out.alerts.drain(..) {
            lines.push(serde_json::to_string(&a).unwrap());
        }
    }
    engine.flush(i64::MAX, &mut out);
    assert_eq!(engine.counters().decode_errors, 0);
    let got = lines.join("\n") + "\n";
    let golden = dir.join("machine-temperature.alerts.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want =
        std::fs::read_to_string(&golden).expect("golden file; create it with UPDATE_GOLDEN=1");
    assert!(
        lines.len() >= 4,
        "the scenario should alert: {} alerts",
        lines.len()
    );
    assert_eq!(got, want, "alerts differ from {}", golden.display());
}
