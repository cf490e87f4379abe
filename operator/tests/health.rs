//! `Healthy` comes from the runtime's own `/health` report, read from its ready pods: a real
//! runtime process stands in for the pod (no kubelet runs here; the Pod object and its
//! status are written as a kubelet would).

mod common;

use std::sync::Arc;

use audit_manager_crds::AuditManager;
use audit_manager_operator::context::Ctx;
use audit_manager_operator::controller::reconcile;
use audit_manager_operator::metrics::Metrics;
use common::{Fixture, condition, expect_condition};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

async fn ready_pod(f: &Fixture, name: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/name": "audit-manager", "app.kubernetes.io/instance": f.name}},
        "spec": {"containers": [{"name": "audit-manager", "image": "audit-manager:test"}]}
    }))
    .expect("pod");
    f.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.1",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    f.api::<Pod>()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("pod status");
}

async fn reconcile_with_port(f: &Fixture, port: u16) -> AuditManager {
    let mut ctx = Ctx::new(
        f.client.clone(),
        Arc::new(Metrics::default()),
        "test".into(),
    );
    ctx.runtime_port = port;
    let current = f.api::<AuditManager>().get(&f.name).await.expect("get");
    reconcile(Arc::new(current), Arc::new(ctx))
        .await
        .expect("reconcile");
    f.api::<AuditManager>().get(&f.name).await.expect("get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_and_ready_follow_the_runtimes_own_report() {
    let f = Fixture::new(true, json!({})).await;
    f.reconcile().await;
    let secret = f
        .api::<Secret>()
        .get(&format!("{}-db-writer", f.name))
        .await
        .expect("secret");
    let password =
        String::from_utf8_lossy(&secret.data.unwrap_or_default()["password"].0).into_owned();
    let binary = common::runtime_binary();
    let runtime = audit_testenv::AuditManager::start(
        &binary,
        &["serve"],
        &common::runtime_env(&f, &password),
    )
    .unwrap_or_else(|e| panic!("runtime: {e}"));
    let port: u16 = runtime
        .address()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    ready_pod(&f, &format!("{}-pod-1", f.app())).await;
    let status = json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}});
    f.api::<Deployment>()
        .patch_status(&f.app(), &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("deployment status");

    // The runtime reports healthy once its database check ran: everything is Ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let am = loop {
        let am = reconcile_with_port(&f, port).await;
        if condition(&am, "Healthy").0 == "True" || std::time::Instant::now() > deadline {
            break am;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    assert_eq!(
        condition(&am, "Healthy").0,
        "True",
        "{:?}\n{}",
        condition(&am, "Healthy"),
        runtime.log_tail(30)
    );
    expect_condition(&am, "Ready", "True", "Ok");
    drop(runtime);

    // A runtime that cannot reach its database reports it, and so does the condition.
    let broken = audit_testenv::AuditManager::start(
        &binary,
        &["serve"],
        &common::runtime_env(&f, "wrong-password"),
    )
    .unwrap_or_else(|e| panic!("runtime: {e}"));
    let port: u16 = broken
        .address()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let am = reconcile_with_port(&f, port).await;
    let (status, reason, message) = condition(&am, "Healthy");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unhealthy"),
        "{message}"
    );
    assert!(
        message.contains("database"),
        "the runtime's own words: {message}"
    );
    assert_eq!(condition(&am, "Ready").0, "False");
}
