//! Drains the ingest queue into Kafka: in order, in batches, and never dropping an event.
//!
//! Events are handed to librdkafka in queue order (so one key's events keep their order), with
//! idempotence on, acks=all and no delivery timeout. librdkafka's delivery report settles each
//! event on its polling thread, without waking the async runtime: on success the metrics are
//! counted, an `ack_mode: kafka` request is told, and the event's queue permit is released; on
//! failure the event goes back to the publisher, which hands it over again after a backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, Producer, ProducerContext, ThreadedProducer,
};
use tokio::sync::{Semaphore, mpsc};

use crate::config::KafkaConfig;
use crate::event::normalize;
use crate::ingest::queue::Queued;
use crate::metrics::Metrics;

/// Most events handed to librdkafka and not yet acknowledged at one time. librdkafka keeps its
/// own copy of each, so this bounds the events held twice while the broker is away (about
/// 6 MB); 10,000 in flight still keeps a local broker busy at over 200,000 events/s.
const MAX_IN_FLIGHT: usize = 10_000;

/// The settings every producer of this process shares: idempotent, acks=all, no delivery
/// deadline (librdkafka keeps retrying while the cluster is away).
fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = super::client_config(&kafka.bootstrap_servers, &kafka.security);
    config
        .set("client.id", &kafka.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", kafka.producer.linger_ms.to_string())
        .set("compression.type", &kafka.producer.compression)
        .set("queue.buffering.max.messages", "1000000");
    config
}

/// Builds the idempotent producer the DLQ and `dlq replay` use.
pub fn build_producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    producer_config(kafka).create()
}

/// The ingest producer: delivery reports settle events through [`Deliveries`].
pub type IngestProducer = ThreadedProducer<Deliveries>;

/// Builds the ingest producer and the receiver of events whose delivery failed.
pub fn build_ingest_producer(
    kafka: &KafkaConfig,
    metrics: Arc<Metrics>,
) -> Result<(IngestProducer, mpsc::UnboundedReceiver<Box<Queued>>), KafkaError> {
    let (retry, retries) = mpsc::unbounded_channel();
    let context = Deliveries {
        metrics,
        retry,
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        unsettled: AtomicUsize::new(0),
    };
    let producer = ThreadedProducer::from_config_and_context(&producer_config(kafka), context)?;
    Ok((producer, retries))
}

/// What happens when librdkafka reports on an event (on its polling thread).
pub struct Deliveries {
    metrics: Arc<Metrics>,
    /// Failed events, back to the publisher for another attempt.
    retry: mpsc::UnboundedSender<Box<Queued>>,
    /// One permit per event handed to librdkafka and not yet reported on.
    in_flight: Semaphore,
    /// Events taken from the queue and not yet acknowledged by Kafka.
    unsettled: AtomicUsize,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Queued>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut item: Box<Queued>) {
        match result {
            Ok(_) => {
                self.metrics.published.inc();
                self.metrics
                    .publish_latency
                    .observe(item.enqueued_at.elapsed().as_secs_f64());
                if let Some(ack) = item.acked.take() {
                    let _ = ack.send(());
                }
                // Dropping the item returns its queue permit.
                drop(item);
                self.unsettled.fetch_sub(1, Ordering::AcqRel);
            }
            Err((e, message)) => {
                item.key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                item.payload = message.payload().unwrap_or_default().to_vec();
                self.metrics.publish_failures.inc();
                tracing::warn!(event_id = %item.id, error = %e, "publish failed; retrying");
                // The publisher lives until every event is settled, so the channel is open;
                // if the process is being torn down anyway, the event was never acknowledged.
                let _ = self.retry.send(item);
            }
        }
        self.in_flight.add_permits(1);
    }
}

/// Publishes queued events until the queue is closed and everything in it is acknowledged.
pub struct Publisher {
    pub producer: IngestProducer,
    pub retries: mpsc::UnboundedReceiver<Box<Queued>>,
    pub topic: String,
    pub batch_max_records: usize,
}

