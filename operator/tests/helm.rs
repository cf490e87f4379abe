//! The Helm chart (`charts/audit-manager-operator`) with the pinned Helm build against the real
//! kube-apiserver: it lints, every rendering (the monitoring bundle too, with the Prometheus
//! Operator's CRDs) is accepted by the API server (server-side dry run), its RBAC is the RBAC of `manifests/`, and it installs and uninstalls, keeping the CRD.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/audit-manager-operator"
);
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");

/// Runs `cmd` (with `input` on stdin); panics with its output unless it succeeds.
fn run(mut cmd: Command, input: Option<&str>) -> String {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{shown}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.unwrap_or_default().as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{shown} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

fn helm(args: &[&str]) -> String {
    let mut cmd = audit_testenv::kube().helm();
    cmd.args(args);
    run(cmd, None)
}

fn kubectl(args: &[&str], input: Option<&str>) -> String {
    let mut cmd = audit_testenv::kube().kubectl();
    cmd.args(args);
    run(cmd, input)
}

fn ensure_namespace(name: &str) {
    let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    kubectl(&["apply", "-f", "-"], Some(&yaml));
}

/// The YAML documents of a stream, as JSON values (empty documents skipped).
fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---")
        .filter_map(|d| audit_manager_crds::yaml::from_str::<Option<Value>>(d).expect("YAML"))
        .filter(|v| v.is_object())
        .collect()
}

/// The rules of the ClusterRole (and Roles, for the namespaced part) among `objects`, one
/// entry per (apiGroup, resource or URL, verb).
fn permissions<'a>(objects: impl Iterator<Item = &'a Value>) -> BTreeSet<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in objects.flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default()) {
        let groups = match strings(&rule["apiGroups"]) {
            g if g.is_empty() => vec!["(url)".to_string()],
            g => g,
        };
        let targets = [
            strings(&rule["resources"]),
            strings(&rule["nonResourceURLs"]),
        ]
        .concat();
        for g in &groups {
            for t in &targets {
                for v in strings(&rule["verbs"]) {
                    out.insert(format!("{g} {t} {v}"));
                }
            }
        }
    }
    out
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    objects.iter().filter(move |o| o["kind"] == kind)
}

#[test]
fn the_chart_lints_and_every_rendering_is_accepted_by_the_api_server() {
    helm(&["lint", "--strict", CHART]);
    audit_testenv::kube()
        .install_prometheus_operator_crds()
        .expect("the Prometheus Operator's CRDs, for monitoring.enabled");
    ensure_namespace("audit-manager-system");
    ensure_namespace("tenant");
    for values in [
        vec![],
        vec!["--set", "watchNamespace=tenant"],
        vec![
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false",
        ],
        vec![
            "--set",
            "crds.install=false",
            "--set",
            "deletionProtectionPolicy.enabled=false",
        ],
    ] {
        let mut args = vec!["template", "audit-manager-operator", CHART];
        args.extend(["--namespace", "audit-manager-system"]);
        args.extend(values.iter().copied());
        let rendered = helm(&args);
        let objects = documents(&rendered);
        assert!(
            of_kind(&objects, "Deployment").count() == 1,
            "{values:?}: one Deployment"
        );
        let monitoring = values.contains(&"monitoring.enabled=true");
        assert_eq!(
            of_kind(&objects, "PrometheusRule").count() == 1
                && of_kind(&objects, "PodMonitor").count() == 1,
            monitoring,
            "{values:?}: the monitoring bundle exactly when enabled"
        );
        kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    }

    // Two replicas without leader election would reconcile everything twice at once.
    let mut cmd = audit_testenv::kube().helm();
    cmd.args([
        "template",
        "x",
        CHART,
        "--set",
        "leaderElection.enabled=false",
    ]);
    let out = cmd.output().expect("helm");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("replicaCount > 1 needs leaderElection.enabled"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_charts_rbac_is_the_rbac_of_manifests_and_narrows_to_a_watched_namespace() {
    let rbac = std::fs::read_to_string(format!("{MANIFESTS}/rbac.yaml")).expect("rbac.yaml");
    let manifests = documents(&rbac);
    let expected = permissions(of_kind(&manifests, "ClusterRole"));
    assert!(expected.len() > 40, "{expected:?}");

    let all = documents(&helm(&[
        "template",
        "audit-manager-operator",
        CHART,
        "-n",
        "audit-manager-system",
    ]));
    assert_eq!(permissions(of_kind(&all, "ClusterRole")), expected);
    assert_eq!(
        permissions(of_kind(&all, "Role")),
        permissions(of_kind(&manifests, "Role")),
        "leader election"
    );

    // One watched namespace: the cluster-wide part shrinks to what cannot be namespaced, and
    // the rest is a Role there; together the same permissions.
    let narrowed = documents(&helm(&[
        "template",
        "audit-manager-operator",
        CHART,
        "-n",
        "audit-manager-system",
        "--set",
        "watchNamespace=tenant",
    ]));
    let cluster = permissions(of_kind(&narrowed, "ClusterRole"));
    assert!(
        cluster
            .iter()
            .all(|p| p.starts_with("audit.openg2p.org auditmanagers ")
                || p.starts_with("(url) ")
                || p.starts_with("apiextensions.k8s.io ")),
        "only what cannot be namespaced stays cluster-wide: {cluster:?}"
    );
    let in_tenant =
        permissions(of_kind(&narrowed, "Role").filter(|r| r["metadata"]["namespace"] == "tenant"));
    assert_eq!(&cluster | &in_tenant, expected);
    let deployment = of_kind(&narrowed, "Deployment").next().expect("Deployment");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "WATCH_NAMESPACE" && e["value"] == "tenant"),
        "{env}"
    );
}

#[test]
fn helm_install_and_uninstall_keep_the_crd() {
    helm(&[
        "install",
        "audit-manager-operator",
        CHART,
        "--namespace",
        "helm-install",
        "--create-namespace",
    ]);
    let listed = helm(&["list", "-n", "helm-install", "-o", "json"]);
    let releases: Value = serde_json::from_str(&listed).expect("helm list JSON");
    assert_eq!(releases[0]["status"], "deployed", "{releases}");
    assert_eq!(
        releases[0]["app_version"],
        env!("CARGO_PKG_VERSION"),
        "{releases}"
    );
    let image = kubectl(
        &[
            "get",
            "deployment/audit-manager-operator",
            "-n",
            "helm-install",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
        None,
    );
    assert_eq!(
        image,
        format!(
            "ghcr.io/openg2p/audit-manager-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    kubectl(&["get", "crd", "auditmanagers.audit.openg2p.org"], None);
    kubectl(&["get", "clusterrole", "audit-manager-operator"], None);

    helm(&["uninstall", "audit-manager-operator", "-n", "helm-install"]);
    let left = kubectl(
        &[
            "get",
            "deployments,serviceaccounts,roles,rolebindings",
            "-n",
            "helm-install",
            "-l",
            "app.kubernetes.io/instance=audit-manager-operator",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(left.trim(), "", "uninstall removes what it installed");
    let cluster_left = kubectl(
        &["get", "clusterroles,clusterrolebindings", "-o", "name"],
        None,
    );
    assert!(
        !cluster_left.contains("/audit-manager-operator"),
        "{cluster_left}"
    );
    // Deleting the CRD would delete every AuditManager (and, through finalizers, databases).
    kubectl(&["get", "crd", "auditmanagers.audit.openg2p.org"], None);
}
