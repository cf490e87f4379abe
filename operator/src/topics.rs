//! Step 2: the events and DLQ topics (create if missing, grow partitions, never shrink), and
//! the consumer group's lag.

use std::collections::BTreeMap;
use std::time::Duration;

use audit_manager_crds::{KafkaSpec, TopicSpec};
use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::connections::Connections;
use crate::record::Record;
use crate::status::Problem;
use crate::topic_ids;

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

/// The recorded id of a topic this resource created whose id is not known yet.
const PENDING: &str = "pending";

/// What the topics step did, for Events and the condition message.
#[derive(Debug, Default)]
pub struct Report {
    /// Name and partitions of each topic this call created.
    pub created: Vec<(String, i32)>,
    pub grown: Vec<String>,
    /// Topics whose configuration was brought to the spec, with what changed.
    pub reconfigured: Vec<String>,
    /// `kafka.manageTopics` is false: the topics were only checked.
    pub managed_elsewhere: bool,
    /// What was adopted as it is (`audit.openg2p.org/adopt: topics`).
    pub adopted: Vec<String>,
    pub warnings: Vec<String>,
}

/// The topic configuration the spec manages: `retention.ms`, `compression.type` and, when
/// set, `min.insync.replicas`.
pub fn managed_config(topic: &TopicSpec) -> BTreeMap<&'static str, String> {
    let compression = serde_json::to_value(topic.compression)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "producer".into());
    let mut config = BTreeMap::from([
        ("retention.ms", topic.retention_ms.to_string()),
        ("compression.type", compression),
    ]);
    if let Some(n) = topic.min_insync_replicas {
        config.insert("min.insync.replicas", n.to_string());
    }
    config
}

/// The Kafka cluster's id and the id of each existing topic among `names`.
struct Identity {
    cluster: String,
    topics: BTreeMap<String, String>,
}

async fn identify(
    kafka: &KafkaSpec,
    c: &Connections,
    names: Vec<String>,
) -> Result<Identity, Problem> {
    let spec = kafka.clone();
    let admin = admin(kafka, c)?;
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let cluster =
            topic_ids::cluster_id(admin.inner(), timeout).map_err(|e| unreachable(&spec, e))?;
        let topics = topic_ids::topic_ids(admin.inner(), &names, timeout)
            .map_err(|e| unreachable(&spec, e))?;
        Ok(Identity { cluster, topics })
    })
    .await
    .map_err(|e| Problem::new("InternalError", e.to_string()))?
}

fn field_of(kafka: &KafkaSpec, topic: &TopicSpec) -> &'static str {
    if topic.name == kafka.events_topic.name {
        "eventsTopic"
    } else {
        "dlqTopic"
    }
}

