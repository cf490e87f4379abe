//! The fixture shared by the operator's integration tests: a namespace, an admin Secret and
//! an AuditManager pointing at the test environment's PostgreSQL and Kafka.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use audit_manager_crds::AuditManager;
use audit_manager_operator::context::Ctx;
use audit_manager_operator::controller::reconcile;
use audit_manager_operator::metrics::Metrics;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions as kconditions};
use kube::{Client, CustomResourceExt};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

/// Creates a namespace unless it exists.
pub async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

pub async fn install(client: &Client) {
    // The operator's own namespace holds the ownership records.
    create_namespace(client, audit_manager_operator::context::DEFAULT_NAMESPACE).await;
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

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub struct Fixture {
    pub client: Client,
    pub ctx: Arc<Ctx>,
    pub namespace: String,
    pub name: String,
    /// The resource as first created, for creating it again.
    pub resource: AuditManager,
}

impl Fixture {
    pub async fn new(with_admin_secret: bool, spec_extra: Value) -> Fixture {
        Fixture::new_on(audit_testenv::kube(), with_admin_secret, spec_extra).await
    }

    /// The same on a given control plane (e.g. one with kube-controller-manager).
    pub async fn new_on(
        kube: &audit_testenv::Kube,
        with_admin_secret: bool,
        spec_extra: Value,
    ) -> Fixture {
        let servers = Servers::local();
        Fixture::create(
            kube,
            &servers,
            with_admin_secret,
            &unique("audit"),
            spec_extra,
        )
        .await
    }

    /// On the shared cluster with a real node, pointing at the servers its pods reach
    /// ([`Servers::on_node`]): a resource named `name` (so the spec can name its topics after
    /// it), with the admin Secret.
    pub async fn on_node(name: &str, spec_extra: Value) -> Fixture {
        let servers = Servers::on_node();
        let kube = &audit_testenv::cluster().kube;
        Fixture::create(kube, &servers, true, name, spec_extra).await
    }

    async fn create(
        kube: &audit_testenv::Kube,
        servers: &Servers,
        with_admin_secret: bool,
        name: &str,
        spec_extra: Value,
    ) -> Fixture {
        let client = kube.client().await;
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
            create_admin_secret_for(&client, &namespace, servers).await;
        }
        let name = name.to_string();
        let mut spec = json!({
            "database": {"host": servers.host, "port": servers.pg.port(), "sslMode": "disable",
                         "adminSecretRef": {"name": "pg-admin"}},
            "kafka": {
                "bootstrapServers": servers.bootstrap,
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
            resource: am,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn current(&self) -> AuditManager {
        self.api::<AuditManager>()
            .get(&self.name)
            .await
            .expect("get AuditManager")
    }

    /// One reconcile of the current object, as the controller runs it.
    pub async fn reconcile(&self) -> AuditManager {
        reconcile(Arc::new(self.current().await), Arc::clone(&self.ctx))
            .await
            .expect("reconcile");
        self.current().await
    }

    /// Creates the resource again under the same name (after it was deleted).
    pub async fn create_again(&self) {
        let mut am = self.resource.clone();
        am.metadata.resource_version = None;
        am.metadata.uid = None;
        self.api::<AuditManager>()
            .create(&PostParams::default(), &am)
            .await
            .expect("create AuditManager again");
    }

    /// Deletes the resource and reconciles until the finalizer let it go; returns how many
    /// reconciles that took.
    pub async fn delete_and_reconcile_until_gone(&self) -> usize {
        let api = self.api::<AuditManager>();
        api.delete(&self.name, &Default::default())
            .await
            .expect("delete");
        for round in 1..=30 {
            let Some(current) = api.get_opt(&self.name).await.expect("get") else {
                return round - 1;
            };
            reconcile(Arc::new(current), Arc::clone(&self.ctx))
                .await
                .expect("reconcile");
        }
        let waiting = api
            .get_opt(&self.name)
            .await
            .expect("get")
            .map(|am| condition(&am, "Terminating"));
        panic!("the resource was not gone after 30 reconciles: {waiting:?}");
    }

    pub fn app(&self) -> String {
        format!("{}-audit-manager", self.name)
    }

    pub fn database(&self) -> String {
        self.name.replace('-', "_")
    }
}

/// Creates (or replaces) a Secret of the fixture's namespace from string data.
pub async fn create_secret(f: &Fixture, name: &str, string_data: Value) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": string_data,
    }))
    .expect("secret");
    f.api::<Secret>()
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": name}, "stringData": secret.string_data})),
        )
        .await
        .expect("apply secret");
}

