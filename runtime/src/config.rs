//! The one configuration loader: built-in defaults < YAML at `$CONFIG_PATH` < environment
//! (`AUDIT_MANAGER__SECTION__KEY`, plus the original plain `DB_*` variables).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Prefix of the layered environment variables; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "AUDIT_MANAGER__";
/// The environment variable naming the YAML configuration file.
pub const CONFIG_PATH_VAR: &str = "CONFIG_PATH";
/// The keys that hold secrets (JSON pointers): never written to a file, never served.
const SECRET_KEYS: [&str; 2] = ["/database/password", "/kafka/security/sasl_password"];
/// The HTTP port served by default.
pub const DEFAULT_PORT: u16 = 8000;
/// The admin port (`/config`), on loopback by default.
pub const DEFAULT_ADMIN_PORT: u16 = 9001;

/// The layered environment variable that sets a dotted key, e.g. `database.password` →
/// `AUDIT_MANAGER__DATABASE__PASSWORD`.
pub fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// Why the configuration cannot be used; every variant names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: String,
        source: audit_manager_crds::yaml::Error,
    },
    #[error("config file {path} must hold a mapping at the top level")]
    NotAMapping { path: String },
    #[error("invalid configuration at `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The whole runtime configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub ingest: IngestConfig,
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    pub components: ComponentsConfig,
    pub log: LogConfig,
    pub auth: crate::auth::config::AuthConfig,
}

/// The HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// The one deadline of a shutdown after SIGTERM: publishing the queue to Kafka, stopping
    /// the consumer and closing HTTP connections all end within it. Keep it below the pod's
    /// `terminationGracePeriodSeconds`.
    pub shutdown_timeout_seconds: u64,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a connection may take to send a request head, counted from when the server
    /// starts waiting for it: this also closes kept-alive connections idle that long.
    pub request_head_timeout_seconds: u64,
    /// How long a client may take to send a request body (408 after that).
    pub body_read_timeout_seconds: u64,
    /// The admin listener (`/config`): on `admin_host:admin_port`, loopback by default, so
    /// that only `kubectl port-forward` reaches it; 0 switches it off.
    pub admin_host: String,
    pub admin_port: u16,
    /// A port of its own for `/metrics` on `host` (so a NetworkPolicy can open it to the
    /// monitoring namespace alone); 0 serves `/metrics` on `port`.
    pub metrics_port: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            shutdown_timeout_seconds: 60,
            max_connections: 1024,
            request_head_timeout_seconds: 60,
            body_read_timeout_seconds: 30,
            admin_host: "127.0.0.1".into(),
            admin_port: DEFAULT_ADMIN_PORT,
            metrics_port: 0,
        }
    }
}

/// When a POST is answered 202.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Once the event is in the in-process queue (the original behaviour).
    Queued,
    /// Once Kafka has acknowledged the event (acks=all).
    Kafka,
}

/// The HTTP source and its queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Accepted events not yet in Kafka, counted in events.
    pub queue_max_size: usize,
    /// Accepted events not yet in Kafka, counted in bytes (each event's payload, key and id).
    pub queue_max_bytes: usize,
    pub max_batch_size: usize,
    /// The largest event. A single-event body may exceed it by a quarter (formatting).
    pub max_event_bytes: usize,
    /// The largest batch body; unset (null) means `max_batch_size × max_event_bytes`.
    pub max_body_bytes: Option<usize>,
    /// Request bodies held in memory at once, over all connections, beyond the first
    /// single-event body's worth of each (which is never refused for this budget).
    pub max_inflight_body_bytes: usize,
    /// How far ahead of now an event's `time` may lie, e.g. `1h`, `90s`.
    pub max_future_skew: String,
    pub ack_mode: AckMode,
    /// With `ack_mode: kafka`, how long a request waits for Kafka's acknowledgement before it
    /// is answered 503 with Retry-After (the event stays queued and is still published).
    pub ack_timeout_seconds: u64,
    /// Seconds suggested in `Retry-After` on 503.
    pub retry_after_seconds: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            queue_max_size: 10_000,
            queue_max_bytes: 64 * 1024 * 1024,
            max_batch_size: 500,
            max_event_bytes: 64 * 1024,
            max_body_bytes: None,
            max_inflight_body_bytes: 64 * 1024 * 1024,
            max_future_skew: "1h".into(),
            ack_mode: AckMode::Queued,
            ack_timeout_seconds: 10,
            retry_after_seconds: 1,
        }
    }
}

