//! The HTTP contract in process (no network): every SPEC §2.2 rule rejected with its code and
//! field path, media types, size limits, and a property test that arbitrary bytes and JSON
//! never produce a 5xx or a panic. And the `/docs` page, served on loopback, rendered by a real
//! headless Chromium that can resolve no name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use audit_manager::config::Config;
use audit_manager::health::Health;
use audit_manager::http::router::{admin_router, router};
use audit_manager::http::server::Server;
use audit_manager::http::state::AppState;
use audit_manager::http::{openapi, paths};
use audit_manager::ingest::queue::IngestQueue;
use audit_manager::metrics::Metrics;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

/// A router whose queue is drained by a task that just drops events (no Kafka here).
fn app(env: &[(&str, &str)]) -> axum::Router {
    router(state(env))
}

/// The state of [`app`].
fn state(env: &[(&str, &str)]) -> Arc<AppState> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::load_from(&env).expect("test config is valid");
    let (queue, mut rx) =
        IngestQueue::new(config.ingest.queue_max_size, config.ingest.queue_max_bytes);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move { while rx.recv().await.is_some() {} });
    } else {
        std::mem::forget(rx);
    }
    let health = Arc::new(Health::default());
    health.mark_started();
    // The drain task above stands in for the publisher; no consumer runs in process.
    health.set_publisher_alive(true);
    health.set_consumer_alive(true);
    Arc::new(AppState::new(
        Arc::new(config),
        Arc::new(queue),
        Arc::new(Metrics::new()),
        health,
    ))
}

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(format!("/v1/auditmanager{path}"))
        .header("content-type", content_type)
        .body(body.into())
        .expect("request")
}

fn login() -> Value {
    json!({
        "specversion": "1.0",
        "id": "demo-1",
        "source": "/demo",
        "type": "org.openg2p.auth.login",
        "time": chrono::Utc::now().to_rfc3339(),
        "data": {"actor": {"type": "user", "id": "u_1", "name": "demo"}, "action": "login", "outcome": "success"}
    })
}

/// Sets `path` (dotted) in `event` to `value`, or removes it when `value` is None.
fn with(mut event: Value, path: &str, value: Option<Value>) -> Value {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("path");
    let mut at = &mut event;
    for p in parts {
        at = at.get_mut(p).expect("path exists");
    }
    let obj = at.as_object_mut().expect("object");
    match value {
        Some(v) => {
            obj.insert(last.to_string(), v);
        }
        None => {
            obj.remove(last);
        }
    }
    event
}

