//! The operator's PostgreSQL client: connects as the admin from the spec, then provisions or
//! drops through the runtime's `db` module, where all SQL lives.

use std::collections::BTreeMap;
use std::time::Duration;

use audit_manager::db::adopt::{self, Found};
use audit_manager::db::ownership::{self, Dropped};
use audit_manager::db::partitions::Month;
use audit_manager::db::{self, DbError, roles};
use audit_manager_crds::AuditManager;
use kube::ResourceExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection, PgPool};

use crate::connections::Connections;
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

fn unreachable(c: &Connections, e: impl std::fmt::Display) -> Problem {
    let d = &c.database;
    // A TLS failure names its cause (unknown CA, host name mismatch, server without TLS).
    let tls = match db::ssl_mode(d) {
        Ok(mode) if !matches!(mode, PgSslMode::Disable) => format!(" (sslMode {})", d.sslmode),
        _ => String::new(),
    };
    Problem::new(
        "DatabaseUnreachable",
        format!(
            "cannot connect to PostgreSQL at {}:{}{tls} as the admin: {e}",
            d.host, d.port
        ),
    )
}

/// Connection options for `user` to `database`: the runtime's settings (`db::options`) with
/// the referenced TLS material in memory.
fn options(
    c: &Connections,
    database: &str,
    user: &str,
    password: &str,
) -> Result<PgConnectOptions, Problem> {
    db::options(&c.database, database, user, password)
        .map(|o| o.application_name("audit-manager-operator"))
        .map_err(|e| Problem::new("InvalidSpec", e.to_string()))
}

/// One admin connection to the `postgres` database, for creating and dropping databases and
/// roles.
async fn admin_pool(c: &Connections, admin: (&str, &str)) -> Result<PgPool, Problem> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options(c, "postgres", admin.0, admin.1)?)
        .await
        .map_err(|e| unreachable(c, e))
}

async fn connect(
    c: &Connections,
    database: &str,
    user: &str,
    password: &str,
) -> Result<PgConnection, Problem> {
    let options = options(c, database, user, password)?;
    tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| unreachable(c, "timed out after 10 s"))?
    .map_err(|e| unreachable(c, e))
}

/// The monthly partitions of `audit_events`, read as the reader role (the catalog is all it
/// needs): on every reconcile, because maintenance runs in a CronJob and can fail there.
pub async fn partitions(
    connections: &Connections,
    reader: (String, String),
    database: String,
) -> Result<Vec<Month>, Problem> {
    let c = connections.clone();
    on_own_thread(move || async move {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options(&c, &database, &reader.0, &reader.1)?)
            .await
            .map_err(|e| Problem::new("PartitionsUnknown", unreachable(&c, e).message))?;
        let months = db::partitions::existing(&pool)
            .await
            .map_err(|e| Problem::new("PartitionsUnknown", e.to_string()));
        pool.close().await;
        months
    })
    .await
}

/// What provisioning did, and what the admin connection was protected by.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensured {
    pub created: bool,
    /// For the condition message: encrypted or not, verified or not.
    pub protection: String,
    /// What was adopted, for the Event (`audit.openg2p.org/adopt: database`).
    pub adopted: Option<String>,
}

/// Adoption asked for: the UIDs of the AuditManagers that exist, with their `namespace/name`
/// (a database still marked by one of them is not taken).
pub type Live = BTreeMap<String, String>;

/// Creates (or confirms) the roles and the database, then migrates and grants as the owner.
/// With `adopt`, a database retained by a deleted AuditManager or made by the original service
/// is taken over first. Says whether this call created the database, what it adopted, and
/// what protects the admin connection.
pub async fn ensure(
    am: &AuditManager,
    connections: &Connections,
    admin: (String, String),
    roles: roles::Roles,
    database: String,
    adopt: Option<Live>,
) -> Result<Ensured, Problem> {
    let am = am.clone();
    let c = connections.clone();
    on_own_thread(move || async move {
        ensure_here(&am, &c, (&admin.0, &admin.1), &roles, &database, adopt).await
    })
    .await
}

