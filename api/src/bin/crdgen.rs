//! Writes the CustomResourceDefinitions of every Vigil kind to `crds/` (or the directory given
//! as the first argument); copy them to `charts/vigil/crds/` too (`make generate`). The test
//! `api/tests/crds.rs` fails when either copy is stale.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".into()));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in vigil_api::crds::render()? {
        std::fs::write(dir.join(file), yaml)?;
    }
    Ok(())
}
