//! The audit-manager runtime: HTTP ingest → bounded queue → Kafka → consumer → PostgreSQL, with
//! a dead-letter topic on the side and partition maintenance.

pub mod auth;
pub mod commands;
pub mod config;
pub mod db;
pub mod event;
pub mod health;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod serve;
pub mod sink;

/// Build information served at `/version`.
pub fn build_info() -> serde_json::Value {
    serde_json::json!({
        "name": "audit-manager",
        "version": env!("CARGO_PKG_VERSION"),
        // Set by build.rs: the git commit and the build time (SOURCE_DATE_EPOCH when set).
        "commit": env!("AUDIT_MANAGER_COMMIT"),
        "built": env!("AUDIT_MANAGER_BUILD_TIME"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
