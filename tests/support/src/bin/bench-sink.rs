//! `make bench` (sink part): PostgreSQL's raw COPY ceiling into `audit_events`, the sink's
//! multi-row `INSERT ... SELECT FROM unnest(...)` on the same rows, the end-to-end rate
//! (events POSTed → rows committed) and time-to-visible at a steady rate, in one run against
//! real PostgreSQL and Kafka.
//!
//! Usage: bench-sink [--rows N] [--seconds N] [--rate EVENTS_PER_S]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use audit_testenv::loadgen::run_phase;
use audit_testenv::topics::create_topic;
use audit_testenv::{AuditManager, Kafka, Postgres};
use sqlx::{Connection, PgConnection};

const PASSWORD: &str = "bench-password";
const DATABASE: &str = "auditbench";
const COLUMNS: &str = "id, source, type, subject, occurred_at, actor_type, actor_id, resource_type, resource_id, action, outcome, reason, trace_id, details";

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a whole number")),
    }
}

/// One row in COPY text format, shaped like the bench's events.
fn copy_line(run: &str, n: u64, now: &str) -> String {
    format!(
        "{run}-{n}\t/bench\torg.openg2p.beneficiary.viewed\tbeneficiary/b_{}\t{now}\tuser\tu_{}\tbeneficiary\tb_{}\tview\tsuccess\t\\N\t\\N\t{{\"actor\": {{\"roles\": [\"enrolment-officer\"]}}, \"context\": {{\"sent\": \"{now}\"}}}}\n",
        n % 100_000,
        n % 5000,
        n % 100_000
    )
}

async fn count(conn: &mut PgConnection, run: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id LIKE $1")
        .bind(format!("{run}-%"))
        .fetch_one(conn)
        .await
        .unwrap_or(-1)
}

