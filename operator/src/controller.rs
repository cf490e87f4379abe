//! The reconcile loop: database, topics, children, then a status that tells the truth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_manager_crds::{
    AuditManager, AuditManagerStatus, ConsumerLag, FINALIZER, TEARDOWN_PREVIEW,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::builders::{self, Inputs, Names};
use crate::conditions::{self, Problem};
use crate::metrics::Metrics;
use crate::teardown::{self, Progress};
use crate::{database, topics};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "audit-manager-operator";
/// How often lag and health are refreshed when nothing changes.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Why a reconcile failed (after recording it in the status where possible).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
}

/// Shared by every reconcile.
pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Per child: the hash of what was last applied and the generation (or resourceVersion)
    /// it produced, so an unchanged child is not written again.
    applied: Mutex<HashMap<String, (String, String)>>,
    /// Per resource UID: the generation whose database and topics steps succeeded.
    provisioned: Mutex<HashMap<String, (i64, String)>>,
    /// The port the runtime pods serve on (the Deployment's container port).
    pub runtime_port: u16,
}

impl Ctx {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: String) -> Ctx {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        Ctx {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applied: Mutex::default(),
            provisioned: Mutex::default(),
            runtime_port: builders::PORT as u16,
        }
    }

    pub(crate) async fn event(
        &self,
        am: &AuditManager,
        kind: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: kind,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &am.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot record an Event");
        }
    }
}

