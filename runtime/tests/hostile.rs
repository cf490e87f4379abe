//! What one client can cost a runtime process, measured on the real binary: the request that
//! took a pod down in issue 16 (16 MB, 8 million roles), slow and idle clients, more
//! connections than allowed, Kafka that does not acknowledge, and a shutdown with clients
//! still attached.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use audit_testenv::http::HttpClient;
use audit_testenv::topics::create_topic;
use audit_testenv::{AuditManager, Kafka};
use serde_json::{Value, json};

mod common;

const EVENTS: &str = "/v1/auditmanager/events";

fn start(kafka: &Kafka, topic: &str, extra: &[(&str, &str)]) -> AuditManager {
    let mut env = common::ingest_only();
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    common::start(kafka, topic, &env)
}

/// A runtime publishing to a fresh topic `name` on the shared broker, with `extra` settings.
async fn runtime_with(name: &str, extra: &[(&str, &str)]) -> AuditManager {
    let kafka = audit_testenv::kafka();
    let topic = format!("test.{name}.{}", uuid::Uuid::new_v4().simple());
    create_topic(&kafka.bootstrap(), &topic, 1).await;
    start(kafka, &topic, extra)
}

/// Sends SIGTERM and waits (up to 30 s) for the process to end; its exit status, and the
/// runtime for its log.
async fn terminated(runtime: AuditManager) -> (Option<std::process::ExitStatus>, AuditManager) {
    runtime.terminate();
    tokio::task::spawn_blocking(move || (runtime.wait_exit(Duration::from_secs(30)), runtime))
        .await
        .expect("waiting for the process")
}

fn event() -> Value {
    json!({
        "specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "/hostile",
        "type": "org.openg2p.test", "time": chrono::Utc::now().to_rfc3339(),
        "data": {"actor": {"type": "user", "id": "u1"}, "action": "read", "outcome": "success"}
    })
}

/// `POST path` as raw HTTP/1.1 bytes, with `body` and its length.
fn request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// POSTs `body` the way a client that does not wait for the answer does: the whole body is
/// written (from another thread; a server that answers early may stop reading it) while the
/// answer is read.
fn post_raw(address: &str, path: &str, body: String) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let path = path.to_string();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(request(&path, &body).as_bytes());
    });
    let answer = read_response(&mut stream, Duration::from_secs(30));
    drop(stream);
    let _ = sender.join();
    answer
}

/// Reads one response: its head and `content-length` bytes of body.
fn read_response(stream: &mut TcpStream, limit: Duration) -> String {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into()
}