impl Publisher {
    /// Runs until `queue` is closed and every event taken from it is acknowledged by Kafka.
    pub async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let mut batch = Vec::with_capacity(self.batch_max_records);
        let mut failed = Vec::new();
        let mut open = true;
        let mut backoff = Backoff::new();
        loop {
            tokio::select! {
                biased;
                _ = self.retries.recv_many(&mut failed, MAX_IN_FLIGHT) => {
                    // Every event that failed so far waits one backoff, then goes again in
                    // the order it had; further failures in a row wait longer.
                    tokio::time::sleep(backoff.next()).await;
                    while let Ok(more) = self.retries.try_recv() {
                        failed.push(more);
                    }
                    self.hand_over_all(failed.len(), failed.drain(..)).await;
                }
                n = queue.recv_many(&mut batch, self.batch_max_records), if open => {
                    if n == 0 {
                        open = false;
                        continue;
                    }
                    if self.retries.is_empty() {
                        backoff.reset();
                    }
                    self.producer.context().unsettled.fetch_add(n, Ordering::AcqRel);
                    self.hand_over_all(n, batch.drain(..).map(Box::new)).await;
                }
                // Closed: wait for the last acknowledgements (or failures to retry).
                _ = tokio::time::sleep(Duration::from_millis(5)), if !open => {}
            }
            if !open && self.producer.context().unsettled.load(Ordering::Acquire) == 0 {
                break;
            }
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
        tracing::info!("publisher drained the queue");
    }

    /// Hands `n` events over in order, first waiting while more than `MAX_IN_FLIGHT - n`
    /// events are with librdkafka; each delivery report returns one permit.
    async fn hand_over_all(&self, n: usize, items: impl Iterator<Item = Box<Queued>>) {
        let in_flight = &self.producer.context().in_flight;
        // At most MAX_IN_FLIGHT events are ever outstanding, so `n` fits.
        let n = n.min(MAX_IN_FLIGHT) as u32;
        if let Ok(permits) = in_flight.acquire_many(n).await {
            permits.forget();
        }
        for item in items {
            self.hand_over(item).await;
        }
    }

    /// Enqueues one event in librdkafka, waiting while its local queue is full. librdkafka
    /// copies key and payload, so the event travels on without them (its delivery report
    /// carries them back if it has to be sent again).
    async fn hand_over(&self, mut item: Box<Queued>) {
        let mut backoff = Backoff::new();
        let key = std::mem::take(&mut item.key);
        let payload = std::mem::take(&mut item.payload);
        loop {
            let headers = record_headers(item.normalized.as_deref(), item.principal.as_deref());
            let mut record = BaseRecord::with_opaque_to(&self.topic, item)
                .key(key.as_str())
                .payload(payload.as_slice());
            if let Some(headers) = headers {
                record = record.headers(headers);
            }
            match self.producer.send(record) {
                Ok(()) => return,
                Err((e, record)) => {
                    item = record.delivery_opaque;
                    if let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = e {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        self.producer.context().metrics.publish_failures.inc();
                        tracing::warn!(event_id = %item.id, error = %e, "cannot hand event to Kafka; retrying");
                        tokio::time::sleep(backoff.next()).await;
                    }
                }
            }
        }
    }
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

/// The headers of a record: what the ingest normalized and who sent it, when known.
fn record_headers(normalized: Option<&str>, principal: Option<&str>) -> Option<OwnedHeaders> {
    let count = usize::from(normalized.is_some()) + usize::from(principal.is_some());
    if count == 0 {
        return None;
    }
    // Sized to what it holds: librdkafka allocates the list's slots up front (5 by default).
    let mut headers = OwnedHeaders::new_with_capacity(count);
    for (key, value) in [
        (normalize::HEADER, normalized),
        (super::headers::PRINCIPAL, principal),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    Some(headers)
}
