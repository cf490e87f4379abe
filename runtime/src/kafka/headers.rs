//! Reading record headers.

use rdkafka::message::Headers;

/// The record header naming the authenticated sender (`<issuer>/<principal>`), set by the
/// ingest when `auth.mode` is `jwt` and stored in the row's `principal` column.
pub const PRINCIPAL: &str = "audit-principal";

/// The value of header `key` as text, when present and UTF-8.
pub fn text<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
