//! Reading a request body within its limits: its size (413 before the rest is read), the time
//! the client takes (408), and the shared memory budget of bodies in flight (503).

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::StreamExt;

use super::envelope::ApiError;
use super::state::AppState;
use crate::ingest::bodies::Held;

/// The largest body of one endpoint, and the key that sets it (for the error message).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub bytes: usize,
    pub key: &'static str,
}

/// A body read whole, and its share of the budget (held until the request is answered).
pub struct Read {
    pub bytes: Vec<u8>,
    pub _held: Held,
}

/// Reads `body`: refuses it as soon as it is known to exceed `limit` (from Content-Length, or
/// while reading), when the client is slower than `server.body_read_timeout_seconds`, or when
/// the budget of bodies in flight has no room for it.
pub async fn read(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: Limit,
) -> Result<Read, ApiError> {
    let too_large = || {
        ApiError::TooLarge(format!(
            "the request body exceeds {} bytes ({})",
            limit.bytes, limit.key
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit.bytes) {
        return Err(too_large());
    }
    let mut held = Held::default();
    let busy = || {
        ApiError::Overloaded {
        message: "the server is reading too many large request bodies at once (ingest.max_inflight_body_bytes); nothing of this request was accepted".into(),
        retry_after_seconds: state.config.ingest.retry_after_seconds,
    }
    };
    let mut bytes = Vec::new();
    if let Some(n) = declared {
        state.bodies.cover(&mut held, n).map_err(|_| busy())?;
        bytes.reserve_exact(n);
    }
    let timeout = Duration::from_secs(state.config.server.body_read_timeout_seconds);
    let reading = async {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::MalformedJson(format!("the request body could not be read: {e}"))
            })?;
            let size = bytes.len() + chunk.len();
            if size > limit.bytes {
                return Err(too_large());
            }
            state.bodies.cover(&mut held, size).map_err(|_| busy())?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(timeout, reading).await;
    match outcome {
        Ok(Ok(())) => Ok(Read { bytes, _held: held }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::BodyTimeout(format!(
            "the request body was not received within {} s (server.body_read_timeout_seconds)",
            timeout.as_secs()
        ))),
    }
}
