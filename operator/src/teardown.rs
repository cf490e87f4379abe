//! Deletion through the finalizer: workload and children, then the database and roles, then
//! the topics, then the generated Secrets; only what this resource created, each step
//! idempotent, reported as an Event and in a `Terminating` condition while it waits.

use std::time::Duration;

use audit_manager::db::roles::{KINDS, role_name};
use audit_manager_crds::{AuditManager, DeletionPolicy, FINALIZER, SKIP_EXTERNAL_TEARDOWN};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::apply::{self, api_of, crd_installed, delete_owned};
use crate::build::{self, Kind, Names};
use crate::connections::{self, Connections};
use crate::context::{Ctx, Error};
use crate::status::{self, Problem};
use crate::{credentials, database, record, topics};

/// The deletion branch of a reconcile: the next teardown steps, then the finalizer goes.
pub async fn finalize(ctx: &Ctx, am: &AuditManager) -> Result<Action, Error> {
    if !am.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    match run(am, ctx).await? {
        Progress::Done => Ok(match apply::set_finalizer(&ctx.client, am, false).await? {
            true => Action::await_change(),
            false => Action::requeue(Duration::from_secs(1)),
        }),
        Progress::Waiting(p) => {
            tracing::info!(reason = p.reason, message = %p.message, "teardown waiting");
            let previous = am.status.clone().unwrap_or_default();
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let conditions =
                status::terminating(&previous.conditions, &p, am.metadata.generation, &now);
            if conditions != previous.conditions {
                let waiting = serde_json::json!({ "conditions": conditions });
                apply::patch_status(&ctx.client, am, waiting).await?;
                let note = format!("deletion waits: {}", p.message);
                ctx.event(am, EventType::Warning, p.reason, note).await;
            }
            Ok(Action::requeue(Duration::from_secs(5)))
        }
    }
}

/// Where teardown stands.
enum Progress {
    Done,
    /// Waiting for something; the Problem names it.
    Waiting(Problem),
}

fn skip_external(am: &AuditManager) -> bool {
    am.annotations()
        .get(SKIP_EXTERNAL_TEARDOWN)
        .is_some_and(|v| v == "true")
}

fn owned_topics(am: &AuditManager) -> Vec<String> {
    am.status
        .as_ref()
        .map(|s| s.owned_topics.clone())
        .unwrap_or_default()
}

/// What deletion would remove and leave, for `status.teardownPreview`.
pub fn preview(am: &AuditManager) -> Vec<String> {
    let name = am.name_any();
    let names = Names::of(&name);
    let database = am.spec.database_name(&name);
    let children: Vec<String> = Kind::ALL
        .iter()
        .map(|k| {
            let what = format!("{k:?} {}", k.name(&names));
            match (k, k.crd()) {
                (Kind::CronJob, _) => format!("{what} and its Jobs"),
                (_, Some(_)) => format!("{what} (if any)"),
                _ => what,
            }
        })
        .collect();
    let mut out = vec![children.join(", ")];
    if skip_external(am) {
        out.push(format!(
            "database, roles and topics: left alone ({SKIP_EXTERNAL_TEARDOWN})"
        ));
    } else {
        let roles = KINDS.map(|k| role_name(&database, k)).join(", ");
        match am.spec.deletion_policy.database {
            DeletionPolicy::Delete => out.push(format!(
                "database {database} and roles {roles} on {}:{} (only if created by this resource)",
                am.spec.database.host, am.spec.database.port
            )),
            DeletionPolicy::Retain => out.push(format!(
                "database {database} and its roles: retained (deletionPolicy.database Retain)"
            )),
        }
        let owned = owned_topics(am);
        match am.spec.deletion_policy.topics {
            DeletionPolicy::Delete if owned.is_empty() => {
                out.push("topics: none created by this resource".into())
            }
            DeletionPolicy::Delete => out.push(format!(
                "topics {} and consumer group {} on {} (each only if still the one this resource created)",
                owned.join(", "),
                am.spec.kafka.consumer_group,
                am.spec.kafka.bootstrap_servers
            )),
            DeletionPolicy::Retain => out.push(format!(
                "topics {}: retained (deletionPolicy.topics Retain)",
                owned.join(", ")
            )),
        }
    }
    let secrets = names.role_secrets().map(String::as_str).join(", ");
    if am.spec.deletion_policy.database == DeletionPolicy::Retain && !skip_external(am) {
        out.push(format!(
            "Secrets {secrets}: retained with the database (no longer owned)"
        ));
    } else {
        out.push(format!("Secrets {secrets}"));
    }
    out
}

