//! The router: every endpoint at its path in [`paths`], one envelope for unknown paths.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use super::state::AppState;
use super::{events, openapi, ops, paths};

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(paths::EVENTS, post(events::post_event))
        .route(paths::BATCH, post(events::post_batch))
        .route(paths::HEALTH, get(ops::health))
        .route(paths::LIVE, get(ops::live))
        .route(paths::READY, get(ops::ready))
        .route(paths::VERSION, get(ops::version))
        .route(paths::CONFIG, get(ops::config))
        .route(paths::METRICS, get(ops::metrics))
        .route(paths::OPENAPI, get(openapi::openapi_json))
        .route(paths::DOCS, get(openapi::docs))
        .fallback(ops::not_found)
        .with_state(state)
}
