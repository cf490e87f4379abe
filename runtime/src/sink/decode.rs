//! A record's value → a row.
//!
//! Two readers, one outcome. The full reader parses the record into a JSON tree, validates it
//! with [`event::validate`] and maps it with [`rows::to_row`]: it names every problem, for the
//! DLQ. The typed reader handles the common case (a record the ingest API wrote: a valid
//! event with an `id`) without building the tree: it reads the envelope and the audit fields
//! straight into their columns, borrowing the strings from the record, and parses only what
//! goes into `details` as JSON values. The moment anything differs from a valid event (a
//! failed rule, a duplicate key, a missing `id`, a value of another type) it gives up and the
//! full reader decides, so DLQ reasons come from one place. When it succeeds, its row equals the
//! full reader's, `details` text included (tested below on generated events).

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::Poison;
use crate::db::rows::{self, Row};
use crate::event::{
    self, ACTOR_TYPES, Invalid, Limits, MAX_INDEXED_BYTES, OUTCOMES, has_nul, is_extension_name,
    is_json_media_type, parse_time, trace_id_of,
};

/// Parses and validates one record value into a row.
pub fn decode(payload: Option<&[u8]>, limits: &Limits, now: DateTime<Utc>) -> Result<Row, Poison> {
    let bytes = payload.ok_or_else(|| Poison {
        reason: "empty record: no value".into(),
    })?;
    match typed(bytes, limits, now) {
        Some(row) => Ok(row),
        None => full(bytes, limits, now),
    }
}

/// The full reader: a JSON tree, every rule, every problem named.
fn full(bytes: &[u8], limits: &Limits, now: DateTime<Utc>) -> Result<Row, Poison> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Poison {
        reason: format!("not JSON: {e}"),
    })?;
    let event = event::validate(value, limits, now).map_err(|e| Poison {
        reason: match e {
            Invalid::Fields(f) => format!(
                "invalid event: {}",
                f.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Invalid::TooLarge { size, limit } => {
                format!("invalid event: {size} bytes over {limit}")
            }
        },
    })?;
    Ok(rows::to_row(event))
}

/// The typed reader: the row of a valid event with an `id`, or None for the full reader.
fn typed(bytes: &[u8], limits: &Limits, now: DateTime<Utc>) -> Option<Row> {
    // The sink measures no size (its limit is usize::MAX); a size rule is the full reader's.
    if limits.max_event_bytes != usize::MAX {
        return None;
    }
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let envelope = Envelope::deserialize(&mut reader).ok()?;
    reader.end().ok()?;
    envelope.into_row(limits, now)
}

/// Stops the typed reader; the full reader will say what is wrong, if anything.
fn not_common<E: de::Error>() -> E {
    E::custom("not the common case")
}

/// A string, borrowed from the record unless it had escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

impl Str<'_> {
    /// No U+0000, which PostgreSQL cannot store.
    fn storable(&self) -> bool {
        !self.0.contains('\0')
    }

    /// Non-empty after trimming, and storable.
    fn filled(&self) -> bool {
        self.storable() && !self.0.trim().is_empty()
    }

    /// Fits an index entry (the indexed columns).
    fn indexable(&self) -> bool {
        self.0.len() <= MAX_INDEXED_BYTES
    }

    fn into_string(self) -> String {
        self.0.into_owned()
    }
}

/// Fills `slot` once; a second value for the same key is left to the full reader.
fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(not_common());
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// A key kept in `details`, with its value as a JSON value.
fn keep<'de, A: MapAccess<'de>>(
    rest: &mut Map<String, Value>,
    key: Str<'de>,
    value: Value,
) -> Result<(), A::Error> {
    if !key.storable() || has_nul(&value) {
        return Err(not_common());
    }
    match rest.insert(key.into_string(), value) {
        Some(_) => Err(not_common()),
        None => Ok(()),
    }
}

