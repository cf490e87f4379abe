//! The operator's Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub errors: IntCounter,
    pub applies: IntCounter,
    pub duration: Histogram,
    /// 1 while a condition of an AuditManager is True, 0 while False: the alerts of
    /// `manifests/monitoring/` read PartitionsReady and Ready from it.
    pub conditions: IntGaugeVec,
    /// The label values of each resource's condition series, to remove them.
    condition_series: std::sync::Mutex<ConditionSeries>,
}

type ConditionSeries = std::collections::HashMap<(String, String), Vec<[String; 2]>>;

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
        let conditions = IntGaugeVec::new(
            Opts::new(
                "audit_operator_condition",
                "1 while the condition of the AuditManager is True, 0 while False",
            ),
            &["namespace", "name", "type", "reason"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(conditions.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        Metrics {
            registry,
            conditions,
            condition_series: Default::default(),
            reconciles,
            errors,
            applies,
            duration,
        }
    }
}

impl Metrics {
    /// The conditions of `namespace/name` as they are now (the series of earlier reasons go).
    pub fn set_conditions(&self, namespace: &str, name: &str, conditions: &[(&str, &str, bool)]) {
        self.forget(namespace, name);
        let mut written = Vec::new();
        for (kind, reason, ok) in conditions {
            self.conditions
                .with_label_values(&[namespace, name, kind, reason])
                .set(i64::from(*ok));
            written.push([kind.to_string(), reason.to_string()]);
        }
        self.condition_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.to_string(), name.to_string()), written);
    }

    /// Drops every condition series of `namespace/name` (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let old = self
            .condition_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .unwrap_or_default();
        for [kind, reason] in old {
            let _ = self
                .conditions
                .remove_label_values(&[namespace, name, &kind, &reason]);
        }
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
