//! The Kubernetes side of credentials: which Secrets may be sent to which servers (the opt-in
//! label and allowed hosts), the admin login, the three role Secrets (passwords generated once,
//! never regenerated), and the finalizer that keeps the admin Secret until teardown no longer
//! needs it.

use audit_manager::db::roles::{self, role_name};
use audit_manager_crds::{ALLOWED_HOSTS, AuditManager, CREDENTIALS_LABEL};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::build::{Names, labels, owner};
use crate::status::Problem;

/// The label selector of the Secrets marked as credentials: the only ones the operator lists,
/// watches or reads content from, besides its own role Secrets.
pub fn credentials_selector() -> String {
    format!("{CREDENTIALS_LABEL}=true")
}

/// A server credentials are sent to: a host and a port, as the spec names them.
pub type Server = (String, u16);

/// `kafka.bootstrapServers` as servers (port 9092 when none is given).
pub fn kafka_servers(bootstrap: &str) -> Vec<Server> {
    bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') => match port.parse() {
                Ok(port) => (host.to_string(), port),
                Err(_) => (s.to_string(), 9092),
            },
            _ => (s.to_string(), 9092),
        })
        .collect()
}

/// Whether the allowed-hosts annotation's value lets credentials go to `server`: an entry is a
/// host (any port) or `host:port`, compared without regard to case.
pub fn host_allowed(allowed: &str, server: &Server) -> bool {
    let (host, port) = server;
    let with_port = format!("{host}:{port}");
    allowed
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .any(|e| e.eq_ignore_ascii_case(host) || e.eq_ignore_ascii_case(&with_port))
}

/// A Secret of `namespace` that may be sent to every one of `servers`: it carries the
/// credentials label and lists each server in its allowed-hosts annotation. The content of a
/// Secret without the label is never fetched: the API server returns it only through the
/// label-selected list, and its absence there is told apart from a missing Secret by its
/// metadata alone. `field` is the spec field that names it.
pub async fn permitted_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    field: &str,
    servers: &[Server],
) -> Result<Secret, Problem> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_error =
        |e: kube::Error| Problem::new("KubernetesApiError", format!("reading Secret {name}: {e}"));
    let params = ListParams::default()
        .labels(&credentials_selector())
        .fields(&format!("metadata.name={name}"));
    let marked = secrets.list(&params).await.map_err(api_error)?.items.pop();
    let Some(secret) = marked else {
        let exists = secrets
            .get_metadata_opt(name)
            .await
            .map_err(api_error)?
            .is_some();
        return Err(if exists {
            Problem::new(
                "CredentialsNotPermitted",
                format!(
                    "Secret {namespace}/{name} ({field}) is not marked for use as credentials, so the operator does not read it: whoever administers the server labels it {CREDENTIALS_LABEL}=true and annotates it {ALLOWED_HOSTS} with the servers it may be sent to (docs/security.md)"
                ),
            )
        } else {
            Problem::new(
                "CredentialsMissing",
                format!("Secret {namespace}/{name} ({field}) does not exist"),
            )
        });
    };
    let allowed = secret
        .annotations()
        .get(ALLOWED_HOSTS)
        .cloned()
        .unwrap_or_default();
    let refused: Vec<String> = servers
        .iter()
        .filter(|s| !host_allowed(&allowed, s))
        .map(|(h, p)| format!("{h}:{p}"))
        .collect();
    if !refused.is_empty() {
        return Err(Problem::new(
            "CredentialsNotPermitted",
            format!(
                "Secret {namespace}/{name} ({field}) may not be sent to {}: its annotation {ALLOWED_HOSTS} lists {}; whoever administers the server adds it there (docs/security.md)",
                refused.join(", "),
                if allowed.trim().is_empty() {
                    "no server".to_string()
                } else {
                    format!("\"{}\"", allowed.trim())
                }
            ),
        ));
    }
    Ok(secret)
}

/// One key of a Secret's data, as text.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .filter(|v| !v.trim().is_empty())
}

/// The admin login from the Secret named in the spec, when it may be sent to the spec's
/// database server.
pub async fn admin_login(client: &Client, am: &AuditManager) -> Result<(String, String), Problem> {
    let namespace = am.namespace().unwrap_or_default();
    let r = &am.spec.database.admin_secret_ref;
    let server = (am.spec.database.host.clone(), am.spec.database.port as u16);
    let secret = permitted_secret(
        client,
        &namespace,
        &r.name,
        "spec.database.adminSecretRef",
        &[server],
    )
    .await
    .map_err(|p| match p.reason {
        "CredentialsMissing" => Problem::new(
            "AdminSecretMissing",
            format!(
                "{}: create it with keys {} and {}",
                p.message, r.username_key, r.password_key
            ),
        ),
        _ => p,
    })?;
    let value = |key: &str| -> Result<String, Problem> {
        secret_value(&secret, key).ok_or_else(|| {
            Problem::new(
                "AdminSecretIncomplete",
                format!("Secret {namespace}/{} has no key `{key}`", r.name),
            )
        })
    };
    Ok((value(&r.username_key)?, value(&r.password_key)?))
}

