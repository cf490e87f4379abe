//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types below.
//! These types describe the wire format for readers; validation itself lives in
//! [`crate::event::validate`].

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

/// A CloudEvents 1.0 audit event (structured mode).
#[derive(ToSchema)]
#[schema(example = json!({
    "specversion": "1.0", "id": "demo-1", "source": "/demo", "type": "org.openg2p.auth.login",
    "time": "2026-04-22T14:03:21Z",
    "data": {"actor": {"type": "user", "id": "u_1", "name": "demo"}, "action": "login", "outcome": "success"}
}))]
#[allow(dead_code)]
pub struct CloudEvent {
    /// Always "1.0".
    specversion: String,
    /// Unique per source; when missing, derived from the event's content (a retry keeps it).
    id: Option<String>,
    source: String,
    r#type: String,
    /// RFC 3339 with an offset; inside the retention window, at most `ingest.max_future_skew` ahead.
    time: String,
    subject: Option<String>,
    /// A JSON media type when present.
    datacontenttype: Option<String>,
    /// W3C Trace Context; its trace-id is stored as `trace_id`.
    traceparent: Option<String>,
    data: AuditData,
}

/// The audit `data` block; other keys (`changes`, `context`, ...) are kept in `details`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuditData {
    actor: Actor,
    action: String,
    /// success, failure or denied.
    outcome: String,
    resource: Option<Resource>,
    reason: Option<String>,
    #[schema(additional_properties)]
    extra: Option<BTreeMap<String, Value>>,
}

/// Who acted.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Actor {
    /// user (default), system, service or anonymous.
    r#type: Option<String>,
    id: String,
    name: Option<String>,
    roles: Option<Vec<String>>,
    /// IPv4 or IPv6.
    ip: Option<String>,
    session_id: Option<String>,
}

/// What was acted upon.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Resource {
    r#type: String,
    id: Option<String>,
}

/// The original batch body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventBatch {
    /// At most `ingest.max_batch_size` events; accepted whole or not at all.
    events: Vec<CloudEvent>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "audit-manager", description = "Audit events in (CloudEvents 1.0), stored exactly once. Every JSON response uses the envelope; errors carry codes AUD-001..AUD-009."),
    paths(
        super::http::post_event, super::http::post_batch, super::http::health, super::http::live,
        super::http::ready, super::http::version, super::http::config, super::http::metrics
    ),
    components(schemas(CloudEvent, AuditData, Actor, Resource, EventBatch,
                       super::envelope::Envelope, super::envelope::ErrorItem)),
    tags((name = "events", description = "Emit audit events"),
         (name = "operations", description = "Probes, build info, configuration, metrics"))
)]
struct ApiDoc;

/// The OpenAPI document served at `/v1/auditmanager/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}
