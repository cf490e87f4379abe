//! With kube-controller-manager running: deleting the namespace tears the resource down through
//! the same finalizer (the namespace controller deletes it, the operator's watch-driven loop
//! tears down, the namespace then goes), and garbage collection works on the children. And an
//! operator that watches one namespace leaves the others alone.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_manager_operator::context::Ctx;
use audit_manager_operator::controller;
use audit_manager_operator::metrics::Metrics;
use common::{Fixture, condition, topic_partitions};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

async fn database_exists(name: &str) -> bool {
    let admin = sqlx::PgPool::connect(&audit_testenv::postgres().superuser_url("postgres"))
        .await
        .expect("admin");
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&admin)
        .await
        .expect("query")
}

/// Waits (90 s at most) until the running operator has provisioned the database and topics.
async fn wait_until_provisioned(api: &Api<audit_manager_crds::AuditManager>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let am = api.get(name).await.expect("get");
        if condition(&am, "DatabaseReady").0 == "True" && condition(&am, "TopicsReady").0 == "True"
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not provisioned: {:?}",
            am.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_namespace_tears_everything_down() {
    let kube = audit_testenv::kube_with_controllers();
    let f = Fixture::new_on(kube, true, json!({})).await;
    // The real controller loop, as the operator runs it.
    let ctx = Arc::new(Ctx::new(
        f.client.clone(),
        Arc::new(Metrics::default()),
        "test".into(),
    ));
    let operator = tokio::spawn(controller::run(ctx, None));

    let api = f.api::<audit_manager_crds::AuditManager>();
    wait_until_provisioned(&api, &f.name).await;
    // The deployment controller made a ReplicaSet for the runtime Deployment.
    let deadline = Instant::now() + Duration::from_secs(60);
    while f
        .api::<ReplicaSet>()
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no ReplicaSet: kube-controller-manager is not working"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(database_exists(&f.database()).await);

    let namespaces: Api<Namespace> = Api::all(f.client.clone());
    namespaces
        .delete(&f.namespace, &DeleteParams::default())
        .await
        .expect("delete namespace");
    let deadline = Instant::now() + Duration::from_secs(60);
    while namespaces
        .get_opt(&f.namespace)
        .await
        .expect("get")
        .is_some()
    {
        if Instant::now() > deadline {
            let am = api.get_opt(&f.name).await.ok().flatten();
            let ns = namespaces.get(&f.namespace).await.ok();
            panic!(
                "the namespace was not deleted\nAuditManager: {:?}\nfinalizers {:?}\nnamespace status: {:?}",
                am.as_ref().and_then(|a| a.status.as_ref()).map(|s| s
                    .conditions
                    .iter()
                    .map(|c| format!("{} {} {} {}", c.type_, c.status, c.reason, c.message))
                    .collect::<Vec<_>>()),
                am.as_ref().map(|a| a.metadata.finalizers.clone()),
                ns.and_then(|n| n.status).map(|s| s.conditions)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        !database_exists(&f.database()).await,
        "the database was dropped"
    );
    assert_eq!(
        topic_partitions(&format!("{}.events", f.name)),
        0,
        "the topic was deleted"
    );
    operator.abort();
}

/// `--watch-namespace` (the Helm chart's `watchNamespace`): the controller reconciles the
/// resources of its namespace and never touches another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watching_one_namespace_leaves_the_others_alone() {
    let watched = Fixture::new(true, json!({})).await;
    let other = Fixture::new(true, json!({})).await;
    let ctx = Arc::new(Ctx::new(
        watched.client.clone(),
        Arc::new(Metrics::default()),
        "test".into(),
    ));
    let operator = tokio::spawn(controller::run(ctx, Some(watched.namespace.clone())));

    wait_until_provisioned(&watched.api(), &watched.name).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let untouched = other
        .api::<audit_manager_crds::AuditManager>()
        .get(&other.name)
        .await
        .expect("get");
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(
        untouched.metadata.finalizers.unwrap_or_default().is_empty(),
        "no finalizer on a resource of another namespace"
    );
    assert!(!database_exists(&other.database()).await);
    operator.abort();
}
