//! The ingest path against the real Kafka broker of the test environment: samples arrive with
//! their keys, a full queue refuses whole batches, SIGTERM drains, and ack mode `kafka`
//! survives kill -9.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_testenv::http::HttpClient;
use audit_testenv::topics::{Record, create_topic, read_topic};
use audit_testenv::{AuditManager, Kafka};
use common::{generated, samples};

mod common;
use serde_json::{Value, json};
use tokio::sync::Mutex;

fn unique_topic(name: &str) -> String {
    format!("test.{name}.{}", uuid::Uuid::new_v4().simple())
}

fn start(kafka: &Kafka, topic: &str, extra: &[(&str, &str)]) -> AuditManager {
    let mut env = common::ingest_only();
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    common::start(kafka, topic, &env)
}

fn partition_key(event: &Value) -> String {
    match event.get("subject").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => event["data"]["actor"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_arrives_in_kafka_unchanged_with_its_key() {
    let kafka = audit_testenv::kafka();
    let topic = unique_topic("samples");
    create_topic(&kafka.bootstrap(), &topic, 3).await;
    let runtime = start(kafka, &topic, &[]);
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");

    // Expected events by id, as sent (ids filled in from the answers).
    let mut sent: BTreeMap<String, Value> = BTreeMap::new();
    for (i, (name, body)) in samples().into_iter().enumerate() {
        if let Some(events) = body.get("events").and_then(Value::as_array) {
            let answer = client
                .post(
                    "/v1/auditmanager/events/batch",
                    "application/json",
                    body.to_string(),
                )
                .await
                .expect("POST batch");
            assert_eq!(answer.status, 202, "{name}: {:?}", answer.json());
            let ids = answer.json()["response"]["accepted"].clone();
            let ids: Vec<String> = serde_json::from_value(ids).expect("accepted ids");
            assert_eq!(ids.len(), events.len(), "{name}: one id per event");
            for (id, event) in ids.into_iter().zip(events) {
                let mut event = event.clone();
                event["id"] = json!(id);
                sent.insert(id, event);
            }
        } else {
            // Alternate the two structured media types.
            let media = if i % 2 == 0 {
                "application/json"
            } else {
                "application/cloudevents+json"
            };
            let answer = client
                .post("/v1/auditmanager/events", media, body.to_string())
                .await
                .expect("POST event");
            assert_eq!(answer.status, 202, "{name}: {:?}", answer.json());
            assert_eq!(answer.json()["response"]["accepted"], body["id"], "{name}");
            sent.insert(body["id"].as_str().expect("sample id").to_string(), body);
        }
    }
    // The batch sample without an id got a deterministic one: sending it again gives the same.
    let batch = samples()
        .into_iter()
        .find(|(n, _)| n.starts_with("batch"))
        .expect("batch sample")
        .1;
    let again = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            batch.to_string(),
        )
        .await
        .expect("POST batch again");
    let again: Vec<String> =
        serde_json::from_value(again.json()["response"]["accepted"].clone()).expect("ids");
    assert!(
        again.iter().all(|id| sent.contains_key(id)),
        "ids are deterministic: {again:?}"
    );

    let expected = sent.len() + again.len();
    let records = read_topic(
        &kafka.bootstrap(),
        &topic,
        expected,
        Duration::from_secs(30),
    );
    assert_eq!(
        records.len(),
        expected,
        "every accepted event is in {topic}"
    );
    for record in &records {
        let got = record.json();
        let id = got["id"].as_str().expect("record has an id");
        let want = sent
            .get(id)
            .unwrap_or_else(|| panic!("unexpected record {got}"));
        assert_eq!(&got, want, "event {id} arrives unchanged");
        assert_eq!(
            record.key.as_deref(),
            Some(partition_key(want).as_str()),
            "key of {id}"
        );
    }
    assert_eq!(
        runtime_metric(&mut client, "audit_kafka_published_total").await,
        expected as f64
    );
}

/// A complete valid event is published as the bytes it was sent in (key order, spacing and
/// escapes kept), alone or in a batch; one that validation completes (no `data.actor.type`)
/// is published completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_events_are_published_byte_for_byte_and_completed_ones_completed() {
    let kafka = audit_testenv::kafka();
    let topic = unique_topic("as-sent");
    create_topic(&kafka.bootstrap(), &topic, 1).await;
    let runtime = start(kafka, &topic, &[]);
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let event = |id: &str| {
        format!(
            "{{ \"time\": \"2026-11-02T09:18:55Z\", \"specversion\":\"1.0\",\n  \"id\": \"{id}\", \"source\": \"/s\", \"type\": \"t\",\n  \"data\": {{\"outcome\": \"success\", \"action\": \"vi\\u0065w\", \"actor\": {{\"id\": \"u_1\", \"type\": \"user\"}}, \"n\": 1.50}} }}"
        )
    };
    let single = event("as-sent-1");
    let in_batch = event("as-sent-2");
    let completed = r#"{"specversion":"1.0","id":"completed-1","source":"/s","type":"t","time":"2026-11-02T09:18:55Z","data":{"actor":{"id":"u_1"},"action":"view","outcome":"success"}}"#;
    let answer = client
        .post(
            "/v1/auditmanager/events",
            "application/cloudevents+json",
            single.clone(),
        )
        .await
        .expect("POST event");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    let batch = format!("[{in_batch},\n {completed}]");
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/cloudevents-batch+json",
            batch,
        )
        .await
        .expect("POST batch");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    assert_eq!(
        answer.json()["response"],
        json!({"accepted": ["as-sent-2", "completed-1"], "count": 2})
    );

    let records = read_topic(&kafka.bootstrap(), &topic, 3, Duration::from_secs(30));
    let by_id: BTreeMap<String, &Record> = records
        .iter()
        .map(|r| (r.json()["id"].as_str().unwrap_or_default().to_string(), r))
        .collect();
    assert_eq!(by_id.len(), 3, "three records: {by_id:?}");
    assert_eq!(by_id["as-sent-1"].payload, single.as_bytes());
    assert_eq!(by_id["as-sent-2"].payload, in_batch.as_bytes());
    assert_eq!(by_id["as-sent-1"].key.as_deref(), Some("u_1"));
    let mut want: Value = serde_json::from_str(completed).expect("json");
    want["data"]["actor"]["type"] = json!("user");
    assert_eq!(by_id["completed-1"].json(), want, "completed by validation");
}

