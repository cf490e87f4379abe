//! Proof that the test environment runs the real components: each test exercises the feature
//! the project relies on, against the real server.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher::{self, Event};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sqlx::Row;

#[tokio::test]
async fn postgres_stores_rows_in_a_monthly_partitioned_table() {
    let pg = audit_testenv::postgres();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.superuser_url("postgres"))
        .await
        .expect("connect to the test PostgreSQL");
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .expect("server_version");
    assert!(!version.is_empty());

    for ddl in [
        "CREATE TABLE proof_events (id text NOT NULL, occurred_at timestamptz NOT NULL, \
         PRIMARY KEY (id, occurred_at)) PARTITION BY RANGE (occurred_at)",
        "CREATE TABLE proof_events_2026_10 PARTITION OF proof_events \
         FOR VALUES FROM ('2026-10-01 00:00:00+00') TO ('2026-11-01 00:00:00+00')",
        "CREATE TABLE proof_events_2026_11 PARTITION OF proof_events \
         FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')",
    ] {
        sqlx::query(ddl).execute(&pool).await.expect(ddl);
    }
    sqlx::query(
        "INSERT INTO proof_events VALUES ('a', '2026-10-31 23:59:59+00'), \
         ('b', '2026-11-01 00:00:00+00'), ('a', '2026-10-31 23:59:59+00') ON CONFLICT DO NOTHING",
    )
    .execute(&pool)
    .await
    .expect("insert");
    let rows = sqlx::query(
        "SELECT tableoid::regclass::text AS part, id FROM proof_events ORDER BY occurred_at",
    )
    .fetch_all(&pool)
    .await
    .expect("read back");
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get("part"), r.get("id"))).collect();
    assert_eq!(
        got,
        vec![
            ("proof_events_2026_10".to_string(), "a".to_string()),
            ("proof_events_2026_11".to_string(), "b".to_string()),
        ]
    );
    // A row outside every partition is refused, as the sink must expect.
    let err = sqlx::query("INSERT INTO proof_events VALUES ('c', '2027-01-01 00:00:00+00')")
        .execute(&pool)
        .await
        .expect_err("no partition for 2027-01");
    assert!(err.to_string().contains("no partition"), "{err}");
}

#[tokio::test]
async fn kafka_grows_a_topic_and_tracks_committed_offsets() {
    let kafka = audit_testenv::kafka();
    let topic = "proof.events";
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("create_topics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let grown = admin
        .create_partitions(&[NewPartitions::new(topic, 4)], &opts)
        .await
        .expect("create_partitions");
    assert!(grown.iter().all(|r| r.is_ok()), "{grown:?}");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    // The metadata of the grown topic must be visible before keyed partitioning uses it.
    wait_for_partitions(&producer, topic, 4).await;
    let sends = (0..1000).map(|i| {
        let producer = producer.clone();
        async move {
            let key = format!("actor-{}", i % 37);
            let payload = format!("event-{i}");
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|d| (key, d.partition))
                .map_err(|(e, _)| e)
        }
    });
    let delivered = futures::future::join_all(sends).await;
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    for d in delivered {
        let (key, partition) = d.expect("delivery");
        let first = *partition_of_key.entry(key.clone()).or_insert(partition);
        assert_eq!(first, partition, "key {key} went to two partitions");
    }
    let used: std::collections::HashSet<i32> = partition_of_key.values().copied().collect();
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "proof-group")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen = 0;
    while seen < 1000 {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("a message within 60 s")
            .expect("consume");
        assert!(msg.payload().is_some_and(|p| p.starts_with(b"event-")));
        seen += 1;
    }
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");

    let committed = consumer
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    let mut lag = 0;
    let mut total = 0;
    for p in 0..4 {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        let offset = committed
            .find_partition(topic, p)
            .and_then(|e| e.offset().to_raw())
            .unwrap_or(0);
        lag += high - offset;
        total += high;
    }
    assert_eq!(total, 1000, "high watermarks add up to what was produced");
    assert_eq!(lag, 0, "nothing left to consume");
    // A partition list holds references into the client: release it first, or destroying
    // the consumer waits for them forever.
    drop(committed);
    drop(consumer);

    let deleted = admin
        .delete_topics(&[topic], &opts)
        .await
        .expect("delete_topics");
    assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
}

async fn wait_for_partitions(producer: &FutureProducer, topic: &str, want: usize) {
    use rdkafka::producer::Producer;
    for _ in 0..100 {
        let md = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        if md.topics().first().map(|t| t.partitions().len()) == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {topic} never showed {want} partitions");
}

#[tokio::test]
async fn kube_apiserver_serves_crds_ssa_watches_and_finalizers() {
    let kube = audit_testenv::kube();
    let client = kube.client().await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.proof.example.org"},
        "spec": {
            "group": "proof.example.org",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}
                }}}
            }]
        }
    }))
    .expect("crd json");
    crds.patch(
        "widgets.proof.example.org",
        &PatchParams::apply("audit-testenv").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            "widgets.proof.example.org",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established in time")
    .expect("watch CRD");

    let gvk = GroupVersionKind::gvk("proof.example.org", "v1", "Widget");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    // The schema is enforced by the real server.
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "proof.example.org/v1", "kind": "Widget",
        "metadata": {"name": "bad"}, "spec": {"size": 0}
    }))
    .expect("json");
    let refused = widgets
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("size 0 violates minimum 1");
    assert!(refused.to_string().contains("spec.size"), "{refused}");

    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "proof.example.org/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}
    }))
    .expect("json");
    let widget = widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("create widget");
    let uid = widget.metadata.uid.clone().expect("uid");

    // Watch the deployments of the namespace from before they are applied.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut watch = watcher::watcher(
        deployments.clone(),
        watcher::Config::default().fields("metadata.name=w1-app"),
    )
    .boxed();

    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "w1-app", "ownerReferences": [{
            "apiVersion": "proof.example.org/v1", "kind": "Widget", "name": "w1",
            "uid": uid, "controller": true, "blockOwnerDeletion": true
        }]},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "w1"}},
            "template": {"metadata": {"labels": {"app": "w1"}},
                         "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}
        }
    }))
    .expect("json");
    let ssa = PatchParams::apply("audit-testenv").force();
    deployments
        .patch("w1-app", &ssa, &Patch::Apply(&deployment))
        .await
        .expect("server-side apply");
    let mut changed = deployment.clone();
    if let Some(spec) = changed.spec.as_mut() {
        spec.replicas = Some(2);
    }
    let applied = deployments
        .patch("w1-app", &ssa, &Patch::Apply(&changed))
        .await
        .expect("server-side apply again");
    assert_eq!(applied.spec.and_then(|s| s.replicas), Some(2));
    assert_eq!(
        applied.metadata.owner_references.unwrap_or_default()[0].uid,
        uid
    );
    let saw_two_replicas = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = watch.next().await {
            if let Ok(Event::Apply(d) | Event::InitApply(d)) = event
                && d.spec.and_then(|s| s.replicas) == Some(2)
            {
                return true;
            }
        }
        false
    })
    .await
    .expect("the watch reported the change in time");
    assert!(saw_two_replicas);

    // A finalizer holds deletion until it is removed.
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["proof.example.org/cleanup"]}})),
        )
        .await
        .expect("add finalizer");
    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .expect("delete");
    let held = widgets.get("w1").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove finalizer");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(widgets.clone(), "w1", conditions::is_deleted(&uid)),
    )
    .await
    .expect("deleted in time")
    .expect("watch deletion");
    assert!(widgets.get_opt("w1").await.expect("get").is_none());
}
