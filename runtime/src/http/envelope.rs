//! The response envelope of the original API, and the one error type that renders it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::event::FieldError;
use crate::event::normalize::Warning;

/// `{"id":"openg2p.auditmanager","version":"1.0","responsetime":…,"response":…,"errors":[…]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope {
    #[schema(example = "openg2p.auditmanager")]
    pub id: &'static str,
    #[schema(example = "1.0")]
    pub version: &'static str,
    /// UTC, millisecond precision, e.g. `2026-04-22T14:03:21.123Z`.
    pub responsetime: String,
    pub response: Option<Value>,
    pub errors: Vec<ErrorItem>,
}

/// The `response` of an accepted single event, with what was normalized to accept it.
#[derive(Serialize)]
pub struct Accepted<'a> {
    pub accepted: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub warnings: &'a [Warning],
}

/// The `response` of an accepted batch: the ids in the order sent, their number, and what was
/// normalized (paths like `events[3].time`).
#[derive(Serialize)]
pub struct BatchAccepted<'a> {
    pub accepted: &'a [String],
    pub count: usize,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub warnings: &'a [Warning],
}

/// One error of the catalogue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorItem {
    #[serde(rename = "errorCode")]
    #[schema(example = "AUD-002")]
    pub error_code: &'static str,
    pub message: String,
}

/// What is written: the [`Envelope`] with any serializable `response`, borrowed, so a hot
/// answer such as `{"accepted": id}` needs no JSON tree.
#[derive(Serialize)]
struct Body<'a, R: Serialize> {
    id: &'static str,
    version: &'static str,
    responsetime: &'a str,
    response: Option<R>,
    errors: &'a [ErrorItem],
}

fn render<R: Serialize>(status: StatusCode, response: Option<R>, errors: &[ErrorItem]) -> Response {
    let responsetime = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = Body {
        id: "openg2p.auditmanager",
        version: "1.0",
        responsetime: &responsetime,
        response,
        errors,
    };
    (status, Json(body)).into_response()
}

/// A successful answer in the envelope.
pub fn ok(status: StatusCode, response: impl Serialize) -> Response {
    render(status, Some(response), &[])
}

/// An answer carrying errors (and, for `/health`, the report as `response`).
pub fn with_errors(
    status: StatusCode,
    response: Option<Value>,
    errors: Vec<ErrorItem>,
) -> Response {
    render(status, response, &errors)
}

/// The most validation errors listed in one answer; the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 20;

/// Every way a request can fail, mapped to the error catalogue.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// At most [`MAX_LISTED_ERRORS`] errors, and how many more were found.
    #[error("schema validation failed")]
    Invalid {
        errors: Vec<FieldError>,
        omitted: usize,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("ingest queue full")]
    QueueFull { retry_after_seconds: u64 },
    /// Another bounded resource than the queue is full (AUD-004, with Retry-After).
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_seconds: u64,
    },
    #[error("{0}")]
    NotReady(String),
    /// Queued, but Kafka did not acknowledge in time (`ack_mode: kafka`): AUD-005 with
    /// Retry-After. The event may still be stored; sending it again is safe (its id makes
    /// the row once).
    #[error(
        "Kafka did not acknowledge within {waited_seconds} s (ingest.ack_timeout_seconds); the event stays queued and may still be stored: retrying with the same id is safe"
    )]
    AckTimeout {
        waited_seconds: u64,
        retry_after_seconds: u64,
    },
    #[error("{0}")]
    BodyTimeout(String),
    #[error("database check failed: {0}")]
    Database(String),
    #[error("{0}")]
    BatchTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// AUD-009 (401): no valid bearer token; answered with `WWW-Authenticate`.
    #[error("{0}")]
    Unauthenticated(String),
    /// AUD-009 (403): the principal may not write this source.
    #[error("{0}")]
    Forbidden(String),
    /// AUD-011 (429): the principal is over its share, with Retry-After.
    #[error("{message}")]
    OverShare {
        message: String,
        retry_after_seconds: u64,
    },
}

