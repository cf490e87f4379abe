//! A small keep-alive HTTP/1.1 client for tests and the benchmark: one connection, requests in
//! sequence, no pooling, no redirects; just what talking to the runtime needs. Like any
//! keep-alive client it opens a new connection when the server has closed an idle one
//! (the runtime does after `server.request_head_timeout_seconds`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// An HTTP answer: status, headers, whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One keep-alive connection to `host:port`.
pub struct HttpClient {
    address: String,
    sender: SendRequest<Full<Bytes>>,
}

impl HttpClient {
    pub async fn connect(address: &str) -> Result<HttpClient, HttpError> {
        Ok(HttpClient {
            address: address.to_string(),
            sender: open(address).await?,
        })
    }

    /// Sends one request; `headers` are extra (name, value) pairs.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, HttpError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.address);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into()))?;
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.sender = open(&self.address).await?;
            self.sender.ready().await?;
        }
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// POSTs `body` as `content_type`.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Answer, HttpError> {
        self.send("POST", path, &[("content-type", content_type)], body)
            .await
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, HttpError> {
        self.send("GET", path, &[], Bytes::new()).await
    }
}

/// A new connection to `address`.
async fn open(address: &str) -> Result<SendRequest<Full<Bytes>>, HttpError> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|source| HttpError::Connect {
            address: address.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
