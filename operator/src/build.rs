//! Pure builders: the desired state of every namespaced child of an `AuditManager`, from its
//! spec alone (plus the checksum of its credentials), and the one list of those children that
//! applying, deleting, the teardown preview and the controller's watches all use.

use audit_manager::config::{self as runtime, Config};
use audit_manager::db::roles::role_name;
use audit_manager::http::paths;
use audit_manager_crds::{AuditManager, AuthenticationMode, CaRef, CaSource, CertSecretRef};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::context::Error;
use crate::exposure::{self, Surroundings};
pub use crate::objects::{
    CONFIG_DIR, Names, labels, maintenance_labels, maintenance_selector_string, managed_selector,
    owner, selector, selector_string,
};
use crate::objects::{from, metadata, name_of};

/// Seconds the runtime may take to drain its queue on SIGTERM (its shutdown timeout + slack).
pub const DRAIN_SECONDS: i64 = 60;
/// Where the TLS and SASL material the spec references is mounted, one folder per reference.
const TLS_DIR: &str = "/var/run/audit-manager";
/// The runtime's user; its group owns the mounted material (`fsGroup`), readable by it only.
const RUNTIME_UID: i64 = 65532;
const SECRET_FILE_MODE: i32 = 0o440;

/// What the workload builders need besides the resource.
pub struct Inputs<'a> {
    pub am: &'a AuditManager,
    /// SHA-256 of the rendered config and of the credentials, so a change rolls the pods.
    pub config_hash: String,
    pub secret_hash: String,
}

/// SHA-256 hex of some bytes.
pub fn hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The runtime's configuration for this spec, as the runtime's own type. The writer's
/// password is not in it: it comes from the writer Secret through the environment.
pub fn runtime_config(am: &AuditManager) -> Config {
    let spec = &am.spec;
    let database = spec.database_name(&name_of(am));
    let count = |v: i64, default: usize| usize::try_from(v).unwrap_or(default);
    let months = |v: i32| u32::try_from(v).unwrap_or(0);
    let mut c = Config::default();
    c.server.host = "0.0.0.0".into();
    c.server.port = runtime::DEFAULT_PORT;
    c.server.shutdown_timeout_seconds = (DRAIN_SECONDS - 10) as u64;
    c.server.metrics_port = exposure::METRICS_PORT;
    c.ingest.queue_max_size = count(spec.ingest.queue_max_size, c.ingest.queue_max_size);
    c.ingest.max_batch_size = count(spec.ingest.max_batch_size, c.ingest.max_batch_size);
    c.ingest.ack_mode = match spec.ingest.ack_mode {
        audit_manager_crds::AckMode::Queued => runtime::AckMode::Queued,
        audit_manager_crds::AckMode::Kafka => runtime::AckMode::Kafka,
    };
    c.kafka.bootstrap_servers = spec.kafka.bootstrap_servers.clone();
    c.kafka.topic = spec.kafka.events_topic.name.clone();
    c.kafka.dlq_topic = spec.kafka.dlq_topic.name.clone();
    c.kafka.consumer_group = spec.kafka.consumer_group.clone();
    c.database.host = spec.database.host.clone();
    c.database.port = u16::try_from(spec.database.port).unwrap_or(c.database.port);
    c.database.user = role_name(&database, "writer");
    c.database.name = database;
    c.database.sslmode = spec.database.ssl_mode.as_str().into();
    let file = |volume: &str, file: &str| format!("{TLS_DIR}/{volume}/{file}");
    if spec.database.ca_ref.is_some() {
        c.database.sslrootcert = file("database-ca", "ca.crt");
    }
    if spec.database.client_cert_secret_ref.is_some() {
        c.database.sslcert = file("database-client", "tls.crt");
        c.database.sslkey = file("database-client", "tls.key");
    }
    let security = &spec.kafka.security;
    let s = &mut c.kafka.security;
    s.protocol = security.protocol.as_str().into();
    if let Some(sasl) = &security.sasl {
        s.sasl_mechanism = sasl.mechanism.as_str().into();
        s.sasl_username = sasl.username.clone();
        s.sasl_password_file = file("kafka-sasl", "password");
    }
    if security.ca_ref.is_some() {
        s.ssl_ca_file = file("kafka-ca", "ca.crt");
    }
    if security.client_cert_secret_ref.is_some() {
        s.ssl_cert_file = file("kafka-client", "tls.crt");
        s.ssl_key_file = file("kafka-client", "tls.key");
    }
    c.database.partition_pre_create_months = months(spec.retention.pre_create_months);
    c.database.partition_retention_months = months(spec.retention.months);
    size_for_memory(&mut c, memory_limit(am));
    // Partition maintenance runs in the CronJob as the owner role.
    c.components.maintenance = false;
    c.log.level = "info".into();
    c.log.format = "json".into();
    c
}

