//! The typed reader of an event: the common case (a valid event with an `id`) read without a
//! JSON tree, its strings borrowed from the bytes, only what `details` keeps parsed as JSON
//! values. The moment anything differs from a valid event (a failed rule, a duplicate key, a
//! missing `id`, a value of another type) it gives up and the caller takes the full path
//! ([`super::validate`] on a tree), so every error message comes from one place. Each rule
//! here restates one of `validate.rs`; the property tests below hold the two to the same
//! answers.
//!
//! Two callers: the ingest API, which publishes an event it accepts this way as the bytes it
//! received, and the sink, which maps it straight into its row.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::validate::{
    ACTOR_TYPES, Limits, MAX_INDEXED_BYTES, OUTCOMES, has_nul, is_extension_name,
    is_json_media_type, parse_time,
};

/// Stops the typed reader; the full reader will say what is wrong, if anything.
fn not_common<E: de::Error>() -> E {
    E::custom("not the common case")
}

/// A string, borrowed from the record unless it had escapes.
pub(crate) struct Str<'de>(pub(crate) Cow<'de, str>);

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

    pub(crate) fn into_string(self) -> String {
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

/// The CloudEvents envelope, extension attributes (checked) included.
#[derive(Default)]
pub(crate) struct Envelope<'de> {
    pub(crate) specversion: Option<Str<'de>>,
    pub(crate) id: Option<Str<'de>>,
    pub(crate) source: Option<Str<'de>>,
    pub(crate) r#type: Option<Str<'de>>,
    pub(crate) time: Option<Str<'de>>,
    pub(crate) subject: Option<Str<'de>>,
    pub(crate) datacontenttype: Option<Str<'de>>,
    pub(crate) dataschema: Option<Str<'de>>,
    pub(crate) traceparent: Option<Str<'de>>,
    pub(crate) data: Option<Data<'de>>,
    /// The extension attributes; a repeated one is left to the full reader.
    pub(crate) extensions: Map<String, Value>,
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
            let repeated = e.extensions.contains_key(name);
            if is_extension_name(name) && scalar && !has_nul(&value) && !repeated {
                e.extensions.insert(key.into_string(), value);
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
pub(crate) struct Data<'de> {
    pub(crate) actor: Option<Actor<'de>>,
    pub(crate) action: Option<Str<'de>>,
    pub(crate) outcome: Option<Str<'de>>,
    pub(crate) resource: Option<Resource<'de>>,
    pub(crate) reason: Option<Str<'de>>,
    pub(crate) rest: Map<String, Value>,
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
pub(crate) struct Actor<'de> {
    pub(crate) r#type: Option<Str<'de>>,
    pub(crate) id: Option<Str<'de>>,
    pub(crate) rest: Map<String, Value>,
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
        _ => optional_extra::<A>(&mut a.rest, key, map.next_value()?),
    }
}
object!(Actor, actor_key);

/// `data.resource`: type and id are columns; the rest goes to `details`.
#[derive(Default)]
pub(crate) struct Resource<'de> {
    pub(crate) r#type: Option<Str<'de>>,
    pub(crate) id: Option<Str<'de>>,
    pub(crate) rest: Map<String, Value>,
}

