//! Reconcile against the real kube-apiserver, PostgreSQL and Kafka of the test environment.
//! No controller-manager runs here, so Deployment availability is simulated by patching its
//! status, as the deployment controller would.

mod common;

use std::time::Duration;

use audit_manager::db::partitions::Month;
use audit_manager_crds::AuditManager;
use common::{
    Fixture, condition, create_admin_secret, expect_condition, owned_by, topic_partitions,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_the_database_topics_and_children_and_keeps_them() {
    let f = Fixture::new(true, json!({})).await;
    let am = f.reconcile().await;
    expect_condition(&am, "DatabaseReady", "True", "Ok");
    expect_condition(&am, "TopicsReady", "True", "Ok");
    assert_eq!(condition(&am, "WorkloadAvailable").1, "WorkloadUnavailable");
    assert_eq!(condition(&am, "Healthy").1, "NoReadyPods");
    assert_eq!(condition(&am, "Ready").0, "False");
    assert_eq!(
        am.status.as_ref().and_then(|s| s.observed_generation),
        am.metadata.generation
    );

    // The database, owned by the owner role, with the schema and partitions.
    let pg = audit_testenv::postgres();
    let admin = sqlx::PgPool::connect(&pg.superuser_url("postgres"))
        .await
        .expect("admin");
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
    )
    .bind(f.database())
    .fetch_one(&admin)
    .await
    .expect("the database exists");
    assert_eq!(owner, format!("{}_owner", f.database()));
    let secrets = f.api::<Secret>();
    let writer = secrets
        .get(&format!("{}-db-writer", f.name))
        .await
        .expect("writer secret");
    let data = writer.data.clone().unwrap_or_default();
    let password = String::from_utf8_lossy(&data["password"].0).into_owned();
    let url = pg.url(
        &format!("{}_writer", f.database()),
        &password,
        &f.database(),
    );
    let as_writer = sqlx::PgPool::connect(&url)
        .await
        .expect("the writer can log in");
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass",
    )
    .fetch_one(&as_writer)
    .await
    .expect("audit_events exists");
    assert!(
        partitions >= 88,
        "retention window and pre-created months: {partitions}"
    );
    assert_eq!(topic_partitions(&format!("{}.events", f.name)), 3);
    assert_eq!(topic_partitions(&format!("{}.dlq", f.name)), 1);

    // Every child, owned by the resource.
    let uid = am.metadata.uid.clone().expect("uid");
    let config = f
        .api::<ConfigMap>()
        .get(&format!("{}-config", f.app()))
        .await
        .expect("configmap");
    assert!(owned_by(config.metadata.owner_references, &uid));
    let deployment = f
        .api::<Deployment>()
        .get(&f.app())
        .await
        .expect("deployment");
    assert!(owned_by(deployment.metadata.owner_references.clone(), &uid));
    let service = f.api::<Service>().get(&f.app()).await.expect("service");
    assert!(owned_by(service.metadata.owner_references, &uid));
    let hpa = f
        .api::<HorizontalPodAutoscaler>()
        .get(&f.app())
        .await
        .expect("hpa");
    assert!(owned_by(hpa.metadata.owner_references, &uid));
    let pdb = f
        .api::<PodDisruptionBudget>()
        .get(&f.app())
        .await
        .expect("pdb");
    assert!(owned_by(pdb.metadata.owner_references, &uid));
    let cron = f
        .api::<CronJob>()
        .get(&format!("{}-maintenance", f.name))
        .await
        .expect("cronjob");
    assert!(owned_by(cron.metadata.owner_references, &uid));
    assert!(owned_by(writer.metadata.owner_references.clone(), &uid));

    // A second reconcile of an unchanged resource writes nothing.
    let writes = f.ctx.metrics.applies.get();
    f.reconcile().await;
    assert_eq!(
        f.ctx.metrics.applies.get(),
        writes,
        "no child written on an unchanged resource"
    );

    // Drift: a deleted child comes back.
    f.api::<Service>()
        .delete(&f.app(), &DeleteParams::default())
        .await
        .expect("delete service");
    f.reconcile().await;
    f.api::<Service>()
        .get(&f.app())
        .await
        .expect("the Service is restored");

    // A spec change rolls the pods (config checksum) and grows the topic; passwords stay.
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("audit.openg2p.org/config-hash").cloned())
    };
    let before = hash(&deployment);
    let patch = json!({"spec": {"ingest": {"queueMaxSize": 20000},
        "kafka": {"eventsTopic": {"name": format!("{}.events", f.name), "partitions": 6}}}});
    f.api::<AuditManager>()
        .patch(&f.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("edit spec");
    let am = f.reconcile().await;
    let after = hash(
        &f.api::<Deployment>()
            .get(&f.app())
            .await
            .expect("deployment"),
    );
    assert_ne!(before, after, "a config change changes the pod template");
    assert_eq!(
        topic_partitions(&format!("{}.events", f.name)),
        6,
        "partitions grew"
    );
    assert_eq!(condition(&am, "TopicsReady").0, "True");
    let again = secrets
        .get(&format!("{}-db-writer", f.name))
        .await
        .expect("writer secret");
    assert_eq!(again.data, writer.data, "passwords are never regenerated");

    // Availability as the deployment controller would report it.
    let status = json!({"status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2}});
    f.api::<Deployment>()
        .patch_status(&f.app(), &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("deployment status");
    let am = f.reconcile().await;
    expect_condition(&am, "WorkloadAvailable", "True", "Ok");
    assert_eq!(am.status.as_ref().and_then(|s| s.ready_replicas), Some(2));

    // Next month's partition gone (a failed maintenance run, a hand): said on the resource.
    expect_condition(&am, "PartitionsReady", "True", "Ok");
    let next = Month::of(chrono::Utc::now()).plus(1).table();
    let tenant = sqlx::PgPool::connect(&pg.superuser_url(&f.database()))
        .await
        .expect("the tenant database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {next}")))
        .execute(&tenant)
        .await
        .expect("drop next month's partition");
    let am = f.reconcile().await;
    let (status, reason, message) = condition(&am, "PartitionsReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PartitionsMissing")
    );
    assert!(message.contains(&next), "{message}");
    assert!(
        condition(&am, "Ready")
            .2
            .contains("PartitionsReady: PartitionsMissing"),
        "{:?}",
        condition(&am, "Ready")
    );
}

