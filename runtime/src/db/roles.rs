//! The three roles of SPEC §2.3 and their privileges, shared by `audit-manager migrate
//! --create-roles` and the operator:
//! - owner: owns the database and schema objects; runs migrations and partition maintenance;
//! - writer: CONNECT, USAGE, INSERT and SELECT on `audit_events` (the serving pods);
//! - reader: CONNECT, USAGE, SELECT (investigators).
//!
//! Neither writer nor reader may UPDATE, DELETE, TRUNCATE or create objects.

use sqlx::PgPool;

use super::{Context, DbError, ident, literal};

/// The three role kinds, in the order they are created.
pub const KINDS: [&str; 3] = ["owner", "writer", "reader"];

/// The PostgreSQL role of `kind` for `database`: `<database>_<kind>`.
pub fn role_name(database: &str, kind: &str) -> String {
    format!("{database}_{kind}")
}

/// Names and passwords of the three roles.
#[derive(Debug, Clone)]
pub struct Roles {
    pub owner: (String, String),
    pub writer: (String, String),
    pub reader: (String, String),
}

/// Creates the roles that are missing and sets their passwords; existing roles are altered,
/// never dropped. Needs a connection as a role with CREATEROLE.
pub async fn ensure_roles(admin: &PgPool, roles: &Roles, comment: &str) -> Result<(), DbError> {
    for (name, password) in [&roles.owner, &roles.writer, &roles.reader] {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(name.clone())
                .fetch_one(admin)
                .await
                .context(|| format!("checking role {name}"))?;
        let verb = if exists { "ALTER" } else { "CREATE" };
        // An existing role only gets its login and password: naming NOSUPERUSER again would be
        // refused to an admin that is not a superuser ("must be superuser to change superuser
        // attribute"), and the attributes were set when the role was created.
        let attributes = if exists {
            "LOGIN"
        } else {
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT"
        };
        let mut sql = format!(
            "{verb} ROLE {} WITH {attributes} PASSWORD {};",
            ident(name),
            literal(password)
        );
        if !exists {
            // Created and marked in one transaction: a role never exists unmarked, even if
            // this process dies in between.
            sql = format!(
                "BEGIN; {sql} COMMENT ON ROLE {} IS {}; COMMIT;",
                ident(name),
                literal(comment)
            );
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(admin)
            .await
            .context(|| format!("{verb} ROLE {name}"))?;
    }
    Ok(())
}

/// Creates `database` owned by the owner role when missing. Returns whether it was created.
pub async fn ensure_database(
    admin: &PgPool,
    database: &str,
    owner: &str,
    comment: &str,
) -> Result<bool, DbError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database.to_string())
            .fetch_one(admin)
            .await
            .context(|| format!("checking database {database}"))?;
    if exists {
        return Ok(false);
    }
    // The admin must be a member of the owner role to give it a database.
    let admin_user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(admin)
        .await
        .context(|| "reading the admin role".into())?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT {} TO {}",
        ident(owner),
        ident(&admin_user)
    )))
    .execute(admin)
    .await
    .context(|| format!("granting {owner} to {admin_user}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {} OWNER {}",
        ident(database),
        ident(owner)
    )))
    .execute(admin)
    .await
    .context(|| format!("CREATE DATABASE {database}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "COMMENT ON DATABASE {} IS {}",
        ident(database),
        literal(comment)
    )))
    .execute(admin)
    .await
    .context(|| format!("marking database {database}"))?;
    Ok(true)
}

/// The privileges of SPEC §2.3, applied inside the audit database (after migrations, as a
/// role that is or contains the owner). Idempotent.
pub fn grants_sql(database: &str, roles: &Roles) -> String {
    let (owner, writer, reader) = (
        ident(&roles.owner.0),
        ident(&roles.writer.0),
        ident(&roles.reader.0),
    );
    let db = ident(database);
    format!(
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {owner};
         GRANT CONNECT ON DATABASE {db} TO {writer}, {reader};
         GRANT USAGE ON SCHEMA public TO {writer}, {reader};
         REVOKE ALL ON audit_events FROM {writer}, {reader};
         GRANT INSERT, SELECT ON audit_events TO {writer};
         GRANT SELECT ON audit_events TO {reader};
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {reader};"
    )
}

/// On a connection to the audit database as a member of the owner role: `SET ROLE` owner, apply
/// the migrations, grant the writer and reader privileges and create the partitions, so every
/// object belongs to the owner and ingest works at once. Shared by `migrate --create-roles`
/// and the operator.
pub async fn migrate_as_owner(
    conn: &mut sqlx::PgConnection,
    roles: &Roles,
    database: &str,
    retention_months: u32,
    pre_create_months: u32,
) -> Result<Migrated, DbError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {}",
        ident(&roles.owner.0)
    )))
    .execute(&mut *conn)
    .await
    .context(|| {
        format!(
            "SET ROLE {} (the admin must be a member of it)",
            roles.owner.0
        )
    })?;
    // An original's table (SPEC §5) is set aside before the migrations create this project's,
    // and its partitions move under it before maintenance creates any month.
    super::adopt::set_aside_original(conn).await?;
    super::MIGRATOR.run(&mut *conn).await?;
    let adopted = super::adopt::move_original_partitions(conn).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(grants_sql(database, roles)))
        .execute(&mut *conn)
        .await
        .context(|| "granting the writer and reader privileges".into())?;
    let report = super::partitions::maintain(
        conn,
        chrono::Utc::now(),
        retention_months,
        pre_create_months,
    )
    .await?;
    sqlx::raw_sql("RESET ROLE")
        .execute(&mut *conn)
        .await
        .context(|| "RESET ROLE".into())?;
    Ok(Migrated {
        partitions: report,
        adopted,
    })
}

/// What [`migrate_as_owner`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub partitions: super::partitions::Report,
    /// The original's partitions moved under this project's table (none usually).
    pub adopted: super::adopt::Moved,
}
