//! Deletion while Kafka is down (its own broker, stopped and started here), the skip
//! annotation, bulk deletion, and deletion while the runtime is still writing.

mod common;

use std::time::{Duration, Instant};

use audit_manager_crds::{AuditManager, SKIP_EXTERNAL_TEARDOWN};
use common::{Fixture, condition, topic_partitions};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

fn kafka_spec(kafka: &audit_testenv::Kafka, name: &str) -> serde_json::Value {
    json!({"kafka": {"bootstrapServers": kafka.bootstrap(),
        "eventsTopic": {"name": format!("{name}.events"), "partitions": 3},
        "dlqTopic": {"name": format!("{name}.dlq"), "partitions": 1}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_holds_deletion_with_a_reason_and_the_skip_annotation_finishes_it() {
    let kafka = audit_testenv::Kafka::start().unwrap_or_else(|e| panic!("testenv: {e}"));
    let prefix = format!("o{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let waits = Fixture::new(true, kafka_spec(&kafka, &format!("{prefix}a"))).await;
    let skips = Fixture::new(true, kafka_spec(&kafka, &format!("{prefix}b"))).await;
    waits.reconcile().await;
    skips.reconcile().await;

    kafka.stop();
    waits
        .api::<AuditManager>()
        .delete(&waits.name, &DeleteParams::default())
        .await
        .expect("delete");
    let am = waits.reconcile().await;
    let (status, reason, message) = condition(&am, "Terminating");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KafkaUnreachable"),
        "{message}"
    );
    assert!(
        message.contains(&kafka.bootstrap()),
        "the condition names Kafka: {message}"
    );
    assert!(
        am.metadata.deletion_timestamp.is_some(),
        "the resource stays while Kafka is down"
    );

    // The skip annotation lets deletion finish while Kafka is still down.
    skips
        .api::<AuditManager>()
        .patch(
            &skips.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {SKIP_EXTERNAL_TEARDOWN: "true"}}})),
        )
        .await
        .expect("annotate");
    skips.delete_and_reconcile_until_gone().await;
    assert!(
        skips
            .api::<Secret>()
            .get_opt(&format!("{}-db-writer", skips.name))
            .await
            .expect("get")
            .is_none()
    );

    kafka
        .resume()
        .unwrap_or_else(|e| panic!("restarting Kafka: {e}"));
    let api = waits.api::<AuditManager>();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(current) = api.get_opt(&waits.name).await.expect("get") {
        assert!(
            Instant::now() < deadline,
            "deletion did not complete after Kafka came back"
        );
        audit_manager_operator::controller::reconcile(
            std::sync::Arc::new(current),
            std::sync::Arc::clone(&waits.ctx),
        )
        .await
        .expect("reconcile");
    }
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .create()
        .expect("consumer");
    let metadata = rdkafka::consumer::Consumer::fetch_metadata(
        &consumer,
        Some(&format!("{prefix}a.events")),
        Duration::from_secs(10),
    )
    .expect("metadata");
    assert!(
        metadata
            .topics()
            .iter()
            .all(|t| t.error().is_some() || t.partitions().is_empty()),
        "the topic was deleted once Kafka was back"
    );
    // The skipped resource's topics were not touched.
    let kept = rdkafka::consumer::Consumer::fetch_metadata(
        &consumer,
        Some(&format!("{prefix}b.events")),
        Duration::from_secs(10),
    )
    .expect("metadata");
    assert_eq!(
        kept.topics()[0].partitions().len(),
        3,
        "skip-external-teardown leaves the topics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_deletion_tears_each_resource_down() {
    let first = Fixture::new(true, json!({})).await;
    first.reconcile().await;
    // Two more in the same namespace.
    let mut names = vec![first.name.clone()];
    for i in 0..2 {
        let mut am = first.resource.clone();
        let name = format!("{}-{i}", first.name);
        am.metadata.name = Some(name.clone());
        am.spec.kafka.events_topic.name = format!("{name}.events");
        am.spec.kafka.dlq_topic.name = format!("{name}.dlq");
        first
            .api::<AuditManager>()
            .create(&Default::default(), &am)
            .await
            .expect("create");
        let current = first.api::<AuditManager>().get(&name).await.expect("get");
        audit_manager_operator::controller::reconcile(
            std::sync::Arc::new(current),
            std::sync::Arc::clone(&first.ctx),
        )
        .await
        .expect("reconcile");
        names.push(name);
    }
    let api = first.api::<AuditManager>();
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete all");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = api.list(&ListParams::default()).await.expect("list").items;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there: {:?}",
            left.iter()
                .map(|a| a.metadata.name.clone())
                .collect::<Vec<_>>()
        );
        for am in left {
            audit_manager_operator::controller::reconcile(
                std::sync::Arc::new(am),
                std::sync::Arc::clone(&first.ctx),
            )
            .await
            .expect("reconcile");
        }
    }
    for name in names {
        if topic_partitions(&format!("{name}.events")) != 0 {
            let said = common::events(&first).await;
            panic!("{name}'s topic was not deleted; the Events: {said:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_while_the_runtime_writes_does_not_hang() {
    let f = Fixture::new(true, json!({})).await;
    f.reconcile().await;
    // A real runtime consuming into the database as the writer, with events flowing.
    let secret = f
        .api::<Secret>()
        .get(&format!("{}-db-writer", f.name))
        .await
        .expect("secret");
    let password =
        String::from_utf8_lossy(&secret.data.unwrap_or_default()["password"].0).into_owned();
    let pg = audit_testenv::postgres();
    let kafka = audit_testenv::kafka();
    let env = vec![
        ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap()),
        ("AUDIT_MANAGER__KAFKA__TOPIC", format!("{}.events", f.name)),
        ("AUDIT_MANAGER__KAFKA__DLQ_TOPIC", format!("{}.dlq", f.name)),
        (
            "AUDIT_MANAGER__KAFKA__CONSUMER_GROUP",
            format!("{}-group", f.name),
        ),
        ("AUDIT_MANAGER__COMPONENTS__MAINTENANCE", "false".into()),
        ("DB_HOST", pg.host().into()),
        ("DB_PORT", pg.port().to_string()),
        ("DB_NAME", f.database()),
        ("DB_USER", format!("{}_writer", f.database())),
        ("DB_PASSWORD", password),
        ("AUDIT_MANAGER__DATABASE__SSLMODE", "disable".into()),
    ];
    let binary = common::runtime_binary();
    let runtime = audit_testenv::AuditManager::start(&binary, &["serve"], &env)
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let address = runtime.address();
    let writer = tokio::spawn(async move {
        let Ok(mut client) = audit_testenv::http::HttpClient::connect(&address).await else {
            return;
        };
        for i in 0.. {
            let event = json!({"specversion": "1.0", "id": format!("w-{i}"), "source": "/t", "type": "t",
                "time": chrono_now(), "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success"}});
            if client
                .post(
                    "/v1/auditmanager/events",
                    "application/json",
                    event.to_string(),
                )
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(90), f.delete_and_reconcile_until_gone())
        .await
        .expect("deletion completes while the runtime is connected");
    eprintln!("teardown under load took {:?}", started.elapsed());
    writer.abort();
    drop(runtime);
}

fn chrono_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
