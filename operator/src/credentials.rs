//! The Kubernetes side of credentials: the admin login from the Secret the spec names, the
//! three role Secrets (passwords generated once, never regenerated), and the finalizer that
//! keeps the admin Secret until teardown no longer needs it.

use audit_manager::db::roles::{self, role_name};
use audit_manager_crds::AuditManager;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::build::{Names, labels, owner};
use crate::status::Problem;

/// The admin login from the Secret named in the spec.
pub async fn admin_login(client: &Client, am: &AuditManager) -> Result<(String, String), Problem> {
    let namespace = am.namespace().unwrap_or_default();
    let r = &am.spec.database.admin_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = secrets.get_opt(&r.name).await.map_err(|e| {
        Problem::new(
            "KubernetesApiError",
            format!("reading Secret {}: {e}", r.name),
        )
    })?;
    let Some(secret) = secret else {
        return Err(Problem::new(
            "AdminSecretMissing",
            format!(
                "Secret {namespace}/{} (spec.database.adminSecretRef) does not exist: create it with keys {} and {}",
                r.name, r.username_key, r.password_key
            ),
        ));
    };
    let value = |key: &str| -> Result<String, Problem> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Problem::new(
                    "AdminSecretIncomplete",
                    format!("Secret {namespace}/{} has no key `{key}`", r.name),
                )
            })
    };
    Ok((value(&r.username_key)?, value(&r.password_key)?))
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
    let Some(secret) = secrets.get_opt(name).await? else {
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
