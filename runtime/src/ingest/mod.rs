//! The HTTP source: CloudEvents in, `202 Accepted` out, into the bounded queue.

pub mod envelope;
pub mod http;
pub mod openapi;
pub mod queue;