fn errors(body: &Value) -> Vec<(String, String)> {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["errorCode"].as_str().unwrap_or_default().to_string(),
                        e["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_schema_rule_is_rejected_with_its_code_and_field_path() {
    let app = app(&[]);
    let now = chrono::Utc::now();
    let cases: Vec<(&str, Option<Value>, &str)> = vec![
        ("specversion", Some(json!("0.3")), "specversion"),
        ("specversion", None, "specversion"),
        ("id", Some(json!("")), "id"),
        ("id", Some(json!(42)), "id"),
        ("source", None, "source"),
        ("source", Some(json!("")), "source"),
        ("type", Some(json!(7)), "type"),
        ("type", None, "type"),
        ("time", Some(json!(true)), "time"),
        ("time", Some(json!("2026-04-22T14:03:21")), "time"),
        ("time", Some(json!("2026-04-22")), "time"),
        ("time", Some(json!(1776866601)), "time"),
        ("time", Some(json!("1990-01-01T00:00:00Z")), "time"),
        (
            "time",
            Some(json!((now + chrono::Duration::hours(3)).to_rfc3339())),
            "time",
        ),
        ("subject", Some(json!(5)), "subject"),
        (
            "datacontenttype",
            Some(json!("text/plain")),
            "datacontenttype",
        ),
        (
            "traceparent",
            Some(json!("00-xyz-00f067aa0ba902b7-01")),
            "traceparent",
        ),
        (
            "traceparent",
            Some(json!(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            )),
            "traceparent",
        ),
        ("Bad_Ext", Some(json!("x")), "Bad_Ext"),
        ("data", None, "data"),
        ("data", Some(json!("text")), "data"),
        ("data.actor", None, "data.actor"),
        ("data.actor.type", Some(json!("robot")), "data.actor.type"),
        ("data.actor.id", Some(json!(5)), "data.actor.id"),
        ("data.actor.id", None, "data.actor.id"),
        ("data.actor.ip", Some(json!(["10.0.0.1"])), "data.actor.ip"),
        ("data.actor.roles", Some(json!("admin")), "data.actor.roles"),
        ("data.action", Some(json!("")), "data.action"),
        ("data.action", None, "data.action"),
        ("data.outcome", Some(json!("maybe")), "data.outcome"),
        ("data.outcome", None, "data.outcome"),
        (
            "data.resource",
            Some(json!({"id": "r1"})),
            "data.resource.type",
        ),
        ("data.reason", Some(json!(["x"])), "data.reason"),
        // What PostgreSQL could never store is refused before the 202.
        ("data.action", Some(json!("log\u{0}in")), "data.action"),
        (
            "data.changes",
            Some(json!({"phone": {"new": "\u{0}"}})),
            "data.changes.phone.new",
        ),
        ("id", Some(json!("i".repeat(1025))), "id"),
        (
            "data.actor.id",
            Some(json!("a".repeat(1025))),
            "data.actor.id",
        ),
    ];
    for (field, value, path) in cases {
        let shown = format!("{field} = {value:?}");
        let event = with(login(), field, value);
        let (status, body) =
            call(&app, post("/events", "application/json", event.to_string())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}: {body}");
        let errs = errors(&body);
        assert!(
            errs.iter().all(|(code, _)| code == "AUD-002"),
            "{shown}: every error is AUD-002: {body}"
        );
        assert!(
            errs.iter().any(|(_, m)| m.starts_with(&format!("{path}:"))),
            "{shown}: an error names {path}: {body}"
        );
        assert_eq!(
            body["id"],
            json!("openg2p.auditmanager"),
            "{shown}: the answer is the envelope"
        );
    }
}

#[tokio::test]
async fn batch_errors_name_the_event_index() {
    let app = app(&[]);
    let bad = with(login(), "data.outcome", Some(json!("maybe")));
    let body = json!({"events": [login(), bad]}).to_string();
    let (status, body) = call(&app, post("/events/batch", "application/json", body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        errors(&body)
            .iter()
            .any(|(c, m)| c == "AUD-002" && m.starts_with("events[1].data.outcome:")),
        "{body}"
    );
    let array = json!([login(), with(login(), "id", Some(json!("")))]).to_string();
    let (status, body) = call(
        &app,
        post("/events/batch", "application/cloudevents-batch+json", array),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        errors(&body).iter().any(|(_, m)| m.starts_with("[1].id:")),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_json_media_types_and_sizes_have_their_codes() {
    let app = app(&[
        ("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "2"),
        ("AUDIT_MANAGER__INGEST__MAX_BODY_BYTES", "200000"),
    ]);
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("/events", "application/json", "{\"id\": "),
            StatusCode::BAD_REQUEST,
            "AUD-001",
        ),
        (
            post("/events", "text/plain", login().to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "AUD-008",
        ),
        (
            post("/events", "application/json", {
                let big = "x".repeat(70 * 1024);
                with(login(), "data.context", Some(json!({ "blob": big }))).to_string()
            }),
            StatusCode::PAYLOAD_TOO_LARGE,
            "AUD-003",
        ),
        (
            post("/events", "application/json", vec![b' '; 300_000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "AUD-003",
        ),
        (
            post(
                "/events/batch",
                "application/json",
                json!({"events": [login(), login(), login()]}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "AUD-007",
        ),
        (
            post("/events/batch", "text/csv", "a,b"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "AUD-008",
        ),
        (
            Request::get("/v1/auditmanager/nothing-here")
                .body(Body::empty())
                .expect("request"),
            StatusCode::NOT_FOUND,
            "AUD-404",
        ),
    ];
    for (request, want_status, want_code) in cases {
        let shown = format!("{} {}", request.method(), request.uri());
        let (status, body) = call(&app, request).await;
        assert_eq!(status, want_status, "{shown}: {body}");
        assert_eq!(
            errors(&body).first().map(|e| e.0.as_str()),
            Some(want_code),
            "{shown}: {body}"
        );
    }
}

#[tokio::test]
async fn binary_mode_takes_attributes_from_headers() {
    let app = app(&[]);
    let request = Request::post("/v1/auditmanager/events")
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "%2Fdemo")
        .header("ce-type", "org.openg2p.auth.login")
        .header("ce-time", chrono::Utc::now().to_rfc3339())
        .body(Body::from(login()["data"].to_string()))
        .expect("request");
    let (status, body) = call(&app, request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["response"]["accepted"], json!("bin-1"));
}

/// `/version` names the commit this checkout is at and when the binary was built.
#[tokio::test]
async fn version_reports_the_commit_and_the_build_time() {
    let request = Request::get("/v1/auditmanager/version")
        .body(Body::empty())
        .expect("request");
    let (status, body) = call(&app(&[]), request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    assert!(head.status.success(), "git rev-parse HEAD failed");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(body["response"]["commit"], json!(head), "{body}");
    let built = body["response"]["built"].as_str().unwrap_or_default();
    let built = chrono::DateTime::parse_from_rfc3339(built)
        .unwrap_or_else(|e| panic!("built `{built}`: {e}"));
    let age = chrono::Utc::now().signed_duration_since(built);
    assert!(
        age >= chrono::Duration::zero() && age < chrono::Duration::days(30),
        "built {built}, {age} ago"
    );
}

/// `/docs` works without internet: headless Chromium, with every host name unresolvable, loads
/// the page from a running server and renders each operation and schema of the OpenAPI
/// document; the page and its assets name no other origin, and say so to the browser (CSP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_every_operation_offline_in_chromium() {
    let state = state(&[]);
    let app = router(state.clone());
    for path in [paths::DOCS, paths::DOCS_SCRIPT, paths::DOCS_STYLE] {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let policy = response
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(policy.contains("default-src 'none'"), "{path}: {policy}");
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path} names another origin"
        );
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server = Server::spawn(listener, app, &state.config.server);
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{address}{}", paths::DOCS);
    let chromium = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            // No name resolves and nothing but this server is reachable: as offline as it gets.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .env("HOME", profile.path())
        .env("XDG_CONFIG_HOME", profile.path())
        .env("XDG_CACHE_HOME", profile.path())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(Duration::from_secs(120), chromium).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "chromium is not installed: run `tests/env/provision.sh browser` (make test does)"
            )
        }
        Ok(Err(e)) => panic!("cannot run chromium: {e}"),
        Err(_) => panic!("chromium did not finish within 120 s"),
    };
    server.stop(tokio::time::Instant::now()).await;
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chromium: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        dom.contains(r#"data-rendered="true""#),
        "the page did not render the document:\n{dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let document = serde_json::to_value(openapi::document()).expect("document");
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let shown = format!(r#"data-operation="{} {path}""#, method.to_uppercase());
            assert!(dom.contains(&shown), "{shown} is not on the page");
            operations += 1;
        }
    }
    assert!(operations >= 8, "{operations} operations in the document");
    for name in document["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
    {
        let shown = format!(r#"data-schema="{name}""#);
        assert!(dom.contains(&shown), "{shown} is not on the page");
    }
    assert!(
        dom.contains(r#"data-status="202""#),
        "the responses of POST /events are listed"
    );
}

#[tokio::test]
async fn the_operational_endpoints_answer() {
    let app = app(&[]);
    for path in [
        "/health",
        "/health/live",
        "/health/ready",
        "/version",
        "/metrics",
        "/openapi.json",
        "/docs",
    ] {
        let request = Request::get(format!("/v1/auditmanager{path}"))
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        // /health is 503 here: no producer runs in this in-process router.
        let status = response.status();
        assert!(
            status == StatusCode::OK
                || (path == "/health" && status == StatusCode::SERVICE_UNAVAILABLE),
            "{path}: {status}"
        );
    }
    let config = || {
        Request::get("/v1/auditmanager/config")
            .body(Body::empty())
            .expect("request")
    };
    let (status, _) = call(&app, config()).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "/config is served only on the admin port"
    );
    let admin = admin_router(state(&[]));
    let (status, body) = call(&admin, config()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !body.to_string().contains("\"password\":\"postgres\""),
        "/config hides secrets: {body}"
    );
}

/// Any JSON value, up to a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid event with one field (top level, data or actor) replaced by arbitrary JSON.
fn mutated_event() -> impl Strategy<Value = Value> {
    let fields = prop::sample::select(vec![
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "traceparent",
        "data",
        "data.actor",
        "data.actor.type",
        "data.actor.id",
        "data.actor.roles",
        "data.action",
        "data.outcome",
        "data.resource",
        "data.reason",
        "data.changes",
        "ext1",
    ]);
    (fields, prop::option::of(any_json())).prop_map(|(f, v)| with(login(), f, v))
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        mutated_event().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(mutated_event(), 0..5)
            .prop_map(|v| json!({ "events": v }).to_string().into_bytes()),
        prop::collection::vec(mutated_event(), 0..5)
            .prop_map(|v| Value::from(v).to_string().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_gets_a_5xx(
        body in any_body(),
        path in prop::sample::select(vec!["/events", "/events/batch"]),
        content_type in prop::sample::select(vec![
            "application/json", "application/cloudevents+json", "application/cloudevents-batch+json",
            "application/json; charset=utf-8", "text/plain", "", "application/x-www-form-urlencoded",
        ]),
        binary in any::<bool>(),
        header_value in "[ -~]{0,20}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let app = app(&[]);
            let mut request = Request::post(format!("/v1/auditmanager{path}"));
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            if binary {
                request = request
                    .header("ce-specversion", "1.0")
                    .header("ce-id", header_value.as_str())
                    .header("ce-source", "/fuzz")
                    .header("ce-type", "t")
                    .header("ce-time", header_value.as_str());
            }
            let request = request.body(Body::from(body)).expect("request");
            let (status, envelope) = call(&app, request).await;
            prop_assert!(status.as_u16() < 500, "status {} for {}", status, envelope);
            prop_assert!(envelope.get("errors").is_some(), "every answer is an envelope: {}", envelope);
            Ok(())
        })?;
    }
}

/// The reasons of a 202 answer's warnings, each once, sorted.
fn warned(body: &Value) -> Vec<String> {
    let mut reasons: Vec<String> = body["response"]["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|w| w["reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    reasons.sort();
    reasons.dedup();
    reasons
}

#[tokio::test]
async fn openg2p_staff_portal_events_are_accepted_and_their_normalizations_named() {
    let app = app(&[]);
    let shapes = common::staff_portal_events();
    assert_eq!(shapes.len(), 9);
    let mut expected_total = 0;
    for (name, event, reasons) in &shapes {
        let (status, body) =
            call(&app, post("/events", "application/json", event.to_string())).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {body}");
        assert_eq!(body["response"]["accepted"], event["id"], "{name}");
        let mut want: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        want.sort();
        assert_eq!(warned(&body), want, "{name}: {body}");
        if reasons.is_empty() {
            assert!(body["response"].get("warnings").is_none(), "{name}: {body}");
        }
        let nulls = body["response"]["warnings"]
            .as_array()
            .map(|w| w.iter().filter(|w| w["reason"] == "null_dropped").count())
            .unwrap_or(0);
        expected_total += nulls;
    }
    // A batch names each warning with its event's index.
    let events: Vec<Value> = shapes.iter().map(|(_, e, _)| e.clone()).collect();
    let (status, body) = call(
        &app,
        post(
            "/events/batch",
            "application/json",
            json!({"events": events}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let paths: Vec<&str> = body["response"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w["path"].as_str())
        .collect();
    assert!(paths.contains(&"events[2].data.actor.id"), "{paths:?}");
    assert!(paths.contains(&"events[3].data.actor.ip"), "{paths:?}");
    assert!(
        paths.contains(&"events[1].data.actor.session_id"),
        "{paths:?}"
    );
    expected_total *= 2;
    // Every normalization is counted by reason.
    let response = app
        .clone()
        .oneshot(
            Request::get("/v1/auditmanager/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let text = String::from_utf8(
        to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec(),
    )
    .expect("text");
    let counted = |reason: &str| -> usize {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "audit_ingest_events_normalized_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(counted("null_dropped"), expected_total, "{text}");
    assert_eq!(counted("actor_ip_not_an_address"), 6);
    assert_eq!(counted("actor_id_empty"), 2);
}

#[tokio::test]
async fn an_event_without_time_is_stamped_with_the_receipt_time() {
    let app = app(&[]);
    let event = with(login(), "time", None);
    let (status, body) = call(&app, post("/events", "application/json", event.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(warned(&body), ["time_defaulted"]);
    let (status, body) = call(
        &app,
        post(
            "/events",
            "application/json",
            with(login(), "time", Some(Value::Null)).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(warned(&body), ["null_dropped", "time_defaulted"]);
}

/// A chunked body of `chunks` × `chunk` bytes, generated as it is read, and how much of it was.
fn counted_stream(chunk: Vec<u8>, chunks: usize) -> (Body, Arc<AtomicUsize>) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&pulled);
    let body = Body::from_stream(futures::stream::iter((0..chunks).map(move |_| {
        seen.fetch_add(chunk.len(), Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk.clone()))
    })));
    (body, pulled)
}

/// An event whose `data.actor.roles` holds `n` numbers, as sent by the attack in issue 16.
fn roles_of_numbers(n: usize) -> String {
    let numbers: Vec<usize> = (0..n).collect();
    with(login(), "data.actor.roles", Some(json!(numbers))).to_string()
}

#[tokio::test]
async fn hostile_bodies_are_refused_before_they_are_read_or_parsed() {
    let app = app(&[]);
    // 16 MB, chunked: refused once past a single event's limit, not after all of it.
    let (body, pulled) = counted_stream(vec![b'1'; 64 * 1024], 256);
    let (status, answer) = call(&app, post("/events", "application/json", body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(
        errors(&answer)[0].1.contains("81920 bytes"),
        "the limit is named: {answer}"
    );
    let read = pulled.load(Ordering::SeqCst);
    assert!(read <= 81_920 + 64 * 1024, "read {read} bytes of 16 MB");

    // The same, declared: refused before a byte of the body is read.
    let (body, pulled) = counted_stream(vec![b'1'; 64 * 1024], 256);
    let request = Request::post("/v1/auditmanager/events")
        .header("content-type", "application/json")
        .header("content-length", (16 << 20).to_string())
        .body(body)
        .expect("request");
    let (status, answer) = call(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(pulled.load(Ordering::SeqCst), 0);

    // In a batch, each event is measured before any tree is built from it.
    let batch = format!(
        "{{\"events\": [{}, {}]}}",
        login(),
        roles_of_numbers(2_000_000)
    );
    assert!(batch.len() > 14_000_000);
    let (status, answer) = call(&app, post("/events/batch", "application/json", batch)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(
        errors(&answer)[0].1.starts_with("events[1] is "),
        "the event is named: {answer}"
    );

    // Deep nesting is refused by the parser's depth limit, as malformed JSON.
    let deep = format!(
        "{{\"events\": [{}{}]}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let (status, answer) = call(&app, post("/events/batch", "application/json", deep)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errors(&answer)[0].0, "AUD-001", "{answer}");
    assert!(errors(&answer)[0].1.contains("recursion limit"), "{answer}");
}

#[tokio::test]
async fn thousands_of_errors_are_listed_as_twenty_and_a_count() {
    let app = app(&[]);
    // Each event: a wrong outcome and a roles array of 5,000 numbers (one error each).
    let bad = with(
        serde_json::from_str(&roles_of_numbers(5_000)).expect("json"),
        "data.outcome",
        Some(json!("maybe")),
    );
    let events: Vec<Value> = (0..500).map(|_| bad.clone()).collect();
    let (status, answer) = call(
        &app,
        post(
            "/events/batch",
            "application/json",
            json!({ "events": events }).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let listed = errors(&answer);
    assert_eq!(listed.len(), 21, "{answer}");
    assert!(
        listed[0].1.contains("and 4999 more roles"),
        "{:?}",
        listed[0]
    );
    assert_eq!(
        listed[20].1, "and 980 more errors not listed (the first 20 are)",
        "{answer}"
    );
}

#[tokio::test]
async fn bodies_share_a_budget_and_slow_ones_time_out() {
    let app = app(&[
        ("AUDIT_MANAGER__INGEST__MAX_INFLIGHT_BODY_BYTES", "200000"),
        ("AUDIT_MANAGER__INGEST__MAX_BODY_BYTES", "250000"),
        ("AUDIT_MANAGER__SERVER__BODY_READ_TIMEOUT_SECONDS", "1"),
    ]);
    // A client that sends 180 kB and then stalls holds its part of the budget ...
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tx.try_send(Ok(bytes::Bytes::from(vec![b' '; 180_000])))
        .expect("room");
    let stalled = tokio::spawn({
        let app = app.clone();
        async move {
            let started = std::time::Instant::now();
            let answer = call(
                &app,
                post("/events/batch", "application/json", Body::from_stream(rx)),
            )
            .await;
            (answer, started.elapsed())
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // ... so another large body is refused at once, with Retry-After ...
    let request = post("/events/batch", "application/json", vec![b' '; 240_000]);
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    // ... while a single event is never refused for the budget.
    let (status, answer) = call(
        &app,
        post("/events", "application/json", login().to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    // The stalled client gets 408 after the body deadline, and its budget is back.
    let ((status, answer), took) = stalled.await.expect("task");
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{answer}");
    assert_eq!(errors(&answer)[0].0, "AUD-010", "{answer}");
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    drop(tx);
    let (status, answer) = call(
        &app,
        post("/events/batch", "application/json", vec![b' '; 240_000]),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "read, then found empty: {answer}"
    );
}
