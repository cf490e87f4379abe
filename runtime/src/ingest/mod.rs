//! What ingest holds in memory, bounded: the queue between the HTTP source and the Kafka
//! publisher, and the request bodies being read.

pub mod bodies;
pub mod queue;
