//! The monitoring bundle (`manifests/monitoring/`): the alerting rules pass `promtool check
//! rules` and `promtool test rules` (each alert with a series that fires it and one that does
//! not), the dashboard's queries parse, every metric the rules and the dashboard name is one
//! that audit-manager (or kube-state-metrics) exports, the bundle is accepted by the API
//! server with the Prometheus Operator's CRDs, and the operator renders a PodMonitor for the
//! runtime once those CRDs exist.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{Fixture, condition};
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};

const BUNDLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/monitoring");

fn run(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown} failed:\n{text}");
    text
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(dir);
    run(cmd)
}

/// The PrometheusRule's `spec` (a Prometheus rule file).
fn rule_file() -> Value {
    let text = std::fs::read_to_string(format!("{BUNDLE}/prometheusrule.yaml")).expect("rules");
    let rule: Value = audit_manager_crds::yaml::from_str(&text).expect("YAML");
    rule["spec"].clone()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(format!("{BUNDLE}/audit-manager-dashboard.json"))
        .expect("dashboard");
    serde_json::from_str(&text).expect("dashboard JSON")
}

/// Every PromQL expression of the dashboard, with Grafana's variables replaced.
fn dashboard_queries() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*")
        })
        .collect()
}

#[test]
fn every_alert_fires_on_its_series_and_only_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("rules.yaml"),
        audit_manager_crds::yaml::to_string(&rule_file()).expect("YAML"),
    )
    .expect("write rules");
    std::fs::copy(
        format!("{BUNDLE}/tests/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )
    .expect("copy the tests");
    let checked = promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    promtool(&["test", "rules", "alerts.test.yaml"], dir.path());

    // Every alert has a test.
    let tests = std::fs::read_to_string(dir.path().join("alerts.test.yaml")).expect("tests");
    for rule in rule_file()["groups"][0]["rules"].as_array().expect("rules") {
        let alert = rule["alert"].as_str().expect("alert");
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
}

#[test]
fn the_dashboards_queries_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules: Vec<Value> = dashboard_queries()
        .into_iter()
        .enumerate()
        .map(|(i, expr)| json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    assert!(rules.len() >= 10, "{rules:?}");
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(
        dir.path().join("dashboard.yaml"),
        audit_manager_crds::yaml::to_string(&file).expect("YAML"),
    )
    .expect("write");
    promtool(&["check", "rules", "dashboard.yaml"], dir.path());
    let panels = dashboard()["panels"].as_array().expect("panels").len();
    assert_eq!(panels, 10);
}

/// The metric names audit-manager exports: the runtime's and the operator's, with a value on
/// each labelled family so that it shows in the exposition.
fn exported() -> BTreeSet<String> {
    let runtime = audit_manager::metrics::Metrics::new();
    runtime
        .events_rejected
        .with_label_values(&["AUD-004"])
        .inc();
    runtime.events_normalized.with_label_values(&["x"]).inc();
    runtime.dlq_records.with_label_values(&["x"]).inc();
    runtime.consumer_lag.with_label_values(&["0"]).set(1);
    runtime.source_rows.add("/s", 1);
    let operator = audit_manager_operator::metrics::Metrics::default();
    operator.set_conditions("n", "a", &[("Ready", "Ok", true)]);
    [runtime.render(), operator.render()]
        .iter()
        .flat_map(|text| text.lines())
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect()
}

#[test]
fn the_rules_and_the_dashboard_name_only_exported_metrics() {
    let exported = exported();
    // From kube-state-metrics, not from audit-manager.
    let elsewhere = ["kube_job_status_failed"];
    let expressions: Vec<String> = rule_file()["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["expr"].as_str().expect("expr").to_string())
        .chain(dashboard_queries())
        .collect();
    let mut named = BTreeSet::new();
    for expr in &expressions {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("audit_") || word.starts_with("kube_") {
                named.insert(word.to_string());
            }
        }
    }
    assert!(named.len() >= 12, "{named:?}");
    for name in &named {
        assert!(
            exported.contains(name) || elsewhere.contains(&name.as_str()),
            "{name} is named by the monitoring bundle but not exported; exported: {exported:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_prometheus_operator_the_runtime_gets_a_pod_monitor() {
    let f = Fixture::new(true, json!({})).await;
    let podmonitors = || -> Api<DynamicObject> {
        let resource = audit_manager_operator::build::Kind::PodMonitor.resource();
        Api::namespaced_with(f.client.clone(), &f.namespace, &resource)
    };
    // Without the CRDs: no PodMonitor, and nothing reported missing.
    let am = f.reconcile().await;
    assert_eq!(condition(&am, "IstioReady").0, "", "{:?}", am.status);

    let kube = audit_testenv::kube();
    kube.install_prometheus_operator_crds()
        .expect("the Prometheus Operator's CRDs");
    let mut namespace = kube.kubectl();
    namespace.args(["create", "namespace", "audit-manager-system"]);
    let _ = namespace.output();
    let mut apply = kube.kubectl();
    apply.args(["apply", "--dry-run=server", "-k", BUNDLE]);
    let applied = run(apply);
    assert!(
        applied.contains("prometheusrule.monitoring.coreos.com/audit-manager")
            && applied.contains("configmap/audit-manager-dashboard"),
        "{applied}"
    );

    f.reconcile().await;
    let monitor = podmonitors().get(&f.app()).await.expect("the PodMonitor");
    let spec = &monitor.data["spec"];
    assert_eq!(spec["podMetricsEndpoints"][0]["port"], "metrics", "{spec}");
    assert_eq!(
        spec["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        json!(f.name),
        "{spec}"
    );
    assert_eq!(
        monitor.metadata.owner_references.expect("owned")[0].name,
        f.name
    );
}
