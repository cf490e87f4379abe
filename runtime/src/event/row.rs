//! The one mapping from an event to an `audit_events` row (SPEC §2.3): from a validated event
//! ([`to_row`]), or from the typed reader's event ([`from_typed`]), which must give the same row.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::model::ValidEvent;
use super::normalize::{self, Normalization};
use super::traceparent::trace_id_of;
use super::typed::{Envelope, Str};
use super::validate::KNOWN;

/// One row of `audit_events` (without `ingested_at`, which the database fills).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub source: String,
    pub r#type: String,
    pub subject: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub actor_type: String,
    pub actor_id: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub trace_id: Option<String>,
    /// The `details` jsonb as JSON text (keys sorted, compact).
    pub details: Option<String>,
    /// The CloudEvents extension attributes, as a JSON object's text; NULL when there are none.
    pub extensions: Option<String>,
    /// What was normalized to accept the event (`time_defaulted`, ...), each once.
    pub normalized: Vec<Normalization>,
    /// Who sent the event (`<issuer>/<principal>`, from the record's `audit-principal`
    /// header), when the ingest authenticated it.
    pub principal: Option<String>,
}

impl Row {
    /// Adds normalizations named elsewhere (by the ingest, in a record header).
    pub fn also_normalized(&mut self, more: impl IntoIterator<Item = Normalization>) {
        self.normalized.extend(more);
        self.normalized.sort();
        self.normalized.dedup();
    }
}

/// A JSON object's text, None when it is empty.
fn object_text(map: Map<String, Value>) -> Option<String> {
    (!map.is_empty()).then(|| Value::Object(map).to_string())
}

