//! `make demo`: the whole system on one machine. A cluster with a real node (etcd,
//! kube-apiserver, controllers, containerd, kubelet, kube-proxy), PostgreSQL and Kafka on its
//! bridge; the project's images built and the operator installed in-cluster with `kubectl
//! apply -k manifests/`; `examples/auditmanager-local.yaml` under Pod Security `restricted`;
//! the runtime pods and their logs; the sample events and a burst POSTed through the Service;
//! rows through the reader role; `kubectl get auditmanagers` with lag falling to 0.
//! `DEMO_EXIT=1`: the same, non-interactively, exit 0 only if every step succeeded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use audit_testenv::http::HttpClient;
use audit_testenv::{Kafka, Postgres};
use serde_json::{Value, json};

type Step<T> = Result<T, String>;

fn main() -> std::process::ExitCode {
    let signals = stop_signals();
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    let interactive = !std::env::var("DEMO_EXIT").is_ok_and(|v| v == "1");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(demo());
    match result {
        Ok(running) => {
            if interactive {
                println!("==> running; press Ctrl-C to stop everything");
                let mut received = 0;
                unsafe { libc::sigwait(&signals, &mut received) };
                println!("\n==> stopping");
            } else {
                println!("==> DEMO_EXIT=1: every step succeeded; stopping");
            }
            drop(running);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn step(what: &str) -> Instant {
    println!("==> {what}");
    Instant::now()
}

fn done(started: Instant, what: &str) {
    println!("    ok: {what} ({:.1} s)", started.elapsed().as_secs_f64());
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kubectl(kube: &audit_testenv::Kube, args: &[&str]) -> Step<String> {
    let out = kube
        .kubectl()
        .args(args)
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The demo's AuditManager as JSON (`kubectl get auditmanager audit -o json`).
fn demo_resource(kube: &audit_testenv::Kube) -> Step<Value> {
    let json = kubectl(
        kube,
        &[
            "-n",
            "audit-demo",
            "get",
            "auditmanager",
            "audit",
            "-o",
            "json",
        ],
    )?;
    serde_json::from_str(&json).map_err(|e| format!("the AuditManager as JSON: {e}"))
}

fn kubectl_stdin(kube: &audit_testenv::Kube, args: &[&str], input: &str) -> Step<String> {
    use std::io::Write;
    let mut child = kube
        .kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("kubectl: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the demo runs, stopped in this order when dropped: the node's pods and the control
/// plane first, then the servers they used.
struct Running {
    cluster: audit_testenv::Cluster,
    _postgres: Postgres,
    _kafka: Kafka,
}

async fn demo() -> Step<Running> {
    let t = step(
        "starting a cluster with a real node (etcd, kube-apiserver, controllers, containerd, kubelet, kube-proxy; the first run builds them)",
    );
    let cluster = audit_testenv::Cluster::start().map_err(|e| e.to_string())?;
    let host = cluster.bridge.host;
    done(
        t,
        &format!(
            "{}, node on bridge {} ({})",
            cluster.kube.version(),
            cluster.bridge.name,
            cluster.bridge.subnet
        ),
    );

    let t = step("starting PostgreSQL and Kafka, also on the bridge so that pods reach them");
    let pg = std::thread::spawn(move || Postgres::start_also_on(host));
    let kafka = std::thread::spawn(move || Kafka::start_also_on(host));
    let (Ok(pg), Ok(kafka)) = (pg.join(), kafka.join()) else {
        return Err("a component failed to start".into());
    };
    let (pg, kafka) = (
        pg.map_err(|e| e.to_string())?,
        kafka.map_err(|e| e.to_string())?,
    );
    let bootstrap = kafka
        .bootstrap_on_node()
        .ok_or("Kafka has no listener on the bridge")?;
    done(
        t,
        &format!("{}, Kafka {} on {bootstrap}", pg.version(), kafka.version()),
    );
    let running = Running {
        cluster,
        _postgres: pg,
        _kafka: kafka,
    };
    let (cluster, pg) = (&running.cluster, &running._postgres);
    let kube = &cluster.kube;

    let t = step(
        "building the project's images and installing the operator: kubectl apply -k manifests/ with the local image",
    );
    let installed = tokio::task::block_in_place(|| audit_testenv::install::operator(cluster))
        .map_err(|e| e.to_string())?;
    done(
        t,
        &format!(
            "operator {}:{} running in-cluster; runtime image {}:{}",
            installed.operator.repository,
            installed.operator.tag,
            installed.runtime.repository,
            installed.runtime.tag
        ),
    );

    let t = step(
        "applying examples/auditmanager-local.yaml in a namespace under Pod Security `restricted`",
    );
    kubectl_stdin(
        kube,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: audit-demo\n  labels: {pod-security.kubernetes.io/enforce: restricted}\n",
    )?;
    let (user, password) = pg.superuser();
    kubectl(
        kube,
        &[
            "-n",
            "audit-demo",
            "create",
            "secret",
            "generic",
            "postgres-admin",
            &format!("--from-literal=username={user}"),
            &format!("--from-literal=password={password}"),
            "--dry-run=client",
            "-o",
            "yaml",
        ],
    )
    .and_then(|yaml| kubectl_stdin(kube, &["apply", "-f", "-"], &yaml))?;
    // As a database admin would: mark the Secret as credentials for this server only.
    for (verb, mark) in [
        (
            "label",
            format!("{}=true", audit_manager_crds::CREDENTIALS_LABEL),
        ),
        (
            "annotate",
            format!("{}={host}", audit_manager_crds::ALLOWED_HOSTS),
        ),
    ] {
        kubectl(
            kube,
            &[
                "-n",
                "audit-demo",
                verb,
                "--overwrite",
                "secret",
                "postgres-admin",
                &mark,
            ],
        )?;
    }
    let example = std::fs::read_to_string(repo().join("examples/auditmanager-local.yaml"))
        .map_err(|e| e.to_string())?
        .replace("POSTGRES_HOST", &host.to_string())
        .replace("POSTGRES_PORT", &pg.port().to_string())
        .replace("KAFKA_BOOTSTRAP", &bootstrap)
        .replace("RUNTIME_IMAGE", &installed.runtime.repository)
        .replace("RUNTIME_TAG", &installed.runtime.tag);
    kubectl_stdin(kube, &["apply", "-f", "-"], &example)?;
    done(t, "AuditManager audit-demo/audit applied");

    let t = step("waiting for the operator: database, topics, two runtime pods, Ready");
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let am = demo_resource(kube)?;
        let conditions = am["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let line = conditions
            .iter()
            .map(|c| {
                format!(
                    "{}={}",
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        if line != last {
            println!("    {line}");
            last = line;
        }
        if conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not Ready after 240 s: {}",
                serde_json::to_string_pretty(&am["status"]).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    done(t, "Ready");

    let t = step("the runtime pods: real containers of the project's image");
    print!(
        "{}",
        kubectl(
            kube,
            &[
                "-n",
                "audit-demo",
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/instance=audit",
                "-o",
                "wide"
            ]
        )?
    );
    let logs = kubectl(
        kube,
        &[
            "-n",
            "audit-demo",
            "logs",
            "deployment/audit-audit-manager",
            "--tail=2",
        ],
    )?;
    for line in logs.lines() {
        println!("    {line}");
    }
    // Emitters reach the runtime through its Service's ClusterIP (kube-proxy's rules).
    let cluster_ip = kubectl(
        kube,
        &[
            "-n",
            "audit-demo",
            "get",
            "service",
            "audit-audit-manager",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;
    let endpoint = format!("{}:80", cluster_ip.trim());
    done(t, &format!("kubectl logs works; Service at {endpoint}"));

    let t =
        step("POSTing the sample events of examples/events/ and a burst of 3,000 generated ones");
    let mut client = HttpClient::connect(&endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/events"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut sent = 0usize;
    for file in &files {
        let body = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
        let value: Value =
            serde_json::from_str(&body).map_err(|e| format!("{}: {e}", file.display()))?;
        let (path, n) = match value.get("events").and_then(Value::as_array) {
            Some(events) => ("/v1/auditmanager/events/batch", events.len()),
            None => ("/v1/auditmanager/events", 1),
        };
        let answer = client
            .post(path, "application/json", body)
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 202 {
            return Err(format!(
                "{}: {} {:?}",
                file.display(),
                answer.status,
                answer.json()
            ));
        }
        sent += n;
    }
    for batch in 0..6 {
        let events: Vec<Value> = (0..500).map(|i| json!({
            "specversion": "1.0", "id": format!("burst-{batch}-{i}"), "source": "/demo/burst",
            "type": "org.openg2p.demo.generated", "time": chrono::Utc::now().to_rfc3339(),
            "data": {"actor": {"type": "service", "id": format!("svc-{}", i % 13)}, "action": "tick", "outcome": "success"}})).collect();
        let answer = client
            .post(
                "/v1/auditmanager/events/batch",
                "application/json",
                json!({"events": events}).to_string(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 202 {
            return Err(format!("burst: {} {:?}", answer.status, answer.json()));
        }
        sent += 500;
    }
    done(t, &format!("{sent} events accepted (202)"));

    let t = step("reading the rows through the reader role");
    let secret: Value = serde_json::from_str(&kubectl(
        kube,
        &[
            "-n",
            "audit-demo",
            "get",
            "secret",
            "audit-db-reader",
            "-o",
            "json",
        ],
    )?)
    .map_err(|e| e.to_string())?;
    let decode = |k: &str| -> Step<String> {
        let b64 = secret["data"][k]
            .as_str()
            .ok_or(format!("reader secret has no {k}"))?;
        let out = Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().map(|mut s| s.write_all(b64.as_bytes()));
                c.wait_with_output()
            })
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let url = pg.url(&decode("username")?, &decode("password")?, "audit");
    let pool = sqlx::PgPool::connect(&url)
        .await
        .map_err(|e| format!("connecting as the reader: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?;
        println!("    {n} rows");
        if n as usize >= sent {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {n} of {sent} events became rows"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT occurred_at::text, type, actor_id, outcome, reason FROM audit_events WHERE source <> '/demo/burst' ORDER BY occurred_at LIMIT 10")
        .fetch_all(&pool).await.map_err(|e| e.to_string())?;
    for r in rows {
        println!(
            "    {} {:<34} {:<22} {:<8} {}",
            r.0,
            r.1,
            r.2,
            r.3,
            r.4.unwrap_or_default()
        );
    }
    done(t, "every accepted event is a row");

    let t = step("kubectl get auditmanagers until the lag is 0");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let table = kubectl(kube, &["-n", "audit-demo", "get", "auditmanagers"])?;
        print!("{table}");
        let am = demo_resource(kube)?;
        if am["status"]["consumerLag"]["total"] == json!(0) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the lag did not reach 0".into());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    print!(
        "{}",
        kubectl(
            kube,
            &[
                "-n",
                "audit-demo",
                "get",
                "auditmanager",
                "audit",
                "-o",
                "jsonpath={range .status.conditions[*]}    {.type}={.status} {.reason}: {.message}{\"\\n\"}{end}"
            ]
        )?
    );
    done(t, "lag 0");

    println!();
    println!("Explore:");
    println!(
        "  POST   curl -sX POST http://{endpoint}/v1/auditmanager/events -H 'content-type: application/json' -d @examples/events/01-login-success.json"
    );
    println!(
        "  docs   http://{endpoint}/v1/auditmanager/docs     health http://{endpoint}/v1/auditmanager/health"
    );
    println!(
        "  kubectl {}/kubectl --kubeconfig={} -n audit-demo get auditmanagers,pods",
        kube.bin_dir().display(),
        kube.kubeconfig().display()
    );
    println!("  psql   psql '{url}' -c 'SELECT * FROM audit_events LIMIT 5'");
    Ok(running)
}

fn stop_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
