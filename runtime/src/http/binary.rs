//! Binary content mode of the CloudEvents HTTP binding: attributes in `ce-*` headers, the
//! body is `data`.

use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

use super::envelope::{ApiError, parse_json};
use crate::event::FieldError;

/// Binary content mode: attributes in `ce-*` headers, the body is `data`.
pub fn binary_mode_event(headers: &HeaderMap, media: &str, body: &[u8]) -> Result<Value, ApiError> {
    if !(media == "application/json" || media.ends_with("+json")) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "binary mode needs a JSON body (Content-Type application/json), got {}",
            if media.is_empty() {
                "none".to_string()
            } else {
                format!("`{media}`")
            }
        )));
    }
    let mut event = Map::new();
    let mut errors = Vec::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        match value.to_str() {
            Ok(v) => {
                event.insert(attr.to_string(), Value::String(percent_decode(v)));
            }
            Err(_) => errors.push(FieldError::new(attr, "header value is not visible ASCII")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        event.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    event.insert("data".into(), parse_json(body)?);
    Ok(Value::Object(event))
}

/// Decodes `%XX` escapes (CloudEvents HTTP binding); anything malformed stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_follows_the_http_binding() {
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a%20b"), "a b");
    }
}
