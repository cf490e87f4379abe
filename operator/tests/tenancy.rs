//! Tenancy: a Secret is sent to a server only when whoever administers that server marked it
//! for that use (the credentials label, and the server among its allowed hosts); nothing read
//! from a Secret reaches the status or an Event.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Fixture, condition, create_credentials, create_secret, expect_condition};
use serde_json::json;

/// A server on 127.0.0.1 that counts the connections it receives and the bytes sent to it.
struct Trap {
    port: u16,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let (connections, bytes, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, b, s) = (connections.clone(), bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = stream.read(&mut buf) {
                            b.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Trap {
            port,
            connections,
            bytes,
            stop,
        }
    }

    fn received(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every Event message of the fixture's namespace, and the status as text.
async fn said(f: &Fixture) -> String {
    let messages: Vec<String> = common::events(f)
        .await
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let status = serde_json::to_string(&f.current().await.status).expect("status");
    format!("{status}\n{}", messages.join("\n"))
}

/// Nothing was created outside the cluster: deletion skips the database and topics.
async fn delete_without_external_teardown(f: &Fixture) {
    let skip =
        json!({"metadata": {"annotations": {audit_manager_crds::SKIP_EXTERNAL_TEARDOWN: "true"}}});
    f.api::<audit_manager_crds::AuditManager>()
        .patch(
            &f.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(skip),
        )
        .await
        .expect("annotate");
    f.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_tenant_names_receives_nothing_from_an_unmarked_secret() {
    let trap = Trap::start();
    let database = json!({"host": "127.0.0.1", "port": trap.port, "sslMode": "disable",
                          "adminSecretRef": {"name": "someone-elses"}});
    // Kafka too: a SASL password from an unmarked Secret, for a bootstrap server at the trap.
    let base = common::unique("trap");
    let kafka = json!({
        "bootstrapServers": format!("127.0.0.1:{}", trap.port),
        "eventsTopic": {"name": format!("{base}.events"), "partitions": 1},
        "dlqTopic": {"name": format!("{base}.dlq"), "partitions": 1},
        "consumerGroup": format!("{base}-group"),
        "security": {"protocol": "SASL_PLAINTEXT",
                     "sasl": {"username": "audit", "passwordSecretRef": {"name": "kafka-user"}}}});
    let f = Fixture::new(false, json!({ "database": database, "kafka": kafka })).await;
    // Secrets of the namespace that nobody marked as credentials.
    create_secret(
        &f,
        "someone-elses",
        json!({"username": "victim-user", "password": "victim-password"}),
    )
    .await;
    create_secret(
        &f,
        "kafka-user",
        json!({"password": "victim-kafka-password"}),
    )
    .await;
    let am = f.reconcile().await;
    let message =
        common::expect_condition(&am, "DatabaseReady", "False", "CredentialsNotPermitted");
    assert!(
        message.contains("someone-elses")
            && message.contains("audit.openg2p.org/credentials=true")
            && message.contains("spec.database.adminSecretRef"),
        "the message names the Secret, the field and the label: {message}"
    );
    let message = common::expect_condition(&am, "TopicsReady", "False", "CredentialsNotPermitted");
    assert!(
        message.contains("kafka-user")
            && message.contains("spec.kafka.security.sasl.passwordSecretRef"),
        "{message}"
    );

    // Marked, but for other servers: still refused, and the message names the server.
    for (secret, data) in [
        (
            "someone-elses",
            json!({"username": "victim-user", "password": "victim-password"}),
        ),
        ("kafka-user", json!({"password": "victim-kafka-password"})),
    ] {
        create_credentials(
            &f.client,
            &f.namespace,
            secret,
            data,
            "postgres.db.svc, kafka.svc",
        )
        .await;
    }
    let am = f.reconcile().await;
    for kind in ["DatabaseReady", "TopicsReady"] {
        let message = common::expect_condition(&am, kind, "False", "CredentialsNotPermitted");
        assert!(
            message.contains(&format!("127.0.0.1:{}", trap.port))
                && message.contains("postgres.db.svc"),
            "the message names the server refused and the hosts allowed: {message}"
        );
    }

    // Give a late connection time to arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(trap.received(), (0, 0), "the trap received nothing");
    let said = said(&f).await;
    assert!(
        !said.contains("victim"),
        "no Secret content is said: {said}"
    );
    delete_without_external_teardown(&f).await;
    assert_eq!(trap.received(), (0, 0), "teardown sent nothing either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_never_carries_the_login_into_the_status_or_events() {
    // A marked Secret for the real server, with a login it refuses: PostgreSQL's error quotes
    // the user name (its first 63 bytes).
    let user = format!("tenant-{}", "x".repeat(70));
    let f = Fixture::new(false, json!({})).await;
    create_credentials(
        &f.client,
        &f.namespace,
        "pg-admin",
        json!({"username": user, "password": "not-the-password"}),
        common::TEST_HOSTS,
    )
    .await;
    let am = f.reconcile().await;
    let message = common::expect_condition(&am, "DatabaseReady", "False", "DatabaseUnreachable");
    assert!(message.contains("[redacted]"), "{message}");
    let said = said(&f).await;
    assert!(
        !said.contains("tenant-xxxx") && !said.contains("not-the-password"),
        "no part of the login is said: {said}"
    );
    delete_without_external_teardown(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resources_naming_one_database_at_once_do_not_both_take_it() {
    let pg = audit_testenv::postgres();
    let database = common::unique("race").replace('-', "_");
    let spec = json!({"database": {"host": pg.host(), "port": pg.port(), "sslMode": "disable",
                                   "name": database, "adminSecretRef": {"name": "pg-admin"}}});
    let a = Fixture::new(true, spec.clone()).await;
    let b = Fixture::new(true, spec).await;
    for _ in 0..2 {
        let (am_a, am_b) = tokio::join!(a.reconcile(), b.reconcile());
        let outcomes = [&am_a, &am_b].map(|am| condition(am, "DatabaseReady"));
        let won: Vec<bool> = outcomes.iter().map(|(s, _, _)| s == "True").collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "exactly one takes the database: {outcomes:?}"
        );
        let lost = &outcomes[usize::from(won[0])];
        assert_eq!(lost.1, "DatabaseConflict", "{lost:?}");
    }
    // The winner's passwords still log in: the loser changed none of them.
    let winner = if condition(&a.current().await, "DatabaseReady").0 == "True" {
        &a
    } else {
        &b
    };
    let password = common::role_password(winner, "writer").await;
    let url = pg.url(&format!("{database}_writer"), &password, &database);
    <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("the winner's writer logs in");
    let loser = if std::ptr::eq(winner, &a) { &b } else { &a };
    loser.delete_and_reconcile_until_gone().await;
    <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("the loser's teardown dropped nothing of the winner's");
    winner.delete_and_reconcile_until_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_with_createrole_and_createdb_only_provisions_and_tears_down() {
    // As a managed PostgreSQL or CloudNativePG without superuser access gives it.
    let pg = audit_testenv::postgres();
    let (admin, password) = common::limited_admin().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.superuser_url("postgres"))
        .await
        .expect("superuser");
    let f = Fixture::new(false, json!({})).await;
    create_credentials(
        &f.client,
        &f.namespace,
        "pg-admin",
        json!({"username": admin, "password": password}),
        common::TEST_HOSTS,
    )
    .await;
    let am = f.reconcile().await;
    expect_condition(&am, "DatabaseReady", "True", "Ok");
    let owner: String = sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = $1",
    )
    .bind(f.database())
    .fetch_one(&mut conn)
    .await
    .expect("the database exists");
    assert_eq!(owner, format!("{}_owner", f.database()));
    // An operator restarted (nothing cached) provisions again over what exists.
    let restarted = std::sync::Arc::new(audit_manager_operator::context::Ctx::new(
        f.client.clone(),
        std::sync::Arc::new(audit_manager_operator::metrics::Metrics::default()),
        "restarted".into(),
    ));
    audit_manager_operator::controller::reconcile(
        std::sync::Arc::new(f.current().await),
        restarted,
    )
    .await
    .expect("reconcile");
    assert_eq!(
        condition(&f.current().await, "DatabaseReady").0,
        "True",
        "{:?}",
        condition(&f.current().await, "DatabaseReady")
    );
    f.delete_and_reconcile_until_gone().await;
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1)
              + (SELECT count(*) FROM pg_roles WHERE rolname LIKE $1 || '\\_%')",
    )
    .bind(f.database())
    .fetch_one(&mut conn)
    .await
    .expect("count");
    assert_eq!(
        left, 0,
        "the database and its roles are dropped by the limited admin"
    );
}
