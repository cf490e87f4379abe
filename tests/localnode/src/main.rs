//! audit-localnode: a Kubernetes node without containers. It registers a Node, binds pending
//! Pods to itself (it is the only node), and runs each container whose image is the
//! audit-manager runtime as a local process of the freshly built binary: args from the Pod,
//! env resolved from values, ConfigMaps, Secrets and the downward API, ConfigMap volumes
//! written to a scratch folder, its own loopback address (127.0.0.x) as the pod IP. It reports
//! phase, conditions and readiness from the real readiness probe, sends SIGTERM on deletion
//! and SIGKILL after the grace period, and restarts crashed containers per restartPolicy. Pods
//! of other images are marked Failed with the reason.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser, Clone)]
#[command(
    name = "audit-localnode",
    about = "Runs audit-manager pods as local processes"
)]
struct Args {
    /// This node's name.
    #[arg(long, default_value = "local-node")]
    node_name: String,
    /// The audit-manager binary to run for runtime-image containers.
    #[arg(long)]
    runtime_binary: PathBuf,
    /// Images whose repository ends with this run as the runtime binary.
    #[arg(long, default_value = "audit-manager")]
    image_suffix: String,
    /// Where pod folders (config files, logs) go.
    #[arg(long, default_value = "/tmp/audit-localnode")]
    work_dir: PathBuf,
}

/// One running container process.
struct Running {
    child: tokio::process::Child,
    ip: String,
    restarts: i32,
    started: Instant,
    ready: bool,
}

struct LocalNode {
    args: Args,
    client: Client,
    pods: Mutex<HashMap<String, Running>>, // key: namespace/name
    next_ip: Mutex<u8>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the API server (KUBECONFIG)")?;
    let node = Arc::new(LocalNode {
        args,
        client,
        pods: Mutex::default(),
        next_ip: Mutex::new(10),
    });
    node.register().await.context("registering the Node")?;
    tokio::spawn(Arc::clone(&node).heartbeat());
    tokio::spawn(Arc::clone(&node).supervise());
    let pods: Api<Pod> = Api::all(node.client.clone());
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    tracing::info!(node = node.args.node_name, "local node ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    if let Err(e) = node.handle(&pod).await {
                        tracing::warn!(pod = pod.name_any(), error = format!("{e:#}"), "pod handling failed");
                    }
                }
                Some(Ok(watcher::Event::Delete(pod))) => node.stop(&key(&pod), 0).await,
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watch"),
                None => break,
            },
        }
    }
    // Stop everything this node started.
    let keys: Vec<String> = node.pods.lock().await.keys().cloned().collect();
    futures::future::join_all(keys.iter().map(|k| node.stop(k, 10))).await;
    Ok(())
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

