//! The reconcile loop: provision → build → apply → observe → status, or teardown when the
//! resource is being deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_manager_crds::{AuditManager, TEARDOWN_PREVIEW};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use crate::build::{self, Kind, Names};
use crate::context::{Ctx, Error};
use crate::exposure::Surroundings;
use crate::status::{self, Observed};
use crate::{apply, credentials, exposure, observe, provision, teardown};

/// How often lag and health are refreshed when nothing changes.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Runs the controller until the process is stopped. It watches the resources (in
/// `namespace` only, or in every namespace); every kind of child that is built into Kubernetes
/// (a CRD's kind may not exist) and the role Secrets, only those carrying the operator's label;
/// and the Secrets marked as credentials, each mapped to the resources that name it. No other
/// object is listed or cached.
pub async fn run(ctx: Arc<Ctx>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let api = |resource: &kube::api::ApiResource| match &namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, resource),
        None => Api::<DynamicObject>::all_with(client.clone(), resource),
    };
    let typed = |ns: &Option<String>| match ns {
        Some(ns) => (
            Api::<AuditManager>::namespaced(client.clone(), ns),
            Api::<Secret>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (resources_api, secrets) = typed(&namespace);
    let ours = watcher::Config::default().labels(&build::managed_selector());
    let controller = Controller::new(resources_api, watcher::Config::default());
    let resources = controller.store();
    let mut controller = controller.owns(secrets.clone(), ours.clone());
    for kind in Kind::ALL.into_iter().filter(|k| k.crd().is_none()) {
        let resource = kind.resource();
        controller = controller.owns_with(api(&resource), resource, ours.clone());
    }
    let marked = watcher::Config::default().labels(&credentials::credentials_selector());
    controller
        .watches(secrets, marked, move |secret| {
            let namespace = secret.namespace();
            let name = secret.name_any();
            resources
                .state()
                .into_iter()
                .filter(|am| am.namespace() == namespace && credentials::references(am, &name))
                .map(|am| ObjectRef::from_obj(&*am))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile stream");
            }
        })
        .await;
}

fn error_policy(am: Arc<AuditManager>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.errors.inc();
    tracing::warn!(name = %am.name_any(), namespace = am.namespace().unwrap_or_default(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// One reconcile of one resource.
pub async fn reconcile(am: Arc<AuditManager>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    // Every log line of this reconcile carries the resource's name and namespace.
    let span = tracing::info_span!("reconcile", name = %am.name_any(), namespace = am.namespace().unwrap_or_default());
    let result = reconcile_inner(&am, &ctx).instrument(span).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(am: &AuditManager, ctx: &Ctx) -> Result<Action, Error> {
    if am.meta().deletion_timestamp.is_some() {
        return teardown::finalize(ctx, am).await;
    }
    if !apply::set_finalizer(&ctx.client, am, true).await? {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if am.spec.paused {
        tracing::info!("paused: nothing reconciled");
        return Ok(Action::await_change());
    }
    let names = Names::of(&am.name_any());
    let provisioned = provision::run(ctx, am, &names).await?;
    // The children are applied even while the database is not ready, so pods can start
    // serving ingest: readiness does not depend on PostgreSQL.
    // While a conflict stands, no workload runs against someone else's database or topics.
    let held = status::held(&provisioned.database, &provisioned.topics);
    let around = Surroundings {
        operator_namespace: ctx.namespace.clone(),
        cluster_issuer: provisioned.cluster_issuer.clone(),
    };
    let children = build::children(
        am,
        &names,
        &provisioned.secret_hash,
        held.is_some(),
        &around,
    )?;
    let missing_crds = apply::children(ctx, am, &children).await?;
    let workload = match held {
        Some(p) => Err(p),
        None => observe::workload(ctx, am, &names).await,
    };
    let observed = Observed {
        database: provisioned.database,
        topics: provisioned.topics,
        workload,
        health: observe::health(ctx, am).await,
        lag: match &provisioned.connections {
            Ok(c) => observe::lag(am, c).await,
            Err(p) => Err(p.clone()),
        },
        partitions: provisioned.partitions,
        missing_crds,
        endpoint: exposure::endpoint(am, &names),
        owned_topics: provisioned.owned_topics,
        teardown_preview: am
            .annotations()
            .get(TEARDOWN_PREVIEW)
            .is_some_and(|v| v == "true")
            .then(|| teardown::preview(am)),
    };
    let previous = am.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let next = status::status(am, &previous, observed, &now);
    let conditions: Vec<(&str, &str, bool)> = next
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.reason.as_str(), c.status == "True"))
        .collect();
    ctx.metrics.set_conditions(
        &am.namespace().unwrap_or_default(),
        &am.name_any(),
        &conditions,
    );
    // A status write triggers a reconcile (the resource's watch sees it): a lag that moves is
    // written at most once per REFRESH, or every write would start the next reconcile.
    if status::worth_writing(&previous, &next, &now, REFRESH) {
        apply::patch_status(&ctx.client, am, serde_json::to_value(&next)?).await?;
    }
    Ok(Action::requeue(REFRESH))
}
