//! The Kafka → PostgreSQL sink: batches records, maps them to rows, inserts each batch in one
//! statement with `ON CONFLICT DO NOTHING`, and commits offsets only after the database commit.
//!
//! A record that cannot become a row (not JSON, not a valid event, no partition for its time)
//! goes to the DLQ with headers naming why and where it came from; its offset is committed only
//! once the DLQ has it. A database error keeps the batch and retries it with capped exponential
//! backoff while fetching is paused: nothing is skipped and nothing is committed past it.

mod decode;
pub mod dlq;

pub use decode::{Poison, Told, decode};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::Config;
use crate::db::partitions::{self, Month};
use crate::db::rows;
use crate::event::Limits;
use crate::event::normalize;
use crate::event::row::Row;
use crate::health::{Check, Health};
use crate::kafka::headers;
use crate::metrics::Metrics;

/// Creates the group consumer (manual commits, from the earliest offset for a new group).
pub fn build_consumer(config: &Config) -> Result<StreamConsumer, KafkaError> {
    crate::kafka::client_config(&config.kafka.bootstrap_servers, &config.kafka.security)
        .set("group.id", &config.kafka.consumer_group)
        .set("client.id", &config.kafka.client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .create()
}

/// The next offset to commit, per partition.
type Offsets = BTreeMap<i32, i64>;

/// A batch: filled with records decoded as they arrive, cut at its size or deadline, then
/// written.
#[derive(Default)]
struct Batch {
    offsets: Offsets,
    good: Vec<(Row, OwnedMessage)>,
    poison: Vec<(OwnedMessage, Poison)>,
    /// The clock the batch is validated against: its first record's arrival.
    now: DateTime<Utc>,
    deadline: Option<tokio::time::Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.good.len() + self.poison.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Commits batches in the order they were cut, whatever order their writes end in.
#[derive(Default)]
struct InOrder {
    /// The sequence number of the next batch cut.
    issued: u64,
    /// The sequence number of the next batch to commit.
    next: u64,
    /// Writes that ended before an earlier one: their offsets, or None if stopped unwritten.
    waiting: BTreeMap<u64, Option<Offsets>>,
    /// A batch could not be written: nothing is committed from then on.
    failed: bool,
}

impl InOrder {
    fn issue(&mut self) -> u64 {
        self.issued += 1;
        self.issued - 1
    }

    /// Records a finished write and commits every batch now complete in order; false once a
    /// batch could not be written (then nothing after it is ever committed).
    fn finished(
        &mut self,
        done: Result<(u64, Option<Offsets>), tokio::task::JoinError>,
        mut commit: impl FnMut(&Offsets),
    ) -> bool {
        match done {
            Ok((seq, result)) => {
                self.waiting.insert(seq, result);
            }
            Err(e) => {
                tracing::error!(error = %e, "a batch write task failed; committing nothing more");
                self.failed = true;
            }
        }
        while !self.failed {
            match self.waiting.remove(&self.next) {
                Some(Some(offsets)) => {
                    commit(&offsets);
                    self.next += 1;
                }
                Some(None) => self.failed = true,
                None => break,
            }
        }
        !self.failed
    }
}

/// The consuming half of `serve`.
pub struct Sink {
    pub consumer: Arc<StreamConsumer>,
    pub pool: PgPool,
    pub dlq: FutureProducer,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Sink {
    /// Consumes until `stop` turns true, then finishes the batches in hand and commits them.
    ///
    /// Up to `max_batches_in_flight` batches are written at once while the next one fills.
    /// The statement size follows the backlog: a batch is cut at `batch_max_records` (or
    /// `flush_interval_ms` after its first record) as soon as a writer is free; while every
    /// writer is busy it keeps filling, up to `batch_max_records_behind`. A write that ends
    /// frees its writer at once, whichever batch it was; offsets are still committed strictly
    /// in batch order, each as soon as its batch and every batch before it are in the database
    /// (or the DLQ).
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), KafkaError> {
        self.consumer.subscribe(&[&self.config.kafka.topic])?;
        self.health.set_consumer_alive(true);
        let lag = tokio::spawn(watch_lag(
            Arc::clone(&self.consumer),
            self.config.kafka.topic.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(&self.health),
        ));
        let sink = Arc::new(self);
        let consumer = &sink.config.kafka.consumer;
        let (low, high) = (
            consumer.batch_max_records,
            consumer
                .batch_max_records_behind
                .max(consumer.batch_max_records),
        );
        let flush = Duration::from_millis(consumer.flush_interval_ms);
        let depth = consumer.max_batches_in_flight.max(1);
        // Stored events are re-validated without a size limit (nothing is serialized).
        let limits = Limits {
            max_event_bytes: usize::MAX,
            max_future_skew: sink.config.max_future_skew(),
            retention_months: sink.config.database.partition_retention_months,
        };
        let known = Arc::new(Mutex::new(HashSet::new()));
        let mut writing = FuturesUnordered::new();
        let mut order = InOrder::default();
        // The batch being filled lives here, outside the select below, so nothing received is
        // ever dropped when another branch wins. Each record is decoded as it arrives, so a
        // batch is ready to write the moment it is cut.
        let mut batch = Batch::default();
        let mut stopping = *stop.borrow();
        loop {
            let room = writing.len() < depth;
            let due = batch
                .deadline
                .is_some_and(|d| d <= tokio::time::Instant::now());
            if room && !batch.is_empty() && (batch.len() >= low || due || stopping) {
                let full = std::mem::take(&mut batch);
                let (me, stop, known) = (Arc::clone(&sink), stop.clone(), Arc::clone(&known));
                let seq = order.issue();
                writing.push(tokio::spawn(async move {
                    let mut stop = stop;
                    (seq, me.write(full, &known, &mut stop).await)
                }));
                continue;
            }
            if stopping && batch.is_empty() {
                break;
            }
            let deadline = batch.deadline;
            let flush_due = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = writing.next(), if !writing.is_empty() => {
                    if !order.finished(done, |offsets| sink.commit(offsets)) {
                        // Stopped while the database was failing: commit nothing more.
                        break;
                    }
                }
                _ = stop.changed(), if !stopping => stopping = true,
                message = sink.consumer.recv(), if !stopping && batch.len() < high => match message {
                    Ok(m) => {
                        sink.add(&mut batch, m, &limits, flush);
                        // Take what librdkafka already holds without another round of the
                        // select (and its timer) per record.
                        while batch.len() < high {
                            match sink.consumer.recv().now_or_never() {
                                Some(Ok(m)) => sink.add(&mut batch, m, &limits, flush),
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "consumer error");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = flush_due, if room => {}
            }
        }
        // In order: once one batch could not be written, later ones are not committed.
        while let Some(done) = writing.next().await {
            order.finished(done, |offsets| sink.commit(offsets));
        }
        lag.abort();
        sink.health.set_consumer_alive(false);
        tracing::info!("consumer stopped");
        Ok(())
    }

    /// Decodes a received record into the batch being filled.
    fn add(
        &self,
        batch: &mut Batch,
        message: BorrowedMessage<'_>,
        limits: &Limits,
        flush: Duration,
    ) {
        if batch.deadline.is_none() {
            batch.deadline = Some(tokio::time::Instant::now() + flush);
            batch.now = Utc::now();
        }
        let next = batch.offsets.entry(message.partition()).or_insert(0);
        *next = (*next).max(message.offset() + 1);
        let told = Told {
            normalized: headers::text(message.headers(), normalize::HEADER),
            principal: headers::text(message.headers(), headers::PRINCIPAL),
        };
        match decode(message.payload(), told, limits, batch.now) {
            Ok(row) => batch.good.push((row, message.detach())),
            Err(p) => batch.poison.push((message.detach(), p)),
        }
    }

    /// Writes one batch (rows and DLQ records) and returns the offsets to commit once every
    /// earlier batch is written too; None when stopped before the batch could be written.
    async fn write(
        &self,
        batch: Batch,
        known: &Mutex<HashSet<Month>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Offsets> {
        let Batch {
            offsets,
            good,
            mut poison,
            now,
            deadline: _,
        } = batch;
        // Rows whose month has no partition cannot be stored: they go to the DLQ as well.
        let needed: HashSet<Month> = good.iter().map(|(r, _)| Month::of(r.occurred_at)).collect();
        let mut placeable = known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !needed.is_subset(&placeable) {
            let existing = self
                .retry(stop, "listing partitions", || {
                    partitions::existing(&self.pool)
                })
                .await?;
            placeable.extend(existing.iter().copied());
            known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(existing);
        }
        let (stored, unplaced): (Vec<_>, Vec<_>) = good
            .into_iter()
            .partition(|(r, _)| placeable.contains(&Month::of(r.occurred_at)));
        for (row, m) in unplaced {
            poison.push((
                m,
                Poison {
                    reason: format!(
                        "no partition for time {} (month {}); run audit-manager maintain",
                        row.occurred_at.to_rfc3339(),
                        Month::of(row.occurred_at).table()
                    ),
                },
            ));
        }
        for (m, p) in &poison {
            self.to_dlq(m, &p.reason, now).await;
        }
        let (rows, messages): (Vec<Row>, Vec<OwnedMessage>) = stored.into_iter().unzip();
        if !rows.is_empty() {
            let started = Instant::now();
            let stored = self
                .retry(stop, "inserting a batch", || {
                    rows::insert(&self.pool, &rows)
                })
                .await?;
            self.metrics
                .sink_insert_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.sink_batch_size.observe(rows.len() as f64);
            self.metrics.rows_written.inc_by(stored.inserted);
            let stored_at = Utc::now().timestamp_millis();
            let mut per_source: HashMap<&str, u64> = HashMap::new();
            for (i, (row, m)) in rows.iter().zip(&messages).enumerate() {
                if stored.rejected.iter().any(|(r, _)| *r == i) {
                    continue;
                }
                *per_source.entry(row.source.as_str()).or_default() += 1;
                if let Some(accepted) = m.timestamp().to_millis() {
                    let seconds = (stored_at - accepted).max(0) as f64 / 1000.0;
                    self.metrics.end_to_end.observe(seconds);
                }
            }
            for (source, n) in per_source {
                self.metrics.source_rows.add(source, n);
            }
            self.metrics
                .rows_duplicate
                .inc_by((rows.len() - stored.rejected.len()) as u64 - stored.inserted);
            for (i, why) in &stored.rejected {
                let reason = format!("{}{why}", dlq::REFUSED_BY_DATABASE);
                if let Some(m) = messages.get(*i) {
                    self.to_dlq(m, &reason, now).await;
                }
            }
        }
        Some(offsets)
    }

    async fn to_dlq(&self, m: &OwnedMessage, reason: &str, now: DateTime<Utc>) {
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            reason,
            "record to the DLQ"
        );
        let kind = match dlq::send(&self.dlq, &self.config.kafka.dlq_topic, m, reason, now).await {
            Ok(()) => dlq::kind(reason),
            Err(e) => {
                tracing::error!(
                    topic = m.topic(),
                    partition = m.partition(),
                    offset = m.offset(),
                    error = %e,
                    reason,
                    "Kafka refuses this record on the DLQ for good; it is skipped, and stays in its topic at this offset until retention"
                );
                dlq::UNWRITABLE
            }
        };
        self.metrics.dlq_records.with_label_values(&[kind]).inc();
    }

    /// Runs `step` until it succeeds, pausing fetching and backing off while it fails; None
    /// when stopped first.
    async fn retry<T, F, Fut>(
        &self,
        stop: &mut watch::Receiver<bool>,
        what: &str,
        step: F,
    ) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, crate::db::DbError>>,
    {
        let mut backoff =
            Duration::from_millis(self.config.kafka.consumer.retry_initial_backoff_ms);
        let cap = Duration::from_millis(self.config.kafka.consumer.retry_max_backoff_ms);
        let mut paused = false;
        loop {
            match step().await {
                Ok(v) => {
                    if paused {
                        self.set_paused(false);
                        tracing::info!("database back: {what} succeeded, fetching resumed");
                    }
                    self.health.set_database(Check {
                        ok: true,
                        error: None,
                    });
                    self.health.update_consumer_detail(|d| d.retrying = None);
                    self.metrics.sink_failing.set(0);
                    return Some(v);
                }
                Err(e) => {
                    let message = format!("{what}: {e}");
                    tracing::warn!(error = %message, retry_in_ms = backoff.as_millis() as u64, "database step failed; keeping the batch");
                    self.metrics.sink_retries.inc();
                    self.metrics.sink_failing.set(1);
                    self.health.set_database(Check {
                        ok: false,
                        error: Some(message.clone()),
                    });
                    self.health
                        .update_consumer_detail(|d| d.retrying = Some(message));
                    if !paused {
                        self.set_paused(true);
                        paused = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {
                            tracing::warn!("stopping while the database is failing: the batch stays in Kafka, uncommitted");
                            return None;
                        }
                    }
                    backoff = (backoff * 2).min(cap);
                }
            }
        }
    }

    fn set_paused(&self, pause: bool) {
        let result = self.consumer.assignment().and_then(|assigned| {
            let r = if pause {
                self.consumer.pause(&assigned)
            } else {
                self.consumer.resume(&assigned)
            };
            drop(assigned);
            r
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "cannot pause/resume fetching");
        }
    }

    fn commit(&self, offsets: &BTreeMap<i32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (&partition, &next) in offsets {
            if let Err(e) =
                tpl.add_partition_offset(&self.config.kafka.topic, partition, Offset::Offset(next))
            {
                tracing::error!(error = %e, partition, "cannot build the offset commit");
            }
        }
        // After a rebalance the commit of revoked partitions fails; their new owner re-reads
        // them and ON CONFLICT DO NOTHING keeps the rows single.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; the batch may be re-read (rows stay single)");
        }
    }
}

/// Every 10 s: lag of the partitions assigned to this consumer (high watermark minus the
/// committed offset), per partition and in total.
async fn watch_lag(
    consumer: Arc<StreamConsumer>,
    topic: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    loop {
        let c = Arc::clone(&consumer);
        let t = topic.clone();
        let lags = tokio::task::spawn_blocking(move || lag_of(&c, &t))
            .await
            .ok()
            .flatten();
        if let Some(lags) = lags {
            metrics.consumer_lag.reset();
            let total: i64 = lags.values().sum();
            for (p, l) in &lags {
                metrics
                    .consumer_lag
                    .with_label_values(&[&p.to_string()])
                    .set(*l);
            }
            health.update_consumer_detail(|d| d.lag_total = Some(total));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

fn lag_of(consumer: &StreamConsumer, topic: &str) -> Option<BTreeMap<i32, i64>> {
    let timeout = Duration::from_secs(5);
    let committed = consumer.committed(timeout).ok()?;
    let lags = crate::kafka::lag::lag(consumer, &committed, topic, timeout).ok();
    // The partition list holds references into the client: release it before the consumer.
    drop(committed);
    lags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(p: i64) -> Offsets {
        BTreeMap::from([(0, p)])
    }

    #[test]
    fn writes_that_end_out_of_order_are_committed_in_order() {
        let mut order = InOrder::default();
        let (a, b, c) = (order.issue(), order.issue(), order.issue());
        let mut committed = Vec::new();
        assert!(order.finished(Ok((c, Some(offsets(30)))), |o| committed.push(o[&0])));
        assert!(order.finished(Ok((b, Some(offsets(20)))), |o| committed.push(o[&0])));
        assert!(
            committed.is_empty(),
            "nothing before the first batch is written"
        );
        assert!(order.finished(Ok((a, Some(offsets(10)))), |o| committed.push(o[&0])));
        assert_eq!(committed, [10, 20, 30]);
    }

    #[test]
    fn nothing_after_an_unwritten_batch_is_ever_committed() {
        let mut order = InOrder::default();
        let (a, b, c) = (order.issue(), order.issue(), order.issue());
        let mut committed = Vec::new();
        assert!(order.finished(Ok((b, Some(offsets(20)))), |o| committed.push(o[&0])));
        assert!(!order.finished(Ok((a, None)), |o| committed.push(o[&0])));
        assert!(!order.finished(Ok((c, Some(offsets(30)))), |o| committed.push(o[&0])));
        assert!(committed.is_empty(), "{committed:?}");
    }
}
