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
/// remaining objects elsewhere are reassigned to the admin first.
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
                let sql = format!(
                    "REASSIGN OWNED BY {role} TO {admin}; DROP OWNED BY {role}; DROP ROLE {role}",
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