async fn runtime_metric(client: &mut HttpClient, name: &str) -> f64 {
    let text = client
        .get("/v1/auditmanager/metrics")
        .await
        .expect("GET /metrics");
    String::from_utf8_lossy(&text.body)
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

fn ids_in(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_whole_batches_and_nothing_of_them_reaches_kafka() {
    // Its own broker: this test stops it to hold events in the queue.
    let kafka = Kafka::start().unwrap_or_else(|e| panic!("testenv: {e}"));
    let topic = unique_topic("full");
    create_topic(&kafka.bootstrap(), &topic, 3).await;
    let runtime = start(
        &kafka,
        &topic,
        &[
            ("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", "20"),
            ("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "20"),
        ],
    );
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let batch = |from: usize, n: usize| {
        json!({ "events": (from..from + n).map(|i| generated(i, "full")).collect::<Vec<_>>() })
            .to_string()
    };

    // Bigger than a batch may be: refused outright.
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            batch(1000, 21),
        )
        .await
        .expect("POST");
    assert_eq!(answer.status, 400, "{:?}", answer.json());
    assert_eq!(answer.json()["errors"][0]["errorCode"], json!("AUD-007"));

    kafka.stop();
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            batch(0, 15),
        )
        .await
        .expect("POST");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    // 15 of 20 held while Kafka is down: a batch of 6 does not fit, and none of it is queued.
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            batch(2000, 6),
        )
        .await
        .expect("POST");
    assert_eq!(answer.status, 503, "{:?}", answer.json());
    assert_eq!(answer.json()["errors"][0]["errorCode"], json!("AUD-004"));
    assert!(
        answer.headers.contains_key("retry-after"),
        "503 carries Retry-After"
    );
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            batch(15, 5),
        )
        .await
        .expect("POST");
    assert_eq!(
        answer.status,
        202,
        "exactly the remaining room is accepted: {:?}",
        answer.json()
    );
    let answer = client
        .post(
            "/v1/auditmanager/events",
            "application/json",
            generated(3000, "full").to_string(),
        )
        .await
        .expect("POST");
    assert_eq!(
        answer.status, 503,
        "a single event is refused too when full"
    );
    let health = client
        .get("/v1/auditmanager/health")
        .await
        .expect("GET /health");
    assert_eq!(
        health.json()["response"]["components"]["queue"]["depth"],
        json!(20),
        "{:?}",
        health.json()
    );

    kafka
        .resume()
        .unwrap_or_else(|e| panic!("restarting Kafka: {e}"));
    let records = read_topic(&kafka.bootstrap(), &topic, 20, Duration::from_secs(90));
    let ids: HashSet<String> = ids_in(&records).into_iter().collect();
    let want: HashSet<String> = (0..20).map(|i| format!("full-{i}")).collect();
    assert_eq!(
        ids, want,
        "exactly the accepted events reach Kafka, none of the refused batches"
    );
    assert_eq!(records.len(), 20, "and each once");
}

