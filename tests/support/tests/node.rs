//! The real node: the runtime's image, built here, run by kubelet and containerd under Pod
//! Security `restricted`; kubelet's probes, `kubectl logs` and `exec`, a Service's ClusterIP
//! through kube-proxy, a pod that stops promptly on deletion; and a machine left as it was
//! found once the node stops.
//! (Its own test binary: it starts and stops a cluster of its own.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use audit_testenv::images::{Image, Images};
use audit_testenv::node::MachineState;
use audit_testenv::{Cluster, workspace_binary};

fn run(mut c: Command) -> String {
    let out = c.output().expect("running kubectl");
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn apply(cluster: &Cluster, yaml: &str) {
    let mut c = cluster.kube.kubectl();
    c.args(["apply", "-f", "-"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("kubectl apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("writing to kubectl");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP GET, the status code and body.
fn get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &address.parse().map_err(std::io::Error::other)?,
        Duration::from_secs(3),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, text))
}

const LIVE: &str = "/v1/auditmanager/health/live";

#[test]
fn the_runtime_image_runs_restricted_on_a_real_node_and_the_machine_is_left_as_found() {
    let before = MachineState::read();
    let cluster = Cluster::start().expect("the cluster with a real node");
    let images = Images::open().expect("the image store");
    let built = images
        .build(Image::Runtime, &workspace_binary("audit-manager"))
        .expect("the runtime image");
    let archive = images.archive(&built.reference).expect("the image archive");
    cluster.import(&archive).expect("importing into containerd");

    let host = cluster.bridge.host;
    apply(
        &cluster,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tenant\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n",
    );
    // ServiceAccount admission is on: pods wait for the controller to make `default`.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .kube
        .kubectl()
        .args(["get", "serviceaccount", "default", "-n", "tenant"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            Instant::now() < deadline,
            "no default ServiceAccount in tenant"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    apply(
        &cluster,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: runtime, namespace: tenant, labels: {{app: runtime}}}}
spec:
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {{type: RuntimeDefault}}
  containers:
    - name: runtime
      image: {image}
      imagePullPolicy: Never
      args: [serve]
      env:
        # An address on the bridge where nothing listens: the ingest starts, Kafka is down.
        - {{name: AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS, value: "{host}:1"}}
        - {{name: AUDIT_MANAGER__COMPONENTS__CONSUMER, value: "false"}}
        - {{name: AUDIT_MANAGER__COMPONENTS__MAINTENANCE, value: "false"}}
      ports: [{{name: http, containerPort: 8000}}]
      readinessProbe: {{httpGet: {{path: {LIVE}, port: http}}, periodSeconds: 1}}
      livenessProbe: {{httpGet: {{path: {LIVE}, port: http}}, periodSeconds: 5}}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {{name: runtime, namespace: tenant}}
spec:
  selector: {{app: runtime}}
  ports: [{{port: 80, targetPort: http}}]
"#,
            image = built.reference
        ),
    );

    // Ready: kubelet ran the readiness probe against the pod.
    let mut wait = cluster.kube.kubectl();
    wait.args([
        "wait",
        "-n",
        "tenant",
        "--for=condition=Ready",
        "pod/runtime",
        "--timeout=120s",
    ]);
    run(wait);
    let mut ip = cluster.kube.kubectl();
    ip.args([
        "get",
        "pod",
        "runtime",
        "-n",
        "tenant",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    let pod_ip = run(ip);
    let (code, body) = get(&format!("{pod_ip}:8000"), LIVE).expect("GET through the pod IP");
    assert_eq!(code, 200, "{body}");

    // Through the Service's ClusterIP (kube-proxy's rules), as emitters reach it.
    let mut cip = cluster.kube.kubectl();
    cip.args([
        "get",
        "service",
        "runtime",
        "-n",
        "tenant",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let cluster_ip = run(cip);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(&format!("{cluster_ip}:80"), LIVE) {
            Ok((200, _)) => break,
            other if Instant::now() > deadline => {
                panic!("GET through ClusterIP {cluster_ip}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }

    // kubectl logs and exec reach the kubelet; the root file system is read-only.
    let mut logs = cluster.kube.kubectl();
    logs.args(["logs", "runtime", "-n", "tenant"]);
    assert!(!run(logs).is_empty(), "kubectl logs printed nothing");
    let mut exec = cluster.kube.kubectl();
    exec.args([
        "exec",
        "runtime",
        "-n",
        "tenant",
        "--",
        "/bin/sh",
        "-c",
        "id -u; id -g; touch /usr/x 2>/dev/null && echo writable || echo read-only",
    ]);
    assert_eq!(run(exec), "65532\n65532\nread-only");

    // A root pod is refused by Pod Security admission in this namespace.
    let mut root = cluster.kube.kubectl();
    root.args([
        "run",
        "root",
        "-n",
        "tenant",
        "--image",
        &built.reference,
        "--image-pull-policy=Never",
        "--overrides",
        r#"{"spec":{"securityContext":{"runAsUser":0}}}"#,
    ]);
    let refused = root.output().expect("kubectl run");
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("violates PodSecurity"),
        "a root pod was admitted: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Deleting the pod: SIGTERM reaches the runtime, which drains and exits well inside its
    // grace period.
    let started = Instant::now();
    let mut delete = cluster.kube.kubectl();
    delete.args([
        "delete",
        "pod",
        "runtime",
        "-n",
        "tenant",
        "--wait=true",
        "--timeout=60s",
    ]);
    run(delete);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the pod took {took:?} to stop"
    );

    drop(cluster);
    let after = MachineState::read();
    assert_eq!(before, after, "the node left the machine changed");
}
