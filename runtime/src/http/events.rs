//! The event endpoints: one CloudEvent, or a batch accepted whole or not at all.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::binary::binary_mode_event;
use super::envelope::{self, ApiError, MAX_LISTED_ERRORS, parse_json};
use super::state::{AppState, Shared};
use super::{body, schema, shape};
use crate::auth::Caller;
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
        (status = 401, description = "AUD-009 (auth.mode jwt) no valid bearer token, with WWW-Authenticate", body = envelope::Envelope),
        (status = 403, description = "AUD-009 (auth.mode jwt) the principal may not write this source", body = envelope::Envelope),
        (status = 408, description = "AUD-010 the body was not received within server.body_read_timeout_seconds", body = envelope::Envelope),
        (status = 413, description = "AUD-003 body or event too large", body = envelope::Envelope),
        (status = 415, description = "AUD-008 unsupported media type", body = envelope::Envelope),
        (status = 429, description = "AUD-011 (auth.rate_per_second) the principal is over its share, with Retry-After", body = envelope::Envelope),
        (status = 503, description = "AUD-004 queue or body budget full (Retry-After), AUD-005 not ready, or Kafka did not acknowledge in time (ack_mode kafka, Retry-After)", body = envelope::Envelope),
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
        (status = 401, description = "AUD-009 (auth.mode jwt) no valid bearer token, with WWW-Authenticate", body = envelope::Envelope),
        (status = 403, description = "AUD-009 (auth.mode jwt) the principal may not write the source of events[i]; nothing of the batch was accepted", body = envelope::Envelope),
        (status = 408, description = "AUD-010", body = envelope::Envelope),
        (status = 413, description = "AUD-003", body = envelope::Envelope),
        (status = 415, description = "AUD-008", body = envelope::Envelope),
        (status = 429, description = "AUD-011, nothing of the batch was accepted", body = envelope::Envelope),
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
    let caller = authenticate(state, headers)?;
    let media = media_type(headers);
    let limit = body::Limit {
        bytes: state.config.ingest.event_body_limit(),
        key: "ingest.max_event_bytes, plus a quarter",
    };
    let read = body::read(state, headers, body, limit).await?;
    let bytes = &read.bytes;
    let (limits, now) = (state.limits(), chrono::Utc::now());
    let value = if headers.contains_key("ce-specversion") {
        binary_mode_event(headers, &media, bytes)?
    } else {
        match &*media {
            "application/json" | "application/cloudevents+json" => {
                let text = std::str::from_utf8(bytes).ok();
                if let Some(ready) =
                    text.and_then(|text| as_sent(text, &limits, now, caller.as_ref(), None))
                {
                    return accepted_one(state, ready?, Vec::new(), caller.as_ref()).await;
                }
                parse_json(bytes)?
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
        Invalid::Fields(f) => ApiError::invalid(f),
        Invalid::TooLarge { size, limit } => ApiError::TooLarge(format!(
            "the event is {size} bytes; the limit is {limit} bytes"
        )),
    })?;
    let (event, warnings) = outgoing(event, caller.as_ref(), None)?;
    accepted_one(state, event, warnings, caller.as_ref()).await
}

async fn accepted_one(
    state: &AppState,
    event: Outgoing,
    warnings: Vec<Warning>,
    caller: Option<&Caller>,
) -> Result<Response, ApiError> {
    let id = event.id.clone();
    enqueue(state, vec![event], &warnings, caller).await?;
    Ok(envelope::ok(
        StatusCode::ACCEPTED,
        envelope::Accepted {
            accepted: &id,
            warnings: &warnings,
        },
    ))
}

/// The event as it was sent, when it is valid and validation would not change it (see
/// [`typed::accept_as_is`]): published byte for byte, without a JSON tree. `Some(Err)` when
/// the caller may not write its source (`at`: its place in a batch).
fn as_sent(
    text: &str,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
    caller: Option<&Caller>,
    at: Option<(&str, usize)>,
) -> Option<Result<Outgoing, ApiError>> {
    let ok = typed::accept_as_is(text, limits, now)?;
    Some(
        authorized(caller, &ok.source, at).map(|principal| Outgoing {
            id: ok.id,
            key: ok.key,
            payload: text.as_bytes().to_vec(),
            normalized: None,
            principal,
        }),
    )
}

