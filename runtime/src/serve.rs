//! `audit-manager serve`: wires the components together and runs them until SIGTERM/SIGINT,
//! then drains: readiness off, new events refused (AUD-005), queue published, exit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::Producer;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::health::{Check, Health};
use crate::http::router::{admin_router, metrics_router, router};
use crate::http::server::Server;
use crate::http::state::AppState;
use crate::ingest::queue::IngestQueue;
use crate::kafka::producer::{IngestProducer, Publisher, build_ingest_producer, build_producer};
use crate::metrics::Metrics;
use crate::sink::{Sink, build_consumer};

/// Runs `serve` until a stop signal, then drains and returns.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (queue, queue_rx) =
        IngestQueue::new(config.ingest.queue_max_size, config.ingest.queue_max_bytes);
    let queue = Arc::new(queue);

    let mut publisher = None;
    if config.components.ingest {
        let (producer, retries) = build_ingest_producer(&config.kafka, Arc::clone(&metrics))
            .context("creating the Kafka producer")?;
        tokio::spawn(watch_kafka(producer.clone(), Arc::clone(&health)));
        let task = Publisher {
            producer,
            retries,
            topic: config.kafka.topic.clone(),
            batch_max_records: config.kafka.producer.batch_max_records,
        };
        health.set_publisher_alive(true);
        let health = Arc::clone(&health);
        publisher = Some(tokio::spawn(async move {
            task.run(queue_rx).await;
            health.set_publisher_alive(false);
        }));
    }

    let (stop_sink, sink_stop) = tokio::sync::watch::channel(false);
    let mut sink = None;
    let mut background = Vec::new();
    if config.components.consumer || config.components.maintenance {
        let pool = crate::db::pool(&config.database).context("configuring the database pool")?;
        if config.components.consumer {
            let consumer = build_consumer(&config).context("creating the Kafka consumer")?;
            let dlq = build_producer(&config.kafka).context("creating the DLQ producer")?;
            background.push(tokio::spawn(watch_database(
                pool.clone(),
                Arc::clone(&health),
            )));
            let task = Sink {
                consumer: Arc::new(consumer),
                pool: pool.clone(),
                dlq,
                config: Arc::clone(&config),
                metrics: Arc::clone(&metrics),
                health: Arc::clone(&health),
            };
            sink = Some(tokio::spawn(task.run(sink_stop)));
        }
        if config.components.maintenance {
            background.push(tokio::spawn(maintain_periodically(
                pool,
                Arc::clone(&config),
            )));
        }
    }

    let address = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| {
            format!("binding the HTTP listener on {address} (server.host, server.port)")
        })?;
    let auth = Authenticator::start(&config.auth).await;
    let state = Arc::new(
        AppState::new(
            Arc::clone(&config),
            Arc::clone(&queue),
            Arc::clone(&metrics),
            Arc::clone(&health),
        )
        .with_auth(auth),
    );
    // Beside the service port: the admin listener (`/config`, loopback by default) and, when
    // it has a port of its own, `/metrics`.
    let server_config = &config.server;
    let mut side = Vec::new();
    for (host, port, app, keys) in [
        (
            &server_config.admin_host,
            server_config.admin_port,
            admin_router(Arc::clone(&state)),
            "server.admin_host, server.admin_port; 0 switches it off",
        ),
        (
            &server_config.host,
            server_config.metrics_port,
            metrics_router(Arc::clone(&state)),
            "server.host, server.metrics_port; 0 serves /metrics on server.port",
        ),
    ] {
        if port == 0 {
            continue;
        }
        let address = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding a listener on {address} ({keys})"))?;
        side.push(Server::spawn(listener, app, server_config));
    }
    let server = Server::spawn(listener, router(state), &config.server);
    health.mark_started();
    tracing::info!(%address, ingest = config.components.ingest, consumer = config.components.consumer, auth = ?config.auth.mode, "audit-manager serving");

    let signal = stop_signal().await;
    // One deadline for everything below, kept under the pod's grace period.
    let began = Instant::now();
    let deadline = began + Duration::from_secs(config.server.shutdown_timeout_seconds);
    tracing::info!(
        signal,
        depth = queue.depth(),
        "stopping: readiness off, draining the queue to Kafka"
    );
    health.mark_shutting_down();
    queue.close();
    let _ = stop_sink.send(true);
    // The queue drains to Kafka while the consumer finishes its batch; requests meanwhile
    // get 503 AUD-005 (or their Kafka acknowledgement), and the listener closes last.
    tokio::join!(
        drain_publisher(publisher, &queue, deadline),
        stop_consumer(sink, deadline)
    );
    for task in background {
        task.abort();
    }
    let last = deadline.max(Instant::now() + Duration::from_secs(1));
    for listener in side {
        listener.stop(last).await;
    }
    let cut = server.stop(last).await;
    tracing::info!(
        cut,
        millis = began.elapsed().as_millis() as u64,
        "HTTP server stopped"
    );
    if queue.depth() > 0 {
        anyhow::bail!(
            "{} accepted events could not be published before shutdown (server.shutdown_timeout_seconds)",
            queue.depth()
        );
    }
    Ok(())
}