async fn raw_copy(conn: &mut PgConnection, rows: u64) -> Result<f64, sqlx::Error> {
    let now = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY audit_events ({COLUMNS}) FROM STDIN"))
        .await?;
    let mut chunk = String::with_capacity(1 << 20);
    for n in 0..rows {
        chunk.push_str(&copy_line("copy", n, &now));
        if chunk.len() > (1 << 20) - 1024 {
            copy.send(chunk.as_bytes()).await?;
            chunk.clear();
        }
    }
    copy.send(chunk.as_bytes()).await?;
    copy.finish().await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// The sink's statement shape: 500 rows per INSERT ... SELECT FROM unnest(...).
async fn unnest_insert(conn: &mut PgConnection, rows: u64) -> Result<f64, sqlx::Error> {
    let now = chrono::Utc::now();
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let ids: Vec<u64> = (n..(n + 500).min(rows)).collect();
        n += ids.len() as u64;
        let text = |f: &dyn Fn(u64) -> String| ids.iter().map(|&i| f(i)).collect::<Vec<String>>();
        let none: Vec<Option<String>> = vec![None; ids.len()];
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_events ({COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::jsonb[]) ON CONFLICT DO NOTHING"
        )))
        .bind(text(&|i| format!("unnest-{i}")))
        .bind(text(&|_| "/bench".into()))
        .bind(text(&|_| "org.openg2p.beneficiary.viewed".into()))
        .bind(text(&|i| format!("beneficiary/b_{}", i % 100_000)))
        .bind(vec![now; ids.len()])
        .bind(text(&|_| "user".into()))
        .bind(text(&|i| format!("u_{}", i % 5000)))
        .bind(text(&|_| "beneficiary".into()))
        .bind(text(&|i| format!("b_{}", i % 100_000)))
        .bind(text(&|_| "view".into()))
        .bind(text(&|_| "success".into()))
        .bind(none.clone())
        .bind(none.clone())
        .bind(
            ids.iter()
                .map(|_| serde_json::json!({"actor": {"roles": ["enrolment-officer"]}, "context": {"sent": now.to_rfc3339()}}))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn wait_rows(
    conn: &mut PgConnection,
    run: &str,
    want: i64,
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if count(conn, run).await >= want {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn bench(binary: PathBuf, pg: &Postgres, kafka: &Kafka) -> Result<(), String> {
    let rows = arg("--rows", 200_000)?;
    let seconds = arg("--seconds", 10)?;
    let rate = arg("--rate", 10_000)?;
    let (user, password) = pg.superuser();
    let db_env = |user: &str, password: &str| {
        vec![
            ("DB_HOST", pg.host().to_string()),
            ("DB_PORT", pg.port().to_string()),
            ("DB_NAME", DATABASE.to_string()),
            ("DB_USER", user.to_string()),
            ("DB_PASSWORD", password.to_string()),
            ("AUDIT_MANAGER__DATABASE__SSLMODE", "disable".to_string()),
        ]
    };
    let out = std::process::Command::new(&binary)
        .args(["migrate", "--create-roles"])
        .envs(db_env(user, password))
        .env("AUDIT_MANAGER_OWNER_PASSWORD", PASSWORD)
        .env("AUDIT_MANAGER_WRITER_PASSWORD", PASSWORD)
        .env("AUDIT_MANAGER_READER_PASSWORD", PASSWORD)
        .output()
        .map_err(|e| format!("running migrate: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "migrate --create-roles: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let writer = format!("{DATABASE}_writer");
    let mut conn = PgConnection::connect(&pg.url(&writer, PASSWORD, DATABASE))
        .await
        .map_err(|e| format!("connecting as the writer: {e}"))?;
    println!(
        "PostgreSQL {} and Apache Kafka {} on 127.0.0.1; the generator, runtime, broker and database share the machine's cores",
        pg.version(),
        kafka.version()
    );
    let ceiling = raw_copy(&mut conn, rows)
        .await
        .map_err(|e| format!("COPY: {e}"))?;
    println!(
        "{:<34} {ceiling:>10.0} rows/s  ({rows} rows, one connection, COPY text)",
        "raw ceiling: COPY into audit_events"
    );
    let unnest = unnest_insert(&mut conn, rows)
        .await
        .map_err(|e| format!("unnest insert: {e}"))?;
    println!(
        "{:<34} {unnest:>10.0} rows/s  ({:.0}% of COPY; the sink's statement, 500 rows each)",
        "INSERT ... SELECT FROM unnest",
        100.0 * unnest / ceiling
    );

    create_topic(&kafka.bootstrap(), "openg2p.audit.events", 12).await;
    create_topic(&kafka.bootstrap(), "openg2p.audit.dlq", 1).await;
    let mut env = db_env(&writer, PASSWORD);
    env.extend([
        ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap()),
        (
            "AUDIT_MANAGER__COMPONENTS__MAINTENANCE",
            "false".to_string(),
        ),
        (
            "AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE",
            "100000".to_string(),
        ),
        ("AUDIT_MANAGER__LOG__LEVEL", "warn".to_string()),
    ]);
    let runtime = AuditManager::start(&binary, &["serve"], &env).map_err(|e| e.to_string())?;
    let address = runtime.address();

    let started = Instant::now();
    let sent = run_phase("e2e", &address, 8, seconds, None, Some(500)).await;
    let done = wait_rows(&mut conn, "e2e", sent as i64, Duration::from_secs(300))
        .await
        .ok_or("end to end: not every event became a row within 300 s")?;
    let e2e = sent as f64 / (done - started).as_secs_f64();
    println!(
        "{:<34} {e2e:>10.0} events/s  ({sent} events POSTed in batches of 500 until all are rows; {:.0}% of the raw ceiling)",
        "end to end: POST → rows committed",
        100.0 * e2e / ceiling
    );

    let sent = run_phase(
        &format!("ttv {rate}/s"),
        &address,
        16,
        seconds,
        Some(rate),
        None,
    )
    .await;
    let run = format!("ttv-{rate}/s").replace(' ', "-");
    wait_rows(&mut conn, &run, sent as i64, Duration::from_secs(120))
        .await
        .ok_or("time-to-visible: not every event became a row within 120 s")?;
    let (p50, p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v), percentile_cont(0.99) WITHIN GROUP (ORDER BY v)
           FROM (SELECT extract(epoch FROM ingested_at - (details->'context'->>'sent')::timestamptz) AS v
                   FROM audit_events WHERE id LIKE $1) t",
    )
    .bind(format!("{run}-%"))
    .fetch_one(&mut conn)
    .await
    .map_err(|e| format!("time-to-visible query: {e}"))?;
    println!(
        "{:<34} p50 {:.0} ms  p99 {:.0} ms  ({sent} events at {rate}/s; send time → insert transaction)",
        "time to visible",
        p50 * 1000.0,
        p99 * 1000.0
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("audit-manager")))
        .unwrap_or_else(|| PathBuf::from("audit-manager"));
    let result = (|| -> Result<(), String> {
        let pg = Postgres::start().map_err(|e| e.to_string())?;
        let kafka = Kafka::start().map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("async runtime: {e}"))?;
        rt.block_on(bench(binary, &pg, &kafka))
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-sink: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
