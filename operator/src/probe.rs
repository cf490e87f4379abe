//! A minimal HTTP/1.0 GET for reading the runtime's health report from a pod.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` from `address` (host:port) within 3 s: (status, body).
pub async fn get(address: &str, path: &str) -> Result<(u16, String), String> {
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
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("reading: {e}"))?;
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
