//! Leader election through `kube-lease-manager`: one replica reconciles, the others wait on
//! the Lease. The leader renews it by server-side apply before it expires, stops reconciling
//! as soon as it is no longer the holder, and releases it when it shuts down.

use std::time::Duration;

use kube::{Client, Config};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a Lease lasts without renewal: a dead leader's successor waits at most this long.
const LEASE_SECONDS: u64 = 15;
/// The leader renews this long before the Lease would expire.
const GRACE_SECONDS: u64 = 5;
/// Every call of the election gives up after this, so a hung API server turns into a failed
/// renewal (and a step down) rather than a leader that believes it still leads.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// Why leader election could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the Kubernetes client configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("building the Kubernetes client for the Lease: {0}")]
    Client(#[from] kube::Error),
    #[error("Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        source: LeaseManagerError,
    },
    #[error("the leader election task ended before this replica led")]
    Ended,
}

/// This replica leads until [`Leadership::lost`] resolves.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

/// Waits until this replica holds the Lease `namespace/name` as `identity`.
pub async fn acquire(namespace: &str, name: &str, identity: &str) -> Result<Leadership, Error> {
    let mut config = Config::infer().await?;
    config.connect_timeout = Some(CALL_TIMEOUT);
    config.read_timeout = Some(CALL_TIMEOUT);
    config.write_timeout = Some(CALL_TIMEOUT);
    let client = Client::try_from(config)?;
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .build()
        .await
        .map_err(|source| Error::Lease {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(
        lease = name,
        identity,
        "leader election: waiting for the lease"
    );
    while !*leading.borrow_and_update() {
        leading.changed().await.map_err(|_| Error::Ended)?;
    }
    tracing::info!(
        lease = name,
        identity,
        "leader election: this replica leads"
    );
    Ok(Leadership { leading, task })
}

impl Leadership {
    /// Resolves once this replica is no longer the holder (another took the Lease after a
    /// renewal failed, or the election stopped).
    pub async fn lost(&mut self) {
        while *self.leading.borrow_and_update() {
            if self.leading.changed().await.is_err() {
                return;
            }
        }
    }

    /// Gives the Lease up (on shutdown), so no replica acts on a leader that is gone.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader election: lease released"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "leader election: releasing the lease failed; it expires on its own")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election: the election task failed"),
            Err(_) => tracing::warn!(
                "leader election: releasing the lease timed out; it expires on its own"
            ),
        }
    }
}
