//! Why a batch body does not have the batch shape, named without building a JSON tree of it:
//! a malformed body costs a scan, never memory in proportion to what it holds.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::envelope::ApiError;
use crate::event::FieldError;

/// `{"events": [...]}` with each event's bytes borrowed from the body.
#[derive(serde::Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// The events of a `{"events": [...]}` body, each one's bytes borrowed from it.
pub fn read_wrapped(bytes: &[u8]) -> Result<Vec<&RawValue>, ApiError> {
    // serde reads a struct from an array too (`[[...]]`); only an object is this shape.
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match serde_json::from_slice::<Wrapped>(bytes) {
        Ok(body) if object => Ok(body.events),
        Ok(_) => Err(ApiError::invalid(vec![FieldError::new(
            "",
            "the body must be {\"events\": [...]}",
        )])),
        Err(e) => Err(wrapped(bytes, e)),
    }
}

/// The events of an `application/cloudevents-batch+json` body (a JSON array).
pub fn read_array(bytes: &[u8]) -> Result<Vec<&RawValue>, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| array(bytes, e))
}

/// A `{"events": [...]}` body that did not read as one; `e` is why.
fn wrapped(bytes: &[u8], e: serde_json::Error) -> ApiError {
    if !e.is_data() {
        return ApiError::MalformedJson(e.to_string());
    }
    let invalid =
        |path: &str, message: &str| ApiError::invalid(vec![FieldError::new(path, message)]);
    match serde_json::from_slice::<Kind>(bytes) {
        Ok(Kind::Object) => {}
        Ok(_) => return invalid("", "the body must be {\"events\": [...]}"),
        Err(e) => return ApiError::MalformedJson(e.to_string()),
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        events: Option<Kind>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe { events: None }) => invalid(
            "events",
            "is required: send {\"events\": [...]}, or a JSON array as application/cloudevents-batch+json",
        ),
        Ok(Probe {
            events: Some(Kind::Array),
        }) => ApiError::MalformedJson(e.to_string()),
        Ok(Probe { events: Some(_) }) => invalid("events", "must be an array of events"),
        Err(e) => ApiError::MalformedJson(e.to_string()),
    }
}

/// An `application/cloudevents-batch+json` body that did not read as an array.
fn array(bytes: &[u8], e: serde_json::Error) -> ApiError {
    if !e.is_data() {
        return ApiError::MalformedJson(e.to_string());
    }
    match serde_json::from_slice::<Kind>(bytes) {
        Ok(Kind::Array) => ApiError::MalformedJson(e.to_string()),
        Ok(_) => ApiError::invalid(vec![FieldError::new(
            "",
            "a CloudEvents batch must be a JSON array of events",
        )]),
        Err(e) => ApiError::MalformedJson(e.to_string()),
    }
}

/// The type of a JSON value, read without keeping any of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Scalar,
    Array,
    Object,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(KindOf)
    }
}

struct KindOf;

impl<'de> Visitor<'de> for KindOf {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }

    fn visit_str<E>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }

    fn visit_unit<E>(self) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Kind::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Kind::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(body: &str) -> String {
        let Err(e) = read_wrapped(body.as_bytes()) else {
            panic!("{body} is the batch shape");
        };
        e.items()[0].message.clone()
    }

    #[test]
    fn every_wrong_shape_is_named() {
        assert!(why("{\"events\": [1,").contains("EOF"));
        assert!(why("[1, 2]").contains("must be {\"events\""));
        assert!(
            why("[[{}]]").contains("must be {\"events\""),
            "not a struct as a tuple"
        );
        assert!(why("{\"other\": 1}").contains("events: is required"));
        assert!(why("{\"events\": {}}").contains("must be an array"));
        assert!(why("{\"events\": [], \"events\": []}").contains("duplicate field"));
        let e = read_array(b"{\"a\":1}").expect_err("an object");
        assert!(e.items()[0].message.contains("must be a JSON array"));
    }
}
