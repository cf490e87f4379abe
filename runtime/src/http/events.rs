//! The event endpoints: one CloudEvent, or a batch accepted whole or not at all.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use serde_json::value::RawValue;

use super::binary::binary_mode_event;
use super::envelope::{self, ApiError, parse_json};
use super::schema;
use super::state::{AppState, Shared};
use crate::config::AckMode;
use crate::event::normalize::{self, Warning};
use crate::event::{self, FieldError, Invalid, Limits, ValidEvent, typed};
use crate::ingest::queue::{Outgoing, Refused};

/// Accepts one CloudEvent (structured or binary mode).
#[utoipa::path(post, path = "/v1/auditmanager/events", tag = "events",
    request_body(content = schema::CloudEvent, content_type = "application/cloudevents+json",
                 description = "Structured mode (application/json also accepted), or binary mode: ce-* headers and the data object as body"),
    responses(
        (status = 202, description = "Accepted: `response.accepted` is the event id; `response.warnings` lists what was normalized to accept it, if anything", body = envelope::Envelope),
        (status = 400, description = "AUD-001 malformed JSON, AUD-002 schema validation failed", body = envelope::Envelope),
        (status = 413, description = "AUD-003 body or event too large", body = envelope::Envelope),
        (status = 415, description = "AUD-008 unsupported media type", body = envelope::Envelope),
        (status = 503, description = "AUD-004 queue full (Retry-After), AUD-005 not ready", body = envelope::Envelope),
    ))]
pub async fn post_event(State(state): Shared, headers: HeaderMap, body: Body) -> Response {
    let result = accept_one(&state, &headers, body).await;
    respond(&state, result)
}

/// Accepts a batch, whole or not at all.
#[utoipa::path(post, path = "/v1/auditmanager/events/batch", tag = "events",
    request_body(content = schema::EventBatch, content_type = "application/json",
                 description = "`{\"events\": [...]}`, or a JSON array with application/cloudevents-batch+json"),
    responses(
        (status = 202, description = "Accepted: `response.accepted` lists the ids, `response.count` their number, `response.warnings` what was normalized (paths like events[3].time)", body = envelope::Envelope),
        (status = 400, description = "AUD-001, AUD-002 (paths like events[3].time), AUD-007 batch too large", body = envelope::Envelope),
        (status = 413, description = "AUD-003", body = envelope::Envelope),
        (status = 415, description = "AUD-008", body = envelope::Envelope),
        (status = 503, description = "AUD-004 (nothing of the batch was accepted), AUD-005", body = envelope::Envelope),
    ))]
pub async fn post_batch(State(state): Shared, headers: HeaderMap, body: Body) -> Response {
    let result = accept_batch(&state, &headers, body).await;
    respond(&state, result)
}

fn respond(state: &AppState, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .events_rejected
                .with_label_values(&[e.code()])
                .inc();
            e.into_response()
        }
    }
}

async fn accept_one(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    refuse_when_draining(state)?;
    let media = media_type(headers);
    let bytes = read_body(state, headers, body).await?;
    let (limits, now) = (state.limits(), chrono::Utc::now());
    let value = if headers.contains_key("ce-specversion") {
        binary_mode_event(headers, &media, &bytes)?
    } else {
        match &*media {
            "application/json" | "application/cloudevents+json" => {
                let text = std::str::from_utf8(&bytes).ok();
                if let Some(ready) = text.and_then(|text| as_sent(text, &limits, now)) {
                    return accepted_one(state, ready, Vec::new()).await;
                }
                parse_json(&bytes)?
            }
            "application/cloudevents-batch+json" => {
                return Err(ApiError::UnsupportedMediaType(
                    "application/cloudevents-batch+json is for POST /v1/auditmanager/events/batch"
                        .into(),
                ));
            }
            other => return Err(unsupported(other)),
        }
    };
    let event = event::validate(value, &limits, now).map_err(|e| match e {
        Invalid::Fields(f) => ApiError::Invalid(f),
        Invalid::TooLarge { size, limit } => ApiError::TooLarge(format!(
            "the event is {size} bytes; the limit is {limit} bytes"
        )),
    })?;
    let (event, warnings) = outgoing(event);
    accepted_one(state, event, warnings).await
}