/// Removes `key` from `map`, returning it when it was a string.
fn take(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Maps an event: `time`→`occurred_at`; `trace_id` from `traceparent`; `details` = `data`
/// without action/outcome/reason and without actor and resource id/type, empty leftovers
/// dropped, NULL when nothing is left; `extensions` = the extension attributes; `normalized`
/// = the reasons of its warnings. Consumes the event: its strings move into the row.
pub fn to_row(event: ValidEvent) -> Row {
    let occurred_at = event.occurred_at;
    let normalized = normalize::reasons(&event.warnings);
    let mut attrs = event.attributes;
    let mut details = match attrs.remove("data") {
        Some(Value::Object(data)) => data,
        _ => Map::new(),
    };
    let action = take(&mut details, "action").unwrap_or_default();
    let outcome = take(&mut details, "outcome").unwrap_or_default();
    let reason = take(&mut details, "reason");
    let mut id_and_type = |key: &str| -> (Option<String>, Option<String>) {
        let Some(Value::Object(inner)) = details.get_mut(key) else {
            return (None, None);
        };
        let pair = (take(inner, "id"), take(inner, "type"));
        if inner.is_empty() {
            details.remove(key);
        }
        pair
    };
    let (actor_id, actor_type) = id_and_type("actor");
    let (resource_id, resource_type) = id_and_type("resource");
    let trace_id = attrs
        .get("traceparent")
        .and_then(Value::as_str)
        .and_then(trace_id_of)
        .map(str::to_string);
    let id = take(&mut attrs, "id").unwrap_or_default();
    let source = take(&mut attrs, "source").unwrap_or_default();
    let r#type = take(&mut attrs, "type").unwrap_or_default();
    let subject = take(&mut attrs, "subject");
    attrs.retain(|name, _| !KNOWN.contains(&name.as_str()));
    Row {
        id,
        source,
        r#type,
        subject,
        occurred_at,
        actor_type: actor_type.unwrap_or_else(|| "user".to_string()),
        actor_id: actor_id.unwrap_or_default(),
        resource_type,
        resource_id,
        action,
        outcome,
        reason,
        trace_id,
        details: object_text(details),
        extensions: object_text(attrs),
        normalized,
        principal: None,
    }
}

/// The same mapping on an event the typed reader read and checked, its strings borrowed from
/// the record until they move into the row. When it answers, its row is [`to_row`]'s, `details`
/// text included (the sink's decode tests compare them on generated events).
pub(crate) fn from_typed(event: Envelope<'_>, occurred_at: DateTime<Utc>) -> Option<Row> {
    let data = event.data?;
    let actor = data.actor?;
    let mut details = data.rest;
    if !actor.rest.is_empty() {
        details.insert("actor".into(), Value::Object(actor.rest));
    }
    let (resource_type, resource_id) = match data.resource {
        Some(r) => {
            if !r.rest.is_empty() {
                details.insert("resource".into(), Value::Object(r.rest));
            }
            (r.r#type.map(Str::into_string), r.id.map(Str::into_string))
        }
        None => (None, None),
    };
    Some(Row {
        id: event.id?.into_string(),
        source: event.source?.into_string(),
        r#type: event.r#type?.into_string(),
        subject: event.subject.map(Str::into_string),
        occurred_at,
        actor_type: actor
            .r#type
            .map_or_else(|| "user".to_string(), Str::into_string),
        actor_id: actor.id?.into_string(),
        resource_type,
        resource_id,
        action: data.action?.into_string(),
        outcome: data.outcome?.into_string(),
        reason: data.reason.map(Str::into_string),
        trace_id: event
            .traceparent
            .as_ref()
            .and_then(|t| trace_id_of(&t.0))
            .map(str::to_string),
        details: object_text(details),
        extensions: object_text(event.extensions),
        // The typed reader reads only events nothing had to be normalized in.
        normalized: Vec::new(),
        principal: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{Limits, validate};
    use serde_json::json;

    /// A validated event with `data` and extra top-level attributes.
    pub(crate) fn event(data: Value, extra: Value) -> ValidEvent {
        let mut e = json!({
            "specversion": "1.0", "id": "e1", "source": "/s", "type": "t",
            "time": "2026-11-02T09:18:55+05:30", "data": data
        });
        if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), extra) {
            e.extend(extra);
        }
        let now = DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("now");
        let limits = Limits {
            max_event_bytes: 65536,
            max_future_skew: std::time::Duration::from_secs(3600),
            retention_months: 84,
        };
        validate(e, &limits, now).expect("valid")
    }

    fn details(row: &Row) -> Option<Value> {
        row.details
            .as_deref()
            .map(|text| serde_json::from_str(text).expect("details are JSON"))
    }

    #[test]
    fn every_column_is_mapped() {
        let e = event(
            json!({
                "actor": {"type": "user", "id": "u_4421", "name": "asha", "roles": ["officer"]},
                "action": "update", "outcome": "success", "reason": "requested",
                "resource": {"type": "beneficiary", "id": "b_1", "program": "p"},
                "changes": {"phone": {"old": "1", "new": "2"}}
            }),
            json!({"subject": "beneficiary/b_1",
                   "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
        );
        let row = to_row(e);
        assert_eq!(row.id, "e1");
        assert_eq!(row.source, "/s");
        assert_eq!(row.r#type, "t");
        assert_eq!(row.subject.as_deref(), Some("beneficiary/b_1"));
        assert_eq!(row.occurred_at.to_rfc3339(), "2026-11-02T03:48:55+00:00");
        assert_eq!(row.actor_type, "user");
        assert_eq!(row.actor_id, "u_4421");
        assert_eq!(row.resource_type.as_deref(), Some("beneficiary"));
        assert_eq!(row.resource_id.as_deref(), Some("b_1"));
        assert_eq!(row.action, "update");
        assert_eq!(row.outcome, "success");
        assert_eq!(row.reason.as_deref(), Some("requested"));
        assert_eq!(
            row.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            details(&row),
            Some(json!({
                "actor": {"name": "asha", "roles": ["officer"]},
                "resource": {"program": "p"},
                "changes": {"phone": {"old": "1", "new": "2"}}
            }))
        );
    }

    #[test]
    fn empty_leftovers_are_dropped_and_nothing_left_is_null() {
        let e = event(
            json!({"actor": {"id": "svc"}, "action": "a", "outcome": "denied",
                   "resource": {"type": "page", "id": "/x"}}),
            json!({}),
        );
        let row = to_row(e);
        assert_eq!(row.actor_type, "user", "actor.type defaults to user");
        assert_eq!(row.details, None);
        assert_eq!(row.subject, None);
        assert_eq!(row.trace_id, None);
        assert_eq!(row.reason, None);
    }

    #[test]
    fn a_resource_without_id_and_extra_keys_are_kept() {
        let e = event(
            json!({"actor": {"type": "system", "id": "s", "ip": "10.0.0.1"}, "action": "a",
                   "outcome": "failure", "resource": {"type": "batch"}, "context": {"k": 1}}),
            json!({}),
        );
        let row = to_row(e);
        assert_eq!(row.actor_type, "system");
        assert_eq!(row.resource_type.as_deref(), Some("batch"));
        assert_eq!(row.resource_id, None);
        assert_eq!(
            details(&row),
            Some(json!({"actor": {"ip": "10.0.0.1"}, "context": {"k": 1}}))
        );
    }

    #[test]
    fn extension_attributes_and_normalizations_have_their_columns() {
        let e = event(
            json!({"actor": {"id": "", "ip": "unknown"}, "action": "a", "outcome": "success"}),
            json!({"tenant": "north", "priority": 3, "sampled": true, "subject": "s",
                   "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
        );
        let row = to_row(e);
        let extensions: Value =
            serde_json::from_str(row.extensions.as_deref().expect("extensions")).expect("JSON");
        assert_eq!(
            extensions,
            json!({"tenant": "north", "priority": 3, "sampled": true})
        );
        assert_eq!(
            row.normalized,
            [
                Normalization::ActorIpNotAnAddress,
                Normalization::ActorIdEmpty
            ]
        );
        assert_eq!(row.actor_id, "");
        let plain = to_row(event(
            json!({"actor": {"id": "u"}, "action": "a", "outcome": "success"}),
            json!({}),
        ));
        assert_eq!((plain.extensions, plain.normalized), (None, vec![]));
    }
}