impl IngestConfig {
    /// The largest body of `POST /events`: one event, plus a quarter for formatting.
    pub fn event_body_limit(&self) -> usize {
        self.max_event_bytes
            .saturating_add(self.max_event_bytes / 4)
    }

    /// The largest body of `POST /events/batch`.
    pub fn batch_body_limit(&self) -> usize {
        self.max_body_bytes
            .unwrap_or_else(|| self.max_batch_size.saturating_mul(self.max_event_bytes))
    }
}

/// Kafka connection, topics, producer and consumer tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub client_id: String,
    pub consumer_group: String,
    pub security: KafkaSecurityConfig,
    pub producer: ProducerConfig,
    pub consumer: ConsumerConfig,
}

/// How the Kafka clients authenticate and encrypt: librdkafka's `security.protocol`, SASL and
/// TLS settings. Files are PEM (a mounted Secret's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurityConfig {
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (sasl_* protocols).
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// Never shown by `GET /config`; prefer `sasl_password_file`.
    pub sasl_password: String,
    /// A file holding the SASL password, read at start (it wins over `sasl_password`).
    pub sasl_password_file: String,
    /// The CA bundle that verifies the brokers; empty: the system trust store.
    pub ssl_ca_file: String,
    /// A client certificate and its key (mTLS); both or neither.
    pub ssl_cert_file: String,
    pub ssl_key_file: String,
    /// The same material in memory (the operator's own connections, read from Secrets); each
    /// wins over its file. Never serialized.
    #[serde(skip)]
    pub ssl_ca_pem: Option<String>,
    #[serde(skip)]
    pub ssl_cert_pem: Option<String>,
    #[serde(skip)]
    pub ssl_key_pem: Option<String>,
}

impl Default for KafkaSecurityConfig {
    fn default() -> Self {
        KafkaSecurityConfig {
            protocol: "plaintext".into(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            sasl_password_file: String::new(),
            ssl_ca_file: String::new(),
            ssl_cert_file: String::new(),
            ssl_key_file: String::new(),
            ssl_ca_pem: None,
            ssl_cert_pem: None,
            ssl_key_pem: None,
        }
    }
}

/// The Kafka security protocols, as librdkafka names them.
pub const KAFKA_PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
/// The SASL mechanisms librdkafka is built with here.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl KafkaSecurityConfig {
    /// TLS is on (ssl, sasl_ssl).
    pub fn tls(&self) -> bool {
        self.protocol.ends_with("ssl")
    }

