//! What every handler shares: one [`AppState`].

use std::sync::Arc;

use axum::extract::State;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::event::Limits;
use crate::health::{Enabled, Health};
use crate::ingest::bodies::BodyBudget;
use crate::ingest::queue::IngestQueue;
use crate::metrics::Metrics;

/// Everything the handlers share.
pub struct AppState {
    pub config: Arc<Config>,
    pub queue: Arc<IngestQueue>,
    pub bodies: BodyBudget,
    /// Where large batch bodies are checked (see `events::HEAVY_BODY_BYTES`).
    pub heavy: super::heavy::HeavyLane,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Who may write (`auth.mode: jwt`); None lets anyone write.
    pub auth: Option<Arc<Authenticator>>,
}

impl AppState {
    /// The state for `config`, with a budget of request bodies sized by it.
    pub fn new(
        config: Arc<Config>,
        queue: Arc<IngestQueue>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> AppState {
        let bodies = BodyBudget::new(
            config.ingest.max_inflight_body_bytes,
            config.ingest.event_body_limit(),
        );
        AppState {
            config,
            queue,
            bodies,
            heavy: super::heavy::HeavyLane::start(),
            metrics,
            health,
            auth: None,
        }
    }

    /// The state with `auth` verifying every event request.
    pub fn with_auth(mut self, auth: Option<Arc<Authenticator>>) -> AppState {
        self.auth = auth;
        self
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.config.ingest.max_event_bytes,
            max_future_skew: self.config.max_future_skew(),
            retention_months: self.config.database.partition_retention_months,
        }
    }

    pub fn enabled(&self) -> Enabled {
        Enabled {
            ingest: self.config.components.ingest,
            consumer: self.config.components.consumer,
        }
    }
}

/// The state extractor of every handler.
pub type Shared = State<Arc<AppState>>;
