//! The external steps of a reconcile: the database with its roles, and the topics. Redone
//! when the spec or a credential changed, or while either is not ready; otherwise skipped.

use audit_manager::db::partitions::Month;
use audit_manager::db::roles;
use audit_manager_crds::{AuditManager, adopts};
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::build::{self, Names};
use crate::connections::{self, Connections};
use crate::context::{Ctx, Error};
use crate::exposure::{self, ClusterIssuer};
use crate::status::{Outcome, Problem};
use crate::{apply, credentials, database, record, topics};

/// What the external steps left.
pub struct Provisioned {
    pub database: Outcome,
    pub topics: Outcome,
    /// Topics this resource created (from the ownership record), shown in the status.
    pub owned_topics: Vec<String>,
    /// The checksum of the role credentials and the referenced TLS/SASL material, in the pod
    /// template: a change rolls the pods.
    pub secret_hash: String,
    /// The settings of the operator's own connections (lag, teardown).
    pub connections: Result<Connections, Problem>,
    /// The cluster's ServiceAccount issuer, read when the spec trusts it.
    pub cluster_issuer: Option<ClusterIssuer>,
    /// The monthly partitions the database has (read once the database is ready).
    pub partitions: Result<Vec<Month>, Problem>,
}

/// Runs the database step when something it depends on changed, and the topics step.
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
    let database_ready_before = previous
        .conditions
        .iter()
        .any(|c| c.type_ == "DatabaseReady" && c.status == "True");
    // Nothing read from a Secret reaches a condition, an Event or a log line.
    let secrets = secrets_of(&admin, &creds, &connections);
    // The database step (migrations included) is redone only when its inputs changed; the
    // topics step runs every time, because it checks that the topics and the cluster are
    // still the ones this resource created (a topic recreated elsewhere is a conflict).
    let database = match (admin, &creds, &connections) {
        _ if done && database_ready_before => Ok(previous
            .conditions
            .iter()
            .find(|c| c.type_ == "DatabaseReady")
            .map(|c| c.message.clone())
            .unwrap_or_default()),
        (Err(p), _, _) => Err(p),
        (_, Err(p), _) | (_, _, Err(p)) => Err(p.clone()),
        (Ok(admin), Ok(roles), Ok(c)) => {
            let adopt = match adopts(am, "database") {
                true => Some(live_resources(ctx).await?),
                false => None,
            };
            let ensured =
                database::ensure(am, c, admin, roles.clone(), database_name.clone(), adopt).await;
            if let Ok(database::Ensured {
                adopted: Some(note),
                ..
            }) = &ensured
            {
                ctx.event(am, EventType::Normal, "DatabaseAdopted", note.clone())
                    .await;
            }
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
    let database = database.map_err(|p| p.redacted(&secrets));
    let (topics, owned_topics) = match &connections {
        Ok(c) => ensure_topics(ctx, am, c, previous.owned_topics).await?,
        Err(p) => (Err(p.clone()), previous.owned_topics),
    };
    let topics = topics.map_err(|p| p.redacted(&secrets));
    for outcome in [&database, &topics] {
        if let Err(p) = outcome {
            ctx.warn(am, p).await;
        }
    }
    if database.is_ok() {
        ctx.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, (generation, fingerprint));
    }
    let partitions = match (&database, &creds, &connections) {
        (Ok(_), Ok(roles), Ok(c)) => {
            database::partitions(c, roles.reader.clone(), database_name.clone())
                .await
                .map_err(|p| p.redacted(&secrets))
        }
        _ => Err(Problem::new(
            "PartitionsUnknown",
            "waiting for DatabaseReady to list the partitions of audit_events".into(),
        )),
    };
    let cluster_issuer = match exposure::wants_cluster_issuer(am) {
        true => Some(cluster_issuer(&ctx.client).await?),
        false => None,
    };
    Ok(Provisioned {
        database,
        topics,
        owned_topics,
        secret_hash,
        connections,
        cluster_issuer,
        partitions,
    })
}