    /// SASL is on (sasl_plaintext, sasl_ssl).
    pub fn sasl(&self) -> bool {
        self.protocol.starts_with("sasl_")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !KAFKA_PROTOCOLS.contains(&self.protocol.as_str()) {
            return Err(invalid(
                "kafka.security.protocol",
                format!(
                    "`{}` is not one of {}",
                    self.protocol,
                    KAFKA_PROTOCOLS.join(", ")
                ),
            ));
        }
        if self.sasl() {
            if !SASL_MECHANISMS.contains(&self.sasl_mechanism.as_str()) {
                return Err(invalid(
                    "kafka.security.sasl_mechanism",
                    format!(
                        "`{}` is not one of {}",
                        self.sasl_mechanism,
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            if self.sasl_username.is_empty() {
                return Err(invalid(
                    "kafka.security.sasl_username",
                    format!("must be set with protocol {}", self.protocol),
                ));
            }
            if self.sasl_password.is_empty() && self.sasl_password_file.is_empty() {
                return Err(invalid(
                    "kafka.security.sasl_password_file",
                    format!(
                        "a password (sasl_password_file or sasl_password) must be set with protocol {}",
                        self.protocol
                    ),
                ));
            }
        }
        // TLS material with a protocol that does not use it is a mistake that would send
        // everything in cleartext: refuse it rather than ignore it.
        if !self.tls() {
            for (key, v) in [
                ("ssl_ca_file", &self.ssl_ca_file),
                ("ssl_cert_file", &self.ssl_cert_file),
                ("ssl_key_file", &self.ssl_key_file),
            ] {
                if !v.is_empty() {
                    return Err(invalid(
                        &format!("kafka.security.{key}"),
                        format!(
                            "is set but protocol {} does not use TLS: use ssl or sasl_ssl",
                            self.protocol
                        ),
                    ));
                }
            }
        }
        if self.ssl_cert_file.is_empty() != self.ssl_key_file.is_empty() {
            return Err(invalid(
                "kafka.security.ssl_key_file",
                "a client certificate and its key are set together (ssl_cert_file and ssl_key_file)",
            ));
        }
        Ok(())
    }

    /// Reads `sasl_password_file` into `sasl_password`.
    fn read_files(&mut self) -> Result<(), ConfigError> {
        if !self.sasl_password_file.is_empty() {
            let path = PathBuf::from(&self.sasl_password_file);
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            self.sasl_password = text.trim_end_matches(['\r', '\n']).to_string();
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "kafka:9092".into(),
            topic: "openg2p.audit.events".into(),
            dlq_topic: "openg2p.audit.dlq".into(),
            client_id: "openg2p-audit-manager".into(),
            consumer_group: "openg2p-audit-consumer".into(),
            security: KafkaSecurityConfig::default(),
            producer: ProducerConfig::default(),
            consumer: ConsumerConfig::default(),
        }
    }
}

/// Producer batching; idempotence, acks=all and unbounded retries are not configurable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// How long librdkafka gathers a partition's events before sending them. librdkafka sends
    /// one produce request per partition, so this sets the broker's work per event: 20 ms
    /// (rather than librdkafka's 5) roughly halves the broker's and the producer's CPU per
    /// event at tens of thousands of events/s (`make bench`), and an event is in Kafka at most
    /// 20 ms later (seen in `ack_mode: kafka` answers).
    pub linger_ms: u64,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Events taken from the queue per publishing round.
    pub batch_max_records: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger_ms: 20,
            compression: "lz4".into(),
            batch_max_records: 1000,
        }
    }
}

/// Consumer batching and database retry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Rows per statement while the sink keeps up: a batch is cut at this size as soon as a
    /// writer is free (the low-water mark, for latency).
    pub batch_max_records: usize,
    /// Rows per statement while the sink is behind: a batch keeps filling while every writer
    /// is busy, up to this size, so statements grow with the backlog (a 500-row statement
    /// costs PostgreSQL about 12% more per row than a 2,000-row one, `make bench`).
    pub batch_max_records_behind: usize,
    pub flush_interval_ms: u64,
    /// Batches written to PostgreSQL at once (each on its own pooled connection) while the
    /// next one fills. More writers than the database has cores to give them make each row
    /// dearer: concurrent COPYs into the same indexes wait on each other's page locks
    /// (`make bench` on 2 cores: an insert took 16-19 ms with 4 at once, 8-10 ms with 2, and
    /// rows per second were no lower with 2).
    pub max_batches_in_flight: usize,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            batch_max_records: 500,
            batch_max_records_behind: 4000,
            flush_interval_ms: 1000,
            max_batches_in_flight: 2,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 30_000,
        }
    }
}