/// The container's memory limit in bytes, when one is set and readable.
fn memory_limit(am: &AuditManager) -> Option<u64> {
    let limits = am.spec.resources.limits.as_ref()?;
    quantity_bytes(&limits.get("memory")?.0)
}

/// A Kubernetes quantity of bytes: `512Mi`, `1G`, `134217728`, `1.5Gi`, `129e6`.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// Sizes what the runtime holds in memory to the container's limit, so a full queue and a
/// full body budget always fit beside the process itself: a quarter for the queue, an eighth
/// for request bodies being read. A batch body that would not fit either is limited to what
/// does.
fn size_for_memory(c: &mut Config, limit: Option<u64>) {
    let Some(limit) = limit.and_then(|l| usize::try_from(l).ok()) else {
        return;
    };
    let i = &mut c.ingest;
    i.queue_max_bytes = (limit / 4).max(i.max_event_bytes);
    i.max_inflight_body_bytes = limit / 8;
    let fits = i
        .queue_max_bytes
        .min(i.max_inflight_body_bytes + i.event_body_limit());
    if i.batch_body_limit() > fits {
        i.max_body_bytes = Some(fits);
    }
}

/// The configuration file the runtime reads at `$CONFIG_PATH`, without secrets, with the
/// `auth` section (which needs the cluster's issuer when the spec names it).
pub fn runtime_config_file(am: &AuditManager, around: &Surroundings) -> Result<String, Error> {
    let mut config = runtime_config(am);
    config.auth = exposure::runtime_auth(am, around);
    let file = json!({ "audit_manager": config.without_secrets() });
    audit_manager_crds::yaml::to_string(&file).map_err(|e| Error::Build {
        kind: "ConfigMap".into(),
        message: e.to_string(),
    })
}

/// The runtime's configuration file and, when an issuer is the cluster's own, its JWK set
/// (a rotated key reaches the pods without a restart: the file is read every minute).
pub fn config_map(
    am: &AuditManager,
    names: &Names,
    around: &Surroundings,
) -> Result<ConfigMap, Error> {
    let mut data = json!({"config.yaml": runtime_config_file(am, around)?});
    if let Some(cluster) = &around.cluster_issuer
        && exposure::wants_cluster_issuer(am)
    {
        data[exposure::CLUSTER_KEYS] = json!(cluster.jwks);
    }
    from(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(am, &names.config),
        "data": data,
    }))
}

fn image(am: &AuditManager) -> String {
    let image = &am.spec.image;
    let tag = image.tag.as_deref().unwrap_or(env!("CARGO_PKG_VERSION"));
    format!("{}:{tag}", image.repository)
}

/// Where the runtime finds its configuration file.
fn config_path() -> Value {
    json!({"name": runtime::CONFIG_PATH_VAR, "value": format!("{CONFIG_DIR}/config.yaml")})
}

/// The database password, from a role Secret.
fn password_from(secret: &str) -> Value {
    json!({"name": runtime::env_var("database.password"),
           "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}})
}

/// The configuration volume and one read-only volume per TLS or SASL reference of the spec,
/// each exposing the referenced keys under the file names `runtime_config` points at:
/// `(volumes, volumeMounts)`.
fn volumes(am: &AuditManager, names: &Names) -> (Vec<Value>, Vec<Value>) {
    let mut volumes = vec![json!({"name": "config", "configMap": {"name": names.config}})];
    let mut mounts = vec![json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true})];
    let secret = |name: &str, items: &[(&str, &str)]| {
        json!({"secret": {"secretName": name, "defaultMode": SECRET_FILE_MODE,
               "items": items.iter().map(|(k, p)| json!({"key": k, "path": p})).collect::<Vec<_>>()}})
    };
    let ca = |r: &CaRef| match r.kind {
        CaSource::Secret => secret(&r.name, &[(&r.key, "ca.crt")]),
        CaSource::ConfigMap => json!({"configMap": {"name": r.name,
                                      "items": [{"key": r.key, "path": "ca.crt"}]}}),
    };
    let cert = |r: &CertSecretRef| {
        secret(
            &r.name,
            &[(&r.cert_key, "tls.crt"), (&r.key_key, "tls.key")],
        )
    };
    let spec = &am.spec;
    let security = &spec.kafka.security;
    let wanted = [
        ("database-ca", spec.database.ca_ref.as_ref().map(ca)),
        (
            "database-client",
            spec.database.client_cert_secret_ref.as_ref().map(cert),
        ),
        ("kafka-ca", security.ca_ref.as_ref().map(ca)),
        (
            "kafka-client",
            security.client_cert_secret_ref.as_ref().map(cert),
        ),
        (
            "kafka-sasl",
            security.sasl.as_ref().map(|s| {
                secret(
                    &s.password_secret_ref.name,
                    &[(&s.password_secret_ref.key, "password")],
                )
            }),
        ),
    ];
    for (name, source) in wanted {
        let Some(mut volume) = source else { continue };
        volume["name"] = json!(name);
        volumes.push(volume);
        mounts.push(
            json!({"name": name, "mountPath": format!("{TLS_DIR}/{name}"), "readOnly": true}),
        );
    }
    (volumes, mounts)
}

