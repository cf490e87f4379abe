//! Step 1: the database, its three roles and their Secrets.
//!
//! Everything created is marked with a `COMMENT` carrying the resource's UID, so teardown drops
//! only what this resource made and a name clash is reported instead of taken over.

use std::time::Duration;

use audit_manager::db::roles;
use audit_manager_crds::AuditManager;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::builders::{Names, owner, role};
use crate::conditions::Problem;

/// The marker put on the database and roles this resource created.
pub fn marker(am: &AuditManager) -> String {
    format!("audit-manager:{}", am.uid().unwrap_or_default())
}

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
    for (kind, secret_name) in [
        ("owner", &names.owner_secret),
        ("writer", &names.writer_secret),
        ("reader", &names.reader_secret),
    ] {
        let user = role(database, kind);
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
                        "labels": crate::builders::labels(am),
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

fn failed(what: &str, e: &dyn std::fmt::Display) -> Problem {
    Problem::new("DatabaseProvisioningFailed", format!("{what}: {e}"))
}

fn unreachable(am: &AuditManager, e: impl std::fmt::Display) -> Problem {
    Problem::new(
        "DatabaseUnreachable",
        format!(
            "cannot connect to PostgreSQL at {}:{} as the admin: {e}",
            am.spec.database.host, am.spec.database.port
        ),
    )
}

/// Connection options for `user` to `database` on the spec's server.
fn options(
    am: &AuditManager,
    database: &str,
    user: &str,
    password: &str,
) -> sqlx::postgres::PgConnectOptions {
    let d = &am.spec.database;
    sqlx::postgres::PgConnectOptions::new()
        .host(&d.host)
        .port(u16::try_from(d.port).unwrap_or(5432))
        .database(database)
        .username(user)
        .password(password)
        .ssl_mode(
            d.ssl_mode
                .as_str()
                .parse()
                .unwrap_or(sqlx::postgres::PgSslMode::Prefer),
        )
        .application_name("audit-manager-operator")
}

/// One admin connection to the `postgres` database, for creating and dropping databases and
/// roles.
pub async fn admin_pool(am: &AuditManager, admin: (&str, &str)) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options(am, "postgres", admin.0, admin.1))
        .await
}

async fn connect(
    am: &AuditManager,
    database: &str,
    user: &str,
    password: &str,
) -> Result<PgConnection, Problem> {
    let options = options(am, database, user, password);
    tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| unreachable(am, "timed out after 10 s"))?
    .map_err(|e| unreachable(am, e))
}

/// What exists under a name and whether this resource made it.
async fn comment_of(
    pool: &PgPool,
    catalog: &str,
    name: &str,
) -> Result<Option<Option<String>>, sqlx::Error> {
    let sql = match catalog {
        "role" => "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
        _ => "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    };
    sqlx::query_scalar::<_, Option<String>>(sql)
        .bind(name.to_string())
        .fetch_optional(pool)
        .await
}

/// Creates (or confirms) the roles and the database, then migrates and grants as the owner.
/// Returns true when this call created the database.
pub async fn ensure(
    am: &AuditManager,
    admin: (&str, &str),
    roles: &roles::Roles,
    database: &str,
) -> Result<bool, Problem> {
    // sqlx's futures over `&PgPool` are Send only for specific lifetimes, which the
    // controller's spawned reconcile cannot prove; run the step on a blocking thread instead.
    let owned = (
        am.clone(),
        (admin.0.to_string(), admin.1.to_string()),
        roles.clone(),
        database.to_string(),
    );
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let (am, admin, roles, database) = owned;
        handle.block_on(ensure_here(&am, (&admin.0, &admin.1), &roles, &database))
    })
    .await
    .map_err(|e| Problem::new("InternalError", format!("database step panicked: {e}")))?
}

async fn ensure_here(
    am: &AuditManager,
    admin: (&str, &str),
    roles: &roles::Roles,
    database: &str,
) -> Result<bool, Problem> {
    let mark = marker(am);
    let pool = admin_pool(am, admin)
        .await
        .map_err(|e| unreachable(am, e))?;
    for (name, _) in [&roles.owner, &roles.writer, &roles.reader] {
        let existing = comment_of(&pool, "role", name)
            .await
            .map_err(|e| failed("checking roles", &e))?;
        if let Some(comment) = existing
            && comment.as_deref() != Some(mark.as_str())
        {
            return Err(Problem::new(
                "DatabaseConflict",
                format!(
                    "role {name} already exists and was not created by this AuditManager; it is left alone: set spec.database.name to another name, or drop the role"
                ),
            ));
        }
    }
    let existing = comment_of(&pool, "database", database)
        .await
        .map_err(|e| failed("checking the database", &e))?;
    if let Some(comment) = existing
        && comment.as_deref() != Some(mark.as_str())
    {
        return Err(Problem::new(
            "DatabaseConflict",
            format!(
                "database {database} already exists and was not created by this AuditManager; it is left alone: set spec.database.name to another name"
            ),
        ));
    }
    roles::ensure_roles(&pool, roles, &mark)
        .await
        .map_err(|e| failed("creating roles", &e))?;
    let created = roles::ensure_database(&pool, database, &roles.owner.0, &mark)
        .await
        .map_err(|e| failed("creating the database", &e))?;
    pool.close().await;
    let mut conn = connect(am, database, admin.0, admin.1).await?;
    roles::migrate_as_owner(
        &mut conn,
        roles,
        database,
        am.spec.retention.months.max(0) as u32,
        am.spec.retention.pre_create_months.max(0) as u32,
    )
    .await
    .map_err(|e| failed("migrating as the owner", &e))?;
    let _ = conn.close().await;
    Ok(created)
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
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await?;
    Ok(())
}
