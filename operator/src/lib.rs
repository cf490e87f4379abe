//! audit-manager-operator: reconciles `AuditManager` resources into a database with its roles,
//! Kafka topics and the runtime workload, and reports what it sees in the status.
//!
//! A reconcile is a pipeline ([`controller`]): [`provision`] the external things ([`database`],
//! [`topics`], with [`credentials`] and the TLS/SASL material of [`connections`] from Secrets) → [`build`] the children (pure) → [`apply`]
//! them → [`observe`] the workload, health and lag → [`status`] (pure). Deletion is
//! [`teardown`]. What every step shares is in [`context`]; what every child object shares in
//! [`objects`]; who may reach and write to the runtime is built by [`exposure`].

pub mod apply;
pub mod build;
pub mod connections;
pub mod context;
pub mod controller;
pub mod credentials;
pub mod database;
pub mod exposure;
pub mod lease;
pub mod metrics;
pub mod objects;
pub mod observe;
pub mod plugin;
pub mod provision;
pub mod record;
pub mod status;
pub mod teardown;
pub mod topic_ids;
pub mod topics;
