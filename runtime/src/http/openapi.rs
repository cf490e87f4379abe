//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire types, and
//! the two endpoints that serve it.

use axum::response::{Html, IntoResponse, Response};
use utoipa::OpenApi;

use super::envelope::{Envelope, ErrorItem};
use super::schema::{Actor, AuditData, CloudEvent, EventBatch, Resource};
use super::{events, ops};

#[derive(OpenApi)]
#[openapi(
    info(title = "audit-manager", description = "Audit events in (CloudEvents 1.0), stored exactly once. Every JSON response uses the envelope; errors carry codes AUD-001..AUD-011. With auth.mode jwt, event requests carry `Authorization: Bearer <JWT>`."),
    paths(
        events::post_event, events::post_batch, ops::health, ops::live, ops::ready,
        ops::version, ops::config, ops::metrics
    ),
    components(schemas(CloudEvent, AuditData, Actor, Resource, EventBatch, Envelope, ErrorItem)),
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

/// `GET /openapi.json`.
pub async fn openapi_json() -> Response {
    axum::Json(document()).into_response()
}

/// `GET /docs`: a page rendering the document.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