/// Waits for the publisher to hand every queued event to Kafka, until `deadline`.
async fn drain_publisher(
    publisher: Option<JoinHandle<()>>,
    queue: &IngestQueue,
    deadline: Instant,
) {
    let Some(publisher) = publisher else {
        return;
    };
    let (started, depth) = (Instant::now(), queue.depth());
    match tokio::time::timeout_at(deadline, publisher).await {
        Ok(_) => tracing::info!(
            events = depth,
            millis = started.elapsed().as_millis() as u64,
            "queue drained to Kafka"
        ),
        Err(_) => tracing::error!(
            remaining = queue.depth(),
            "queue not drained within server.shutdown_timeout_seconds; exiting with events unpublished"
        ),
    }
}

/// Waits for the consumer to write and commit its batch in flight, until `deadline`.
async fn stop_consumer(
    sink: Option<JoinHandle<Result<(), rdkafka::error::KafkaError>>>,
    deadline: Instant,
) {
    let Some(sink) = sink else {
        return;
    };
    match tokio::time::timeout_at(deadline, sink).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "the consumer failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "the consumer task failed"),
        Err(_) => tracing::error!(
            "the consumer did not stop within server.shutdown_timeout_seconds; its batch stays uncommitted in Kafka and is written again by the next consumer"
        ),
    }
}

/// Keeps `Health::kafka_connected` current by asking a broker for metadata.
async fn watch_kafka(producer: IngestProducer, health: Arc<Health>) {
    loop {
        let p = producer.clone();
        let ok = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(3))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok != health.kafka_connected() {
            if ok {
                tracing::info!("Kafka reachable");
            } else {
                tracing::warn!("Kafka unreachable: events stay queued until it is back");
            }
        }
        health.set_kafka_connected(ok);
        tokio::time::sleep(Duration::from_secs(if ok { 10 } else { 2 })).await;
    }
}

/// Keeps the database part of `/health` current while the consumer is idle.
async fn watch_database(pool: sqlx::PgPool, health: Arc<Health>) {
    loop {
        let check = match sqlx::query("SELECT 1").execute(&pool).await {
            Ok(_) => Check {
                ok: true,
                error: None,
            },
            Err(e) => Check {
                ok: false,
                error: Some(e.to_string()),
            },
        };
        health.set_database(check);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Partition maintenance every `database.partition_check_interval_seconds`, under the
/// advisory lock (replicas and the CronJob never step on each other).
async fn maintain_periodically(pool: sqlx::PgPool, config: Arc<Config>) {
    let d = &config.database;
    loop {
        let result = async {
            let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
            crate::db::partitions::maintain(
                &mut conn,
                chrono::Utc::now(),
                d.partition_retention_months,
                d.partition_pre_create_months,
            )
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(report) => tracing::info!(%report, "partition maintenance"),
            Err(e) => {
                tracing::warn!(error = %e, "partition maintenance failed; retrying next interval")
            }
        }
        tokio::time::sleep(Duration::from_secs(d.partition_check_interval_seconds)).await;
    }
}

/// Waits for SIGTERM or SIGINT and names it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; running until killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
