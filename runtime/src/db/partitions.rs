//! Monthly partitions of `audit_events`: `audit_events_YYYY_MM` covering
//! [first of the month, first of the next month) in UTC.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use sqlx::PgPool;

use super::{Context, DbError};

/// Advisory lock key of partition maintenance ("auditmnt").
const MAINTENANCE_LOCK: i64 = 0x6175_6469_746d_6e74;

/// How long maintenance waits for a table lock before it gives up (and retries at its next
/// run). Creating or dropping a partition locks `audit_events`; a lock request that waits
/// queues every insert behind it, so the sink would stall for as long as maintenance waits.
pub const MAINTENANCE_LOCK_TIMEOUT: &str = "5s";

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    /// `months` later (negative: earlier).
    pub fn plus(self, months: i32) -> Month {
        let index = self.year * 12 + self.month as i32 - 1 + months;
        Month {
            year: index.div_euclid(12),
            month: index.rem_euclid(12) as u32 + 1,
        }
    }

    pub fn start(self) -> DateTime<Utc> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or_default();
        Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// The partition's table name.
    pub fn table(self) -> String {
        format!("audit_events_{:04}_{:02}", self.year, self.month)
    }

    /// Parses a partition table name.
    pub fn from_table(name: &str) -> Option<Month> {
        let rest = name.strip_prefix("audit_events_")?;
        let (y, m) = rest.split_once('_')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let month = Month {
            year: y.parse().ok()?,
            month: m.parse().ok()?,
        };
        (1..=12).contains(&month.month).then_some(month)
    }
}

/// What one maintenance run wants: the months to exist and the first month to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub keep_from: Option<Month>,
    pub ensure: Vec<Month>,
}

/// Partitions from the start of the retention window (`retention_months` back, 0 = only the
/// current month onwards is ensured and nothing is dropped) through `pre_create` months ahead.
pub fn plan(now: DateTime<Utc>, retention_months: u32, pre_create: u32) -> Plan {
    let current = Month::of(now);
    let keep_from = (retention_months > 0).then(|| current.plus(-(retention_months as i32)));
    let first = keep_from.unwrap_or(current);
    let last = current.plus(pre_create as i32);
    let mut ensure = Vec::new();
    let mut m = first;
    while m <= last {
        ensure.push(m);
        m = m.plus(1);
    }
    Plan { keep_from, ensure }
}

/// What a maintenance run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    pub existing: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "created {} partition(s){}; dropped {}{}; {} already present",
            self.created.len(),
            list(&self.created),
            self.dropped.len(),
            list(&self.dropped),
            self.existing
        )
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    }
}

/// Existing partitions of `audit_events` by month.
pub async fn existing(pool: &PgPool) -> Result<Vec<Month>, DbError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname = 'audit_events'",
    )
    .fetch_all(pool)
    .await
    .context(|| "listing partitions of audit_events".into())?;
    let mut months: Vec<Month> = names.iter().filter_map(|n| Month::from_table(n)).collect();
    months.sort();
    Ok(months)
}

/// Creates the missing partitions of the plan and drops the ones wholly before the retention
/// window, in one transaction under an advisory lock, so concurrent runs (replicas, the
/// CronJob) serialize and the later one finds nothing to do.
pub async fn maintain(
    conn: &mut sqlx::PgConnection,
    now: DateTime<Utc>,
    retention_months: u32,
    pre_create: u32,
) -> Result<Report, DbError> {
    use sqlx::Connection;
    let plan = plan(now, retention_months, pre_create);
    let mut tx = conn
        .begin()
        .await
        .context(|| "starting partition maintenance".into())?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MAINTENANCE_LOCK)
        .execute(&mut *tx)
        .await
        .context(|| "taking the partition maintenance lock".into())?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{MAINTENANCE_LOCK_TIMEOUT}'"
    )))
    .execute(&mut *tx)
    .await
    .context(|| "setting the maintenance lock timeout".into())?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname = 'audit_events'",
    )
    .fetch_all(&mut *tx)
    .await
    .context(|| "listing partitions of audit_events".into())?;
    let present: Vec<Month> = names.iter().filter_map(|n| Month::from_table(n)).collect();
    let mut report = Report::default();
    for month in &plan.ensure {
        if present.contains(month) {
            report.existing += 1;
            continue;
        }
        let sql = format!(
            "CREATE TABLE {} PARTITION OF audit_events FOR VALUES FROM ('{}') TO ('{}')",
            month.table(),
            month.start().to_rfc3339(),
            month.plus(1).start().to_rfc3339()
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .context(|| format!("creating partition {}", month.table()))?;
        report.created.push(month.table());
    }
    if let Some(keep_from) = plan.keep_from {
        for month in present.iter().filter(|m| **m < keep_from) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {}", month.table())))
                .execute(&mut *tx)
                .await
                .context(|| format!("dropping expired partition {}", month.table()))?;
            tracing::warn!(
                partition = month.table(),
                retention_months,
                "dropping an expired partition (committed with this run)"
            );
            report.dropped.push(month.table());
        }
    }
    tx.commit()
        .await
        .context(|| "committing partition maintenance".into())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("time")
    }

    #[test]
    fn months_wrap_years_both_ways() {
        let m = Month {
            year: 2026,
            month: 11,
        };
        assert_eq!(
            m.plus(3),
            Month {
                year: 2027,
                month: 2
            }
        );
        assert_eq!(
            m.plus(-11),
            Month {
                year: 2025,
                month: 12
            }
        );
        assert_eq!(
            m.plus(-84),
            Month {
                year: 2019,
                month: 11
            }
        );
        assert_eq!(m.table(), "audit_events_2026_11");
        assert_eq!(Month::from_table("audit_events_2026_11"), Some(m));
        assert_eq!(Month::from_table("audit_events_2026_13"), None);
        assert_eq!(Month::from_table("audit_events_default"), None);
    }

    #[test]
    fn the_plan_spans_retention_through_pre_create() {
        let p = plan(at("2026-11-24T10:00:00Z"), 84, 3);
        assert_eq!(
            p.keep_from,
            Some(Month {
                year: 2019,
                month: 11
            })
        );
        assert_eq!(
            p.ensure.first(),
            Some(&Month {
                year: 2019,
                month: 11
            })
        );
        assert_eq!(
            p.ensure.last(),
            Some(&Month {
                year: 2027,
                month: 2
            })
        );
        assert_eq!(p.ensure.len(), 84 + 1 + 3);
        let forever = plan(at("2026-11-24T10:00:00Z"), 0, 2);
        assert_eq!(forever.keep_from, None);
        assert_eq!(forever.ensure.len(), 3);
    }
}
