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

/// Every way a request can fail, mapped to the error catalogue.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("schema validation failed")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    TooLarge(String),
    #[error("ingest queue full")]
    QueueFull { retry_after_seconds: u64 },
    #[error("{0}")]
    NotReady(String),
    #[error("database check failed: {0}")]
    Database(String),
    #[error("{0}")]
    BatchTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("unauthorized")]
    Unauthorized,
}

impl ApiError {
    /// The catalogue code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "AUD-001",
            ApiError::Invalid(_) => "AUD-002",
            ApiError::TooLarge(_) => "AUD-003",
            ApiError::QueueFull { .. } => "AUD-004",
            ApiError::NotReady(_) => "AUD-005",
            ApiError::Database(_) => "AUD-006",
            ApiError::BatchTooLarge(_) => "AUD-007",
            ApiError::UnsupportedMediaType(_) => "AUD-008",
            ApiError::Unauthorized => "AUD-009",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::Invalid(_) | ApiError::BatchTooLarge(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull { .. } | ApiError::NotReady(_) | ApiError::Database(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// One catalogue entry per problem (one per field path for validation errors).
    pub fn items(&self) -> Vec<ErrorItem> {
        let code = self.code();
        match self {
            ApiError::Invalid(fields) => fields
                .iter()
                .map(|f| ErrorItem {
                    error_code: code,
                    message: f.to_string(),
                })
                .collect(),
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
        if let ApiError::QueueFull {
            retry_after_seconds,
        } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after_seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// A JSON body, or AUD-001 naming where it stops being JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}