/// Implements `Deserialize` for an object read key by key: `$read(out, key, map)` handles one
/// key (the value is still to be read from `map`).
macro_rules! object {
    ($name:ident, $read:ident) => {
        impl<'de> Deserialize<'de> for $name<'de> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'de> Visitor<'de> for ObjectVisitor {
                    type Value = $name<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Self::Value, A::Error> {
                        let mut out = $name::default();
                        while let Some(key) = map.next_key::<Str<'de>>()? {
                            $read(&mut out, key, &mut map)?;
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(ObjectVisitor)
            }
        }
    };
}

/// The CloudEvents envelope. Extension attributes are checked and, like in the full reader's
/// row, not stored.
#[derive(Default)]
struct Envelope<'de> {
    specversion: Option<Str<'de>>,
    id: Option<Str<'de>>,
    source: Option<Str<'de>>,
    r#type: Option<Str<'de>>,
    time: Option<Str<'de>>,
    subject: Option<Str<'de>>,
    datacontenttype: Option<Str<'de>>,
    dataschema: Option<Str<'de>>,
    traceparent: Option<Str<'de>>,
    data: Option<Data<'de>>,
}

fn envelope_key<'de, A: MapAccess<'de>>(
    e: &mut Envelope<'de>,
    key: Str<'de>,
    map: &mut A,
) -> Result<(), A::Error> {
    match key.0.as_ref() {
        "specversion" => once(&mut e.specversion, map),
        "id" => once(&mut e.id, map),
        "source" => once(&mut e.source, map),
        "type" => once(&mut e.r#type, map),
        "time" => once(&mut e.time, map),
        "subject" => once(&mut e.subject, map),
        "datacontenttype" => once(&mut e.datacontenttype, map),
        "dataschema" => once(&mut e.dataschema, map),
        "traceparent" => once(&mut e.traceparent, map),
        "data" => once(&mut e.data, map),
        name => {
            let value: Value = map.next_value()?;
            let scalar = matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_));
            if is_extension_name(name) && scalar && !has_nul(&value) {
                Ok(())
            } else {
                // data_base64, a bad name, a bad value: for the full reader to name.
                Err(not_common())
            }
        }
    }
}
object!(Envelope, envelope_key);

/// The audit `data` block: the columns, and the rest for `details`.
#[derive(Default)]
struct Data<'de> {
    actor: Option<Actor<'de>>,
    action: Option<Str<'de>>,
    outcome: Option<Str<'de>>,
    resource: Option<Resource<'de>>,
    reason: Option<Str<'de>>,
    rest: Map<String, Value>,
}

fn data_key<'de, A: MapAccess<'de>>(
    d: &mut Data<'de>,
    key: Str<'de>,
    map: &mut A,
) -> Result<(), A::Error> {
    match key.0.as_ref() {
        "actor" => once(&mut d.actor, map),
        "action" => once(&mut d.action, map),
        "outcome" => once(&mut d.outcome, map),
        "resource" => once(&mut d.resource, map),
        "reason" => once(&mut d.reason, map),
        _ => {
            let value = map.next_value()?;
            keep::<A>(&mut d.rest, key, value)
        }
    }
}
object!(Data, data_key);

/// `data.actor`: type and id are columns; the rest (name, roles, ip, ...) goes to `details`.
#[derive(Default)]
struct Actor<'de> {
    r#type: Option<Str<'de>>,
    id: Option<Str<'de>>,
    rest: Map<String, Value>,
}

