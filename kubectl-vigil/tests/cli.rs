//! The plugin binary as kubectl runs it (its e2e use is in the operator's e2e suite, which
//! needs this test target so that `cargo test --workspace` builds the binary).

use std::process::Command;

fn plugin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubectl-vigil"))
}

#[test]
fn help_lists_the_commands() {
    let out = plugin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for c in ["status", "rollback", "promote", "abort"] {
        assert!(text.contains(c), "{text}");
    }
}

#[test]
fn a_wrong_resource_is_refused_before_any_request() {
    let out = plugin()
        .args(["rollback", "sp/payments"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("`sp/payments`: only AnomalyModels"), "{text}");
}
