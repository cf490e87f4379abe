//! The operational endpoints: health, liveness, readiness, version, configuration, metrics,
//! and the envelope for unknown paths.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::envelope::{self, ApiError};
use super::paths;
use super::state::Shared;

/// Component report.
#[utoipa::path(get, path = "/v1/auditmanager/health", tag = "operations",
    responses((status = 200, description = "Every enabled component is healthy", body = envelope::Envelope),
              (status = 503, description = "AUD-005 not ready / component down, AUD-006 database check failed", body = envelope::Envelope)))]
pub async fn health(State(state): Shared) -> Response {
    let (report, problems) =
        state
            .health
            .report(state.enabled(), state.queue.depth(), state.queue.capacity());
    if problems.is_empty() {
        return envelope::ok(StatusCode::OK, report);
    }
    let errors = problems
        .into_iter()
        .map(|(code, message)| envelope::ErrorItem {
            error_code: code,
            message,
        })
        .collect();
    envelope::with_errors(StatusCode::SERVICE_UNAVAILABLE, Some(report), errors)
}

/// Liveness: the process's own tasks run (never the database).
#[utoipa::path(get, path = "/v1/auditmanager/health/live", tag = "operations",
    responses((status = 200, body = envelope::Envelope), (status = 503, body = envelope::Envelope)))]
pub async fn live(State(state): Shared) -> Response {
    if state.health.live(state.enabled()) {
        envelope::ok(StatusCode::OK, json!({"live": true}))
    } else {
        ApiError::NotReady("a long-running task (publisher or consumer) has stopped".into())
            .into_response()
    }
}

/// Readiness: started and not draining; independent of PostgreSQL.
#[utoipa::path(get, path = "/v1/auditmanager/health/ready", tag = "operations",
    responses((status = 200, body = envelope::Envelope), (status = 503, body = envelope::Envelope)))]
pub async fn ready(State(state): Shared) -> Response {
    if state.health.ready() {
        envelope::ok(StatusCode::OK, json!({"ready": true}))
    } else {
        ApiError::NotReady("not ready: starting up or shutting down".into()).into_response()
    }
}

/// Build information.
#[utoipa::path(get, path = "/v1/auditmanager/version", tag = "operations",
    responses((status = 200, body = envelope::Envelope)))]
pub async fn version() -> Response {
    envelope::ok(StatusCode::OK, crate::build_info())
}

/// The effective configuration without secrets.
#[utoipa::path(get, path = "/v1/auditmanager/config", tag = "operations",
    responses((status = 200, body = envelope::Envelope)))]
pub async fn config(State(state): Shared) -> Response {
    envelope::ok(StatusCode::OK, state.config.redacted())
}

/// Prometheus text format.
#[utoipa::path(get, path = "/v1/auditmanager/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(state): Shared) -> Response {
    state.metrics.queue_depth.set(state.queue.depth() as i64);
    let m = &state.metrics;
    m.queue_capacity.set(state.queue.capacity() as i64);
    m.queue_bytes.set(state.queue.bytes() as i64);
    m.queue_max_bytes.set(state.queue.max_bytes() as i64);
    m.inflight_body_bytes.set(state.bodies.in_use() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Any path without an endpoint.
pub async fn not_found() -> Response {
    envelope::with_errors(
        StatusCode::NOT_FOUND,
        None,
        vec![envelope::ErrorItem {
            error_code: "AUD-404",
            message: format!("no such endpoint; see {}", paths::DOCS),
        }],
    )
}
