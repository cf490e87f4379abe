//! The operator's Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub errors: IntCounter,
    pub applies: IntCounter,
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let reconciles = counter("audit_operator_reconciles_total", "Reconciles started");
        let errors = counter(
            "audit_operator_reconcile_errors_total",
            "Reconciles that failed",
        );
        let applies = counter(
            "audit_operator_child_writes_total",
            "Writes of child objects (applies and deletes)",
        );
        let duration = Histogram::with_opts(HistogramOpts::new(
            "audit_operator_reconcile_seconds",
            "Reconcile duration",
        ))
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(duration.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        Metrics {
            registry,
            reconciles,
            errors,
            applies,
            duration,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
