//! `audit-manager serve`: wires the components together and runs them until SIGTERM/SIGINT,
//! then drains: readiness off, new events refused (AUD-005), queue published, exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::health::Health;
use crate::ingest::http::{AppState, router};
use crate::ingest::queue::IngestQueue;
use crate::kafka::producer::{Publisher, build_producer};
use crate::metrics::Metrics;

/// Runs `serve` until a stop signal, then drains and returns.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (queue, queue_rx) = IngestQueue::new(config.ingest.queue_max_size);
    let queue = Arc::new(queue);

    let mut publisher = None;
    if config.components.ingest {
        let producer = build_producer(&config.kafka).context("creating the Kafka producer")?;
        tokio::spawn(watch_kafka(producer.clone(), Arc::clone(&health)));
        let task = Publisher {
            producer,
            topic: config.kafka.topic.clone(),
            batch_max_records: config.kafka.producer.batch_max_records,
            metrics: Arc::clone(&metrics),
        };
        health.set_publisher_alive(true);
        let health = Arc::clone(&health);
        publisher = Some(tokio::spawn(async move {
            task.run(queue_rx).await;
            health.set_publisher_alive(false);
        }));
    }

    let address = format!("{}:{}", config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| {
            format!("binding the HTTP listener on {address} (server.host, server.port)")
        })?;
    let state = Arc::new(AppState {
        config: Arc::clone(&config),
        queue: Arc::clone(&queue),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
    });
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });
    health.mark_started();
    tracing::info!(%address, ingest = config.components.ingest, consumer = config.components.consumer, "audit-manager serving");

    let signal = stop_signal().await;
    tracing::info!(
        signal,
        depth = queue.depth(),
        "stopping: readiness off, draining the queue to Kafka"
    );
    health.mark_shutting_down();
    queue.close();
    let started = Instant::now();
    let depth = queue.depth();
    if let Some(publisher) = publisher {
        let limit = Duration::from_secs(config.server.shutdown_timeout_seconds);
        match tokio::time::timeout(limit, publisher).await {
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
    let _ = stop_http.send(());
    server
        .await
        .context("the HTTP server task failed")?
        .context("the HTTP server failed")?;
    if queue.depth() > 0 {
        anyhow::bail!(
            "{} accepted events could not be published before shutdown",
            queue.depth()
        );
    }
    Ok(())
}

/// Keeps `Health::kafka_connected` current by asking a broker for metadata.
async fn watch_kafka(producer: FutureProducer, health: Arc<Health>) {
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
