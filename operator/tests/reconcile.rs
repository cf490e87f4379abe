//! Reconcile against the real kube-apiserver, PostgreSQL and Kafka of the test environment.
//! No controller-manager runs here, so Deployment availability is simulated by patching its
//! status, as the deployment controller would.

use std::sync::Arc;
use std::time::Duration;

use audit_manager_crds::AuditManager;
use audit_manager_operator::controller::{Ctx, reconcile};
use audit_manager_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions as kconditions};
use kube::{Client, CustomResourceExt};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

async fn install(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        AuditManager::crd_name(),
        &PatchParams::apply("test").force(),
        &Patch::Apply(&AuditManager::crd()),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            AuditManager::crd_name(),
            kconditions::is_crd_established(),
        ),
    )
    .await
    .expect("established in time")
    .expect("watch");
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

struct Fixture {
    client: Client,
    ctx: Arc<Ctx>,
    namespace: String,
    name: String,
}

impl Fixture {
    async fn new(with_admin_secret: bool, spec_extra: Value) -> Fixture {
        let client = audit_testenv::kube().client().await;
        install(&client).await;
        let namespace = unique("ns");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("ns");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        if with_admin_secret {
            create_admin_secret(&client, &namespace).await;
        }
        let pg = audit_testenv::postgres();
        let kafka = audit_testenv::kafka();
        let name = unique("audit");
        let mut spec = json!({
            "database": {"host": pg.host(), "port": pg.port(), "sslMode": "disable",
                         "adminSecretRef": {"name": "pg-admin"}},
            "kafka": {
                "bootstrapServers": kafka.bootstrap(),
                "eventsTopic": {"name": format!("{name}.events"), "partitions": 3},
                "dlqTopic": {"name": format!("{name}.dlq"), "partitions": 1},
                "consumerGroup": format!("{name}-group"),
            },
        });
        if let (Some(s), Value::Object(extra)) = (spec.as_object_mut(), spec_extra) {
            s.extend(extra);
        }
        let am: AuditManager = serde_json::from_value(json!({
            "apiVersion": "audit.openg2p.org/v1alpha1", "kind": "AuditManager",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec,
        }))
        .expect("resource");
        Api::<AuditManager>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &am)
            .await
            .expect("create AuditManager");
        let ctx = Arc::new(Ctx::new(
            client.clone(),
            Arc::new(Metrics::default()),
            "test".into(),
        ));
        Fixture {
            client,
            ctx,
            namespace,
            name,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn current(&self) -> AuditManager {
        self.api::<AuditManager>()
            .get(&self.name)
            .await
            .expect("get AuditManager")
    }

    /// One reconcile of the current object, as the controller runs it.
    async fn reconcile(&self) -> AuditManager {
        reconcile(Arc::new(self.current().await), Arc::clone(&self.ctx))
            .await
            .expect("reconcile");
        self.current().await
    }

    fn app(&self) -> String {
        format!("{}-audit-manager", self.name)
    }

    fn database(&self) -> String {
        self.name.replace('-', "_")
    }
}

async fn create_admin_secret(client: &Client, namespace: &str) {
    let (user, password) = audit_testenv::postgres().superuser();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pg-admin"},
        "stringData": {"username": user, "password": password},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create admin secret");
}

fn condition(am: &AuditManager, kind: &str) -> (String, String, String) {
    am.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn topic_partitions(topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", audit_testenv::kafka().bootstrap())
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0)
}

fn owned_by(refs: Option<Vec<OwnerReference>>, uid: &str) -> bool {
    refs.unwrap_or_default()
        .iter()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_the_database_topics_and_children_and_keeps_them() {
    let f = Fixture::new(true, json!({})).await;
    let am = f.reconcile().await;
    assert_eq!(
        condition(&am, "DatabaseReady").0,
        "True",
        "{:?}",
        condition(&am, "DatabaseReady")
    );
    assert_eq!(
        condition(&am, "TopicsReady").0,
        "True",
        "{:?}",
        condition(&am, "TopicsReady")
    );
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
        .get(&format!("{}-maintenance", f.app()))
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
    assert_eq!(
        condition(&am, "WorkloadAvailable").0,
        "True",
        "{:?}",
        condition(&am, "WorkloadAvailable")
    );
    assert_eq!(am.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
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
    assert_eq!(
        condition(&am, "DatabaseReady").0,
        "True",
        "{:?}",
        condition(&am, "DatabaseReady")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_measured_from_kafka_and_compared_with_the_threshold() {
    let f = Fixture::new(true, json!({"lagThreshold": 10})).await;
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "LagWithinThreshold").0, "True");
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
}