/// The hosts the test servers are reached by: what the fixture's credentials are allowed to go to.
pub const TEST_HOSTS: &str = "localhost, 127.0.0.1";

/// Creates (or replaces) a Secret marked as credentials for `allowed_hosts`, as an admin of
/// the servers would.
pub async fn create_credentials(
    client: &Client,
    namespace: &str,
    name: &str,
    string_data: Value,
    allowed_hosts: &str,
) {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name,
                             "labels": {audit_manager_crds::CREDENTIALS_LABEL: "true"},
                             "annotations": {audit_manager_crds::ALLOWED_HOSTS: allowed_hosts}},
                "stringData": string_data})),
        )
        .await
        .expect("apply credentials Secret");
}

/// The admin login of the test PostgreSQL, marked for the test hosts.
pub async fn create_admin_secret(client: &Client, namespace: &str) {
    create_admin_secret_for(client, namespace, &Servers::local()).await;
}

/// The admin login of `servers`' PostgreSQL, marked for their hosts.
pub async fn create_admin_secret_for(client: &Client, namespace: &str, servers: &Servers) {
    let (user, password) = servers.pg.superuser();
    create_credentials(
        client,
        namespace,
        "pg-admin",
        json!({"username": user, "password": password}),
        &servers.allowed_hosts,
    )
    .await;
}

/// The PostgreSQL and Kafka a fixture's resource points at.
pub struct Servers {
    pub pg: &'static audit_testenv::Postgres,
    pub kafka: &'static audit_testenv::Kafka,
    /// PostgreSQL's address as the spec names it.
    pub host: String,
    /// Kafka's PLAINTEXT bootstrap as the spec names it.
    pub bootstrap: String,
    /// Where the fixture's credentials may be sent.
    pub allowed_hosts: String,
}

impl Servers {
    /// The shared servers on 127.0.0.1, for an operator and runtimes run as local processes.
    pub fn local() -> Servers {
        let (pg, kafka) = (audit_testenv::postgres(), audit_testenv::kafka());
        Servers {
            pg,
            kafka,
            host: pg.host().to_string(),
            bootstrap: kafka.bootstrap(),
            allowed_hosts: TEST_HOSTS.to_string(),
        }
    }

    /// The shared servers that pods of the shared cluster's node reach, on its bridge.
    pub fn on_node() -> Servers {
        let (pg, kafka) = (
            audit_testenv::postgres_on_node(),
            audit_testenv::kafka_on_node(),
        );
        let host = audit_testenv::cluster().bridge.host.to_string();
        Servers {
            pg,
            kafka,
            bootstrap: kafka.bootstrap_on_node().unwrap_or_default(),
            allowed_hosts: format!("{TEST_HOSTS}, {host}"),
            host,
        }
    }
}

