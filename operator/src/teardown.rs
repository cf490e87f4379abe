//! Deletion through the finalizer: workload and children, then the database and roles, then
//! the topics, then the generated Secrets; only what this resource created, each step
//! idempotent, reported as an Event and in a `Terminating` condition while it waits.

use audit_manager::db::ident;
use audit_manager_crds::{AuditManager, DeletionPolicy, SKIP_EXTERNAL_TEARDOWN};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::builders::{self, Names, role};
use crate::conditions::Problem;
use crate::controller::Ctx;
use crate::database;

/// Where teardown stands.
pub enum Progress {
    Done,
    /// Waiting for something; the Problem names it.
    Waiting(Problem),
}

fn skip_external(am: &AuditManager) -> bool {
    am.annotations()
        .get(SKIP_EXTERNAL_TEARDOWN)
        .is_some_and(|v| v == "true")
}

/// What deletion would remove and leave, for `status.teardownPreview`.
pub fn preview(am: &AuditManager) -> Vec<String> {
    let name = am.name_any();
    let names = Names::of(&name);
    let database = am.spec.database_name(&name);
    let mut out = vec![format!(
        "Deployment, Service, HPA, PodDisruptionBudget, ConfigMap {}-config, CronJob {} and its Jobs, VirtualService (if any): {}",
        names.app, names.maintenance, names.app
    )];
    if skip_external(am) {
        out.push(format!(
            "database, roles and topics: left alone ({SKIP_EXTERNAL_TEARDOWN})"
        ));
    } else {
        match am.spec.deletion_policy.database {
            DeletionPolicy::Delete => out.push(format!(
                "database {database} and roles {}, {}, {} on {}:{} (only if created by this resource)",
                role(&database, "owner"), role(&database, "writer"), role(&database, "reader"),
                am.spec.database.host, am.spec.database.port
            )),
            DeletionPolicy::Retain => out.push(format!("database {database} and its roles: retained (deletionPolicy.database Retain)")),
        }
        let owned = am
            .status
            .as_ref()
            .map(|s| s.owned_topics.clone())
            .unwrap_or_default();
        match am.spec.deletion_policy.topics {
            DeletionPolicy::Delete if owned.is_empty() => {
                out.push("topics: none created by this resource".into())
            }
            DeletionPolicy::Delete => out.push(format!(
                "topics {} on {}",
                owned.join(", "),
                am.spec.kafka.bootstrap_servers
            )),
            DeletionPolicy::Retain => out.push(format!(
                "topics {}: retained (deletionPolicy.topics Retain)",
                owned.join(", ")
            )),
        }
    }
    out.push(format!(
        "Secrets {}, {}, {}",
        names.owner_secret, names.writer_secret, names.reader_secret
    ));
    out
}

/// Runs the next teardown steps; `Done` when the finalizer may go.
pub async fn run(am: &AuditManager, ctx: &Ctx) -> Result<Progress, kube::Error> {
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
        // 2. The database and roles.
        if let Err(p) = drop_database(am, ctx).await {
            return Ok(Progress::Waiting(p));
        }
        // 3. The topics.
        if let Err(p) = delete_topics(am, ctx).await {
            return Ok(Progress::Waiting(p));
        }
    }
    // 4. The generated Secrets, and the hold on the admin Secret.
    database::release_admin_secret(&ctx.client, am).await?;
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &am.namespace().unwrap_or_default());
    for secret in [
        &names.owner_secret,
        &names.writer_secret,
        &names.reader_secret,
    ] {
        delete_owned(&secrets, secret, am).await?;
    }
    ctx.event(
        am,
        EventType::Normal,
        "TeardownComplete",
        "everything this resource created is gone; removing the finalizer".into(),
    )
    .await;
    Ok(Progress::Done)
}

