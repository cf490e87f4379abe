//! TLS to PostgreSQL and TLS/SASL to Kafka against the real servers of the test environment:
//! PostgreSQL with `ssl=on` (the test PKI's certificate for 127.0.0.1 and localhost), and a
//! broker with SASL_SSL, SASL_PLAINTEXT and mTLS listeners besides PLAINTEXT.

use std::path::Path;
use std::time::Duration;

use audit_manager::config::DatabaseConfig;
use audit_manager::db;
use audit_testenv::http::HttpClient;
use audit_testenv::pki::pki;
use audit_testenv::topics::create_topic;
use audit_testenv::{CERT_ROLE, Postgres, SASL_PASSWORD, SASL_USER, TLS_ONLY_ROLE};
use common::{Database, generated, post_batch, unique, wait_count};
use sqlx::{Connection, PgConnection};

mod common;

fn settings(pg: &Postgres, host: &str, mode: &str, ca: Option<&Path>) -> DatabaseConfig {
    DatabaseConfig {
        host: host.into(),
        port: pg.port(),
        sslmode: mode.into(),
        sslrootcert: ca.map(|p| p.display().to_string()).unwrap_or_default(),
        ..DatabaseConfig::default()
    }
}

/// Connects as `user` with `settings`; Ok(the TLS version) or Ok(None) for cleartext.
async fn connect(
    settings: &DatabaseConfig,
    user: &str,
    password: &str,
) -> Result<Option<String>, String> {
    let options =
        db::options(settings, "postgres", user, password).map_err(|e| format!("options: {e}"))?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(|e| e.to_string())?;
    let tls = db::session_tls(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(tls)
}

#[tokio::test]
async fn every_sslmode_behaves_as_libpq_against_a_tls_server() {
    let pg = audit_testenv::postgres();
    let (user, password) = pg.superuser();
    let ca = pki().ca.cert();
    let wrong = pki().other_ca.cert();
    let cases: [(&str, Option<&Path>, Result<bool, &str>); 9] = [
        ("disable", None, Ok(false)),
        ("prefer", None, Ok(true)),
        ("require", None, Ok(true)),
        // libpq: with a root certificate, require checks the chain as verify-ca does.
        ("require", Some(&wrong), Err("UnknownIssuer")),
        ("verify-ca", Some(&ca), Ok(true)),
        ("verify-ca", Some(&wrong), Err("UnknownIssuer")),
        ("verify-ca", None, Err("needs the CA")),
        ("verify-full", Some(&ca), Ok(true)),
        // Without a CA, the system trust store, which does not know the test CA.
        ("verify-full", None, Err("UnknownIssuer")),
    ];
    for (mode, root, want) in cases {
        let got = connect(&settings(pg, "127.0.0.1", mode, root), user, password).await;
        match (want, got) {
            (Ok(encrypted), Ok(tls)) => assert_eq!(
                tls.is_some(),
                encrypted,
                "sslmode {mode} (CA {root:?}): encrypted should be {encrypted}, got {tls:?}"
            ),
            (Err(cause), Err(e)) => assert!(
                e.contains(cause),
                "sslmode {mode} (CA {root:?}) should fail naming {cause}: {e}"
            ),
            (want, got) => panic!("sslmode {mode} (CA {root:?}): want {want:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    // A server whose certificate (from the right CA) names another host.
    let elsewhere = pki()
        .ca
        .server("elsewhere", "DNS:db.elsewhere.internal")
        .expect("issuing a certificate for another host");
    let pg = Postgres::start_with_cert(&elsewhere).expect("PostgreSQL with another host's cert");
    let (user, password) = pg.superuser();
    let ca = pki().ca.cert();
    let full = connect(
        &settings(&pg, "127.0.0.1", "verify-full", Some(&ca)),
        user,
        password,
    )
    .await;
    let e = full.expect_err("verify-full must refuse a certificate for another host");
    assert!(e.contains("not valid for name"), "the cause is named: {e}");
    let tls = connect(
        &settings(&pg, "127.0.0.1", "verify-ca", Some(&ca)),
        user,
        password,
    )
    .await
    .expect("verify-ca checks the chain only");
    assert!(tls.is_some());
    // The shared server's certificate names both 127.0.0.1 and localhost.
    let shared = audit_testenv::postgres();
    let (user, password) = shared.superuser();
    for host in ["127.0.0.1", "localhost"] {
        let tls = connect(
            &settings(shared, host, "verify-full", Some(&ca)),
            user,
            password,
        )
        .await
        .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        assert!(tls.is_some());
    }
}

#[tokio::test]
async fn a_tls_only_role_refuses_plaintext_and_a_client_certificate_logs_in() {
    let pg = audit_testenv::postgres();
    let admin = sqlx::PgPool::connect(&pg.superuser_url("postgres"))
        .await
        .expect("superuser");
    for role in [TLS_ONLY_ROLE, CERT_ROLE] {
        let create = format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD 'tls-only-pw'; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&admin)
            .await
            .expect("creating the role");
    }
    let ca = pki().ca.cert();
    let plain = connect(
        &settings(pg, "127.0.0.1", "disable", None),
        TLS_ONLY_ROLE,
        "tls-only-pw",
    )
    .await;
    let e = plain.expect_err("pg_hba.conf rejects the TLS-only role without TLS");
    assert!(
        e.contains("no encryption"),
        "PostgreSQL names the cause: {e}"
    );
    let tls = connect(
        &settings(pg, "127.0.0.1", "verify-full", Some(&ca)),
        TLS_ONLY_ROLE,
        "tls-only-pw",
    )
    .await
    .expect("the TLS-only role over TLS");
    assert!(tls.is_some());

    // `cert` authentication: the certificate's common name is the role; no password.
    let mut with_cert = settings(pg, "127.0.0.1", "verify-full", Some(&ca));
    with_cert.sslcert = pki().client.cert.display().to_string();
    with_cert.sslkey = pki().client.key.display().to_string();
    let tls = connect(&with_cert, CERT_ROLE, "")
        .await
        .expect("logging in with the client certificate");
    assert!(tls.is_some());
    let without = connect(
        &settings(pg, "127.0.0.1", "verify-full", Some(&ca)),
        CERT_ROLE,
        "tls-only-pw",
    )
    .await;
    let e = without.expect_err("the cert role needs its certificate");
    assert!(e.contains("certificate"), "{e}");
}

/// One way to reach the broker: its address and the runtime's `kafka.security` settings.
struct Listener {
    name: &'static str,
    bootstrap: String,
    security: Vec<(&'static str, String)>,
}

fn listeners() -> Vec<Listener> {
    let kafka = audit_testenv::kafka();
    let p = pki();
    let file = |path: &Path| path.display().to_string();
    let sasl = |protocol: &str, mechanism: &str| {
        let mut env = vec![
            ("PROTOCOL", protocol.to_string()),
            ("SASL_MECHANISM", mechanism.to_string()),
            ("SASL_USERNAME", SASL_USER.to_string()),
            ("SASL_PASSWORD", SASL_PASSWORD.to_string()),
        ];
        if protocol == "sasl_ssl" {
            env.push(("SSL_CA_FILE", file(&p.ca.cert())));
        }
        env
    };
    vec![
        Listener {
            name: "SASL_SSL with SCRAM-SHA-512",
            bootstrap: kafka.bootstrap_sasl_ssl(),
            security: sasl("sasl_ssl", "SCRAM-SHA-512"),
        },
        Listener {
            name: "SASL_SSL with SCRAM-SHA-256",
            bootstrap: kafka.bootstrap_sasl_ssl(),
            security: sasl("sasl_ssl", "SCRAM-SHA-256"),
        },
        Listener {
            name: "SASL_SSL with PLAIN",
            bootstrap: kafka.bootstrap_sasl_ssl(),
            security: sasl("sasl_ssl", "PLAIN"),
        },
        Listener {
            name: "SASL_PLAINTEXT with SCRAM-SHA-512",
            bootstrap: kafka.bootstrap_sasl_plaintext(),
            security: sasl("sasl_plaintext", "SCRAM-SHA-512"),
        },
        Listener {
            // zstd is compiled in: this run's producer compresses with it.
            name: "SSL with a client certificate (mTLS), zstd",
            bootstrap: kafka.bootstrap_mtls(),
            security: vec![
                ("PROTOCOL", "ssl".into()),
                ("SSL_CA_FILE", file(&p.ca.cert())),
                ("SSL_CERT_FILE", file(&p.client.cert)),
                ("SSL_KEY_FILE", file(&p.client.key)),
            ],
        },
    ]
}

/// POST → Kafka → row through every secured listener, with the database over verified TLS
/// (the CA from a file, as a mounted Secret gives it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_rows_through_every_kafka_protocol_and_mechanism() {
    let (kafka, pg) = (audit_testenv::kafka(), audit_testenv::postgres());
    let db = Database::create(pg);
    let reader = db.connect("reader").await;
    let password_dir = tempfile::tempdir().expect("tempdir");
    for (i, listener) in listeners().into_iter().enumerate() {
        let topic = unique("secure");
        create_topic(&kafka.bootstrap(), &topic, 2).await;
        let mut env = db.writer_env();
        env.retain(|(k, _)| *k != "AUDIT_MANAGER__DATABASE__SSLMODE");
        env.push(("AUDIT_MANAGER__DATABASE__SSLMODE", "verify-full".into()));
        env.push((
            "AUDIT_MANAGER__DATABASE__SSLROOTCERT",
            pki().ca.cert().display().to_string(),
        ));
        env.push((
            "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS",
            listener.bootstrap.clone(),
        ));
        env.push(("AUDIT_MANAGER__KAFKA__CONSUMER_GROUP", unique("group")));
        env.push(("AUDIT_MANAGER__KAFKA__DLQ_TOPIC", unique("dlq")));
        env.push(("AUDIT_MANAGER__COMPONENTS__MAINTENANCE", "false".into()));
        let mut security: Vec<(String, String)> = listener
            .security
            .iter()
            .map(|(k, v)| (format!("AUDIT_MANAGER__KAFKA__SECURITY__{k}"), v.clone()))
            .collect();
        // Half of them read the SASL password from a file, as a mounted Secret gives it.
        if i % 2 == 0
            && let Some(at) = security
                .iter()
                .position(|(k, _)| k.ends_with("SASL_PASSWORD"))
        {
            let (_, password) = security.remove(at);
            let path = password_dir.path().join(format!("password-{i}"));
            std::fs::write(&path, format!("{password}\n")).expect("password file");
            security.push((
                "AUDIT_MANAGER__KAFKA__SECURITY__SASL_PASSWORD_FILE".into(),
                path.display().to_string(),
            ));
        }
        if listener.name.contains("zstd") {
            env.push(("AUDIT_MANAGER__KAFKA__PRODUCER__COMPRESSION", "zstd".into()));
        }
        let mut all: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        all.push(("AUDIT_MANAGER__KAFKA__TOPIC".into(), topic.clone()));
        all.extend(security);
        let runtime =
            audit_testenv::AuditManager::start(Path::new(common::BINARY), &["serve"], &all)
                .unwrap_or_else(|e| panic!("{}: starting audit-manager: {e}", listener.name));
        let mut client = HttpClient::connect(&runtime.address())
            .await
            .expect("connect");
        let run = unique("run");
        let events: Vec<_> = (0..20).map(|n| generated(n, &run)).collect();
        post_batch(&mut client, &events).await;
        let query = format!("SELECT count(*) FROM audit_events WHERE id LIKE '{run}-%'");
        let n = wait_count(&reader, &query, 20, Duration::from_secs(60)).await;
        assert_eq!(
            n,
            20,
            "{}: every event becomes a row; runtime log:\n{}",
            listener.name,
            runtime.log_tail(30)
        );
        runtime.terminate();
        runtime.wait_exit(Duration::from_secs(30));
    }
}

/// A wrong SASL password is a clear failure of the broker connection, not silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_is_reported_by_name() {
    let kafka = audit_testenv::kafka();
    let topic = unique("secure");
    create_topic(&kafka.bootstrap(), &topic, 1).await;
    let mut env: Vec<(&str, String)> = common::ingest_only();
    env.extend([
        (
            "AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS",
            kafka.bootstrap_sasl_ssl(),
        ),
        ("AUDIT_MANAGER__KAFKA__TOPIC", topic),
        (
            "AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL",
            "sasl_ssl".into(),
        ),
        (
            "AUDIT_MANAGER__KAFKA__SECURITY__SASL_MECHANISM",
            "SCRAM-SHA-512".into(),
        ),
        (
            "AUDIT_MANAGER__KAFKA__SECURITY__SASL_USERNAME",
            SASL_USER.into(),
        ),
        (
            "AUDIT_MANAGER__KAFKA__SECURITY__SASL_PASSWORD",
            "not-the-password".into(),
        ),
        (
            "AUDIT_MANAGER__KAFKA__SECURITY__SSL_CA_FILE",
            pki().ca.cert().display().to_string(),
        ),
    ]);
    let runtime = audit_testenv::AuditManager::start(Path::new(common::BINARY), &["serve"], &env)
        .expect("starting audit-manager");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = runtime.log();
        if log.contains("Authentication failed") || log.contains("SASL authentication error") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log names the authentication failure:\n{}",
            runtime.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
