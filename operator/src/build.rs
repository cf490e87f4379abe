//! Pure builders: the desired state of every namespaced child of an `AuditManager`, from its
//! spec alone (plus the checksums of config and secrets). Applied with server-side apply.

use std::collections::BTreeMap;

use audit_manager_crds::AuditManager;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The runtime's HTTP port.
pub const PORT: i32 = 8000;
/// Seconds the runtime may take to drain its queue on SIGTERM (its shutdown timeout + slack).
pub const DRAIN_SECONDS: i64 = 60;

/// Names of everything created for one resource.
#[derive(Debug, Clone)]
pub struct Names {
    pub app: String,
    pub config: String,
    pub maintenance: String,
    pub owner_secret: String,
    pub writer_secret: String,
    pub reader_secret: String,
}

impl Names {
    pub fn of(name: &str) -> Names {
        Names {
            app: format!("{name}-audit-manager"),
            config: format!("{name}-audit-manager-config"),
            maintenance: format!("{name}-audit-manager-maintenance"),
            owner_secret: format!("{name}-db-owner"),
            writer_secret: format!("{name}-db-writer"),
            reader_secret: format!("{name}-db-reader"),
        }
    }
}

/// Role names in PostgreSQL for a database.
pub fn role(database: &str, kind: &str) -> String {
    format!("{database}_{kind}")
}

/// What the builders need besides the resource.
pub struct Inputs<'a> {
    pub am: &'a AuditManager,
    /// SHA-256 of the rendered config and of the credentials, so a change rolls the pods.
    pub config_hash: String,
    pub secret_hash: String,
}

fn name_of(am: &AuditManager) -> String {
    am.meta().name.clone().unwrap_or_default()
}

fn namespace_of(am: &AuditManager) -> String {
    am.meta().namespace.clone().unwrap_or_default()
}

/// The controller owner reference every child carries.
pub fn owner(am: &AuditManager) -> Option<OwnerReference> {
    am.controller_owner_ref(&())
}

/// Labels of every child; the selector uses the first two.
pub fn labels(am: &AuditManager) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "audit-manager".into()),
        ("app.kubernetes.io/instance".into(), name_of(am)),
        (
            "app.kubernetes.io/managed-by".into(),
            "audit-manager-operator".into(),
        ),
    ])
}

fn selector(am: &AuditManager) -> Value {
    json!({
        "app.kubernetes.io/name": "audit-manager",
        "app.kubernetes.io/instance": name_of(am),
    })
}

fn metadata(am: &AuditManager, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace_of(am),
        "labels": labels(am),
        "ownerReferences": owner(am).into_iter().collect::<Vec<_>>(),
    })
}

/// SHA-256 hex of some bytes.
pub fn hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The runtime configuration file rendered from the spec (no secrets: the password comes from
/// the writer Secret through the environment).
pub fn runtime_config(am: &AuditManager) -> String {
    let spec = &am.spec;
    let database = spec.database_name(&name_of(am));
    let config = json!({
        "audit_manager": {
            "server": {"host": "0.0.0.0", "port": PORT, "shutdown_timeout_seconds": DRAIN_SECONDS - 10},
            "ingest": {
                "queue_max_size": spec.ingest.queue_max_size,
                "max_batch_size": spec.ingest.max_batch_size,
                "ack_mode": spec.ingest.ack_mode,
            },
            "kafka": {
                "bootstrap_servers": spec.kafka.bootstrap_servers,
                "topic": spec.kafka.events_topic.name,
                "dlq_topic": spec.kafka.dlq_topic.name,
                "consumer_group": spec.kafka.consumer_group,
            },
            "database": {
                "host": spec.database.host,
                "port": spec.database.port,
                "name": database,
                "user": role(&database, "writer"),
                "sslmode": spec.database.ssl_mode.as_str(),
                "partition_pre_create_months": spec.retention.pre_create_months,
                "partition_retention_months": spec.retention.months,
            },
            // Partition maintenance runs in the CronJob as the owner role.
            "components": {"ingest": true, "consumer": true, "maintenance": false},
            "log": {"level": "info", "format": "json"},
        }
    });
    serde_yaml::to_string(&config).unwrap_or_default()
}

pub fn config_map(am: &AuditManager, names: &Names) -> ConfigMap {
    from(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(am, &names.config),
        "data": {"config.yaml": runtime_config(am)},
    }))
}

fn image(am: &AuditManager) -> String {
    format!("{}:{}", am.spec.image.repository, am.spec.image.tag)
}

fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

pub fn deployment(inputs: &Inputs<'_>, names: &Names) -> Deployment {
    let am = inputs.am;
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
                "terminationGracePeriodSeconds": DRAIN_SECONDS,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
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
                        {"name": "CONFIG_PATH", "value": "/etc/audit-manager/config.yaml"},
                        {"name": "AUDIT_MANAGER__DATABASE__PASSWORD",
                         "valueFrom": {"secretKeyRef": {"name": names.writer_secret, "key": "password"}}},
                    ],
                    "ports": [{"name": "http", "containerPort": PORT}],
                    "readinessProbe": {"httpGet": {"path": "/v1/auditmanager/health/ready", "port": "http"},
                                       "periodSeconds": 5, "failureThreshold": 2},
                    "livenessProbe": {"httpGet": {"path": "/v1/auditmanager/health/live", "port": "http"},
                                      "periodSeconds": 10, "failureThreshold": 6},
                    "resources": spec.resources,
                    "securityContext": container_security(),
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/audit-manager", "readOnly": true}],
                }],
                "volumes": [{"name": "config", "configMap": {"name": names.config}}],
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