/// Runs the controller until the process is stopped.
pub async fn run(ctx: Arc<Ctx>) {
    let client = ctx.client.clone();
    let resources: Api<AuditManager> = Api::all(client.clone());
    let config = watcher::Config::default();
    Controller::new(resources, config.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), config.clone())
        .owns(Api::<Deployment>::all(client.clone()), config.clone())
        .owns(Api::<Service>::all(client.clone()), config.clone())
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            config.clone(),
        )
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            config.clone(),
        )
        .owns(Api::<CronJob>::all(client.clone()), config.clone())
        .owns(Api::<Secret>::all(client.clone()), config)
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
    let name = am.name_any();
    let namespace = am.namespace().unwrap_or_default();
    let api: Api<AuditManager> = Api::namespaced(ctx.client.clone(), &namespace);
    let has_finalizer = am.finalizers().iter().any(|f| f == FINALIZER);
    if am.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        return match teardown::run(am, ctx).await? {
            Progress::Done => {
                let rest: Vec<&String> =
                    am.finalizers().iter().filter(|f| *f != FINALIZER).collect();
                let patch = serde_json::json!({"metadata": {"finalizers": rest, "resourceVersion": am.resource_version()}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {}
                    // Gone already: nothing left to do.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    // Changed meanwhile: look again.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        return Ok(Action::requeue(Duration::from_secs(1)));
                    }
                    Err(e) => return Err(e.into()),
                }
                Ok(Action::await_change())
            }
            Progress::Waiting(p) => {
                tracing::info!(%name, %namespace, reason = p.reason, message = %p.message, "teardown waiting");
                let previous = am.status.clone().unwrap_or_default();
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                let mut conditions: Vec<_> = previous
                    .conditions
                    .iter()
                    .filter(|c| c.type_ != "Terminating")
                    .cloned()
                    .collect();
                let terminating = conditions::merge(
                    &previous.conditions,
                    vec![("Terminating", Err(p.clone()))],
                    am.meta().generation,
                    &now,
                );
                // Terminating is True while deletion waits: its reason says for what.
                conditions.extend(terminating.into_iter().map(|mut c| {
                    c.status = "True".into();
                    c
                }));
                if conditions != previous.conditions {
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"status": {"conditions": conditions}})),
                    )
                    .await?;
                    ctx.event(
                        am,
                        EventType::Warning,
                        p.reason,
                        format!("deletion waits: {}", p.message),
                    )
                    .await;
                }
                Ok(Action::requeue(Duration::from_secs(5)))
            }
        };
    }
    if !has_finalizer {
        let mut finalizers = am.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": am.resource_version()}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    if am.spec.paused {
        tracing::info!(%name, %namespace, "paused: nothing reconciled");
        return Ok(Action::await_change());
    }
    let names = Names::of(&name);
    let database_name = am.spec.database_name(&name);
    let generation = am.meta().generation.unwrap_or(0);
    let uid = am.uid().unwrap_or_default();

    // 1 + 2: database and topics, redone when the spec or a credential changed.
    let admin = database::admin_login(&ctx.client, am).await;
    if admin.is_ok() {
        database::hold_admin_secret(&ctx.client, am).await?;
    }
    let creds = database::credentials(&ctx.client, am, &names, &database_name).await;
    // The role credentials, hashed: in the pod template (a change rolls the pods) and, with
    // the admin login, in the fingerprint that decides whether provisioning is redone.
    let secret_hash = creds
        .as_ref()
        .map(|c| builders::hash(format!("{:?}", (&c.owner, &c.writer, &c.reader)).as_bytes()))
        .unwrap_or_default();
    let fingerprint = match &admin {
        Ok(a) if creds.is_ok() => builders::hash(format!("{a:?}{secret_hash}").as_bytes()),
        _ => String::new(),
    };
    let done = ctx
        .provisioned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&uid)
        .is_some_and(|(g, f)| *g == generation && *f == fingerprint && !f.is_empty());
    let previous = am.status.clone().unwrap_or_default();
    let mut owned_topics = previous.owned_topics.clone();
    let provisioned_before = ["DatabaseReady", "TopicsReady"].iter().all(|kind| {
        previous
            .conditions
            .iter()
            .any(|c| c.type_ == *kind && c.status == "True")
    });
    let (db_state, topic_state) = if done && provisioned_before {
        (
            Ok(format!(
                "database {database_name} and its roles are provisioned"
            )),
            Ok(format!(
                "topics {} and {} are provisioned",
                am.spec.kafka.events_topic.name, am.spec.kafka.dlq_topic.name
            )),
        )
    } else {
        let db_state = match (&admin, &creds) {
            (Err(p), _) | (_, Err(p)) => Err(p.clone()),
            (Ok(admin), Ok(roles)) => {
                match database::ensure(am, (&admin.0, &admin.1), roles, &database_name).await {
                    Ok(created) => {
                        if created {
                            ctx.event(am, EventType::Normal, "DatabaseCreated", format!("created database {database_name} with roles {}, {}, {}; migrated and partitioned", roles.owner.0, roles.writer.0, roles.reader.0)).await;
                        }
                        Ok(format!(
                            "database {database_name} and its roles are provisioned"
                        ))
                    }
                    Err(p) => Err(p),
                }
            }
        };
        let topic_state = match topics::ensure(&am.spec.kafka, &previous.owned_topics).await {
            Ok(report) => {
                if !report.created.is_empty() {
                    // Recorded at once: teardown deletes only topics listed here.
                    owned_topics.extend(report.created.iter().map(|(name, _)| name.clone()));
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"status": {"ownedTopics": owned_topics}})),
                    )
                    .await?;
                }
                for (topic, partitions) in &report.created {
                    ctx.event(
                        am,
                        EventType::Normal,
                        "TopicCreated",
                        format!("created topic {topic} ({partitions} partitions)"),
                    )
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
                if report.warnings.is_empty() {
                    Ok(format!(
                        "topics {} and {} are provisioned",
                        am.spec.kafka.events_topic.name, am.spec.kafka.dlq_topic.name
                    ))
                } else {
                    Ok(report.warnings.join("; "))
                }
            }
            Err(p) => Err(p),
        };
        if let Err(p) = &db_state {
            ctx.event(am, EventType::Warning, p.reason, p.message.clone())
                .await;
        }
        if let Err(p) = &topic_state {
            ctx.event(am, EventType::Warning, p.reason, p.message.clone())
                .await;
        }
        if db_state.is_ok() && topic_state.is_ok() {
            ctx.provisioned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid.clone(), (generation, fingerprint));
        }
        (db_state, topic_state)
    };

    // 3: the children (rendered even while the database is not ready, so pods can start
    // serving ingest: readiness does not depend on PostgreSQL).
    let istio = apply_children(am, ctx, &names, secret_hash).await?;

    // 4 + 5: observed state.
    let workload = workload(ctx, am, &names).await;
    let health = health(ctx, am).await;
    let kafka = am.spec.kafka.clone();
    let lag = tokio::task::spawn_blocking(move || topics::lag(&kafka))
        .await
        .unwrap_or_else(|e| Err(Problem::new("InternalError", e.to_string())));
    let lag_state = match &lag {
        Ok(l) => {
            let total: i64 = l.values().sum();
            if total <= am.spec.lag_threshold {
                Ok(format!(
                    "consumer lag {total} is within the threshold {}",
                    am.spec.lag_threshold
                ))
            } else {
                Err(Problem::new(
                    "ConsumerLagging",
                    format!(
                        "consumer lag {total} exceeds spec.lagThreshold {}: check Healthy and DatabaseReady, or add replicas (up to the {} partitions)",
                        am.spec.lag_threshold, am.spec.kafka.events_topic.partitions
                    ),
                ))
            }
        }
        Err(p) => Err(p.clone()),
    };
    let mut states: Vec<(&'static str, Result<String, Problem>)> = vec![
        ("DatabaseReady", db_state),
        ("TopicsReady", topic_state),
        (
            "WorkloadAvailable",
            workload.as_ref().map(|w| w.0.clone()).map_err(Clone::clone),
        ),
        ("Healthy", health),
        ("LagWithinThreshold", lag_state),
    ];
    let failing: Vec<String> = states
        .iter()
        .filter_map(|(k, s)| s.as_ref().err().map(|p| format!("{k}: {}", p.reason)))
        .collect();
    let endpoint = builders::endpoint(am, &names);
    let ready = if failing.is_empty() {
        Ok(format!("serving at {endpoint}"))
    } else {
        Err(Problem::new("NotReady", failing.join(", ")))
    };
    states.push(("Ready", ready));
    if let Err(p) = &istio {
        states.push(("IstioReady", Err(p.clone())));
    }

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = AuditManagerStatus {
        observed_generation: Some(generation),
        conditions: conditions::merge(&previous.conditions, states, Some(generation), &now),
        endpoint: Some(endpoint),
        consumer_lag: lag.ok().map(|l| ConsumerLag {
            total: l.values().sum(),
            partitions: l.iter().map(|(p, v)| (p.to_string(), *v)).collect(),
            measured_at: Some(now.clone()),
        }),
        replicas: workload.as_ref().ok().map(|w| w.1),
        ready_replicas: workload.as_ref().ok().map(|w| w.2),
        owned_topics,
        teardown_preview: am
            .annotations()
            .get(TEARDOWN_PREVIEW)
            .is_some_and(|v| v == "true")
            .then(|| teardown::preview(am)),
    };
    if status_changed(&previous, &status) {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await?;
    }
    Ok(Action::requeue(REFRESH))
}

