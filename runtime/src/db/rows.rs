//! The batch insert of `audit_events` rows (mapped from events in [`crate::event::row`]).

use sqlx::PgPool;

use super::{Context, DbError};
use crate::event::normalize::Normalization;
pub use crate::event::row::Row;

const COPY: &str = "COPY audit_events (id, source, type, subject, occurred_at, actor_type, actor_id, \
                    resource_type, resource_id, action, outcome, reason, trace_id, details, \
                    extensions, normalized, principal) FROM STDIN";

/// The `normalized` column as a PostgreSQL array literal (`{time_defaulted,...}`; the names
/// need no quoting), None when nothing was normalized.
fn normalized_literal(reasons: &[Normalization]) -> Option<String> {
    if reasons.is_empty() {
        return None;
    }
    let names: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    Some(format!("{{{}}}", names.join(",")))
}

/// What became of a batch: rows inserted, and the rows PostgreSQL refused for their content
/// (their index in the batch and the database's message).
#[derive(Debug, Default, PartialEq)]
pub struct Stored {
    pub inserted: u64,
    pub rejected: Vec<(usize, String)>,
}

/// Stores `rows` in one transaction; rows already present (same source, id, occurred_at) are
/// skipped. Returns the rows inserted.
///
/// The fast path is one `COPY` (about twice the rows per second of a multi-row INSERT here, see
/// `make bench`); COPY cannot skip duplicates, so a batch that meets one (a replay after a
/// crash or a rebalance) fails whole, leaves nothing behind, and is stored again by
/// `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`.
///
/// A batch PostgreSQL refuses for the content of a row (a data exception, a constraint, a
/// value too large to index) would fail again on every retry and stop the sink for good; it is
/// stored row by row instead, and the refused rows are returned for the DLQ. Any other error
/// (connection, shutdown, disk) is returned: the caller keeps the batch and retries it whole.
pub async fn insert(pool: &PgPool, rows: &[Row]) -> Result<Stored, DbError> {
    if rows.is_empty() {
        return Ok(Stored::default());
    }
    let whole = match copy(pool, rows).await {
        Err(e) if is_unique_violation(&e) => insert_skipping_duplicates(pool, rows).await,
        other => other,
    };
    let failed = match whole {
        Ok(inserted) => {
            return Ok(Stored {
                inserted,
                rejected: Vec::new(),
            });
        }
        Err(e) => e,
    };
    if !refuses_the_content(&failed) {
        return Err(failed).context(|| format!("inserting {} rows into audit_events", rows.len()));
    }
    tracing::warn!(error = %failed, rows = rows.len(), "PostgreSQL refused a row of the batch; storing it row by row");
    let mut stored = Stored::default();
    for (i, row) in rows.iter().enumerate() {
        match insert_skipping_duplicates(pool, std::slice::from_ref(row)).await {
            Ok(n) => stored.inserted += n,
            Err(e) if refuses_the_content(&e) => {
                let message = e
                    .as_database_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                stored.rejected.push((i, message));
            }
            Err(e) => {
                return Err(e).context(|| {
                    format!(
                        "inserting row {i} of {} into audit_events, one by one",
                        rows.len()
                    )
                });
            }
        }
    }
    Ok(stored)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    sqlstate(e).is_some_and(|c| c == "23505")
}

