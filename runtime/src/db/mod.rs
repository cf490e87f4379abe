//! PostgreSQL: connections, the embedded migrations, roles, partitions and the row writer.

pub mod ownership;
pub mod partitions;
pub mod roles;
pub mod rows;

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::DatabaseConfig;

/// The versioned schema in `migrations/`, compiled into the binary; the operator runs the same.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Why a database step failed, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} already exists and was not created by this AuditManager")]
    NotOurs(String),
}

/// Adds what was being done to a sqlx error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, DbError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, DbError> {
        self.map_err(|source| DbError::Sql {
            context: what(),
            source,
        })
    }
}

/// Connection options for `user`/`password` on the configured server and `database`.
pub fn options(
    config: &DatabaseConfig,
    database: &str,
    user: &str,
    password: &str,
) -> Result<PgConnectOptions, DbError> {
    let ssl = PgSslMode::from_str(&config.sslmode).map_err(|_| {
        DbError::Invalid(format!(
            "database.sslmode `{}` is not one of disable, allow, prefer, require, verify-ca, verify-full",
            config.sslmode
        ))
    })?;
    Ok(PgConnectOptions::new()
        .host(&config.host)
        .port(config.port)
        .database(database)
        .username(user)
        .password(password)
        .ssl_mode(ssl)
        .application_name("audit-manager"))
}

/// A pool for the configured user and database. Connects lazily: the service starts (and
/// stays ready) while the database is down.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let options = options(config, &config.name, &config.user, &config.password)?;
    Ok(PgPoolOptions::new()
        .max_connections(config.pool_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Applies the pending migrations (sqlx holds an advisory lock while it does, so concurrent
/// runs wait for each other and the second finds nothing to do).
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    let before: Vec<i64> = applied(pool).await.unwrap_or_default();
    MIGRATOR.run(pool).await?;
    let after = applied(pool).await?;
    Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
}

async fn applied(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
        .context(|| "reading applied migrations".into())
}

/// Quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