/// PostgreSQL connection and partition maintenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: String,
    /// disable, prefer, require, verify-ca or verify-full, as libpq reads them.
    pub sslmode: String,
    /// The CA bundle (PEM) that verifies the server; empty: the system trust store
    /// (verify-full only). With a CA, `require` verifies the chain as `verify-ca` does.
    pub sslrootcert: String,
    /// A client certificate and its key (PEM), PostgreSQL's `cert` authentication; both or
    /// neither.
    pub sslcert: String,
    pub sslkey: String,
    /// The same material in memory (the operator's own connections, read from Secrets); each
    /// wins over its file. Never serialized.
    #[serde(skip)]
    pub sslrootcert_pem: Option<String>,
    #[serde(skip)]
    pub sslcert_pem: Option<String>,
    #[serde(skip)]
    pub sslkey_pem: Option<String>,
    pub pool_max_connections: u32,
    pub partition_pre_create_months: u32,
    /// 0 keeps partitions forever.
    pub partition_retention_months: u32,
    pub partition_check_interval_seconds: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            host: "localhost".into(),
            port: 5432,
            name: "auditmanager".into(),
            user: "postgres".into(),
            password: "postgres".into(),
            sslmode: "verify-full".into(),
            sslrootcert: String::new(),
            sslcert: String::new(),
            sslkey: String::new(),
            sslrootcert_pem: None,
            sslcert_pem: None,
            sslkey_pem: None,
            pool_max_connections: 4,
            partition_pre_create_months: 3,
            partition_retention_months: 84,
            partition_check_interval_seconds: 3600,
        }
    }
}

/// What `serve` runs; ingest and consume can run as separate Deployments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentsConfig {
    pub ingest: bool,
    pub consumer: bool,
    /// Periodic partition maintenance (under an advisory lock) inside `serve`.
    pub maintenance: bool,
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        ComponentsConfig {
            ingest: true,
            consumer: true,
            maintenance: true,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `audit_manager=debug,info`.
    pub level: String,
    /// `json` or `text`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "json".into(),
        }
    }
}