/// SQLSTATE classes that blame the row, not the database: 22 data exception, 23 integrity
/// constraint (a duplicate is skipped, never refused), 54 program limit exceeded.
fn refuses_the_content(e: &sqlx::Error) -> bool {
    sqlstate(e).is_some_and(|c| {
        c != "23505" && (c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
    })
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

async fn copy(pool: &PgPool, rows: &[Row]) -> Result<u64, sqlx::Error> {
    use sqlx::postgres::PgPoolCopyExt;
    let mut text = String::with_capacity(rows.len() * 320);
    for row in rows {
        copy_line(&mut text, row);
    }
    let mut copy = pool.copy_in_raw(COPY).await?;
    if let Err(e) = copy.send(text.as_bytes()).await {
        let _ = copy.abort("sending the batch failed").await;
        return Err(e);
    }
    copy.finish().await
}

/// One row in COPY text format.
fn copy_line(out: &mut String, r: &Row) {
    let occurred = r
        .occurred_at
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let normalized = normalized_literal(&r.normalized);
    let fields: [Option<&str>; 17] = [
        Some(&r.id),
        Some(&r.source),
        Some(&r.r#type),
        r.subject.as_deref(),
        Some(&occurred),
        Some(&r.actor_type),
        Some(&r.actor_id),
        r.resource_type.as_deref(),
        r.resource_id.as_deref(),
        Some(&r.action),
        Some(&r.outcome),
        r.reason.as_deref(),
        r.trace_id.as_deref(),
        r.details.as_deref(),
        r.extensions.as_deref(),
        normalized.as_deref(),
        r.principal.as_deref(),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        match field {
            None => out.push_str("\\N"),
            Some(v) => push_escaped(out, v),
        }
    }
    out.push('\n');
}

/// Appends `v` with COPY text's separators and backslash escaped, copying the runs between
/// them whole (the escaped bytes are ASCII, so every cut is on a character boundary).
fn push_escaped(out: &mut String, v: &str) {
    let mut start = 0;
    for (i, b) in v.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&v[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&v[start..]);
}

/// The multi-row INSERT that skips rows already stored.
async fn insert_skipping_duplicates(pool: &PgPool, rows: &[Row]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    let result = sqlx::query(
        "INSERT INTO audit_events (id, source, type, subject, occurred_at, actor_type, actor_id,
                                   resource_type, resource_id, action, outcome, reason, trace_id,
                                   details, extensions, normalized, principal)
         SELECT id, source, type, subject, occurred_at, actor_type, actor_id, resource_type,
                resource_id, action, outcome, reason, trace_id, details, extensions,
                normalized::text[], principal
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                     $11::text[], $12::text[], $13::text[], $14::text[]::jsonb[],
                     $15::text[]::jsonb[], $16::text[], $17::text[])
           AS u(id, source, type, subject, occurred_at, actor_type, actor_id, resource_type,
                resource_id, action, outcome, reason, trace_id, details, extensions, normalized,
                principal)
         ON CONFLICT DO NOTHING",
    )
    .bind(column!(id))
    .bind(column!(source))
    .bind(column!(r#type))
    .bind(column!(subject))
    .bind(column!(occurred_at))
    .bind(column!(actor_type))
    .bind(column!(actor_id))
    .bind(column!(resource_type))
    .bind(column!(resource_id))
    .bind(column!(action))
    .bind(column!(outcome))
    .bind(column!(reason))
    .bind(column!(trace_id))
    .bind(column!(details))
    .bind(column!(extensions))
    .bind(
        rows.iter()
            .map(|r| normalized_literal(&r.normalized))
            .collect::<Vec<_>>(),
    )
    .bind(column!(principal))
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::row::{tests::event, to_row};
    use serde_json::json;

    #[test]
    fn copy_text_escapes_separators_and_writes_null() {
        let e = event(
            json!({"actor": {"id": "a\tb"}, "action": "x\\y", "outcome": "success",
                   "reason": "line1\nline2\r"}),
            json!({}),
        );
        let mut line = String::new();
        copy_line(&mut line, &to_row(e));
        let fields: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        assert_eq!(fields.len(), 17, "{line}");
        assert_eq!(fields[6], "a\\tb");
        assert_eq!(fields[9], "x\\\\y");
        assert_eq!(fields[11], "line1\\nline2\\r");
        assert_eq!(fields[3], "\\N", "no subject: NULL");
        assert_eq!(fields[13], "\\N", "no details: NULL");
        assert_eq!(fields[14], "\\N", "no extensions: NULL");
        assert_eq!(fields[15], "\\N", "nothing normalized: NULL");
        assert_eq!(
            fields[16], "\\N",
            "no principal without authentication: NULL"
        );
        assert_eq!(fields[4], "2026-11-02T03:48:55Z");
    }

    #[test]
    fn escaping_keeps_multibyte_text_whole() {
        let mut out = String::new();
        push_escaped(&mut out, "ünï\tcødé\\ 監査\n");
        assert_eq!(out, "ünï\\tcødé\\\\ 監査\\n");
        out.clear();
        push_escaped(&mut out, "plain");
        assert_eq!(out, "plain");
    }
}
