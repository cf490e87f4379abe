//! Consumer-group lag: what the sink reports as a metric and the operator as a condition.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// Lag per partition of `topic`: its high watermark minus the `committed` offset (the whole
/// partition, from its low watermark, when nothing is committed yet).
pub fn lag(
    consumer: &impl Consumer,
    committed: &TopicPartitionList,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let mut lags = BTreeMap::new();
    for e in committed.elements_for_topic(topic) {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let position = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lags.insert(e.partition(), (high - position).max(0));
    }
    Ok(lags)
}