/// Runs the next teardown steps; `Done` when the finalizer may go.
async fn run(am: &AuditManager, ctx: &Ctx) -> Result<Progress, kube::Error> {
    let name = am.name_any();
    let names = Names::of(&name);
    // 1. The workload and the other namespaced children.
    let remaining = delete_children(am, ctx, &names).await?;
    if !remaining.is_empty() {
        return Ok(Progress::Waiting(Problem::new(
            "DeletingWorkload",
            format!("waiting for {} to be deleted", remaining.join(", ")),
        )));
    }
    if skip_external(am) {
        ctx.event(am, EventType::Warning, "ExternalTeardownSkipped", format!(
            "{SKIP_EXTERNAL_TEARDOWN} is set: the database, roles and topics were not touched; drop them by hand if they still exist"
        )).await;
    } else {
        // The referenced TLS/SASL material, read once for both steps; only a step that
        // connects needs it.
        let connections = connections::resolve(&ctx.client, am).await;
        // 2. The database and roles.
        if let Err(p) = drop_database(am, ctx, &connections).await {
            return Ok(Progress::Waiting(p));
        }
        // 3. The topics.
        if let Err(p) = delete_topics(am, ctx, &connections).await {
            return Ok(Progress::Waiting(p));
        }
    }
    // 4. The ownership record, the generated Secrets, and the hold on the admin Secret.
    record::forget(&ctx.client, &ctx.namespace, am).await?;
    credentials::release_admin_secret(&ctx.client, am).await?;
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &am.namespace().unwrap_or_default());
    if am.spec.deletion_policy.database == DeletionPolicy::Retain && !skip_external(am) {
        // The retained database's roles keep their passwords: their Secrets stay, no longer
        // owned by this resource.
        let mut kept = Vec::new();
        for secret in names.role_secrets() {
            if apply::disown(&secrets, secret, am).await? {
                kept.push(secret.as_str());
            }
        }
        if !kept.is_empty() {
            ctx.event(am, EventType::Normal, "SecretsRetained", format!(
                "deletionPolicy.database is Retain: the role Secrets {} stay, with the retained roles' passwords", kept.join(", "))).await;
        }
    } else {
        for secret in names.role_secrets() {
            delete_owned(&secrets, secret, am).await?;
        }
    }
    ctx.metrics
        .forget(&am.namespace().unwrap_or_default(), &am.name_any());
    ctx.event(
        am,
        EventType::Normal,
        "TeardownComplete",
        "everything this resource created is gone; removing the finalizer".into(),
    )
    .await;
    Ok(Progress::Done)
}

/// Scales the workload to zero (so its pods drain their queues), then deletes every child
/// and the maintenance Jobs; returns what still exists.
async fn delete_children(
    am: &AuditManager,
    ctx: &Ctx,
    names: &Names,
) -> Result<Vec<String>, kube::Error> {
    let ns = am.namespace().unwrap_or_default();
    let c = &ctx.client;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    if let Some(d) = deployments.get_opt(&names.app).await?
        && d.spec.as_ref().and_then(|s| s.replicas) != Some(0)
        && d.metadata.deletion_timestamp.is_none()
    {
        deployments
            .patch(
                &names.app,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
            )
            .await?;
    }
    let mut remaining = Vec::new();
    for kind in Kind::ALL {
        if let Some(crd) = kind.crd()
            && !crd_installed(c, crd).await?
        {
            continue;
        }
        let name = kind.name(names);
        if delete_owned(&api_of(c, am, kind), name, am).await? == Some(true) {
            remaining.push(format!("{kind:?} {name}"));
        }
    }
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    for job in jobs
        .list_metadata(&ListParams::default().labels(&build::maintenance_selector_string(am)))
        .await?
        .items
    {
        let job_name = job.name_any();
        if job.metadata.deletion_timestamp.is_none() {
            jobs.delete(&job_name, &DeleteParams::background()).await?;
        }
        if jobs.get_metadata_opt(&job_name).await?.is_some() {
            remaining.push(format!("Job {job_name}"));
        }
    }
    if remaining.is_empty() {
        ctx.event(
            am,
            EventType::Normal,
            "WorkloadDeleted",
            "deleted the workload and every namespaced child".into(),
        )
        .await;
    }
    Ok(remaining)
}

