//! The local node against a real API server: it registers, binds pending pods, restarts a
//! crashing container per its restart policy, fails pods of other images with the reason,
//! and finishes deletions.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_restarts_fails_foreign_images_and_deletes() {
    let kube = audit_testenv::kube();
    let work = tempfile::tempdir().expect("tempdir");
    // A "runtime" that crashes at once: /bin/false.
    let _node = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_audit-localnode"))
            .args(["--runtime-binary", "/bin/false", "--node-name", "test-node"])
            .arg("--work-dir")
            .arg(work.path())
            .env("KUBECONFIG", kube.kubeconfig())
            .spawn()
            .expect("start the node"),
    );
    let client = kube.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("the Node", async || {
        let node = nodes.get_opt("test-node").await.ok().flatten()?;
        let ready = node
            .status?
            .conditions?
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(())
    })
    .await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "localnode-test"}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "localnode-test");
    let pod = |name: &str, image: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": image, "args": ["serve"]}]}}))
        .expect("pod")
    };
    pods.create(
        &PostParams::default(),
        &pod("crashes", "ghcr.io/openg2p/audit-manager:0.1.0"),
    )
    .await
    .expect("create");
    pods.create(&PostParams::default(), &pod("foreign", "nginx:1.27"))
        .await
        .expect("create");

    let restarts = wait_for("restarts of the crashing container", async || {
        let p = pods.get("crashes").await.ok()?;
        let node = p.spec.as_ref()?.node_name.clone()?;
        let count = p.status?.container_statuses?.first()?.restart_count;
        (node == "test-node" && count >= 2).then_some(count)
    })
    .await;
    assert!(restarts >= 2);

    let (phase, reason) = wait_for("the foreign pod to fail", async || {
        let s = pods.get("foreign").await.ok()?.status?;
        (s.phase.as_deref() == Some("Failed")).then(|| {
            (
                s.phase.clone().unwrap_or_default(),
                s.reason.clone().unwrap_or_default(),
            )
        })
    })
    .await;
    assert_eq!(
        (phase.as_str(), reason.as_str()),
        ("Failed", "UnsupportedImage")
    );

    pods.delete("crashes", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the pod to be gone", async || {
        pods.get_opt("crashes").await.ok()?.is_none().then_some(())
    })
    .await;
}
