//! The `AuditManager` custom resource (`audit.openg2p.org/v1alpha1`): spec, status, defaults and
//! the validation rules the API server enforces (OpenAPI schema and CEL).
//!
//! Defaults match the original Helm chart. `manifests/crd.yaml` is generated from these types
//! by `make manifests` (`cargo run -p audit-manager-crds --bin crdgen`); a test fails when the
//! committed file differs.

// clippy reads the repeated `printcolumn(type_ = ...)` arguments of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

mod access;
pub mod yaml;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use access::{
    AuthenticationMode, AuthenticationSpec, EmitterSpec, IssuerSpec, NetworkPolicySpec, PeerSpec,
    PrincipalClaim, RateLimitSpec,
};

pub const GROUP: &str = "audit.openg2p.org";
pub const FINALIZER: &str = "audit.openg2p.org/teardown";
/// Annotation: finish deletion without touching the database and Kafka (they are gone).
pub const SKIP_EXTERNAL_TEARDOWN: &str = "audit.openg2p.org/skip-external-teardown";
/// Annotation: list in `status.teardownPreview` what deletion would remove.
pub const TEARDOWN_PREVIEW: &str = "audit.openg2p.org/teardown-preview";
/// Annotation: what an AuditManager takes over instead of reporting a conflict, a comma list
/// of `database` (a database retained by a deleted AuditManager, or the original service's,
/// whose schema is upgraded in place) and `topics` (the two topics and the consumer group,
/// as they are).
pub const ADOPT: &str = "audit.openg2p.org/adopt";

/// Whether the resource's [`ADOPT`] annotation names `what`.
pub fn adopts(am: &AuditManager, what: &str) -> bool {
    am.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ADOPT))
        .is_some_and(|v| v.split(',').any(|w| w.trim() == what))
}

/// Label (value `"true"`): a Secret the operator may use as credentials, that is, send to a
/// server (the admin login, a SASL password, a client certificate). Whoever administers those
/// servers sets it; a Secret without it is never read.
pub const CREDENTIALS_LABEL: &str = "audit.openg2p.org/credentials";
/// Annotation on such a Secret: the servers it may be sent to, comma-separated, each `host` (any
/// port) or `host:port`, as the spec names them (`database.host`, `kafka.bootstrapServers`).
pub const ALLOWED_HOSTS: &str = "audit.openg2p.org/allowed-hosts";

/// An audit-event service: its database and roles, Kafka topics and the runtime workload.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "audit.openg2p.org",
    version = "v1alpha1",
    kind = "AuditManager",
    plural = "auditmanagers",
    shortname = "am",
    namespaced,
    status = "AuditManagerStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.consumerLag.total"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[kube(validation = Rule::new("self.metadata.name.size() <= 40").message("the AuditManager's name must be at most 40 characters: its CronJob `<name>-maintenance` must fit Kubernetes' 52 and its database roles PostgreSQL's 63"))]
#[serde(rename_all = "camelCase")]
pub struct AuditManagerSpec {
    /// The runtime image (ingest, consume and partition maintenance).
    #[serde(default)]
    pub image: ImageSpec,
    /// Replicas when autoscaling is disabled.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// Resources of the runtime container.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
    #[serde(default)]
    pub placement: PlacementSpec,
    pub database: DatabaseSpec,
    pub kafka: KafkaSpec,
    #[serde(default)]
    pub ingest: IngestSpec,
    #[serde(default)]
    pub retention: RetentionSpec,
    #[serde(default)]
    pub istio: IstioSpec,
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Total consumer lag (records) above which `LagWithinThreshold` turns False.
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 0))]
    pub lag_threshold: i64,
    #[serde(default)]
    pub deletion_policy: DeletionPolicySpec,
    /// While true, the ValidatingAdmissionPolicy shipped in `manifests/` refuses to delete this
    /// resource (a namespace deletion or a GitOps prune stalls instead of dropping the
    /// database). Set it to false first to delete on purpose.
    #[serde(default)]
    pub deletion_protection: bool,
    /// Stop reconciling (children are left as they are) until set back to false.
    #[serde(default)]
    pub paused: bool,
}