fn resource_key<'de, A: MapAccess<'de>>(
    r: &mut Resource<'de>,
    key: Str<'de>,
    map: &mut A,
) -> Result<(), A::Error> {
    match key.0.as_ref() {
        "type" => once(&mut r.r#type, map),
        "id" => once(&mut r.id, map),
        _ => optional_extra::<A>(&mut r.rest, key, map.next_value()?),
    }
}
object!(Resource, resource_key);

/// An extra key of `data.actor` or `data.resource`: a null there is dropped by the full path
/// (normalized), so it is the full path's.
fn optional_extra<'de, A: MapAccess<'de>>(
    rest: &mut Map<String, Value>,
    key: Str<'de>,
    value: Value,
) -> Result<(), A::Error> {
    if value.is_null() {
        return Err(not_common());
    }
    keep::<A>(rest, key, value)
}

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
    /// Reads `text` as one event; None when it is not the common case. It takes text, not
    /// bytes, so a caller that already holds checked UTF-8 (a batch's `RawValue`) does not
    /// have it checked again string by string.
    pub(crate) fn read(text: &'de str) -> Option<Envelope<'de>> {
        let mut reader = serde_json::Deserializer::from_str(text);
        let envelope = Envelope::deserialize(&mut reader).ok()?;
        reader.end().ok()?;
        Some(envelope)
    }

    /// The rules of SPEC §2.2 on what was read (the full path's, in the same order of
    /// importance); the event's time when every one holds.
    pub(crate) fn check(&self, limits: &Limits, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let data = self.data.as_ref()?;
        let actor = data.actor.as_ref()?;
        let envelope_ok = self.specversion.as_ref().is_some_and(|v| v.0 == "1.0")
            && key(&self.id)
            && key(&self.source)
            && key(&self.r#type)
            && optional(&self.subject, Str::filled)
            && optional(&self.datacontenttype, |s| is_json_media_type(&s.0))
            && optional(&self.dataschema, Str::filled)
            && optional(&self.traceparent, |s| {
                super::traceparent::check(&s.0).is_ok()
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
        parse_time(&self.time.as_ref()?.0, limits, now).ok()
    }
}

/// What the ingest API needs of an event it can publish as received: its id and Kafka key.
#[derive(Debug, PartialEq)]
pub struct AsIs {
    pub id: String,
    pub key: String,
    /// The `source`, for authorization.
    pub source: String,
}

/// Accepts `text` as it is when it is a valid event that validation would not change (it has
/// its `id` and its `data.actor.type`) and it fits `max_event_bytes`; None leaves the event to
/// [`super::validate`], which names any problem.
pub fn accept_as_is(text: &str, limits: &Limits, now: DateTime<Utc>) -> Option<AsIs> {
    if text.len() > limits.max_event_bytes {
        return None;
    }
    let event = Envelope::read(text)?;
    event.check(limits, now)?;
    let actor = event.data.as_ref()?.actor.as_ref()?;
    actor.r#type.as_ref()?;
    let subject = event.subject.as_ref().map(|s| s.0.as_ref());
    Some(AsIs {
        key: super::model::partition_key(subject, &actor.id.as_ref()?.0).to_string(),
        id: event.id.as_ref()?.0.to_string(),
        source: event.source.as_ref()?.0.to_string(),
    })
}

/// Events and generators shared by the typed reader's tests here and in the sink.
#[cfg(test)]
pub(crate) mod testing {
    use chrono::{DateTime, TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::event::{Limits, MAX_INDEXED_BYTES};

    pub(crate) fn limits() -> Limits {
        Limits {
            max_event_bytes: usize::MAX,
            max_future_skew: std::time::Duration::from_secs(3600),
            retention_months: 84,
        }
    }

    pub(crate) fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
            .single()
            .expect("time")
    }

    /// An event with every optional part the schema knows.
    pub(crate) fn rich() -> Value {
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
    pub(crate) fn plain() -> Value {
        json!({
            "specversion": "1.0", "id": "run-1", "source": "/bench", "type": "org.openg2p.beneficiary.viewed",
            "subject": "beneficiary/b_1", "time": "2026-11-24T11:59:00.000001Z",
            "data": {"actor": {"type": "user", "id": "u_1", "roles": ["enrolment-officer"]},
                     "action": "view", "outcome": "success",
                     "resource": {"type": "beneficiary", "id": "b_1"},
                     "context": {"sent": "2026-11-24T11:59:00.000001Z"}}
        })
    }

    /// `event` with the value at `pointer` replaced (None: removed).
    pub(crate) fn set(mut event: Value, pointer: &str, value: Option<Value>) -> Value {
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
    pub(crate) fn any_json() -> impl Strategy<Value = Value> {
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

    /// The fields the property tests edit: every field the full path validates (a test
    /// checks that), and a few it leaves free.
    pub(crate) const POINTERS: [&str; 32] = [
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
        "/priority",
        "/sampled",
        "/Bad_Ext",
        "/data_base64",
        "/data",
        "/data/actor",
        "/data/actor/type",
        "/data/actor/id",
        "/data/actor/name",
        "/data/actor/ip",
        "/data/actor/session_id",
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
    ];

    pub(crate) fn pointer() -> impl Strategy<Value = &'static str> {
        prop::sample::select(POINTERS.to_vec())
    }

    /// A valid event (`rich` or `plain`) with up to three fields changed or removed at random.
    pub(crate) fn edited_event() -> impl Strategy<Value = Value> {
        (
            prop_oneof![Just(rich()), Just(plain())],
            prop::collection::vec((pointer(), prop::option::weighted(0.9, any_json())), 0..4),
        )
            .prop_map(|(base, edits)| edits.into_iter().fold(base, |e, (p, v)| set(e, p, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{edited_event, limits, now, plain, rich, set};
    use super::*;
    use crate::event::validate;
    use proptest::prelude::*;
    use serde_json::json;

    /// `accept_as_is` on `bytes`; when it accepts, the bytes it publishes fit the limit, and
    /// the full path accepts the same event with the same id and key, and what it would
    /// publish means what the bytes say. The full path is asked without a size limit: the
    /// limit bounds the event as published, and its compact form can be longer than the bytes
    /// (serde_json's float parsing does not round-trip every value: `-3.679350191937046e+299`
    /// comes back as `-3.6793501919370465e+299`).
    fn agree(bytes: &[u8], limits: &Limits) -> Option<AsIs> {
        let fast = std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| accept_as_is(text, limits, now()));
        if let Some(accepted) = &fast {
            assert!(
                bytes.len() <= limits.max_event_bytes,
                "published over the limit"
            );
            let value: Value = serde_json::from_slice(bytes).expect("accepted bytes are JSON");
            let unlimited = Limits {
                max_event_bytes: usize::MAX,
                ..*limits
            };
            let full = validate(value.clone(), &unlimited, now()).unwrap_or_else(|e| {
                panic!(
                    "accepted as is, refused by validation ({e:?}): {}",
                    String::from_utf8_lossy(bytes)
                )
            });
            assert_eq!(full.id(), accepted.id);
            assert_eq!(full.partition_key(), accepted.key);
            assert_eq!(
                Value::Object(full.attributes),
                value,
                "validation would publish something else"
            );
        }
        fast
    }

    #[test]
    fn a_complete_valid_event_is_accepted_as_is() {
        let accepted = agree(&serde_json::to_vec(&rich()).expect("json"), &limits());
        assert_eq!(
            accepted,
            Some(AsIs {
                id: "e-1".into(),
                key: "beneficiary/b_1".into(),
                source: rich()["source"].as_str().expect("source").into(),
            })
        );
        // Without a subject the key is the actor; whitespace is kept as sent.
        let event = set(plain(), "/subject", None);
        let pretty = serde_json::to_vec_pretty(&event).expect("json");
        assert_eq!(agree(&pretty, &limits()).map(|a| a.key), Some("u_1".into()));
    }

    #[test]
    fn what_validation_would_change_or_refuse_is_left_to_it() {
        let bytes = |e: &Value| serde_json::to_vec(e).expect("json");
        // Validation fills these in, so the bytes as sent are not what is published.
        for pointer in ["/id", "/data/actor/type"] {
            let event = set(rich(), pointer, None);
            assert_eq!(agree(&bytes(&event), &limits()), None, "without {pointer}");
            assert!(validate(event, &limits(), now()).is_ok());
        }
        // Over the size limit as sent: validation measures the event as it would publish it.
        let plain_bytes = bytes(&plain());
        let tight = Limits {
            max_event_bytes: plain_bytes.len() - 1,
            ..limits()
        };
        assert_eq!(agree(&plain_bytes, &tight), None);
        // At the limit as sent, with a float whose compact form comes back one byte longer:
        // accepted, published as the bytes that fit.
        let float = set(plain(), "/data/n", Some(json!(-3.679350191937046e299)));
        let float_bytes = bytes(&float);
        let exact = Limits {
            max_event_bytes: float_bytes.len(),
            ..limits()
        };
        assert!(agree(&float_bytes, &exact).is_some());
        // A repeated extension attribute: validation keeps the last one.
        let twice = br#"{"specversion":"1.0","id":"a","source":"/s","type":"t","tenant":"x","tenant":"y","time":"2026-11-02T09:18:55Z","data":{"actor":{"type":"user","id":"u"},"action":"a","outcome":"success"}}"#;
        assert_eq!(agree(twice, &limits()), None);
        let once = String::from_utf8_lossy(twice).replacen(r#""tenant":"x","#, "", 1);
        assert!(agree(once.as_bytes(), &limits()).is_some());
        // Anything invalid.
        let invalid = set(rich(), "/data/outcome", Some(json!("maybe")));
        assert_eq!(agree(&bytes(&invalid), &limits()), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Up to three fields of a valid event changed or removed at random, sent compact or
        /// pretty-printed: whatever is accepted as is, validation accepts unchanged.
        #[test]
        fn what_is_accepted_as_is_validation_accepts_unchanged(
            event in edited_event(),
            pretty in any::<bool>(),
            limit in prop_oneof![Just(usize::MAX), 200usize..2000],
        ) {
            let bytes = if pretty {
                serde_json::to_vec_pretty(&event)
            } else {
                serde_json::to_vec(&event)
            }
            .expect("json");
            let limits = Limits { max_event_bytes: limit, ..limits() };
            agree(&bytes, &limits);
        }
    }

    /// Every field that the full path refuses some value at, found by trying each field of
    /// the two base events with each value of the generator's tricky list.
    fn fields_the_full_path_validates() -> std::collections::BTreeSet<String> {
        fn paths(v: &Value, at: &str, out: &mut Vec<String>) {
            if let Value::Object(map) = v {
                for (k, child) in map {
                    let p = format!("{at}/{k}");
                    out.push(p.clone());
                    paths(child, &p, out);
                }
            }
        }
        let values = [
            Value::Null,
            json!(""),
            json!("robot"),
            json!("not an address"),
            json!("k".repeat(crate::event::MAX_INDEXED_BYTES + 1)),
            json!(7),
            json!(true),
            json!([1]),
            json!({}),
        ];
        let mut found = std::collections::BTreeSet::new();
        for base in [rich(), plain()] {
            let mut fields = vec!["/data_base64".to_string(), "/Bad_Ext".to_string()];
            paths(&base, "", &mut fields);
            for field in fields {
                for v in &values {
                    let edited = set(base.clone(), &field, Some(v.clone()));
                    let Err(crate::event::Invalid::Fields(errors)) =
                        validate(edited, &limits(), now())
                    else {
                        continue;
                    };
                    let refused_here = errors.iter().any(|e| {
                        let path = e.path.split('[').next().unwrap_or_default();
                        format!("/{}", path.replace('.', "/")) == field
                    });
                    if refused_here {
                        found.insert(field.clone());
                    }
                }
            }
        }
        found
    }

    /// The fast path reads every rule of the full path (`super::validate`) by its own code: a
    /// rule on a field the property tests never edit could differ unnoticed.
    #[test]
    fn the_property_tests_edit_every_field_the_full_path_validates() {
        let validated = fields_the_full_path_validates();
        assert!(validated.contains("/data/actor/ip"), "{validated:?}");
        let edited: std::collections::BTreeSet<&str> =
            super::testing::POINTERS.into_iter().collect();
        let missing: Vec<&String> = validated
            .iter()
            .filter(|f| !edited.contains(f.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "validated by the full path but never edited by the property tests: {missing:?}; add them to testing::POINTERS"
        );
    }
}
