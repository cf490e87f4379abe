//! Adoption, asked for with `audit.openg2p.org/adopt`: a database and topics retained by a
//! deleted AuditManager, and the database, topics and consumer group of the original service
//! (SPEC §5), whose schema is upgraded in place: every row is found afterwards, with the new
//! events the runtime stores.

mod common;

use std::time::{Duration, Instant};

use audit_manager_crds::{ADOPT, AuditManager};
use common::{Fixture, condition, events, role_password, unique};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use sqlx::{Connection, PgConnection};

/// The original's table (SPEC §5): the same columns, primary key (id, occurred_at), no CHECK on
/// outcome, no triggers, its own index names; `older`: the release without `reason` and
/// `details` that kept the whole CloudEvent in `envelope`.
fn original_schema(older: bool) -> String {
    let (reason_details, envelope) = if older {
        ("", "envelope jsonb NOT NULL,")
    } else {
        ("reason text, details jsonb,", "")
    };
    format!(
        "CREATE TABLE audit_events (
            id text NOT NULL, source text NOT NULL, type text NOT NULL, subject text,
            occurred_at timestamptz NOT NULL, ingested_at timestamptz NOT NULL DEFAULT now(),
            actor_type text NOT NULL, actor_id text NOT NULL, resource_type text, resource_id text,
            action text NOT NULL, outcome text NOT NULL, {reason_details} trace_id text, {envelope}
            PRIMARY KEY (id, occurred_at)
         ) PARTITION BY RANGE (occurred_at);
         CREATE INDEX IF NOT EXISTS idx_audit_events_occurred_at ON audit_events (occurred_at DESC);
         CREATE INDEX IF NOT EXISTS idx_audit_events_actor ON audit_events (actor_id, occurred_at DESC);
         CREATE INDEX IF NOT EXISTS idx_audit_events_resource ON audit_events (resource_type, resource_id, occurred_at DESC);
         CREATE INDEX IF NOT EXISTS idx_audit_events_type ON audit_events (type, occurred_at DESC);
         CREATE INDEX IF NOT EXISTS idx_audit_events_trace ON audit_events (trace_id) WHERE trace_id IS NOT NULL;
         CREATE TABLE audit_events_2026_11 PARTITION OF audit_events
             FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00');
         CREATE TABLE audit_events_2026_12 PARTITION OF audit_events
             FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00');"
    )
}

/// Builds what an installation of the original holds: its role owning a database with the
/// original's table and `rows` rows over two months. Returns the database name.
async fn original_database(older: bool, rows: usize) -> String {
    let pg = audit_testenv::postgres();
    let database = unique("orig").replace('-', "_");
    let app = format!("{database}_app");
    let mut admin = PgConnection::connect(&pg.superuser_url("postgres"))
        .await
        .expect("superuser");
    for sql in [
        format!("CREATE ROLE {app} LOGIN PASSWORD 'app-password'"),
        format!("CREATE DATABASE {database} OWNER {app}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("the original's role and database");
    }
    let mut conn = PgConnection::connect(&pg.url(&app, "app-password", &database))
        .await
        .expect("as the original's role");
    sqlx::raw_sql(sqlx::AssertSqlSafe(original_schema(older)))
        .execute(&mut conn)
        .await
        .expect("the original's schema");
    for i in 0..rows {
        let month = if i % 2 == 0 { "11" } else { "12" };
        let at = format!("2026-{month}-01T10:{:02}:00Z", i % 60);
        let data = json!({"action": "update", "outcome": "success", "reason": format!("because {i}"),
                          "actor": {"id": format!("u{i}"), "type": "user", "ip": "10.0.0.1"},
                          "resource": {"id": format!("r{i}"), "type": "beneficiary"},
                          "details": {"field": "status"}});
        let (extra_columns, extra_values) = if older {
            let envelope = json!({"specversion": "1.0", "id": format!("orig-{i}"), "source": "/registry",
                                  "type": "beneficiary.updated", "time": at, "data": data});
            (", envelope", format!(", '{envelope}'::jsonb"))
        } else {
            (
                ", reason, details",
                format!(", 'because {i}', '{{\"field\": \"status\"}}'::jsonb"),
            )
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_events (id, source, type, occurred_at, actor_type, actor_id,
                                       resource_type, resource_id, action, outcome{extra_columns})
             VALUES ('orig-{i}', '/registry', 'beneficiary.updated', '{at}', 'user', 'u{i}',
                     'beneficiary', 'r{i}', 'update', 'success'{extra_values})"
        )))
        .execute(&mut conn)
        .await
        .expect("an original row");
    }
    database
}

