//! Deletion through the finalizer against the real API server, PostgreSQL and Kafka.

mod common;

use std::time::Duration;

use audit_manager_crds::AuditManager;
use common::{Fixture, condition, topic_partitions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

async fn admin() -> sqlx::PgPool {
    sqlx::PgPool::connect(&audit_testenv::postgres().superuser_url("postgres"))
        .await
        .expect("admin connection")
}

async fn database_exists(name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&admin().await)
        .await
        .expect("query")
}

async fn roles_of(database: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1")
        .bind(format!("{database}\\_%"))
        .fetch_all(&admin().await)
        .await
        .expect("query")
}

async fn event_reasons(f: &Fixture) -> Vec<String> {
    f.api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(f.name.as_str()))
        .filter_map(|e| e.reason)
        .collect()
}

async fn nothing_left(f: &Fixture) {
    assert!(!database_exists(&f.database()).await, "database dropped");
    assert!(
        roles_of(&f.database()).await.is_empty(),
        "roles dropped: {:?}",
        roles_of(&f.database()).await
    );
    assert_eq!(
        topic_partitions(&format!("{}.events", f.name)),
        0,
        "events topic deleted"
    );
    assert_eq!(
        topic_partitions(&format!("{}.dlq", f.name)),
        0,
        "DLQ topic deleted"
    );
    for kind in ["owner", "writer", "reader"] {
        let secret = f
            .api::<Secret>()
            .get_opt(&format!("{}-db-{kind}", f.name))
            .await
            .expect("get");
        assert!(secret.is_none(), "Secret {kind} deleted");
    }
    assert!(
        f.api::<Deployment>()
            .get_opt(&f.app())
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        f.api::<Service>()
            .get_opt(&f.app())
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        f.api::<ConfigMap>()
            .get_opt(&format!("{}-config", f.app()))
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        f.api::<CronJob>()
            .get_opt(&format!("{}-maintenance", f.name))
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_everything_it_created_step_by_step() {
    let f = Fixture::new(true, json!({})).await;
    let am = f.reconcile().await;
    assert!(
        am.metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&audit_manager_crds::FINALIZER.to_string())
    );
    assert!(database_exists(&f.database()).await);

    // The preview lists exactly what deletion would remove.
    f.api::<AuditManager>()
        .patch(&f.name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {audit_manager_crds::TEARDOWN_PREVIEW: "true"}}})))
        .await
        .expect("annotate");
    let am = f.reconcile().await;
    let preview = am
        .status
        .as_ref()
        .and_then(|s| s.teardown_preview.clone())
        .expect("preview");
    let text = preview.join("\n");
    assert!(
        text.contains(&format!("database {}", f.database())),
        "{text}"
    );
    assert!(text.contains(&format!("{}.events", f.name)), "{text}");
    assert!(text.contains(&format!("{}-db-writer", f.name)), "{text}");
    assert!(
        database_exists(&f.database()).await,
        "a preview removes nothing"
    );

    f.delete_and_reconcile_until_gone().await;
    nothing_left(&f).await;
    let reasons = event_reasons(&f).await;
    for step in [
        "WorkloadDeleted",
        "DatabaseDropped",
        "TopicsDeleted",
        "TeardownComplete",
    ] {
        assert!(
            reasons.iter().any(|r| r == step),
            "Event {step} in {reasons:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_create_delete_cycles_with_the_same_name_leave_nothing() {
    let f = Fixture::new(true, json!({})).await;
    for cycle in 0..20 {
        if cycle > 0 {
            f.create_again().await;
        }
        let am = f.reconcile().await;
        assert_eq!(
            condition(&am, "DatabaseReady").0,
            "True",
            "cycle {cycle}: {:?}",
            condition(&am, "DatabaseReady")
        );
        assert_eq!(
            condition(&am, "TopicsReady").0,
            "True",
            "cycle {cycle}: {:?}",
            condition(&am, "TopicsReady")
        );
        f.delete_and_reconcile_until_gone().await;
        nothing_left(&f).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_existing_database_and_topic_are_reported_and_left_alone() {
    let taken = format!("taken_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {taken}")))
        .execute(&admin().await)
        .await
        .expect("pre-existing database");
    let topic = format!("{taken}.events");
    audit_testenv::topics::create_topic(&audit_testenv::kafka().bootstrap(), &topic, 2).await;
    let kafka = audit_testenv::kafka();
    let pg = audit_testenv::postgres();
    let f = Fixture::new(true, json!({
        "database": {"host": pg.host(), "port": pg.port(), "sslMode": "disable", "name": taken,
                     "adminSecretRef": {"name": "pg-admin"}},
        "kafka": {"bootstrapServers": kafka.bootstrap(), "eventsTopic": {"name": topic, "partitions": 2},
                  "dlqTopic": {"name": format!("{taken}.dlq"), "partitions": 1}},
    }))
    .await;
    let am = f.reconcile().await;
    assert_eq!(
        condition(&am, "DatabaseReady").1,
        "DatabaseConflict",
        "{:?}",
        condition(&am, "DatabaseReady")
    );
    assert_eq!(
        condition(&am, "TopicsReady").1,
        "TopicConflict",
        "{:?}",
        condition(&am, "TopicsReady")
    );
    f.delete_and_reconcile_until_gone().await;
    assert!(
        database_exists(&taken).await,
        "the pre-existing database is untouched"
    );
    assert_eq!(
        topic_partitions(&topic),
        2,
        "the pre-existing topic is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_keeps_the_database_with_its_rows_and_roles_and_the_topics() {
    let f = Fixture::new(
        true,
        json!({"deletionPolicy": {"database": "Retain", "topics": "Retain"}}),
    )
    .await;
    f.reconcile().await;
    let writer = f
        .api::<Secret>()
        .get(&format!("{}-db-writer", f.name))
        .await
        .expect("secret");
    let password =
        String::from_utf8_lossy(&writer.data.unwrap_or_default()["password"].0).into_owned();
    let pg = audit_testenv::postgres();
    let url = pg.url(
        &format!("{}_writer", f.database()),
        &password,
        &f.database(),
    );
    let pool = sqlx::PgPool::connect(&url).await.expect("writer");
    sqlx::raw_sql("INSERT INTO audit_events (id, source, type, occurred_at, actor_type, actor_id, action, outcome)
                   VALUES ('kept', '/t', 't', now(), 'user', 'u', 'a', 'success')")
        .execute(&pool)
        .await
        .expect("insert");
    pool.close().await;
    f.delete_and_reconcile_until_gone().await;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("the writer role still logs in");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1, "the rows are kept");
    assert_eq!(roles_of(&f.database()).await.len(), 3, "the roles are kept");
    assert_eq!(
        topic_partitions(&format!("{}.events", f.name)),
        3,
        "the topics are kept"
    );
    let reasons = event_reasons(&f).await;
    assert!(
        reasons.iter().any(|r| r == "DatabaseRetained")
            && reasons.iter().any(|r| r == "TopicsRetained"),
        "{reasons:?}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