/// Creates missing topics, grows partitions up to the spec and applies the managed topic
/// configuration, touching only what `record` says this resource created: the same Kafka
/// cluster (its id) and the same topics (their ids; a topic deleted and created again by
/// someone else has a new one). A topic that exists but is not recorded, or is recorded with
/// another id, is a conflict and left alone; so is a consumer group that existed before this
/// resource claimed it. What is created or claimed is added to `record`, which the caller
/// saves whatever the outcome.
pub async fn ensure(
    kafka: &KafkaSpec,
    c: &Connections,
    record: &mut Record,
    adopt: bool,
) -> Result<Report, Problem> {
    if !kafka.manage_topics {
        let mut report = check_only(kafka, c).await?;
        claim_group(kafka, c, record, adopt, &mut report).await?;
        return Ok(report);
    }
    let admin = admin(kafka, c)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut report = Report::default();
    let topics = [&kafka.events_topic, &kafka.dlq_topic];
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let identity = identify(kafka, c, names.clone()).await?;
    match &record.kafka_cluster_id {
        Some(id) if *id != identity.cluster => {
            return Err(Problem::new(
                "TopicConflict",
                format!(
                    "{} reaches Kafka cluster {}, but this resource's topics were created on cluster {id}: nothing is created, changed or deleted there",
                    kafka.bootstrap_servers, identity.cluster
                ),
            ));
        }
        Some(_) => {}
        None => record.kafka_cluster_id = Some(identity.cluster.clone()),
    }
    let found = existing(kafka, c, names).await?;
    for topic in topics {
        let field = field_of(kafka, topic);
        let id = identity.topics.get(&topic.name);
        match (id, record.topics.get(&topic.name)) {
            (None, _) => {
                create(&admin, &options, topic).await?;
                // Recorded at once, its id pending: a new topic may not be described yet, and
                // it is this resource's either way. The id is filled in below, or at the next
                // reconcile.
                record.topics.insert(topic.name.clone(), PENDING.into());
                report.created.push((topic.name.clone(), topic.partitions));
                for _ in 0..20 {
                    let created = identify(kafka, c, vec![topic.name.clone()]).await?;
                    if let Some(id) = created.topics.get(&topic.name) {
                        record.topics.insert(topic.name.clone(), id.clone());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                continue;
            }
            (Some(now), Some(ours)) if ours == PENDING => {
                record.topics.insert(topic.name.clone(), now.clone());
            }
            (Some(now), None) if adopt => {
                record.topics.insert(topic.name.clone(), now.clone());
                report.adopted.push(format!("topic {}", topic.name));
            }
            (Some(_), None) => {
                return Err(Problem::new(
                    "TopicConflict",
                    format!(
                        "topic {} already existed and was not created by this AuditManager; it is left alone: set spec.kafka.{field}.name to another name",
                        topic.name
                    ),
                ));
            }
            (Some(now), Some(ours)) if now != ours => {
                return Err(Problem::new(
                    "TopicConflict",
                    format!(
                        "topic {} is not the one this resource created (its id was {ours}, it is {now}): it was deleted and created again elsewhere, so it is left alone",
                        topic.name
                    ),
                ));
            }
            (Some(_), Some(_)) => {}
        }
        match found.get(&topic.name).copied() {
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
            _ => {}
        }
        if let Some(change) = reconfigure(&admin, &options, kafka, topic).await? {
            report.reconfigured.push(change);
        }
    }
    claim_group(kafka, c, record, adopt, &mut report).await?;
    Ok(report)
}

/// Records the consumer group as this resource's, unless it already exists (members or
/// committed offsets) without having been claimed: someone else's offsets would then decide
/// what is stored. With `adopt`, an existing group is taken with its offsets (the original's
/// consumer left off there).
async fn claim_group(
    kafka: &KafkaSpec,
    c: &Connections,
    record: &mut Record,
    adopt: bool,
    report: &mut Report,
) -> Result<(), Problem> {
    if record.consumer_group.as_deref() != Some(kafka.consumer_group.as_str()) {
        let state = group_state(kafka, c).await?;
        if state.is_some() && adopt {
            report.adopted.push(format!(
                "consumer group {} (with its committed offsets)",
                kafka.consumer_group
            ));
        } else if let Some(state) = state {
            return Err(Problem::new(
                "ConsumerGroupConflict",
                format!(
                    "consumer group {} already exists (state {state}) and was not created by this AuditManager: its committed offsets would decide what is stored; it is left alone: set spec.kafka.consumerGroup to another name",
                    kafka.consumer_group
                ),
            ));
        }
        record.consumer_group = Some(kafka.consumer_group.clone());
    }
    Ok(())
}

/// With `kafka.manageTopics: false`: the topics must exist with at least the spec's
/// partitions; nothing is created, changed or recorded.
async fn check_only(kafka: &KafkaSpec, c: &Connections) -> Result<Report, Problem> {
    let topics = [&kafka.events_topic, &kafka.dlq_topic];
    let found = existing(kafka, c, topics.iter().map(|t| t.name.clone()).collect()).await?;
    for topic in topics {
        let field = field_of(kafka, topic);
        match found.get(&topic.name).copied() {
            None => {
                return Err(Problem::new(
                    "TopicMissing",
                    format!(
                        "kafka.manageTopics is false and topic {} does not exist: create it where the topics are managed (e.g. a Strimzi KafkaTopic) with at least {} partitions, or set spec.kafka.{field}.name",
                        topic.name, topic.partitions
                    ),
                ));
            }
            Some(n) if n < topic.partitions => {
                return Err(Problem::new(
                    "TopicTooSmall",
                    format!(
                        "kafka.manageTopics is false and topic {} has {n} partitions, fewer than the {} of spec.kafka.{field}.partitions: grow it where the topics are managed",
                        topic.name, topic.partitions
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(Report {
        managed_elsewhere: true,
        ..Report::default()
    })
}

/// The consumer group's state when it exists (it has members or committed offsets).
async fn group_state(kafka: &KafkaSpec, c: &Connections) -> Result<Option<String>, Problem> {
    let spec = kafka.clone();
    let config = client(c);
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = config.create().map_err(|e| unreachable(&spec, e))?;
        let groups = probe
            .fetch_group_list(Some(&spec.consumer_group), Duration::from_secs(10))
            .map_err(|e| unreachable(&spec, e))?;
        Ok(groups
            .groups()
            .iter()
            .find(|g| g.name() == spec.consumer_group)
            .map(|g| g.state().to_string())
            .filter(|s| !s.is_empty() && s != "Dead"))
    })
    .await
    .map_err(|e| Problem::new("InternalError", e.to_string()))?
}

/// Brings an owned topic's managed configuration to the spec (a change of `retentionMs`,
/// `compression` or `minInsyncReplicas` after creation). Kafka's AlterConfigs replaces the
/// topic's whole dynamic configuration, so the overrides the spec does not manage are sent
/// back as they are. Says what changed, or None when nothing had to.
async fn reconfigure(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    kafka: &KafkaSpec,
    topic: &TopicSpec,
) -> Result<Option<String>, Problem> {
    let failed = |e: String| {
        Problem::new(
            "TopicProvisioningFailed",
            format!("configuring topic {}: {e}", topic.name),
        )
    };
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&topic.name)], options)
        .await
        .map_err(|e| unreachable(kafka, e))?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| failed("no answer".into()))?
        .map_err(|code| failed(code.to_string()))?;
    let entries = resource.entry_map();
    let wanted = managed_config(topic);
    let mut changes = Vec::new();
    for (key, value) in &wanted {
        let now = entries.get(key).and_then(|e| e.value.clone());
        if now.as_deref() != Some(value.as_str()) {
            changes.push(format!("{key} {} → {value}", now.unwrap_or_default()));
        }
    }
    // min.insync.replicas taken out of the spec: back to the broker's default.
    let dropped_min_isr = !wanted.contains_key("min.insync.replicas")
        && entries
            .get("min.insync.replicas")
            .is_some_and(|e| e.source == ConfigSource::DynamicTopic);
    if dropped_min_isr {
        changes.push("min.insync.replicas → the broker's default".into());
    }
    if changes.is_empty() {
        return Ok(None);
    }
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&topic.name));
    for e in resource.entries.iter().filter(|e| {
        e.source == ConfigSource::DynamicTopic
            && !e.is_sensitive
            && !wanted.contains_key(e.name.as_str())
            && e.name != "min.insync.replicas"
    }) {
        if let Some(v) = &e.value {
            alter = alter.set(&e.name, v);
        }
    }
    for (key, value) in &wanted {
        alter = alter.set(key, value);
    }
    for r in admin
        .alter_configs(&[alter], options)
        .await
        .map_err(|e| unreachable(kafka, e))?
    {
        r.map_err(|(_, code)| failed(code.to_string()))?;
    }
    Ok(Some(format!("{}: {}", topic.name, changes.join(", "))))
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: &TopicSpec,
) -> Result<(), Problem> {
    let config = managed_config(topic);
    // -1: the broker's `default.replication.factor` (KIP-464).
    let replication = topic.replication_factor.unwrap_or(-1);
    let mut new = NewTopic::new(
        &topic.name,
        topic.partitions,
        TopicReplication::Fixed(replication),
    );
    for (key, value) in &config {
        new = new.set(key, value);
    }
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

/// What teardown did with the recorded topics and group.
#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: Vec<String>,
    /// Recorded, but left alone, with why.
    pub left: Vec<String>,
}

