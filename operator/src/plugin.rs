//! `kubectl audit`: what an admin asks of an AuditManager, answered from the cluster. The
//! status as text; DLQ commands run by `audit-manager dlq` inside a ready runtime pod (it has
//! the Kafka settings, certificates and credentials); a reader session; password rotation.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use audit_manager::db::roles;
use audit_manager_crds::{AuditManager, CaSource};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use crate::build::{self, Names};
use crate::observe::ready_pod_ips;

/// What a plugin command could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AuditManager {namespace}/{name} not found (kubectl get auditmanagers -n {namespace})")]
    NotFound { namespace: String, name: String },
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Unusable(String),
}

/// The resource `namespace/name`.
pub async fn resource(client: &Client, namespace: &str, name: &str) -> Result<AuditManager, Error> {
    Api::<AuditManager>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        })
}

/// `kubectl audit status`: the conditions, the endpoint, replicas and lag per partition.
pub fn status_text(am: &AuditManager) -> String {
    let mut out = String::new();
    let status = am.status.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "AuditManager {}/{} (generation {}, observed {})",
        am.namespace().unwrap_or_default(),
        am.name_any(),
        am.metadata.generation.unwrap_or(0),
        status
            .observed_generation
            .map_or("never".to_string(), |g| g.to_string())
    );
    let _ = writeln!(
        out,
        "Endpoint:  {}",
        status.endpoint.as_deref().unwrap_or("(not yet)")
    );
    let _ = writeln!(
        out,
        "Replicas:  {} ready of {}",
        status.ready_replicas.unwrap_or(0),
        status.replicas.unwrap_or(0)
    );
    match &status.consumer_lag {
        Some(lag) => {
            let parts: Vec<String> = lag
                .partitions
                .iter()
                .map(|(p, n)| format!("{p}={n}"))
                .collect();
            let _ = writeln!(
                out,
                "Lag:       {} (threshold {}){}",
                lag.total,
                am.spec.lag_threshold,
                match parts.is_empty() {
                    true => String::new(),
                    false => format!("; per partition: {}", parts.join(" ")),
                }
            );
        }
        None => {
            let _ = writeln!(out, "Lag:       (not measured yet)");
        }
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:<7} {:<28} MESSAGE",
        "CONDITION", "STATUS", "REASON"
    );
    for c in &status.conditions {
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<28} {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    out
}

/// A ready runtime pod of the resource, to run `audit-manager dlq` in.
pub async fn ready_pod(client: &Client, am: &AuditManager) -> Result<String, Error> {
    let namespace = am.namespace().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&build::selector_string(am)))
        .await?;
    let ready = ready_pod_ips(&pods.items);
    pods.items
        .iter()
        .find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some_and(|ip| ready.contains(ip))
        })
        .map(|p| p.name_any())
        .ok_or_else(|| {
            Error::Unusable(format!(
                "no runtime pod of {namespace}/{} is ready; `kubectl audit status {}` says why",
                am.name_any(),
                am.name_any()
            ))
        })
}

/// How `psql` reaches the database as the reader: libpq's environment variables, and the
/// CA bundle to write to the file `PGSSLROOTCERT` names.
#[derive(Debug, PartialEq)]
pub struct ReaderSession {
    pub env: BTreeMap<&'static str, String>,
    pub ca: Option<String>,
}

/// The reader's login from its Secret, the server and TLS settings from the spec; `host` and
/// `port` override them (a `kubectl port-forward`, a bastion).
pub async fn reader_session(
    client: &Client,
    am: &AuditManager,
    host: Option<String>,
    port: Option<u16>,
) -> Result<ReaderSession, Error> {
    let namespace = am.namespace().unwrap_or_default();
    let names = Names::of(&am.name_any());
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get_opt(&names.reader_secret)
        .await?
        .ok_or_else(|| {
            Error::Unusable(format!(
                "Secret {namespace}/{} does not exist yet: the operator creates it with the database (DatabaseReady)",
                names.reader_secret
            ))
        })?;
    let data = secret.data.unwrap_or_default();
    let value = |key: &str| -> Result<String, Error> {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| {
                Error::Unusable(format!(
                    "Secret {namespace}/{} has no key {key}",
                    names.reader_secret
                ))
            })
    };
    let database = &am.spec.database;
    let env = BTreeMap::from([
        ("PGHOST", host.unwrap_or(value("host")?)),
        ("PGPORT", port.map_or(value("port")?, |p| p.to_string())),
        ("PGUSER", value("username")?),
        ("PGPASSWORD", value("password")?),
        ("PGDATABASE", value("database")?),
        ("PGSSLMODE", database.ssl_mode.as_str().to_string()),
        ("PGAPPNAME", "kubectl-audit".to_string()),
    ]);
    let ca = match &database.ca_ref {
        None => None,
        Some(r) => {
            let key = r.key.clone();
            let text = match r.kind {
                CaSource::Secret => Api::<Secret>::namespaced(client.clone(), &namespace)
                    .get(&r.name)
                    .await?
                    .data
                    .and_then(|d| {
                        d.get(&key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    }),
                CaSource::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                    .get(&r.name)
                    .await?
                    .data
                    .and_then(|d| d.get(&key).cloned()),
            };
            Some(text.ok_or_else(|| {
                Error::Unusable(format!("{:?} {} has no key {key}", r.kind, r.name))
            })?)
        }
    };
    Ok(ReaderSession { env, ca })
}

/// `kubectl audit rotate-passwords`: deletes the role Secrets of `kinds`; the operator
/// generates new passwords, sets them on the roles and rolls the pods. Returns the Secrets
/// deleted.
pub async fn rotate_passwords(
    client: &Client,
    am: &AuditManager,
    kinds: &[String],
) -> Result<Vec<String>, Error> {
    let namespace = am.namespace().unwrap_or_default();
    let names = Names::of(&am.name_any());
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let mut deleted = Vec::new();
    for (kind, secret) in roles::KINDS.iter().zip(names.role_secrets()) {
        if !kinds.is_empty() && !kinds.iter().any(|k| k == kind) {
            continue;
        }
        if secrets.get_opt(secret).await?.is_some() {
            secrets.delete(secret, &DeleteParams::default()).await?;
            deleted.push(secret.clone());
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_status_lists_conditions_endpoint_replicas_and_lag() {
        let am: AuditManager = serde_json::from_value(json!({
            "apiVersion": "audit.openg2p.org/v1alpha1", "kind": "AuditManager",
            "metadata": {"name": "audit", "namespace": "openg2p", "generation": 2},
            "spec": {"database": {"host": "pg", "adminSecretRef": {"name": "a"}},
                     "kafka": {"bootstrapServers": "k:9092"}},
            "status": {"observedGeneration": 2, "endpoint": "http://audit.openg2p.svc/v1/auditmanager/events",
                       "replicas": 2, "readyReplicas": 1,
                       "consumerLag": {"total": 12, "partitions": {"0": 5, "1": 7}},
                       "conditions": [{"type": "Ready", "status": "False", "reason": "NotReady",
                                       "message": "Healthy: NoReadyPods", "lastTransitionTime": "2026-12-01T00:00:00Z"}]}
        }))
        .expect("resource");
        let text = status_text(&am);
        assert!(
            text.contains("AuditManager openg2p/audit (generation 2, observed 2)"),
            "{text}"
        );
        assert!(text.contains("Replicas:  1 ready of 2"), "{text}");
        assert!(
            text.contains("Lag:       12 (threshold 10000); per partition: 0=5 1=7"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("Ready")
                && l.contains("NotReady")
                && l.ends_with("Healthy: NoReadyPods")),
            "{text}"
        );
    }
}