/// Whether the resource names `secret` as credentials (admin login, SASL password or a client
/// certificate): a change of such a Secret reconciles the resource.
pub fn references(am: &AuditManager, secret: &str) -> bool {
    let spec = &am.spec;
    let security = &spec.kafka.security;
    spec.database.admin_secret_ref.name == secret
        || spec
            .database
            .client_cert_secret_ref
            .as_ref()
            .is_some_and(|r| r.name == secret)
        || security
            .client_cert_secret_ref
            .as_ref()
            .is_some_and(|r| r.name == secret)
        || security
            .sasl
            .as_ref()
            .is_some_and(|s| s.password_secret_ref.name == secret)
}

/// The three roles' credentials, from their Secrets; passwords are generated once and never
/// regenerated.
pub async fn credentials(
    client: &Client,
    am: &AuditManager,
    names: &Names,
    database: &str,
) -> Result<roles::Roles, Problem> {
    let namespace = am.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut out = Vec::new();
    for (kind, secret_name) in roles::KINDS.into_iter().zip(names.role_secrets()) {
        let user = role_name(database, kind);
        let password = match secrets.get_opt(secret_name).await.map_err(|e| Problem::new("KubernetesApiError", format!("reading Secret {secret_name}: {e}")))? {
            Some(existing) => existing
                .data
                .as_ref()
                .and_then(|d| d.get("password"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .ok_or_else(|| Problem::new("SecretCorrupt", format!("Secret {namespace}/{secret_name} has no password; delete it to have a new one generated")))?,
            None => {
                let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                let secret: Secret = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {
                        "name": secret_name, "namespace": namespace,
                        "labels": labels(am),
                        "ownerReferences": owner(am).into_iter().collect::<Vec<_>>(),
                    },
                    "type": "Opaque",
                    "stringData": {
                        "username": user, "password": password, "database": database,
                        "host": am.spec.database.host, "port": am.spec.database.port.to_string(),
                    }
                }))
                .map_err(|e| Problem::new("InternalError", e.to_string()))?;
                match secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => password,
                    // Created meanwhile by another reconcile: use that one.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        let existing = secrets.get(secret_name).await.map_err(|e| Problem::new("KubernetesApiError", e.to_string()))?;
                        existing
                            .data
                            .and_then(|d| d.get("password").cloned())
                            .map(|b: ByteString| String::from_utf8_lossy(&b.0).into_owned())
                            .unwrap_or_default()
                    }
                    Err(e) => return Err(Problem::new("KubernetesApiError", format!("creating Secret {secret_name}: {e}"))),
                }
            }
        };
        out.push((user, password));
    }
    let mut it = out.into_iter();
    let (Some(owner), Some(writer), Some(reader)) = (it.next(), it.next(), it.next()) else {
        return Err(Problem::new("InternalError", "three roles expected".into()));
    };
    Ok(roles::Roles {
        owner,
        writer,
        reader,
    })
}

/// The finalizer this resource puts on the admin Secret it uses: deleting the namespace
/// deletes that Secret too, and teardown still needs it to drop the database.
pub fn admin_secret_finalizer(am: &AuditManager) -> String {
    format!("audit.openg2p.org/used-by-{}", am.uid().unwrap_or_default())
}

/// Keeps the admin Secret until this resource's teardown is done.
pub async fn hold_admin_secret(client: &Client, am: &AuditManager) -> Result<(), kube::Error> {
    set_admin_secret_finalizer(client, am, true).await
}

/// Lets the admin Secret go (end of teardown).
pub async fn release_admin_secret(client: &Client, am: &AuditManager) -> Result<(), kube::Error> {
    set_admin_secret_finalizer(client, am, false).await
}

async fn set_admin_secret_finalizer(
    client: &Client,
    am: &AuditManager,
    hold: bool,
) -> Result<(), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &am.namespace().unwrap_or_default());
    let name = &am.spec.database.admin_secret_ref.name;
    let ours = admin_secret_finalizer(am);
    // Metadata only: the finalizer is all this needs.
    let Some(secret) = secrets.get_metadata_opt(name).await? else {
        return Ok(());
    };
    let mut finalizers = secret.metadata.finalizers.clone().unwrap_or_default();
    let has = finalizers.contains(&ours);
    if has == hold {
        return Ok(());
    }
    if hold {
        finalizers.push(ours);
    } else {
        finalizers.retain(|f| *f != ours);
    }
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": secret.metadata.resource_version}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_read_as_hosts_and_ports() {
        assert_eq!(
            kafka_servers("kafka-0.kafka:9093, kafka-1.kafka:9093,plain"),
            [
                ("kafka-0.kafka".to_string(), 9093),
                ("kafka-1.kafka".to_string(), 9093),
                ("plain".to_string(), 9092)
            ]
        );
        assert_eq!(kafka_servers("[::1]:9094"), [("[::1]".to_string(), 9094)]);
    }

    #[test]
    fn allowed_hosts_name_a_host_or_a_host_and_port() {
        let pg = ("Postgres.DB.svc".to_string(), 5432);
        assert!(host_allowed("postgres.db.svc", &pg), "any port, any case");
        assert!(host_allowed("other, postgres.db.svc:5432", &pg));
        assert!(!host_allowed("postgres.db.svc:6432", &pg), "another port");
        assert!(!host_allowed("postgres.db", &pg), "another name");
        assert!(!host_allowed("", &pg), "nothing listed allows nothing");
        assert!(!host_allowed("*", &pg), "no wildcard");
    }
}
