//! `make bench` (sink part), in one run against real PostgreSQL and Kafka: the sink alone (a
//! Kafka backlog → rows), the end-to-end rate (events POSTed → rows committed), PostgreSQL's
//! raw COPY ceiling for the same rows (those the end-to-end phase stored, COPYed again), the
//! multi-row `INSERT ... SELECT FROM unnest(...)` fallback, and time-to-visible at a steady
//! rate. Every rate is measured into an emptied `audit_events`, so each writes the same index
//! depth.
//!
//! The end-to-end rate and its ceiling are taken as a pair, back to back, `--rounds` times
//! (default 3), and the median ratio is reported: this VM's speed drifts from minute to
//! minute, and a ratio of two rates taken minutes apart measures the drift as much as the sink.
//! Each round also runs the same pair through a second runtime with TLS on both connections
//! (PostgreSQL verify-full, Kafka SASL_SSL with SCRAM-SHA-512): the two median ratios give
//! what TLS costs.
//!
//! Usage: bench-sink [--rows N] [--seconds N] [--rate EVENTS_PER_S] [--rounds N]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use audit_testenv::http::HttpClient;
use audit_testenv::loadgen::{metric, run_phase, with_overrides};
use audit_testenv::topics::create_topic;
use audit_testenv::{AuditManager, Kafka, Postgres};
use sqlx::{Connection, PgConnection};

const PASSWORD: &str = "bench-password";
const DATABASE: &str = "auditbench";
/// The columns the sink COPYs (the ceiling COPYs the same).
const COLUMNS: &str = "id, source, type, subject, occurred_at, actor_type, actor_id, resource_type, resource_id, action, outcome, reason, trace_id, details, extensions, normalized";
/// The columns the unnest fallback below fills (the last two stay NULL in the bench's rows).
const UNNEST_COLUMNS: &str = "id, source, type, subject, occurred_at, actor_type, actor_id, resource_type, resource_id, action, outcome, reason, trace_id, details";

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