/// `docs/password-rotation.md`: deleting a role's Secret rotates that role's password. The
/// role gets the new one, the old one stops working, and the pods roll to pick it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_role_secret_rotates_its_password_and_rolls_the_pods() {
    let f = Fixture::new(true, json!({})).await;
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "DatabaseReady").0, "True");
    let secrets = f.api::<Secret>();
    let secret = format!("{}-db-writer", f.name);
    let password = |s: &Secret| {
        String::from_utf8_lossy(&s.data.clone().unwrap_or_default()["password"].0).into_owned()
    };
    let template_hash = |d: Deployment| {
        d.spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("audit.openg2p.org/secret-hash").cloned())
    };
    let old = password(&secrets.get(&secret).await.expect("writer Secret"));
    let hash_before = template_hash(
        f.api::<Deployment>()
            .get(&f.app())
            .await
            .expect("deployment"),
    );

    secrets
        .delete(&secret, &DeleteParams::default())
        .await
        .expect("delete the writer Secret");
    let am = f.reconcile().await;
    expect_condition(&am, "DatabaseReady", "True", "Ok");
    let new = password(&secrets.get(&secret).await.expect("a new writer Secret"));
    assert_ne!(new, old, "a new password is generated");
    let pg = audit_testenv::postgres();
    let writer = format!("{}_writer", f.database());
    let login = |password: String| {
        let url = pg.url(&writer, &password, &f.database());
        async move { sqlx::PgPool::connect(&url).await.map(|_| ()) }
    };
    login(new).await.expect("the new password works");
    let refused = login(old).await.expect_err("the old password is refused");
    assert!(
        refused
            .to_string()
            .contains("password authentication failed"),
        "{refused}"
    );
    let hash_after = template_hash(
        f.api::<Deployment>()
            .get(&f.app())
            .await
            .expect("deployment"),
    );
    assert_ne!(hash_before, hash_after, "the pods roll to the new password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_admin_secret_is_reported_and_recovered() {
    let f = Fixture::new(false, json!({})).await;
    let am = f.reconcile().await;
    let (status, reason, message) = condition(&am, "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "AdminSecretMissing"),
        "{message}"
    );
    assert!(message.contains("pg-admin"), "{message}");
    assert_eq!(
        condition(&am, "TopicsReady").0,
        "True",
        "topics do not wait for the database"
    );
    create_admin_secret(&f.client, &f.namespace).await;
    let am = f.reconcile().await;
    expect_condition(&am, "DatabaseReady", "True", "Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_measured_from_kafka_and_compared_with_the_threshold() {
    let f = Fixture::new(true, json!({"lagThreshold": 10})).await;
    let am = f.reconcile().await;
    expect_condition(&am, "LagWithinThreshold", "True", "Ok");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", audit_testenv::kafka().bootstrap())
        .create()
        .expect("producer");
    let topic = format!("{}.events", f.name);
    for i in 0..25 {
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let am = f.reconcile().await;
    let (status, reason, _) = condition(&am, "LagWithinThreshold");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConsumerLagging")
    );
    let lag = am
        .status
        .as_ref()
        .and_then(|s| s.consumer_lag.clone())
        .expect("lag measured");
    assert_eq!(lag.total, 25);
    assert_eq!(lag.partitions.values().sum::<i64>(), 25);

    // The group consumes and commits everything: back within the threshold.
    let group = format!("{}-group", f.name);
    let bootstrap = audit_testenv::kafka().bootstrap();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let mut read = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while read < 25 {
            assert!(std::time::Instant::now() < deadline, "read {read} of 25");
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                m.expect("record");
                read += 1;
            }
        }
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .expect("commit");
    })
    .await
    .expect("consume");
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "LagWithinThreshold").0, "True");
    assert_eq!(
        am.status
            .as_ref()
            .and_then(|s| s.consumer_lag.as_ref())
            .map(|l| l.total),
        Some(0)
    );
}
