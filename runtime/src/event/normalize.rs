//! What the original service accepted and SPEC §2.2 alone would refuse: every such event is
//! stored, changed as little as possible, and each change is named so it can be counted and
//! reported (SPEC.md §5: its models dropped JSON nulls on optional attributes, took any string
//! for `actor.ip` and an empty `actor.id`, and defaulted `time` to the receipt time).

use serde::Serialize;
use serde_json::{Map, Value};

/// A kind of normalization, as counted in the metric, listed in the 202 answer and stored in
/// the row's `normalized` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Normalization {
    /// A JSON `null` on an optional attribute, taken as absent.
    NullDropped,
    /// No `time`: the receipt time was used.
    TimeDefaulted,
    /// `data.actor.ip` is not an IPv4 or IPv6 address; kept as sent.
    ActorIpNotAnAddress,
    /// `data.actor.ip` was longer than [`MAX_IP_BYTES`] and was cut there.
    ActorIpTruncated,
    /// `data.actor.id` is empty (stored as the empty string).
    ActorIdEmpty,
}

impl Normalization {
    pub const ALL: [Normalization; 5] = [
        Normalization::NullDropped,
        Normalization::TimeDefaulted,
        Normalization::ActorIpNotAnAddress,
        Normalization::ActorIpTruncated,
        Normalization::ActorIdEmpty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Normalization::NullDropped => "null_dropped",
            Normalization::TimeDefaulted => "time_defaulted",
            Normalization::ActorIpNotAnAddress => "actor_ip_not_an_address",
            Normalization::ActorIpTruncated => "actor_ip_truncated",
            Normalization::ActorIdEmpty => "actor_id_empty",
        }
    }

    pub fn parse(text: &str) -> Option<Normalization> {
        Normalization::ALL.into_iter().find(|n| n.as_str() == text)
    }
}

/// Serialized by its one name, [`Normalization::as_str`].
impl Serialize for Normalization {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The longest `data.actor.ip` kept, in bytes: an address or a proxy's forwarded-for hop fits
/// many times over; anything longer is not an address of any kind.
pub const MAX_IP_BYTES: usize = 256;

/// One normalization of one event, at a field path (batches prefix `events[3].`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub path: String,
    pub reason: Normalization,
    pub message: String,
}

impl Warning {
    pub(crate) fn new(
        path: impl Into<String>,
        reason: Normalization,
        message: impl Into<String>,
    ) -> Warning {
        Warning {
            path: path.into(),
            reason,
            message: message.into(),
        }
    }

    /// The same warning under a prefix such as `events[3]`.
    pub fn prefixed(mut self, prefix: &str) -> Warning {
        self.path = format!("{prefix}.{}", self.path);
        self
    }
}

/// Top-level attributes that are required: a `null` there is still an error.
const REQUIRED: [&str; 5] = ["specversion", "source", "type", "data", "data_base64"];
/// Keys of `data` whose value is the emitter's own (`context`, `changes`, ...) and kept as sent,
/// nulls included, are all but these.
const DATA_OPTIONAL: [&str; 2] = ["resource", "reason"];
/// Required keys of `data.actor` and `data.resource`.
const ACTOR_REQUIRED: [&str; 1] = ["id"];
const RESOURCE_REQUIRED: [&str; 1] = ["type"];

/// Removes the JSON nulls of optional attributes, at every level the schema knows: top-level
/// attributes (extension attributes included), `data.resource` and `data.reason`, every key of
/// `data.actor` but `id`, and every key of `data.resource` but `type`. Nulls inside free-form
/// values (`context`, `changes`, extra keys of `data`) are kept as sent.
pub(crate) fn drop_nulls(event: &mut Map<String, Value>, warnings: &mut Vec<Warning>) {
    drop_null_keys(event, "", |k| !REQUIRED.contains(&k), warnings);
    let Some(Value::Object(data)) = event.get_mut("data") else {
        return;
    };
    drop_null_keys(data, "data.", |k| DATA_OPTIONAL.contains(&k), warnings);
    if let Some(Value::Object(actor)) = data.get_mut("actor") {
        drop_null_keys(
            actor,
            "data.actor.",
            |k| !ACTOR_REQUIRED.contains(&k),
            warnings,
        );
    }
    if let Some(Value::Object(resource)) = data.get_mut("resource") {
        drop_null_keys(
            resource,
            "data.resource.",
            |k| !RESOURCE_REQUIRED.contains(&k),
            warnings,
        );
    }
}

