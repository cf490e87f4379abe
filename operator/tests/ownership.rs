//! Ownership of what lives in Kafka: topics are tied to the cluster's id and their own ids,
//! recorded where only the operator writes; the consumer group is claimed like the topics; and
//! while any of it is someone else's, no workload runs against it.

mod common;

use std::time::Duration;

use audit_manager_crds::AuditManager;
use audit_manager_operator::record;
use common::{Fixture, Switch, condition, expect_condition, partitions_on, unique};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde_json::json;

/// A resource whose topics and group have fresh names, reached through `bootstrap`.
async fn fixture(bootstrap: &str) -> Fixture {
    let base = unique("own");
    Fixture::new(
        true,
        json!({"kafka": {
            "bootstrapServers": bootstrap,
            "eventsTopic": {"name": format!("{base}.events"), "partitions": 3},
            "dlqTopic": {"name": format!("{base}.dlq"), "partitions": 1},
            "consumerGroup": format!("{base}-group")}}),
    )
    .await
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin")
}

async fn delete_topic(bootstrap: &str, topic: &str) {
    admin(bootstrap)
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .expect("delete")
        .into_iter()
        .for_each(|r| {
            r.expect("deleted");
        });
    // Deletion is asynchronous in the broker.
    for _ in 0..100 {
        if partitions_on(bootstrap, topic) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {topic} still exists");
}

async fn workload_exists(f: &Fixture) -> (bool, bool) {
    let deployment = f.api::<Deployment>().get_opt(&f.app()).await.expect("get");
    let cronjob = f
        .api::<CronJob>()
        .get_opt(&format!("{}-maintenance", f.name))
        .await
        .expect("get");
    (deployment.is_some(), cronjob.is_some())
}

async fn events(f: &Fixture) -> String {
    common::events(f)
        .await
        .into_iter()
        .map(|(_, message)| message)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_on_another_cluster_are_never_touched_and_stop_the_workload() {
    let first = audit_testenv::kafka();
    let second = audit_testenv::Kafka::start().expect("a second broker");
    let switch = Switch::to(first.bootstrap()).await;
    let f = fixture(&format!("127.0.0.1:{}", switch.port)).await;
    let am = f.reconcile().await;
    expect_condition(&am, "TopicsReady", "True", "Ok");
    assert_eq!(workload_exists(&f).await, (true, true));
    let spec = &f.resource.spec.kafka;
    // The record, in the operator's namespace: the cluster, each topic's id, the group.
    let recorded = record::load(&f.client, &f.ctx.namespace, &am)
        .await
        .expect("record");
    assert!(recorded.kafka_cluster_id.is_some());
    assert_eq!(recorded.topics.len(), 2);
    assert_eq!(
        recorded.consumer_group.as_deref(),
        Some(spec.consumer_group.as_str())
    );

    // The same name now reaches another cluster, where someone has same-named topics.
    audit_testenv::topics::create_topic(&second.bootstrap(), &spec.events_topic.name, 1).await;
    audit_testenv::topics::create_topic(&second.bootstrap(), &spec.dlq_topic.name, 1).await;
    switch.switch(second.bootstrap());
    let am = f.reconcile().await;
    let message = common::expect_condition(&am, "TopicsReady", "False", "TopicConflict");
    assert!(message.contains("created on cluster"), "{message}");
    let (_, reason, message) = condition(&am, "WorkloadAvailable");
    assert_eq!(reason, "WorkloadHeld", "{message}");
    assert_eq!(
        workload_exists(&f).await,
        (false, false),
        "no runtime runs against the other cluster"
    );
    assert_eq!(
        partitions_on(&second.bootstrap(), &spec.events_topic.name),
        1,
        "not grown"
    );

    // Deleting the resource leaves the other cluster's topics alone, and says so.
    f.delete_and_reconcile_until_gone().await;
    assert_eq!(
        partitions_on(&second.bootstrap(), &spec.events_topic.name),
        1
    );
    assert_eq!(partitions_on(&second.bootstrap(), &spec.dlq_topic.name), 1);
    let said = events(&f).await;
    assert!(
        said.contains("left alone") && said.contains("reaches cluster"),
        "{said}"
    );
    // The record is gone with the resource.
    let maps = kube::Api::<ConfigMap>::namespaced(f.client.clone(), &f.ctx.namespace);
    assert!(
        maps.get_opt(&record::name_of(&am))
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_patched_by_hand_cannot_make_teardown_delete_a_topic() {
    let bootstrap = audit_testenv::kafka().bootstrap();
    let f = fixture(&bootstrap).await;
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "TopicsReady").0, "True");
    // Someone else's topic, added to the status by whoever may patch auditmanagers/status.
    let foreign = format!("{}.foreign", unique("own"));
    audit_testenv::topics::create_topic(&bootstrap, &foreign, 1).await;
    let mut listed = am.status.clone().unwrap_or_default().owned_topics;
    listed.push(foreign.clone());
    f.api::<AuditManager>()
        .patch_status(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ownedTopics": listed}})),
        )
        .await
        .expect("patch the status");
    f.delete_and_reconcile_until_gone().await;
    assert_eq!(
        partitions_on(&bootstrap, &foreign),
        1,
        "the foreign topic stays"
    );
    let spec = &f.resource.spec.kafka;
    assert_eq!(
        partitions_on(&bootstrap, &spec.events_topic.name),
        0,
        "its own topics go"
    );
    assert_eq!(partitions_on(&bootstrap, &spec.dlq_topic.name), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_recreated_by_someone_else_is_not_ours() {
    let bootstrap = audit_testenv::kafka().bootstrap();
    let f = fixture(&bootstrap).await;
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "TopicsReady").0, "True");
    let spec = f.resource.spec.kafka.clone();
    // Deleted and created again, by someone else, under the same name.
    delete_topic(&bootstrap, &spec.events_topic.name).await;
    audit_testenv::topics::create_topic(&bootstrap, &spec.events_topic.name, 2).await;
    let am = f.reconcile().await;
    let message = common::expect_condition(&am, "TopicsReady", "False", "TopicConflict");
    assert!(message.contains("deleted and created again"), "{message}");
    assert_eq!(
        partitions_on(&bootstrap, &spec.events_topic.name),
        2,
        "not grown to 3"
    );
    assert_eq!(workload_exists(&f).await, (false, false));
    f.delete_and_reconcile_until_gone().await;
    assert_eq!(
        partitions_on(&bootstrap, &spec.events_topic.name),
        2,
        "left alone"
    );
    assert_eq!(
        partitions_on(&bootstrap, &spec.dlq_topic.name),
        0,
        "its own DLQ goes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_in_use_is_a_conflict_and_an_owned_one_is_deleted() {
    let bootstrap = audit_testenv::kafka().bootstrap();
    // Someone else's group, with offsets committed on a topic of theirs.
    let theirs = format!("{}-group", unique("own"));
    let topic = format!("{}.theirs", unique("own"));
    audit_testenv::topics::create_topic(&bootstrap, &topic, 1).await;
    common::commit_start(&bootstrap, &theirs, &topic, 1);
    let base = unique("own");
    let f = Fixture::new(
        true,
        json!({"kafka": {
            "bootstrapServers": bootstrap,
            "eventsTopic": {"name": format!("{base}.events"), "partitions": 3},
            "dlqTopic": {"name": format!("{base}.dlq"), "partitions": 1},
            "consumerGroup": theirs}}),
    )
    .await;
    let am = f.reconcile().await;
    let message = common::expect_condition(&am, "TopicsReady", "False", "ConsumerGroupConflict");
    assert!(
        message.contains(&theirs) && message.contains("spec.kafka.consumerGroup"),
        "{message}"
    );
    assert_eq!(condition(&am, "WorkloadAvailable").1, "WorkloadHeld");
    assert_eq!(workload_exists(&f).await, (false, false));
    f.delete_and_reconcile_until_gone().await;
    let state = common::group_state(&bootstrap, &theirs);
    assert_eq!(state, "Empty", "their group is left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_managed_elsewhere_are_only_checked_and_never_deleted() {
    let bootstrap = audit_testenv::kafka().bootstrap();
    let base = unique("own");
    let (events, dlq) = (format!("{base}.events"), format!("{base}.dlq"));
    let f = Fixture::new(
        true,
        json!({"kafka": {
            "bootstrapServers": bootstrap,
            "manageTopics": false,
            "eventsTopic": {"name": events, "partitions": 3},
            "dlqTopic": {"name": dlq, "partitions": 1},
            "consumerGroup": format!("{base}-group")}}),
    )
    .await;
    // Not there yet: said, and nothing is created.
    let am = f.reconcile().await;
    let message = common::expect_condition(&am, "TopicsReady", "False", "TopicMissing");
    assert!(
        message.contains(&events) && message.contains("KafkaTopic"),
        "{message}"
    );
    assert_eq!(partitions_on(&bootstrap, &events), 0, "not created");
    // Created elsewhere, but smaller than the spec: said, and not grown.
    audit_testenv::topics::create_topic(&bootstrap, &events, 2).await;
    audit_testenv::topics::create_topic(&bootstrap, &dlq, 1).await;
    let am = f.reconcile().await;
    let (_, reason, message) = condition(&am, "TopicsReady");
    assert_eq!(reason, "TopicTooSmall", "{message}");
    assert_eq!(partitions_on(&bootstrap, &events), 2, "not grown");
    // Grown elsewhere: ready, and the message says who manages them.
    admin(&bootstrap)
        .create_partitions(
            &[rdkafka::admin::NewPartitions::new(&events, 3)],
            &AdminOptions::new(),
        )
        .await
        .expect("grow")
        .into_iter()
        .for_each(|r| {
            r.expect("grown");
        });
    let am = f.reconcile().await;
    let (status, _, message) = condition(&am, "TopicsReady");
    assert_eq!(status, "True", "{message}");
    assert!(message.contains("kafka.manageTopics is false"), "{message}");
    f.delete_and_reconcile_until_gone().await;
    assert_eq!(partitions_on(&bootstrap, &events), 3, "never deleted");
    assert_eq!(partitions_on(&bootstrap, &dlq), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_settings_follow_the_spec_and_the_owned_group_goes_with_the_resource() {
    let bootstrap = audit_testenv::kafka().bootstrap();
    let f = fixture(&bootstrap).await;
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "TopicsReady").0, "True");
    let events_topic = f.resource.spec.kafka.events_topic.name.clone();
    // Changed after creation: applied to the existing topic.
    f.api::<AuditManager>()
        .patch(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"kafka": {"eventsTopic": {
                "retentionMs": 3_600_000, "compression": "zstd", "minInsyncReplicas": 1}}}})),
        )
        .await
        .expect("change the topic settings");
    let am = f.reconcile().await;
    let (status, _, message) = condition(&am, "TopicsReady");
    assert_eq!(status, "True", "{message}");
    let described = admin(&bootstrap)
        .describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic(&events_topic)],
            &AdminOptions::new(),
        )
        .await
        .expect("describe")
        .into_iter()
        .next()
        .expect("one")
        .expect("the topic's configuration");
    let value = |key: &str| {
        described
            .get(key)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(value("retention.ms"), "3600000");
    assert_eq!(value("compression.type"), "zstd");
    assert_eq!(value("min.insync.replicas"), "1");
    assert!(
        events(&f).await.contains("configured topic"),
        "a TopicReconfigured Event"
    );

    // The runtime's consumers commit in the group this resource claimed: teardown deletes it.
    let group = f.resource.spec.kafka.consumer_group.clone();
    common::commit_start(&bootstrap, &group, &events_topic, 1);
    f.delete_and_reconcile_until_gone().await;
    let state = common::group_state(&bootstrap, &group);
    assert!(
        state.is_empty() || state == "Dead",
        "the owned group is deleted, not {state}"
    );
    assert!(
        events(&f)
            .await
            .contains(&format!("consumer group {group}"))
    );
}
