//! Two operator replicas: only the holder of the Lease reconciles; on SIGTERM it releases the
//! Lease and exits 0, and the other replica takes over.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::fixtures;
use crate::harness::{Operator, TestNamespace, admin, create_topic, uuid_like, wait_for};

async fn is_leader(op: &Operator) -> bool {
    op.metrics()
        .await
        .lines()
        .any(|l| l == "vigil_operator_leader 1")
}

#[tokio::test]
#[ignore = "needs the e2e cluster: run e2e/tests/operator.sh"]
async fn one_leader_reconciles_and_hands_over_on_sigterm() {
    let client = admin().await;
    let ns = TestNamespace::create(&client, "e2e-leader").await;
    let topic = format!("e2e-leader-{}", &uuid_like()[..8]);
    create_topic(&topic, 1).await;
    let release_ns =
        std::env::var("VIGIL_E2E_RELEASE_NAMESPACE").unwrap_or_else(|_| "vigil-system".into());
    let lease_name = format!("e2e-{}", &uuid_like()[..8]);
    let args = [
        "--leader-elect=true",
        &format!("--lease-namespace={release_ns}"),
        &format!("--lease-name={lease_name}"),
    ];
    let a = Operator::start(&client, &ns.name, &args).await;
    let b = Operator::start(&client, &ns.name, &args).await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_ns);
    let (leader, standby) = wait_for("a leader", Duration::from_secs(30), || async {
        match (is_leader(&a).await, is_leader(&b).await) {
            (true, false) => Some((true, false)),
            (false, true) => Some((false, true)),
            (true, true) => panic!("two leaders at once"),
            (false, false) => None,
        }
    })
    .await;
    assert_ne!(leader, standby);
    let (leader, standby) = if leader { (a, b) } else { (b, a) };
    let lease = leases.get(&lease_name).await.unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(
        holder.ends_with(&format!("-{}", leader.pid())),
        "holder {holder}, leader pid {}",
        leader.pid()
    );

    ns.apply_yaml(&fixtures::pipeline("led", &topic, 1, "led"))
        .await;
    wait_for("the StatefulSet", Duration::from_secs(30), || async {
        ns.api::<StatefulSet>()
            .get_opt("led-detector")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(!is_leader(&standby).await);
    let standby_log = standby.log_text();
    assert!(
        !standby_log.contains("Reconciled"),
        "the standby reconciled:\n{standby_log}"
    );

    // Graceful handover: the leader releases the Lease on SIGTERM and exits 0.
    assert!(leader.terminate().await.success());
    wait_for("the standby to lead", Duration::from_secs(40), || async {
        is_leader(&standby).await.then_some(())
    })
    .await;
    let holder = leases
        .get(&lease_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(
        holder.ends_with(&format!("-{}", standby.pid())),
        "holder {holder}"
    );
    // The new leader reconciles: a change reaches the StatefulSet.
    ns.apply_yaml(
        &fixtures::pipeline("led", &topic, 1, "led")
            .replace("maxOutOfOrderness: 5s", "maxOutOfOrderness: 7s"),
    )
    .await;
    wait_for(
        "the new leader to apply the change",
        Duration::from_secs(30),
        || async {
            let sts = ns.api::<StatefulSet>().get("led-detector").await.ok()?;
            (sts.metadata.generation > Some(1)).then_some(())
        },
    )
    .await;
    assert!(standby.terminate().await.success());
    let _ = leases.delete(&lease_name, &Default::default()).await;
    ns.delete().await;
}
