//! What every reconcile shares: the client, the Event recorder, metrics and the caches of what
//! was applied and provisioned; and the one error type of a reconcile.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use audit_manager_crds::AuditManager;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::metrics::Metrics;
use crate::status::Problem;

/// The one field manager of every server-side apply, and the Events' reporter.
pub const FIELD_MANAGER: &str = "audit-manager-operator";

/// Why a reconcile failed (after recording it in the status where possible).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
    /// A builder produced an object that does not read back as its kind: a bug in `build`.
    #[error("building {kind}: {message}")]
    Build { kind: String, message: String },
}

/// Shared by every reconcile.
pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Per child: the hash of what was last applied and the generation (or resourceVersion)
    /// it produced, so an unchanged child is not written again.
    pub(crate) applied: Mutex<HashMap<String, (String, String)>>,
    /// Per resource UID: the generation and inputs whose database step succeeded.
    pub(crate) provisioned: Mutex<HashMap<String, (i64, String)>>,
    /// The port the runtime pods serve on (the Deployment's container port).
    pub runtime_port: u16,
    /// The operator's own namespace, where the ownership records live (`record`).
    pub namespace: String,
}

/// The operator's namespace when none is given (that of `manifests/`).
pub const DEFAULT_NAMESPACE: &str = "audit-manager-system";

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
            runtime_port: audit_manager::config::DEFAULT_PORT,
            namespace: DEFAULT_NAMESPACE.into(),
        }
    }

    /// The same context with the operator's namespace set.
    pub fn in_namespace(mut self, namespace: String) -> Ctx {
        self.namespace = namespace;
        self
    }

    /// Records a Kubernetes Event on the resource; a failure to record is logged, never fatal.
    pub async fn event(&self, am: &AuditManager, kind: EventType, reason: &str, note: String) {
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

    /// Records a failed step as a Warning Event.
    pub async fn warn(&self, am: &AuditManager, problem: &Problem) {
        self.event(
            am,
            EventType::Warning,
            problem.reason,
            problem.message.clone(),
        )
        .await;
    }
}

/// Runs a step built from owned inputs on a blocking thread with its own executor. sqlx's
/// futures over `&PgPool` are `Send` only for specific lifetimes, which the controller's
/// spawned reconcile cannot prove; running them apart sidesteps that.
pub async fn on_own_thread<T, F, Fut>(step: F) -> Result<T, Problem>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Problem>>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(step()))
        .await
        .map_err(|e| Problem::new("InternalError", format!("a database step panicked: {e}")))?
}