/// The pod's security context: non-root, the runtime's own group (without `runAsGroup` the
/// process runs with group 0), and that group owns mounted Secrets.
fn pod_security() -> Value {
    json!({"runAsNonRoot": true, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
           "fsGroup": RUNTIME_UID,
           "seccompProfile": {"type": "RuntimeDefault"}})
}

fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

pub fn deployment(inputs: &Inputs<'_>, names: &Names) -> Result<Deployment, Error> {
    let am = inputs.am;
    let (volumes, mounts) = volumes(am, names);
    let spec = &am.spec;
    let mut pod_labels = labels(am);
    pod_labels.extend(spec.placement.pod_labels.clone());
    let mut annotations = spec.placement.pod_annotations.clone();
    annotations.insert(
        "audit.openg2p.org/config-hash".into(),
        inputs.config_hash.clone(),
    );
    annotations.insert(
        "audit.openg2p.org/secret-hash".into(),
        inputs.secret_hash.clone(),
    );
    let mut deployment_spec = json!({
        "selector": {"matchLabels": selector(am)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": {
                // A Service named like a config key (e.g. `db`) would otherwise inject
                // `DB_PORT=tcp://...`, which the runtime's loader refuses.
                "enableServiceLinks": false,
                "terminationGracePeriodSeconds": DRAIN_SECONDS,
                "securityContext": pod_security(),
                "nodeSelector": spec.placement.node_selector,
                "tolerations": spec.placement.tolerations,
                "affinity": spec.placement.affinity,
                "priorityClassName": spec.placement.priority_class_name,
                "containers": [{
                    "name": "audit-manager",
                    "image": image(am),
                    "imagePullPolicy": spec.image.pull_policy,
                    "args": ["serve"],
                    "env": [
                        config_path(),
                        password_from(&names.writer_secret),
                    ],
                    "ports": [{"name": "http", "containerPort": runtime::DEFAULT_PORT},
                              {"name": "metrics", "containerPort": exposure::METRICS_PORT}],
                    "readinessProbe": {"httpGet": {"path": paths::READY, "port": "http"},
                                       "periodSeconds": 5, "failureThreshold": 2},
                    "livenessProbe": {"httpGet": {"path": paths::LIVE, "port": "http"},
                                      "periodSeconds": 10, "failureThreshold": 6},
                    "resources": spec.resources,
                    "securityContext": container_security(),
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
            }
        }
    });
    // With autoscaling on, the HPA owns `replicas`: leaving it out keeps this apply from
    // fighting the autoscaler.
    if !spec.autoscaling.enabled {
        deployment_spec["replicas"] = json!(spec.replicas);
    }
    from(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(am, &names.app),
        "spec": deployment_spec,
    }))
}

pub fn service(am: &AuditManager, names: &Names) -> Result<Service, Error> {
    from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(am, &names.app),
        "spec": {
            "selector": selector(am),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        }
    }))
}

pub fn hpa(am: &AuditManager, names: &Names) -> Result<HorizontalPodAutoscaler, Error> {
    let a = &am.spec.autoscaling;
    let metric = |name: &str, target: i32| {
        json!({"type": "Resource", "resource": {"name": name,
               "target": {"type": "Utilization", "averageUtilization": target}}})
    };
    from(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(am, &names.app),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names.app},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [metric("cpu", a.target_cpu_utilization_percentage),
                        metric("memory", a.target_memory_utilization_percentage)],
        }
    }))
}

pub fn pdb(am: &AuditManager, names: &Names) -> Result<PodDisruptionBudget, Error> {
    from(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": metadata(am, &names.app),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(am)}},
    }))
}

/// How long one maintenance Job may run.
pub const MAINTENANCE_DEADLINE_SECONDS: i64 = 600;

pub fn cronjob(inputs: &Inputs<'_>, names: &Names) -> Result<CronJob, Error> {
    let am = inputs.am;
    let (volumes, mounts) = volumes(am, names);
    let database = am.spec.database_name(&name_of(am));
    from(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": metadata(am, &names.maintenance),
        "spec": {
            "schedule": am.spec.retention.maintenance_schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 2,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
              "metadata": {"labels": maintenance_labels(am)},
              "spec": {
                "backoffLimit": 3,
                // A run stuck on the database ends, and the next schedule starts afresh.
                "activeDeadlineSeconds": MAINTENANCE_DEADLINE_SECONDS,
                "template": {
                    "metadata": {"labels": maintenance_labels(am)},
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "enableServiceLinks": false,
                        "securityContext": pod_security(),
                        "containers": [{
                            "name": "maintain",
                            "image": image(am),
                            "imagePullPolicy": am.spec.image.pull_policy,
                            "args": ["maintain"],
                            "env": [
                                config_path(),
                                {"name": runtime::env_var("database.user"), "value": role_name(&database, "owner")},
                                password_from(&names.owner_secret),
                            ],
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                          "limits": {"memory": "256Mi"}},
                            "securityContext": container_security(),
                            "volumeMounts": mounts,
                        }],
                        "volumes": volumes,
                    }
                }
              }
            }
        }
    }))
}

