//! The external steps of a reconcile: the database with its roles, and the topics. Redone
//! when the spec or a credential changed, or while either is not ready; otherwise skipped.

use audit_manager_crds::AuditManager;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::build::{self, Names};
use crate::connections::{self, Connections};
use crate::context::{Ctx, Error};
use crate::status::{Outcome, Problem};
use crate::{apply, credentials, database, topics};

/// What the external steps left.
pub struct Provisioned {
    pub database: Outcome,
    pub topics: Outcome,
    /// Topics this resource created, recorded for teardown.
    pub owned_topics: Vec<String>,
    /// The checksum of the role credentials and the referenced TLS/SASL material, in the pod
    /// template: a change rolls the pods.
    pub secret_hash: String,
    /// The settings of the operator's own connections (lag, teardown).
    pub connections: Result<Connections, Problem>,
}

/// Runs the database and topic steps when something they depend on changed.
pub async fn run(ctx: &Ctx, am: &AuditManager, names: &Names) -> Result<Provisioned, Error> {
    let database_name = am.spec.database_name(&am.name_any());
    let generation = am.metadata.generation.unwrap_or(0);
    let uid = am.uid().unwrap_or_default();
    let admin = credentials::admin_login(&ctx.client, am).await;
    if admin.is_ok() {
        credentials::hold_admin_secret(&ctx.client, am).await?;
    }
    let creds = credentials::credentials(&ctx.client, am, names, &database_name).await;
    let connections = connections::resolve(&ctx.client, am).await;
    // The role credentials and the referenced material, hashed: in the pod template and, with
    // the admin login, in the fingerprint that decides whether provisioning is redone.
    let secret_hash = match (&creds, &connections) {
        (Ok(c), Ok(conn)) => {
            build::hash(format!("{:?}{}", (&c.owner, &c.writer, &c.reader), conn.hash).as_bytes())
        }
        _ => String::new(),
    };
    let fingerprint = match &admin {
        Ok(a) if creds.is_ok() => build::hash(format!("{a:?}{secret_hash}").as_bytes()),
        _ => String::new(),
    };
    let done = ctx
        .provisioned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&uid)
        .is_some_and(|(g, f)| *g == generation && *f == fingerprint && !f.is_empty());
    let previous = am.status.clone().unwrap_or_default();
    let ready_before = ["DatabaseReady", "TopicsReady"].iter().all(|kind| {
        previous
            .conditions
            .iter()
            .any(|c| c.type_ == *kind && c.status == "True")
    });
    let message_of = |kind: &str| {
        previous
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    if done && ready_before {
        return Ok(Provisioned {
            database: Ok(message_of("DatabaseReady")),
            topics: Ok(message_of("TopicsReady")),
            owned_topics: previous.owned_topics,
            secret_hash,
            connections,
        });
    }
    let database = match (admin, &creds, &connections) {
        (Err(p), _, _) => Err(p),
        (_, Err(p), _) | (_, _, Err(p)) => Err(p.clone()),
        (Ok(admin), Ok(roles), Ok(c)) => {
            let ensured =
                database::ensure(am, c, admin, roles.clone(), database_name.clone()).await;
            if ensured.as_ref().is_ok_and(|e| e.created) {
                let note = format!(
                    "created database {database_name} with roles {}, {}, {}; migrated and partitioned",
                    roles.owner.0, roles.writer.0, roles.reader.0
                );
                ctx.event(am, EventType::Normal, "DatabaseCreated", note)
                    .await;
            }
            ensured.map(|e| database_ready(&database_name, &e.protection))
        }
    };
    let (topics, owned_topics) = match &connections {
        Ok(c) => ensure_topics(ctx, am, c, previous.owned_topics).await?,
        Err(p) => (Err(p.clone()), previous.owned_topics),
    };
    for outcome in [&database, &topics] {
        if let Err(p) = outcome {
            ctx.warn(am, p).await;
        }
    }
    if database.is_ok() && topics.is_ok() {
        ctx.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, (generation, fingerprint));
    }
    Ok(Provisioned {
        database,
        topics,
        owned_topics,
        secret_hash,
        connections,
    })
}

fn database_ready(database: &str, protection: &str) -> String {
    format!("database {database} and its roles are provisioned; the connection is {protection}")
}

fn topics_ready(am: &AuditManager, c: &Connections) -> String {
    format!(
        "topics {} and {} are provisioned; Kafka {}",
        am.spec.kafka.events_topic.name,
        am.spec.kafka.dlq_topic.name,
        audit_manager::kafka::protection(&c.kafka)
    )
}

/// Creates or grows the topics; a topic created is recorded in the status at once, because
/// teardown deletes only topics listed there.
async fn ensure_topics(
    ctx: &Ctx,
    am: &AuditManager,
    c: &Connections,
    mut owned: Vec<String>,
) -> Result<(Outcome, Vec<String>), Error> {
    let report = match topics::ensure(&am.spec.kafka, c, &owned).await {
        Ok(report) => report,
        Err(p) => return Ok((Err(p), owned)),
    };
    if !report.created.is_empty() {
        owned.extend(report.created.iter().map(|(name, _)| name.clone()));
        let recorded = serde_json::json!({ "ownedTopics": owned });
        apply::patch_status(&ctx.client, am, recorded).await?;
    }
    for (topic, partitions) in &report.created {
        let note = format!("created topic {topic} ({partitions} partitions)");
        ctx.event(am, EventType::Normal, "TopicCreated", note).await;
    }
    for t in &report.grown {
        ctx.event(
            am,
            EventType::Normal,
            "TopicGrown",
            format!("grew topic {t}"),
        )
        .await;
    }
    let outcome = if report.warnings.is_empty() {
        Ok(topics_ready(am, c))
    } else {
        Ok(report.warnings.join("; "))
    };
    Ok((outcome, owned))
}
