//! Writing to the API server: server-side apply of the children, their removal, and the
//! resource's own finalizer.

use audit_manager_crds::{AuditManager, FINALIZER};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::build::{self, Child};
use crate::context::{Ctx, Error, FIELD_MANAGER};

/// Whether a CRD is installed.
pub async fn crd_installed(client: &Client, name: &str) -> Result<bool, kube::Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    Ok(crds.get_metadata_opt(name).await?.is_some())
}

/// The API of one kind of child in the resource's namespace.
pub fn api_of(client: &Client, am: &AuditManager, kind: build::Kind) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        &am.namespace().unwrap_or_default(),
        &kind.resource(),
    )
}

/// Applies every child that should exist and removes the ones that should not. A kind whose
/// CRD is missing is skipped. Returns the CRDs missing for children that should exist (Istio's).
pub async fn children(
    ctx: &Ctx,
    am: &AuditManager,
    children: &[Child],
) -> Result<Vec<String>, Error> {
    let mut missing = Vec::new();
    for child in children {
        if let Some(crd) = child.kind.crd()
            && !crd_installed(&ctx.client, crd).await?
        {
            if child.desired.is_some() && !child.kind.where_installed() {
                missing.push(crd.to_string());
            }
            continue;
        }
        let api = api_of(&ctx.client, am, child.kind);
        match &child.desired {
            Some(desired) => apply(ctx, &api, child, desired).await?,
            None => {
                if delete_owned(&api, &child.name, am).await?.is_some() {
                    ctx.metrics.applies.inc();
                }
            }
        }
    }
    Ok(missing)
}

/// Server-side apply, skipped when the child is exactly as last applied (same desired hash,
/// same generation or resourceVersion): an unchanged resource costs reads, never writes. A
/// child edited or deleted by hand is restored.
async fn apply(
    ctx: &Ctx,
    api: &Api<DynamicObject>,
    child: &Child,
    desired: &DynamicObject,
) -> Result<(), Error> {
    let key = format!(
        "{:?}/{}/{}",
        child.kind,
        desired.metadata.namespace.clone().unwrap_or_default(),
        child.name
    );
    let want = build::hash(serde_json::to_string(desired)?.as_bytes());
    let cached = ctx
        .applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some((hash, version)) = cached
        && hash == want
        && let Some(current) = api.get_metadata_opt(&child.name).await?
        && version_of(&current.metadata) == version
    {
        return Ok(());
    }
    let applied = api
        .patch(
            &child.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    ctx.metrics.applies.inc();
    ctx.applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, (want, version_of(&applied.metadata)));
    Ok(())
}

/// `generation` where the kind has one (status updates do not move it), else `resourceVersion`.
fn version_of(meta: &ObjectMeta) -> String {
    match meta.generation {
        Some(g) => format!("g{g}"),
        None => format!("r{}", meta.resource_version.clone().unwrap_or_default()),
    }
}

/// Deletes an object by name when this resource owns it. None when there is nothing of ours
/// under that name; else whether it still exists (deletion can take a while).
pub async fn delete_owned<K>(
    api: &Api<K>,
    name: &str,
    am: &AuditManager,
) -> Result<Option<bool>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(current) = api.get_metadata_opt(name).await? else {
        return Ok(None);
    };
    let uid = am.uid().unwrap_or_default();
    let ours = current
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid));
    if !ours {
        return Ok(None);
    }
    if current.metadata.deletion_timestamp.is_none() {
        api.delete(name, &DeleteParams::background()).await?;
    }
    Ok(Some(api.get_metadata_opt(name).await?.is_some()))
}

/// Takes this resource's owner reference off the object `name`, so that the garbage
/// collector keeps it after the resource is gone. Says whether it was ours.
pub async fn disown<K>(api: &Api<K>, name: &str, am: &AuditManager) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(current) = api.get_metadata_opt(name).await? else {
        return Ok(false);
    };
    let uid = am.uid().unwrap_or_default();
    let refs = current.metadata.owner_references.unwrap_or_default();
    if !refs.iter().any(|r| r.uid == uid) {
        return Ok(false);
    }
    let kept: Vec<_> = refs.into_iter().filter(|r| r.uid != uid).collect();
    let patch = serde_json::json!({"metadata": {
        "ownerReferences": kept,
        "resourceVersion": current.metadata.resource_version,
        "annotations": {"audit.openg2p.org/retained-from": format!("{}/{}", am.name_any(), uid)},
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(true)
}

/// Merge-patches the resource's status with `status` (a JSON object of status fields).
pub async fn patch_status(
    client: &Client,
    am: &AuditManager,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let api: Api<AuditManager> =
        Api::namespaced(client.clone(), &am.namespace().unwrap_or_default());
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(&am.name_any(), &PatchParams::default(), &patch)
        .await
        .map(drop)
}

/// Adds or removes this operator's finalizer on the resource. Ok(false) when the resource
/// changed meanwhile (look again) or is gone.
pub async fn set_finalizer(
    client: &Client,
    am: &AuditManager,
    present: bool,
) -> Result<bool, Error> {
    let has = am.finalizers().iter().any(|f| f == FINALIZER);
    if has == present {
        return Ok(true);
    }
    let mut finalizers: Vec<String> = am
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    let api: Api<AuditManager> =
        Api::namespaced(client.clone(), &am.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": am.resource_version()}});
    match api
        .patch(
            &am.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        // Gone already, or changed meanwhile: look again.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