/// Deletes the topics and the consumer group `record` says this resource created, each only
/// when it is still that one: the same cluster and the same topic id. Anything else is left
/// and named.
pub async fn delete(
    kafka: &KafkaSpec,
    c: &Connections,
    record: &Record,
) -> Result<Deleted, Problem> {
    let mut out = Deleted::default();
    if record.topics.is_empty() && record.consumer_group.is_none() {
        return Ok(out);
    }
    let admin = admin(kafka, c)?;
    let identity = identify(kafka, c, record.topics.keys().cloned().collect()).await?;
    if record.kafka_cluster_id.as_deref() != Some(identity.cluster.as_str()) {
        out.left.push(format!(
            "topics {} (created on Kafka cluster {}, but {} reaches cluster {})",
            record.topics.keys().cloned().collect::<Vec<_>>().join(", "),
            record.kafka_cluster_id.as_deref().unwrap_or("unknown"),
            kafka.bootstrap_servers,
            identity.cluster
        ));
        return Ok(out);
    }
    // A topic DescribeTopics does not know is taken as gone only when the cluster's metadata
    // agrees: teardown must not finish on a transient answer and leave the topic behind.
    let unknown: Vec<String> = record
        .topics
        .keys()
        .filter(|n| !identity.topics.contains_key(*n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        let still = existing(kafka, c, unknown).await?;
        if !still.is_empty() {
            return Err(Problem::new(
                "KafkaUnreachable",
                format!(
                    "topics {} exist but could not be described; retrying",
                    still.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let mut doomed = Vec::new();
    for (name, ours) in &record.topics {
        match identity.topics.get(name) {
            None => {}
            Some(now) if now == ours || ours == PENDING => doomed.push(name.as_str()),
            Some(now) => out.left.push(format!(
                "topic {name} (recreated elsewhere: its id was {ours}, it is {now})"
            )),
        }
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if !doomed.is_empty() {
        let results = admin
            .delete_topics(&doomed, &options)
            .await
            .map_err(|e| unreachable(kafka, e))?;
        for r in results {
            match r {
                Ok(name) => out.deleted.push(format!("topic {name}")),
                Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    return Err(Problem::new(
                        "TopicDeletionFailed",
                        format!("deleting topic {name}: {code}"),
                    ));
                }
            }
        }
    }
    if let Some(group) = &record.consumer_group {
        let results = admin
            .delete_groups(&[group.as_str()], &options)
            .await
            .map_err(|e| unreachable(kafka, e))?;
        for r in results {
            match r {
                Ok(name) => out.deleted.push(format!("consumer group {name}")),
                Err((_, rdkafka::types::RDKafkaErrorCode::GroupIdNotFound)) => {}
                // Consumers outside this resource's workload (which is gone by now) still use
                // it: left to them, and said.
                Err((name, rdkafka::types::RDKafkaErrorCode::NonEmptyGroup)) => out
                    .left
                    .push(format!("consumer group {name} (it still has members)")),
                Err((name, code)) => {
                    return Err(Problem::new(
                        "TopicDeletionFailed",
                        format!(
                            "deleting consumer group {name} (its consumers may still be leaving): {code}"
                        ),
                    ));
                }
            }
        }
    }
    Ok(out)
}
