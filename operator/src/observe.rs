//! Reading the world back: the workload, the runtime's own health report from its ready pods,
//! and the consumer group's lag.

use std::collections::BTreeMap;
use std::time::Duration;

use audit_manager::http::paths;
use audit_manager_crds::AuditManager;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::build::{self, Names};
use crate::connections::Connections;
use crate::context::Ctx;
use crate::status::{Outcome, Problem, Workload};
use crate::topics;

/// The runtime Deployment: available replicas, or why there are none.
pub async fn workload(ctx: &Ctx, am: &AuditManager, names: &Names) -> Result<Workload, Problem> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &am.namespace().unwrap_or_default());
    let d = api
        .get_opt(&names.app)
        .await
        .map_err(|e| Problem::new("KubernetesApiError", e.to_string()))?
        .ok_or_else(|| {
            Problem::new(
                "WorkloadMissing",
                format!("Deployment {} does not exist yet", names.app),
            )
        })?;
    let status = d.status.unwrap_or_default();
    let desired = d.spec.and_then(|s| s.replicas).unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    if available > 0 {
        Ok(Workload {
            message: format!("{available} of {desired} replicas available"),
            desired,
            ready,
        })
    } else {
        Err(Problem::new(
            "WorkloadUnavailable",
            format!(
                "no replica of Deployment {} is available yet ({desired} desired): see `kubectl describe deployment {}`",
                names.app, names.app
            ),
        ))
    }
}

/// The runtime's own health report from each of its ready pods.
pub async fn health(ctx: &Ctx, am: &AuditManager) -> Outcome {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &am.namespace().unwrap_or_default());
    let list = pods
        .list(&ListParams::default().labels(&build::selector_string(am)))
        .await
        .map_err(|e| Problem::new("KubernetesApiError", e.to_string()))?;
    let ready = ready_pod_ips(&list.items);
    if ready.is_empty() {
        return Err(Problem::new(
            "NoReadyPods",
            "no runtime pod is ready, so its /health report cannot be read".into(),
        ));
    }
    let mut problems = Vec::new();
    for ip in &ready {
        match get(&format!("{ip}:{}", ctx.runtime_port), paths::HEALTH).await {
            Ok((200, _)) => {}
            Ok((status, body)) => problems.push(format!("{ip}: {status} {}", summary(&body))),
            Err(e) => problems.push(format!("{ip}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(format!("{} ready pod(s) report healthy", ready.len()))
    } else {
        Err(Problem::new("Unhealthy", problems.join("; ")))
    }
}

/// The addresses of the pods whose `Ready` condition is True.
pub fn ready_pod_ips(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .collect()
}

/// The consumer group's lag per partition of the events topic.
pub async fn lag(
    am: &AuditManager,
    connections: &Connections,
) -> Result<BTreeMap<i32, i64>, Problem> {
    let kafka = am.spec.kafka.clone();
    let c = connections.clone();
    tokio::task::spawn_blocking(move || topics::lag(&kafka, &c))
        .await
        .unwrap_or_else(|e| Err(Problem::new("InternalError", e.to_string())))
}

/// The error messages of a runtime health envelope.
fn summary(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_string))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// The largest health answer read from a pod.
pub const MAX_HEALTH_ANSWER: usize = 64 * 1024;

/// A minimal HTTP/1.0 GET of `path` from `address` (host:port) within 3 s: (status, body).
async fn get(address: &str, path: &str) -> Result<(u16, String), String> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| format!("sending: {e}"))?;
        // A pod runs a tenant's image: what it answers is read only up to a bound, so a huge
        // answer cannot exhaust the operator's memory.
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_HEALTH_ANSWER as u64 + 1)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if response.len() > MAX_HEALTH_ANSWER {
            return Err(format!(
                "its answer is larger than {} KiB, so it is not read",
                MAX_HEALTH_ANSWER / 1024
            ));
        }
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "not an HTTP response: {}",
                    head.chars().take(80).collect::<String>()
                )
            })?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every connection with `status` and a body of `size` bytes.
    async fn server(size: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = s.read(&mut request).await;
                    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n");
                    let _ = s.write_all(head.as_bytes()).await;
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn a_huge_health_answer_is_refused_without_being_read() {
        let (status, body) = get(&server(100).await, paths::HEALTH)
            .await
            .expect("a small answer is read");
        assert_eq!((status, body.len()), (200, 100));
        let e = get(&server(512 * 1024 * 1024).await, paths::HEALTH)
            .await
            .expect_err("half a gigabyte is not read");
        assert!(e.contains("larger than 64 KiB"), "{e}");
    }
}
