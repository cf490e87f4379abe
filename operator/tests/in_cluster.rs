//! Issue 20: the operator installed as users install it, on a real node. `kubectl apply -k`
//! of `manifests/` with the locally built operator image (a kustomize image override) runs two
//! replicas in-cluster, with their ServiceAccount, the RBAC of `manifests/` and leader
//! election; an AuditManager in a namespace that enforces Pod Security `restricted` gets real
//! runtime pods from the project's own image (kubelet + containerd), which reach PostgreSQL
//! and Kafka on the node's bridge. Events POSTed through the Service become rows; a pod
//! deleted and a rolling update under load lose nothing; the maintenance CronJob's Job
//! succeeds; when the leader dies the other replica takes the lease and tears the resource
//! down; `kubectl delete -k` leaves nothing; the machine is left as found.
//! (Its own test binary: it starts and stops a cluster of its own.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use audit_testenv::http::HttpClient;
use audit_testenv::install::SYSTEM_NAMESPACE as SYSTEM;
use audit_testenv::node::MachineState;
use audit_testenv::{Cluster, Kafka, Postgres};
use serde_json::{Value, json};

const TENANT: &str = "tenant";
const NAME: &str = "audit";
const EVENTS: &str = "/v1/auditmanager/events";
/// The operator's pods, as `manifests/operator.yaml` labels them.
const OPERATOR_PODS: &str = "app.kubernetes.io/name=audit-manager-operator";
/// The runtime pods of the AuditManager `NAME`.
const RUNTIME_PODS: &str = "app.kubernetes.io/instance=audit";