async fn accepted_one(
    state: &AppState,
    event: Outgoing,
    warnings: Vec<Warning>,
) -> Result<Response, ApiError> {
    let id = event.id.clone();
    enqueue(state, vec![event], &warnings).await?;
    Ok(envelope::ok(
        StatusCode::ACCEPTED,
        envelope::Accepted {
            accepted: &id,
            warnings: &warnings,
        },
    ))
}

/// The event as it was sent, when it is valid and validation would not change it (see
/// [`typed::accept_as_is`]): published byte for byte, without a JSON tree.
fn as_sent(text: &str, limits: &Limits, now: chrono::DateTime<chrono::Utc>) -> Option<Outgoing> {
    typed::accept_as_is(text, limits, now).map(|ok| Outgoing {
        id: ok.id,
        key: ok.key,
        payload: text.as_bytes().to_vec(),
        normalized: None,
    })
}

/// A validated event, serialized, for the queue, and what was normalized to accept it.
fn outgoing(mut event: ValidEvent) -> (Outgoing, Vec<Warning>) {
    let warnings = std::mem::take(&mut event.warnings);
    let reasons = normalize::reasons(&warnings);
    let queued = Outgoing {
        id: event.id().to_string(),
        key: event.partition_key().to_string(),
        normalized: (!reasons.is_empty()).then(|| normalize::header_value(&reasons)),
        payload: event.into_json(),
    };
    (queued, warnings)
}

/// The events of a batch body: each one's own bytes when the body reads as the batch shape
/// (the common case), else JSON values from a tree of the whole body.
enum Items<'a> {
    Raw(Vec<&'a RawValue>),
    Parsed(Vec<Value>),
}