/// A validated event, serialized, for the queue, and what was normalized to accept it; an
/// error when the caller may not write its source.
fn outgoing(
    mut event: ValidEvent,
    caller: Option<&Caller>,
    at: Option<(&str, usize)>,
) -> Result<(Outgoing, Vec<Warning>), ApiError> {
    let principal = authorized(caller, event.source(), at)?;
    let warnings = std::mem::take(&mut event.warnings);
    let reasons = normalize::reasons(&warnings);
    let queued = Outgoing {
        id: event.id().to_string(),
        key: event.partition_key().to_string(),
        normalized: (!reasons.is_empty()).then(|| normalize::header_value(&reasons)),
        payload: event.into_json(),
        principal,
    };
    Ok((queued, warnings))
}

/// The principal to record with an event of `source`, when the caller may write it (None
/// when authentication is off).
fn authorized(
    caller: Option<&Caller>,
    source: &str,
    at: Option<(&str, usize)>,
) -> Result<Option<Arc<str>>, ApiError> {
    match caller {
        None => Ok(None),
        Some(c) => {
            c.may_write(source, at)?;
            Ok(Some(Arc::clone(&c.principal)))
        }
    }
}

/// The caller of an event request: None when `auth.mode` is `none`, else the verified
/// principal of its bearer token (401 without one).
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(None);
    };
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    Ok(Some(auth.authenticate(authorization)?))
}

/// Batch bodies larger than this are checked one at a time on the [`super::heavy`] lane: a
/// client sending large bodies as fast as it can gets at most one core, at a lower priority,
/// and the async workers stay free for everyone else's requests (`make bench`, hostile mix).
pub const HEAVY_BODY_BYTES: usize = 1 << 20;

/// What a batch is checked against, owned so that the work can move to another thread.
#[derive(Clone)]
struct BatchRules {
    limits: Limits,
    max_batch_size: usize,
    /// The largest event, in its bytes as sent.
    raw_limit: usize,
    /// `application/cloudevents-batch+json` (a JSON array) rather than `{"events": [...]}`.
    array: bool,
    /// Who sends it, when authentication is on: every event's source must be its to write.
    caller: Option<Caller>,
}

/// A batch ready to queue: its events and what was normalized in them.
struct Prepared {
    events: Vec<Outgoing>,
    warnings: Vec<Warning>,
}

async fn accept_batch(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    refuse_when_draining(state)?;
    let caller = authenticate(state, headers)?;
    let array = match &*media_type(headers) {
        "application/json" => false,
        "application/cloudevents-batch+json" => true,
        other => return Err(unsupported(other)),
    };
    let limit = body::Limit {
        bytes: state.config.ingest.batch_body_limit(),
        key: "ingest.max_body_bytes, by default ingest.max_batch_size × ingest.max_event_bytes",
    };
    let mut read = body::read(state, headers, body, limit).await?;
    let rules = BatchRules {
        limits: state.limits(),
        max_batch_size: state.config.ingest.max_batch_size,
        raw_limit: state.config.ingest.event_body_limit(),
        array,
        caller: caller.clone(),
    };
    let now = chrono::Utc::now();
    let Prepared { events, warnings } = if read.bytes.len() > HEAVY_BODY_BYTES {
        let wait = Duration::from_secs(state.config.server.body_read_timeout_seconds);
        let bytes = std::mem::take(&mut read.bytes);
        let checked = state.heavy.run(move || prepare_batch(&bytes, rules, now));
        match tokio::time::timeout(wait, checked).await {
            Ok(Some(prepared)) => prepared?,
            Ok(None) => {
                return Err(ApiError::NotReady(
                    "the thread that checks large batches is gone; retry on another replica".into(),
                ));
            }
            Err(_) => {
                return Err(ApiError::Overloaded {
                    message: format!(
                        "batch bodies over {HEAVY_BODY_BYTES} bytes are checked one at a time, and this one was not checked within {} s; nothing of it was accepted",
                        wait.as_secs()
                    ),
                    retry_after_seconds: state.config.ingest.retry_after_seconds,
                });
            }
        }
    } else {
        prepare_batch(&read.bytes, rules, now)?
    };
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    enqueue(state, events, &warnings, caller.as_ref()).await?;
    Ok(envelope::ok(
        StatusCode::ACCEPTED,
        envelope::BatchAccepted {
            count: ids.len(),
            accepted: &ids,
            warnings: &warnings,
        },
    ))
}

