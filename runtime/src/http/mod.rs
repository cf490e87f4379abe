//! The HTTP API: small handlers over one shared state, one error envelope.
//! - [`router`]: every endpoint at its path in [`paths`];
//! - [`events`] (with [`binary`] mode): CloudEvents in, `202 Accepted` out, into the queue;
//!   [`body`] reads a body within its limits, [`shape`] names why a batch body is not one,
//!   [`heavy`] checks large batches apart;
//! - [`ops`]: health, liveness, readiness, version, configuration, metrics;
//! - [`openapi`]: the document, from the handlers and the wire types in [`schema`];
//! - [`envelope`]: every JSON response and error;
//! - [`server`]: connections, their limits and their graceful end.

pub mod binary;
pub mod body;
pub mod envelope;
pub mod events;
pub mod heavy;
pub mod openapi;
pub mod ops;
pub mod paths;
pub mod router;
pub mod schema;
pub mod server;
pub mod shape;
pub mod state;