impl LocalNode {
    async fn register(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.args.node_name, "labels": {"kubernetes.io/hostname": self.args.node_name, "kubernetes.io/os": "linux"}},
        }))?;
        nodes
            .patch(
                &self.args.node_name,
                &PatchParams::apply("audit-localnode").force(),
                &Patch::Apply(&node),
            )
            .await?;
        self.node_status().await
    }

    async fn node_status(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "LocalNodeReady",
                            "message": "runs audit-manager pods as local processes",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.args.node_name}],
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "110"},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.36.3-localnode",
                         "bootID": "", "containerRuntimeVersion": "local-process://1", "kernelVersion": "", "kubeProxyVersion": "",
                         "machineID": "", "osImage": "local", "systemUUID": ""},
        }});
        nodes
            .patch_status(
                &self.args.node_name,
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
        Ok(())
    }

    /// Node status and the kube-node-lease Lease every 10 s, so the node lifecycle controller
    /// keeps the node Ready.
    async fn heartbeat(self: Arc<Self>) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        loop {
            if let Err(e) = self.node_status().await {
                tracing::warn!(error = %e, "node status");
            }
            let lease: Result<Lease, _> = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.args.node_name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.args.node_name, "leaseDurationSeconds": 40,
                         "renewTime": k8s_openapi::jiff::Timestamp::now().to_string()}
            }));
            if let Ok(lease) = lease
                && let Err(e) = leases
                    .patch(
                        &self.args.node_name,
                        &PatchParams::apply("audit-localnode").force(),
                        &Patch::Apply(&lease),
                    )
                    .await
            {
                tracing::warn!(error = %e, "node lease");
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    async fn handle(&self, pod: &Pod) -> anyhow::Result<()> {
        let spec = pod.spec.clone().unwrap_or_default();
        let k = key(pod);
        if pod.metadata.deletion_timestamp.is_some() {
            if spec.node_name.as_deref() == Some(self.args.node_name.as_str()) {
                let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
                self.stop(&k, grace).await;
                // The kubelet's final delete.
                let pods: Api<Pod> =
                    Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                let _ = pods
                    .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
            }
            return Ok(());
        }
        match spec.node_name.as_deref() {
            None | Some("") => return self.bind(pod).await,
            Some(n) if n != self.args.node_name => return Ok(()),
            Some(_) => {}
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if self.pods.lock().await.contains_key(&k) || phase == "Failed" || phase == "Succeeded" {
            return Ok(());
        }
        self.start(pod).await
    }

    /// This node is the scheduler: every pending pod is bound here.
    async fn bind(&self, pod: &Pod) -> anyhow::Result<()> {
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.name_any()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.args.node_name}});
        let data = serde_json::to_vec(&binding)?;
        let request = http_post(
            &format!(
                "/api/v1/namespaces/{}/pods/{}/binding",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ),
            data,
        )?;
        match self.client.request::<serde_json::Value>(request).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e).context("binding the pod"),
        }
    }

    async fn start(&self, pod: &Pod) -> anyhow::Result<()> {
        let k = key(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let Some(container) = spec.containers.first().cloned() else {
            return Ok(());
        };
        let image = container.image.clone().unwrap_or_default();
        let repository = image.rsplit_once(':').map(|(r, _)| r).unwrap_or(&image);
        if !repository.ends_with(&self.args.image_suffix) {
            self.set_status(pod, json!({"phase": "Failed", "reason": "UnsupportedImage",
                "message": format!("the local node only runs the audit-manager runtime image (…{}); {image} cannot run here", self.args.image_suffix)})).await?;
            return Ok(());
        }
        let port = container
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .map(|p| p.container_port)
            .unwrap_or(8000);
        let ip = self.free_ip(port as u16).await?;
        let child = self.spawn(pod, &container, &ip).await?;
        self.pods.lock().await.insert(
            k,
            Running {
                child,
                ip: ip.clone(),
                restarts: 0,
                started: Instant::now(),
                ready: false,
            },
        );
        self.set_status(pod, running_status(&ip, &container.name, false, 0))
            .await?;
        Ok(())
    }

    /// The next loopback address (127.0.0.10 and up) on which the container's port is free,
    /// so leftovers of another run cannot take a pod's address.
    async fn free_ip(&self, port: u16) -> anyhow::Result<String> {
        let mut next = self.next_ip.lock().await;
        for _ in 0..240 {
            *next = if *next >= 250 { 10 } else { *next + 1 };
            let ip = format!("127.0.0.{}", *next);
            if std::net::TcpListener::bind((ip.as_str(), port)).is_ok() {
                return Ok(ip);
            }
        }
        anyhow::bail!("no loopback address with port {port} free in 127.0.0.10-250")
    }

    async fn spawn(
        &self,
        pod: &Pod,
        container: &Container,
        ip: &str,
    ) -> anyhow::Result<tokio::process::Child> {
        let namespace = pod.namespace().unwrap_or_default();
        let dir = self.args.work_dir.join(&namespace).join(pod.name_any());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // ConfigMap and Secret volumes become folders (their `items`, or every key); paths in
        // env, args and the ConfigMaps' files are rewritten to them, longest mount path first.
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut files: Vec<(std::path::PathBuf, String)> = Vec::new();
        let mut rewrites: Vec<(String, String)> = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
                continue;
            };
            let (data, items) = if let Some(cm) = &volume.config_map {
                let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
                let data = maps
                    .get(&cm.name)
                    .await
                    .with_context(|| format!("ConfigMap {}", cm.name))?
                    .data
                    .unwrap_or_default();
                (data, cm.items.clone())
            } else if let Some(secret) = &volume.secret {
                let name = secret.secret_name.clone().unwrap_or_default();
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                let data = secrets
                    .get(&name)
                    .await
                    .with_context(|| format!("Secret {name}"))?
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                (data, secret.items.clone())
            } else {
                continue;
            };
            let local = dir.join(mount.name.clone());
            std::fs::create_dir_all(&local)?;
            let chosen: Vec<(String, String)> = match items {
                Some(items) => items.into_iter().map(|i| (i.key, i.path)).collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in chosen {
                let content = data
                    .get(&key)
                    .with_context(|| format!("volume {} has no key {key}", mount.name))?;
                files.push((local.join(path), content.clone()));
            }
            rewrites.push((mount.mount_path.clone(), local.display().to_string()));
        }
        rewrites.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        let rewrite = |v: String| {
            rewrites
                .iter()
                .fold(v, |acc, (from, to)| acc.replace(from, to))
        };
        for (path, content) in files {
            std::fs::write(&path, rewrite(content))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let mut env = BTreeMap::new();
        for e in container.env.clone().unwrap_or_default() {
            let value = match (e.value, e.value_from) {
                (Some(v), _) => v,
                (None, Some(from)) => self.resolve(&namespace, pod, from).await?,
                _ => String::new(),
            };
            env.insert(e.name, rewrite(value));
        }
        // The pod's own address; the port stays the container's.
        env.insert("AUDIT_MANAGER__SERVER__HOST".into(), ip.to_string());
        // Loopback inside a real pod; here the pod's own address, so pods do not collide.
        env.insert("AUDIT_MANAGER__SERVER__ADMIN_HOST".into(), ip.to_string());
        let args: Vec<String> = container
            .command
            .clone()
            .unwrap_or_default()
            .into_iter()
            .skip(1)
            .chain(container.args.clone().unwrap_or_default())
            .map(rewrite)
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("container.log"))?;
        let mut command = tokio::process::Command::new(&self.args.runtime_binary);
        // The containers die with the node, even when it is killed, and start with no signal
        // blocked (a mask is inherited across exec): a pod must see SIGTERM to drain.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        tracing::info!(pod = pod.name_any(), %ip, ?args, "starting container");
        command.spawn().context("starting the runtime binary")
    }

    async fn resolve(
        &self,
        namespace: &str,
        pod: &Pod,
        from: k8s_openapi::api::core::v1::EnvVarSource,
    ) -> anyhow::Result<String> {
        if let Some(r) = from.secret_key_ref {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let secret = secrets
                .get(&r.name)
                .await
                .with_context(|| format!("Secret {}", r.name))?;
            return Ok(secret
                .data
                .unwrap_or_default()
                .get(&r.key)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default());
        }
        if let Some(r) = from.config_map_key_ref {
            let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            let map = maps
                .get(&r.name)
                .await
                .with_context(|| format!("ConfigMap {}", r.name))?;
            return Ok(map
                .data
                .unwrap_or_default()
                .get(&r.key)
                .cloned()
                .unwrap_or_default());
        }
        if let Some(f) = from.field_ref {
            return Ok(match f.field_path.as_str() {
                "metadata.name" => pod.name_any(),
                "metadata.namespace" => namespace.to_string(),
                _ => String::new(),
            });
        }
        Ok(String::new())
    }

    async fn set_status(&self, pod: &Pod, status: serde_json::Value) -> anyhow::Result<()> {
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace` seconds.
    async fn stop(&self, k: &str, grace: i64) {
        let Some(mut running) = self.pods.lock().await.remove(k) else {
            return;
        };
        if let Some(pid) = running.child.id() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let waited = tokio::time::timeout(
            Duration::from_secs(grace.max(0) as u64),
            running.child.wait(),
        )
        .await;
        if waited.is_err() {
            let _ = running.child.kill().await;
        }
        tracing::info!(pod = k, "container stopped");
    }

    /// Every second: readiness from the real probe, restarts of crashed containers.
    async fn supervise(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let keys: Vec<String> = self.pods.lock().await.keys().cloned().collect();
            for k in keys {
                let Some((namespace, name)) = k.split_once('/') else {
                    continue;
                };
                let Ok(pod) = Api::<Pod>::namespaced(self.client.clone(), namespace)
                    .get(name)
                    .await
                else {
                    continue;
                };
                let container = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first().cloned())
                    .unwrap_or_default();
                let exited = {
                    let mut guard = self.pods.lock().await;
                    let Some(r) = guard.get_mut(&k) else { continue };
                    r.child.try_wait().ok().flatten()
                };
                if let Some(status) = exited {
                    let policy = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.restart_policy.clone())
                        .unwrap_or_else(|| "Always".into());
                    let restart =
                        policy == "Always" || (policy == "OnFailure" && !status.success());
                    if !restart {
                        self.pods.lock().await.remove(&k);
                        let phase = if status.success() {
                            "Succeeded"
                        } else {
                            "Failed"
                        };
                        let _ = self.set_status(&pod, json!({"phase": phase, "conditions": [{"type": "Ready", "status": "False"}]})).await;
                        continue;
                    }
                    let (ip, restarts) = {
                        let guard = self.pods.lock().await;
                        let Some(r) = guard.get(&k) else { continue };
                        (r.ip.clone(), r.restarts + 1)
                    };
                    tracing::warn!(pod = k, %status, restarts, "container exited; restarting");
                    tokio::time::sleep(Duration::from_secs(u64::from(restarts.min(10) as u32)))
                        .await;
                    if let Ok(child) = self.spawn(&pod, &container, &ip).await {
                        self.pods.lock().await.insert(
                            k.clone(),
                            Running {
                                child,
                                ip: ip.clone(),
                                restarts,
                                started: Instant::now(),
                                ready: false,
                            },
                        );
                    }
                    let _ = self
                        .set_status(&pod, running_status(&ip, &container.name, false, restarts))
                        .await;
                    continue;
                }
                let (ip, was_ready, restarts, started) = {
                    let guard = self.pods.lock().await;
                    let Some(r) = guard.get(&k) else { continue };
                    (r.ip.clone(), r.ready, r.restarts, r.started)
                };
                let ready = probe(&container, &ip, started).await;
                if ready != was_ready {
                    if let Some(r) = self.pods.lock().await.get_mut(&k) {
                        r.ready = ready;
                    }
                    let _ = self
                        .set_status(&pod, running_status(&ip, &container.name, ready, restarts))
                        .await;
                }
            }
        }
    }
}

fn running_status(ip: &str, container: &str, ready: bool, restarts: i32) -> serde_json::Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let flag = if ready { "True" } else { "False" };
    json!({
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ],
        "containerStatuses": [{"name": container, "ready": ready, "started": true, "restartCount": restarts,
            "image": "local", "imageID": "local", "state": {"running": {"startedAt": now}}}],
    })
}

/// The container's readiness probe (HTTP GET), or "started" when it has none.
async fn probe(container: &Container, ip: &str, started: Instant) -> bool {
    let Some(get) = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.clone())
    else {
        return started.elapsed() > Duration::from_secs(1);
    };
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
            .ports
            .as_ref()
            .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some(name.as_str())))
            .map(|p| p.container_port)
            .unwrap_or(80),
    };
    let path = get.path.unwrap_or_else(|| "/".into());
    let work = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect((ip, port as u16))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse::<u16>().ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), work).await,
        Ok(Some(200..=399))
    )
}

fn http_post(path: &str, body: Vec<u8>) -> anyhow::Result<http::Request<Vec<u8>>> {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(body)
        .context("building a request")
}