fn default_replicas() -> i32 {
    2
}

fn default_lag_threshold() -> i64 {
    10_000
}

fn default_resources() -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let q = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(q("100m", "128Mi")),
        limits: Some(q("1", "512Mi")),
        ..ResourceRequirements::default()
    }
}

/// Where the runtime image comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    #[serde(default = "default_repository")]
    pub repository: String,
    /// Unset: the operator's own version, at every reconcile, so upgrading the operator rolls
    /// the runtime with it. (A default here would be written into each stored resource and
    /// pin it to the version current on the day it was created.) Set it only to pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default = "default_pull_policy")]
    pub pull_policy: PullPolicy,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            repository: default_repository(),
            tag: None,
            pull_policy: default_pull_policy(),
        }
    }
}

fn default_repository() -> String {
    "ghcr.io/openg2p/audit-manager".into()
}

fn default_pull_policy() -> PullPolicy {
    PullPolicy::IfNotPresent
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// HorizontalPodAutoscaler settings (autoscaling/v2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    #[serde(default = "default_cpu")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    #[serde(default = "default_memory")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization_percentage: i32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            enabled: true,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_cpu_utilization_percentage: default_cpu(),
            target_memory_utilization_percentage: default_memory(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_min_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    12
}
fn default_cpu() -> i32 {
    70
}
fn default_memory() -> i32 {
    80
}

/// Pod placement and metadata.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra labels on the runtime pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the runtime pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// The PostgreSQL server; the operator creates the database and its three roles.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sslMode != 'verify-ca' || has(self.caRef)").message("database.sslMode verify-ca needs database.caRef: the CA that signed the server's certificate (verify-full alone uses the system trust store)"))]
#[x_kube(validation = Rule::new("self.sslMode != 'disable' || (!has(self.caRef) && !has(self.clientCertSecretRef))").message("database.caRef and database.clientCertSecretRef need TLS: sslMode disable would ignore them"))]
#[x_kube(validation = Rule::new("self.host == oldSelf.host").message("database.host cannot change: the database, its roles and every stored event stay on the server they were created on; create a second AuditManager for the new server (docs/runbook.md, \"Moving to another server or name\")").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)").message("database.name cannot change: the events are stored in the database it names; create a second AuditManager for a new database (docs/runbook.md, \"Moving to another server or name\")").reason(Reason::FieldValueForbidden))]
pub struct DatabaseSpec {
    #[x_kube(validation = Rule::new("self != ''").message("database.host must not be empty"))]
    pub host: String,
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Database name; defaults to the resource name with `-` turned into `_`. At most 56
    /// characters, so the role `<name>_reader` fits PostgreSQL's 63.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,55}$"))]
    pub name: Option<String>,
    /// A Secret in the resource's namespace with an admin login (CREATEROLE, CREATEDB). It is
    /// used only when labelled `audit.openg2p.org/credentials: "true"` and annotated
    /// `audit.openg2p.org/allowed-hosts` with this host.
    pub admin_secret_ref: SecretKeysRef,
    /// TLS to the server, as libpq's `sslmode`. The default, `verify-full`, encrypts and checks
    /// the server's certificate and host name; `require` with `caRef` checks the certificate
    /// (as libpq does when a root certificate is present).
    #[serde(default = "default_ssl_mode")]
    pub ssl_mode: SslMode,
    /// The CA bundle that verifies the server, from a Secret or ConfigMap of this namespace
    /// (CloudNativePG: Secret `<cluster>-ca`, key `ca.crt`). Without it, `verify-full` uses the
    /// system trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<CaRef>,
    /// A client certificate for PostgreSQL's `cert` authentication: a `kubernetes.io/tls`
    /// Secret (keys `tls.crt`, `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<CertSecretRef>,
}

/// A CA bundle (PEM) in a Secret or a ConfigMap of the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaRef {
    #[serde(default)]
    pub kind: CaSource,
    #[x_kube(validation = Rule::new("self != ''").message("caRef.name must not be empty"))]
    pub name: String,
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum CaSource {
    #[default]
    Secret,
    ConfigMap,
}

/// A certificate and its private key (PEM) in a Secret of the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertSecretRef {
    #[x_kube(validation = Rule::new("self != ''").message("clientCertSecretRef.name must not be empty"))]
    pub name: String,
    /// `tls.crt` for a `kubernetes.io/tls` Secret, `user.crt` for a Strimzi KafkaUser's.
    #[serde(default = "default_cert_key")]
    pub cert_key: String,
    #[serde(default = "default_key_key")]
    pub key_key: String,
}