/// Posts batches of `size` from `workers` connections until the server refuses or goes away;
/// returns the ids that got 202.
async fn load(
    address: String,
    run: &'static str,
    workers: usize,
    size: usize,
    stop: Arc<Mutex<bool>>,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let address = address.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let Ok(mut client) = HttpClient::connect(&address).await else {
                return accepted;
            };
            let mut n = w * 10_000_000;
            while !*stop.lock().await {
                let events: Vec<Value> = (n..n + size).map(|i| generated(i, run)).collect();
                n += size;
                match client
                    .post(
                        "/v1/auditmanager/events/batch",
                        "application/json",
                        json!({ "events": events }).to_string(),
                    )
                    .await
                {
                    Ok(a) if a.status == 202 => {
                        let ids: Vec<String> =
                            serde_json::from_value(a.json()["response"]["accepted"].clone())
                                .unwrap_or_default();
                        accepted.extend(ids);
                    }
                    Ok(a) if a.status == 503 => tokio::time::sleep(Duration::from_millis(20)).await,
                    Ok(a) => panic!("unexpected answer {}: {:?}", a.status, a.json()),
                    // The process went away: reconnecting fails and the worker ends.
                    Err(_) => match HttpClient::connect(&address).await {
                        Ok(c) => client = c,
                        Err(_) => break,
                    },
                }
            }
            accepted
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load worker"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_publishes_every_accepted_event() {
    let kafka = audit_testenv::kafka();
    let topic = unique_topic("sigterm");
    create_topic(&kafka.bootstrap(), &topic, 3).await;
    let runtime = start(
        kafka,
        &topic,
        &[("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", "50000")],
    );
    let stop = Arc::new(Mutex::new(false));
    let load = tokio::spawn(load(runtime.address(), "term", 4, 100, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    runtime.terminate();
    let status = tokio::task::spawn_blocking({
        let started = Instant::now();
        move || {
            (
                runtime.wait_exit(Duration::from_secs(60)),
                started.elapsed(),
                runtime.log(),
            )
        }
    })
    .await
    .expect("waiting");
    *stop.lock().await = true;
    let accepted = load.await.expect("load");
    let (exit, took, log) = status;
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit 0 after draining, got {exit:?}\n{log}"
    );
    let drained = log.lines().find(|l| l.contains("queue drained to Kafka"));
    assert!(drained.is_some(), "{log}");
    eprintln!("sigterm: {}", drained.unwrap_or_default());
    eprintln!(
        "sigterm: {} events accepted, process exited {took:?} after SIGTERM",
        accepted.len()
    );
    assert!(
        accepted.len() > 1000,
        "the load really ran: {}",
        accepted.len()
    );
    let records = read_topic(
        &kafka.bootstrap(),
        &topic,
        accepted.len(),
        Duration::from_secs(30),
    );
    let in_kafka: HashSet<String> = ids_in(&records).into_iter().collect();
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|id| !in_kafka.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted events missing, e.g. {:?}",
        missing.len(),
        accepted.len(),
        missing.first()
    );
    assert_eq!(in_kafka.len(), records.len(), "no event published twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_mode_kafka_keeps_every_acknowledged_event_through_kill_9() {
    let kafka = audit_testenv::kafka();
    let topic = unique_topic("kill");
    create_topic(&kafka.bootstrap(), &topic, 3).await;
    let runtime = start(
        kafka,
        &topic,
        &[("AUDIT_MANAGER__INGEST__ACK_MODE", "kafka")],
    );
    let stop = Arc::new(Mutex::new(false));
    let load = tokio::spawn(load(runtime.address(), "kill", 4, 50, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    runtime.kill();
    let exit = tokio::task::spawn_blocking(move || runtime.wait_exit(Duration::from_secs(30)))
        .await
        .expect("waiting");
    assert!(exit.is_some(), "the process is gone");
    *stop.lock().await = true;
    let accepted = load.await.expect("load");
    eprintln!(
        "kill -9: {} events acknowledged before the kill",
        accepted.len()
    );
    assert!(
        accepted.len() > 500,
        "the load really ran: {}",
        accepted.len()
    );
    let records = read_topic(
        &kafka.bootstrap(),
        &topic,
        accepted.len(),
        Duration::from_secs(30),
    );
    let in_kafka: HashSet<String> = ids_in(&records).into_iter().collect();
    let missing = accepted.iter().filter(|id| !in_kafka.contains(*id)).count();
    assert_eq!(
        missing, 0,
        "every event answered 202 in ack mode kafka is in Kafka"
    );
}