/// Equal but for timestamps that move on every measurement.
fn status_changed(old: &AuditManagerStatus, new: &AuditManagerStatus) -> bool {
    let strip = |s: &AuditManagerStatus| {
        let mut s = s.clone();
        if let Some(l) = s.consumer_lag.as_mut() {
            l.measured_at = None;
        }
        s
    };
    strip(old) != strip(new)
}

/// Applies every child; returns the Istio outcome (an error when it is asked for but absent).
async fn apply_children(
    am: &AuditManager,
    ctx: &Ctx,
    names: &Names,
    secret_hash: String,
) -> Result<Result<(), Problem>, Error> {
    let namespace = am.namespace().unwrap_or_default();
    let client = &ctx.client;
    let config_map = builders::config_map(am, names);
    let config_hash = builders::hash(serde_json::to_string(&config_map.data)?.as_bytes());
    let inputs = Inputs {
        am,
        config_hash,
        secret_hash,
    };
    apply(
        ctx,
        Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &names.config,
        &config_map,
    )
    .await?;
    apply(
        ctx,
        Api::<Deployment>::namespaced(client.clone(), &namespace),
        &names.app,
        &builders::deployment(&inputs, names),
    )
    .await?;
    apply(
        ctx,
        Api::<Service>::namespaced(client.clone(), &namespace),
        &names.app,
        &builders::service(am, names),
    )
    .await?;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &namespace);
    if am.spec.autoscaling.enabled {
        apply(ctx, hpas, &names.app, &builders::hpa(am, names)).await?;
    } else {
        remove(ctx, hpas, &names.app).await?;
    }
    apply(
        ctx,
        Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace),
        &names.app,
        &builders::pdb(am, names),
    )
    .await?;
    apply(
        ctx,
        Api::<CronJob>::namespaced(client.clone(), &namespace),
        &names.maintenance,
        &builders::cronjob(&inputs, names),
    )
    .await?;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let istio_installed = crds
        .get_opt("virtualservices.networking.istio.io")
        .await?
        .is_some();
    if !istio_installed {
        return Ok(if am.spec.istio.enabled {
            Err(Problem::new("IstioNotInstalled", "spec.istio.enabled is true but the VirtualService CRD (networking.istio.io) is not installed; the Service is reachable in the cluster".into()))
        } else {
            Ok(())
        });
    }
    let resource = builders::virtual_service_resource();
    let services: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
    if am.spec.istio.enabled {
        let key = format!("VirtualService/{namespace}/{}", names.app);
        let desired = builders::virtual_service(am, names);
        apply_keyed(ctx, &services, &key, &names.app, &desired).await?;
    } else if services.get_opt(&names.app).await?.is_some() {
        services
            .delete(&names.app, &DeleteParams::default())
            .await?;
    }
    Ok(Ok(()))
}