/// Reads until the server closes the connection (or `limit` passes); what was read and when
/// the connection was seen closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                );
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                );
            }
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&got).into(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_that_took_a_pod_down_costs_almost_nothing() {
    let runtime = runtime_with("hostile", &[]).await;
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let before = runtime.peak_rss_bytes().expect("rss");

    // Issue 16: one event whose roles hold 8 million numbers, 16 MB, to both endpoints.
    let numbers = vec!["1"; 8_000_000].join(",");
    let mut hostile = event();
    hostile["data"]["actor"]["roles"] = json!("ROLES");
    let single = hostile
        .to_string()
        .replace("\"ROLES\"", &format!("[{numbers}]"));
    let batch = format!("{{\"events\": [{single}]}}");
    assert!(single.len() > 16_000_000);
    let started = Instant::now();
    for (path, body) in [
        (EVENTS.to_string(), single),
        (format!("{EVENTS}/batch"), batch),
    ] {
        let answer = post_raw(&runtime.address(), &path, body);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains("AUD-003"), "{path}: {answer}");
    }
    let took = started.elapsed();
    let peak = runtime.peak_rss_bytes().expect("rss");
    eprintln!(
        "hostile 16 MB bodies: answered 413 in {} ms; peak RSS {} MB before, {} MB after",
        took.as_millis(),
        before >> 20,
        peak >> 20
    );
    // The batch body is within its limit and is read (16 MB); nothing is parsed into a tree.
    assert!(
        peak < before + (48 << 20),
        "peak RSS grew by {} MB",
        (peak - before) >> 20
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Normal traffic is untouched.
    let answer = client
        .post(EVENTS, "application/json", event().to_string())
        .await
        .expect("POST");
    assert_eq!(answer.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_surplus_connections_are_bounded() {
    let runtime = runtime_with(
        "slow",
        &[
            ("AUDIT_MANAGER__SERVER__REQUEST_HEAD_TIMEOUT_SECONDS", "2"),
            ("AUDIT_MANAGER__SERVER__BODY_READ_TIMEOUT_SECONDS", "2"),
            ("AUDIT_MANAGER__SERVER__MAX_CONNECTIONS", "4"),
        ],
    )
    .await;
    let address = runtime.address();

    // A connection that sends nothing, and one that stops in the middle of its head.
    let mut silent = TcpStream::connect(&address).expect("connect");
    let mut half = TcpStream::connect(&address).expect("connect");
    half.write_all(b"POST /v1/auditmanager/events HTTP/1.1\r\nhost: te")
        .expect("write");
    // One that sends a request, then stays idle on keep-alive.
    let mut idle = TcpStream::connect(&address).expect("connect");
    idle.write_all(request(EVENTS, &event().to_string()).as_bytes())
        .expect("write");
    // One that sends a head and a tenth of its body.
    let mut slow = TcpStream::connect(&address).expect("connect");
    slow.write_all(
        b"POST /v1/auditmanager/events HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"specversion\"",
    )
    .expect("write");
    // A fifth connection waits for a slot: its request is answered only once one is free.
    std::thread::sleep(Duration::from_millis(300));
    let mut surplus = TcpStream::connect(&address).expect("the backlog takes it");
    surplus
        .write_all(request(EVENTS, &event().to_string()).as_bytes())
        .expect("write");
    let surplus_sent = Instant::now();

    let limit = Duration::from_secs(6);
    let (_, silent_closed) = read_until_closed(&mut silent, limit);
    let (_, half_closed) = read_until_closed(&mut half, limit);
    let (idle_answer, idle_closed) = read_until_closed(&mut idle, limit);
    let (slow_answer, slow_closed) = read_until_closed(&mut slow, limit);
    eprintln!(
        "closed after: silent {silent_closed:?}, half head {half_closed:?}, idle {idle_closed:?}, slow body {slow_closed:?}"
    );
    assert!(silent_closed.is_some(), "a silent connection is closed");
    assert!(half_closed.is_some(), "a half-sent head is cut");
    assert!(
        idle_answer.starts_with("HTTP/1.1 202"),
        "the idle one was served first: {idle_answer}"
    );
    assert!(
        idle_closed.is_some(),
        "an idle kept-alive connection is closed"
    );
    assert!(
        slow_answer.starts_with("HTTP/1.1 408"),
        "a slow body gets 408: {slow_answer}"
    );
    assert!(slow_answer.contains("AUD-010"), "{slow_answer}");
    assert!(slow_closed.is_some());

    let (surplus_answer, _) = read_until_closed(&mut surplus, Duration::from_secs(6));
    let waited = surplus_sent.elapsed();
    assert!(
        surplus_answer.starts_with("HTTP/1.1 202"),
        "served once a slot was free: {surplus_answer}"
    );
    assert!(
        waited > Duration::from_millis(1000),
        "the fifth connection waited for a slot, not {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_mode_kafka_answers_503_with_retry_after_when_kafka_does_not_acknowledge() {
    let kafka = Kafka::start().expect("a second broker, to stop");
    let topic = format!("test.ack.{}", uuid::Uuid::new_v4().simple());
    create_topic(&kafka.bootstrap(), &topic, 1).await;
    let runtime = start(
        &kafka,
        &topic,
        &[
            ("AUDIT_MANAGER__INGEST__ACK_MODE", "kafka"),
            ("AUDIT_MANAGER__INGEST__ACK_TIMEOUT_SECONDS", "2"),
            ("AUDIT_MANAGER__INGEST__RETRY_AFTER_SECONDS", "3"),
        ],
    );
    let mut client = HttpClient::connect(&runtime.address())
        .await
        .expect("connect");
    let answer = client
        .post(EVENTS, "application/json", event().to_string())
        .await
        .expect("POST");
    assert_eq!(answer.status, 202, "Kafka up: {:?}", answer.json());

    kafka.stop();
    let started = Instant::now();
    let waiting = event();
    let answer = client
        .post(EVENTS, "application/json", waiting.to_string())
        .await
        .expect("POST");
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{:?}", answer.json());
    assert_eq!(answer.json()["errors"][0]["errorCode"], "AUD-005");
    assert_eq!(answer.headers["retry-after"], "3");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // The event stayed queued: once Kafka is back it is published, and the process drains.
    kafka.resume().expect("Kafka back");
    let records =
        audit_testenv::topics::read_topic(&kafka.bootstrap(), &topic, 2, Duration::from_secs(60));
    assert!(
        records.iter().any(|r| r.json()["id"] == waiting["id"]),
        "the event answered 503 was still published"
    );
    let (exit, runtime) = terminated(runtime).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "{}",
        runtime.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_by_its_deadline_with_clients_still_attached() {
    let runtime = runtime_with(
        "deadline",
        &[
            ("AUDIT_MANAGER__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "3"),
            ("AUDIT_MANAGER__SERVER__BODY_READ_TIMEOUT_SECONDS", "600"),
            ("AUDIT_MANAGER__SERVER__REQUEST_HEAD_TIMEOUT_SECONDS", "600"),
        ],
    )
    .await;
    let address = runtime.address();
    // A client in the middle of a body, and one idle on keep-alive.
    let mut slow = TcpStream::connect(&address).expect("connect");
    slow.write_all(
        b"POST /v1/auditmanager/events HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    )
    .expect("write");
    let mut idle = TcpStream::connect(&address).expect("connect");
    idle.write_all(request(EVENTS, &event().to_string()).as_bytes())
        .expect("write");
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let (exit, runtime) = terminated(runtime).await;
    let took = started.elapsed();
    eprintln!(
        "SIGTERM with a slow and an idle client: exited after {} ms",
        took.as_millis()
    );
    assert!(
        exit.is_some_and(|s| s.success()),
        "{}",
        runtime.log_tail(20)
    );
    assert!(
        took < Duration::from_secs(5),
        "the 3 s deadline held: {took:?}"
    );
}
