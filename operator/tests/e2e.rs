//! The whole system on one machine: kube-apiserver + kube-controller-manager, the local node
//! running runtime pods as processes, the operator's controller loop, PostgreSQL and Kafka.
//! Events POSTed to a runtime pod become rows; the resource turns Ready with lag 0.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_manager_crds::AuditManager;
use audit_manager_operator::context::Ctx;
use audit_manager_operator::controller;
use audit_manager_operator::metrics::Metrics;
use common::{Fixture, condition};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use serde_json::json;

/// The local node process, killed when dropped.
struct LocalNode(std::process::Child);

impl Drop for LocalNode {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_node_and_runtime_pods_store_posted_events() {
    let kube = audit_testenv::kube_with_controllers();
    let node_binary = audit_testenv::workspace_binary("audit-localnode");
    let runtime = common::runtime_binary();
    let work = tempfile::tempdir().expect("tempdir");
    let node = LocalNode(
        std::process::Command::new(node_binary)
            .args([
                "--runtime-binary",
                &runtime.display().to_string(),
                "--work-dir",
                &work.path().display().to_string(),
            ])
            .env("KUBECONFIG", kube.kubeconfig())
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start the local node"),
    );
    let f = Fixture::new_on(
        kube,
        true,
        json!({"autoscaling": {"enabled": false}, "replicas": 2, "lagThreshold": 0}),
    )
    .await;
    let ctx = Arc::new(Ctx::new(
        f.client.clone(),
        Arc::new(Metrics::default()),
        "e2e".into(),
    ));
    let operator = tokio::spawn(controller::run(ctx));

    // Two runtime pods come up Ready on the local node.
    let pods = f.api::<Pod>();
    let deadline = Instant::now() + Duration::from_secs(120);
    let ips = loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={}", f.name)))
            .await
            .expect("pods");
        let ready = audit_manager_operator::observe::ready_pod_ips(&list.items);
        if ready.len() == 2 {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "runtime pods not ready: {:?}",
            list.items
                .iter()
                .map(|p| (
                    p.metadata.name.clone(),
                    p.status
                        .as_ref()
                        .map(|s| (s.phase.clone(), s.message.clone()))
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // Events POSTed to a pod become rows.
    let mut client = audit_testenv::http::HttpClient::connect(&format!("{}:8000", ips[0]))
        .await
        .expect("connect to a pod");
    let events: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("e2e-{i}"), "source": "/e2e", "type": "t",
            "time": k8s_openapi::jiff::Timestamp::now().to_string(),
            "data": {"actor": {"id": format!("u{}", i % 7)}, "action": "a", "outcome": "success"}})
        })
        .collect();
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            json!({"events": events}).to_string(),
        )
        .await
        .expect("POST");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    let reader = f
        .api::<Secret>()
        .get(&format!("{}-db-reader", f.name))
        .await
        .expect("reader secret");
    let password =
        String::from_utf8_lossy(&reader.data.unwrap_or_default()["password"].0).into_owned();
    let url = audit_testenv::postgres().url(
        &format!("{}_reader", f.database()),
        &password,
        &f.database(),
    );
    let pool = sqlx::PgPool::connect(&url).await.expect("reader");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
            .fetch_one(&pool)
            .await
            .expect("count");
        if n == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of 200 rows");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The operator sees it all: Ready, lag 0, two ready replicas.
    let api = f.api::<AuditManager>();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let am = api.get(&f.name).await.expect("get");
        let lag = am
            .status
            .as_ref()
            .and_then(|s| s.consumer_lag.as_ref())
            .map(|l| l.total);
        if condition(&am, "Ready").0 == "True" && lag == Some(0) {
            assert_eq!(am.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not Ready: {:?}",
            am.status.map(|s| s
                .conditions
                .into_iter()
                .map(|c| format!("{} {} {}", c.type_, c.reason, c.message))
                .collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    operator.abort();
    drop(node);
}
