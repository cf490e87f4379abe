//! The router: every endpoint at its path in [`paths`], one envelope for unknown paths.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use super::state::AppState;
use super::{events, openapi, ops, paths};

/// The router of the service port: every endpoint but the admin ones (and `/metrics` when
/// it has a port of its own, `server.metrics_port`).
pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    if state.config.server.metrics_port == 0 {
        router = router.route(paths::METRICS, get(ops::metrics));
    }
    router
        .route(paths::EVENTS, post(events::post_event))
        .route(paths::BATCH, post(events::post_batch))
        .route(paths::HEALTH, get(ops::health))
        .route(paths::LIVE, get(ops::live))
        .route(paths::READY, get(ops::ready))
        .route(paths::VERSION, get(ops::version))
        .route(paths::OPENAPI, get(openapi::openapi_json))
        .route(paths::DOCS, get(openapi::docs))
        .route(paths::DOCS_SCRIPT, get(openapi::docs_script))
        .route(paths::DOCS_STYLE, get(openapi::docs_style))
        .fallback(ops::not_found)
        .with_state(state)
}

/// The router of the admin port (`server.admin_port`, loopback by default): the effective
/// configuration, which no Service or route exposes.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(paths::CONFIG, get(ops::config))
        .fallback(ops::not_found)
        .with_state(state)
}

/// The router of the metrics port (`server.metrics_port`, when not 0).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(paths::METRICS, get(ops::metrics))
        .fallback(ops::not_found)
        .with_state(state)
}
