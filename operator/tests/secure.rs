//! The operator's own connections use the spec's TLS settings and the referenced material, the
//! conditions say what protects each connection (and why one fails), and the workload mounts
//! the material read-only and rolls when it changes.

mod common;

use audit_manager_crds::AuditManager;
use audit_testenv::pki::{pki, read};
use common::{Fixture, condition, create_secret};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

fn database(mode: &str, ca: Option<Value>) -> Value {
    let pg = audit_testenv::postgres();
    let mut d = json!({"host": pg.host(), "port": pg.port(), "sslMode": mode,
                       "adminSecretRef": {"name": "pg-admin"}});
    if let Some(ca) = ca {
        d["caRef"] = ca;
    }
    d
}

async fn secret_hash(f: &Fixture) -> String {
    let d = f
        .api::<Deployment>()
        .get(&f.app())
        .await
        .expect("deployment");
    d.spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("audit.openg2p.org/secret-hash").cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_named_and_a_rotated_one_rolls_the_pods() {
    let f = Fixture::new(
        true,
        json!({"database": database("verify-full", Some(json!({"name": "pg-cluster-ca"})))}),
    )
    .await;
    // The CA Secret names another CA: the condition says which check failed.
    let other = read(&pki().other_ca.cert());
    create_secret(&f, "pg-cluster-ca", json!({"ca.crt": other})).await;
    let am = f.reconcile().await;
    let (status, reason, message) = condition(&am, "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DatabaseUnreachable"),
        "{message}"
    );
    assert!(
        message.contains("sslMode verify-full") && message.contains("UnknownIssuer"),
        "the cause is named: {message}"
    );

    // The right CA: provisioned, and the message says the connection is verified.
    let ca = read(&pki().ca.cert());
    create_secret(&f, "pg-cluster-ca", json!({"ca.crt": ca})).await;
    let am = f.reconcile().await;
    let (status, _, message) = condition(&am, "DatabaseReady");
    assert_eq!(status, "True", "{message}");
    assert!(
        message.contains(
            "encrypted; the server's certificate is verified against the CA and the host name"
        ),
        "{message}"
    );
    let (_, _, topics) = condition(&am, "TopicsReady");
    assert!(topics.contains("PLAINTEXT: NOT encrypted"), "{topics}");

    // The material is a read-only volume, never an environment variable.
    let d = f
        .api::<Deployment>()
        .get(&f.app())
        .await
        .expect("deployment");
    let pod = d.spec.expect("spec").template.spec.expect("pod spec");
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "database-ca")
        .expect("a database-ca volume");
    let secret = volume.secret.expect("from the Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("pg-cluster-ca"));
    let container = &pod.containers[0];
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "database-ca")
        .expect("mounted");
    assert_eq!(mount.read_only, Some(true));
    let env = serde_json::to_string(&container.env).expect("env");
    assert!(
        !env.contains("BEGIN CERTIFICATE") && !env.contains("pg-cluster-ca"),
        "{env}"
    );

    // Rotating the CA (a bundle with the next one) rolls the pods.
    let before = secret_hash(&f).await;
    create_secret(
        &f,
        "pg-cluster-ca",
        json!({"ca.crt": format!("{ca}{other}")}),
    )
    .await;
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "DatabaseReady").0, "True");
    let after = secret_hash(&f).await;
    assert!(!before.is_empty() && before != after, "{before} -> {after}");
    f.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_and_missing_material_are_said_plainly() {
    // require without a CA encrypts but verifies nothing: the condition says so.
    let f = Fixture::new(true, json!({"database": database("require", None)})).await;
    let am = f.reconcile().await;
    let (status, _, message) = condition(&am, "DatabaseReady");
    assert_eq!(status, "True", "{message}");
    assert!(
        message.contains("encrypted but the server is NOT verified"),
        "{message}"
    );
    f.delete_and_reconcile_until_gone().await;

    // disable: not encrypted, and the message says it.
    let f = Fixture::new(true, json!({"database": database("disable", None)})).await;
    let am = f.reconcile().await;
    let (_, _, message) = condition(&am, "DatabaseReady");
    assert!(message.contains("NOT encrypted"), "{message}");
    f.delete_and_reconcile_until_gone().await;

    // A referenced Secret that does not exist is named, with the field that names it.
    let f = Fixture::new(
        true,
        json!({"database": database("verify-ca", Some(json!({"name": "nowhere", "key": "ca.crt"})))}),
    )
    .await;
    let am = f.reconcile().await;
    let (status, reason, message) = condition(&am, "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConnectionSecretMissing")
    );
    assert!(
        message.contains("nowhere") && message.contains("spec.database.caRef"),
        "{message}"
    );
}

/// The production example (CloudNativePG + Strimzi) is valid as written, and the CRD refuses
/// TLS and SASL settings that could not work, with a message naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_accepts_the_production_example_and_refuses_what_cannot_work() {
    let f = Fixture::new(true, json!({})).await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/auditmanager-production.yaml"
    ))
    .expect("the production example");
    let documents: Vec<Value> = text
        .split("\n---\n")
        .map(|d| audit_manager_crds::yaml::from_str(d).expect("YAML"))
        .collect();
    let example = documents
        .iter()
        .find(|d| d["kind"] == "AuditManager")
        .expect("an AuditManager");
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let create = |spec: Value| {
        let api = f.api::<AuditManager>();
        let dry_run = dry_run.clone();
        async move {
            let am: AuditManager = serde_json::from_value(json!({
                "apiVersion": "audit.openg2p.org/v1alpha1", "kind": "AuditManager",
                "metadata": {"name": "example"}, "spec": spec,
            }))
            .expect("parses as the Rust type");
            api.create(&dry_run, &am).await
        }
    };
    create(example["spec"].clone())
        .await
        .expect("the production example is accepted as written");
    let mut spec = example["spec"].clone();
    spec["kafka"]["security"]["protocol"] = json!("SSL");
    let e = create(spec)
        .await
        .expect_err("sasl without a SASL protocol");
    assert!(
        e.to_string()
            .contains("kafka.security.sasl is set exactly when"),
        "{e}"
    );
    let mut spec = example["spec"].clone();
    spec["database"]["sslMode"] = json!("verify-ca");
    spec["database"]
        .as_object_mut()
        .expect("object")
        .remove("caRef");
    let e = create(spec).await.expect_err("verify-ca without a CA");
    assert!(
        e.to_string().contains("verify-ca needs database.caRef"),
        "{e}"
    );
    let mut spec = example["spec"].clone();
    spec["database"]["sslMode"] = json!("disable");
    let e = create(spec).await.expect_err("a CA with TLS off");
    assert!(e.to_string().contains("need TLS"), "{e}");
}
