//! The Kafka → PostgreSQL sink against the real broker and server: rows exactly as SPEC §2.3
//! says, exactly once through replays, outages and rebalances; poison records in the DLQ;
//! partition maintenance; the roles' privileges.

use std::collections::HashSet;
use std::time::Duration;

use audit_testenv::http::HttpClient;
use audit_testenv::loadgen::metric;
use audit_testenv::topics::{create_topic, create_topic_with, read_topic};
use audit_testenv::{AuditManager, Kafka, Postgres};
use chrono::{DateTime, Utc};
use common::{Database, generated, post_batch, samples, unique, wait_count};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sqlx::Row as _;

mod common;

/// A topic pair, a consumer group and a database for one test.
struct Setup {
    db: Database,
    topic: String,
    dlq: String,
    group: String,
}

async fn setup(kafka: &Kafka, pg: &Postgres) -> Setup {
    setup_with_dlq(kafka, pg, &[]).await
}

/// A fresh database, events topic (3 partitions) and DLQ topic created with `dlq_config`.
async fn setup_with_dlq(kafka: &Kafka, pg: &Postgres, dlq_config: &[(&str, &str)]) -> Setup {
    let s = Setup {
        db: Database::create(pg),
        topic: unique("events"),
        dlq: unique("dlq"),
        group: unique("group"),
    };
    create_topic(&kafka.bootstrap(), &s.topic, 3).await;
    create_topic_with(&kafka.bootstrap(), &s.dlq, 1, dlq_config).await;
    s
}

impl Setup {
    fn env(&self, group: &str) -> Vec<(&'static str, String)> {
        let mut env = self.db.writer_env();
        env.extend([
            ("AUDIT_MANAGER__KAFKA__DLQ_TOPIC", self.dlq.clone()),
            ("AUDIT_MANAGER__KAFKA__CONSUMER_GROUP", group.to_string()),
            (
                "AUDIT_MANAGER__KAFKA__CONSUMER__FLUSH_INTERVAL_MS",
                "200".into(),
            ),
            (
                "AUDIT_MANAGER__KAFKA__CONSUMER__RETRY_INITIAL_BACKOFF_MS",
                "100".into(),
            ),
            (
                "AUDIT_MANAGER__KAFKA__CONSUMER__RETRY_MAX_BACKOFF_MS",
                "1000".into(),
            ),
            // The writer role cannot create partitions; `migrate --create-roles` did.
            ("AUDIT_MANAGER__COMPONENTS__MAINTENANCE", "false".into()),
        ]);
        env
    }

    fn start(&self, kafka: &Kafka) -> AuditManager {
        common::start(kafka, &self.topic, &self.env(&self.group))
    }

    /// Starts the runtime and connects a client to it.
    async fn serve(&self, kafka: &Kafka) -> (AuditManager, HttpClient) {
        let runtime = self.start(kafka);
        let client = HttpClient::connect(&runtime.address())
            .await
            .expect("connect");
        (runtime, client)
    }
}

