//! `crds/` and the chart's copy are what the types generate (run
//! `cargo run -p vigil-api --bin crdgen && cp crds/*.yaml charts/vigil/crds/` after a change).

use std::path::PathBuf;

#[test]
fn crds_are_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["crds", "charts/vigil/crds"] {
        for (file, yaml) in vigil_api::crds::render().unwrap() {
            let path = root.join(dir).join(file);
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                on_disk == yaml,
                "{} is stale: run `cargo run -p vigil-api --bin crdgen && cp crds/*.yaml charts/vigil/crds/`",
                path.display()
            );
        }
    }
}