/// The original's topics, and its consumer group with offsets committed on the events topic.
async fn original_topics(base: &str) {
    let bootstrap = audit_testenv::kafka().bootstrap();
    audit_testenv::topics::create_topic(&bootstrap, &format!("{base}.events"), 3).await;
    audit_testenv::topics::create_topic(&bootstrap, &format!("{base}.dlq"), 1).await;
    common::commit_start(
        &bootstrap,
        &format!("{base}-group"),
        &format!("{base}.events"),
        3,
    );
}

async fn annotate_adopt(f: &Fixture, what: &str) {
    f.api::<AuditManager>()
        .patch(
            &f.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ADOPT: what}}})),
        )
        .await
        .expect("annotate");
}

/// `limited`: with an admin that is not a superuser.
async fn adopts_the_original(older: bool, limited: bool) {
    let rows = 40;
    let database = original_database(older, rows).await;
    let base = unique("orig");
    original_topics(&base).await;
    let pg = audit_testenv::postgres();
    let f = Fixture::new(
        !limited,
        json!({
            "database": {"host": pg.host(), "port": pg.port(), "sslMode": "disable",
                         "name": database, "adminSecretRef": {"name": "pg-admin"}},
            "kafka": {"bootstrapServers": audit_testenv::kafka().bootstrap(),
                      "eventsTopic": {"name": format!("{base}.events"), "partitions": 3},
                      "dlqTopic": {"name": format!("{base}.dlq"), "partitions": 1},
                      "consumerGroup": format!("{base}-group")}}),
    )
    .await;
    if limited {
        let (user, password) = common::limited_admin().await;
        common::create_credentials(
            &f.client,
            &f.namespace,
            "pg-admin",
            json!({"username": user, "password": password}),
            common::TEST_HOSTS,
        )
        .await;
    }
    // Without the annotation, all of it is someone else's: reported, untouched.
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "DatabaseReady").1, "DatabaseConflict");
    assert_eq!(condition(&am, "TopicsReady").1, "TopicConflict");

    annotate_adopt(&f, "database,topics").await;
    let am = f.reconcile().await;
    let (status, _, message) = condition(&am, "DatabaseReady");
    assert_eq!(status, "True", "{message}");
    let (status, _, message) = condition(&am, "TopicsReady");
    assert_eq!(status, "True", "{message}");
    let said = events(&f).await;
    let adopted = said
        .iter()
        .find(|(r, _)| r == "DatabaseAdopted")
        .map(|(_, m)| m.clone())
        .unwrap_or_else(|| panic!("a DatabaseAdopted Event: {said:?}"));
    assert!(
        adopted.contains("audit_events_2026_11") && adopted.contains(&format!("{rows} rows")),
        "{adopted}"
    );
    assert!(
        said.iter()
            .any(|(r, m)| r == "TopicsAdopted" && m.contains("consumer group"))
    );

    // Every row is there, under this project's schema, owned by the owner role.
    let mut su = PgConnection::connect(&pg.superuser_url(&database))
        .await
        .expect("superuser");
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY id")
        .fetch_all(&mut su)
        .await
        .expect("rows");
    let mut expected: Vec<String> = (0..rows).map(|i| format!("orig-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every original row");
    let (reason, details): (Option<String>, Option<serde_json::Value>) =
        sqlx::query_as("SELECT reason, details FROM audit_events WHERE id = 'orig-3'")
            .fetch_one(&mut su)
            .await
            .expect("a row");
    assert_eq!(reason.as_deref(), Some("because 3"));
    if !older {
        assert_eq!(
            details.as_ref().map(|d| d["field"].clone()),
            Some(json!("status"))
        );
    } else {
        // As the ingest maps `data`: what is left once the columns took their fields.
        let details = details.expect("details from the envelope");
        assert!(
            details.get("action").is_none() && details.get("reason").is_none(),
            "{details}"
        );
        assert_eq!(details["details"]["field"], json!("status"));
        assert_eq!(details["actor"]["ip"], json!("10.0.0.1"));
        let kept: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE original_envelope IS NOT NULL",
        )
        .fetch_one(&mut su)
        .await
        .expect("envelopes");
        assert_eq!(kept, rows as i64, "the stored CloudEvents are kept");
    }
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'audit_events_2026_11'",
    )
    .fetch_one(&mut su)
    .await
    .expect("owner");
    assert_eq!(owner, format!("{database}_owner"));
    let key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
          WHERE i.indrelid = 'audit_events'::regclass AND i.indisprimary ORDER BY a.attname",
    )
    .fetch_all(&mut su)
    .await
    .expect("primary key");
    assert_eq!(key, ["id", "occurred_at", "source"]);
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut su)
        .await
        .expect("migration history");
    assert!(migrations >= 2, "{migrations}");
    let e = sqlx::query("UPDATE audit_events SET action = 'changed' WHERE id = 'orig-1'")
        .execute(&mut su)
        .await
        .expect_err("append-only now");
    assert!(e.to_string().contains("append-only"), "{e}");

    // New events, through the runtime as a pod runs it: stored next to the original's rows.
    let password = role_password(&f, "writer").await;
    let runtime = audit_testenv::AuditManager::start(
        &common::runtime_binary(),
        &["serve"],
        &common::runtime_env(&f, &password),
    )
    .unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut client = audit_testenv::http::HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let fresh: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("new-{i}"), "source": "/registry",
                   "type": "beneficiary.updated",
                   "time": k8s_openapi::jiff::Timestamp::now().to_string(),
                   "data": {"actor": {"id": "u1"}, "action": "update", "outcome": "success"}})
        })
        .collect();
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            json!({"events": fresh}).to_string(),
        )
        .await
        .expect("POST");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
            .fetch_one(&mut su)
            .await
            .expect("count");
        if count == rows as i64 + 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{count} rows, not {}: {}",
            rows + 5,
            runtime.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(runtime);
    // A limited admin cannot end a superuser's session: this one closes before teardown.
    drop(su);
    f.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_install_is_adopted_with_every_row() {
    adopts_the_original(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_release_is_adopted_by_an_admin_without_superuser_with_reason_and_details_from_its_envelopes()
 {
    adopts_the_original(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_database_is_adopted_by_a_new_resource_and_a_live_one_is_not() {
    let pg = audit_testenv::postgres();
    let database = unique("kept").replace('-', "_");
    let spec = json!({"database": {"host": pg.host(), "port": pg.port(), "sslMode": "disable",
                                   "name": database, "adminSecretRef": {"name": "pg-admin"}},
                      "deletionPolicy": {"database": "Retain", "topics": "Delete"}});
    let first = Fixture::new(true, spec.clone()).await;
    assert_eq!(
        condition(&first.reconcile().await, "DatabaseReady").0,
        "True"
    );
    let mut su = PgConnection::connect(&pg.superuser_url(&database))
        .await
        .expect("superuser");
    sqlx::raw_sql(
        "INSERT INTO audit_events (id, source, type, occurred_at, actor_type, actor_id, action, outcome)
         VALUES ('kept-1', '/registry', 't', now(), 'user', 'u1', 'a', 'success')",
    )
    .execute(&mut su)
    .await
    .expect("a row");

    // A second resource cannot adopt it while the first exists.
    let second = Fixture::new(true, spec).await;
    annotate_adopt(&second, "database").await;
    let am = second.reconcile().await;
    let (_, reason, message) = condition(&am, "DatabaseReady");
    assert_eq!(reason, "DatabaseConflict", "{message}");
    assert!(
        message.contains(&first.name) && message.contains("still exists"),
        "{message}"
    );

    // Deleted with Retain: now it can, and the kept row is there.
    first.delete_and_reconcile_until_gone().await;
    let am = second.reconcile().await;
    let (status, _, message) = condition(&am, "DatabaseReady");
    assert_eq!(status, "True", "{message}");
    assert!(
        events(&second)
            .await
            .iter()
            .any(|(r, m)| r == "DatabaseAdopted" && m.contains("retained")),
        "a DatabaseAdopted Event"
    );
    let password = role_password(&second, "writer").await;
    let mut writer =
        PgConnection::connect(&pg.url(&format!("{database}_writer"), &password, &database))
            .await
            .expect("the new resource's writer password logs in");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id = 'kept-1'")
        .fetch_one(&mut writer)
        .await
        .expect("count");
    assert_eq!(kept, 1);
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(&database)
    .fetch_one(&mut su)
    .await
    .expect("comment");
    let uid = second.current().await.metadata.uid.expect("uid");
    assert_eq!(comment, Some(format!("audit-manager:{uid}")));
    drop(su);
    drop(writer);
    second.delete_and_reconcile_until_gone().await;
}
