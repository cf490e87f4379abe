//! Leader election with a coordination.k8s.io Lease: one replica reconciles, the others wait.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn expired(lease: &Lease) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return true;
    };
    let deadline = renewed.0 + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds));
    deadline < k8s_openapi::jiff::Timestamp::now()
}

/// Blocks until this process holds the lease, then keeps renewing it in the background; if a
/// renewal fails the process exits, so two leaders never reconcile at once.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    loop {
        match try_take(&leases, name, identity).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: cannot read or take the lease"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
    tracing::info!(
        lease = name,
        identity,
        "leader election: this replica leads"
    );
    let (name, identity) = (name.to_string(), identity.to_string());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match try_take(&leases, &name, &identity).await {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    tracing::error!(
                        "leader election: lost the lease; exiting so another replica takes over"
                    );
                    std::process::exit(1);
                }
            }
        }
    });
    Ok(())
}

/// Takes or renews the lease when free, expired or already ours.
async fn try_take(leases: &Api<Lease>, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let current = leases.get_opt(name).await?;
    let desired = |resource_version: Option<String>,
                   acquired: Option<MicroTime>|
     -> Result<Lease, kube::Error> {
        serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "resourceVersion": resource_version},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": LEASE_SECONDS,
                "acquireTime": acquired.unwrap_or_else(now),
                "renewTime": now(),
            }
        }))
        .map_err(kube::Error::SerdeError)
    };
    match current {
        None => match leases
            .create(&PostParams::default(), &desired(None, None)?)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        },
        Some(lease) => {
            let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            let ours = holder.as_deref() == Some(identity);
            if !ours && !expired(&lease) {
                return Ok(false);
            }
            let acquired = if ours {
                lease.spec.as_ref().and_then(|s| s.acquire_time.clone())
            } else {
                None
            };
            // replace() carries the resourceVersion: a concurrent writer makes this fail (409).
            match leases
                .replace(
                    name,
                    &PostParams::default(),
                    &desired(lease.metadata.resource_version.clone(), acquired)?,
                )
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}