impl Config {
    /// Loads from the process environment and `$CONFIG_PATH`.
    pub fn load() -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Config::load_from(&env)
    }

    /// Loads with `env` standing for the process environment.
    pub fn load_from(env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut tree =
            serde_json::to_value(Config::default()).map_err(|e| invalid("", e.to_string()))?;
        if let Some(path) = env.get(CONFIG_PATH_VAR).filter(|p| !p.is_empty()) {
            merge(&mut tree, read_yaml(Path::new(path))?);
        }
        let defaults = tree.clone();
        // The original's plain variables sit below the layered ones.
        for (var, key) in [
            ("DB_HOST", "database.host"),
            ("DB_PORT", "database.port"),
            ("DB_NAME", "database.name"),
            ("DB_USER", "database.user"),
            ("DB_PASSWORD", "database.password"),
        ] {
            if let Some(v) = env.get(var) {
                set_path(&mut tree, &defaults, key, v)?;
            }
        }
        for (var, v) in env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                let key = rest
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
                    .join(".");
                set_path(&mut tree, &defaults, &key, v)?;
            }
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            invalid(&key, e.into_inner().to_string())
        })?;
        let mut config = config;
        config.validate()?;
        config.kafka.security.read_files()?;
        Ok(config)
    }

    /// The byte limits must admit what the event limits admit: a batch at its body limit has to
    /// fit the queue and the in-flight body budget, or it could never be accepted.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        let i = &self.ingest;
        let batch = i.batch_body_limit();
        if batch < i.max_event_bytes {
            return Err(invalid(
                "ingest.max_body_bytes",
                format!(
                    "{batch} is below ingest.max_event_bytes {}",
                    i.max_event_bytes
                ),
            ));
        }
        if i.queue_max_bytes < batch {
            return Err(invalid(
                "ingest.queue_max_bytes",
                format!(
                    "{} is below the batch body limit {batch} (ingest.max_body_bytes, or max_batch_size × max_event_bytes): such a batch could never be queued",
                    i.queue_max_bytes
                ),
            ));
        }
        if i.max_inflight_body_bytes
            .saturating_add(i.event_body_limit())
            < batch
        {
            return Err(invalid(
                "ingest.max_inflight_body_bytes",
                format!(
                    "{} is too small to read a batch body of {batch} bytes (ingest.max_body_bytes, or max_batch_size × max_event_bytes)",
                    i.max_inflight_body_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("ingest.queue_max_size", self.ingest.queue_max_size as u64)?;
        positive("ingest.max_batch_size", self.ingest.max_batch_size as u64)?;
        positive("ingest.max_event_bytes", self.ingest.max_event_bytes as u64)?;
        positive(
            "ingest.ack_timeout_seconds",
            self.ingest.ack_timeout_seconds,
        )?;
        positive("server.max_connections", self.server.max_connections as u64)?;
        positive(
            "server.request_head_timeout_seconds",
            self.server.request_head_timeout_seconds,
        )?;
        positive(
            "server.body_read_timeout_seconds",
            self.server.body_read_timeout_seconds,
        )?;
        positive(
            "server.shutdown_timeout_seconds",
            self.server.shutdown_timeout_seconds,
        )?;
        positive(
            "kafka.consumer.batch_max_records",
            self.kafka.consumer.batch_max_records as u64,
        )?;
        positive(
            "kafka.consumer.flush_interval_ms",
            self.kafka.consumer.flush_interval_ms,
        )?;
        positive(
            "kafka.consumer.max_batches_in_flight",
            self.kafka.consumer.max_batches_in_flight as u64,
        )?;
        positive(
            "kafka.producer.batch_max_records",
            self.kafka.producer.batch_max_records as u64,
        )?;
        positive(
            "database.pool_max_connections",
            u64::from(self.database.pool_max_connections),
        )?;
        positive(
            "database.partition_check_interval_seconds",
            self.database.partition_check_interval_seconds,
        )?;
        if self.kafka.consumer.batch_max_records_behind < self.kafka.consumer.batch_max_records {
            return Err(invalid(
                "kafka.consumer.batch_max_records_behind",
                format!(
                    "{} is below kafka.consumer.batch_max_records {}: statements grow from the one to the other",
                    self.kafka.consumer.batch_max_records_behind,
                    self.kafka.consumer.batch_max_records
                ),
            ));
        }
        if self.ingest.max_batch_size > self.ingest.queue_max_size {
            return Err(invalid(
                "ingest.max_batch_size",
                format!(
                    "{} exceeds ingest.queue_max_size {}: such a batch could never be accepted",
                    self.ingest.max_batch_size, self.ingest.queue_max_size
                ),
            ));
        }
        self.validate_sizes()?;
        self.auth.validate(self.ingest.max_batch_size)?;
        parse_duration(&self.ingest.max_future_skew)
            .map_err(|m| invalid("ingest.max_future_skew", m))?;
        for (key, v) in [
            ("kafka.bootstrap_servers", &self.kafka.bootstrap_servers),
            ("kafka.topic", &self.kafka.topic),
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
            ("kafka.consumer_group", &self.kafka.consumer_group),
            ("kafka.client_id", &self.kafka.client_id),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        if self.kafka.topic == self.kafka.dlq_topic {
            return Err(invalid("kafka.dlq_topic", "must differ from kafka.topic"));
        }
        const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
        if !CODECS.contains(&self.kafka.producer.compression.as_str()) {
            return Err(invalid(
                "kafka.producer.compression",
                format!(
                    "`{}` is not one of {}",
                    self.kafka.producer.compression,
                    CODECS.join(", ")
                ),
            ));
        }
        const SSL: [&str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];
        if !SSL.contains(&self.database.sslmode.as_str()) {
            return Err(invalid(
                "database.sslmode",
                format!(
                    "`{}` is not one of {}",
                    self.database.sslmode,
                    SSL.join(", ")
                ),
            ));
        }
        self.kafka.security.validate()?;
        if self.database.sslcert.is_empty() != self.database.sslkey.is_empty() {
            return Err(invalid(
                "database.sslkey",
                "a client certificate and its key are set together (sslcert and sslkey)",
            ));
        }
        if self.database.sslmode == "verify-ca" && self.database.sslrootcert.is_empty() {
            return Err(invalid(
                "database.sslrootcert",
                "verify-ca needs the CA that signed the server's certificate (libpq refuses it without one too); verify-full alone uses the system trust store",
            ));
        }
        if !["json", "text"].contains(&self.log.format.as_str()) {
            return Err(invalid("log.format", "must be `json` or `text`"));
        }
        if self.kafka.consumer.max_batches_in_flight > self.database.pool_max_connections as usize {
            return Err(invalid(
                "kafka.consumer.max_batches_in_flight",
                format!(
                    "{} exceeds database.pool_max_connections {}: each batch in flight holds a connection",
                    self.kafka.consumer.max_batches_in_flight, self.database.pool_max_connections
                ),
            ));
        }
        if self.kafka.consumer.retry_initial_backoff_ms > self.kafka.consumer.retry_max_backoff_ms {
            return Err(invalid(
                "kafka.consumer.retry_initial_backoff_ms",
                "must not exceed kafka.consumer.retry_max_backoff_ms",
            ));
        }
        Ok(())
    }

    /// `ingest.max_future_skew` as a duration (validated at load).
    pub fn max_future_skew(&self) -> Duration {
        parse_duration(&self.ingest.max_future_skew).unwrap_or(Duration::from_secs(3600))
    }

    /// The effective configuration with secrets replaced, for `GET /config`.
    pub fn redacted(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        for key in SECRET_KEYS {
            if let Some(p) = v.pointer_mut(key) {
                *p = Value::String("***".into());
            }
        }
        v
    }

    /// The configuration with the secret keys left out, for a file others may read (the
    /// operator's ConfigMap): the secrets come from the environment.
    pub fn without_secrets(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        for key in SECRET_KEYS {
            if let Some((section, field)) = key.rsplit_once('/')
                && let Some(Value::Object(map)) = v.pointer_mut(section)
            {
                map.remove(field);
            }
        }
        v
    }
}

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let yaml: Value =
        audit_manager_crds::yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
            path: shown.clone(),
            source,
        })?;
    let yaml = match yaml {
        Value::Null => Value::Object(Default::default()),
        Value::Object(mut map) => match map.remove("audit_manager") {
            // The original wraps everything in `audit_manager:`.
            Some(inner) if map.is_empty() => inner,
            Some(_) => {
                return Err(invalid(
                    "audit_manager",
                    format!("{shown}: keys beside `audit_manager` are not allowed"),
                ));
            }
            None => Value::Object(map),
        },
        _ => return Err(ConfigError::NotAMapping { path: shown }),
    };
    if !yaml.is_object() {
        return Err(ConfigError::NotAMapping { path: shown });
    }
    Ok(yaml)
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Sets `key` (dotted) from an environment string, typed like the default at that key.
fn set_path(tree: &mut Value, defaults: &Value, key: &str, raw: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    let pointer = format!("/{}", parts.join("/"));
    let value = match defaults.pointer(&pointer) {
        Some(Value::Number(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.trim().parse::<f64>().map(Value::from))
            .map_err(|_| invalid(key, format!("`{raw}` is not a number")))?,
        Some(Value::Bool(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(invalid(key, format!("`{raw}` is not a boolean"))),
        },
        Some(Value::Object(_)) => {
            return Err(invalid(key, "is a section; set one of its keys"));
        }
        // An optional number whose default is unset.
        Some(Value::Null) => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(raw.to_string())),
        Some(_) => Value::String(raw.to_string()),
        None => return Err(invalid(key, "unknown configuration key")),
    };
    if let Some(slot) = tree.pointer_mut(&pointer) {
        *slot = value;
    }
    Ok(())
}

/// Parses `90s`, `15m`, `1h`, `2d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 15m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}` has an unknown unit (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn defaults_follow_the_original() {
        let c = Config::load_from(&env(&[])).expect("defaults load");
        assert_eq!(c.ingest.queue_max_size, 10_000);
        assert_eq!(c.ingest.max_batch_size, 500);
        assert_eq!(c.kafka.topic, "openg2p.audit.events");
        assert_eq!(c.kafka.dlq_topic, "openg2p.audit.dlq");
        assert_eq!(c.kafka.client_id, "openg2p-audit-manager");
        assert_eq!(c.kafka.consumer_group, "openg2p-audit-consumer");
        assert_eq!(c.kafka.consumer.batch_max_records, 500);
        assert_eq!(c.kafka.consumer.flush_interval_ms, 1000);
        assert_eq!(c.kafka.consumer.max_batches_in_flight, 2);
        assert_eq!(c.database.partition_pre_create_months, 3);
        assert_eq!(c.database.partition_retention_months, 84);
        assert_eq!(c.database.partition_check_interval_seconds, 3600);
        assert_eq!(c.max_future_skew(), Duration::from_secs(3600));
    }

    #[test]
    fn env_overrides_yaml_which_overrides_defaults() {
        let f = yaml_file(
            "audit_manager:\n  ingest:\n    queue_max_size: 2000\n    max_batch_size: 100\n  kafka:\n    topic: from.yaml\n",
        );
        let path = f.path().to_string_lossy().to_string();
        let c = Config::load_from(&env(&[
            ("CONFIG_PATH", &path),
            ("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", "3000"),
        ]))
        .expect("load");
        assert_eq!(c.ingest.queue_max_size, 3000, "env wins over YAML");
        assert_eq!(c.ingest.max_batch_size, 100, "YAML wins over defaults");
        assert_eq!(c.kafka.topic, "from.yaml");
    }

    #[test]
    fn plain_db_variables_work_and_layered_ones_win() {
        let c = Config::load_from(&env(&[
            ("DB_HOST", "db.example"),
            ("DB_PORT", "6543"),
            ("DB_PASSWORD", "s3cret"),
            ("AUDIT_MANAGER__DATABASE__HOST", "layered.example"),
        ]))
        .expect("load");
        assert_eq!(c.database.host, "layered.example");
        assert_eq!(c.database.port, 6543);
        assert_eq!(c.database.password, "s3cret");
        assert_eq!(c.redacted()["database"]["password"], "***");
    }

    #[test]
    fn a_numeric_looking_string_stays_a_string() {
        let c =
            Config::load_from(&env(&[("AUDIT_MANAGER__KAFKA__CLIENT_ID", "12345")])).expect("load");
        assert_eq!(c.kafka.client_id, "12345");
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        Config::load_from(&env(pairs))
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = error_of(&[("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", "lots")]);
        assert!(
            e.contains("ingest.queue_max_size") && e.contains("lots"),
            "{e}"
        );
        let e = error_of(&[("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", "0")]);
        assert!(e.contains("ingest.queue_max_size"), "{e}");
        let e = error_of(&[("AUDIT_MANAGER__INGEST__ACK_MODE", "sometimes")]);
        assert!(e.contains("ingest.ack_mode"), "{e}");
        let e = error_of(&[("AUDIT_MANAGER__INGEST__MAX_FUTURE_SKEW", "1 fortnight")]);
        assert!(e.contains("ingest.max_future_skew"), "{e}");
        let e = error_of(&[("AUDIT_MANAGER__KAFKA__NOPE", "x")]);
        assert!(e.contains("kafka.nope") && e.contains("unknown"), "{e}");
        let e = error_of(&[("DB_PORT", "99999")]);
        assert!(e.contains("database.port"), "{e}");
        let e = error_of(&[("AUDIT_MANAGER__KAFKA__PRODUCER__COMPRESSION", "brotli")]);
        assert!(e.contains("kafka.producer.compression"), "{e}");
        let e = error_of(&[("AUDIT_MANAGER__KAFKA__CONSUMER__MAX_BATCHES_IN_FLIGHT", "0")]);
        assert!(e.contains("kafka.consumer.max_batches_in_flight"), "{e}");
        let e = error_of(&[
            ("AUDIT_MANAGER__KAFKA__CONSUMER__MAX_BATCHES_IN_FLIGHT", "3"),
            ("AUDIT_MANAGER__DATABASE__POOL_MAX_CONNECTIONS", "2"),
        ]);
        assert!(
            e.contains("kafka.consumer.max_batches_in_flight")
                && e.contains("database.pool_max_connections"),
            "{e}"
        );
    }

    #[test]
    fn unknown_yaml_keys_are_refused_with_their_path() {
        let f = yaml_file("ingest:\n  queue_max_sise: 5\n");
        let path = f.path().to_string_lossy().to_string();
        let e = error_of(&[("CONFIG_PATH", &path)]);
        assert!(e.contains("ingest") && e.contains("queue_max_sise"), "{e}");
    }

    #[test]
    fn the_documented_defaults_file_matches_the_built_in_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/default.yaml");
        let c = Config::load_from(&env(&[("CONFIG_PATH", path)])).expect("default.yaml loads");
        assert_eq!(
            serde_json::to_value(&c).expect("json"),
            serde_json::to_value(Config::default()).expect("json"),
            "config/default.yaml documents every key with the built-in default"
        );
        let text = std::fs::read_to_string(path).expect("read");
        let documented: Value =
            audit_manager_crds::yaml::from_str::<Value>(&text).expect("yaml")["audit_manager"]
                .clone();
        fn keys(v: &Value, prefix: &str, out: &mut Vec<String>) {
            if let Value::Object(m) = v {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(v, &p, out);
                }
            } else {
                out.push(prefix.to_string());
            }
        }
        let (mut want, mut have) = (vec![], vec![]);
        keys(
            &serde_json::to_value(Config::default()).expect("json"),
            "",
            &mut want,
        );
        keys(&documented, "", &mut have);
        assert_eq!(have, want, "every key appears in config/default.yaml");
    }

    fn error_text(pairs: &[(&str, &str)]) -> String {
        Config::load_from(&env(pairs))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn kafka_security_mistakes_are_refused_by_key() {
        let e = error_text(&[("AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL", "SASL-SSL")]);
        assert!(e.contains("kafka.security.protocol"), "{e}");
        let e = error_text(&[("AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL", "sasl_ssl")]);
        assert!(e.contains("kafka.security.sasl_username"), "{e}");
        let e = error_text(&[
            ("AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL", "sasl_ssl"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SASL_USERNAME", "u"),
        ]);
        assert!(e.contains("kafka.security.sasl_password_file"), "{e}");
        let e = error_text(&[
            ("AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL", "sasl_ssl"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SASL_USERNAME", "u"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SASL_PASSWORD", "p"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SASL_MECHANISM", "GSSAPI"),
        ]);
        assert!(e.contains("kafka.security.sasl_mechanism"), "{e}");
        // TLS material with a cleartext protocol would be silently unused.
        let e = error_text(&[("AUDIT_MANAGER__KAFKA__SECURITY__SSL_CA_FILE", "/ca.crt")]);
        assert!(
            e.contains("kafka.security.ssl_ca_file") && e.contains("does not use TLS"),
            "{e}"
        );
        let e = error_text(&[
            ("AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL", "ssl"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SSL_CERT_FILE", "/tls.crt"),
        ]);
        assert!(e.contains("kafka.security.ssl_key_file"), "{e}");
        let e = error_text(&[
            ("AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL", "sasl_plaintext"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SASL_USERNAME", "u"),
            (
                "AUDIT_MANAGER__KAFKA__SECURITY__SASL_PASSWORD_FILE",
                "/nowhere/password",
            ),
        ]);
        assert!(e.contains("/nowhere/password"), "{e}");
    }

    #[test]
    fn database_tls_mistakes_are_refused_by_key() {
        let e = error_text(&[("AUDIT_MANAGER__DATABASE__SSLMODE", "verify-ca")]);
        assert!(e.contains("database.sslrootcert"), "{e}");
        let e = error_text(&[("AUDIT_MANAGER__DATABASE__SSLCERT", "/tls.crt")]);
        assert!(e.contains("database.sslkey"), "{e}");
        let e = error_text(&[("AUDIT_MANAGER__DATABASE__SSLMODE", "allow")]);
        assert!(e.contains("database.sslmode"), "{e}");
    }

    #[test]
    fn the_sasl_password_is_read_from_its_file_and_never_shown() {
        let f = yaml_file("s3cret-pw\n");
        let path = f.path().to_string_lossy().to_string();
        let c = Config::load_from(&env(&[
            ("AUDIT_MANAGER__KAFKA__SECURITY__PROTOCOL", "sasl_ssl"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SASL_USERNAME", "audit"),
            ("AUDIT_MANAGER__KAFKA__SECURITY__SASL_PASSWORD_FILE", &path),
        ]))
        .expect("load");
        assert_eq!(c.kafka.security.sasl_password, "s3cret-pw");
        let shown = c.redacted().to_string();
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        let rendered = c.without_secrets().to_string();
        assert!(!rendered.contains("s3cret-pw"), "{rendered}");
    }
}
