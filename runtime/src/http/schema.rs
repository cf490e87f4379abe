//! The wire format of the event endpoints, for the OpenAPI document. These types describe it
//! for readers; validation itself lives in [`crate::event::validate`].

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::ToSchema;

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
    /// RFC 3339 with an offset; inside the retention window, at most `ingest.max_future_skew`
    /// ahead. When missing, the receipt time is used (normalization `time_defaulted`).
    time: Option<String>,
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
    /// IPv4 or IPv6 as a rule; any other string is kept as sent (normalization
    /// `actor_ip_not_an_address`).
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
