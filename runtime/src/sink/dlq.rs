//! The dead-letter topic: records that cannot become rows, with why and where they came from;
//! and `audit-manager dlq replay`, which sends them back to the main topic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

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

/// The metric label of a record that could not be written to the DLQ at all.
pub const UNWRITABLE: &str = "unwritable";

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

/// The longest reason written to the DLQ; a longer one is cut there (a crafted record can have
/// thousands of problems, and a header the broker refuses would stall the sink).
pub const MAX_REASON_BYTES: usize = 2048;
/// The longest `audit-normalized` header copied from the record; a longer one is not copied.
pub const MAX_COPIED_HEADER_BYTES: usize = 1024;

/// `text`, cut at `max` bytes (on a character boundary) with a note saying so.
fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let kept = normalize::char_prefix(text, max);
    format!("{kept} … (cut: {} bytes in all)", text.len()).into()
}

/// Whether Kafka will refuse this record however often it is sent.
fn is_permanent(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e,
        KafkaError::MessageProduction(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::MessageBatchTooLarge
                | C::BadMessage
                | C::InvalidArgument
        )
    )
}

/// Publishes `message` to the DLQ with its headers (of bounded size); retries until Kafka
/// has it (its offset is committed only after that). A record Kafka refuses for what it is
/// (too large for the DLQ topic, say) is not retried: the error is returned, for the caller to
/// report with the record's partition and offset, where it stays until the main topic's
/// retention.
pub async fn send(
    producer: &FutureProducer,
    dlq_topic: &str,
    message: &OwnedMessage,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), KafkaError> {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let seen = now.to_rfc3339();
    let reason = bounded(reason, MAX_REASON_BYTES);
    // What the ingest normalized, and who sent it, stay with the event, through a replay too.
    let kept: Vec<(&str, &str)> = [normalize::HEADER, headers::PRINCIPAL]
        .into_iter()
        .filter_map(|key| {
            headers::text(message.headers(), key)
                .filter(|v| v.len() <= MAX_COPIED_HEADER_BYTES)
                .map(|v| (key, v))
        })
        .collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON,
                value: Some(&*reason),
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
        let headers = kept.iter().fold(headers, |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(*value),
            })
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        match producer.send(record, rdkafka::util::Timeout::Never).await {
            Ok(_) => return Ok(()),
            Err((e, _)) if is_permanent(&e) => return Err(e),
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

/// A consumer of the DLQ in the group `<consumer_group>-<suffix>` that commits only when told
/// (`dlq replay` commits what it sent; the inspecting commands never commit).
fn dlq_consumer(config: &Config, suffix: &str) -> Result<StreamConsumer, KafkaError> {
    crate::kafka::client_config(&config.kafka.bootstrap_servers, &config.kafka.security)
        .set(
            "group.id",
            format!("{}-{suffix}", config.kafka.consumer_group),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
}

/// Re-publishes every DLQ record not yet replayed (tracked by the consumer group
/// `<consumer_group>-dlq-replay`) to the main topic with its original key, then commits.
/// Replaying twice sends nothing new; rows stay single either way (ON CONFLICT DO NOTHING).
/// With `dry_run`, only counts them.
pub async fn replay(
    config: &Config,
    producer: &FutureProducer,
    dry_run: bool,
) -> Result<Replayed, KafkaError> {
    let consumer = dlq_consumer(config, "dlq-replay")?;
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
    if dry_run {
        done.records = pending
            .iter()
            .map(|(p, end)| {
                let start = match assignment.find_partition(topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                u64::try_from(end - start).unwrap_or(0)
            })
            .sum();
        return Ok(done);
    }
    if pending.is_empty() {
        return Ok(done);
    }
    consumer.assign(&assignment)?;
    drop(assignment);
    while !pending.is_empty() {
        let m = consumer.recv().await?;
        let (partition, offset) = (m.partition(), m.offset());
        republish(producer, &config.kafka.topic, &m).await?;
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

/// Sends a DLQ record back to `topic` with its key and payload; what the ingest normalized and
/// who sent it stay as they were, the DLQ's own headers are kept as `replayed-<name>`.
async fn republish<M: Message>(
    producer: &FutureProducer,
    topic: &str,
    m: &M,
) -> Result<(), KafkaError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
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
                normalize::HEADER | headers::PRINCIPAL => h.key.to_string(),
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
    Ok(())
}

/// Which DLQ records a command looks at (every one when empty).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// The event's `source` starts with this.
    pub source: Option<String>,
    /// The event's `type` starts with this.
    pub event_type: Option<String>,
    /// Sent to the DLQ at or after this time (the DLQ record's timestamp).
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.source.is_none() && self.event_type.is_none() && self.since.is_none()
    }

    fn matches(&self, record: &Described) -> bool {
        let prefix = |want: &Option<String>, have: &Option<String>| match (want, have) {
            (None, _) => true,
            (Some(w), Some(h)) => h.starts_with(w.as_str()),
            (Some(_), None) => false,
        };
        prefix(&self.source, &record.source)
            && prefix(&self.event_type, &record.event_type)
            && self
                .since
                .is_none_or(|since| record.dead_lettered.is_some_and(|t| t >= since))
    }
}

/// One DLQ record as `dlq list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Described {
    pub partition: i32,
    pub offset: i64,
    /// When it was sent to the DLQ (the record's timestamp).
    pub dead_lettered: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// From the payload, when it is JSON that has them.
    pub id: Option<String>,
    pub source: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Who sent it (`auth.mode: jwt`).
    pub principal: Option<String>,
}

fn describe<M: Message>(m: &M) -> Described {
    let payload: Option<serde_json::Value> =
        m.payload().and_then(|p| serde_json::from_slice(p).ok());
    let field = |name: &str| {
        payload
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    Described {
        partition: m.partition(),
        offset: m.offset(),
        dead_lettered: m
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis),
        reason: headers::text(m.headers(), REASON).map(str::to_string),
        id: field("id"),
        source: field("source"),
        event_type: field("type"),
        principal: headers::text(m.headers(), headers::PRINCIPAL).map(str::to_string),
    }
}

/// Reads the whole DLQ as it is now (to each partition's high watermark), without joining or
/// moving any consumer group, and hands each record that `filter` matches to `each`.
pub async fn scan<F, Fut>(config: &Config, filter: &Filter, mut each: F) -> Result<u64, KafkaError>
where
    F: FnMut(Described, OwnedMessage) -> Fut,
    Fut: std::future::Future<Output = Result<(), KafkaError>>,
{
    let consumer = dlq_consumer(config, "dlq-inspect")?;
    let topic = &config.kafka.dlq_topic;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut pending = std::collections::BTreeMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if low < high {
            assignment.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
            pending.insert(p.id(), high);
        }
    }
    let mut matched = 0;
    if pending.is_empty() {
        return Ok(matched);
    }
    consumer.assign(&assignment)?;
    while !pending.is_empty() {
        let m = consumer.recv().await?;
        let (partition, offset) = (m.partition(), m.offset());
        if pending.get(&partition).is_some_and(|&end| offset < end) {
            let described = describe(&m);
            if filter.matches(&described) {
                matched += 1;
                each(described, m.detach()).await?;
            }
        }
        if pending
            .get(&partition)
            .is_some_and(|&end| offset + 1 >= end)
        {
            pending.remove(&partition);
        }
    }
    Ok(matched)
}

