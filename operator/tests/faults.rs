//! Faults and isolation: an unreachable database or Kafka shows in its condition and recovers
//! when fixed; two resources in two namespaces do not interfere; steps are recorded as Events.

mod common;

use std::time::Duration;

use common::{Fixture, condition, expect_condition};
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_reported_and_recovers_when_fixed() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let f = Fixture::new(true, json!({"database": {
        "host": "127.0.0.1", "port": closed, "sslMode": "disable", "adminSecretRef": {"name": "pg-admin"}}})).await;
    let am = f.reconcile().await;
    let (status, reason, message) = condition(&am, "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DatabaseUnreachable"),
        "{message}"
    );
    assert!(
        message.contains(&closed.to_string()),
        "the message names the address: {message}"
    );
    let pg = audit_testenv::postgres();
    let fix = json!({"spec": {"database": {"port": pg.port()}}});
    f.api::<audit_manager_crds::AuditManager>()
        .patch(&f.name, &PatchParams::default(), &Patch::Merge(fix))
        .await
        .expect("fix the port");
    let am = f.reconcile().await;
    expect_condition(&am, "DatabaseReady", "True", "Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kafka_is_reported_and_recovers_when_fixed() {
    // bootstrapServers cannot change once set: the address stays, and what answers there
    // changes, from nothing to the broker (which then advertises its own address).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let switch = common::Switch::to(closed).await;
    let f = Fixture::new(
        true,
        json!({"kafka": {
            "bootstrapServers": format!("127.0.0.1:{}", switch.port),
            "eventsTopic": {"name": format!("{}.events", common::unique("fault")), "partitions": 3},
            "dlqTopic": {"name": format!("{}.dlq", common::unique("fault")), "partitions": 1},
            "consumerGroup": common::unique("fault-group")}}),
    )
    .await;
    let am = f.reconcile().await;
    let (status, reason, message) = condition(&am, "TopicsReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "KafkaUnreachable"),
        "{message}"
    );
    assert_eq!(condition(&am, "LagWithinThreshold").1, "KafkaUnreachable");
    assert_eq!(
        condition(&am, "DatabaseReady").0,
        "True",
        "the database does not wait for Kafka"
    );
    switch.switch(audit_testenv::kafka().bootstrap());
    let am = f.reconcile().await;
    expect_condition(&am, "TopicsReady", "True", "Ok");
    f.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resources_in_two_namespaces_do_not_interfere_and_steps_are_events() {
    let a = Fixture::new(true, json!({})).await;
    let b = Fixture::new(true, json!({})).await;
    let am_a = a.reconcile().await;
    let am_b = b.reconcile().await;
    assert_eq!(condition(&am_a, "DatabaseReady").0, "True");
    assert_eq!(condition(&am_b, "DatabaseReady").0, "True");
    assert_ne!(a.database(), b.database());
    // Deleting one's child leaves the other's alone, and only the first is restored.
    a.api::<Service>()
        .delete(&a.app(), &DeleteParams::default())
        .await
        .expect("delete");
    let writes = b.ctx.metrics.applies.get();
    b.reconcile().await;
    assert_eq!(b.ctx.metrics.applies.get(), writes, "b is untouched");
    assert!(
        a.api::<Service>()
            .get_opt(&a.app())
            .await
            .expect("get")
            .is_none()
    );
    a.reconcile().await;
    a.api::<Service>()
        .get(&a.app())
        .await
        .expect("a's Service restored");

    // The provisioning steps are Kubernetes Events on the resource.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = a
            .api::<Event>()
            .list(&ListParams::default())
            .await
            .expect("events");
        let reasons: Vec<String> = events
            .items
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(a.name.as_str()))
            .filter_map(|e| e.reason.clone())
            .collect();
        if ["DatabaseCreated", "TopicCreated"]
            .iter()
            .all(|r| reasons.iter().any(|x| x == r))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events recorded: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
