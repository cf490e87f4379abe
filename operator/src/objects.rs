//! What every child object shares: the names of one resource's objects, its labels and
//! selectors, the metadata every child carries, and the check that an object built from JSON
//! kept every key. Used by the builders ([`crate::build`], [`crate::exposure`]).

use std::collections::BTreeMap;

use audit_manager_crds::AuditManager;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use serde_json::{Value, json};

use crate::context::Error;

/// Where the runtime's configuration file is mounted.
pub const CONFIG_DIR: &str = "/etc/audit-manager";

/// Names of everything created for one resource.
#[derive(Debug, Clone)]
pub struct Names {
    pub app: String,
    pub config: String,
    pub maintenance: String,
    pub owner_secret: String,
    pub writer_secret: String,
    pub reader_secret: String,
}

impl Names {
    /// The role Secrets, in [`audit_manager::db::roles::KINDS`] order.
    pub fn role_secrets(&self) -> [&String; 3] {
        [&self.owner_secret, &self.writer_secret, &self.reader_secret]
    }

    pub fn of(name: &str) -> Names {
        Names {
            app: format!("{name}-audit-manager"),
            config: format!("{name}-audit-manager-config"),
            // At most 52 characters (a CronJob's limit): the CRD keeps names to 40.
            maintenance: format!("{name}-maintenance"),
            owner_secret: format!("{name}-db-owner"),
            writer_secret: format!("{name}-db-writer"),
            reader_secret: format!("{name}-db-reader"),
        }
    }
}

pub fn name_of(am: &AuditManager) -> String {
    am.meta().name.clone().unwrap_or_default()
}

pub fn namespace_of(am: &AuditManager) -> String {
    am.meta().namespace.clone().unwrap_or_default()
}

/// The controller owner reference every child carries.
pub fn owner(am: &AuditManager) -> Option<OwnerReference> {
    am.controller_owner_ref(&())
}

/// The label every child carries, and no pod selector uses.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "audit-manager-operator");

/// [`MANAGED_BY`] as a selector: the operator's watches see only objects that carry it.
pub fn managed_selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// Labels of every child; the selector uses the first two.
pub fn labels(am: &AuditManager) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "audit-manager".into()),
        ("app.kubernetes.io/instance".into(), name_of(am)),
        (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
    ])
}

/// The labels that select this resource's pods and Jobs (the first two of [`labels`]).
pub fn selector(am: &AuditManager) -> BTreeMap<String, String> {
    labels(am)
        .into_iter()
        .filter(|(k, _)| k != MANAGED_BY.0)
        .collect()
}

/// [`selector`] as a label selector string, for list calls.
pub fn selector_string(am: &AuditManager) -> String {
    as_selector(&selector(am))
}

/// The labels of the maintenance CronJob's Jobs and pods: a name of their own, so that no
/// selector of the runtime (Service, PodDisruptionBudget, HPA, health probe) picks them.
pub fn maintenance_labels(am: &AuditManager) -> BTreeMap<String, String> {
    let mut l = labels(am);
    l.insert(
        "app.kubernetes.io/name".into(),
        "audit-manager-maintenance".into(),
    );
    l.insert("app.kubernetes.io/component".into(), "maintenance".into());
    l
}

/// [`maintenance_labels`] as a label selector string (the Jobs, at teardown).
pub fn maintenance_selector_string(am: &AuditManager) -> String {
    as_selector(&maintenance_labels(am))
}

fn as_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn metadata(am: &AuditManager, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace_of(am),
        "labels": labels(am),
        "ownerReferences": owner(am).into_iter().collect::<Vec<_>>(),
    })
}

/// Builds a typed object from JSON built in this module. k8s-openapi drops keys it does not
/// know without a word, so the object is written back and every key sent must still be there:
/// a misspelt key is an error, not a field that silently vanishes.
pub fn from<T: serde::de::DeserializeOwned + serde::Serialize>(value: Value) -> Result<T, Error> {
    let kind = value["kind"].as_str().unwrap_or("object").to_string();
    let fail = |message: String| Error::Build {
        kind: kind.clone(),
        message,
    };
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| fail(e.to_string()))?;
    let back = serde_json::to_value(&typed).map_err(|e| fail(e.to_string()))?;
    let lost = lost_keys(&value, &back, "");
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(fail(format!(
            "keys not part of the kind: {}",
            lost.join(", ")
        )))
    }
}

/// The paths of keys in `sent` that `back` lacks (a null stands for an absent key).
fn lost_keys(sent: &Value, back: &Value, at: &str) -> Vec<String> {
    match (sent, back) {
        (Value::Object(s), Value::Object(b)) => s
            .iter()
            .filter(|(_, v)| !v.is_null())
            .flat_map(|(k, v)| {
                let path = format!("{at}.{k}");
                match b.get(k) {
                    Some(w) => lost_keys(v, w, &path),
                    None => vec![path],
                }
            })
            .collect(),
        (Value::Array(s), Value::Array(b)) => s
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (v, w))| lost_keys(v, w, &format!("{at}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}
