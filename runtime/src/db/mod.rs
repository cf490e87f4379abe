//! PostgreSQL: connections, the embedded migrations, roles, partitions and the row writer.

pub mod adopt;
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

/// Connection options for `user`/`password` on the configured server and `database`, with
/// the TLS settings read as libpq reads them (see [`ssl_mode`]).
pub fn options(
    config: &DatabaseConfig,
    database: &str,
    user: &str,
    password: &str,
) -> Result<PgConnectOptions, DbError> {
    let mut options = PgConnectOptions::new()
        .host(&config.host)
        .port(config.port)
        .database(database)
        .username(user)
        .password(password)
        .ssl_mode(ssl_mode(config)?)
        .application_name("audit-manager");
    if let Some(pem) = &config.sslrootcert_pem {
        options = options.ssl_root_cert_from_pem(pem.clone().into_bytes());
    } else if !config.sslrootcert.is_empty() {
        options = options.ssl_root_cert(&config.sslrootcert);
    }
    if let Some(pem) = &config.sslcert_pem {
        options = options.ssl_client_cert_from_pem(pem.as_bytes());
    } else if !config.sslcert.is_empty() {
        options = options.ssl_client_cert(&config.sslcert);
    }
    if let Some(pem) = &config.sslkey_pem {
        options = options.ssl_client_key_from_pem(pem.as_bytes());
    } else if !config.sslkey.is_empty() {
        options = options.ssl_client_key(&config.sslkey);
    }
    Ok(options)
}

/// The effective TLS mode. As in libpq: `require` with a root certificate verifies the chain
/// (as `verify-ca`), and `verify-ca` without one is refused; `verify-full` without one uses
/// the system trust store (libpq's `sslrootcert=system`).
pub fn ssl_mode(config: &DatabaseConfig) -> Result<PgSslMode, DbError> {
    let mode = PgSslMode::from_str(&config.sslmode).map_err(|_| {
        DbError::Invalid(format!(
            "database.sslmode `{}` is not one of disable, prefer, require, verify-ca, verify-full",
            config.sslmode
        ))
    })?;
    let has_ca = config.sslrootcert_pem.is_some() || !config.sslrootcert.is_empty();
    Ok(match mode {
        PgSslMode::Require if has_ca => PgSslMode::VerifyCa,
        PgSslMode::VerifyCa if !has_ca => {
            return Err(DbError::Invalid(
                "database.sslmode verify-ca needs the CA that signed the server's certificate"
                    .into(),
            ));
        }
        PgSslMode::Allow => {
            return Err(DbError::Invalid(
                "database.sslmode `allow` is not supported: use disable, prefer or require".into(),
            ));
        }
        mode => mode,
    })
}

/// What a connection in `mode` guarantees, for status messages and logs.
pub fn protection(mode: PgSslMode, encrypted: bool) -> &'static str {
    match (encrypted, mode) {
        (false, _) => "NOT encrypted: passwords and audit rows cross the network in cleartext",
        (true, PgSslMode::VerifyFull) => {
            "encrypted; the server's certificate is verified against the CA and the host name"
        }
        (true, PgSslMode::VerifyCa) => {
            "encrypted; the server's certificate is verified against the CA, not the host name"
        }
        (true, _) => {
            "encrypted but the server is NOT verified (sslmode require or prefer without a CA): a machine in the middle can read it"
        }
    }
}

/// Whether this session is encrypted, and with which protocol (`pg_stat_ssl`).
pub async fn session_tls(conn: impl sqlx::PgExecutor<'_>) -> Result<Option<String>, DbError> {
    let row: Option<(bool, Option<String>)> =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(conn)
            .await
            .context(|| "reading pg_stat_ssl".into())?;
    Ok(match row {
        Some((true, version)) => Some(version.unwrap_or_else(|| "TLS".into())),
        _ => None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(sslmode: &str, ca: bool) -> Result<PgSslMode, DbError> {
        ssl_mode(&DatabaseConfig {
            sslmode: sslmode.into(),
            sslrootcert: if ca { "/ca.crt".into() } else { String::new() },
            ..DatabaseConfig::default()
        })
    }

    #[test]
    fn ssl_modes_follow_libpq() {
        assert!(matches!(mode("require", false), Ok(PgSslMode::Require)));
        // A root certificate makes require check the chain.
        assert!(matches!(mode("require", true), Ok(PgSslMode::VerifyCa)));
        assert!(matches!(mode("verify-ca", true), Ok(PgSslMode::VerifyCa)));
        assert!(matches!(mode("verify-ca", false), Err(DbError::Invalid(_))));
        assert!(matches!(
            mode("verify-full", false),
            Ok(PgSslMode::VerifyFull)
        ));
        assert!(matches!(mode("allow", false), Err(DbError::Invalid(_))));
        assert!(matches!(mode("on", false), Err(DbError::Invalid(_))));
        assert!(protection(PgSslMode::Prefer, false).starts_with("NOT encrypted"));
        assert!(protection(PgSslMode::Require, true).contains("NOT verified"));
    }
}
