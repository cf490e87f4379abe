//! audit-manager-operator: reconciles `AuditManager` resources into a database with its roles,
//! Kafka topics and the runtime workload, and reports what it sees in the status.

pub mod builders;
pub mod conditions;
pub mod controller;
pub mod database;
pub mod lease;
pub mod metrics;
pub mod probe;
pub mod teardown;
pub mod topics;
