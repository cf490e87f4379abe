//! Prometheus metrics of the runtime, served at `GET /v1/auditmanager/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the runtime exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub events_accepted: IntCounter,
    pub events_rejected: IntCounterVec,
    pub events_normalized: IntCounterVec,
    pub queue_depth: IntGauge,
    pub queue_capacity: IntGauge,
    pub queue_bytes: IntGauge,
    pub queue_max_bytes: IntGauge,
    pub inflight_body_bytes: IntGauge,
    pub published: IntCounter,
    pub publish_failures: IntCounter,
    pub publish_latency: Histogram,
    pub rows_written: IntCounter,
    pub rows_duplicate: IntCounter,
    pub sink_batch_size: Histogram,
    pub sink_insert_seconds: Histogram,
    pub sink_retries: IntCounter,
    pub sink_failing: IntGauge,
    pub dlq_records: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    /// From accepted (the record's Kafka timestamp) to stored, per row.
    pub end_to_end: Histogram,
    /// Rows stored per `source` (the first [`MAX_SOURCES`] sources, then `(other)`), so an
    /// alert can see a source that normally emits go silent.
    pub source_rows: SourceRows,
}

/// How many distinct `source` labels [`SourceRows`] keeps: sources are the platform's
/// services, a few dozen; without authentication anyone could invent millions.
pub const MAX_SOURCES: usize = 500;

/// Rows stored per source, with a bounded number of label values.
pub struct SourceRows {
    counter: IntCounterVec,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl SourceRows {
    /// Counts `n` rows of `source`.
    pub fn add(&self, source: &str, n: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let label = if seen.contains(source) {
            source
        } else if seen.len() < MAX_SOURCES {
            seen.insert(source.to_string());
            source
        } else {
            "(other)"
        };
        self.counter.with_label_values(&[label]).inc_by(n);
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            h
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let seconds = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let lag = IntGaugeVec::new(
            Opts::new(
                "audit_consumer_lag",
                "Records behind the high watermark, per partition",
            ),
            &["partition"],
        )
        .unwrap_or_else(|e| panic!("metric audit_consumer_lag: {e}"));
        registry
            .register(Box::new(lag.clone()))
            .unwrap_or_else(|e| panic!("metric audit_consumer_lag: {e}"));
        Metrics {
            events_accepted: counter("audit_ingest_events_accepted_total", "Events answered 202"),
            events_rejected: counter_vec(
                "audit_ingest_events_rejected_total",
                "Requests refused, by error code",
                "code",
            ),
            events_normalized: counter_vec(
                "audit_ingest_events_normalized_total",
                "Normalizations in accepted events (null_dropped, time_defaulted, ...), by reason",
                "reason",
            ),
            queue_depth: gauge(
                "audit_ingest_queue_depth",
                "Accepted events not yet acknowledged by Kafka",
            ),
            queue_capacity: gauge("audit_ingest_queue_capacity", "ingest.queue_max_size"),
            queue_bytes: gauge(
                "audit_ingest_queue_bytes",
                "Bytes held by accepted events not yet acknowledged by Kafka",
            ),
            queue_max_bytes: gauge("audit_ingest_queue_max_bytes", "ingest.queue_max_bytes"),
            inflight_body_bytes: gauge(
                "audit_ingest_inflight_body_bytes",
                "Bytes of request bodies being read, beyond each request's single-event allowance (ingest.max_inflight_body_bytes)",
            ),
            published: counter(
                "audit_kafka_published_total",
                "Events acknowledged by Kafka",
            ),
            publish_failures: counter(
                "audit_kafka_publish_failures_total",
                "Failed publish attempts (each is retried)",
            ),
            publish_latency: histogram(
                "audit_kafka_publish_latency_seconds",
                "From queued to acknowledged by Kafka",
                seconds.clone(),
            ),
            rows_written: counter(
                "audit_sink_rows_written_total",
                "Rows inserted into audit_events",
            ),
            rows_duplicate: counter(
                "audit_sink_rows_duplicate_total",
                "Records whose row already existed (replays)",
            ),
            sink_batch_size: histogram(
                "audit_sink_batch_size",
                "Records per database transaction",
                vec![
                    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0,
                ],
            ),
            sink_insert_seconds: histogram(
                "audit_sink_insert_seconds",
                "Duration of one batch insert transaction",
                seconds,
            ),
            sink_retries: counter(
                "audit_sink_retries_total",
                "Batch inserts retried after a database error",
            ),
            sink_failing: gauge(
                "audit_sink_failing",
                "1 while the sink is retrying a database error",
            ),
            dlq_records: counter_vec(
                "audit_dlq_records_total",
                "Records sent to the DLQ, by reason",
                "reason",
            ),
            consumer_lag: lag,
            end_to_end: histogram(
                "audit_end_to_end_seconds",
                "From accepted by the ingest (the record's Kafka timestamp) to stored, per row",
                vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0, 3600.0,
                ],
            ),
            source_rows: SourceRows {
                counter: counter_vec(
                    "audit_sink_source_rows_total",
                    "Rows stored, by source (at most 500 sources; the rest as (other))",
                    "source",
                ),
                seen: Default::default(),
            },
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_past_the_limit_are_counted_as_other() {
        let m = Metrics::new();
        for i in 0..MAX_SOURCES + 3 {
            m.source_rows.add(&format!("/s/{i}"), 2);
        }
        m.source_rows.add("/s/0", 1);
        let text = m.render();
        assert!(
            text.contains("audit_sink_source_rows_total{source=\"/s/0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("audit_sink_source_rows_total{source=\"(other)\"} 6"),
            "{text}"
        );
        assert_eq!(
            text.matches("audit_sink_source_rows_total{").count(),
            MAX_SOURCES + 1
        );
    }
}
