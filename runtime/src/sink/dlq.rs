//! The dead-letter topic: records that cannot become rows, with why and where they came from;
//! and `audit-manager dlq replay`, which sends them back to the main topic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::event::normalize;
use crate::kafka::headers;

pub const REASON: &str = "audit-dlq-reason";
pub const TOPIC: &str = "audit-dlq-original-topic";
pub const PARTITION: &str = "audit-dlq-original-partition";
pub const OFFSET: &str = "audit-dlq-original-offset";
pub const FIRST_SEEN: &str = "audit-dlq-first-seen";

/// How the reason of a row PostgreSQL refused begins; the database's message follows.
pub const REFUSED_BY_DATABASE: &str = "refused by PostgreSQL: ";

/// A metric label for a DLQ reason.
pub fn kind(reason: &str) -> &'static str {
    if reason.starts_with("not JSON") {
        "not_json"
    } else if reason.starts_with("invalid event") {
        "invalid_event"
    } else if reason.starts_with("no partition") {
        "no_partition"
    } else if reason.starts_with(REFUSED_BY_DATABASE) {
        "refused_by_database"
    } else {
        "other"
    }
}

/// Publishes `message` to the DLQ with its headers; retries until Kafka has it (its offset
/// is committed only after that).
pub async fn send(
    producer: &FutureProducer,
    dlq_topic: &str,
    message: &OwnedMessage,
    reason: &str,
    now: DateTime<Utc>,
) {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let seen = now.to_rfc3339();
    let mut backoff = Duration::from_millis(100);
    loop {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: FIRST_SEEN,
                value: Some(&seen),
            });
        // What the ingest normalized stays with the event, through a replay too.
        let normalized = headers::text(message.headers(), normalize::HEADER);
        let headers = match normalized {
            Some(value) => headers.insert(Header {
                key: normalize::HEADER,
                value: Some(value),
            }),
            None => headers,
        };
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        match producer.send(record, rdkafka::util::Timeout::Never).await {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::warn!(error = %e, topic = dlq_topic, "cannot write to the DLQ; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub records: u64,
}

/// Re-publishes every DLQ record not yet replayed (tracked by the consumer group
/// `<consumer_group>-dlq-replay`) to the main topic with its original key, then commits.
/// Replaying twice sends nothing new; rows stay single either way (ON CONFLICT DO NOTHING).
pub async fn replay(
    config: &Config,
    producer: &FutureProducer,
) -> Result<Replayed, rdkafka::error::KafkaError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set(
            "group.id",
            format!("{}-dlq-replay", config.kafka.consumer_group),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let topic = &config.kafka.dlq_topic;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut ends = std::collections::BTreeMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        ends.insert(p.id(), high);
    }
    let committed = consumer.committed_offsets(
        {
            let mut tpl = TopicPartitionList::new();
            for &p in ends.keys() {
                tpl.add_partition(topic, p);
            }
            tpl
        },
        Duration::from_secs(10),
    )?;
    let mut assignment = TopicPartitionList::new();
    let mut pending = std::collections::BTreeMap::new();
    for e in committed.elements_for_topic(topic) {
        let end = ends.get(&e.partition()).copied().unwrap_or(0);
        let start = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        if start < end {
            assignment.add_partition_offset(topic, e.partition(), Offset::Offset(start))?;
            pending.insert(e.partition(), end);
        }
    }
    drop(committed);
    let mut done = Replayed::default();
    if pending.is_empty() {
        return Ok(done);
    }
    consumer.assign(&assignment)?;
    drop(assignment);
    while !pending.is_empty() {
        let m = consumer.recv().await?;
        let (partition, offset) = (m.partition(), m.offset());
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&config.kafka.topic);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        if let Some(h) = m.headers() {
            let mut headers = OwnedHeaders::new();
            for h in h.iter() {
                let key = match h.key {
                    normalize::HEADER => normalize::HEADER.to_string(),
                    other => format!("replayed-{other}"),
                };
                headers = headers.insert(Header {
                    key: &key,
                    value: h.value,
                });
            }
            record = record.headers(headers);
        }
        producer
            .send(record, rdkafka::util::Timeout::Never)
            .await
            .map_err(|(e, _)| e)?;
        done.records += 1;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
        drop(m);
        consumer.commit(&tpl, CommitMode::Sync)?;
        if pending
            .get(&partition)
            .is_some_and(|&end| offset + 1 >= end)
        {
            pending.remove(&partition);
        }
    }
    Ok(done)
}