/// The cluster's ServiceAccount issuer and its keys, as the API server publishes them to any
/// ServiceAccount (`system:service-account-issuer-discovery`). Read on every reconcile, so a
/// rotated signing key reaches the pods' file within a reconcile and kubelet's sync.
async fn cluster_issuer(client: &kube::Client) -> Result<ClusterIssuer, Error> {
    let get = |path: &str| {
        http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Build {
                kind: "request".into(),
                message: e.to_string(),
            })
    };
    let discovery: serde_json::Value = serde_json::from_str(
        &client
            .request_text(get("/.well-known/openid-configuration")?)
            .await?,
    )?;
    let issuer = discovery["issuer"]
        .as_str()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Error::Build {
            kind: "ServiceAccount issuer".into(),
            message: "the API server's /.well-known/openid-configuration names no issuer (is --service-account-issuer set?)".into(),
        })?
        .to_string();
    let jwks = client.request_text(get("/openid/v1/jwks")?).await?;
    Ok(ClusterIssuer { issuer, jwks })
}

/// The UIDs of the AuditManagers that exist, with their `namespace/name`.
async fn live_resources(ctx: &Ctx) -> Result<database::Live, Error> {
    let all = kube::Api::<AuditManager>::all(ctx.client.clone())
        .list(&Default::default())
        .await?;
    Ok(all
        .items
        .iter()
        .map(|am| {
            (
                am.uid().unwrap_or_default(),
                format!("{}/{}", am.namespace().unwrap_or_default(), am.name_any()),
            )
        })
        .collect())
}

/// Every value read from a Secret: the admin login, the role passwords, the SASL password.
fn secrets_of(
    admin: &Result<(String, String), Problem>,
    creds: &Result<roles::Roles, Problem>,
    connections: &Result<Connections, Problem>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok((user, password)) = admin {
        out.extend([user.clone(), password.clone()]);
    }
    if let Ok(r) = creds {
        out.extend([&r.owner.1, &r.writer.1, &r.reader.1].map(Clone::clone));
    }
    if let Ok(c) = connections {
        out.push(c.kafka.sasl_password.clone());
    }
    out
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

/// Creates, grows and configures the topics and claims the consumer group, recording what was
/// created in the ownership record at once (teardown deletes only what it lists); the status
/// shows the recorded topics for people.
async fn ensure_topics(
    ctx: &Ctx,
    am: &AuditManager,
    c: &Connections,
    shown: Vec<String>,
) -> Result<(Outcome, Vec<String>), Error> {
    let mut recorded = match record::load(&ctx.client, &ctx.namespace, am).await {
        Ok(r) => r,
        Err(e) => return Ok((Err(Problem::new("OwnershipRecordUnavailable", e)), shown)),
    };
    let before = recorded.clone();
    let outcome = topics::ensure(&am.spec.kafka, c, &mut recorded, adopts(am, "topics")).await;
    if recorded != before
        && let Err(e) = record::save(&ctx.client, &ctx.namespace, am, &recorded).await
    {
        return Ok((Err(Problem::new("OwnershipRecordUnavailable", e)), shown));
    }
    let owned: Vec<String> = recorded.topics.keys().cloned().collect();
    if owned != shown {
        let recorded = serde_json::json!({ "ownedTopics": owned });
        apply::patch_status(&ctx.client, am, recorded).await?;
    }
    let report = match outcome {
        Ok(report) => report,
        Err(p) => return Ok((Err(p), owned)),
    };
    if !report.adopted.is_empty() {
        let note = format!(
            "adopted {} (audit.openg2p.org/adopt: topics): recorded as this resource's and managed from now on",
            report.adopted.join(", ")
        );
        ctx.event(am, EventType::Normal, "TopicsAdopted", note)
            .await;
    }
    for (topic, partitions) in &report.created {
        let note = format!("created topic {topic} ({partitions} partitions)");
        ctx.event(am, EventType::Normal, "TopicCreated", note).await;
    }
    for t in &report.reconfigured {
        let note = format!("configured topic {t}");
        ctx.event(am, EventType::Normal, "TopicReconfigured", note)
            .await;
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
    let outcome = if report.managed_elsewhere {
        Ok(format!(
            "topics {} and {} exist with enough partitions (kafka.manageTopics is false: the operator does not change them); Kafka {}",
            am.spec.kafka.events_topic.name,
            am.spec.kafka.dlq_topic.name,
            audit_manager::kafka::protection(&c.kafka)
        ))
    } else if report.warnings.is_empty() {
        Ok(topics_ready(am, c))
    } else {
        Ok(report.warnings.join("; "))
    };
    Ok((outcome, owned))
}