fn drop_null_keys(
    map: &mut Map<String, Value>,
    prefix: &str,
    optional: impl Fn(&str) -> bool,
    warnings: &mut Vec<Warning>,
) {
    if !map.values().any(Value::is_null) {
        return;
    }
    map.retain(|k, v| {
        if v.is_null() && optional(k) {
            warnings.push(Warning::new(
                format!("{prefix}{k}"),
                Normalization::NullDropped,
                "null taken as absent",
            ));
            false
        } else {
            true
        }
    });
}

/// The reasons of `warnings`, each once, in a stable order.
pub fn reasons(warnings: &[Warning]) -> Vec<Normalization> {
    let mut all: Vec<Normalization> = warnings.iter().map(|w| w.reason).collect();
    all.sort();
    all.dedup();
    all
}

/// The Kafka record header in which the ingest names what it normalized; the sink stores it in
/// the row's `normalized` column (a defaulted `time` cannot be seen in the event itself).
pub const HEADER: &str = "audit-normalized";

/// `reasons` as one header value, e.g. `time_defaulted,actor_ip_not_an_address`.
pub fn header_value(reasons: &[Normalization]) -> String {
    reasons
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The reasons named in a header value; unknown names are ignored (a newer writer's).
pub fn parse_header(value: &str) -> Vec<Normalization> {
    value
        .split(',')
        .filter_map(|r| Normalization::parse(r.trim()))
        .collect()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn char_prefix(text: &str, max: usize) -> &str {
    let cut = (0..=max.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dropped(event: Value) -> (Value, Vec<String>) {
        let Value::Object(mut map) = event else {
            panic!("object")
        };
        let mut warnings = Vec::new();
        drop_nulls(&mut map, &mut warnings);
        (
            Value::Object(map),
            warnings.into_iter().map(|w| w.path).collect(),
        )
    }

    #[test]
    fn nulls_on_optional_attributes_are_dropped_at_every_level() {
        let (event, paths) = dropped(json!({
            "specversion": "1.0", "id": null, "source": "/s", "type": "t", "time": null,
            "subject": null, "traceparent": null, "tenant": null,
            "data": {"actor": {"type": null, "id": "u", "name": null, "ip": null,
                               "session_id": null, "username": null},
                     "action": "a", "outcome": "success", "reason": null,
                     "resource": {"type": "r", "id": null, "extra": null},
                     "context": {"request_id": null}, "changes": null}
        }));
        assert_eq!(
            event,
            json!({"specversion": "1.0", "source": "/s", "type": "t",
                   "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success",
                            "resource": {"type": "r"},
                            "context": {"request_id": null}, "changes": null}})
        );
        assert_eq!(paths.len(), 13, "{paths:?}");
        assert!(paths.contains(&"data.actor.username".to_string()));
    }

    #[test]
    fn nulls_on_required_attributes_stay_for_validation_to_refuse() {
        let (event, paths) = dropped(json!({
            "specversion": null, "source": null, "type": null, "data": {
                "actor": {"id": null}, "action": null, "outcome": null,
                "resource": {"type": null}}
        }));
        assert!(paths.is_empty(), "{paths:?}");
        assert_eq!(event["data"]["actor"]["id"], Value::Null);
        assert_eq!(event["data"]["resource"]["type"], Value::Null);
    }

    #[test]
    fn reasons_round_trip_through_the_header() {
        let all = Normalization::ALL.to_vec();
        assert_eq!(parse_header(&header_value(&all)), all);
        assert_eq!(
            parse_header("time_defaulted, from_the_future"),
            [Normalization::TimeDefaulted]
        );
    }
}
