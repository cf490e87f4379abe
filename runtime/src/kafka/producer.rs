//! Drains the ingest queue into Kafka: in order, in batches, and never dropping an event.
//!
//! Events are handed to librdkafka in queue order (so one key's events keep their order), with
//! idempotence on, acks=all and no delivery timeout; an event whose delivery still fails is
//! handed over again after a backoff. Its queue permit is released only once Kafka has
//! acknowledged it.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;

use crate::config::KafkaConfig;
use crate::ingest::queue::Queued;
use crate::metrics::Metrics;

/// Most events handed to librdkafka and not yet acknowledged at one time. librdkafka keeps its
/// own copy of each, so this bounds the events held twice while the broker is away (about
/// 6 MB); 10,000 in flight still keeps a local broker busy at over 200,000 events/s.
const MAX_IN_FLIGHT: usize = 10_000;

/// Builds the idempotent producer the publisher and the DLQ use.
pub fn build_producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", &kafka.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // No delivery deadline: librdkafka keeps retrying while the cluster is away, and the
        // event keeps its queue permit until it is acknowledged.
        .set("message.timeout.ms", "0")
        .set("linger.ms", kafka.producer.linger_ms.to_string())
        .set("compression.type", &kafka.producer.compression)
        .set("queue.buffering.max.messages", "1000000")
        .create()
}

/// Publishes queued events until the queue is closed and everything in it is acknowledged.
pub struct Publisher {
    pub producer: FutureProducer,
    pub topic: String,
    pub batch_max_records: usize,
    pub metrics: Arc<Metrics>,
}

type Delivery =
    std::pin::Pin<Box<dyn Future<Output = (Queued, Result<(), KafkaError>)> + Send + Sync>>;

impl Publisher {
    /// Runs until `queue` is closed and drained, then flushes the producer.
    pub async fn run(self, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let mut batch = Vec::with_capacity(self.batch_max_records);
        let mut open = true;
        let mut backoff = Backoff::new();
        loop {
            tokio::select! {
                biased;
                Some((item, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    match outcome {
                        Ok(()) => {
                            backoff.reset();
                            self.delivered(item);
                        }
                        Err(e) => {
                            self.metrics.publish_failures.inc();
                            tracing::warn!(event_id = %item.id, error = %e, "publish failed; retrying");
                            tokio::time::sleep(backoff.next()).await;
                            in_flight.push(self.hand_over(item).await);
                        }
                    }
                }
                n = queue.recv_many(&mut batch, self.batch_max_records),
                    if open && in_flight.len() < MAX_IN_FLIGHT =>
                {
                    if n == 0 {
                        open = false;
                    }
                    for item in batch.drain(..) {
                        in_flight.push(self.hand_over(item).await);
                    }
                }
                else => break,
            }
            if !open && in_flight.is_empty() {
                break;
            }
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
        tracing::info!("publisher drained the queue");
    }

    /// Enqueues one event in librdkafka, waiting while its local queue is full.
    async fn hand_over(&self, item: Queued) -> Delivery {
        let mut backoff = Backoff::new();
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(item.key.as_bytes())
                .payload(&*item.payload);
            match self.producer.send_result(record) {
                Ok(future) => return Box::pin(await_delivery(item, future)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    self.metrics.publish_failures.inc();
                    tracing::warn!(event_id = %item.id, error = %e, "cannot hand event to Kafka; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    fn delivered(&self, mut item: Queued) {
        self.metrics.published.inc();
        self.metrics
            .publish_latency
            .observe(item.enqueued_at.elapsed().as_secs_f64());
        if let Some(ack) = item.acked.take() {
            let _ = ack.send(());
        }
        // Dropping the item returns its queue permit.
    }
}

async fn await_delivery(item: Queued, future: DeliveryFuture) -> (Queued, Result<(), KafkaError>) {
    let outcome = match future.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_canceled) => Err(KafkaError::Canceled),
    };
    (item, outcome)
}

/// Capped exponential backoff: 100 ms doubling to 10 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(100))
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        d
    }

    fn reset(&mut self) {
        *self = Backoff::new();
    }
}