fn default_cert_key() -> String {
    "tls.crt".into()
}

fn default_key_key() -> String {
    "tls.key".into()
}

/// One key of a Secret of the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[x_kube(validation = Rule::new("self != ''").message("the Secret name must not be empty"))]
    pub name: String,
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_pg_port() -> i32 {
    5432
}

fn default_ssl_mode() -> SslMode {
    SslMode::VerifyFull
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A Secret and the keys holding a username and a password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeysRef {
    #[x_kube(validation = Rule::new("self != ''").message("adminSecretRef.name must not be empty"))]
    pub name: String,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// The Kafka cluster and the two topics.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.bootstrapServers == oldSelf.bootstrapServers").message("kafka.bootstrapServers cannot change: the topics and the consumer group's offsets are on that cluster; create a second AuditManager for another cluster (docs/runbook.md, \"Moving to another server or name\")").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("self.eventsTopic.name == oldSelf.eventsTopic.name && self.dlqTopic.name == oldSelf.dlqTopic.name").message("kafka.eventsTopic.name and kafka.dlqTopic.name cannot change: records not yet stored are in the old topics (docs/runbook.md, \"Moving to another server or name\")").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("self.consumerGroup == oldSelf.consumerGroup").message("kafka.consumerGroup cannot change: a new group would read the events topic from its start or its end, storing again or skipping what the old one has not committed (docs/runbook.md, \"Moving to another server or name\")").reason(Reason::FieldValueForbidden))]
pub struct KafkaSpec {
    #[x_kube(validation = Rule::new("self != ''").message("kafka.bootstrapServers must not be empty"))]
    pub bootstrap_servers: String,
    #[serde(default = "default_events_topic")]
    pub events_topic: TopicSpec,
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: TopicSpec,
    #[serde(default = "default_consumer_group")]
    pub consumer_group: String,
    /// Whether the operator creates, grows, configures and deletes the topics. False when they
    /// are managed elsewhere (a Strimzi `KafkaTopic`, a platform team): the operator then only
    /// checks that they exist with enough partitions, and never changes or deletes them.
    #[serde(default = "manage_topics_default")]
    pub manage_topics: bool,
    /// How the runtime and the operator connect to the brokers.
    #[serde(default)]
    pub security: KafkaSecurity,
}

/// Kafka's `security.protocol`, SASL and TLS. Strimzi's Secrets work by reference: a
/// KafkaUser's (SCRAM: key `password`; TLS: `user.crt`, `user.key`) and the cluster CA
/// `<cluster>-cluster-ca-cert` (`ca.crt`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol.startsWith('SASL_') == has(self.sasl)").message("kafka.security.sasl is set exactly when the protocol is SASL_PLAINTEXT or SASL_SSL"))]
#[x_kube(validation = Rule::new("self.protocol.endsWith('SSL') || (!has(self.caRef) && !has(self.clientCertSecretRef))").message("kafka.security.caRef and clientCertSecretRef need TLS: use protocol SSL or SASL_SSL"))]
pub struct KafkaSecurity {
    #[serde(default)]
    pub protocol: KafkaProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,
    /// The CA that verifies the brokers; without it, the system trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<CaRef>,
    /// A client certificate (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<CertSecretRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum KafkaProtocol {
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl KafkaProtocol {
    /// librdkafka's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaProtocol::Plaintext => "plaintext",
            KafkaProtocol::Ssl => "ssl",
            KafkaProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

/// SASL login: a user name and a password from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SaslSpec {
    #[serde(default)]
    pub mechanism: SaslMechanism,
    #[x_kube(validation = Rule::new("self != ''").message("kafka.security.sasl.username must not be empty"))]
    pub username: String,
    /// Strimzi's KafkaUser Secret holds it under `password`.
    pub password_secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

fn default_events_topic() -> TopicSpec {
    TopicSpec::named("openg2p.audit.events", 12)
}

fn default_dlq_topic() -> TopicSpec {
    TopicSpec::named("openg2p.audit.dlq", 3)
}

fn manage_topics_default() -> bool {
    true
}

fn default_consumer_group() -> String {
    "openg2p-audit-consumer".into()
}

/// One topic. Partitions can grow but never shrink (Kafka cannot remove partitions).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.partitions >= oldSelf.partitions").message("partitions can only grow: Kafka cannot remove partitions from a topic").reason(Reason::FieldValueForbidden))]
pub struct TopicSpec {
    #[x_kube(validation = Rule::new("self != ''").message("the topic name must not be empty"))]
    pub name: String,
    #[schemars(range(min = 1))]
    pub partitions: i32,
    /// Replicas of each partition; unset takes the broker's `default.replication.factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replication_factor: Option<i32>,
    /// The topic's `min.insync.replicas`; unset takes the broker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_insync_replicas: Option<i32>,
    /// `retention.ms`; -1 keeps records forever.
    #[serde(default = "default_retention_ms")]
    #[schemars(range(min = -1))]
    pub retention_ms: i64,
    #[serde(default = "default_compression")]
    pub compression: Compression,
}

impl TopicSpec {
    fn named(name: &str, partitions: i32) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: None,
            min_insync_replicas: None,
            retention_ms: default_retention_ms(),
            compression: default_compression(),
        }
    }
}

fn default_retention_ms() -> i64 {
    7 * 24 * 3600 * 1000
}

fn default_compression() -> Compression {
    Compression::Lz4
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Producer,
    Uncompressed,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Ingest settings of the runtime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxBatchSize <= self.queueMaxSize").message("ingest.maxBatchSize must not exceed ingest.queueMaxSize: such a batch could never be accepted"))]
#[x_kube(validation = Rule::new("!has(self.authentication) || !has(self.authentication.rateLimit) || self.authentication.rateLimit.burst >= self.maxBatchSize").message("ingest.authentication.rateLimit.burst must be at least ingest.maxBatchSize, or a full batch could never pass"))]
pub struct IngestSpec {
    #[serde(default = "default_queue")]
    #[schemars(range(min = 1))]
    pub queue_max_size: i64,
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub max_batch_size: i64,
    #[serde(default = "default_ack_mode")]
    pub ack_mode: AckMode,
    /// Who may write: `mode: none` (default, anyone) or `jwt`.
    #[serde(default)]
    pub authentication: AuthenticationSpec,
}

impl Default for IngestSpec {
    fn default() -> Self {
        IngestSpec {
            queue_max_size: default_queue(),
            max_batch_size: default_batch(),
            ack_mode: default_ack_mode(),
            authentication: AuthenticationSpec::default(),
        }
    }
}

fn default_queue() -> i64 {
    10_000
}
fn default_batch() -> i64 {
    500
}
fn default_ack_mode() -> AckMode {
    AckMode::Queued
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// 202 once queued in the pod.
    Queued,
    /// 202 once Kafka acknowledged the event.
    Kafka,
}

/// How long events are kept, and when partitions are maintained.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(oldSelf.months == 0 ? self.months == 0 : (self.months == 0 || self.months >= oldSelf.months)) || (has(self.confirmDecreaseTo) && self.confirmDecreaseTo == self.months)").message("lowering retention.months drops every partition older than the new window at the next maintenance run, for good: to confirm, set retention.confirmDecreaseTo to the new value in the same change").reason(Reason::FieldValueForbidden))]
pub struct RetentionSpec {
    /// Monthly partitions wholly older than this are dropped; 0 keeps everything.
    #[serde(default = "default_months")]
    #[schemars(range(min = 0))]
    pub months: i32,
    /// Confirms a decrease of `months`: the API server refuses a lower `months` (or a change
    /// from 0) unless this field holds the new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_decrease_to: Option<i32>,
    #[serde(default = "default_pre_create")]
    #[schemars(range(min = 0, max = 24))]
    pub pre_create_months: i32,
    /// Cron schedule of the maintenance CronJob (five fields, or @hourly, @daily, ...).
    #[serde(default = "default_schedule")]
    #[x_kube(validation = Rule::new(r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\\S+\\s+){4}\\S+)$')").message("retention.maintenanceSchedule must be a cron schedule: five fields such as '17 * * * *', or @hourly, @daily, @weekly, @monthly"))]
    pub maintenance_schedule: String,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        RetentionSpec {
            months: default_months(),
            confirm_decrease_to: None,
            pre_create_months: default_pre_create(),
            maintenance_schedule: default_schedule(),
        }
    }
}

fn default_months() -> i32 {
    84
}
fn default_pre_create() -> i32 {
    3
}
fn default_schedule() -> String {
    "17 * * * *".into()
}

/// Exposure through an Istio VirtualService.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || (has(self.hostname) && self.hostname != '')").message("istio.hostname is required when istio.enabled is true"))]
pub struct IstioSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default = "default_gateway")]
    pub gateway: String,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
}