async fn apply<K>(ctx: &Ctx, api: Api<K>, name: &str, desired: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let key = format!(
        "{}/{}/{name}",
        K::kind(&()),
        desired.meta().namespace.clone().unwrap_or_default()
    );
    apply_keyed(ctx, &api, &key, name, desired).await
}

/// Server-side apply, skipped when the child is exactly as last applied (same desired hash,
/// same generation or resourceVersion): an unchanged resource costs reads, never writes. A
/// child edited or deleted by hand is restored.
async fn apply_keyed<K>(
    ctx: &Ctx,
    api: &Api<K>,
    key: &str,
    name: &str,
    desired: &K,
) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let want = builders::hash(serde_json::to_string(desired)?.as_bytes());
    let cached = ctx
        .applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned();
    if let Some((hash, version)) = cached
        && hash == want
        && let Some(current) = api.get_metadata_opt(name).await?
        && version_of(&current.metadata) == version
    {
        return Ok(());
    }
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    ctx.metrics.applies.inc();
    ctx.applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.to_string(), (want, version_of(applied.meta())));
    Ok(())
}

/// `generation` where the kind has one (status updates do not move it), else `resourceVersion`.
fn version_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match meta.generation {
        Some(g) => format!("g{g}"),
        None => format!("r{}", meta.resource_version.clone().unwrap_or_default()),
    }
}

async fn remove<K>(ctx: &Ctx, api: Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if api.get_metadata_opt(name).await?.is_some() {
        api.delete(name, &DeleteParams::default()).await?;
        ctx.metrics.applies.inc();
    }
    Ok(())
}

/// (message, desired replicas, ready replicas) of the Deployment.
async fn workload(
    ctx: &Ctx,
    am: &AuditManager,
    names: &Names,
) -> Result<(String, i32, i32), Problem> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &am.namespace().unwrap_or_default());
    let d = api
        .get_opt(&names.app)
        .await
        .map_err(|e| Problem::new("KubernetesApiError", e.to_string()))?
        .ok_or_else(|| {
            Problem::new(
                "WorkloadMissing",
                format!("Deployment {} does not exist yet", names.app),
            )
        })?;
    let status = d.status.unwrap_or_default();
    let desired = d.spec.and_then(|s| s.replicas).unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    if available > 0 {
        Ok((
            format!("{available} of {desired} replicas available"),
            desired,
            ready,
        ))
    } else {
        Err(Problem::new(
            "WorkloadUnavailable",
            format!(
                "no replica of Deployment {} is available yet ({desired} desired): see `kubectl describe deployment {}`",
                names.app, names.app
            ),
        ))
    }
}

/// The runtime's own `/health` report from its ready pods.
async fn health(ctx: &Ctx, am: &AuditManager) -> Result<String, Problem> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &am.namespace().unwrap_or_default());
    let selector = format!(
        "app.kubernetes.io/name=audit-manager,app.kubernetes.io/instance={}",
        am.name_any()
    );
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Problem::new("KubernetesApiError", e.to_string()))?;
    let ready: Vec<String> = list
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .collect();
    if ready.is_empty() {
        return Err(Problem::new(
            "NoReadyPods",
            "no runtime pod is ready, so its /health report cannot be read".into(),
        ));
    }
    let mut problems = Vec::new();
    for ip in &ready {
        match crate::probe::get(
            &format!("{ip}:{}", ctx.runtime_port),
            "/v1/auditmanager/health",
        )
        .await
        {
            Ok((200, _)) => {}
            Ok((status, body)) => problems.push(format!("{ip}: {status} {}", summary(&body))),
            Err(e) => problems.push(format!("{ip}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(format!("{} ready pod(s) report healthy", ready.len()))
    } else {
        Err(Problem::new("Unhealthy", problems.join("; ")))
    }
}

/// The error messages of a runtime health envelope.
fn summary(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_string))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}
