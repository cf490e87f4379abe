//! The operator's PostgreSQL client: connects as the admin from the spec, then provisions or
//! drops through the runtime's `db` module, where all SQL lives.

use std::time::Duration;

use audit_manager::db::ownership::{self, Dropped};
use audit_manager::db::{DbError, roles};
use audit_manager_crds::AuditManager;
use kube::ResourceExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::context::on_own_thread;
use crate::status::Problem;

/// The marker put on the database and roles this resource created.
pub fn marker(am: &AuditManager) -> String {
    ownership::marker(&am.uid().unwrap_or_default())
}

fn failed(what: &str, e: &DbError) -> Problem {
    match e {
        DbError::NotOurs(object) => Problem::new(
            "DatabaseConflict",
            format!(
                "{object} already exists and was not created by this AuditManager; it is left alone: set spec.database.name to another name{}",
                if object.starts_with("role") {
                    ", or drop the role"
                } else {
                    ""
                }
            ),
        ),
        e => Problem::new("DatabaseProvisioningFailed", format!("{what}: {e}")),
    }
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
async fn admin_pool(am: &AuditManager, admin: (&str, &str)) -> Result<PgPool, sqlx::Error> {
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

/// Creates (or confirms) the roles and the database, then migrates and grants as the owner.
/// Returns true when this call created the database.
pub async fn ensure(
    am: &AuditManager,
    admin: (String, String),
    roles: roles::Roles,
    database: String,
) -> Result<bool, Problem> {
    let am = am.clone();
    on_own_thread(
        move || async move { ensure_here(&am, (&admin.0, &admin.1), &roles, &database).await },
    )
    .await
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
    ownership::ensure_unclaimed(&pool, database, roles, &mark)
        .await
        .map_err(|e| failed("checking what exists", &e))?;
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

/// Drops the database and the roles this resource created; what someone else made is left
/// and named in the report.
pub async fn drop_owned(
    am: &AuditManager,
    admin: (String, String),
    database: String,
    roles: Vec<String>,
) -> Result<Dropped, Problem> {
    let am = am.clone();
    on_own_thread(move || async move {
        let d = &am.spec.database;
        let pool = admin_pool(&am, (&admin.0, &admin.1)).await.map_err(|e| {
            Problem::new(
                "DatabaseUnreachable",
                format!(
                    "cannot connect to PostgreSQL at {}:{} to drop the database: {e}",
                    d.host, d.port
                ),
            )
        })?;
        let report = ownership::drop_marked(&pool, &database, &roles, &marker(&am))
            .await
            .map_err(|e| Problem::new("DatabaseTeardownFailed", e.to_string()));
        pool.close().await;
        report
    })
    .await
}