impl From<crate::auth::Refusal> for ApiError {
    fn from(refusal: crate::auth::Refusal) -> ApiError {
        use crate::auth::Refusal;
        match refusal {
            Refusal::Unauthenticated(m) => ApiError::Unauthenticated(m),
            Refusal::Forbidden(m) => ApiError::Forbidden(m),
            Refusal::OverShare {
                message,
                retry_after,
            } => ApiError::OverShare {
                message,
                // Whole seconds, rounded up: a client that waits that long passes.
                retry_after_seconds: retry_after.as_secs()
                    + u64::from(retry_after.subsec_nanos() > 0),
            },
        }
    }
}

impl ApiError {
    /// AUD-002 with `errors`, listing the first [`MAX_LISTED_ERRORS`].
    pub fn invalid(mut errors: Vec<FieldError>) -> ApiError {
        let omitted = errors.len().saturating_sub(MAX_LISTED_ERRORS);
        errors.truncate(MAX_LISTED_ERRORS);
        ApiError::Invalid { errors, omitted }
    }

    /// The seconds of a `Retry-After` header, for the errors that carry one.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::QueueFull {
                retry_after_seconds,
            }
            | ApiError::Overloaded {
                retry_after_seconds,
                ..
            }
            | ApiError::AckTimeout {
                retry_after_seconds,
                ..
            }
            | ApiError::OverShare {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            _ => None,
        }
    }

    /// The catalogue code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "AUD-001",
            ApiError::Invalid { .. } => "AUD-002",
            ApiError::TooLarge(_) => "AUD-003",
            ApiError::QueueFull { .. } | ApiError::Overloaded { .. } => "AUD-004",
            ApiError::NotReady(_) | ApiError::AckTimeout { .. } => "AUD-005",
            ApiError::BodyTimeout(_) => "AUD-010",
            ApiError::Database(_) => "AUD-006",
            ApiError::BatchTooLarge(_) => "AUD-007",
            ApiError::UnsupportedMediaType(_) => "AUD-008",
            ApiError::Unauthenticated(_) | ApiError::Forbidden(_) => "AUD-009",
            ApiError::OverShare { .. } => "AUD-011",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::Invalid { .. } | ApiError::BatchTooLarge(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull { .. }
            | ApiError::Overloaded { .. }
            | ApiError::NotReady(_)
            | ApiError::AckTimeout { .. }
            | ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::OverShare { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// One catalogue entry per problem (one per field path for validation errors).
    pub fn items(&self) -> Vec<ErrorItem> {
        let code = self.code();
        match self {
            ApiError::Invalid { errors, omitted } => {
                let mut items: Vec<ErrorItem> = errors
                    .iter()
                    .map(|f| ErrorItem {
                        error_code: code,
                        message: f.to_string(),
                    })
                    .collect();
                if *omitted > 0 {
                    items.push(ErrorItem {
                        error_code: code,
                        message: format!(
                            "and {omitted} more errors not listed (the first {MAX_LISTED_ERRORS} are)"
                        ),
                    });
                }
                items
            }
            ApiError::QueueFull {
                retry_after_seconds,
            } => vec![ErrorItem {
                error_code: code,
                message: format!(
                    "the ingest queue is full; nothing of this request was accepted, retry after {retry_after_seconds}s"
                ),
            }],
            other => vec![ErrorItem {
                error_code: code,
                message: other.to_string(),
            }],
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = with_errors(self.status(), None, self.items());
        if let Some(seconds) = self.retry_after()
            && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let ApiError::Unauthenticated(why) = &self {
            // RFC 6750: the scheme, and why the token was refused (quotes removed).
            let challenge = format!(
                "Bearer realm=\"audit-manager\", error=\"invalid_token\", error_description=\"{}\"",
                why.replace(['"', '\\'], "'")
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        response
    }
}

/// A JSON body, or AUD-001 naming where it stops being JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}
