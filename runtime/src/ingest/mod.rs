//! The bounded in-process queue between the HTTP source and the Kafka publisher.

pub mod queue;