impl Default for IstioSpec {
    fn default() -> Self {
        IstioSpec {
            enabled: false,
            hostname: None,
            gateway: default_gateway(),
            path_prefix: default_prefix(),
        }
    }
}

fn default_gateway() -> String {
    "istio-system/internal".into()
}
fn default_prefix() -> String {
    "/v1/auditmanager/".into()
}

/// What deletion of the resource does to the external systems.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionPolicySpec {
    #[serde(default = "delete")]
    pub database: DeletionPolicy,
    #[serde(default = "delete")]
    pub topics: DeletionPolicy,
}

impl Default for DeletionPolicySpec {
    fn default() -> Self {
        DeletionPolicySpec {
            database: DeletionPolicy::Delete,
            topics: DeletionPolicy::Delete,
        }
    }
}

fn delete() -> DeletionPolicy {
    DeletionPolicy::Delete
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Drop what this resource created.
    Delete,
    /// Keep it, and say where it is.
    Retain,
}

/// What the operator last observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditManagerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where emitters POST events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<ConsumerLag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Topics this resource created, for people to read. Teardown does not trust it (anyone
    /// allowed to patch the status could extend it): it reads the operator's ownership record,
    /// which ties each topic to its Kafka topic id and cluster id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned_topics: Vec<String>,
    /// With the annotation `audit.openg2p.org/teardown-preview: "true"`: exactly what deleting
    /// this resource would remove, and what it would leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown_preview: Option<Vec<String>>,
}

/// Lag of the consumer group: high watermark minus committed offset, per partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerLag {
    pub total: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Time>,
}

impl AuditManagerSpec {
    /// The database name: `database.name`, else the resource name with `-` as `_`.
    pub fn database_name(&self, resource_name: &str) -> String {
        self.database
            .name
            .clone()
            .unwrap_or_else(|| resource_name.replace(['-', '.'], "_"))
    }
}

/// The CRD as YAML, exactly as `manifests/crd.yaml` holds it.
pub fn crd_yaml() -> Result<String, yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = AuditManager::crd();
    // `helm uninstall` keeps it: deleting the CRD deletes every AuditManager, and through
    // their finalizers their databases. (kubectl ignores the annotation.)
    crd.metadata.annotations = Some(
        [("helm.sh/resource-policy".to_string(), "keep".to_string())]
            .into_iter()
            .collect(),
    );
    let body = yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated from crds/src/lib.rs by `make manifests`; do not edit.\n{body}"
    ))
}