async fn produce(kafka: &Kafka, topic: &str, records: &[(Option<&str>, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .create()
        .expect("producer");
    for (key, payload) in records {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_become_rows_exactly_as_specified_and_replays_never_duplicate() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let s = setup(kafka, pg).await;
    let (runtime, mut client) = s.serve(kafka).await;
    let mut expected = 0;
    for round in 0..3 {
        for (name, body) in samples() {
            if let Some(events) = body.get("events").and_then(Value::as_array) {
                post_batch(&mut client, events).await;
                if round == 0 {
                    expected += events.len();
                }
            } else {
                let a = client
                    .post(
                        "/v1/auditmanager/events",
                        "application/json",
                        body.to_string(),
                    )
                    .await
                    .expect("POST");
                assert_eq!(a.status, 202, "{name}");
                if round == 0 {
                    expected += 1;
                }
            }
        }
    }
    // The same id from another source is another event.
    let mut other = samples()[0].1.clone();
    other["source"] = json!("/openg2p/another-idp");
    post_batch(&mut client, &[other]).await;
    expected += 1;

    let reader = s.db.connect("reader").await;
    let n = wait_count(
        &reader,
        "SELECT count(*) FROM audit_events",
        expected as i64,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        n, expected as i64,
        "three rounds of the samples give one row each"
    );
    let two: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE id = 'evt-login-0001'")
            .fetch_one(&reader)
            .await
            .expect("count");
    assert_eq!(two, 2, "same id from two sources: two rows");

    let row = sqlx::query(
        "SELECT id, source, type, subject, occurred_at, ingested_at, actor_type, actor_id, resource_type,
                resource_id, action, outcome, reason, trace_id, details
           FROM audit_events WHERE id = 'evt-benef-0002'",
    )
    .fetch_one(&reader)
    .await
    .expect("the beneficiary update row");
    let get = |c: &str| row.try_get::<Option<String>, _>(c).expect(c);
    assert_eq!(get("source").as_deref(), Some("/openg2p/registry"));
    assert_eq!(
        get("type").as_deref(),
        Some("org.openg2p.beneficiary.updated")
    );
    assert_eq!(get("subject").as_deref(), Some("beneficiary/b_1029384756"));
    assert_eq!(get("actor_type").as_deref(), Some("user"));
    assert_eq!(get("actor_id").as_deref(), Some("u_4421"));
    assert_eq!(get("resource_type").as_deref(), Some("beneficiary"));
    assert_eq!(get("resource_id").as_deref(), Some("b_1029384756"));
    assert_eq!(get("action").as_deref(), Some("update"));
    assert_eq!(get("outcome").as_deref(), Some("success"));
    assert_eq!(
        get("reason").as_deref(),
        Some("beneficiary request at the district office")
    );
    assert_eq!(
        get("trace_id").as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let occurred: DateTime<Utc> = row.try_get("occurred_at").expect("occurred_at");
    assert_eq!(occurred.to_rfc3339(), "2026-11-02T09:18:55+00:00");
    let details: Value = row.try_get("details").expect("details");
    assert_eq!(
        details,
        json!({
            "actor": {"name": "asha.rao", "roles": ["enrolment-officer"], "session_id": "s_9f2c"},
            "changes": {
                "bank_account": {"old": "XXXX1234", "new": "XXXX9876"},
                "phone": {"old": "+91-98XXXX0001", "new": "+91-98XXXX0042"}
            }
        })
    );
    let payment: Value =
        sqlx::query_scalar("SELECT details FROM audit_events WHERE id = 'evt-pay-0001'")
            .fetch_one(&reader)
            .await
            .expect("payment");
    assert_eq!(
        payment["resource"]["amount"],
        json!(12500),
        "resource extras stay in details"
    );
    let denied: (String, Option<String>) =
        sqlx::query_as("SELECT outcome, reason FROM audit_events WHERE id = 'evt-authz-0001'")
            .fetch_one(&reader)
            .await
            .expect("denied");
    assert_eq!(
        denied,
        (
            "denied".into(),
            Some("missing permission registry.export".into())
        )
    );
    let nothing_left: Option<Value> = sqlx::query_scalar(
        "SELECT details FROM audit_events WHERE type = 'org.openg2p.portal.page_viewed'",
    )
    .fetch_one(&reader)
    .await
    .expect("page view");
    assert_eq!(nothing_left, None, "details is NULL when nothing is left");

    // Restart from offset 0 with a new group: every record is read again, no row is added.
    drop(client);
    drop(runtime);
    let again = common::start(kafka, &s.topic, &s.env(&unique("regroup")));
    let health = wait_lag_zero(&again).await;
    assert_eq!(health["components"]["consumer"]["lag"], json!(0));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&reader)
        .await
        .expect("count");
    assert_eq!(
        n, expected as i64,
        "re-reading the topic from offset 0 adds no row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openg2p_staff_portal_events_become_rows_holding_what_was_sent() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let s = setup(kafka, pg).await;
    let (_runtime, mut client) = s.serve(kafka).await;
    let shapes = common::staff_portal_events();
    // Two more: no time at all (the receipt time is used), and extension attributes.
    let (_, first, _) = &shapes[0];
    let mut timeless = first.clone();
    timeless["id"] = json!("6f1c2a0e-5b7d-4c1e-9a51-1d2f3e4a5b10");
    timeless.as_object_mut().map(|e| e.remove("time"));
    let mut extended = first.clone();
    extended["id"] = json!("6f1c2a0e-5b7d-4c1e-9a51-1d2f3e4a5b11");
    extended["tenant"] = json!("north");
    extended["priority"] = json!(3);
    extended["tag"] = Value::Null;
    let before = Utc::now();
    for event in shapes
        .iter()
        .map(|(_, e, _)| e)
        .chain([&timeless, &extended])
    {
        // One POST per audited call, as the middleware sends them.
        let answer = client
            .post(
                "/v1/auditmanager/events",
                "application/json",
                event.to_string(),
            )
            .await
            .expect("POST");
        assert_eq!(answer.status, 202, "{event}: {:?}", answer.json());
    }
    let after = Utc::now();
    let reader = s.db.connect("reader").await;
    let n = wait_count(
        &reader,
        "SELECT count(*) FROM audit_events",
        11,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(n, 11, "every event the staff portal sent is a row");

    let row = |id: &str| {
        sqlx::query(
            "SELECT actor_type, actor_id, action, outcome, occurred_at, details, extensions,
                    normalized
               FROM audit_events WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_one(&reader)
    };
    for (name, event, reasons) in &shapes {
        let r = row(event["id"].as_str().expect("id"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let actor = &event["data"]["actor"];
        assert_eq!(r.get::<String, _>("actor_type"), actor["type"], "{name}");
        assert_eq!(r.get::<String, _>("actor_id"), actor["id"], "{name}");
        assert_eq!(
            r.get::<String, _>("action"),
            event["data"]["action"],
            "{name}"
        );
        assert_eq!(
            r.get::<String, _>("outcome"),
            event["data"]["outcome"],
            "{name}"
        );
        let occurred: DateTime<Utc> = r.get("occurred_at");
        assert_eq!(
            occurred.to_rfc3339(),
            "2026-12-02T04:41:06.123+00:00",
            "{name}"
        );
        let details: Value = r.get("details");
        // The actor's other keys as sent, its nulls taken as absent; context exactly as sent.
        let mut rest = actor.as_object().expect("actor").clone();
        rest.retain(|k, v| k != "type" && k != "id" && !v.is_null());
        let want_actor = (!rest.is_empty()).then_some(Value::Object(rest));
        assert_eq!(details.get("actor").cloned(), want_actor, "{name}");
        assert_eq!(details["context"], event["data"]["context"], "{name}");
        let normalized: Option<Vec<String>> = r.get("normalized");
        let mut want: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        want.sort();
        let mut got = normalized.unwrap_or_default();
        got.sort();
        assert_eq!(got, want, "{name}");
        assert_eq!(r.get::<Option<Value>, _>("extensions"), None, "{name}");
    }
    let r = row("6f1c2a0e-5b7d-4c1e-9a51-1d2f3e4a5b10")
        .await
        .expect("timeless row");
    let occurred: DateTime<Utc> = r.get("occurred_at");
    assert!(
        occurred >= before - chrono::Duration::seconds(1) && occurred <= after,
        "the receipt time, {occurred}, lies between {before} and {after}"
    );
    assert_eq!(
        r.get::<Option<Vec<String>>, _>("normalized"),
        Some(vec!["time_defaulted".to_string()]),
        "the row records that its time was defaulted"
    );
    let r = row("6f1c2a0e-5b7d-4c1e-9a51-1d2f3e4a5b11")
        .await
        .expect("extended row");
    assert_eq!(
        r.get::<Option<Value>, _>("extensions"),
        Some(json!({"tenant": "north", "priority": 3})),
        "extension attributes reach PostgreSQL; a null one is dropped"
    );
    assert_eq!(
        r.get::<Option<Vec<String>>, _>("normalized"),
        Some(vec!["null_dropped".to_string()])
    );
}

/// Waits until the runtime reports consumer lag 0; returns its health report.
async fn wait_lag_zero(runtime: &AuditManager) -> Value {
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = client
            .get("/v1/auditmanager/health")
            .await
            .expect("health")
            .json();
        if report["response"]["components"]["consumer"]["lag"] == json!(0) {
            return report["response"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never reached 0: {report}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Committed offsets of `group` on `topic`, summed.
fn committed(kafka: &Kafka, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let sum = offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    drop(offsets);
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_nothing_and_commits_nothing_early() {
    let kafka = audit_testenv::kafka();
    // Its own server: this test stops it.
    let pg = Postgres::start().unwrap_or_else(|e| panic!("testenv: {e}"));
    let s = setup(kafka, &pg).await;
    let (_runtime, mut client) = s.serve(kafka).await;
    let reader = s.db.connect("reader").await;
    let mut sent = 0usize;
    for i in 0..10 {
        post_batch(
            &mut client,
            &(0..50)
                .map(|j| generated(i * 50 + j, "outage"))
                .collect::<Vec<_>>(),
        )
        .await;
        sent += 50;
    }
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            sent as i64,
            Duration::from_secs(30)
        )
        .await,
        sent as i64
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = committed(kafka, &s.group, &s.topic);
    assert_eq!(before, sent as i64, "offsets committed once the rows exist");

    pg.stop();
    let outage = std::time::Instant::now();
    let mut during = 0usize;
    while outage.elapsed() < Duration::from_secs(30) {
        let batch: Vec<Value> = (0..20)
            .map(|j| generated(10_000 + during + j, "outage"))
            .collect();
        post_batch(&mut client, &batch).await; // ingest stays up: 202 while the database is down
        during += 20;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready = client
        .get("/v1/auditmanager/health/ready")
        .await
        .expect("ready");
    assert_eq!(ready.status, 200, "readiness does not depend on PostgreSQL");
    let health = client
        .get("/v1/auditmanager/health")
        .await
        .expect("health")
        .json();
    assert!(
        health["response"]["components"]["database"]["reachable"] == json!(false),
        "{health}"
    );
    assert_eq!(
        committed(kafka, &s.group, &s.topic),
        before,
        "nothing committed while the database is down"
    );

    pg.resume()
        .unwrap_or_else(|e| panic!("restarting PostgreSQL: {e}"));
    let reader = s.db.connect("reader").await;
    let total = (sent + during) as i64;
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            total,
            Duration::from_secs(60)
        )
        .await,
        total
    );
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM audit_events")
        .fetch_one(&reader)
        .await
        .expect("count");
    assert_eq!(distinct, total, "every event exactly once");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        committed(kafka, &s.group, &s.topic),
        total,
        "offsets caught up after the rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dlq_with_headers_and_neighbours_are_stored() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let s = setup(kafka, pg).await;
    // A month without a partition: drop one inside the retention window.
    let admin = sqlx::PgPool::connect(&pg.superuser_url(&s.db.name))
        .await
        .expect("admin");
    sqlx::raw_sql("DROP TABLE audit_events_2021_03")
        .execute(&admin)
        .await
        .expect("drop partition");
    let runtime = s.start(kafka);
    let good = |n: usize| serde_json::to_vec(&generated(n, "neighbour")).expect("json");
    let mut orphan = generated(99, "orphan");
    orphan["time"] = json!("2021-03-15T10:00:00Z");
    let mut ancient = generated(98, "ancient");
    ancient["time"] = json!("1999-01-01T00:00:00Z");
    let records: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some("k"), good(1)),
        (Some("k"), vec![0xff, 0x00, 0x13, 0x37]),
        (Some("k"), b"{\"specversion\": \"1.0\", ".to_vec()),
        (Some("k"), good(2)),
        (
            Some("k"),
            serde_json::to_vec(&json!({"specversion": "1.0", "id": "x"})).expect("json"),
        ),
        (Some("k"), serde_json::to_vec(&ancient).expect("json")),
        (Some("k"), serde_json::to_vec(&orphan).expect("json")),
        (Some("k"), good(3)),
    ];
    produce(kafka, &s.topic, &records).await;
    let reader = s.db.connect("reader").await;
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            3,
            Duration::from_secs(30)
        )
        .await,
        3,
        "valid neighbours stored"
    );
    let dlq = read_topic(&kafka.bootstrap(), &s.dlq, 5, Duration::from_secs(30));
    assert_eq!(dlq.len(), 5, "{dlq:?}");
    let reasons: Vec<&str> = dlq
        .iter()
        .map(|r| {
            r.headers
                .get("audit-dlq-reason")
                .map(String::as_str)
                .unwrap_or_default()
        })
        .collect();
    assert!(reasons[0].starts_with("not JSON"), "{reasons:?}");
    assert!(reasons[1].starts_with("not JSON"), "{reasons:?}");
    assert!(
        reasons[2].starts_with("invalid event") && reasons[2].contains("source"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].starts_with("invalid event") && reasons[3].contains("time"),
        "{reasons:?}"
    );
    assert!(
        reasons[4].starts_with("no partition") && reasons[4].contains("audit_events_2021_03"),
        "{reasons:?}"
    );
    let offsets: HashSet<String> = dlq
        .iter()
        .map(|r| r.headers["audit-dlq-original-offset"].clone())
        .collect();
    for r in &dlq {
        assert_eq!(r.headers["audit-dlq-original-topic"], s.topic);
        assert!(
            r.headers["audit-dlq-original-partition"]
                .parse::<i32>()
                .is_ok()
        );
        assert!(DateTime::parse_from_rfc3339(&r.headers["audit-dlq-first-seen"]).is_ok());
        assert_eq!(r.key.as_deref(), Some("k"), "the original key is kept");
    }
    assert_eq!(offsets.len(), 5, "each DLQ record names its own offset");
    assert_eq!(
        &dlq[0].payload, &records[1].1,
        "the original bytes are kept"
    );

    // The consumer keeps running: a later event is stored too.
    produce(kafka, &s.topic, &[(Some("k"), good(4))]).await;
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            4,
            Duration::from_secs(30)
        )
        .await,
        4
    );

    // Fix the cause (create the partition) and replay the DLQ: the orphan is stored, the rest
    // returns to the DLQ once more; replaying again sends nothing new.
    sqlx::raw_sql("CREATE TABLE audit_events_2021_03 PARTITION OF audit_events FOR VALUES FROM ('2021-03-01') TO ('2021-04-01')")
        .execute(&admin)
        .await
        .expect("recreate partition");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT, INSERT ON audit_events_2021_03 TO {}",
        s.db.role("writer")
    )))
    .execute(&admin)
    .await
    .expect("grant");
    let dlq_command = |args: &[&str]| {
        let mut cmd = std::process::Command::new(common::BINARY);
        cmd.arg("dlq")
            .args(args)
            .env_clear()
            .envs(s.env(&s.group))
            .env("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap())
            .env("AUDIT_MANAGER__KAFKA__TOPIC", &s.topic);
        let out = cmd.output().expect("audit-manager dlq");
        assert!(
            out.status.success(),
            "dlq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Looking before replaying: counts by reason, a filtered list, a dry run.
    let counted = dlq_command(&["count"]);
    assert!(
        counted.starts_with(&format!("5 record(s) in {}", s.dlq))
            && counted.contains("invalid_event 2")
            && counted.contains("no_partition 1")
            && counted.contains("not_json 2"),
        "{counted}"
    );
    let listed = dlq_command(&["list", "--source", "/lo", "--type", "org.openg2p.test"]);
    let ids: Vec<String> = listed
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(v["source"], "/load", "{l}");
            assert!(
                v["reason"].is_string() && v["dead_lettered"].is_string(),
                "{l}"
            );
            v["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(ids, ["ancient-98", "orphan-99"], "{listed}");
    assert!(dlq_command(&["count", "--type", "nothing.like.it"]).starts_with("0 record(s)"));
    assert!(
        dlq_command(&["replay", "--dry-run"]).contains("would replay 5 record(s)"),
        "a dry run sends nothing and moves no offset"
    );
    assert!(dlq_command(&["replay"]).contains("replayed 5 record(s)"));
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            5,
            Duration::from_secs(30)
        )
        .await,
        5,
        "the orphan is stored after the fix"
    );
    // The 4 records that came back are in the DLQ before the second replay.
    assert_eq!(
        read_topic(&kafka.bootstrap(), &s.dlq, 9, Duration::from_secs(30)).len(),
        9
    );
    let before_second = chrono::Utc::now().to_rfc3339();
    assert!(
        dlq_command(&["replay"]).contains("replayed 4 record(s)"),
        "only the 4 that came back after the first replay"
    );
    assert_eq!(
        read_topic(&kafka.bootstrap(), &s.dlq, 13, Duration::from_secs(30)).len(),
        13
    );

    // A filtered replay reads the whole DLQ and sends only what matches: the /load records
    // sent to the DLQ since the second replay (the ancient event, once more).
    assert!(dlq_command(&["count", "--source", "/load"]).starts_with("4 record(s)"));
    let since = ["replay", "--source", "/load", "--since", &before_second];
    assert!(
        dlq_command(&[since.as_slice(), &["--dry-run"]].concat())
            .contains("would replay 1 record(s)")
    );
    assert!(dlq_command(&since).contains("replayed 1 record(s)"));
    assert_eq!(
        read_topic(&kafka.bootstrap(), &s.dlq, 14, Duration::from_secs(30)).len(),
        14,
        "the ancient event is refused again"
    );
    // The replay group was not moved by it: an unfiltered replay still has the 4 of the
    // second round plus the one the filtered replay brought back.
    assert!(dlq_command(&["replay", "--dry-run"]).contains("would replay 5 record(s)"));
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            5,
            Duration::from_secs(5)
        )
        .await,
        5,
        "rows stay single"
    );
    drop(runtime);
}

/// A row PostgreSQL refuses for its content (here a CHECK constraint an administrator added)
/// would fail its batch on every retry and stop the sink for good. It goes to the DLQ instead,
/// its batch neighbours are stored, and the offsets move on. Records PostgreSQL could never
/// store (NUL, an id too long for the primary key) that reach Kafka without the ingest API are
/// refused by the sink's validation before they get that far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_postgres_refuses_go_to_the_dlq_and_their_batch_is_stored() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let s = setup(kafka, pg).await;
    let admin = sqlx::PgPool::connect(&pg.superuser_url(&s.db.name))
        .await
        .expect("admin");
    sqlx::raw_sql(
        "ALTER TABLE audit_events ADD CONSTRAINT no_forbidden CHECK (action <> 'forbidden')",
    )
    .execute(&admin)
    .await
    .expect("add constraint");
    let runtime = s.start(kafka);
    let event = |n: usize, edit: &dyn Fn(&mut Value)| {
        let mut e = generated(n, "refused");
        edit(&mut e);
        serde_json::to_vec(&e).expect("json")
    };
    let records: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some("k"), event(1, &|_| {})),
        (
            Some("k"),
            event(2, &|e| e["data"]["action"] = json!("forbidden")),
        ),
        (Some("k"), event(3, &|_| {})),
        (
            Some("k"),
            event(4, &|e| e["data"]["context"] = json!({"note": "a\u{0}b"})),
        ),
        (Some("k"), event(5, &|e| e["id"] = json!("x".repeat(3000)))),
        (Some("k"), event(6, &|_| {})),
    ];
    produce(kafka, &s.topic, &records).await;
    let reader = s.db.connect("reader").await;
    let count = "SELECT count(*) FROM audit_events";
    assert_eq!(
        wait_count(&reader, count, 3, Duration::from_secs(30)).await,
        3,
        "the neighbours are stored"
    );
    let dlq = read_topic(&kafka.bootstrap(), &s.dlq, 3, Duration::from_secs(30));
    let reasons: Vec<(&str, &str)> = dlq
        .iter()
        .map(|r| {
            (
                r.headers["audit-dlq-original-offset"].as_str(),
                r.headers["audit-dlq-reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(dlq.len(), 3, "{reasons:?}");
    let reason_of = |offset: &str| {
        reasons
            .iter()
            .find(|(o, _)| *o == offset)
            .map(|(_, r)| *r)
            .unwrap_or_else(|| panic!("no DLQ record for offset {offset}: {reasons:?}"))
    };
    // One partition key, so the offsets are 0..6 in the order produced.
    assert!(
        reason_of("1").starts_with("refused by PostgreSQL: ")
            && reason_of("1").contains("no_forbidden"),
        "{reasons:?}"
    );
    assert!(
        reason_of("3").starts_with("invalid event: data.context.note: contains U+0000"),
        "{reasons:?}"
    );
    assert!(
        reason_of("4").starts_with("invalid event: id: must be at most 1024 bytes"),
        "{reasons:?}"
    );
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY id")
        .fetch_all(&reader)
        .await
        .expect("ids");
    assert_eq!(ids, ["refused-1", "refused-3", "refused-6"]);
    // Nothing is left to retry: the offsets moved past all six, and a later event is stored.
    wait_lag_zero(&runtime).await;
    produce(kafka, &s.topic, &[(Some("k"), event(7, &|_| {}))]).await;
    assert_eq!(
        wait_count(&reader, count, 4, Duration::from_secs(30)).await,
        4
    );
    let answer = HttpClient::connect(&runtime.address())
        .await
        .expect("connect")
        .get("/v1/auditmanager/metrics")
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&answer.body);
    assert!(
        metrics.contains("audit_dlq_records_total{reason=\"refused_by_database\"} 1"),
        "{metrics}"
    );
    drop(runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_rebalance_without_loss_or_duplicates() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let s = setup(kafka, pg).await;
    let ingest = common::start(kafka, &s.topic, &common::ingest_only());
    let a = s.start(kafka);
    let b = s.start(kafka);
    let mut client = HttpClient::connect(&ingest.address())
        .await
        .expect("connect");
    let mut sent = 0;
    for i in 0..40 {
        post_batch(
            &mut client,
            &(0..50)
                .map(|j| generated(i * 50 + j, "rebalance"))
                .collect::<Vec<_>>(),
        )
        .await;
        sent += 50;
        if i == 15 {
            b.terminate();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        b.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "{}",
        b.log_tail(20)
    );
    let reader = s.db.connect("reader").await;
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            sent,
            Duration::from_secs(60)
        )
        .await,
        sent,
        "nothing lost, nothing duplicated"
    );
    drop(a);
}

async fn partitions(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("partitions")
}

fn maintain(db: &Database, now: &str, retention: u32) -> std::process::Output {
    std::process::Command::new(common::BINARY)
        .args(["maintain", "--now", now])
        .env_clear()
        .envs(db.env_for(&db.role("owner"), &db.password))
        .env(
            "AUDIT_MANAGER__DATABASE__PARTITION_RETENTION_MONTHS",
            retention.to_string(),
        )
        .env("AUDIT_MANAGER__DATABASE__PARTITION_PRE_CREATE_MONTHS", "3")
        .output()
        .expect("maintain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_creates_and_drops_exactly_the_planned_partitions() {
    let pg = audit_testenv::postgres();
    let db = Database::create(pg);
    let owner = db.connect("owner").await;
    // migrate --create-roles ran maintenance for today; start from a clean slate.
    for p in partitions(&owner).await {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {p}")))
            .execute(&owner)
            .await
            .expect("drop");
    }
    let out = maintain(&db, "2030-06-15T12:00:00Z", 12);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = partitions(&owner).await;
    assert_eq!(got.len(), 12 + 1 + 3, "{got:?}");
    assert_eq!(
        got.first().map(String::as_str),
        Some("audit_events_2029_06")
    );
    assert_eq!(got.last().map(String::as_str), Some("audit_events_2030_09"));
    // Idempotent.
    let again = maintain(&db, "2030-06-15T12:00:00Z", 12);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("created 0 partition(s)"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(partitions(&owner).await, got);
    // Two months later: the two oldest go, two new months come.
    let later = maintain(&db, "2030-08-01T00:00:00Z", 12);
    let text = String::from_utf8_lossy(&later.stdout);
    assert!(
        text.contains("dropped 2 (audit_events_2029_06, audit_events_2029_07)"),
        "{text}"
    );
    let now = partitions(&owner).await;
    assert_eq!(
        now.first().map(String::as_str),
        Some("audit_events_2029_08")
    );
    assert_eq!(now.last().map(String::as_str), Some("audit_events_2030_11"));
    // Retention 0 never drops.
    let forever = maintain(&db, "2035-01-01T00:00:00Z", 0);
    assert!(String::from_utf8_lossy(&forever.stdout).contains("dropped 0"));
    // Concurrent runs: all succeed, no partition twice.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (name, host, port, password) = (
                db.name.clone(),
                db.host.clone(),
                db.port,
                db.password.clone(),
            );
            std::thread::spawn(move || {
                let db = Database {
                    name,
                    host,
                    port,
                    password,
                };
                maintain(&db, "2036-01-01T00:00:00Z", 12)
            })
        })
        .collect();
    for r in runs {
        let out = r.join().expect("thread");
        assert!(
            out.status.success(),
            "concurrent maintain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = partitions(&owner).await;
    assert_eq!(last.iter().collect::<HashSet<_>>().len(), last.len());
    assert_eq!(
        last.first().map(String::as_str),
        Some("audit_events_2035_01")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_appends_and_the_reader_only_reads() {
    let pg = audit_testenv::postgres();
    let db = Database::create(pg);
    let writer = db.connect("writer").await;
    let reader = db.connect("reader").await;
    let owner = db.connect("owner").await;
    let insert = "INSERT INTO audit_events (id, source, type, occurred_at, actor_type, actor_id, action, outcome)
                  VALUES ('r1', '/t', 't', now(), 'user', 'u', 'a', 'success')";
    sqlx::raw_sql(insert)
        .execute(&writer)
        .await
        .expect("the writer inserts");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&writer)
        .await
        .expect("the writer selects");
    assert_eq!(n, 1);
    for (who, pool, sql) in [
        ("writer", &writer, "UPDATE audit_events SET action = 'x'"),
        ("writer", &writer, "DELETE FROM audit_events"),
        ("writer", &writer, "TRUNCATE audit_events"),
        ("writer", &writer, "CREATE TABLE sneaky (x int)"),
        ("reader", &reader, insert),
        ("reader", &reader, "UPDATE audit_events SET action = 'x'"),
        ("reader", &reader, "DELETE FROM audit_events"),
        ("reader", &reader, "CREATE TABLE sneaky (x int)"),
        ("owner", &owner, "UPDATE audit_events SET action = 'x'"),
        ("owner", &owner, "DELETE FROM audit_events"),
        ("owner", &owner, "TRUNCATE audit_events"),
    ] {
        let err = sqlx::raw_sql(sql).execute(pool).await.err();
        assert!(err.is_some(), "{who} must not run: {sql}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&reader)
        .await
        .expect("the reader selects");
    assert_eq!(n, 1, "the row is untouched");
}

/// Issue 16: a record written straight to Kafka (not through the ingest, which bounds events)
/// must not stall the sink. One has 10,000 NUL strings, so ten thousand problems: its DLQ
/// reason is cut at 2 KiB instead of becoming a header the broker refuses. One is larger than
/// the DLQ topic accepts: it is reported and skipped, not retried forever. The records after
/// them are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_records_cannot_stall_the_sink() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let s = setup_with_dlq(kafka, pg, &[("max.message.bytes", "200000")]).await;
    let (runtime, mut client) = s.serve(kafka).await;

    let good = |n: usize| serde_json::to_vec(&generated(n, "after")).expect("json");
    let mut many = generated(1, "many-problems");
    many["data"]["changes"] = json!(vec!["\u{0}"; 10_000]);
    let many = serde_json::to_vec(&many).expect("json");
    assert!(many.len() < 200_000, "the record itself fits the DLQ");
    let mut huge = generated(2, "too-large-for-the-dlq");
    // Random text, so that compression cannot bring it under the DLQ topic's limit.
    let random: Vec<String> = (0..12_000)
        .map(|_| format!("{}\u{0}", uuid::Uuid::new_v4().simple()))
        .collect();
    huge["data"]["changes"] = json!(random);
    let huge = serde_json::to_vec(&huge).expect("json");
    assert!(huge.len() > 400_000);
    produce(
        kafka,
        &s.topic,
        &[
            (Some("k"), many),
            (Some("k"), huge),
            (Some("k"), good(1)),
            (Some("k"), good(2)),
        ],
    )
    .await;

    let reader = s.db.connect("reader").await;
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events",
            2,
            Duration::from_secs(60)
        )
        .await,
        2,
        "the records after the crafted ones are stored: {}",
        runtime.log_tail(20)
    );
    let dlq = read_topic(&kafka.bootstrap(), &s.dlq, 1, Duration::from_secs(30));
    assert_eq!(dlq.len(), 1, "only the record that fits is on the DLQ");
    let reason = &dlq[0].headers["audit-dlq-reason"];
    assert!(reason.len() < 2200, "reason of {} bytes", reason.len());
    assert!(reason.contains("(cut: "), "{reason}");
    let metrics = client
        .get("/v1/auditmanager/metrics")
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("audit_dlq_records_total{reason=\"unwritable\"} 1"),
        "{metrics}"
    );
    assert!(
        runtime
            .log()
            .contains("Kafka refuses this record on the DLQ for good"),
        "the skip is logged with where the record is"
    );
}

/// Issue 22: statements grow with the backlog. 30,000 events already in Kafka are written in
/// statements larger than `batch_max_records`, every event exactly once, every offset
/// committed; events that then arrive one at a time are written as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_grow_with_the_backlog_and_shrink_when_caught_up() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let s = setup(kafka, pg).await;
    let total = 30_000;
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|n| serde_json::to_vec(&generated(n, "backlog")).expect("json"))
        .collect();
    // All at once (order does not matter here): one by one would take minutes.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .create()
        .expect("producer");
    let sends = payloads.iter().enumerate().map(|(n, p)| {
        let key = (n % 17).to_string();
        let producer = &producer;
        let topic = &s.topic;
        async move {
            producer
                .send(
                    FutureRecord::to(topic).payload(p).key(&key),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
    futures::future::join_all(sends).await;
    let (runtime, mut client) = s.serve(kafka).await;
    let reader = s.db.connect("reader").await;
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(DISTINCT id) FROM audit_events",
            total as i64,
            Duration::from_secs(120)
        )
        .await,
        total as i64,
        "{}",
        runtime.log_tail(20)
    );
    let statements = metric(&mut client, "audit_sink_batch_size_count").await;
    let at_most_500 = metric(&mut client, "audit_sink_batch_size_bucket{le=\"500\"}").await;
    eprintln!(
        "backlog of {total}: {statements} statements, {at_most_500} of them of 500 rows or fewer"
    );
    assert!(
        statements < total as f64 / 500.0,
        "{statements} statements for {total} rows: they did not grow"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&reader)
        .await
        .expect("count");
    assert_eq!(rows, total as i64, "exactly once");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(committed(kafka, &s.group, &s.topic), total as i64);

    // Caught up: one event is a statement of one, written without waiting for others.
    let started = std::time::Instant::now();
    post_batch(&mut client, &[generated(0, "caught-up")]).await;
    assert_eq!(
        wait_count(
            &reader,
            "SELECT count(*) FROM audit_events WHERE id = 'caught-up-0'",
            1,
            Duration::from_secs(10)
        )
        .await,
        1
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}
