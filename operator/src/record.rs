//! The ownership record: what a resource created in Kafka, written where only the operator
//! writes. The resource's status can be patched by anyone allowed to patch
//! `auditmanagers/status`; teardown must not trust it. The record is a ConfigMap in the
//! operator's own namespace, named after the resource's UID, holding the Kafka cluster's id,
//! each created topic's id and the consumer group. (The database and roles carry their own
//! marker in PostgreSQL, which only the admin can write.)

use std::collections::BTreeMap;

use audit_manager_crds::AuditManager;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::FIELD_MANAGER;

/// The data key of the record.
const KEY: &str = "ownership.json";

/// What this resource created in Kafka.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `namespace/name` of the resource, for whoever reads the ConfigMap.
    pub resource: String,
    /// The cluster the topics were created on; set with the first topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_cluster_id: Option<String>,
    /// Each created topic's name and id.
    #[serde(default)]
    pub topics: BTreeMap<String, String>,
    /// The consumer group, claimed before any consumer of this resource joined it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
}

impl Record {
    /// An empty record for `am`.
    pub fn new(am: &AuditManager) -> Record {
        Record {
            resource: format!("{}/{}", am.namespace().unwrap_or_default(), am.name_any()),
            ..Record::default()
        }
    }
}

/// The record's ConfigMap name.
pub fn name_of(am: &AuditManager) -> String {
    format!("auditmanager-{}", am.uid().unwrap_or_default())
}

/// Reads the resource's record; an empty one when there is none yet.
pub async fn load(client: &Client, namespace: &str, am: &AuditManager) -> Result<Record, String> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(map) = maps.get_opt(&name_of(am)).await.map_err(|e| {
        format!(
            "reading the ownership record {namespace}/{}: {e}",
            name_of(am)
        )
    })?
    else {
        return Ok(Record::new(am));
    };
    let text = map
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .cloned()
        .unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "the ownership record {namespace}/{} is not readable ({e}): fix or delete it",
            name_of(am)
        )
    })
}

/// Writes the resource's record (server-side apply).
pub async fn save(
    client: &Client,
    namespace: &str,
    am: &AuditManager,
    record: &Record,
) -> Result<(), String> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let text = serde_json::to_string_pretty(record).map_err(|e| e.to_string())?;
    let map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name_of(am), "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "audit-manager",
                                "audit.openg2p.org/ownership-record": "true"}},
        "data": {KEY: text},
    });
    maps.patch(
        &name_of(am),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&map),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        format!(
            "writing the ownership record {namespace}/{}: {e}",
            name_of(am)
        )
    })
}

/// Deletes the resource's record (end of teardown).
pub async fn forget(
    client: &Client,
    namespace: &str,
    am: &AuditManager,
) -> Result<(), kube::Error> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match maps.delete(&name_of(am), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