/// A batch body → its events, whole or not at all.
fn prepare_batch(
    bytes: &[u8],
    rules: BatchRules,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Prepared, ApiError> {
    let (items, prefix) = if rules.array {
        (shape::read_array(bytes)?, "")
    } else {
        (shape::read_wrapped(bytes)?, "events")
    };
    let max = rules.max_batch_size;
    if items.len() > max {
        return Err(ApiError::BatchTooLarge(format!(
            "the batch holds {} events; the limit is {max} (ingest.max_batch_size)",
            items.len()
        )));
    }
    if items.is_empty() {
        return Err(ApiError::invalid(vec![FieldError::new(
            prefix,
            "must contain at least one event",
        )]));
    }
    let limits = &rules.limits;
    let caller = rules.caller.as_ref();
    // An event's own bytes are measured before any tree is built from them.
    if let Some((i, raw)) = items
        .iter()
        .enumerate()
        .find(|(_, raw)| raw.get().len() > rules.raw_limit)
    {
        return Err(ApiError::TooLarge(format!(
            "{prefix}[{i}] is {} bytes; the limit per event is {} bytes (ingest.max_event_bytes)",
            raw.get().len(),
            limits.max_event_bytes
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    // The first errors are kept for the answer, the rest only counted.
    let mut errors = Vec::new();
    let mut omitted = 0;
    let mut warnings = Vec::new();
    for (i, raw) in items.into_iter().enumerate() {
        // A forbidden source refuses the whole batch, as an invalid event does.
        if let Some(ready) = as_sent(raw.get(), limits, now, caller, Some((prefix, i))) {
            events.push(ready?);
            continue;
        }
        let at = format!("{prefix}[{i}]");
        let value = serde_json::from_str(raw.get())
            .map_err(|e| ApiError::MalformedJson(format!("{at}: {e}")))?;
        match event::validate(value, limits, now) {
            Ok(e) => {
                let (queued, normalized) = outgoing(e, caller, Some((prefix, i)))?;
                events.push(queued);
                warnings.extend(normalized.into_iter().map(|w| w.prefixed(&at)));
            }
            Err(Invalid::Fields(f)) => {
                let room = MAX_LISTED_ERRORS.saturating_sub(errors.len());
                omitted += f.len().saturating_sub(room);
                errors.extend(f.into_iter().take(room).map(|e| e.prefixed(&at)));
            }
            Err(Invalid::TooLarge { size, limit }) => {
                return Err(ApiError::TooLarge(format!(
                    "{at} is {size} bytes; the limit per event is {limit} bytes (ingest.max_event_bytes)"
                )));
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid { errors, omitted });
    }
    Ok(Prepared { events, warnings })
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
    caller: Option<&Caller>,
) -> Result<(), ApiError> {
    let n = outgoing.len() as u64;
    if let (Some(auth), Some(caller)) = (&state.auth, caller) {
        auth.charge(caller, outgoing.len())?;
    }
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
    if !acks.is_empty() {
        let wait = Duration::from_secs(state.config.ingest.ack_timeout_seconds);
        let all = async {
            for ack in acks {
                // The publisher keeps every queued event until Kafka has it; the sender only
                // goes away without an answer if the process is being torn down.
                ack.await.map_err(|_| {
                    ApiError::NotReady("shut down before Kafka acknowledged the event".into())
                })?;
            }
            Ok::<(), ApiError>(())
        };
        match tokio::time::timeout(wait, all).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ApiError::AckTimeout {
                    waited_seconds: wait.as_secs(),
                    retry_after_seconds: state.config.ingest.retry_after_seconds,
                });
            }
        }
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