/// A typed child as the dynamic object every child is applied and deleted as.
fn dynamic<K: serde::Serialize>(typed: &K) -> Result<DynamicObject, Error> {
    Ok(serde_json::from_value(serde_json::to_value(typed)?)?)
}

/// The kinds of child, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConfigMap,
    Deployment,
    Service,
    HorizontalPodAutoscaler,
    PodDisruptionBudget,
    CronJob,
    NetworkPolicy,
    VirtualService,
    RequestAuthentication,
    AuthorizationPolicy,
    PodMonitor,
}

impl Kind {
    /// Every kind of child: the one list.
    pub const ALL: [Kind; 11] = [
        Kind::ConfigMap,
        Kind::Deployment,
        Kind::Service,
        Kind::HorizontalPodAutoscaler,
        Kind::PodDisruptionBudget,
        Kind::CronJob,
        Kind::NetworkPolicy,
        Kind::VirtualService,
        Kind::RequestAuthentication,
        Kind::AuthorizationPolicy,
        Kind::PodMonitor,
    ];

    /// The API resource, for dynamic reads, applies, deletes and watches.
    pub fn resource(self) -> ApiResource {
        match self {
            Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::HorizontalPodAutoscaler => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
            Kind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            Kind::CronJob => ApiResource::erase::<CronJob>(&()),
            Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            Kind::VirtualService => {
                istio("networking.istio.io", "VirtualService", "virtualservices")
            }
            Kind::RequestAuthentication => istio(
                "security.istio.io",
                "RequestAuthentication",
                "requestauthentications",
            ),
            Kind::AuthorizationPolicy => istio(
                "security.istio.io",
                "AuthorizationPolicy",
                "authorizationpolicies",
            ),
            Kind::PodMonitor => ApiResource {
                group: "monitoring.coreos.com".into(),
                version: "v1".into(),
                api_version: "monitoring.coreos.com/v1".into(),
                kind: "PodMonitor".into(),
                plural: "podmonitors".into(),
            },
        }
    }

    /// Whether the child is rendered only where its CRD happens to exist, its absence being no
    /// problem (the Prometheus Operator's PodMonitor), unlike Istio's kinds that the spec asks
    /// for.
    pub fn where_installed(self) -> bool {
        self == Kind::PodMonitor
    }

    /// The CRD that must be installed before this kind exists; None for built-in kinds.
    pub fn crd(self) -> Option<&'static str> {
        match self {
            Kind::VirtualService => Some("virtualservices.networking.istio.io"),
            Kind::RequestAuthentication => Some("requestauthentications.security.istio.io"),
            Kind::AuthorizationPolicy => Some("authorizationpolicies.security.istio.io"),
            Kind::PodMonitor => Some("podmonitors.monitoring.coreos.com"),
            _ => None,
        }
    }

    /// This kind's child of the resource with these names.
    pub fn name(self, names: &Names) -> &str {
        match self {
            Kind::ConfigMap => &names.config,
            Kind::CronJob => &names.maintenance,
            _ => &names.app,
        }
    }
}

/// An Istio kind (version v1).
fn istio(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The Prometheus Operator's PodMonitor for the runtime pods' metrics port (the alerts and
/// the dashboard of `manifests/monitoring/` read what it scrapes).
fn pod_monitor(am: &AuditManager, names: &Names) -> Result<DynamicObject, Error> {
    from(json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": metadata(am, &names.app),
        "spec": {
            "selector": {"matchLabels": selector(am)},
            "podMetricsEndpoints": [{"port": "metrics", "path": paths::METRICS, "interval": "30s"}],
        }
    }))
}

/// One child: what it is, and what it should be (None: it should not exist).
#[derive(Debug, Clone)]
pub struct Child {
    pub kind: Kind,
    pub name: String,
    pub desired: Option<DynamicObject>,
}