/// Re-publishes the DLQ records `filter` matches to the main topic, reading the whole DLQ and
/// leaving the replay group's offsets alone (a later `dlq replay` without a filter still sends
/// what it has not sent). Rows stay single however often a record is sent (ON CONFLICT DO
/// NOTHING). With `dry_run`, only counts.
pub async fn replay_matching(
    config: &Config,
    producer: &FutureProducer,
    filter: &Filter,
    dry_run: bool,
) -> Result<u64, KafkaError> {
    scan(config, filter, |_, m| async move {
        match dry_run {
            true => Ok(()),
            false => republish(producer, &config.kafka.topic, &m).await,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary_and_say_so() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(2000);
        let cut = bounded(&long, MAX_REASON_BYTES);
        assert!(cut.len() < MAX_REASON_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with("(cut: 4000 bytes in all)"), "{cut}");
    }

    #[test]
    fn only_what_kafka_refuses_for_good_is_permanent() {
        use rdkafka::types::RDKafkaErrorCode as C;
        assert!(is_permanent(&KafkaError::MessageProduction(
            C::MessageSizeTooLarge
        )));
        assert!(!is_permanent(&KafkaError::MessageProduction(
            C::BrokerTransportFailure
        )));
        assert!(!is_permanent(&KafkaError::MessageProduction(
            C::NotLeaderForPartition
        )));
    }
}
