//! The operator binary against the real API server: it reconciles on its own (watches, not
//! test calls), and of two replicas only the Lease holder works; when it dies the other
//! takes over.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use audit_manager_crds::AuditManager;
use common::{Fixture, condition};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_audit-manager-operator");

/// An operator process, killed when dropped.
struct Operator(Child);

impl Operator {
    fn start(identity: &str, namespace: &str) -> Operator {
        let kube = audit_testenv::kube();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = Command::new(BINARY)
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kube.kubeconfig())
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", namespace)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the operator");
        Operator(child)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let namespaces: Api<Namespace> = Api::all(f.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": system}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");

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
