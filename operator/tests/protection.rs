//! Seven years of records cannot vanish by accident: deletion protection through the shipped
//! ValidatingAdmissionPolicy, identity fields that cannot change, a retention decrease only
//! when confirmed, names that fit every limit, and Retain keeping the role Secrets.

mod common;

use std::time::{Duration, Instant};

use audit_manager_crds::AuditManager;
use common::{Fixture, expect_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

/// Applies `manifests/deletion-protection.yaml` as an admin would (`kubectl apply`).
async fn install_deletion_protection(client: &kube::Client) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/deletion-protection.yaml"
    ))
    .expect("the manifest");
    for document in text.split("\n---\n") {
        let object: Value = audit_manager_crds::yaml::from_str(document).expect("YAML");
        let kind = object["kind"].as_str().expect("kind").to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let resource = ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            plural: match kind.as_str() {
                "ValidatingAdmissionPolicy" => "validatingadmissionpolicies".into(),
                _ => "validatingadmissionpolicybindings".into(),
            },
            kind,
        };
        Api::<DynamicObject>::all_with(client.clone(), &resource)
            .patch(
                &name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&object),
            )
            .await
            .expect("apply the policy");
    }
}

/// A dry-run merge patch of the spec: what the API server says about the change.
async fn try_spec(f: &Fixture, spec: Value) -> Result<(), String> {
    let params = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    f.api::<AuditManager>()
        .patch(&f.name, &params, &Patch::Merge(json!({ "spec": spec })))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_protection_refuses_delete_with_the_way_out() {
    let f = Fixture::new(true, json!({"deletionProtection": true})).await;
    install_deletion_protection(&f.client).await;
    let api = f.api::<AuditManager>();
    let dry_run = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    // The policy takes effect once the API server has loaded it; a dry run asks safely.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        match api.delete(&f.name, &dry_run).await {
            Err(e) => break e.to_string(),
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Ok(_) => panic!("the policy never refused the deletion"),
        }
    };
    assert!(
        refusal.contains("deletionProtection") && refusal.contains("\"deletionProtection\":false"),
        "the refusal says how to proceed: {refusal}"
    );
    // The real deletion is refused too: the resource stays, without a deletion timestamp.
    let e = api
        .delete(&f.name, &Default::default())
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("deletionProtection"), "{e}");
    assert!(f.current().await.metadata.deletion_timestamp.is_none());
    // A deletion of every AuditManager of the namespace (as a namespace deletion or a prune
    // does) is refused for this one as well.
    let e = api
        .delete_collection(&Default::default(), &Default::default())
        .await
        .map(|_| ())
        .expect_err("refused");
    assert!(e.to_string().contains("deletionProtection"), "{e}");

    // Turned off: the deletion goes through, and teardown runs.
    api.patch(
        &f.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionProtection": false}})),
    )
    .await
    .expect("turn protection off");
    f.reconcile().await;
    f.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_fields_cannot_change_and_retention_shrinks_only_when_confirmed() {
    let f = Fixture::new(
        true,
        json!({"database": {
        "host": audit_testenv::postgres().host(), "port": audit_testenv::postgres().port(),
        "sslMode": "disable", "name": "protected_db", "adminSecretRef": {"name": "pg-admin"}}}),
    )
    .await;
    for (spec, names) in [
        (
            json!({"database": {"host": "elsewhere.db.svc"}}),
            "database.host cannot change",
        ),
        (
            json!({"database": {"name": "another_db"}}),
            "database.name cannot change",
        ),
        (
            json!({"kafka": {"bootstrapServers": "other-kafka:9092"}}),
            "kafka.bootstrapServers cannot change",
        ),
        (
            json!({"kafka": {"eventsTopic": {"name": "other.events", "partitions": 3}}}),
            "kafka.eventsTopic.name and kafka.dlqTopic.name cannot change",
        ),
        (
            json!({"kafka": {"consumerGroup": "another-group"}}),
            "kafka.consumerGroup cannot change",
        ),
    ] {
        let e = try_spec(&f, spec.clone()).await.expect_err("refused");
        assert!(
            e.contains(names) && e.contains("Moving to another server or name"),
            "{spec}: {e}"
        );
    }
    // What is not identity still changes.
    try_spec(&f, json!({"database": {"port": 6543}, "lagThreshold": 5}))
        .await
        .expect("port and threshold change");

    // Retention: 84 months by default. Longer is fine; shorter needs the confirmation.
    try_spec(&f, json!({"retention": {"months": 120}}))
        .await
        .expect("a longer retention");
    try_spec(&f, json!({"retention": {"months": 0}}))
        .await
        .expect("keeping everything");
    let e = try_spec(&f, json!({"retention": {"months": 12}}))
        .await
        .expect_err("a shorter retention unconfirmed");
    assert!(e.contains("retention.confirmDecreaseTo"), "{e}");
    let e = try_spec(
        &f,
        json!({"retention": {"months": 12, "confirmDecreaseTo": 24}}),
    )
    .await
    .expect_err("a confirmation of another value");
    assert!(e.contains("retention.confirmDecreaseTo"), "{e}");
    try_spec(
        &f,
        json!({"retention": {"months": 12, "confirmDecreaseTo": 12}}),
    )
    .await
    .expect("a confirmed decrease");
    f.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_cannot_fit_are_refused_when_created() {
    let f = Fixture::new(true, json!({})).await;
    let create = |name: &str, database: Option<&str>| {
        let mut spec = f.resource.spec.clone();
        spec.database.name = database.map(str::to_string);
        let am = AuditManager::new(name, spec);
        let api = f.api::<AuditManager>();
        async move {
            let dry_run = PostParams {
                dry_run: true,
                ..Default::default()
            };
            api.create(&dry_run, &am)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    create(&"a".repeat(40), None)
        .await
        .expect("40 characters fit");
    let e = create(&"a".repeat(41), None).await.expect_err("41 do not");
    assert!(e.contains("at most 40 characters"), "{e}");
    create("short", Some(&"d".repeat(56)))
        .await
        .expect("a 56-character database");
    let e = create("short", Some(&"d".repeat(57)))
        .await
        .expect_err("57 would not leave room for `_reader`");
    assert!(e.contains("spec.database.name"), "{e}");
    f.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_keeps_the_role_secrets_with_the_database() {
    let f = Fixture::new(
        true,
        json!({"deletionPolicy": {"database": "Retain", "topics": "Delete"}}),
    )
    .await;
    let am = f.reconcile().await;
    expect_condition(&am, "DatabaseReady", "True", "Ok");
    let before = f
        .api::<Secret>()
        .get(&format!("{}-db-writer", f.name))
        .await
        .expect("writer Secret");
    f.delete_and_reconcile_until_gone().await;
    for kind in ["owner", "writer", "reader"] {
        let secret = f
            .api::<Secret>()
            .get(&format!("{}-db-{kind}", f.name))
            .await
            .expect("the role Secret is kept");
        assert!(
            secret
                .metadata
                .owner_references
                .unwrap_or_default()
                .is_empty(),
            "no longer owned, so the garbage collector keeps it"
        );
        if kind == "writer" {
            assert_eq!(secret.data, before.data, "with the same password");
        }
    }
    // The kept password still logs in to the kept database.
    let password = common::role_password(&f, "writer").await;
    let pg = audit_testenv::postgres();
    let url = pg.url(
        &format!("{}_writer", f.database()),
        &password,
        &f.database(),
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("the retained role logs in with the retained password");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&mut conn)
        .await
        .expect("the retained table");
    assert_eq!(rows, 0);
}