/// Runs kubectl (`stdin` piped to it when given); its standard output, or the failure with
/// what kubectl printed.
async fn kubectl_result(
    cluster: &Cluster,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::from(cluster.kube.kubectl());
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("kubectl: {e}"))?;
    let mut input = child.stdin.take().ok_or("kubectl: no stdin")?;
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("writing to kubectl: {e}"))?;
    }
    drop(input);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    kubectl_result(cluster, args, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn apply(cluster: &Cluster, yaml: &str) {
    kubectl_result(cluster, &["apply", "-f", "-"], Some(yaml))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
}

/// Waits until `probe` returns Some, at most `seconds`; on timeout panics with `what` and the
/// operator's recent logs.
async fn wait_for<T, F, Fut>(cluster: &Cluster, seconds: u64, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        if Instant::now() > deadline {
            let logs = kubectl_result(
                cluster,
                &[
                    "logs",
                    "-n",
                    SYSTEM,
                    "-l",
                    OPERATOR_PODS,
                    "--tail=40",
                    "--prefix",
                ],
                None,
            )
            .await;
            let pods = kubectl_result(cluster, &["get", "pods", "-A", "-o", "wide"], None).await;
            panic!("{what} (after {seconds} s)\npods: {pods:?}\noperator logs: {logs:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (at most three minutes) until the tenant's Deployment `name` has rolled out.
async fn rolled_out(cluster: &Cluster, name: &str) {
    kubectl(
        cluster,
        &[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "-n",
            TENANT,
            "--timeout=180s",
        ],
    )
    .await;
}

async fn lease_holder(cluster: &Cluster) -> Option<String> {
    kubectl_result(
        cluster,
        &[
            "get",
            "lease",
            "audit-manager-operator",
            "-n",
            SYSTEM,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    )
    .await
    .ok()
    .filter(|h| !h.is_empty())
}

/// `kubectl audit ...` (this package's `kubectl-audit`) as an admin runs it: the cluster's
/// kubeconfig, and its kubectl on PATH.
async fn kubectl_audit(cluster: &Cluster, args: &[&str]) -> String {
    let path = format!(
        "{}:{}",
        cluster.kube.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-audit"))
        .args(args)
        .env("KUBECONFIG", cluster.kube.kubeconfig())
        .env("PATH", path)
        .output()
        .await
        .expect("kubectl-audit");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl audit {}: {text}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The batch's rows counted by `kubectl audit psql` (the reader role, from its Secret).
async fn batch_rows_as_reader(cluster: &Cluster) -> String {
    let query = "SELECT count(*) FROM audit_events WHERE id LIKE 'batch-%'";
    kubectl_audit(cluster, &["psql", NAME, "-n", TENANT, "--", "-tAc", query]).await
}

/// The names of the pods in `namespace` that `selector` picks.
async fn pod_names(cluster: &Cluster, namespace: &str, selector: &str) -> Vec<String> {
    kubectl(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .await
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// A status condition of the AuditManager: status and message.
async fn condition(cluster: &Cluster, kind: &str) -> Option<(String, String)> {
    let text = kubectl_result(
        cluster,
        &["get", "auditmanager", NAME, "-n", TENANT, "-o", "json"],
        None,
    )
    .await
    .ok()?;
    let am: Value = serde_json::from_str(&text).ok()?;
    am["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/in-cluster", "type": "t",
           "time": "2026-12-05T08:00:00Z",
           "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success"}})
}

/// Single events POSTed one after another to `address` (the Service's ClusterIP) until
/// `stop`; an attempt without an answer is sent again unchanged, as an emitter retries. The
/// ids answered 202.
async fn post_until(address: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut client: Option<HttpClient> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("load-{n}");
        n += 1;
        let body = event(&id).to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if client.is_none() {
                client = HttpClient::connect(&address).await.ok();
            }
            let Some(c) = client.as_mut() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match c.post(EVENTS, "application/json", body.clone()).await {
                Ok(answer) if answer.status == 202 => {
                    accepted.push(id.clone());
                    break;
                }
                // Refused (a pod draining answers 503): not accepted, sent again.
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_with_kubectl_apply_k_it_runs_tenants_on_a_real_node() {
    let before = MachineState::read();
    let cluster = Cluster::start().expect("the cluster with a real node");
    let host = cluster.bridge.host;
    let pg = Postgres::start_also_on(host).expect("PostgreSQL on the bridge");
    let kafka = Kafka::start_also_on(host).expect("Kafka on the bridge");
    let bootstrap = kafka.bootstrap_on_node().expect("the bridge listener");

    // As users install it: `kubectl apply -k` of `manifests/`, with the locally built
    // operator image (a kustomize overlay), once both images are in the node's containerd.
    let installed = tokio::task::block_in_place(|| audit_testenv::install::operator(&cluster))
        .expect("installing the operator");
    let overlay = installed.overlay.display().to_string();
    let replicas = pod_names(&cluster, SYSTEM, OPERATOR_PODS).await;
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    let leader = wait_for(&cluster, 60, "no replica took the lease", || {
        lease_holder(&cluster)
    })
    .await;
    assert!(
        replicas.contains(&leader),
        "{leader} is not one of {replicas:?}"
    );

    // A tenant under Pod Security `restricted`, with its PostgreSQL admin login and the
    // addresses of PostgreSQL and Kafka on the bridge (pods resolve no names here).
    let (user, password) = pg.superuser();
    let runtime = &installed.runtime;
    apply(
        &cluster,
        &format!(
            r#"apiVersion: v1
kind: Namespace
metadata:
  name: {TENANT}
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: Secret
metadata:
  name: pg-admin
  namespace: {TENANT}
  labels:
    {credentials}: "true"
  annotations:
    {hosts}: "{host}"
stringData:
  username: {user}
  password: {password}
"#,
            credentials = audit_manager_crds::CREDENTIALS_LABEL,
            hosts = audit_manager_crds::ALLOWED_HOSTS,
        ),
    )
    .await;
    apply(
        &cluster,
        &format!(
            r#"apiVersion: audit.openg2p.org/v1alpha1
kind: AuditManager
metadata:
  name: {NAME}
  namespace: {TENANT}
spec:
  image: {{repository: {repository}, tag: "{tag}", pullPolicy: IfNotPresent}}
  replicas: 2
  autoscaling: {{enabled: false}}
  lagThreshold: 0
  database: {{host: "{host}", port: {port}, sslMode: disable, adminSecretRef: {{name: pg-admin}}}}
  kafka:
    bootstrapServers: "{bootstrap}"
    eventsTopic: {{name: {NAME}.events, partitions: 3}}
    dlqTopic: {{name: {NAME}.dlq, partitions: 1}}
    consumerGroup: {NAME}-group
"#,
            port = pg.port(),
            repository = runtime.repository,
            tag = runtime.tag,
        ),
    )
    .await;

    // The in-cluster operator provisions it and sees its pods Ready, lag 0.
    wait_for(
        &cluster,
        300,
        "the AuditManager never turned Ready",
        || async {
            condition(&cluster, "Ready")
                .await
                .filter(|(status, _)| status == "True")
        },
    )
    .await;
    let deployment = format!("{NAME}-audit-manager");
    let cluster_ip = kubectl(
        &cluster,
        &[
            "get",
            "service",
            &deployment,
            "-n",
            TENANT,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )
    .await;
    let service = format!("{cluster_ip}:80");

    // The runtime writes nothing: its root file system is read-only, and it has no volume to
    // write to (no emptyDir).
    let runtime_pods = pod_names(&cluster, TENANT, RUNTIME_PODS).await;
    let pod = runtime_pods.first().expect("a runtime pod");
    let written = kubectl(
        &cluster,
        &[
            "exec",
            pod,
            "-n",
            TENANT,
            "--",
            "/bin/sh",
            "-c",
            "id -u; id -g; for d in / /tmp /var/tmp /home; do touch $d/x 2>/dev/null && echo $d writable; done; awk '$2 == \"/\" {print $4}' /proc/mounts | cut -d, -f1",
        ],
    )
    .await;
    assert!(
        written.starts_with("65532\n65532\n")
            && !written.contains("writable")
            && written.ends_with("\nro"),
        "{written}"
    );

    // Events POSTed through the Service (kube-proxy) become rows.
    let mut client = HttpClient::connect(&service).await.expect("the Service");
    let batch: Vec<Value> = (0..100).map(|i| event(&format!("batch-{i}"))).collect();
    let answer = client
        .post(
            &format!("{EVENTS}/batch"),
            "application/json",
            json!({"events": batch}).to_string(),
        )
        .await
        .expect("POST a batch");
    assert_eq!(answer.status, 202, "{:?}", answer.json());
    // The tenant's database is named after the resource.
    let admin = sqlx::PgPool::connect(&pg.superuser_url(&NAME.replace('-', "_")))
        .await
        .expect("the tenant's database");
    let count = |prefix: &'static str| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events WHERE id LIKE $1")
                .bind(format!("{prefix}%"))
                .fetch_one(&admin)
                .await
                .expect("count")
        }
    };
    wait_for(
        &cluster,
        60,
        "the batch did not become 100 rows",
        || async { (count("batch-").await == 100).then_some(()) },
    )
    .await;

    // The kubectl plugin: the status, the DLQ through a runtime pod, a reader session.
    let status = kubectl_audit(&cluster, &["status", NAME, "-n", TENANT]).await;
    for kind in ["DatabaseReady", "PartitionsReady", "WorkloadAvailable"] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("{kind} ")) && l.contains(" True ")),
            "{status}"
        );
    }
    assert!(status.contains("Lag:       "), "{status}");
    assert!(status.contains("Endpoint:  http://"), "{status}");
    let dead = kubectl_audit(&cluster, &["dlq", "count", NAME, "-n", TENANT]).await;
    assert!(
        dead.starts_with(&format!("0 record(s) in {NAME}.dlq")),
        "{dead}"
    );
    assert_eq!(batch_rows_as_reader(&cluster).await.trim(), "100");

    // Under load through the Service: a pod deleted, then a rolling update; every event
    // answered 202 becomes exactly one row.
    let stop = Arc::new(AtomicBool::new(false));
    let poster = tokio::spawn(post_until(service.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = runtime_pods[0].clone();
    let started = Instant::now();
    kubectl(
        &cluster,
        &["delete", "pod", &victim, "-n", TENANT, "--timeout=60s"],
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "{victim} took {took:?} to stop"
    );
    rolled_out(&cluster, &deployment).await;
    // A spec change that changes the pods: the operator updates the Deployment, which rolls.
    kubectl(
        &cluster,
        &[
            "patch",
            "auditmanager",
            NAME,
            "-n",
            TENANT,
            "--type=merge",
            "-p",
            r#"{"spec":{"placement":{"podAnnotations":{"example.org/rollout":"2"}}}}"#,
        ],
    )
    .await;
    wait_for(
        &cluster,
        60,
        "the operator did not update the Deployment",
        || async {
            kubectl_result(
                &cluster,
                &[
                    "get",
                    "deployment",
                    &deployment,
                    "-n",
                    TENANT,
                    "-o",
                    r#"jsonpath={.spec.template.metadata.annotations.example\.org/rollout}"#,
                ],
                None,
            )
            .await
            .ok()
            .filter(|v| v == "2")
        },
    )
    .await;
    rolled_out(&cluster, &deployment).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let accepted = poster.await.expect("the poster");
    assert!(
        accepted.len() > 100,
        "only {} events accepted",
        accepted.len()
    );
    wait_for(
        &cluster,
        120,
        "not every accepted event became a row",
        || async {
            let stored: Vec<String> =
                sqlx::query_scalar("SELECT id FROM audit_events WHERE id = ANY($1)")
                    .bind(&accepted)
                    .fetch_all(&admin)
                    .await
                    .expect("stored ids");
            (stored.len() >= accepted.len()).then_some(())
        },
    )
    .await;
    let duplicated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT id FROM audit_events GROUP BY source, id HAVING count(*) > 1) d",
    )
    .fetch_one(&admin)
    .await
    .expect("duplicates");
    assert_eq!(duplicated, 0, "events stored twice");
    assert_eq!(
        count("load-").await as usize,
        accepted.len(),
        "rows without a 202 would be retries stored twice"
    );

    // `kubectl audit rotate-passwords`: the reader gets a new password, which works.
    let reader_password = || async {
        kubectl_result(
            &cluster,
            &[
                "get",
                "secret",
                &format!("{NAME}-db-reader"),
                "-n",
                TENANT,
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        )
        .await
        .ok()
        .filter(|p| !p.is_empty())
    };
    let old_password = reader_password().await.expect("the reader Secret");
    let rotated = kubectl_audit(
        &cluster,
        &["rotate-passwords", NAME, "-n", TENANT, "--role", "reader"],
    )
    .await;
    assert!(
        rotated.contains(&format!("secret/{NAME}-db-reader deleted")),
        "{rotated}"
    );
    wait_for(
        &cluster,
        60,
        "the reader Secret was not made again",
        || async {
            reader_password()
                .await
                .filter(|now| *now != old_password)
                .map(|_| ())
        },
    )
    .await;
    wait_for(
        &cluster,
        60,
        "the new reader password never worked",
        || async {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-audit"))
                .args(["psql", NAME, "-n", TENANT, "--", "-tAc", "SELECT 1"])
                .env("KUBECONFIG", cluster.kube.kubeconfig())
                .output()
                .await
                .ok()?;
            out.status.success().then_some(())
        },
    )
    .await;
    assert_eq!(batch_rows_as_reader(&cluster).await.trim(), "100");
    rolled_out(&cluster, &deployment).await;

    // The maintenance CronJob's pods start under `restricted` and its Job succeeds.
    kubectl(
        &cluster,
        &[
            "create",
            "job",
            "maintenance-now",
            "-n",
            TENANT,
            &format!("--from=cronjob/{NAME}-maintenance"),
        ],
    )
    .await;
    kubectl(
        &cluster,
        &[
            "wait",
            "job/maintenance-now",
            "-n",
            TENANT,
            "--for=condition=Complete",
            "--timeout=180s",
        ],
    )
    .await;
    admin.close().await;

    // The leader dies: the other replica takes the lease and goes on reconciling.
    kubectl(
        &cluster,
        &["delete", "pod", &leader, "-n", SYSTEM, "--wait=false"],
    )
    .await;
    // (The standby, or the replacement pod when it asks first once the lease has expired.)
    let successor = wait_for(&cluster, 90, "no replica took over the lease", || async {
        lease_holder(&cluster).await.filter(|h| *h != leader)
    })
    .await;
    assert!(
        pod_names(&cluster, SYSTEM, OPERATOR_PODS)
            .await
            .contains(&successor),
        "the lease is held by {successor}, which is no running replica"
    );

    // Deleting the resource: the new leader tears everything down.
    kubectl(
        &cluster,
        &[
            "delete",
            "auditmanager",
            NAME,
            "-n",
            TENANT,
            "--timeout=180s",
        ],
    )
    .await;
    let superuser = sqlx::PgPool::connect(&pg.superuser_url("postgres"))
        .await
        .expect("superuser");
    let databases: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')",
    )
    .fetch_one(&superuser)
    .await
    .expect("databases");
    assert_eq!(databases, 0, "the tenant's database was dropped");
    superuser.close().await;
    for topic in [format!("{NAME}.events"), format!("{NAME}.dlq")] {
        assert_eq!(
            common::partitions_on(&kafka.bootstrap(), &topic),
            0,
            "{topic} was deleted"
        );
    }

    // `kubectl delete -k` leaves nothing of the installation.
    kubectl(
        &cluster,
        &["delete", "-k", &overlay, "--wait=true", "--timeout=180s"],
    )
    .await;
    for (kind, name) in [
        ("namespace", SYSTEM),
        ("crd", "auditmanagers.audit.openg2p.org"),
        ("clusterrole", "audit-manager-operator"),
        ("clusterrolebinding", "audit-manager-operator"),
        (
            "validatingadmissionpolicy",
            "auditmanager-deletion-protection",
        ),
    ] {
        let left = kubectl_result(&cluster, &["get", kind, name, "--ignore-not-found"], None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(left.is_empty(), "{kind} {name} is left: {left}");
    }

    drop(kafka);
    drop(pg);
    drop(cluster);
    assert_eq!(
        before,
        MachineState::read(),
        "the node left the machine changed"
    );
}