fn actor_key<'de, A: MapAccess<'de>>(
    a: &mut Actor<'de>,
    key: Str<'de>,
    map: &mut A,
) -> Result<(), A::Error> {
    match key.0.as_ref() {
        "type" => once(&mut a.r#type, map),
        "id" => once(&mut a.id, map),
        "name" | "session_id" | "ip" => {
            let text: Str<'de> = map.next_value()?;
            if key.0 == "ip" && text.0.parse::<IpAddr>().is_err() {
                return Err(not_common());
            }
            keep::<A>(&mut a.rest, key, Value::String(text.into_string()))
        }
        "roles" => {
            let roles: Value = map.next_value()?;
            match &roles {
                Value::Array(items) if items.iter().all(Value::is_string) => {
                    keep::<A>(&mut a.rest, key, roles)
                }
                _ => Err(not_common()),
            }
        }
        _ => {
            let value = map.next_value()?;
            keep::<A>(&mut a.rest, key, value)
        }
    }
}
object!(Actor, actor_key);

/// `data.resource`: type and id are columns; the rest goes to `details`.
#[derive(Default)]
struct Resource<'de> {
    r#type: Option<Str<'de>>,
    id: Option<Str<'de>>,
    rest: Map<String, Value>,
}

fn resource_key<'de, A: MapAccess<'de>>(
    r: &mut Resource<'de>,
    key: Str<'de>,
    map: &mut A,
) -> Result<(), A::Error> {
    match key.0.as_ref() {
        "type" => once(&mut r.r#type, map),
        "id" => once(&mut r.id, map),
        _ => {
            let value = map.next_value()?;
            keep::<A>(&mut r.rest, key, value)
        }
    }
}
object!(Resource, resource_key);

/// Present and non-empty.
fn filled(s: &Option<Str<'_>>) -> bool {
    s.as_ref().is_some_and(Str::filled)
}

/// Present, non-empty and short enough for its index.
fn key(s: &Option<Str<'_>>) -> bool {
    s.as_ref().is_some_and(|s| s.filled() && s.indexable())
}

/// Absent, or storable and passing `rule`.
fn optional<'de>(s: &Option<Str<'de>>, rule: impl Fn(&Str<'de>) -> bool) -> bool {
    s.as_ref().is_none_or(|s| s.storable() && rule(s))
}

impl<'de> Envelope<'de> {
    /// The rules of SPEC §2.2 on what was read (the full reader's, in the same order of
    /// importance), then the mapping of SPEC §2.3 exactly as [`rows::to_row`] does it.
    fn into_row(self, limits: &Limits, now: DateTime<Utc>) -> Option<Row> {
        let data = self.data?;
        let actor = data.actor?;
        let envelope_ok = self.specversion.as_ref().is_some_and(|v| v.0 == "1.0")
            && key(&self.id)
            && key(&self.source)
            && key(&self.r#type)
            && optional(&self.subject, Str::filled)
            && optional(&self.datacontenttype, |s| is_json_media_type(&s.0))
            && optional(&self.dataschema, Str::filled)
            && optional(&self.traceparent, |s| {
                crate::event::check_traceparent(&s.0).is_ok()
            });
        let data_ok = key(&actor.id)
            && optional(&actor.r#type, |s| ACTOR_TYPES.contains(&s.0.as_ref()))
            && filled(&data.action)
            && data
                .outcome
                .as_ref()
                .is_some_and(|o| OUTCOMES.contains(&o.0.as_ref()))
            && optional(&data.reason, |_| true)
            && data
                .resource
                .as_ref()
                .is_none_or(|r| key(&r.r#type) && optional(&r.id, Str::indexable));
        if !envelope_ok || !data_ok {
            return None;
        }
        let occurred_at = parse_time(&self.time?.0, limits, now).ok()?;

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
            id: self.id?.into_string(),
            source: self.source?.into_string(),
            r#type: self.r#type?.into_string(),
            subject: self.subject.map(Str::into_string),
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
            trace_id: self
                .traceparent
                .as_ref()
                .and_then(|t| trace_id_of(&t.0))
                .map(str::to_string),
            details: (!details.is_empty()).then(|| Value::Object(details).to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            max_event_bytes: usize::MAX,
            max_future_skew: std::time::Duration::from_secs(3600),
            retention_months: 84,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
            .single()
            .expect("time")
    }

    /// An event with every optional part the schema knows.
    fn rich() -> Value {
        json!({
            "specversion": "1.0", "id": "e-1", "source": "/registry", "type": "org.openg2p.beneficiary.updated",
            "time": "2026-11-02T09:18:55+05:30", "subject": "beneficiary/b_1",
            "datacontenttype": "application/json", "dataschema": "https://schemas/x",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tenant": "north", "priority": 3, "sampled": true,
            "data": {
                "actor": {"type": "user", "id": "u_4421", "name": "Åsa \"the\" officer", "roles": ["officer", "admin"],
                          "ip": "10.1.2.3", "session_id": "s-9", "org": {"unit": 7}},
                "action": "update", "outcome": "success", "reason": "line1\nline2\ttab",
                "resource": {"type": "beneficiary", "id": "b_1", "program": "p", "n": 1.5e3},
                "changes": {"phone": {"old": "1", "new": "2"}, "list": [1, -2, 3.25, null, true]},
                "context": {"sent": "2026-11-02T03:48:55.123456Z", "監査": "ü"}
            }
        })
    }

    /// The bench's event: what the ingest API writes most of the time.
    fn plain() -> Value {
        json!({
            "specversion": "1.0", "id": "run-1", "source": "/bench", "type": "org.openg2p.beneficiary.viewed",
            "subject": "beneficiary/b_1", "time": "2026-11-24T11:59:00.000001Z",
            "data": {"actor": {"type": "user", "id": "u_1", "roles": ["enrolment-officer"]},
                     "action": "view", "outcome": "success",
                     "resource": {"type": "beneficiary", "id": "b_1"},
                     "context": {"sent": "2026-11-24T11:59:00.000001Z"}}
        })
    }

    /// Both readers on the same bytes: the typed one, when it answers, agrees with the full one.
    fn agree(bytes: &[u8]) -> Option<Row> {
        let fast = typed(bytes, &limits(), now());
        let slow = full(bytes, &limits(), now());
        if let Some(row) = &fast {
            assert_eq!(
                slow.as_ref(),
                Ok(row),
                "the typed reader accepted what the full reader maps differently: {}",
                String::from_utf8_lossy(bytes)
            );
        }
        fast
    }

    #[test]
    fn the_common_events_take_the_typed_reader_and_map_identically() {
        for event in [rich(), plain()] {
            let bytes = serde_json::to_vec(&event).expect("json");
            assert!(agree(&bytes).is_some(), "typed reader declined {event}");
        }
        // Key order and whitespace do not matter, escapes are decoded.
        let spaced = br#"{ "data" : {"outcome":"denied", "action":"log\u0069n",
            "actor":{"id":"u\"1"}}, "time":"2026-11-02T09:18:55Z", "type":"t",
            "source":"/s", "id":"x", "specversion":"1.0" }"#;
        let row = agree(spaced).expect("typed");
        assert_eq!(
            (row.action.as_str(), row.actor_id.as_str()),
            ("login", "u\"1")
        );
        assert_eq!(row.actor_type, "user", "a missing actor type is user");
        assert_eq!(row.details, None);
    }

    #[test]
    fn anything_unusual_is_left_to_the_full_reader() {
        let cases: Vec<(&str, Value)> = vec![
            ("/id", Value::Null),
            ("/subject", json!("")),
            ("/subject", Value::Null),
            ("/data/actor/type", json!("robot")),
            ("/data/actor/ip", json!("nowhere")),
            ("/data/actor/roles", json!(["a", 1])),
            ("/data/outcome", json!("maybe")),
            ("/data/reason", json!(5)),
            ("/data/resource/id", json!(5)),
            ("/data/changes", json!({"x": "nul\u{0}"})),
            ("/data/actor/id", json!("a".repeat(MAX_INDEXED_BYTES + 1))),
            ("/data_base64", json!("AAAA")),
            ("/Bad", json!("x")),
            ("/ext", json!({"nested": 1})),
            ("/time", json!("2026-11-02")),
            ("/time", json!("2031-01-01T00:00:00Z")),
            ("/datacontenttype", json!("text/plain")),
            ("/traceparent", json!("00-xyz-00f067aa0ba902b7-01")),
        ];
        for (pointer, value) in cases {
            let event = set(rich(), pointer, Some(value.clone()));
            let bytes = serde_json::to_vec(&event).expect("json");
            assert!(agree(&bytes).is_none(), "{pointer} = {value}");
            assert!(
                full(&bytes, &limits(), now()).is_err(),
                "{pointer} = {value}"
            );
        }
        // Valid, but for the full reader: no id (derived from the content), a duplicate key,
        // trailing bytes (not JSON).
        let no_id = serde_json::to_vec(&set(rich(), "/id", None)).expect("json");
        assert!(agree(&no_id).is_none());
        assert!(full(&no_id, &limits(), now()).is_ok());
        let twice = br#"{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t","time":"2026-11-02T09:18:55Z","data":{"actor":{"id":"u"},"action":"a","outcome":"success"}}"#;
        assert!(agree(twice).is_none());
        assert_eq!(
            full(twice, &limits(), now()).map(|r| r.id),
            Ok("b".to_string())
        );
        let trailing = [serde_json::to_vec(&plain()).expect("json"), b"x".to_vec()].concat();
        assert!(agree(&trailing).is_none());
    }

    /// `event` with the value at `pointer` replaced (None: removed).
    fn set(mut event: Value, pointer: &str, value: Option<Value>) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        if let Some(obj) = event.pointer_mut(parent).and_then(Value::as_object_mut) {
            match value {
                Some(v) => obj.insert(key.to_string(), v),
                None => obj.remove(key),
            };
        }
        event
    }

    /// Any JSON, weighted towards the values the rules care about.
    fn any_json() -> impl Strategy<Value = Value> {
        let tricky = prop::sample::select(vec![
            Value::Null,
            json!(""),
            json!("  "),
            json!("user"),
            json!("robot"),
            json!("success"),
            json!("1.0"),
            json!("10.0.0.1"),
            json!("application/json"),
            json!("text/plain"),
            json!("x\u{0}"),
            json!("k".repeat(MAX_INDEXED_BYTES + 1)),
            json!("2026-11-01T00:00:00Z"),
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            json!(["a"]),
            json!([]),
            json!({}),
            json!({"id": "i", "type": "t"}),
            json!({"type": "t"}),
        ]);
        let leaf = prop_oneof![
            8 => tricky,
            1 => any::<bool>().prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            1 => ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn pointer() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/specversion",
            "/id",
            "/source",
            "/type",
            "/time",
            "/subject",
            "/datacontenttype",
            "/dataschema",
            "/traceparent",
            "/tenant",
            "/Bad_Ext",
            "/data_base64",
            "/data",
            "/data/actor",
            "/data/actor/type",
            "/data/actor/id",
            "/data/actor/name",
            "/data/actor/ip",
            "/data/actor/roles",
            "/data/actor/extra",
            "/data/action",
            "/data/outcome",
            "/data/resource",
            "/data/resource/type",
            "/data/resource/id",
            "/data/resource/extra",
            "/data/reason",
            "/data/changes",
            "/data/context/sent",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Up to three fields of a valid event changed or removed at random: whenever the typed
        /// reader answers, its row is the full reader's.
        #[test]
        fn the_typed_reader_never_disagrees(
            base in prop_oneof![Just(rich()), Just(plain())],
            edits in prop::collection::vec((pointer(), prop::option::weighted(0.9, any_json())), 0..4),
        ) {
            let event = edits
                .into_iter()
                .fold(base, |e, (p, v)| set(e, p, v));
            agree(&serde_json::to_vec(&event).expect("json"));
        }
    }
}