async fn ensure_here(
    am: &AuditManager,
    c: &Connections,
    admin: (&str, &str),
    roles: &roles::Roles,
    database: &str,
    adopt: Option<Live>,
) -> Result<Ensured, Problem> {
    let mark = marker(am);
    let pool = admin_pool(c, admin).await?;
    let tls = db::session_tls(&pool)
        .await
        .map_err(|e| failed("reading the connection's TLS state", &e))?;
    let mode = db::ssl_mode(&c.database).map_err(|e| failed("reading sslMode", &e))?;
    let protection = match &tls {
        Some(version) => format!("{version}, {}", db::protection(mode, true)),
        None => db::protection(mode, false).to_string(),
    };
    let taken = match adopt {
        Some(live) => take_over(&pool, database, roles, &mark, &live).await?,
        None => None,
    };
    let created = ownership::claim(&pool, database, roles, &mark)
        .await
        .map_err(|e| failed("creating the roles and the database", &e))?;
    pool.close().await;
    let mut conn = connect(c, database, admin.0, admin.1).await?;
    if let Some(Taken::Original(original)) = &taken {
        adopt::reassign_original(&mut conn, original, &roles.owner.0)
            .await
            .map_err(|e| failed("handing the original's tables to the owner", &e))?;
    }
    let migrated = roles::migrate_as_owner(
        &mut conn,
        roles,
        database,
        am.spec.retention.months.max(0) as u32,
        am.spec.retention.pre_create_months.max(0) as u32,
    )
    .await
    .map_err(|e| failed("migrating as the owner", &e))?;
    let _ = conn.close().await;
    let moved = &migrated.adopted;
    let adopted = taken.map(|t| match t {
        Taken::Retained(uid) => format!(
            "adopted database {database}, retained by the deleted AuditManager {uid}: its marker and roles are this resource's now"
        ),
        Taken::Original(original) => format!(
            "adopted database {database} of the original service (owned by {original}): its objects pass to {}; the schema was upgraded in place, partitions {} moved with their {} rows",
            roles.owner.0,
            if moved.partitions.is_empty() { "(none)".to_string() } else { moved.partitions.join(", ") },
            moved.rows
        ),
    });
    Ok(Ensured {
        created,
        protection,
        adopted,
    })
}

/// What [`take_over`] took.
enum Taken {
    /// Retained by the deleted AuditManager with this UID.
    Retained(String),
    /// The original service's, owned by this role.
    Original(String),
}

/// Takes over the database asked to be adopted, when it is a retained one whose AuditManager
/// is gone, or the original's; a database of a live AuditManager, or with a comment that is no
/// marker of this project, is a conflict.
async fn take_over(
    pool: &PgPool,
    database: &str,
    roles: &roles::Roles,
    mark: &str,
    live: &Live,
) -> Result<Option<Taken>, Problem> {
    let conflict = |why: String| {
        Problem::new(
            "DatabaseConflict",
            format!("database {database} cannot be adopted: {why}"),
        )
    };
    match adopt::inspect(pool, database, mark)
        .await
        .map_err(|e| failed("inspecting the database to adopt", &e))?
    {
        Found::Absent | Found::Ours => Ok(None),
        Found::Retained { uid } => match live.get(&uid) {
            Some(owner) => Err(conflict(format!(
                "it belongs to AuditManager {owner}, which still exists; delete that one with deletionPolicy.database: Retain first"
            ))),
            None => {
                adopt::take_over_retained(pool, database, roles, &uid, mark)
                    .await
                    .map_err(|e| failed("adopting the retained database", &e))?;
                Ok(Some(Taken::Retained(uid)))
            }
        },
        Found::Original { owner } => {
            adopt::take_over_original(pool, database, roles, &owner, mark)
                .await
                .map_err(|e| failed("adopting the original's database", &e))?;
            Ok(Some(Taken::Original(owner)))
        }
        Found::Foreign => Err(conflict(
            "its comment is not a marker of this project, so it is someone else's".into(),
        )),
    }
}

/// Drops the database and the roles this resource created; what someone else made is left
/// and named in the report.
pub async fn drop_owned(
    am: &AuditManager,
    connections: &Connections,
    admin: (String, String),
    database: String,
    roles: Vec<String>,
) -> Result<Dropped, Problem> {
    let am = am.clone();
    let c = connections.clone();
    on_own_thread(move || async move {
        let pool = admin_pool(&c, (&admin.0, &admin.1)).await?;
        let report = ownership::drop_marked(&pool, &database, &roles, &marker(&am))
            .await
            .map_err(|e| Problem::new("DatabaseTeardownFailed", e.to_string()));
        pool.close().await;
        report
    })
    .await
}
