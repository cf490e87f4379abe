//! The audit-manager runtime: HTTP ingest → bounded queue → Kafka → consumer → PostgreSQL, with
//! a dead-letter topic on the side and partition maintenance.

pub mod config;
pub mod event;