/// One row in COPY text format, shaped like the bench's events, stamped `n` microseconds after
/// `start` (like an event's `time`): rows that shared one timestamp would let the B-tree
/// indexes on `occurred_at` deduplicate their keys, which real events never allow.
fn copy_line(run: &str, n: u64, start: chrono::DateTime<chrono::Utc>) -> String {
    let now = (start + chrono::Duration::microseconds(n as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    format!(
        "{run}-{n}\t/bench\torg.openg2p.beneficiary.viewed\tbeneficiary/b_{}\t{now}\tuser\tu_{}\tbeneficiary\tb_{}\tview\tsuccess\t\\N\t\\N\t{{\"actor\": {{\"roles\": [\"enrolment-officer\"]}}, \"context\": {{\"sent\": \"{now}\"}}}}\t\\N\t\\N\n",
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

/// Synthetic rows of the bench's shape with ids in sequence, as COPY text (made before the
/// clock starts).
fn synthetic_rows(rows: u64) -> Vec<u8> {
    let mut text = Vec::with_capacity(rows as usize * 260);
    let start = chrono::Utc::now();
    for n in 0..rows {
        text.extend_from_slice(copy_line("copy", n, start).as_bytes());
    }
    text
}

/// The rows stored since the table was last emptied, as COPY text, in the order the sink wrote
/// them: transaction by transaction (`ingested_at` is each transaction's start), then heap
/// order within it.
async fn stored_rows(conn: &mut PgConnection) -> Result<Vec<u8>, sqlx::Error> {
    use futures::TryStreamExt;
    let mut text = Vec::new();
    let mut out = conn
        .copy_out_raw(&format!(
            "COPY (SELECT {COLUMNS} FROM audit_events ORDER BY ingested_at, tableoid, ctid) TO STDOUT"
        ))
        .await?;
    while let Some(chunk) = out.try_next().await? {
        text.extend_from_slice(&chunk);
    }
    Ok(text)
}

/// COPYs `text` into `audit_events` in one COPY on one connection; rows per second.
async fn raw_copy(conn: &mut PgConnection, text: &[u8]) -> Result<f64, sqlx::Error> {
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY audit_events ({COLUMNS}) FROM STDIN"))
        .await?;
    for chunk in text.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    let rows = copy.finish().await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// The sink's fallback for batches with replayed rows: 500 rows per INSERT ... SELECT FROM unnest(...).
async fn unnest_insert(conn: &mut PgConnection, rows: u64) -> Result<f64, sqlx::Error> {
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let ids: Vec<u64> = (n..(n + 500).min(rows)).collect();
        // One timestamp per row, as in raw_copy.
        let times: Vec<chrono::DateTime<chrono::Utc>> =
            ids.iter().map(|_| chrono::Utc::now()).collect();
        n += ids.len() as u64;
        let text = |f: &dyn Fn(u64) -> String| ids.iter().map(|&i| f(i)).collect::<Vec<String>>();
        let none: Vec<Option<String>> = vec![None; ids.len()];
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_events ({UNNEST_COLUMNS}) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::jsonb[]) ON CONFLICT DO NOTHING"
        )))
        .bind(text(&|i| format!("unnest-{i}")))
        .bind(text(&|_| "/bench".into()))
        .bind(text(&|_| "org.openg2p.beneficiary.viewed".into()))
        .bind(text(&|i| format!("beneficiary/b_{}", i % 100_000)))
        .bind(&times)
        .bind(text(&|_| "user".into()))
        .bind(text(&|i| format!("u_{}", i % 5000)))
        .bind(text(&|_| "beneficiary".into()))
        .bind(text(&|i| format!("b_{}", i % 100_000)))
        .bind(text(&|_| "view".into()))
        .bind(text(&|_| "success".into()))
        .bind(none.clone())
        .bind(none.clone())
        .bind(
            times.iter()
                .map(|t| serde_json::json!({"actor": {"roles": ["enrolment-officer"]}, "context": {"sent": t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}}))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Waits until the sink reports `want` more rows written than `before` (a cheap metric read,
/// so polling does not compete with the sink for the database), then checks the table.
async fn wait_rows(
    client: &mut HttpClient,
    before: f64,
    conn: &mut PgConnection,
    run: &str,
    want: i64,
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // The counter is cheap to poll; the table has the last word. Rows written again after
        // a phase emptied the table (a batch re-read after a rebalance) count in the metric
        // but not under this run's ids, so a short count means: keep waiting.
        if metric(client, "audit_sink_rows_written_total").await >= before + want as f64 {
            let done = Instant::now();
            if count(conn, run).await >= want {
                return Some(done);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "bench-sink: {run}: {} of {want} rows after {} s (rows written since the phase began: {})",
        count(conn, run).await,
        limit.as_secs(),
        metric(client, "audit_sink_rows_written_total").await - before
    );
    None
}

/// CPU seconds used so far by every process named `comm` (all PostgreSQL backends, say).
fn cpu_seconds(comm: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    let mut total = 0u64;
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != comm {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the comm.
        total += fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        total += fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total as f64 / ticks
}

/// Where CPU went between two samples: the runtime, PostgreSQL, the broker, and this process
/// (the load generator, which in production would run on other machines).
struct Cpu([f64; 4]);

impl Cpu {
    const NAMES: [&str; 4] = ["audit-manager", "postgres", "java", "bench-sink"];

    fn now() -> Cpu {
        Cpu(Cpu::NAMES.map(cpu_seconds))
    }

    /// PostgreSQL's CPU microseconds per item since this sample.
    fn postgres_per_item(&self, items: u64) -> f64 {
        (Cpu::now().0[1] - self.0[1]) * 1e6 / items.max(1) as f64
    }

    /// Cores busy per process over `elapsed`, and CPU microseconds per item when `items` > 0.
    fn since(&self, elapsed: Duration, items: u64) -> String {
        let now = Cpu::now();
        let s = elapsed.as_secs_f64();
        let label = ["audit-manager", "postgres", "kafka", "generator"];
        let parts: Vec<String> = (0..4)
            .map(|i| {
                let used = now.0[i] - self.0[i];
                if items > 0 {
                    format!(
                        "{} {:.2} ({:.1} µs each)",
                        label[i],
                        used / s,
                        used * 1e6 / items as f64
                    )
                } else {
                    format!("{} {:.2}", label[i], used / s)
                }
            })
            .collect();
        format!("CPU cores busy: {}", parts.join(", "))
    }
}

async fn bench(binary: PathBuf, pg: &Postgres, kafka: &Kafka) -> Result<(), String> {
    let rows = arg("--rows", 200_000)?;
    let seconds = arg("--seconds", 10)?;
    let rate = arg("--rate", 10_000)?;
    let rounds = arg("--rounds", 3)?.max(1);
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
    // The measuring connections stay in cleartext, as the ceiling always was.
    let mut conn = PgConnection::connect(&format!(
        "{}?sslmode=disable",
        pg.url(&writer, PASSWORD, DATABASE)
    ))
    .await
    .map_err(|e| format!("connecting as the writer: {e}"))?;
    println!(
        "PostgreSQL {} (shared_buffers 4GB) and Apache Kafka {} on 127.0.0.1; the generator, runtime, broker and database share the machine's cores",
        pg.version(),
        kafka.version()
    );
    let mut admin =
        PgConnection::connect(&format!("{}?sslmode=disable", pg.superuser_url(DATABASE)))
            .await
            .map_err(|e| format!("connecting as superuser: {e}"))?;

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
    let env = with_overrides(env);

    // The sink alone: a backlog published by an ingest-only process, then drained by a
    // consumer-only process.
    empty(&mut admin).await?;
    let mut ingest_env = env.clone();
    ingest_env.push(("AUDIT_MANAGER__COMPONENTS__CONSUMER".into(), "false".into()));
    let ingest =
        AuditManager::start(&binary, &["serve"], &ingest_env).map_err(|e| e.to_string())?;
    let backlog = run_phase(
        "backlog",
        &ingest.address(),
        8,
        seconds / 2,
        None,
        Some(500),
    )
    .await;
    ingest.terminate();
    let draining = Instant::now();
    if ingest.wait_exit(Duration::from_secs(60)).is_none() {
        return Err(format!(
            "the ingest-only runtime did not exit within 60 s of SIGTERM:\n{}",
            ingest.log_tail(20)
        ));
    }
    println!(
        "{:<34} {:>10.0} ms from SIGTERM to exit (queue drained to Kafka)",
        "",
        draining.elapsed().as_secs_f64() * 1000.0
    );
    let mut sink_env = env.clone();
    sink_env.push(("AUDIT_MANAGER__COMPONENTS__INGEST".into(), "false".into()));
    let cpu = Cpu::now();
    let started = Instant::now();
    let sink = AuditManager::start(&binary, &["serve"], &sink_env).map_err(|e| e.to_string())?;
    let mut client = HttpClient::connect(&sink.address())
        .await
        .map_err(|e| e.to_string())?;
    let done = wait_rows(
        &mut client,
        0.0,
        &mut conn,
        "backlog",
        backlog as i64,
        Duration::from_secs(300),
    )
    .await
    .ok_or("sink only: the backlog did not become rows within 300 s")?;
    let took = done - started;
    let sink_only = backlog as f64 / took.as_secs_f64();
    println!(
        "{:<34} {sink_only:>10.0} rows/s  ({backlog} events already in Kafka, into an empty table; {})",
        "sink only: Kafka backlog → rows",
        cpu.since(took, backlog)
    );
    let batches = metric(&mut client, "audit_sink_batch_size_count").await;
    println!(
        "{:<34} {batches:.0} statements, {:.0} rows each, {:.1} ms per insert on average",
        "",
        metric(&mut client, "audit_sink_batch_size_sum").await / batches,
        1000.0 * metric(&mut client, "audit_sink_insert_seconds_sum").await / batches
    );
    drop(client);
    drop(sink);

    let runtime = AuditManager::start(&binary, &["serve"], &env).map_err(|e| e.to_string())?;
    let address = runtime.address();
    let mut client = HttpClient::connect(&address)
        .await
        .map_err(|e| e.to_string())?;
    // The same pipeline with TLS on both connections: PostgreSQL verify-full, Kafka SASL_SSL
    // with SCRAM-SHA-512 (its own topics and group, so the two never share work).
    create_topic(&kafka.bootstrap(), "openg2p.audit.events.tls", 12).await;
    create_topic(&kafka.bootstrap(), "openg2p.audit.dlq.tls", 1).await;
    let tls = AuditManager::start(&binary, &["serve"], &tls_env(env.clone(), kafka))
        .map_err(|e| e.to_string())?;
    let tls_address = tls.address();
    let mut tls_client = HttpClient::connect(&tls_address)
        .await
        .map_err(|e| e.to_string())?;

    // End to end, then the ceiling for the very rows it stored, back to back: a pair taken
    // minutes apart would compare two different speeds of this VM. Each round runs the
    // plaintext pipeline, then the TLS one.
    let mut ratios = Vec::new();
    let mut tls_ratios = Vec::new();
    let mut ceilings = Vec::new();
    let mut sent = 0;
    for round in 1..=rounds {
        let (e2e, ceiling, n) = end_to_end_and_ceiling(
            &format!("e2e{round}"),
            &address,
            &mut client,
            &mut conn,
            &mut admin,
            seconds,
        )
        .await?;
        sent = n;
        ratios.push(e2e / ceiling);
        ceilings.push(ceiling);
        let (tls_e2e, tls_ceiling, _) = end_to_end_and_ceiling(
            &format!("tls{round}"),
            &tls_address,
            &mut tls_client,
            &mut conn,
            &mut admin,
            seconds,
        )
        .await?;
        tls_ratios.push(tls_e2e / tls_ceiling);
        println!(
            "{:<34} round {round}: end to end {:.0}% of the raw ceiling in plaintext, {:.0}% with TLS on both connections",
            "ratio",
            100.0 * e2e / ceiling,
            100.0 * tls_e2e / tls_ceiling,
        );
    }
    drop(tls_client);
    drop(tls);
    ratios.sort_by(f64::total_cmp);
    tls_ratios.sort_by(f64::total_cmp);
    let (plain, secured) = (ratios[ratios.len() / 2], tls_ratios[tls_ratios.len() / 2]);
    println!(
        "{:<34} end to end with TLS (PostgreSQL verify-full, Kafka SASL_SSL SCRAM-SHA-512): median {:.0}% of the raw ceiling against {:.0}% in plaintext: TLS costs {:.1}% of the end-to-end rate (target < 15%)",
        "ratio",
        100.0 * secured,
        100.0 * plain,
        100.0 * (1.0 - secured / plain),
    );
    ceilings.sort_by(f64::total_cmp);
    println!(
        "{:<34} end to end / raw ceiling over {rounds} round(s): median {:.0}%, lowest {:.0}%, highest {:.0}%; sink only {:.0}% of the median ceiling (measured before the rounds)",
        "ratio",
        100.0 * ratios[ratios.len() / 2],
        100.0 * ratios[0],
        100.0 * ratios[ratios.len() - 1],
        100.0 * sink_only / ceilings[ceilings.len() / 2],
    );
    // For reference: as many synthetic rows of the same shape whose ids come in sequence,
    // which keeps every insert into the primary key near the last one.
    let synthetic = synthetic_rows(sent);
    empty(&mut admin).await?;
    let sequential = raw_copy(&mut conn, &synthetic)
        .await
        .map_err(|e| format!("COPY: {e}"))?;
    drop(synthetic);
    println!(
        "{:<34} {sequential:>10.0} rows/s  ({sent} synthetic rows with ids in sequence, one COPY: the primary key is written in key order)",
        "reference: COPY, ids in order",
    );
    empty(&mut admin).await?;
    let unnest = unnest_insert(&mut conn, rows)
        .await
        .map_err(|e| format!("unnest insert: {e}"))?;
    println!(
        "{:<34} {unnest:>10.0} rows/s  ({rows} rows into an empty table, 500 per statement: the sink's path for batches with replayed rows)",
        "INSERT ... SELECT FROM unnest",
    );

    let before = metric(&mut client, "audit_sink_rows_written_total").await;
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
    wait_rows(
        &mut client,
        before,
        &mut conn,
        &run,
        sent as i64,
        Duration::from_secs(120),
    )
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

/// One round: events POSTed in batches for `seconds` until every one is a row (the end-to-end
/// rate), then those rows read back and COPYed again into the emptied table (the ceiling).
/// Returns both rates and the events sent.
async fn end_to_end_and_ceiling(
    run: &str,
    address: &str,
    client: &mut HttpClient,
    conn: &mut PgConnection,
    admin: &mut PgConnection,
    seconds: u64,
) -> Result<(f64, f64, u64), String> {
    empty(admin).await?;
    let before = metric(client, "audit_sink_rows_written_total").await;
    let cpu = Cpu::now();
    let started = Instant::now();
    let statements = metric(client, "audit_sink_batch_size_count").await;
    let sent = run_phase(run, address, 8, seconds, None, Some(500)).await;
    let done = wait_rows(
        client,
        before,
        conn,
        run,
        sent as i64,
        Duration::from_secs(300),
    )
    .await
    .ok_or("end to end: not every event became a row within 300 s")?;
    let e2e = sent as f64 / (done - started).as_secs_f64();
    println!(
        "{:<34} {e2e:>10.0} events/s  ({sent} events POSTed in batches of 500 until all are rows, into an empty table)",
        "end to end: POST → rows committed",
    );
    println!("{:<34} {}", "", cpu.since(done - started, sent));
    let e2e_pg = cpu.postgres_per_item(sent);
    let statements = metric(client, "audit_sink_batch_size_count").await - statements;

    // The ceiling: the very rows this round stored, in the order it stored them, COPYed again
    // into the emptied table in one COPY on one connection, so both write the same keys in the
    // same order to the same index depth.
    let stored = stored_rows(conn)
        .await
        .map_err(|e| format!("reading back the stored rows: {e}"))?;
    empty(admin).await?;
    let cpu = Cpu::now();
    let started = Instant::now();
    let ceiling = raw_copy(conn, &stored)
        .await
        .map_err(|e| format!("COPY: {e}"))?;
    println!(
        "{:<34} {ceiling:>10.0} rows/s  ({sent} rows the end-to-end phase stored, in its order, into an empty table, one connection, one COPY; {})",
        "raw ceiling: COPY into audit_events",
        cpu.since(started.elapsed(), sent)
    );
    let ceiling_pg = cpu.postgres_per_item(sent);
    println!(
        "{:<34} PostgreSQL CPU per row: {e2e_pg:.1} µs in the sink, {ceiling_pg:.1} µs in the ceiling; {:.0} rows per statement on average ({statements:.0} statements)",
        "",
        sent as f64 / statements.max(1.0)
    );
    Ok((e2e, ceiling, sent))
}

/// The runtime's environment with TLS on both connections and its own topics and group.
fn tls_env(mut env: Vec<(String, String)>, kafka: &Kafka) -> Vec<(String, String)> {
    let ca = audit_testenv::pki::pki().ca.cert().display().to_string();
    let set = [
        ("DATABASE__SSLMODE", "verify-full".to_string()),
        ("DATABASE__SSLROOTCERT", ca.clone()),
        ("KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap_sasl_ssl()),
        ("KAFKA__TOPIC", "openg2p.audit.events.tls".into()),
        ("KAFKA__DLQ_TOPIC", "openg2p.audit.dlq.tls".into()),
        ("KAFKA__CONSUMER_GROUP", "openg2p-audit-consumer-tls".into()),
        ("KAFKA__SECURITY__PROTOCOL", "sasl_ssl".into()),
        ("KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-512".into()),
        (
            "KAFKA__SECURITY__SASL_USERNAME",
            audit_testenv::SASL_USER.into(),
        ),
        (
            "KAFKA__SECURITY__SASL_PASSWORD",
            audit_testenv::SASL_PASSWORD.into(),
        ),
        ("KAFKA__SECURITY__SSL_CA_FILE", ca),
    ];
    for (key, value) in set {
        let var = format!("AUDIT_MANAGER__{key}");
        env.retain(|(k, _)| *k != var);
        env.push((var, value));
    }
    env
}

/// Empties `audit_events` between phases (as superuser, through the owner's maintenance
/// opt-in of the append-only guard), so every phase writes into the same table state.
async fn empty(admin: &mut PgConnection) -> Result<(), String> {
    sqlx::raw_sql(
        "BEGIN; SET LOCAL audit_manager.maintenance = 'on'; TRUNCATE audit_events; COMMIT; CHECKPOINT;",
    )
    .execute(admin)
    .await
    .map(drop)
    .map_err(|e| format!("emptying audit_events between phases: {e}"))
}

/// Gives PostgreSQL the memory of a database server before anything is measured: with the
/// default 128 MB of shared buffers, the millions of rows written here would be measured
/// against buffer eviction (backends writing dirty pages themselves), which a sized server does
/// not do, and the COPY ceiling, measured first on a small table, would not see it at all.
fn size_like_a_server(pg: &Postgres) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("async runtime: {e}"))?;
    rt.block_on(async {
        let mut conn = PgConnection::connect(&pg.superuser_url("postgres"))
            .await
            .map_err(|e| format!("connecting as superuser: {e}"))?;
        for setting in ["shared_buffers = '4GB'", "max_wal_size = '16GB'"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER SYSTEM SET {setting}")))
                .execute(&mut conn)
                .await
                .map_err(|e| format!("ALTER SYSTEM SET {setting}: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    pg.stop();
    pg.resume()
        .map_err(|e| format!("restarting PostgreSQL: {e}"))
}

fn main() -> std::process::ExitCode {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("audit-manager")))
        .unwrap_or_else(|| PathBuf::from("audit-manager"));
    let result = (|| -> Result<(), String> {
        let pg = Postgres::start().map_err(|e| e.to_string())?;
        size_like_a_server(&pg)?;
        let kafka = Kafka::start_like_production().map_err(|e| e.to_string())?;
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