pub fn condition(am: &AuditManager, kind: &str) -> (String, String, String) {
    am.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Asserts the status and reason of condition `kind`; returns its message.
pub fn expect_condition(am: &AuditManager, kind: &str, status: &str, reason: &str) -> String {
    let (s, r, message) = condition(am, kind);
    assert_eq!(
        (s.as_str(), r.as_str()),
        (status, reason),
        "{kind}: {message}"
    );
    message
}

pub fn topic_partitions(topic: &str) -> usize {
    partitions_on(&audit_testenv::kafka().bootstrap(), topic)
}

/// The partitions of `topic` on the broker at `bootstrap` (0: it does not exist).
pub fn partitions_on(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
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

pub fn owned_by(refs: Option<Vec<OwnerReference>>, uid: &str) -> bool {
    refs.unwrap_or_default()
        .iter()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

/// The `audit-manager` binary of this workspace (see [`audit_testenv::workspace_binary`]).
pub fn runtime_binary() -> std::path::PathBuf {
    audit_testenv::workspace_binary("audit-manager")
}

/// An operator process (`audit-manager-operator run`) against the test API server, killed when
/// dropped.
pub struct Operator {
    child: std::process::Child,
    port: u16,
}

impl Operator {
    pub fn start(identity: &str, namespace: &str) -> Operator {
        let kube = audit_testenv::kube();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-manager-operator"))
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kube.kubeconfig())
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", namespace)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the operator");
        Operator { child, port }
    }

    /// One counter of its /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut client =
            audit_testenv::http::HttpClient::connect(&format!("127.0.0.1:{}", self.port))
                .await
                .expect("connect to the operator's metrics");
        let answer = client.get("/metrics").await.expect("GET /metrics");
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        assert_eq!(answer.status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} not in {body}"))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of a runtime process serving the fixture's resource as a pod would: its
/// topics, group and database, as the writer with `password`; maintenance off.
pub fn runtime_env(f: &Fixture, password: &str) -> Vec<(&'static str, String)> {
    let pg = audit_testenv::postgres();
    let kafka = &f.resource.spec.kafka;
    let database = f.resource.spec.database_name(&f.name);
    vec![
        (
            "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS",
            kafka.bootstrap_servers.clone(),
        ),
        (
            "AUDIT_MANAGER__KAFKA__TOPIC",
            kafka.events_topic.name.clone(),
        ),
        (
            "AUDIT_MANAGER__KAFKA__DLQ_TOPIC",
            kafka.dlq_topic.name.clone(),
        ),
        (
            "AUDIT_MANAGER__KAFKA__CONSUMER_GROUP",
            kafka.consumer_group.clone(),
        ),
        ("AUDIT_MANAGER__COMPONENTS__MAINTENANCE", "false".into()),
        ("DB_HOST", pg.host().into()),
        ("DB_PORT", pg.port().to_string()),
        ("DB_NAME", database.clone()),
        ("DB_USER", format!("{database}_writer")),
        ("DB_PASSWORD", password.to_string()),
        ("AUDIT_MANAGER__DATABASE__SSLMODE", "disable".into()),
    ]
}

/// The password in the role Secret `<name>-db-<kind>`.
pub async fn role_password(f: &Fixture, kind: &str) -> String {
    let secret = f
        .api::<Secret>()
        .get(&format!("{}-db-{kind}", f.name))
        .await
        .expect("role Secret");
    secret
        .data
        .as_ref()
        .and_then(|d| d.get("password"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .expect("password")
}

/// An admin with CREATEROLE and CREATEDB only, as a managed PostgreSQL or CloudNativePG without
/// superuser access gives; its login.
pub async fn limited_admin() -> (String, String) {
    use sqlx::Connection;
    let pg = audit_testenv::postgres();
    let name = unique("limited").replace('-', "_");
    let mut su = sqlx::PgConnection::connect(&pg.superuser_url("postgres"))
        .await
        .expect("superuser");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {name} LOGIN CREATEROLE CREATEDB PASSWORD 'limited-password'"
    )))
    .execute(&mut su)
    .await
    .expect("a limited admin");
    (name, "limited-password".into())
}

/// A TCP forwarder on 127.0.0.1 whose target can be switched: a server that is down, then up,
/// or a name that comes to point at another Kafka cluster (a broker advertises its own
/// address, so only bootstrapping goes through it).
pub struct Switch {
    pub port: u16,
    target: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Switch {
    pub async fn to(target: String) -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = Arc::new(std::sync::Mutex::new(target));
        let shared = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = shared.lock().expect("target").clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Switch { port, target, task }
    }

    pub fn switch(&self, target: String) {
        *self.target.lock().expect("target") = target;
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Events of the fixture's namespace: reason and message of each.
pub async fn events(f: &Fixture) -> Vec<(String, String)> {
    f.api::<k8s_openapi::api::core::v1::Event>()
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Commits offset 0 of `partitions` partitions of `topic` in `group`, as a consumer of that
/// group would: the group then exists (state Empty) with committed offsets.
pub fn commit_start(bootstrap: &str, group: &str, topic: &str, partitions: i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut offsets = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        offsets
            .add_partition_offset(topic, p, rdkafka::Offset::Offset(0))
            .expect("offset");
    }
    consumer
        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
}

/// The state of consumer group `group` ("" or "Dead" when it does not exist).
pub fn group_state(bootstrap: &str, group: &str) -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    consumer
        .client()
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .expect("groups")
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map(|g| g.state().to_string())
        .unwrap_or_default()
}
