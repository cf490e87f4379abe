//! What the runtime knows about its own components, for `/health`, the probes and the
//! operator's `Healthy` condition.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde_json::{Value, json};

/// Shared, lock-light component state; every task updates its own part.
#[derive(Default)]
pub struct Health {
    started: AtomicBool,
    shutting_down: AtomicBool,
    publisher_alive: AtomicBool,
    kafka_connected: AtomicBool,
    consumer_alive: AtomicBool,
    database: Mutex<Check>,
    consumer_detail: Mutex<ConsumerDetail>,
}

/// The last result of a periodic check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Check {
    pub ok: bool,
    pub error: Option<String>,
}

/// What the consumer last reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsumerDetail {
    /// Set while a batch is being retried after a database error.
    pub retrying: Option<String>,
    pub lag_total: Option<i64>,
}

/// Which components this process runs.
#[derive(Debug, Clone, Copy)]
pub struct Enabled {
    pub ingest: bool,
    pub consumer: bool,
}

impl Health {
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn mark_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn set_publisher_alive(&self, alive: bool) {
        self.publisher_alive.store(alive, Ordering::SeqCst);
    }

    pub fn set_kafka_connected(&self, connected: bool) {
        self.kafka_connected.store(connected, Ordering::SeqCst);
    }

    pub fn set_consumer_alive(&self, alive: bool) {
        self.consumer_alive.store(alive, Ordering::SeqCst);
    }

    pub fn set_database(&self, check: Check) {
        *self.database.lock().unwrap_or_else(|p| p.into_inner()) = check;
    }

    pub fn set_consumer_detail(&self, detail: ConsumerDetail) {
        *self
            .consumer_detail
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = detail;
    }

    pub fn update_consumer_detail(&self, f: impl FnOnce(&mut ConsumerDetail)) {
        f(&mut self
            .consumer_detail
            .lock()
            .unwrap_or_else(|p| p.into_inner()));
    }

    pub fn kafka_connected(&self) -> bool {
        self.kafka_connected.load(Ordering::SeqCst)
    }

    /// Ready to take traffic: started and not draining. Never depends on PostgreSQL, so a
    /// database outage does not take pods out of service (events wait in Kafka).
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::SeqCst) && !self.shutting_down.load(Ordering::SeqCst)
    }

    /// Alive: the long-running tasks this process is responsible for still run.
    pub fn live(&self, enabled: Enabled) -> bool {
        if !self.started.load(Ordering::SeqCst) || self.shutting_down.load(Ordering::SeqCst) {
            return true;
        }
        (!enabled.ingest || self.publisher_alive.load(Ordering::SeqCst))
            && (!enabled.consumer || self.consumer_alive.load(Ordering::SeqCst))
    }

    /// The component report of `GET /health` and whether everything enabled is healthy, with
    /// the catalogue code of the first problem.
    pub fn report(
        &self,
        enabled: Enabled,
        depth: usize,
        capacity: usize,
    ) -> (Value, Vec<(&'static str, String)>) {
        let mut problems = Vec::new();
        if !self.ready() {
            problems.push((
                "AUD-005",
                "not ready: starting up or shutting down".to_string(),
            ));
        }
        let db = self
            .database
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let consumer = self
            .consumer_detail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let publisher_alive = self.publisher_alive.load(Ordering::SeqCst);
        let kafka = self.kafka_connected();
        let consumer_alive = self.consumer_alive.load(Ordering::SeqCst);
        if enabled.ingest {
            if !publisher_alive {
                problems.push(("AUD-005", "the Kafka publisher is not running".into()));
            }
            if !kafka {
                problems.push((
                    "AUD-005",
                    "the Kafka producer cannot reach any broker".into(),
                ));
            }
        }
        if enabled.consumer {
            if !consumer_alive {
                problems.push(("AUD-005", "the Kafka consumer is not running".into()));
            }
            if !db.ok {
                problems.push((
                    "AUD-006",
                    format!(
                        "database check failed: {}",
                        db.error.clone().unwrap_or_else(|| "not checked yet".into())
                    ),
                ));
            }
        }
        let report = json!({
            "status": if problems.is_empty() { "ok" } else { "degraded" },
            "ready": self.ready(),
            "components": {
                "queue": {"depth": depth, "capacity": capacity},
                "producer": {"enabled": enabled.ingest, "running": publisher_alive, "connected": kafka},
                "consumer": {"enabled": enabled.consumer, "running": consumer_alive,
                             "retrying": consumer.retrying, "lag": consumer.lag_total},
                "database": {"enabled": enabled.consumer, "reachable": db.ok, "error": db.error},
            }
        });
        (report, problems)
    }
}