async fn drop_database(
    am: &AuditManager,
    ctx: &Ctx,
    connections: &Result<Connections, Problem>,
) -> Result<(), Problem> {
    let name = am.name_any();
    let db_name = am.spec.database_name(&name);
    let roles = KINDS.map(|k| role_name(&db_name, k));
    if am.spec.deletion_policy.database == DeletionPolicy::Retain {
        ctx.event(
            am,
            EventType::Normal,
            "DatabaseRetained",
            format!(
                "deletionPolicy.database is Retain: database {db_name} and roles {} stay on {}:{}",
                roles.join(", "),
                am.spec.database.host,
                am.spec.database.port
            ),
        )
        .await;
        return Ok(());
    }
    let admin = credentials::admin_login(&ctx.client, am).await?;
    let c = connections.as_ref().map_err(Problem::clone)?;
    let secrets = [admin.0.clone(), admin.1.clone()];
    let report = database::drop_owned(am, c, admin, db_name, roles.to_vec())
        .await
        .map_err(|p| p.redacted(&secrets))?;
    let kind = if report.left.is_empty() {
        EventType::Normal
    } else {
        EventType::Warning
    };
    ctx.event(am, kind, "DatabaseDropped", report.to_string())
        .await;
    Ok(())
}

async fn delete_topics(
    am: &AuditManager,
    ctx: &Ctx,
    connections: &Result<Connections, Problem>,
) -> Result<(), Problem> {
    // The ownership record, not the status: anyone allowed to patch the status could list
    // someone else's topic there.
    let recorded = record::load(&ctx.client, &ctx.namespace, am)
        .await
        .map_err(|e| Problem::new("OwnershipRecordUnavailable", e))?;
    let owned: Vec<String> = recorded.topics.keys().cloned().collect();
    let not_ours: Vec<&str> = [
        am.spec.kafka.events_topic.name.as_str(),
        am.spec.kafka.dlq_topic.name.as_str(),
    ]
    .into_iter()
    .filter(|t| !recorded.topics.contains_key(*t))
    .collect();
    if !am.spec.kafka.manage_topics {
        ctx.event(
            am,
            EventType::Normal,
            "TopicsRetained",
            format!(
                "kafka.manageTopics is false: topics {} and {} are managed elsewhere and stay",
                am.spec.kafka.events_topic.name, am.spec.kafka.dlq_topic.name
            ),
        )
        .await;
        return Ok(());
    }
    if am.spec.deletion_policy.topics == DeletionPolicy::Retain {
        ctx.event(
            am,
            EventType::Normal,
            "TopicsRetained",
            format!(
                "deletionPolicy.topics is Retain: topics {} and consumer group {} stay on {}",
                owned.join(", "),
                recorded.consumer_group.as_deref().unwrap_or("(none)"),
                am.spec.kafka.bootstrap_servers
            ),
        )
        .await;
        return Ok(());
    }
    let c = connections.as_ref().map_err(Problem::clone)?;
    let report = topics::delete(&am.spec.kafka, c, &recorded).await?;
    let mut note = if report.deleted.is_empty() {
        "deleted nothing in Kafka".to_string()
    } else {
        format!("deleted {}", report.deleted.join(", "))
    };
    let mut left: Vec<String> = not_ours
        .iter()
        .map(|t| format!("topic {t} (not created by this resource)"))
        .collect();
    left.extend(report.left);
    if !left.is_empty() {
        note.push_str(&format!("; left alone: {}", left.join(", ")));
    }
    let kind = if report_left_warns(&left, &not_ours) {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.event(am, kind, "TopicsDeleted", note).await;
    Ok(())
}

/// Whether something recorded as ours was left (a recreated topic, another cluster): worth a
/// Warning; a topic that was never ours is the normal case.
fn report_left_warns(left: &[String], not_ours: &[&str]) -> bool {
    left.len() > not_ours.len()
}