pub fn service(am: &AuditManager, names: &Names) -> Service {
    from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(am, &names.app),
        "spec": {
            "selector": selector(am),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        }
    }))
}

pub fn hpa(am: &AuditManager, names: &Names) -> HorizontalPodAutoscaler {
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

pub fn pdb(am: &AuditManager, names: &Names) -> PodDisruptionBudget {
    from(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": metadata(am, &names.app),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(am)}},
    }))
}

pub fn cronjob(inputs: &Inputs<'_>, names: &Names) -> CronJob {
    let am = inputs.am;
    let database = am.spec.database_name(&name_of(am));
    from(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": metadata(am, &names.maintenance),
        "spec": {
            "schedule": am.spec.retention.maintenance_schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 2,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 3,
                "template": {
                    "metadata": {"labels": labels(am)},
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                        "containers": [{
                            "name": "maintain",
                            "image": image(am),
                            "imagePullPolicy": am.spec.image.pull_policy,
                            "args": ["maintain"],
                            "env": [
                                {"name": "CONFIG_PATH", "value": "/etc/audit-manager/config.yaml"},
                                {"name": "AUDIT_MANAGER__DATABASE__USER", "value": role(&database, "owner")},
                                {"name": "AUDIT_MANAGER__DATABASE__PASSWORD",
                                 "valueFrom": {"secretKeyRef": {"name": names.owner_secret, "key": "password"}}},
                            ],
                            "securityContext": container_security(),
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/audit-manager", "readOnly": true}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": names.config}}],
                    }
                }
            }}
        }
    }))
}

/// The Istio VirtualService routing the path prefix to the Service.
pub fn virtual_service(am: &AuditManager, names: &Names) -> DynamicObject {
    let istio = &am.spec.istio;
    from(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": metadata(am, &names.app),
        "spec": {
            "hosts": [istio.hostname.clone().unwrap_or_default()],
            "gateways": [istio.gateway],
            "http": [{
                "match": [{"uri": {"prefix": istio.path_prefix}}],
                "route": [{"destination": {
                    "host": format!("{}.{}.svc.cluster.local", names.app, namespace_of(am)),
                    "port": {"number": 80}}}],
            }]
        }
    }))
}

/// Istio's VirtualService kind (not in k8s-openapi).
pub fn virtual_service_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    }
}

/// The in-cluster endpoint emitters POST to.
pub fn endpoint(am: &AuditManager, names: &Names) -> String {
    match (&am.spec.istio.enabled, &am.spec.istio.hostname) {
        (true, Some(host)) => format!("https://{host}{}events", am.spec.istio.path_prefix),
        _ => format!(
            "http://{}.{}.svc/v1/auditmanager/events",
            names.app,
            namespace_of(am)
        ),
    }
}

/// Builds a typed object from JSON built in this module; the shapes are fixed here, so a
/// failure is a bug in this file, caught by its tests.
fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value)
        .unwrap_or_else(|e| panic!("builder produced an invalid object: {e}"))
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
        let text = runtime_config(&a);
        let v: Value = serde_yaml::from_str(&text).expect("yaml");
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
    fn the_deployment_is_hardened_probed_and_rolls_on_changes() {
        let a = am(json!({}));
        let names = Names::of("prod-audit");
        let d = serde_json::to_value(deployment(&inputs(&a), &names)).expect("json");
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
        let d = serde_json::to_value(deployment(&inputs(&fixed), &names)).expect("json");
        assert_eq!(d["spec"]["replicas"], json!(3));
    }

    #[test]
    fn the_cronjob_runs_maintain_as_the_owner_one_at_a_time() {
        let a = am(json!({"retention": {"maintenanceSchedule": "@hourly"}}));
        let c = serde_json::to_value(cronjob(&inputs(&a), &Names::of("prod-audit"))).expect("json");
        assert_eq!(c["spec"]["schedule"], json!("@hourly"));
        assert_eq!(c["spec"]["concurrencyPolicy"], json!("Forbid"));
        let container = &c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["args"], json!(["maintain"]));
        assert_eq!(container["env"][1]["value"], json!("prod_audit_owner"));
    }

    #[test]
    fn endpoints_and_the_virtual_service_follow_istio() {
        let names = Names::of("prod-audit");
        assert_eq!(
            endpoint(&am(json!({})), &names),
            "http://prod-audit-audit-manager.openg2p.svc/v1/auditmanager/events"
        );
        let a = am(json!({"istio": {"enabled": true, "hostname": "audit.example.org"}}));
        assert_eq!(
            endpoint(&a, &names),
            "https://audit.example.org/v1/auditmanager/events"
        );
        let vs = serde_json::to_value(virtual_service(&a, &names)).expect("json");
        assert_eq!(
            vs["spec"]["http"][0]["match"][0]["uri"]["prefix"],
            json!("/v1/auditmanager/")
        );
        assert_eq!(vs["spec"]["hosts"], json!(["audit.example.org"]));
    }
}
