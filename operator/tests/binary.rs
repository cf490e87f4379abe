//! The operator binary against the real API server: it reconciles on its own (watches, not
//! test calls), and of two replicas only the Lease holder works; when it dies the other
//! takes over.

mod common;

use std::time::{Duration, Instant};

use audit_manager_crds::AuditManager;
use common::{Fixture, Operator, condition};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("audit-manager-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec.and_then(|s| s.holder_identity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_reconciles_and_a_standby_takes_over() {
    let f = Fixture::new(true, json!({})).await;
    let system = common::unique("operator-system");
    common::create_namespace(&f.client, &system).await;

    let mut first = Some(Operator::start("operator-a", &system));
    let leases: Api<Lease> = Api::namespaced(f.client.clone(), &system);
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder(&leases).await.as_deref() != Some("operator-a") {
        assert!(Instant::now() < deadline, "operator-a never took the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _second = Operator::start("operator-b", &system);

    // The leader reconciles the resource through its watches.
    let api: Api<AuditManager> = Api::namespaced(f.client.clone(), &f.namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let am = api.get(&f.name).await.expect("get");
        if condition(&am, "DatabaseReady").0 == "True" && condition(&am, "TopicsReady").0 == "True"
        {
            break;
        }
        assert!(Instant::now() < deadline, "not reconciled: {:?}", am.status);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some("operator-a"),
        "the standby did not take over a live lease"
    );

    // The leader dies: the standby takes the lease once it expires.
    drop(first.take());
    let deadline = Instant::now() + Duration::from_secs(45);
    while holder(&leases).await.as_deref() != Some("operator-b") {
        assert!(Instant::now() < deadline, "operator-b never took over");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
