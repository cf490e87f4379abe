//! Kafka: the producer that drains the ingest queue, and consumer-group lag.

pub mod headers;
pub mod lag;
pub mod producer;
