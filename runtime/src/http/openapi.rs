//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire types, the
//! endpoint that serves it, and the API reference page that renders it (`/docs` and its two
//! assets, compiled into the binary).

use axum::http::header;
use axum::response::{IntoResponse, Response};
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

/// What the docs page may load: its own script, style and `openapi.json`, nothing from
/// anywhere else (the browser enforces it), and no inline script.
const DOCS_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, DOCS_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /docs`: the API reference page (offline: it renders `openapi.json` with `docs.js`).
pub async fn docs() -> Response {
    asset("text/html; charset=utf-8", include_str!("docs/index.html"))
}

/// `GET /docs.js`: the renderer of the docs page.
pub async fn docs_script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("docs/docs.js"),
    )
}

/// `GET /docs.css`: the docs page's style.
pub async fn docs_style() -> Response {
    asset("text/css; charset=utf-8", include_str!("docs/docs.css"))
}
