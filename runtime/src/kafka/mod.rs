//! Kafka: the producer that drains the ingest queue.

pub mod producer;
