//! The event as the rest of the runtime sees it: a [`ValidEvent`], or the [`FieldError`]s that
//! say why it is not one.

use serde_json::{Map, Value};

/// One problem with one field of an event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Dotted path, e.g. `data.actor.id`; batches prefix `events[3].`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error under a prefix such as `events[3]`.
    pub fn prefixed(mut self, prefix: &str) -> FieldError {
        self.path = if self.path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// An event that passed validation, with its id filled in.
#[derive(Debug, Clone)]
pub struct ValidEvent {
    /// The whole CloudEvent as accepted (extension attributes and extra keys kept).
    pub attributes: Map<String, Value>,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// What was normalized to accept it (nulls dropped, time defaulted, ...).
    pub warnings: Vec<super::normalize::Warning>,
    /// `attributes` serialized once: at validation when there is a size limit to check,
    /// else on first use (the sink, which re-validates stored events, never needs it).
    pub(super) json: std::sync::OnceLock<Vec<u8>>,
}

impl ValidEvent {
    fn str_attr(&self, name: &str) -> &str {
        self.attributes
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn id(&self) -> &str {
        self.str_attr("id")
    }

    pub fn source(&self) -> &str {
        self.str_attr("source")
    }

    /// The `data` object (validated to be an object).
    pub fn data(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.attributes
            .get("data")
            .and_then(Value::as_object)
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    /// The Kafka key ([`partition_key`]).
    pub fn partition_key(&self) -> &str {
        partition_key(
            self.attributes.get("subject").and_then(Value::as_str),
            self.data()
                .get("actor")
                .and_then(|a| a.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )
    }

    /// The event as JSON bytes, the value published to Kafka.
    pub fn json(&self) -> &[u8] {
        self.json.get_or_init(|| serialize(&self.attributes))
    }

    /// The JSON bytes, without copying them.
    pub fn into_json(self) -> Vec<u8> {
        match self.json.into_inner() {
            Some(json) => json,
            None => serialize(&self.attributes),
        }
    }
}

/// The Kafka key of an event: `subject`, else `data.actor.id`, so one entity's events stay in
/// order on one partition.
pub(crate) fn partition_key<'a>(subject: Option<&'a str>, actor_id: &'a str) -> &'a str {
    match subject {
        Some(s) if !s.is_empty() => s,
        _ => actor_id,
    }
}

fn serialize(attributes: &Map<String, Value>) -> Vec<u8> {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_vec(attributes).unwrap_or_default()
}