/// Every child of the resource, in [`Kind::ALL`] order. `secret_hash` is the checksum of the
/// role credentials: a change rolls the pods, as a change of the rendered config does. While
/// `held` (a conflict stands: the database, a topic or the consumer group is someone else's)
/// no workload may run against it: the Deployment, its HPA and the CronJob should not exist.
pub fn children(
    am: &AuditManager,
    names: &Names,
    secret_hash: &str,
    held: bool,
    around: &Surroundings,
) -> Result<Vec<Child>, Error> {
    let config_map = config_map(am, names, around)?;
    // The configuration file rolls the pods; the cluster's keys beside it do not (the runtime
    // reads them again).
    let config_file = config_map
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .cloned()
        .unwrap_or_default();
    let inputs = Inputs {
        am,
        config_hash: hash(config_file.as_bytes()),
        secret_hash: secret_hash.to_string(),
    };
    let istio = am.spec.istio.enabled;
    let jwt = am.spec.ingest.authentication.mode == AuthenticationMode::Jwt;
    Kind::ALL
        .into_iter()
        .map(|kind| {
            let desired = match kind {
                Kind::ConfigMap => Some(dynamic(&config_map)?),
                Kind::Deployment | Kind::HorizontalPodAutoscaler | Kind::CronJob if held => None,
                Kind::Deployment => Some(dynamic(&deployment(&inputs, names)?)?),
                Kind::Service => Some(dynamic(&service(am, names)?)?),
                Kind::HorizontalPodAutoscaler => match am.spec.autoscaling.enabled {
                    true => Some(dynamic(&hpa(am, names)?)?),
                    false => None,
                },
                Kind::PodDisruptionBudget => Some(dynamic(&pdb(am, names)?)?),
                Kind::CronJob => Some(dynamic(&cronjob(&inputs, names)?)?),
                Kind::NetworkPolicy => match am.spec.network_policy.enabled {
                    true => Some(dynamic(&exposure::network_policy(am, names, around)?)?),
                    false => None,
                },
                Kind::VirtualService => match istio {
                    true => Some(exposure::virtual_service(am, names)?),
                    false => None,
                },
                Kind::RequestAuthentication => match istio && jwt {
                    true => Some(exposure::request_authentication(am, names, around)?),
                    false => None,
                },
                Kind::AuthorizationPolicy => match istio {
                    true => Some(exposure::authorization_policy(am, names, around)?),
                    false => None,
                },
                Kind::PodMonitor => Some(pod_monitor(am, names)?),
            };
            Ok(Child {
                kind,
                name: kind.name(names).to_string(),
                desired,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn am(extra: Value) -> AuditManager {
        let mut spec = json!({
            "database": {"host": "pg", "adminSecretRef": {"name": "admin"}},
            "kafka": {"bootstrapServers": "k:9092"}
        });
        if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
            s.extend(e);
        }
        let mut am: AuditManager = serde_json::from_value(json!({
            "apiVersion": "audit.openg2p.org/v1alpha1", "kind": "AuditManager",
            "metadata": {"name": "prod-audit", "namespace": "openg2p", "uid": "u-1"},
            "spec": spec
        }))
        .expect("valid resource");
        am.metadata.uid = Some("u-1".into());
        am
    }

    fn inputs(am: &AuditManager) -> Inputs<'_> {
        Inputs {
            am,
            config_hash: "c1".into(),
            secret_hash: "s1".into(),
        }
    }

    #[test]
    fn the_config_renders_the_spec_without_secrets() {
        let a =
            am(json!({"ingest": {"queueMaxSize": 20000, "maxBatchSize": 100, "ackMode": "kafka"}}));
        let text = runtime_config_file(&a, &Surroundings::default()).expect("config file");
        let v: Value = audit_manager_crds::yaml::from_str(&text).expect("yaml");
        let c = &v["audit_manager"];
        assert_eq!(c["ingest"]["queue_max_size"], json!(20000));
        assert_eq!(c["ingest"]["ack_mode"], json!("kafka"));
        assert_eq!(c["database"]["name"], json!("prod_audit"));
        assert_eq!(c["database"]["user"], json!("prod_audit_writer"));
        assert_eq!(c["kafka"]["topic"], json!("openg2p.audit.events"));
        assert!(
            c["database"].get("password").is_none(),
            "no password in the ConfigMap"
        );
    }

    #[test]
    fn memory_quantities_read_as_kubernetes_writes_them() {
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("128974848"), Some(128_974_848));
        assert_eq!(quantity_bytes("129e6"), Some(129_000_000));
        assert_eq!(quantity_bytes("129M"), Some(129_000_000));
        assert_eq!(quantity_bytes("123Mb"), None);
    }

    #[test]
    fn the_queue_and_body_budget_fit_the_memory_limit() {
        let with_limit = |memory: &str| {
            runtime_config(&am(json!({"resources": {"limits": {"memory": memory}}})))
        };
        let c = with_limit("512Mi");
        assert_eq!(c.ingest.queue_max_bytes, 128 << 20);
        assert_eq!(c.ingest.max_inflight_body_bytes, 64 << 20);
        assert_eq!(c.ingest.max_body_bytes, None, "a 32 MiB batch fits");
        let small = with_limit("64Mi");
        assert_eq!(small.ingest.queue_max_bytes, 16 << 20);
        assert_eq!(
            small.ingest.batch_body_limit(),
            small.ingest.max_inflight_body_bytes + small.ingest.event_body_limit(),
            "a batch is limited to what the budget can read"
        );
        let none = runtime_config(&am(json!({"resources": {}})));
        assert_eq!(
            none.ingest.queue_max_bytes,
            Config::default().ingest.queue_max_bytes
        );
    }

    #[test]
    fn the_deployment_is_hardened_probed_and_rolls_on_changes() {
        let a = am(json!({}));
        let names = Names::of("prod-audit");
        let d = serde_json::to_value(deployment(&inputs(&a), &names).expect("deployment"))
            .expect("json");
        let spec = &d["spec"];
        assert!(spec.get("replicas").is_none(), "the HPA owns replicas");
        let pod = &spec["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["args"], json!(["serve"]));
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"],
            json!("/v1/auditmanager/health/ready")
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"],
            json!("/v1/auditmanager/health/live")
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], json!(true));
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(pod["terminationGracePeriodSeconds"], json!(DRAIN_SECONDS));
        assert_eq!(pod["enableServiceLinks"], json!(false));
        assert_eq!(
            spec["template"]["metadata"]["annotations"]["audit.openg2p.org/config-hash"],
            json!("c1")
        );
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], json!("u-1"));
        assert_eq!(
            d["metadata"]["ownerReferences"][0]["controller"],
            json!(true)
        );

        let fixed = am(json!({"autoscaling": {"enabled": false}, "replicas": 3}));
        let d = serde_json::to_value(deployment(&inputs(&fixed), &names).expect("deployment"))
            .expect("json");
        assert_eq!(d["spec"]["replicas"], json!(3));
    }

    #[test]
    fn the_runtime_image_follows_the_operator_unless_pinned() {
        let names = Names::of("prod-audit");
        let image_of = |a: &AuditManager| {
            serde_json::to_value(deployment(&inputs(a), &names).expect("deployment")).expect("json")
                ["spec"]["template"]["spec"]["containers"][0]["image"]
                .clone()
        };
        assert_eq!(
            image_of(&am(json!({}))),
            json!(format!(
                "ghcr.io/openg2p/audit-manager:{}",
                env!("CARGO_PKG_VERSION")
            ))
        );
        let pinned =
            am(json!({"image": {"repository": "registry.example.org/am", "tag": "0.0.9"}}));
        assert_eq!(image_of(&pinned), json!("registry.example.org/am:0.0.9"));
    }

    #[test]
    fn the_cronjob_runs_maintain_as_the_owner_one_at_a_time() {
        let a = am(json!({"retention": {"maintenanceSchedule": "@hourly"}}));
        let c =
            serde_json::to_value(cronjob(&inputs(&a), &Names::of("prod-audit")).expect("cronjob"))
                .expect("json");
        assert_eq!(c["spec"]["schedule"], json!("@hourly"));
        assert_eq!(c["spec"]["concurrencyPolicy"], json!("Forbid"));
        let container = &c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["args"], json!(["maintain"]));
        assert_eq!(container["env"][1]["value"], json!("prod_audit_owner"));
        assert!(container["resources"]["limits"]["memory"].is_string());
        let job = &c["spec"]["jobTemplate"];
        assert_eq!(
            job["spec"]["activeDeadlineSeconds"],
            json!(MAINTENANCE_DEADLINE_SECONDS)
        );
        let pod = &job["spec"]["template"];
        assert_eq!(pod["spec"]["enableServiceLinks"], json!(false));
        assert_eq!(
            pod["spec"]["securityContext"]["seccompProfile"]["type"],
            json!("RuntimeDefault")
        );
        // Its pods are not the runtime's: no Service, PDB or health probe selects them.
        let labels = pod["metadata"]["labels"].as_object().expect("labels");
        assert_eq!(job["metadata"]["labels"], pod["metadata"]["labels"]);
        assert!(
            !selector(&a)
                .iter()
                .all(|(k, v)| labels.get(k).and_then(|l| l.as_str()) == Some(v)),
            "{labels:?}"
        );
        assert_eq!(
            maintenance_selector_string(&a),
            "app.kubernetes.io/component=maintenance,app.kubernetes.io/instance=prod-audit,app.kubernetes.io/managed-by=audit-manager-operator,app.kubernetes.io/name=audit-manager-maintenance"
        );
    }

    #[test]
    fn endpoints_and_the_virtual_service_follow_istio_for_every_prefix() {
        use crate::exposure::{endpoint, virtual_service};
        let names = Names::of("prod-audit");
        assert_eq!(
            endpoint(&am(json!({})), &names),
            "http://prod-audit-audit-manager.openg2p.svc/v1/auditmanager/events"
        );
        // The default prefix, the one the docs once suggested, and a custom one: the endpoint
        // is right for each, and the routes rewrite the public paths to the runtime's own.
        for (prefix, public) in [
            (None, "/v1/auditmanager"),
            (Some("/v1/auditmanager/events"), "/v1/auditmanager"),
            (Some("/audit/"), "/audit"),
            (Some("/openg2p/audit"), "/openg2p/audit"),
        ] {
            let mut istio = json!({"enabled": true, "hostname": "audit.example.org"});
            if let Some(p) = prefix {
                istio["pathPrefix"] = json!(p);
            }
            let a = am(json!({ "istio": istio }));
            assert_eq!(
                endpoint(&a, &names),
                format!("https://audit.example.org{public}/events"),
                "{prefix:?}"
            );
            let vs = serde_json::to_value(virtual_service(&a, &names).expect("virtual service"))
                .expect("json");
            assert_eq!(
                crate::exposure::routes_of(&vs),
                [
                    (format!("{public}/events/batch"), paths::BATCH.to_string()),
                    (format!("{public}/events"), paths::EVENTS.to_string()),
                ],
                "only the event paths are routed: {prefix:?}"
            );
            assert_eq!(vs["spec"]["hosts"], json!(["audit.example.org"]));
        }
    }

    #[test]
    fn a_misspelt_key_is_an_error_not_a_silent_loss() {
        let typo = from::<Service>(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"selectr": {"app": "x"}, "ports": [{"port": 80, "targetPrt": "http"}]},
        }));
        let Err(Error::Build { kind, message }) = typo else {
            panic!("a misspelt key must be refused: {typo:?}");
        };
        assert_eq!(kind, "Service");
        assert!(message.contains(".spec.selectr"), "{message}");
        assert!(message.contains(".spec.ports[0].targetPrt"), "{message}");
        let fine = from::<Service>(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x", "namespace": "n", "labels": null},
            "spec": {"selector": {"app": "x"}},
        }));
        assert!(fine.is_ok(), "a null stands for an absent key: {fine:?}");
    }

    fn specs() -> Vec<AuditManager> {
        vec![
            am(json!({})),
            am(json!({"autoscaling": {"enabled": false}, "replicas": 2,
                      "ingest": {"queueMaxSize": 20000, "maxBatchSize": 100, "ackMode": "kafka"}})),
            am(
                json!({"istio": {"enabled": true, "hostname": "audit.example.org"},
                      "retention": {"months": 0, "preCreateMonths": 6, "maintenanceSchedule": "@hourly"},
                      "database": {"host": "pg.db", "port": 6432, "name": "audit", "sslMode": "verify-full",
                                   "adminSecretRef": {"name": "admin"}},
                      "placement": {"nodeSelector": {"disk": "ssd"}, "priorityClassName": "high",
                                    "podLabels": {"team": "g2p"}, "podAnnotations": {"a": "b"}}}),
            ),
            tls_everywhere(),
        ]
    }

    /// CloudNativePG's CA Secret and a client certificate; Strimzi's SCRAM user, a CA from a
    /// ConfigMap, and a TLS user's certificate.
    fn tls_everywhere() -> AuditManager {
        am(json!({
            "database": {"host": "pg-rw.db.svc", "adminSecretRef": {"name": "admin"},
                         "sslMode": "verify-full", "caRef": {"name": "pg-ca"},
                         "clientCertSecretRef": {"name": "pg-client"}},
            "kafka": {"bootstrapServers": "k:9093", "security": {
                "protocol": "SASL_SSL",
                "sasl": {"mechanism": "SCRAM-SHA-256", "username": "audit",
                         "passwordSecretRef": {"name": "audit-user"}},
                "caRef": {"kind": "ConfigMap", "name": "kafka-ca", "key": "bundle.pem"},
                "clientCertSecretRef": {"name": "audit-user", "certKey": "user.crt", "keyKey": "user.key"}}}
        }))
    }

    #[test]
    fn tls_material_is_mounted_read_only_where_the_config_points() {
        let a = tls_everywhere();
        let c = runtime_config(&a);
        let (volumes, mounts) = volumes(&a, &Names::of("prod-audit"));
        let s = &c.kafka.security;
        assert_eq!(
            (s.protocol.as_str(), s.sasl_mechanism.as_str()),
            ("sasl_ssl", "SCRAM-SHA-256")
        );
        // Each configured file is (volume folder, file), and the volume maps the referenced
        // object's key to that file.
        let expected = [
            (&c.database.sslrootcert, "pg-ca", "ca.crt"),
            (&c.database.sslcert, "pg-client", "tls.crt"),
            (&c.database.sslkey, "pg-client", "tls.key"),
            (&s.sasl_password_file, "audit-user", "password"),
            (&s.ssl_ca_file, "kafka-ca", "bundle.pem"),
            (&s.ssl_cert_file, "audit-user", "user.crt"),
            (&s.ssl_key_file, "audit-user", "user.key"),
        ];
        for (path, object, key) in expected {
            let (folder, file) = path.rsplit_once('/').expect("a path");
            let mount = mounts
                .iter()
                .find(|m| m["mountPath"] == folder)
                .unwrap_or_else(|| panic!("{folder} is mounted"));
            assert_eq!(mount["readOnly"], true);
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("its volume");
            let source = volume
                .get("secret")
                .or_else(|| volume.get("configMap"))
                .expect("a Secret or ConfigMap");
            let name = source.get("secretName").or_else(|| source.get("name"));
            assert_eq!(name, Some(&json!(object)), "{path}");
            assert!(
                source["items"]
                    .as_array()
                    .is_some_and(|i| i.contains(&json!({"key": key, "path": file}))),
                "{path}: {source}"
            );
        }
        // Secret files are readable by the runtime's group only.
        let pod_security = pod_security();
        assert_eq!(pod_security["fsGroup"], RUNTIME_UID);
        assert_eq!(pod_security["runAsGroup"], RUNTIME_UID);
        // Nothing is mounted that the spec does not reference.
        assert_eq!(volumes.len(), 6);
        assert_eq!(super::volumes(&am(json!({})), &Names::of("x")).0.len(), 1);
    }

    #[test]
    fn every_child_of_every_spec_builds_without_losing_a_key() {
        for a in specs() {
            let names = Names::of("prod-audit");
            let children =
                children(&a, &names, "s1", false, &Surroundings::default()).expect("children");
            let kinds: Vec<Kind> = children.iter().map(|c| c.kind).collect();
            assert_eq!(kinds, Kind::ALL);
            for c in &children {
                assert_eq!(c.name, c.kind.name(&names));
                if let Some(d) = &c.desired {
                    assert_eq!(d.metadata.name.as_deref(), Some(c.name.as_str()));
                    let kind = d.types.as_ref().map(|t| t.kind.clone());
                    assert_eq!(kind, Some(c.kind.resource().kind));
                }
            }
            let desired = |k: Kind| children.iter().any(|c| c.kind == k && c.desired.is_some());
            assert_eq!(
                desired(Kind::HorizontalPodAutoscaler),
                a.spec.autoscaling.enabled
            );
            assert_eq!(desired(Kind::VirtualService), a.spec.istio.enabled);
            // Held by a conflict: no workload, the rest as usual.
            let held = super::children(&a, &names, "s1", true, &Surroundings::default())
                .expect("children");
            for c in &held {
                let workload = matches!(
                    c.kind,
                    Kind::Deployment | Kind::HorizontalPodAutoscaler | Kind::CronJob
                );
                assert!(
                    !(workload && c.desired.is_some()),
                    "{:?} while held",
                    c.kind
                );
            }
            assert!(
                held.iter()
                    .any(|c| c.kind == Kind::Service && c.desired.is_some())
            );
        }
    }

    #[test]
    fn the_runtime_loads_exactly_what_the_operator_renders() {
        // The mounted material, as a pod sees it (the SASL password is read at load).
        let mounted = tempfile::tempdir().expect("temp dir");
        let root = mounted.path().display().to_string();
        std::fs::create_dir_all(mounted.path().join("kafka-sasl")).expect("mkdir");
        std::fs::write(mounted.path().join("kafka-sasl/password"), "pw\n").expect("write");
        for a in specs() {
            let file = tempfile::NamedTempFile::new().expect("temp file");
            let rendered = runtime_config_file(&a, &Surroundings::default()).expect("config file");
            std::fs::write(file.path(), rendered.replace(TLS_DIR, &root)).expect("write");
            let env = std::collections::BTreeMap::from([
                (
                    runtime::CONFIG_PATH_VAR.to_string(),
                    file.path().display().to_string(),
                ),
                (runtime::env_var("database.password"), "pw".to_string()),
            ]);
            let loaded = Config::load_from(&env).expect("the runtime accepts the rendered file");
            assert_eq!(
                loaded.without_secrets().to_string().replace(&root, TLS_DIR),
                runtime_config(&a).without_secrets().to_string()
            );
            assert_eq!(loaded.database.password, "pw");
            assert_eq!(loaded.server.port, runtime::DEFAULT_PORT);
        }
    }

    #[test]
    fn the_selector_picks_this_resource_only() {
        let a = am(json!({}));
        assert_eq!(
            selector_string(&a),
            "app.kubernetes.io/instance=prod-audit,app.kubernetes.io/name=audit-manager"
        );
        let d = serde_json::to_value(
            deployment(&inputs(&a), &Names::of("prod-audit")).expect("deployment"),
        )
        .expect("json");
        assert_eq!(d["spec"]["selector"]["matchLabels"], json!(selector(&a)));
    }
}