impl Items<'_> {
    fn len(&self) -> usize {
        match self {
            Items::Raw(items) => items.len(),
            Items::Parsed(items) => items.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `{"events": [...]}` with each event's bytes borrowed from the body.
#[derive(serde::Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

async fn accept_batch(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    refuse_when_draining(state)?;
    let media = media_type(headers);
    let bytes = read_body(state, headers, body).await?;
    let (items, prefix) = match &*media {
        "application/json" => match serde_json::from_slice::<Wrapped>(&bytes) {
            Ok(body) => (Items::Raw(body.events), "events"),
            Err(_) => (Items::Parsed(wrapped_events(&bytes)?), "events"),
        },
        "application/cloudevents-batch+json" => match serde_json::from_slice(&bytes) {
            Ok(events) => (Items::Raw(events), ""),
            Err(_) => match parse_json(&bytes)? {
                Value::Array(items) => (Items::Parsed(items), ""),
                _ => {
                    return Err(ApiError::Invalid(vec![FieldError::new(
                        "",
                        "a CloudEvents batch must be a JSON array of events",
                    )]));
                }
            },
        },
        other => return Err(unsupported(other)),
    };
    let max = state.config.ingest.max_batch_size;
    if items.len() > max {
        return Err(ApiError::BatchTooLarge(format!(
            "the batch holds {} events; the limit is {max} (ingest.max_batch_size)",
            items.len()
        )));
    }
    if items.is_empty() {
        return Err(ApiError::Invalid(vec![FieldError::new(
            prefix,
            "must contain at least one event",
        )]));
    }
    let limits = state.limits();
    let now = chrono::Utc::now();
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut check = |at: &str, value: Value, events: &mut Vec<Outgoing>| {
        match event::validate(value, &limits, now) {
            Ok(e) => {
                let (queued, normalized) = outgoing(e);
                events.push(queued);
                warnings.extend(normalized.into_iter().map(|w| w.prefixed(at)));
            }
            Err(Invalid::Fields(f)) => errors.extend(f.into_iter().map(|e| e.prefixed(at))),
            Err(Invalid::TooLarge { size, limit }) => {
                return Err(ApiError::TooLarge(format!(
                    "{at} is {size} bytes; the limit per event is {limit} bytes"
                )));
            }
        }
        Ok(())
    };
    match items {
        Items::Raw(items) => {
            for (i, raw) in items.into_iter().enumerate() {
                if let Some(ready) = as_sent(raw.get(), &limits, now) {
                    events.push(ready);
                    continue;
                }
                let at = format!("{prefix}[{i}]");
                let value = serde_json::from_str(raw.get())
                    .map_err(|e| ApiError::MalformedJson(format!("{at}: {e}")))?;
                check(&at, value, &mut events)?;
            }
        }
        Items::Parsed(items) => {
            for (i, value) in items.into_iter().enumerate() {
                check(&format!("{prefix}[{i}]"), value, &mut events)?;
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    enqueue(state, events, &warnings).await?;
    Ok(envelope::ok(
        StatusCode::ACCEPTED,
        envelope::BatchAccepted {
            count: ids.len(),
            accepted: &ids,
            warnings: &warnings,
        },
    ))
}

/// The events of a `{"events": [...]}` body that did not read as the batch shape: parsed
/// whole, so the problem (not JSON, no `events`, not an array) is named.
fn wrapped_events(bytes: &[u8]) -> Result<Vec<Value>, ApiError> {
    match parse_json(bytes)? {
        Value::Object(mut obj) => match obj.remove("events") {
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(ApiError::Invalid(vec![FieldError::new(
                "events",
                "must be an array of events",
            )])),
            None => Err(ApiError::Invalid(vec![FieldError::new(
                "events",
                "is required: send {\"events\": [...]}, or a JSON array as application/cloudevents-batch+json",
            )])),
        },
        _ => Err(ApiError::Invalid(vec![FieldError::new(
            "",
            "the body must be {\"events\": [...]}",
        )])),
    }
}

fn refuse_when_draining(state: &AppState) -> Result<(), ApiError> {
    if !state.config.components.ingest {
        return Err(ApiError::NotReady(
            "ingest is switched off in this process (components.ingest)".into(),
        ));
    }
    if !state.health.ready() {
        return Err(ApiError::NotReady(
            "not ready: starting up or shutting down; retry on another replica".into(),
        ));
    }
    Ok(())
}

/// Queues the events (all or none); once they are accepted, counts them and what was
/// normalized in them.
async fn enqueue(
    state: &AppState,
    outgoing: Vec<Outgoing>,
    warnings: &[Warning],
) -> Result<(), ApiError> {
    let n = outgoing.len() as u64;
    let want_ack = state.config.ingest.ack_mode == AckMode::Kafka;
    let acks = state
        .queue
        .push_all(outgoing, want_ack)
        .map_err(|r| match r {
            Refused::Full => ApiError::QueueFull {
                retry_after_seconds: state.config.ingest.retry_after_seconds,
            },
            Refused::Closed => ApiError::NotReady("shutting down; retry on another replica".into()),
        })?;
    for ack in acks {
        // The publisher keeps every queued event until Kafka has it; the sender only goes
        // away without an answer if the process is being torn down.
        ack.await.map_err(|_| {
            ApiError::NotReady("shut down before Kafka acknowledged the event".into())
        })?;
    }
    state.metrics.events_accepted.inc_by(n);
    for w in warnings {
        state
            .metrics
            .events_normalized
            .with_label_values(&[w.reason.as_str()])
            .inc();
    }
    Ok(())
}

async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.ingest.max_body_bytes;
    let too_large = || {
        ApiError::TooLarge(format!(
            "the request body exceeds {limit} bytes (ingest.max_body_bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// The lowercase media type without parameters; empty when absent.
fn media_type(headers: &HeaderMap) -> std::borrow::Cow<'_, str> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.bytes().any(|b| b.is_ascii_uppercase()) {
        essence.to_ascii_lowercase().into()
    } else {
        essence.into()
    }
}

fn unsupported(media: &str) -> ApiError {
    let got = if media.is_empty() {
        "no Content-Type".to_string()
    } else {
        format!("`{media}`")
    };
    ApiError::UnsupportedMediaType(format!(
        "{got} is not supported; send application/json, application/cloudevents+json, application/cloudevents-batch+json (batch) or binary mode (ce-* headers with a JSON body)"
    ))
}
