//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use audit_testenv::http::HttpClient;
use audit_testenv::{AuditManager, Kafka, Postgres};
use serde_json::{Value, json};

pub const BINARY: &str = env!("CARGO_BIN_EXE_audit-manager");

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/events")
}

/// The sample events of `examples/events/`: (file name, body), in file order.
pub fn samples() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(examples())
        .expect("examples/events exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable sample");
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, serde_json::from_str(&text).expect("sample is JSON"))
        })
        .collect()
}

/// What OpenG2P's registry staff-portal API sends for audited calls
/// (`examples/events/openg2p-staff-portal/`), each with the normalizations the original's
/// model applied and ours names: (file name, event, reasons), in file order.
pub fn staff_portal_events() -> Vec<(String, Value, Vec<&'static str>)> {
    let dir = examples().join("openg2p-staff-portal");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let expected = |name: &str| -> Vec<&'static str> {
        match &name[..2] {
            "02" | "06" => vec!["null_dropped"],
            "03" => vec!["null_dropped", "actor_id_empty"],
            "04" | "05" | "08" => vec!["actor_ip_not_an_address"],
            _ => vec![],
        }
    };
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&p).expect("readable event");
            let event = serde_json::from_str(&text).expect("the event is JSON");
            let reasons = expected(&name);
            (name, event, reasons)
        })
        .collect()
}

pub fn unique(name: &str) -> String {
    format!(
        "{name}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Starts `audit-manager serve` with `env` on top of the Kafka address.
pub fn start(kafka: &Kafka, topic: &str, env: &[(&str, String)]) -> AuditManager {
    let mut all = vec![
        ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap()),
        ("AUDIT_MANAGER__KAFKA__TOPIC", topic.to_string()),
    ];
    all.extend(env.iter().cloned());
    AuditManager::start(Path::new(BINARY), &["serve"], &all)
        .unwrap_or_else(|e| panic!("starting audit-manager: {e}"))
}

/// Environment for ingest only (no consumer, no database).
pub fn ingest_only() -> Vec<(&'static str, String)> {
    vec![
        ("AUDIT_MANAGER__COMPONENTS__CONSUMER", "false".into()),
        ("AUDIT_MANAGER__COMPONENTS__MAINTENANCE", "false".into()),
    ]
}

/// A fresh audit database with its three roles, set up by `audit-manager migrate
/// --create-roles` as the superuser.
pub struct Database {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub password: String,
}

impl Database {
    pub fn create(pg: &Postgres) -> Database {
        let name = unique("audit");
        let db = Database {
            name,
            host: pg.host().to_string(),
            port: pg.port(),
            password: "secret-pw".into(),
        };
        let (user, password) = pg.superuser();
        let out = std::process::Command::new(BINARY)
            .args(["migrate", "--create-roles"])
            .env_clear()
            .envs(db.env_for(user, password))
            .env("AUDIT_MANAGER_OWNER_PASSWORD", &db.password)
            .env("AUDIT_MANAGER_WRITER_PASSWORD", &db.password)
            .env("AUDIT_MANAGER_READER_PASSWORD", &db.password)
            .output()
            .expect("running audit-manager migrate");
        assert!(
            out.status.success(),
            "migrate --create-roles failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        db
    }

    pub fn role(&self, kind: &str) -> String {
        format!("{}_{kind}", self.name)
    }

    /// The original plain DB_* variables, as the serving pods get them.
    pub fn env_for(&self, user: &str, password: &str) -> Vec<(&'static str, String)> {
        vec![
            ("DB_HOST", self.host.clone()),
            ("DB_PORT", self.port.to_string()),
            ("DB_NAME", self.name.clone()),
            ("DB_USER", user.to_string()),
            ("DB_PASSWORD", password.to_string()),
            ("AUDIT_MANAGER__DATABASE__SSLMODE", "disable".into()),
        ]
    }

    /// Serving as the writer role.
    pub fn writer_env(&self) -> Vec<(&'static str, String)> {
        self.env_for(&self.role("writer"), &self.password)
    }

    pub async fn connect(&self, kind: &str) -> sqlx::PgPool {
        let url = format!(
            "postgres://{}:{}@{}:{}/{}",
            self.role(kind),
            self.password,
            self.host,
            self.port,
            self.name
        );
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting as {kind}: {e}"))
    }
}

/// An event with a unique id.
pub fn generated(n: usize, run: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{run}-{n}"),
        "source": "/load",
        "type": "org.openg2p.test.generated",
        "time": chrono::Utc::now().to_rfc3339(),
        "data": {"actor": {"type": "service", "id": format!("svc-{}", n % 17)}, "action": "tick", "outcome": "success"}
    })
}

/// POSTs `events` as one batch and expects 202.
pub async fn post_batch(client: &mut HttpClient, events: &[Value]) -> Vec<String> {
    let answer = client
        .post(
            "/v1/auditmanager/events/batch",
            "application/json",
            json!({ "events": events }).to_string(),
        )
        .await
        .expect("POST batch");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    serde_json::from_value(answer.json()["response"]["accepted"].clone()).expect("ids")
}

/// Polls `query` (a COUNT) until it returns `want` or `timeout` passes; returns the last value.
pub async fn wait_count(
    pool: &sqlx::PgPool,
    query: &str,
    want: i64,
    timeout: std::time::Duration,
) -> i64 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
