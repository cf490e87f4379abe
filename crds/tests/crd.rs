//! The CRD on the real kube-apiserver: it applies its defaults and refuses bad specs with the
//! rules' messages. (That the committed YAML is what the types generate is a unit test of
//! `crdgen`.)

use std::time::Duration;

use audit_manager_crds::AuditManager;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};

async fn install(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = AuditManager::crd_name();
    crds.patch(
        name,
        &PatchParams::apply("crd-test").force(),
        &Patch::Apply(&AuditManager::crd()),
    )
    .await
    .expect("apply the CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .expect("watch the CRD");
}

fn minimal(name: &str) -> Value {
    json!({
        "apiVersion": "audit.openg2p.org/v1alpha1",
        "kind": "AuditManager",
        "metadata": {"name": name},
        "spec": {
            "database": {"host": "postgres.db", "adminSecretRef": {"name": "pg-admin"}},
            "kafka": {"bootstrapServers": "kafka:9092"}
        }
    })
}

/// Sets the dotted `path` under `spec` to `value` (None removes it).
fn with(mut object: Value, path: &str, value: Option<Value>) -> Value {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("path");
    let mut at = &mut object["spec"];
    for p in parts {
        if at.get(p).is_none() {
            at[p] = json!({});
        }
        at = &mut at[p];
    }
    match value {
        Some(v) => at[last] = v,
        None => {
            at.as_object_mut().map(|o| o.remove(last));
        }
    }
    object
}

/// Creates `object` as sent (raw JSON, so even specs the Rust types cannot express reach the
/// server) and reads it back typed.
async fn create(api: &Api<AuditManager>, object: Value) -> Result<AuditManager, kube::Error> {
    let resource = ApiResource::erase::<AuditManager>(&());
    let raw: Api<DynamicObject> =
        Api::namespaced_with(api.clone().into_client(), "default", &resource);
    let object: DynamicObject = serde_json::from_value(object).map_err(kube::Error::SerdeError)?;
    let created = raw.create(&PostParams::default(), &object).await?;
    serde_json::from_value(serde_json::to_value(created).map_err(kube::Error::SerdeError)?)
        .map_err(kube::Error::SerdeError)
}

#[tokio::test]
async fn the_api_server_applies_defaults_and_refuses_bad_specs() {
    let client = audit_testenv::kube().client().await;
    install(&client).await;
    let api: Api<AuditManager> = Api::namespaced(client.clone(), "default");

    // Defaults of the original chart, applied by the server.
    let created = create(&api, minimal("defaults"))
        .await
        .expect("a minimal spec is valid");
    let spec = &created.spec;
    assert_eq!(spec.autoscaling.min_replicas, 2);
    assert_eq!(spec.autoscaling.max_replicas, 12);
    assert_eq!(spec.autoscaling.target_cpu_utilization_percentage, 70);
    assert_eq!(spec.kafka.events_topic.name, "openg2p.audit.events");
    assert_eq!(spec.kafka.events_topic.partitions, 12);
    assert_eq!(spec.kafka.consumer_group, "openg2p-audit-consumer");
    assert_eq!(spec.retention.months, 84);
    assert_eq!(spec.retention.pre_create_months, 3);
    assert_eq!(spec.ingest.queue_max_size, 10_000);
    assert_eq!(spec.istio.path_prefix, "/v1/auditmanager/");
    assert_eq!(
        spec.image.tag, None,
        "no tag is stored: the operator's version decides at each reconcile (docs/upgrade.md)"
    );
    assert_eq!(spec.database_name("defaults"), "defaults");

    let cases: Vec<(&str, Option<Value>, &str)> = vec![
        (
            "autoscaling.minReplicas",
            Some(json!(13)),
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            "kafka.eventsTopic",
            Some(json!({"name": "t", "partitions": 0})),
            "spec.kafka.eventsTopic.partitions",
        ),
        ("retention.months", Some(json!(-1)), "spec.retention.months"),
        (
            "retention.maintenanceSchedule",
            Some(json!("every hour")),
            "must be a cron schedule",
        ),
        (
            "database.host",
            Some(json!("")),
            "database.host must not be empty",
        ),
        (
            "database.adminSecretRef",
            None,
            "spec.database.adminSecretRef: Required value",
        ),
        ("kafka", None, "spec.kafka: Required value"),
        (
            "istio.enabled",
            Some(json!(true)),
            "istio.hostname is required",
        ),
        (
            "ingest.maxBatchSize",
            Some(json!(20000)),
            "ingest.maxBatchSize must not exceed ingest.queueMaxSize",
        ),
        (
            "deletionPolicy.database",
            Some(json!("Drop")),
            "spec.deletionPolicy.database",
        ),
        (
            "database.name",
            Some(json!("Bad-Name")),
            "spec.database.name",
        ),
    ];
    for (i, (path, value, message)) in cases.into_iter().enumerate() {
        let object = with(minimal(&format!("bad-{i}")), path, value.clone());
        let refused = create(&api, object)
            .await
            .expect_err(&format!("{path} = {value:?} must be refused"));
        assert!(
            refused.to_string().contains(message),
            "{path} = {value:?}: {refused}"
        );
    }

    // Partitions grow but never shrink.
    let grow = Patch::Merge(
        json!({"spec": {"kafka": {"eventsTopic": {"name": "openg2p.audit.events", "partitions": 24}}}}),
    );
    let grown = api
        .patch("defaults", &PatchParams::default(), &grow)
        .await
        .expect("growing is allowed");
    assert_eq!(grown.spec.kafka.events_topic.partitions, 24);
    let shrink = Patch::Merge(
        json!({"spec": {"kafka": {"eventsTopic": {"name": "openg2p.audit.events", "partitions": 6}}}}),
    );
    let refused = api
        .patch("defaults", &PatchParams::default(), &shrink)
        .await
        .expect_err("shrinking is refused");
    assert!(
        refused.to_string().contains("partitions can only grow"),
        "{refused}"
    );

    // kubectl shows the printer columns.
    let out = audit_testenv::kube()
        .kubectl()
        .args(["get", "auditmanagers", "-n", "default", "defaults"])
        .output()
        .expect("kubectl");
    let table = String::from_utf8_lossy(&out.stdout);
    for column in ["READY", "LAG", "REPLICAS", "ENDPOINT", "AGE"] {
        assert!(
            table.contains(column),
            "kubectl get shows {column}: {table}"
        );
    }
    let short = audit_testenv::kube()
        .kubectl()
        .args(["get", "am", "-n", "default"])
        .output()
        .expect("kubectl");
    assert!(
        short.status.success(),
        "the short name works: {}",
        String::from_utf8_lossy(&short.stderr)
    );
    api.delete("defaults", &Default::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn the_install_manifests_apply_to_a_real_api_server() {
    let kube = audit_testenv::kube();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
    let run = |args: &[&str]| {
        let out = kube.kubectl().args(args).output().expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["apply", "-f", &format!("{dir}/namespace.yaml")]);
    let applied = run(&["apply", "-k", dir, "--dry-run=server"]);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/auditmanagers.audit.openg2p.org",
        "clusterrole.rbac.authorization.k8s.io/audit-manager-operator",
        "deployment.apps/audit-manager-operator",
    ] {
        assert!(applied.contains(object), "{object} in: {applied}");
    }
}
