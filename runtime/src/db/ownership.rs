//! Who made a database or role: the operator marks what it creates with a `COMMENT` carrying
//! the resource's UID, so it drops only what it made and reports a name clash instead of
//! taking the other object over.

use sqlx::PgPool;

use super::roles::Roles;
use super::{Context, DbError, ident};

/// The marker put on the database and roles created for the resource with this UID.
pub fn marker(uid: &str) -> String {
    format!("audit-manager:{uid}")
}

/// A cluster-wide object that can carry the marker.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    Database(&'a str),
    Role(&'a str),
}

impl std::fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Database(name) => write!(f, "database {name}"),
            Object::Role(name) => write!(f, "role {name}"),
        }
    }
}

/// Whether an object exists and who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Absent,
    /// It carries the marker asked about.
    Marked,
    /// It exists without that marker: someone else's.
    Other,
}

/// The one marker lookup.
pub async fn owner_of(pool: &PgPool, object: Object<'_>, mark: &str) -> Result<Owner, DbError> {
    let (sql, name) = match object {
        Object::Role(name) => (
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            name,
        ),
        Object::Database(name) => (
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            name,
        ),
    };
    let comment: Option<Option<String>> = sqlx::query_scalar(sql)
        .bind(name.to_string())
        .fetch_optional(pool)
        .await
        .context(|| format!("checking {object}"))?;
    Ok(match comment {
        None => Owner::Absent,
        Some(c) if c.as_deref() == Some(mark) => Owner::Marked,
        Some(_) => Owner::Other,
    })
}

/// Refuses when the database or a role already exists without `mark`: provisioning would
/// otherwise take over someone else's object.
pub async fn ensure_unclaimed(
    pool: &PgPool,
    database: &str,
    roles: &Roles,
    mark: &str,
) -> Result<(), DbError> {
    let objects = [&roles.owner, &roles.writer, &roles.reader]
        .map(|(name, _)| Object::Role(name))
        .into_iter()
        .chain([Object::Database(database)]);
    for object in objects {
        if owner_of(pool, object, mark).await? == Owner::Other {
            return Err(DbError::NotOurs(object.to_string()));
        }
    }
    Ok(())
}

/// Claims the database and roles for `mark`, atomically with their creation: under an
/// advisory lock named after the database (so two resources naming the same database, even
/// through two operators, take turns), it refuses what someone else made, creates and marks
/// the roles (each in one transaction), then the database. A database left unmarked by an
/// interrupted claim (created, not yet commented) is finished when its owner is this claim's
/// marked owner role. Says whether the database was created.
pub async fn claim(
    pool: &PgPool,
    database: &str,
    roles: &Roles,
    mark: &str,
) -> Result<bool, DbError> {
    // The pool has one connection: the session lock is held on it until released below (or
    // until the connection closes, if this task dies).
    let key = format!("audit-manager:claim:{database}");
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&key)
        .execute(pool)
        .await
        .context(|| format!("locking the claim of {database}"))?;
    let result = claim_locked(pool, database, roles, mark).await;
    sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&key)
        .execute(pool)
        .await
        .context(|| format!("unlocking the claim of {database}"))?;
    result
}

async fn claim_locked(
    pool: &PgPool,
    database: &str,
    roles: &Roles,
    mark: &str,
) -> Result<bool, DbError> {
    finish_interrupted(pool, database, &roles.owner.0, mark).await?;
    ensure_unclaimed(pool, database, roles, mark).await?;
    super::roles::ensure_roles(pool, roles, mark).await?;
    super::roles::ensure_database(pool, database, &roles.owner.0, mark).await
}

/// Marks `database` when it has no comment at all and belongs to `owner`, itself marked: the
/// claim that created it was interrupted before its COMMENT.
async fn finish_interrupted(
    pool: &PgPool,
    database: &str,
    owner: &str,
    mark: &str,
) -> Result<(), DbError> {
    let unmarked_ours: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
                         WHERE d.datname = $1 AND r.rolname = $2
                           AND shobj_description(d.oid, 'pg_database') IS NULL
                           AND shobj_description(r.oid, 'pg_authid') = $3)",
    )
    .bind(database)
    .bind(owner)
    .bind(mark)
    .fetch_one(pool)
    .await
    .context(|| format!("checking database {database}"))?;
    if unmarked_ours {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "COMMENT ON DATABASE {} IS {}",
            ident(database),
            super::literal(mark)
        )))
        .execute(pool)
        .await
        .context(|| format!("marking database {database}"))?;
    }
    Ok(())
}

/// What teardown dropped and what it left because someone else made it.
#[derive(Debug, Default)]
pub struct Dropped {
    pub dropped: Vec<String>,
    pub left: Vec<String>,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dropped.is_empty() {
            write!(f, "dropped nothing")?;
        } else {
            write!(f, "dropped {}", self.dropped.join(", "))?;
        }
        if !self.left.is_empty() {
            write!(
                f,
                "; left alone (not created by this resource): {}",
                self.left.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Drops the database and the roles that carry `mark`, leaving everything else alone. Roles'
/// remaining objects elsewhere are reassigned to the admin first. Works with an admin that has
/// only CREATEROLE and CREATEDB.
pub async fn drop_marked(
    pool: &PgPool,
    database: &str,
    roles: &[String],
    mark: &str,
) -> Result<Dropped, DbError> {
    let mut report = Dropped::default();
    match owner_of(pool, Object::Database(database), mark).await? {
        Owner::Absent => {}
        Owner::Marked => {
            // FORCE refuses new connections and terminates the remaining sessions first.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(database)
            )))
            .execute(pool)
            .await
            .context(|| format!("DROP DATABASE {database}"))?;
            report.dropped.push(format!("database {database}"));
        }
        Owner::Other => report.left.push(format!("database {database}")),
    }
    let admin: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await
        .context(|| "reading the admin role".into())?;
    for role in roles {
        match owner_of(pool, Object::Role(role), mark).await? {
            Owner::Absent => {}
            Owner::Marked => {
                // REASSIGN needs the privileges of both roles: an admin that is not a
                // superuser (CREATEROLE only) takes membership first, which it may grant
                // itself for a role it created.
                let sql = format!(
                    "GRANT {role} TO {admin}; REASSIGN OWNED BY {role} TO {admin}; \
                     DROP OWNED BY {role}; DROP ROLE {role}",
                    role = ident(role),
                    admin = ident(&admin)
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(pool)
                    .await
                    .context(|| format!("dropping role {role}"))?;
                report.dropped.push(format!("role {role}"));
            }
            Owner::Other => report.left.push(format!("role {role}")),
        }
    }
    Ok(report)
}
