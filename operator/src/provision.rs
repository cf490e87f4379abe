//! The external steps of a reconcile: the database with its roles, and the topics. Redone
//! when the spec or a credential changed, or while either is not ready; otherwise skipped.

use audit_manager_crds::AuditManager;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::build::{self, Names};
use crate::context::{Ctx, Error};
use crate::status::Outcome;
use crate::{apply, credentials, database, topics};

/// What the external steps left.
pub struct Provisioned {
    pub database: Outcome,
    pub topics: Outcome,
    /// Topics this resource created, recorded for teardown.
    pub owned_topics: Vec<String>,
    /// The checksum of the role credentials, in the pod template: a change rolls the pods.
    pub secret_hash: String,
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
    // The role credentials, hashed: in the pod template and, with the admin login, in the
    // fingerprint that decides whether provisioning is redone.
    let secret_hash = creds
        .as_ref()
        .map(|c| build::hash(format!("{:?}", (&c.owner, &c.writer, &c.reader)).as_bytes()))
        .unwrap_or_default();
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
    if done && ready_before {
        return Ok(Provisioned {
            database: Ok(database_ready(&database_name)),
            topics: Ok(topics_ready(am)),
            owned_topics: previous.owned_topics,
            secret_hash,
        });
    }
    let database = match (admin, &creds) {
        (Err(p), _) => Err(p),
        (_, Err(p)) => Err(p.clone()),
        (Ok(admin), Ok(roles)) => {
            let created = database::ensure(am, admin, roles.clone(), database_name.clone()).await;
            if created == Ok(true) {
                let note = format!(
                    "created database {database_name} with roles {}, {}, {}; migrated and partitioned",
                    roles.owner.0, roles.writer.0, roles.reader.0
                );
                ctx.event(am, EventType::Normal, "DatabaseCreated", note)
                    .await;
            }
            created.map(|_| database_ready(&database_name))
        }
    };
    let (topics, owned_topics) = ensure_topics(ctx, am, previous.owned_topics).await?;
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
    })
}

fn database_ready(database: &str) -> String {
    format!("database {database} and its roles are provisioned")
}

fn topics_ready(am: &AuditManager) -> String {
    format!(
        "topics {} and {} are provisioned",
        am.spec.kafka.events_topic.name, am.spec.kafka.dlq_topic.name
    )
}

/// Creates or grows the topics; a topic created is recorded in the status at once, because
/// teardown deletes only topics listed there.
async fn ensure_topics(
    ctx: &Ctx,
    am: &AuditManager,
    mut owned: Vec<String>,
) -> Result<(Outcome, Vec<String>), Error> {
    let report = match topics::ensure(&am.spec.kafka, &owned).await {
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
        Ok(topics_ready(am))
    } else {
        Ok(report.warnings.join("; "))
    };
    Ok((outcome, owned))
}
