//! Step 2: the events and DLQ topics (create if missing, grow partitions, never shrink), and
//! the consumer group's lag.

use std::collections::BTreeMap;
use std::time::Duration;

use audit_manager_crds::{KafkaSpec, TopicSpec};
use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::connections::Connections;
use crate::status::Problem;

fn unreachable(kafka: &KafkaSpec, e: impl std::fmt::Display) -> Problem {
    Problem::new(
        "KafkaUnreachable",
        format!(
            "cannot reach Kafka at {} ({}): {e}",
            kafka.bootstrap_servers,
            kafka.security.protocol.as_str().to_ascii_uppercase()
        ),
    )
}

/// A client with the runtime's settings (`kafka::client_config`) and the referenced material.
fn client(c: &Connections) -> ClientConfig {
    audit_manager::kafka::client_config(&c.kafka_bootstrap, &c.kafka)
}

/// Partitions of `topic`, or None when it does not exist.
fn partitions_of(
    consumer: &BaseConsumer,
    kafka: &KafkaSpec,
    topic: &str,
) -> Result<Option<i32>, Problem> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| unreachable(kafka, e))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32))
}

/// The partition count of each of `names` that exists, asked through one client.
async fn existing(
    kafka: &KafkaSpec,
    c: &Connections,
    names: Vec<String>,
) -> Result<BTreeMap<String, i32>, Problem> {
    let spec = kafka.clone();
    let config = client(c);
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = config.create().map_err(|e| unreachable(&spec, e))?;
        let mut found = BTreeMap::new();
        for name in names {
            if let Some(n) = partitions_of(&probe, &spec, &name)? {
                found.insert(name, n);
            }
        }
        Ok(found)
    })
    .await
    .map_err(|e| Problem::new("InternalError", e.to_string()))?
}

fn admin(kafka: &KafkaSpec, c: &Connections) -> Result<AdminClient<DefaultClientContext>, Problem> {
    client(c)
        .set("socket.timeout.ms", "10000")
        .create()
        .map_err(|e| unreachable(kafka, e))
}

/// What the topics step did, for Events and the condition message.
#[derive(Debug, Default)]
pub struct Report {
    /// Name and partitions of each topic this call created.
    pub created: Vec<(String, i32)>,
    pub grown: Vec<String>,
    pub warnings: Vec<String>,
}

/// Creates missing topics and grows partitions up to the spec. A topic that exists but is not
/// in `owned` (created by this resource) is reported as a conflict and left alone.
pub async fn ensure(
    kafka: &KafkaSpec,
    c: &Connections,
    owned: &[String],
) -> Result<Report, Problem> {
    let admin = admin(kafka, c)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut report = Report::default();
    let topics = [&kafka.events_topic, &kafka.dlq_topic];
    let found = existing(kafka, c, topics.iter().map(|t| t.name.clone()).collect()).await?;
    for topic in topics {
        match found.get(&topic.name).copied() {
            None => {
                create(&admin, &options, topic).await?;
                report.created.push((topic.name.clone(), topic.partitions));
            }
            Some(_) if !owned.contains(&topic.name) => {
                return Err(Problem::new(
                    "TopicConflict",
                    format!(
                        "topic {} already existed and was not created by this AuditManager; it is left alone: set spec.kafka.{}.name to another name",
                        topic.name,
                        if topic.name == kafka.events_topic.name { "eventsTopic" } else { "dlqTopic" }
                    ),
                ));
            }
            Some(n) if n < topic.partitions => {
                let results = admin
                    .create_partitions(&[NewPartitions::new(&topic.name, topic.partitions as usize)], &options)
                    .await
                    .map_err(|e| unreachable(kafka, e))?;
                for r in results {
                    r.map_err(|(name, code)| Problem::new("TopicProvisioningFailed", format!("growing {name} to {} partitions: {code}", topic.partitions)))?;
                }
                report.grown.push(format!("{} {n} → {}", topic.name, topic.partitions));
            }
            Some(n) if n > topic.partitions => report.warnings.push(format!(
                "{} has {n} partitions, more than the {} in the spec: Kafka cannot remove partitions, so it stays at {n} (PartitionDecreaseNotSupported)",
                topic.name, topic.partitions
            )),
            Some(_) => {}
        }
    }
    Ok(report)
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: &TopicSpec,
) -> Result<(), Problem> {
    let retention = topic.retention_ms.to_string();
    let compression = serde_json::to_value(topic.compression)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "producer".into());
    let new = NewTopic::new(
        &topic.name,
        topic.partitions,
        TopicReplication::Fixed(topic.replication_factor),
    )
    .set("retention.ms", &retention)
    .set("compression.type", &compression);
    let results = admin.create_topics(&[new], options).await.map_err(|e| {
        Problem::new(
            "KafkaUnreachable",
            format!("creating topic {}: {e}", topic.name),
        )
    })?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Problem::new(
                    "TopicProvisioningFailed",
                    format!("creating topic {name}: {code}"),
                ));
            }
        }
    }
    Ok(())
}

fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::NotCoordinator | C::CoordinatorLoadInProgress | C::CoordinatorNotAvailable)
    )
}

/// Lag of the consumer group on the events topic: per partition, high watermark minus the
/// committed offset (the whole partition when nothing is committed yet).
pub fn lag(kafka: &KafkaSpec, c: &Connections) -> Result<BTreeMap<i32, i64>, Problem> {
    let consumer: BaseConsumer = client(c)
        .set("group.id", &kafka.consumer_group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| unreachable(kafka, e))?;
    let topic = &kafka.events_topic.name;
    let Some(partitions) = partitions_of(&consumer, kafka, topic)? else {
        return Ok(BTreeMap::new());
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    // A group's coordinator may still be loading (NotCoordinator, CoordinatorLoadInProgress):
    // ask again for a few seconds before calling Kafka unreachable.
    let mut attempt = 0;
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => break c,
            Err(e) if attempt < 10 && is_transient(&e) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(unreachable(kafka, e)),
        }
    };
    drop(tpl);
    let lags =
        audit_manager::kafka::lag::lag(&consumer, &committed, topic, Duration::from_secs(10))
            .map_err(|e| unreachable(kafka, e));
    // The partition list holds references into the client: release it before the consumer.
    drop(committed);
    lags
}

/// Deletes `names` (those that exist).
pub async fn delete(
    kafka: &KafkaSpec,
    c: &Connections,
    names: &[String],
) -> Result<Vec<String>, Problem> {
    let admin = admin(kafka, c)?;
    let found = existing(kafka, c, names.to_vec()).await?;
    let existing: Vec<String> = names
        .iter()
        .filter(|n| found.contains_key(*n))
        .cloned()
        .collect();
    if existing.is_empty() {
        return Ok(existing);
    }
    let refs: Vec<&str> = existing.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(&refs, &options)
        .await
        .map_err(|e| unreachable(kafka, e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                return Err(Problem::new(
                    "TopicDeletionFailed",
                    format!("deleting topic {name}: {code}"),
                ));
            }
        }
    }
    Ok(existing)
}