/// Deletes a child by name when this resource owns it; true while it still exists.
async fn delete_owned<K>(api: &Api<K>, name: &str, am: &AuditManager) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(current) = api.get_metadata_opt(name).await? else {
        return Ok(false);
    };
    let uid = am.uid().unwrap_or_default();
    let ours = current
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid));
    if !ours {
        return Ok(false);
    }
    if current.metadata.deletion_timestamp.is_none() {
        api.delete(name, &DeleteParams::background()).await?;
    }
    Ok(api.get_metadata_opt(name).await?.is_some())
}

async fn delete_children(
    am: &AuditManager,
    ctx: &Ctx,
    names: &Names,
) -> Result<Vec<String>, kube::Error> {
    let ns = am.namespace().unwrap_or_default();
    let c = &ctx.client;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    // Scale to zero first so the pods drain their queues while the rest goes.
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
    let mut check = |still: bool, what: String| {
        if still {
            remaining.push(what);
        }
    };
    check(
        delete_owned(
            &Api::<HorizontalPodAutoscaler>::namespaced(c.clone(), &ns),
            &names.app,
            am,
        )
        .await?,
        format!("HorizontalPodAutoscaler {}", names.app),
    );
    check(
        delete_owned(&deployments, &names.app, am).await?,
        format!("Deployment {}", names.app),
    );
    check(
        delete_owned(
            &Api::<CronJob>::namespaced(c.clone(), &ns),
            &names.maintenance,
            am,
        )
        .await?,
        format!("CronJob {}", names.maintenance),
    );
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by=audit-manager-operator",
        am.name_any()
    );
    for job in jobs
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let job_name = job.name_any();
        if job.metadata.deletion_timestamp.is_none() {
            jobs.delete(&job_name, &DeleteParams::background()).await?;
        }
        check(
            jobs.get_metadata_opt(&job_name).await?.is_some(),
            format!("Job {job_name}"),
        );
    }
    check(
        delete_owned(
            &Api::<PodDisruptionBudget>::namespaced(c.clone(), &ns),
            &names.app,
            am,
        )
        .await?,
        format!("PodDisruptionBudget {}", names.app),
    );
    check(
        delete_owned(&Api::<Service>::namespaced(c.clone(), &ns), &names.app, am).await?,
        format!("Service {}", names.app),
    );
    check(
        delete_owned(
            &Api::<ConfigMap>::namespaced(c.clone(), &ns),
            &names.config,
            am,
        )
        .await?,
        format!("ConfigMap {}", names.config),
    );
    let resource = builders::virtual_service_resource();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(c.clone());
    if crds
        .get_opt("virtualservices.networking.istio.io")
        .await?
        .is_some()
    {
        let services: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns, &resource);
        check(
            delete_owned(&services, &names.app, am).await?,
            format!("VirtualService {}", names.app),
        );
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

async fn drop_database(am: &AuditManager, ctx: &Ctx) -> Result<(), Problem> {
    let name = am.name_any();
    let database = am.spec.database_name(&name);
    let roles = ["owner", "writer", "reader"].map(|k| role(&database, k));
    if am.spec.deletion_policy.database == DeletionPolicy::Retain {
        ctx.event(
            am,
            EventType::Normal,
            "DatabaseRetained",
            format!(
                "deletionPolicy.database is Retain: database {database} and roles {} stay on {}:{}",
                roles.join(", "),
                am.spec.database.host,
                am.spec.database.port
            ),
        )
        .await;
        return Ok(());
    }
    let admin = database::admin_login(&ctx.client, am).await?;
    let am_owned = am.clone();
    let handle = tokio::runtime::Handle::current();
    // sqlx futures over a pool are run on a blocking thread (see database::ensure).
    let report = tokio::task::spawn_blocking(move || {
        handle.block_on(drop_marked(
            &am_owned,
            (&admin.0, &admin.1),
            &database,
            &roles,
        ))
    })
    .await
    .map_err(|e| Problem::new("InternalError", e.to_string()))??;
    let kind = if report.left.is_empty() {
        EventType::Normal
    } else {
        EventType::Warning
    };
    ctx.event(am, kind, "DatabaseDropped", report.summary())
        .await;
    Ok(())
}

