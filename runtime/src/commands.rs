//! The one-shot subcommands: `migrate`, `maintain` and `dlq replay`, `count`, `list`.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use crate::config::Config;
use crate::db::{self, partitions, roles};
use crate::sink::dlq::Filter;

/// Role names and passwords for `migrate --create-roles`, from the environment:
/// `AUDIT_MANAGER_{OWNER,WRITER,READER}_ROLE` (default `<database>_owner` etc.) and
/// `AUDIT_MANAGER_{OWNER,WRITER,READER}_PASSWORD` (required).
pub fn roles_from_env(database: &str) -> anyhow::Result<roles::Roles> {
    let one = |kind: &str| -> anyhow::Result<(String, String)> {
        let upper = kind.to_uppercase();
        let name = std::env::var(format!("AUDIT_MANAGER_{upper}_ROLE"))
            .unwrap_or_else(|_| roles::role_name(database, kind));
        let password_var = format!("AUDIT_MANAGER_{upper}_PASSWORD");
        let password = std::env::var(&password_var)
            .ok()
            .filter(|p| !p.is_empty())
            .with_context(|| {
                format!("--create-roles needs {password_var} (the {kind} role's password)")
            })?;
        Ok((name, password))
    };
    Ok(roles::Roles {
        owner: one("owner")?,
        writer: one("writer")?,
        reader: one("reader")?,
    })
}

/// `audit-manager migrate`: applies `migrations/`. With `create_roles`, connects as the
/// configured (admin) user, creates the three roles and the database when missing, and applies
/// migrations, grants and an initial partition maintenance as the owner role.
pub async fn migrate(config: &Config, create_roles: bool) -> anyhow::Result<()> {
    let d = &config.database;
    if !create_roles {
        let pool = db::pool(d)?;
        let applied = db::migrate(&pool).await?;
        println!(
            "migrations: {} applied ({:?}), schema up to date",
            applied.len(),
            applied
        );
        return Ok(());
    }
    let roles = roles_from_env(&d.name)?;
    let comment = "created by audit-manager migrate --create-roles";
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db::options(d, "postgres", &d.user, &d.password)?)
        .await
        .with_context(|| {
            format!(
                "connecting to {}:{} as {} (database.user)",
                d.host, d.port, d.user
            )
        })?;
    roles::ensure_roles(&admin, &roles, comment).await?;
    let created = roles::ensure_database(&admin, &d.name, &roles.owner.0, comment).await?;
    admin.close().await;
    println!(
        "roles {}, {}, {} ready; database {} {}",
        roles.owner.0,
        roles.writer.0,
        roles.reader.0,
        d.name,
        if created {
            "created"
        } else {
            "already existed"
        }
    );
    let mut conn = PgConnection::connect_with(&db::options(d, &d.name, &d.user, &d.password)?)
        .await
        .with_context(|| format!("connecting to database {}", d.name))?;
    as_owner(&mut conn, &roles, &d.name, d).await
}

/// Migrations, grants and initial partitions, as the owner role (so it owns every object).
pub async fn as_owner(
    conn: &mut PgConnection,
    roles: &roles::Roles,
    database: &str,
    d: &crate::config::DatabaseConfig,
) -> anyhow::Result<()> {
    let migrated = roles::migrate_as_owner(
        conn,
        roles,
        database,
        d.partition_retention_months,
        d.partition_pre_create_months,
    )
    .await?;
    if !migrated.adopted.partitions.is_empty() {
        println!(
            "the original's schema upgraded: partitions {} moved with their {} rows",
            migrated.adopted.partitions.join(", "),
            migrated.adopted.rows
        );
    }
    println!(
        "migrations applied, privileges granted; partitions: {}",
        migrated.partitions
    );
    Ok(())
}

/// `audit-manager maintain`: one run, or one every `every` until SIGTERM/SIGINT.
pub async fn maintain(
    config: &Config,
    every: Option<Duration>,
    now: Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    let d = &config.database;
    loop {
        let mut conn = PgConnection::connect_with(&db::options(d, &d.name, &d.user, &d.password)?)
            .await
            .with_context(|| {
                format!("connecting to database {} on {}:{}", d.name, d.host, d.port)
            })?;
        let report = partitions::maintain(
            &mut conn,
            now.unwrap_or_else(Utc::now),
            d.partition_retention_months,
            d.partition_pre_create_months,
        )
        .await?;
        println!("partition maintenance: {report}");
        let _ = conn.close().await;
        let Some(every) = every else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// `audit-manager dlq replay`: every record not replayed before (tracked by a consumer group),
/// or, with a filter, every record that matches (the group untouched).
pub async fn dlq_replay(config: &Config, filter: &Filter, dry_run: bool) -> anyhow::Result<()> {
    let producer = crate::kafka::producer::build_producer(&config.kafka)
        .context("creating the Kafka producer")?;
    let (from, to) = (&config.kafka.dlq_topic, &config.kafka.topic);
    let records = match filter.is_empty() {
        true => crate::sink::dlq::replay(config, &producer, dry_run)
            .await
            .map(|r| r.records),
        false => crate::sink::dlq::replay_matching(config, &producer, filter, dry_run).await,
    }
    .with_context(|| format!("replaying {from} into {to}"))?;
    match dry_run {
        true => println!("would replay {records} record(s) from {from} to {to} (dry run)"),
        false => println!("replayed {records} record(s) from {from} to {to}"),
    }
    Ok(())
}

/// `audit-manager dlq count`: the matching records, in all and by reason.
pub async fn dlq_count(config: &Config, filter: &Filter) -> anyhow::Result<()> {
    let mut by_kind = std::collections::BTreeMap::<&'static str, u64>::new();
    let total = crate::sink::dlq::scan(config, filter, |d, _| {
        *by_kind
            .entry(crate::sink::dlq::kind(
                d.reason.as_deref().unwrap_or_default(),
            ))
            .or_default() += 1;
        async { Ok(()) }
    })
    .await
    .with_context(|| format!("reading {}", config.kafka.dlq_topic))?;
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "{total} record(s) in {}{}",
        config.kafka.dlq_topic,
        match kinds.is_empty() {
            true => String::new(),
            false => format!(" (by reason: {})", kinds.join(", ")),
        }
    );
    Ok(())
}

/// `audit-manager dlq list`: the matching records as JSON lines (at most `limit`).
pub async fn dlq_list(config: &Config, filter: &Filter, limit: u64) -> anyhow::Result<()> {
    let mut shown = 0;
    let total = crate::sink::dlq::scan(config, filter, |d, _| {
        let line = (shown < limit).then(|| serde_json::to_string(&d));
        shown += 1;
        async move {
            if let Some(Ok(line)) = line {
                println!("{line}");
            }
            Ok(())
        }
    })
    .await
    .with_context(|| format!("reading {}", config.kafka.dlq_topic))?;
    if total > limit {
        eprintln!(
            "{} more record(s) match; raise --limit to see them",
            total - limit
        );
    }
    Ok(())
}
