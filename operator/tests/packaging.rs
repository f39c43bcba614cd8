//! Packaging stays in step with the generated CRDs: the chart ships exactly `crds/*.yaml`
//! (copied by `manifests/install/generate.sh`) and the install manifest contains them.

use std::path::Path;

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let generated = root.join("crds");
    let chart = root.join("charts/vigil/crds");
    assert_eq!(
        yaml_files(&generated),
        yaml_files(&chart),
        "run manifests/install/generate.sh"
    );
    let install = std::fs::read_to_string(root.join("manifests/install/vigil.yaml")).unwrap();
    for name in yaml_files(&generated) {
        let a = std::fs::read_to_string(generated.join(&name)).unwrap();
        let b = std::fs::read_to_string(chart.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/vigil/crds/{name} differs from crds/{name}: run manifests/install/generate.sh"
        );
        let body = a
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            install.contains(&body),
            "manifests/install/vigil.yaml lacks crds/{name}: run manifests/install/generate.sh"
        );
    }
}
