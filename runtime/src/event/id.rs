//! Deterministic ids for events sent without one: an emitter's retry of the same event yields
//! the same id, so it can never become a second row.

use serde_json::{Map, Value};

/// Namespace of the generated ids (a fixed random UUID of this project).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2e0a_8d5b_4c47_9a3e_51b7_d2c4_e8f9);

/// A UUIDv5 of the event's canonical JSON (keys sorted, `id` left out).
pub fn content_id(event: &Map<String, Value>) -> String {
    let mut without_id = event.clone();
    without_id.remove("id");
    // serde_json's Map keeps keys sorted, so equal content gives equal bytes at every depth.
    let canonical = serde_json::to_vec(&without_id).unwrap_or_default();
    uuid::Uuid::new_v5(&NAMESPACE, &canonical).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn same_content_in_any_key_order_gives_the_same_id() {
        let a = map(json!({"source": "/s", "type": "t", "data": {"b": 1, "a": [1, 2]}}));
        let b: Map<String, Value> =
            serde_json::from_str(r#"{"data": {"a": [1, 2], "b": 1}, "type": "t", "source": "/s"}"#)
                .expect("json");
        assert_eq!(content_id(&a), content_id(&b));
    }

    #[test]
    fn different_content_gives_a_different_id() {
        let a = map(json!({"source": "/s", "type": "t", "time": "2026-01-01T00:00:00Z"}));
        let b = map(json!({"source": "/s", "type": "t", "time": "2026-01-01T00:00:01Z"}));
        assert_ne!(content_id(&a), content_id(&b));
    }
}
