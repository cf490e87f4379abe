//! A record's value → a row.
//!
//! Two readers, one outcome. The full reader parses the record into a JSON tree, validates it
//! with [`event::validate`] and maps it with [`row::to_row`]: it names every problem, for the
//! DLQ. The typed reader ([`crate::event::typed`]) handles the common case (a record the
//! ingest API wrote: a valid event with an `id`) without building the tree, and its event is
//! mapped by [`row::from_typed`] straight into the columns. Anything else
//! is the full reader's, so DLQ reasons come from one place. When it succeeds, its row equals the
//! full reader's, `details` text included (tested below on generated events).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::event::normalize;
use crate::event::row::{self, Row};
use crate::event::typed::Envelope;
use crate::event::{self, Invalid, Limits};

/// Why a record went to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub reason: String,
}

/// What the ingest said of a record in its headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Told<'a> {
    /// `audit-normalized`: what the ingest normalized, added to the row's own.
    pub normalized: Option<&'a str>,
    /// `audit-principal`: who sent it.
    pub principal: Option<&'a str>,
}

/// Parses and validates one record value into a row, with what its headers say.
pub fn decode(
    payload: Option<&[u8]>,
    told: Told<'_>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Row, Poison> {
    let bytes = payload.ok_or_else(|| Poison {
        reason: "empty record: no value".into(),
    })?;
    let mut row = match typed(bytes, limits, now) {
        Some(row) => row,
        None => full(bytes, limits, now)?,
    };
    if let Some(header) = told.normalized {
        row.also_normalized(normalize::parse_header(header));
    }
    row.principal = told.principal.map(str::to_string);
    Ok(row)
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
    Ok(row::to_row(event))
}

/// The typed reader: the row of a valid event with an `id`, or None for the full reader.
fn typed(bytes: &[u8], limits: &Limits, now: DateTime<Utc>) -> Option<Row> {
    // The sink measures no size (its limit is usize::MAX); a size rule is the full reader's.
    if limits.max_event_bytes != usize::MAX {
        return None;
    }
    let event = Envelope::read(std::str::from_utf8(bytes).ok()?)?;
    let occurred_at = event.check(limits, now)?;
    row::from_typed(event, occurred_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MAX_INDEXED_BYTES;
    use crate::event::typed::testing::{edited_event, limits, now, plain, rich, set};
    use proptest::prelude::*;
    use serde_json::json;

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
    fn the_ingest_header_adds_what_it_normalized() {
        let bytes = serde_json::to_vec(&plain()).expect("json");
        let told = Told {
            normalized: Some("time_defaulted,who_knows"),
            principal: Some("cluster/system:serviceaccount:registry:api"),
        };
        let row = decode(Some(&bytes), told, &limits(), now()).expect("row");
        assert_eq!(row.normalized, [normalize::Normalization::TimeDefaulted]);
        assert_eq!(
            row.principal.as_deref(),
            Some("cluster/system:serviceaccount:registry:api")
        );
        let row = decode(Some(&bytes), Told::default(), &limits(), now()).expect("row");
        assert!(row.normalized.is_empty());
        assert_eq!(row.principal, None);
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
            ("/subject", json!("")),
            ("/data/actor/type", json!("robot")),
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
        // Valid, but for the full reader: no id (derived from the content), what it normalizes
        // (a null taken as absent, an actor ip that is no address, an empty actor id), a
        // duplicate key, trailing bytes (not JSON).
        for (pointer, value) in [
            ("/id", None),
            ("/id", Some(Value::Null)),
            ("/subject", Some(Value::Null)),
            ("/data/actor/name", Some(Value::Null)),
            ("/data/actor/ip", Some(json!("nowhere"))),
            ("/data/actor/id", Some(json!(""))),
            ("/data/resource/program", Some(Value::Null)),
        ] {
            let bytes = serde_json::to_vec(&set(rich(), pointer, value.clone())).expect("json");
            assert!(agree(&bytes).is_none(), "{pointer} = {value:?}");
            assert!(
                full(&bytes, &limits(), now()).is_ok(),
                "{pointer} = {value:?}"
            );
        }
        let twice = br#"{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t","time":"2026-11-02T09:18:55Z","data":{"actor":{"id":"u"},"action":"a","outcome":"success"}}"#;
        assert!(agree(twice).is_none());
        assert_eq!(
            full(twice, &limits(), now()).map(|r| r.id),
            Ok("b".to_string())
        );
        let trailing = [serde_json::to_vec(&plain()).expect("json"), b"x".to_vec()].concat();
        assert!(agree(&trailing).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Up to three fields of a valid event changed or removed at random: whenever the typed
        /// reader answers, its row is the full reader's.
        #[test]
        fn the_typed_reader_never_disagrees(event in edited_event()) {
            agree(&serde_json::to_vec(&event).expect("json"));
        }
    }
}