#[derive(Default)]
struct Dropped {
    dropped: Vec<String>,
    left: Vec<String>,
}

impl Dropped {
    fn summary(&self) -> String {
        let mut s = if self.dropped.is_empty() {
            "dropped nothing".to_string()
        } else {
            format!("dropped {}", self.dropped.join(", "))
        };
        if !self.left.is_empty() {
            s.push_str(&format!(
                "; left alone (not created by this resource): {}",
                self.left.join(", ")
            ));
        }
        s
    }
}

async fn drop_marked(
    am: &AuditManager,
    admin: (&str, &str),
    database: &str,
    roles: &[String; 3],
) -> Result<Dropped, Problem> {
    let mark = database::marker(am);
    let d = &am.spec.database;
    let pool = database::admin_pool(am, admin).await.map_err(|e| {
        Problem::new(
            "DatabaseUnreachable",
            format!(
                "cannot connect to PostgreSQL at {}:{} to drop the database: {e}",
                d.host, d.port
            ),
        )
    })?;
    let fail = |what: String, e: sqlx::Error| {
        Problem::new("DatabaseTeardownFailed", format!("{what}: {e}"))
    };
    let mut report = Dropped::default();
    let comment: Option<Option<String>> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(database.to_string())
    .fetch_optional(&pool)
    .await
    .map_err(|e| fail("checking the database".into(), e))?;
    match comment {
        None => {}
        Some(c) if c.as_deref() == Some(mark.as_str()) => {
            // FORCE refuses new connections and terminates the remaining sessions first.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(database)
            )))
            .execute(&pool)
            .await
            .map_err(|e| fail(format!("DROP DATABASE {database}"), e))?;
            report.dropped.push(format!("database {database}"));
        }
        Some(_) => report.left.push(format!("database {database}")),
    }
    let admin_role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .map_err(|e| fail("reading the admin role".into(), e))?;
    for r in roles {
        let comment: Option<Option<String>> = sqlx::query_scalar(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
        )
        .bind(r.clone())
        .fetch_optional(&pool)
        .await
        .map_err(|e| fail("checking roles".into(), e))?;
        match comment {
            None => {}
            Some(c) if c.as_deref() == Some(mark.as_str()) => {
                let sql = format!(
                    "REASSIGN OWNED BY {role} TO {admin}; DROP OWNED BY {role}; DROP ROLE {role}",
                    role = ident(r),
                    admin = ident(&admin_role)
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&pool)
                    .await
                    .map_err(|e| fail(format!("dropping role {r}"), e))?;
                report.dropped.push(format!("role {r}"));
            }
            Some(_) => report.left.push(format!("role {r}")),
        }
    }
    pool.close().await;
    Ok(report)
}

async fn delete_topics(am: &AuditManager, ctx: &Ctx) -> Result<(), Problem> {
    let owned = am
        .status
        .as_ref()
        .map(|s| s.owned_topics.clone())
        .unwrap_or_default();
    let wanted = [
        &am.spec.kafka.events_topic.name,
        &am.spec.kafka.dlq_topic.name,
    ];
    let not_ours: Vec<&String> = wanted
        .iter()
        .copied()
        .filter(|t| !owned.contains(t))
        .collect();
    if am.spec.deletion_policy.topics == DeletionPolicy::Retain {
        ctx.event(
            am,
            EventType::Normal,
            "TopicsRetained",
            format!(
                "deletionPolicy.topics is Retain: topics {} stay on {}",
                owned.join(", "),
                am.spec.kafka.bootstrap_servers
            ),
        )
        .await;
        return Ok(());
    }
    let deleted = crate::topics::delete(&am.spec.kafka, &owned).await?;
    let mut note = if deleted.is_empty() {
        "deleted no topic".to_string()
    } else {
        format!("deleted topics {}", deleted.join(", "))
    };
    if !not_ours.is_empty() {
        note.push_str(&format!(
            "; left alone (not created by this resource): {}",
            not_ours
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    ctx.event(am, EventType::Normal, "TopicsDeleted", note)
        .await;
    Ok(())
}
