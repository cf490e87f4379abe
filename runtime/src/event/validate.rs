//! The validation rules of SPEC §2.2, each reported against its field path: the full path, on a
//! JSON tree, and the only place an error message comes from.
//!
//! The other path is the typed reader ([`super::typed`]), which accepts the common case without
//! a tree by checking the same rules in its own code and gives up on anything else. A rule
//! changed here must change there too: its property tests compare the two on events edited at
//! every field this module validates (a test fails when a validated field is not edited).

use std::net::IpAddr;

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use serde_json::{Map, Value};

use super::model::{FieldError, ValidEvent};
use super::normalize::{self, MAX_IP_BYTES, Normalization, Warning};
use super::{id, traceparent};

/// Context attributes defined by CloudEvents 1.0 (and the tracing extension) that the rules
/// below handle by name; any other top-level key is an extension attribute.
pub(crate) const KNOWN: [&str; 11] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "traceparent",
];
pub(crate) const ACTOR_TYPES: [&str; 4] = ["user", "system", "service", "anonymous"];
pub(crate) const OUTCOMES: [&str; 3] = ["success", "failure", "denied"];
/// The longest value, in bytes, of a string that becomes an indexed column (id, source, type,
/// actor id, resource type and id). A B-tree index entry holds at most about 2.7 kB, and a row
/// PostgreSQL cannot index would be refused by the database long after its 202.
pub const MAX_INDEXED_BYTES: usize = 1024;
/// The indexed strings, by field path.
const INDEXED: [&str; 6] = [
    "id",
    "source",
    "type",
    "data.actor.id",
    "data.resource.type",
    "data.resource.id",
];

/// The limits an event is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest serialized event; `usize::MAX` = no limit (and no serialization).
    pub max_event_bytes: usize,
    pub max_future_skew: std::time::Duration,
    /// 0 = no lower bound on `time`.
    pub retention_months: u32,
}

impl Limits {
    /// The earliest accepted `time`: the first instant of the oldest retained month.
    pub fn window_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.retention_months == 0 {
            return None;
        }
        let month_start = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()?;
        month_start.checked_sub_months(Months::new(self.retention_months))
    }
}

/// What went wrong with an event as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// One entry per offending field (AUD-002).
    Fields(Vec<FieldError>),
    /// The serialized event exceeds `max_event_bytes` (AUD-003).
    TooLarge { size: usize, limit: usize },
}

/// Validates one event, fills a missing `id`, and returns it ready to publish.
pub fn validate(value: Value, limits: &Limits, now: DateTime<Utc>) -> Result<ValidEvent, Invalid> {
    let Value::Object(mut event) = value else {
        return Err(Invalid::Fields(vec![FieldError::new(
            "",
            format!("an event must be a JSON object, not {}", kind(&value)),
        )]));
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    normalize::drop_nulls(&mut event, &mut warnings);

    match event.get("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        Some(Value::String(v)) => errors.push(FieldError::new(
            "specversion",
            format!("must be \"1.0\", got \"{v}\""),
        )),
        other => errors.push(missing_or_type("specversion", other, "the string \"1.0\"")),
    }
    if event.contains_key("id") {
        non_empty_string(&event, "id", "id", &mut errors);
    }
    non_empty_string(&event, "source", "source", &mut errors);
    non_empty_string(&event, "type", "type", &mut errors);
    let occurred_at = match event.get("time") {
        // The original took the receipt time; the row records that it did.
        None => {
            let received = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            event.insert("time".into(), Value::String(received));
            warnings.push(Warning::new(
                "time",
                Normalization::TimeDefaulted,
                "no time: the receipt time was used",
            ));
            Some(now)
        }
        time => check_time(time, limits, now, &mut errors),
    };
    if event.contains_key("subject") {
        non_empty_string(&event, "subject", "subject", &mut errors);
    }
    match event.get("datacontenttype") {
        None => {}
        Some(Value::String(ct)) if is_json_media_type(ct) => {}
        Some(Value::String(ct)) => errors.push(FieldError::new(
            "datacontenttype",
            format!("must be a JSON media type such as application/json, got \"{ct}\""),
        )),
        Some(other) => errors.push(FieldError::new(
            "datacontenttype",
            format!("must be a string, not {}", kind(other)),
        )),
    }
    if event.contains_key("dataschema") {
        non_empty_string(&event, "dataschema", "dataschema", &mut errors);
    }
    match event.get("traceparent") {
        None => {}
        Some(Value::String(tp)) => {
            if let Err(why) = traceparent::check(tp) {
                errors.push(FieldError::new("traceparent", why));
            }
        }
        Some(other) => errors.push(FieldError::new(
            "traceparent",
            format!("must be a string, not {}", kind(other)),
        )),
    }
    if event.contains_key("data_base64") {
        errors.push(FieldError::new(
            "data_base64",
            "binary data is not accepted; send `data` as a JSON object",
        ));
    }
    for (name, v) in &event {
        if KNOWN.contains(&name.as_str()) {
            continue;
        }
        if !is_extension_name(name) {
            errors.push(FieldError::new(
                name.clone(),
                "extension attribute names must be lowercase letters and digits only",
            ));
        } else if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            errors.push(FieldError::new(
                name.clone(),
                format!(
                    "extension attribute values must be a string, number or boolean, not {}",
                    kind(v)
                ),
            ));
        }
    }
    match event.get_mut("data") {
        Some(Value::Object(data)) => check_data(data, &mut errors, &mut warnings),
        other => errors.push(missing_or_type("data", other.map(|v| &*v), "an object")),
    }
    check_indexed(&event, &mut errors);
    if event.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        report_nul(&event, "", &mut errors);
    }

    if !errors.is_empty() {
        return Err(Invalid::Fields(errors));
    }
    if !event.contains_key("id") {
        let generated = id::content_id(&event);
        event.insert("id".into(), Value::String(generated));
    }
    let occurred_at = occurred_at.unwrap_or(now);
    let valid = ValidEvent {
        attributes: event,
        occurred_at,
        warnings,
        json: std::sync::OnceLock::new(),
    };
    // No limit (usize::MAX, the sink's re-validation): nothing to measure, nothing serialized.
    if limits.max_event_bytes < usize::MAX {
        let size = valid.json().len();
        if size > limits.max_event_bytes {
            return Err(Invalid::TooLarge {
                size,
                limit: limits.max_event_bytes,
            });
        }
    }
    Ok(valid)
}

fn check_data(
    data: &mut Map<String, Value>,
    errors: &mut Vec<FieldError>,
    warnings: &mut Vec<Warning>,
) {
    match data.get_mut("actor") {
        Some(Value::Object(actor)) => {
            match actor.get("type") {
                // The original defaults a missing actor type to `user`; store it explicitly.
                None => {
                    actor.insert("type".into(), Value::String("user".into()));
                }
                Some(Value::String(t)) if ACTOR_TYPES.contains(&t.as_str()) => {}
                Some(other) => errors.push(one_of("data.actor.type", other, &ACTOR_TYPES)),
            }
            match actor.get("id") {
                Some(Value::String(id)) if id.trim().is_empty() => warnings.push(Warning::new(
                    "data.actor.id",
                    Normalization::ActorIdEmpty,
                    "empty: stored as the empty string",
                )),
                Some(Value::String(_)) => {}
                other => errors.push(missing_or_type("data.actor.id", other, "a string")),
            }
            for key in ["name", "session_id"] {
                if let Some(v) = actor.get(key)
                    && !v.is_string()
                {
                    errors.push(FieldError::new(
                        format!("data.actor.{key}"),
                        format!("must be a string, not {}", kind(v)),
                    ));
                }
            }
            match actor.get_mut("ip") {
                None => {}
                Some(Value::String(ip)) if ip.parse::<IpAddr>().is_ok() => {}
                // Kept as sent: a forwarded-for hop is whatever the proxy wrote.
                Some(Value::String(ip)) => {
                    if ip.len() > MAX_IP_BYTES {
                        let cut = normalize::char_prefix(ip, MAX_IP_BYTES).len();
                        ip.truncate(cut);
                        warnings.push(Warning::new(
                            "data.actor.ip",
                            Normalization::ActorIpTruncated,
                            format!("longer than {MAX_IP_BYTES} bytes: cut there"),
                        ));
                    }
                    warnings.push(Warning::new(
                        "data.actor.ip",
                        Normalization::ActorIpNotAnAddress,
                        "not an IPv4 or IPv6 address: kept as sent",
                    ));
                }
                Some(other) => errors.push(FieldError::new(
                    "data.actor.ip",
                    format!("must be a string, not {}", kind(other)),
                )),
            }
            match actor.get("roles") {
                None => {}
                // One error for the first offender and a count: a hostile array of a million
                // numbers costs one message, not a million.
                Some(Value::Array(roles)) => {
                    let mut bad = roles.iter().enumerate().filter(|(_, r)| !r.is_string());
                    if let Some((i, r)) = bad.next() {
                        let more = bad.count();
                        let also = if more > 0 {
                            format!(" (and {more} more roles that are not strings)")
                        } else {
                            String::new()
                        };
                        errors.push(FieldError::new(
                            format!("data.actor.roles[{i}]"),
                            format!("must be a string, not {}{also}", kind(r)),
                        ));
                    }
                }
                Some(other) => errors.push(FieldError::new(
                    "data.actor.roles",
                    format!("must be an array of strings, not {}", kind(other)),
                )),
            }
        }
        other => errors.push(missing_or_type(
            "data.actor",
            other.map(|v| &*v),
            "an object",
        )),
    }
    non_empty_string(data, "action", "data.action", errors);
    match data.get("outcome") {
        Some(Value::String(o)) if OUTCOMES.contains(&o.as_str()) => {}
        None => errors.push(FieldError::new("data.outcome", "is required")),
        Some(other) => errors.push(one_of("data.outcome", other, &OUTCOMES)),
    }
    match data.get("resource") {
        None => {}
        Some(Value::Object(resource)) => {
            non_empty_string(resource, "type", "data.resource.type", errors);
            if let Some(v) = resource.get("id")
                && !v.is_string()
            {
                errors.push(FieldError::new(
                    "data.resource.id",
                    format!("must be a string, not {}", kind(v)),
                ));
            }
        }
        Some(other) => errors.push(FieldError::new(
            "data.resource",
            format!("must be an object, not {}", kind(other)),
        )),
    }
    if let Some(v) = data.get("reason")
        && !v.is_string()
    {
        errors.push(FieldError::new(
            "data.reason",
            format!("must be a string, not {}", kind(v)),
        ));
    }
}

/// PostgreSQL indexes these columns; a value too long for an index entry can never be stored.
fn check_indexed(event: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    for path in INDEXED {
        let mut keys = path.split('.');
        let first = keys.next().and_then(|k| event.get(k));
        let value = keys.fold(first, |v, k| v.and_then(|v| v.get(k)));
        if let Some(Value::String(s)) = value
            && s.len() > MAX_INDEXED_BYTES
        {
            errors.push(FieldError::new(
                path,
                format!(
                    "must be at most {MAX_INDEXED_BYTES} bytes (it is an indexed column), got {}",
                    s.len()
                ),
            ));
        }
    }
}

/// Whether a U+0000 hides anywhere in `value` (a walk without allocation: the common case).
pub(crate) fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Object(inner) => inner.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Array(items) => items.iter().any(has_nul),
        _ => false,
    }
}

/// PostgreSQL text and jsonb cannot hold U+0000, anywhere: not in a value, not in a key. One
/// error per place it occurs.
fn report_nul(map: &Map<String, Value>, prefix: &str, errors: &mut Vec<FieldError>) {
    for (key, value) in map {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if key.contains('\0') {
            errors.push(FieldError::new(
                path.clone(),
                "the key contains U+0000 (NUL), which PostgreSQL cannot store",
            ));
        }
        check_value_no_nul(value, path, errors);
    }
}

fn check_value_no_nul(value: &Value, path: String, errors: &mut Vec<FieldError>) {
    match value {
        Value::String(s) if s.contains('\0') => errors.push(FieldError::new(
            path,
            "contains U+0000 (NUL), which PostgreSQL cannot store",
        )),
        Value::Object(inner) => report_nul(inner, &path, errors),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_value_no_nul(item, format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

fn check_time(
    value: Option<&Value>,
    limits: &Limits,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    let text = match value {
        Some(Value::String(s)) => s,
        other => {
            errors.push(missing_or_type(
                "time",
                other,
                "an RFC 3339 timestamp with an offset, e.g. 2026-04-22T14:03:21Z",
            ));
            return None;
        }
    };
    match parse_time(text, limits, now) {
        Ok(at) => Some(at),
        Err(why) => {
            errors.push(FieldError::new("time", why));
            None
        }
    }
}

/// `time` as an instant inside the accepted window, or why not.
pub(crate) fn parse_time(
    text: &str,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    let Ok(parsed) = DateTime::parse_from_rfc3339(text) else {
        return Err(format!(
            "\"{text}\" is not an RFC 3339 timestamp with an offset (date, time and Z or ±hh:mm), e.g. 2026-04-22T14:03:21Z"
        ));
    };
    let at = parsed.with_timezone(&Utc);
    let skew =
        chrono::Duration::from_std(limits.max_future_skew).unwrap_or(chrono::Duration::hours(1));
    if at > now + skew {
        return Err(format!(
            "{text} lies more than {}s in the future",
            limits.max_future_skew.as_secs()
        ));
    }
    if let Some(start) = limits.window_start(now)
        && at < start
    {
        return Err(format!(
            "{text} is older than the retention window, which starts at {}",
            start.format("%Y-%m-%dT%H:%M:%SZ")
        ));
    }
    Ok(at)
}

/// Extension attribute names are lowercase letters and digits only.
pub(crate) fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

pub(crate) fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn non_empty_string(obj: &Map<String, Value>, key: &str, path: &str, errors: &mut Vec<FieldError>) {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(Value::String(_)) => errors.push(FieldError::new(path, "must not be empty")),
        other => errors.push(missing_or_type(path, other, "a non-empty string")),
    }
}

fn missing_or_type(path: &str, value: Option<&Value>, want: &str) -> FieldError {
    match value {
        None | Some(Value::Null) => FieldError::new(path, "is required"),
        Some(v) => FieldError::new(path, format!("must be {want}, not {}", kind(v))),
    }
}

fn one_of(path: &str, value: &Value, allowed: &[&str]) -> FieldError {
    let got = match value {
        Value::String(s) => format!("\"{s}\""),
        other => kind(other).to_string(),
    };
    FieldError::new(
        path,
        format!("must be one of {}, got {got}", allowed.join(", ")),
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 4, 22, 15, 0, 0)
            .single()
            .expect("time")
    }

    fn limits() -> Limits {
        Limits {
            max_event_bytes: 64 * 1024,
            max_future_skew: std::time::Duration::from_secs(3600),
            retention_months: 84,
        }
    }

    fn login() -> Value {
        json!({
            "specversion": "1.0", "id": "demo-1", "source": "/demo",
            "type": "org.openg2p.auth.login", "time": "2026-04-22T14:03:21Z",
            "data": {"actor": {"type": "user", "id": "u_1", "name": "demo"},
                     "action": "login", "outcome": "success"}
        })
    }

    fn with(mut base: Value, pointer: &str, v: Option<Value>) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        let obj = base
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("parent object");
        match v {
            Some(v) => obj.insert(key.to_string(), v),
            None => obj.remove(key),
        };
        base
    }

    /// The paths of the errors an event produces.
    fn refused(event: Value) -> Vec<String> {
        match validate(event, &limits(), now()) {
            Ok(_) => panic!("event was accepted"),
            Err(Invalid::Fields(errs)) => errs.into_iter().map(|e| e.path).collect(),
            Err(Invalid::TooLarge { .. }) => vec!["<too large>".into()],
        }
    }

    #[test]
    fn the_smoke_test_event_is_accepted_unchanged() {
        let ev = validate(login(), &limits(), now()).expect("valid");
        assert_eq!(ev.id(), "demo-1");
        assert_eq!(ev.partition_key(), "u_1");
        assert_eq!(Value::Object(ev.attributes.clone()), login());
    }

    #[test]
    fn subject_is_the_partition_key_when_present() {
        let ev = validate(
            with(login(), "/subject", Some(json!("b_1"))),
            &limits(),
            now(),
        )
        .expect("valid");
        assert_eq!(ev.partition_key(), "b_1");
    }

    #[test]
    fn specversion_must_be_1_0() {
        assert_eq!(
            refused(with(login(), "/specversion", Some(json!("0.3")))),
            ["specversion"]
        );
        assert_eq!(
            refused(with(login(), "/specversion", None)),
            ["specversion"]
        );
        assert_eq!(
            refused(with(login(), "/specversion", Some(json!(1.0)))),
            ["specversion"]
        );
    }

    #[test]
    fn source_and_type_must_be_non_empty_strings() {
        assert_eq!(
            refused(with(login(), "/source", Some(json!("")))),
            ["source"]
        );
        assert_eq!(refused(with(login(), "/source", None)), ["source"]);
        assert_eq!(refused(with(login(), "/type", Some(json!(7)))), ["type"]);
    }

    #[test]
    fn an_empty_id_is_refused() {
        assert_eq!(refused(with(login(), "/id", Some(json!("")))), ["id"]);
        assert_eq!(refused(with(login(), "/id", Some(json!(12)))), ["id"]);
    }

    #[test]
    fn a_missing_id_is_derived_from_the_content() {
        let a = validate(with(login(), "/id", None), &limits(), now()).expect("valid");
        let b = validate(with(login(), "/id", None), &limits(), now()).expect("valid");
        assert_eq!(a.id(), b.id());
        assert!(!a.id().is_empty());
        let c = validate(
            with(
                with(login(), "/id", None),
                "/data/action",
                Some(json!("logout")),
            ),
            &limits(),
            now(),
        )
        .expect("valid");
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn time_must_be_rfc3339_with_an_offset() {
        for bad in [
            json!("2026-04-22T14:03:21"),
            json!("2026-04-22"),
            json!(1776866601),
            json!("22/04/2026 14:03"),
        ] {
            assert_eq!(
                refused(with(login(), "/time", Some(bad.clone()))),
                ["time"],
                "{bad}"
            );
        }
        assert_eq!(refused(with(login(), "/time", Some(json!(true)))), ["time"]);
        validate(
            with(login(), "/time", Some(json!("2026-04-22T19:33:21+05:30"))),
            &limits(),
            now(),
        )
        .expect("offsets other than Z are fine");
    }

    #[test]
    fn time_must_lie_inside_the_retention_window_and_not_too_far_ahead() {
        assert_eq!(
            refused(with(login(), "/time", Some(json!("2026-04-22T16:00:01Z")))),
            ["time"]
        );
        validate(
            with(login(), "/time", Some(json!("2026-04-22T15:59:59Z"))),
            &limits(),
            now(),
        )
        .expect("inside the skew");
        assert_eq!(
            refused(with(login(), "/time", Some(json!("2019-03-31T23:59:59Z")))),
            ["time"]
        );
        validate(
            with(login(), "/time", Some(json!("2019-04-01T00:00:00Z"))),
            &limits(),
            now(),
        )
        .expect("first instant of the window");
    }

    #[test]
    fn datacontenttype_must_be_json() {
        assert_eq!(
            refused(with(login(), "/datacontenttype", Some(json!("text/plain")))),
            ["datacontenttype"]
        );
        validate(
            with(
                login(),
                "/datacontenttype",
                Some(json!("application/json; charset=utf-8")),
            ),
            &limits(),
            now(),
        )
        .expect("json with parameters");
    }

    #[test]
    fn traceparent_must_be_w3c() {
        assert_eq!(
            refused(with(login(), "/traceparent", Some(json!("abc")))),
            ["traceparent"]
        );
    }

    #[test]
    fn extension_names_must_be_lowercase_alphanumeric_and_are_kept() {
        assert_eq!(
            refused(with(login(), "/TenantId", Some(json!("x")))),
            ["TenantId"]
        );
        assert_eq!(
            refused(with(login(), "/tenant_id", Some(json!("x")))),
            ["tenant_id"]
        );
        assert_eq!(
            refused(with(login(), "/tenant", Some(json!({"a": 1})))),
            ["tenant"]
        );
        let ev = validate(
            with(login(), "/tenant", Some(json!("t1"))),
            &limits(),
            now(),
        )
        .expect("valid");
        assert_eq!(ev.attributes["tenant"], "t1");
    }

    #[test]
    fn data_is_required_and_binary_data_refused() {
        assert_eq!(refused(with(login(), "/data", None)), ["data"]);
        assert_eq!(
            refused(with(login(), "/data", Some(json!("text")))),
            ["data"]
        );
        assert_eq!(
            refused(with(login(), "/data_base64", Some(json!("aGk=")))),
            ["data_base64"]
        );
    }

    #[test]
    fn actor_rules() {
        assert_eq!(refused(with(login(), "/data/actor", None)), ["data.actor"]);
        assert_eq!(
            refused(with(login(), "/data/actor/id", None)),
            ["data.actor.id"]
        );
        assert_eq!(
            refused(with(login(), "/data/actor/id", Some(json!(5)))),
            ["data.actor.id"]
        );
        assert_eq!(
            refused(with(login(), "/data/actor/type", Some(json!("robot")))),
            ["data.actor.type"]
        );
        assert_eq!(
            refused(with(login(), "/data/actor/ip", Some(json!(["10.0.0.1"])))),
            ["data.actor.ip"]
        );
        assert_eq!(
            refused(with(
                login(),
                "/data/actor/roles",
                Some(json!(["admin", 3]))
            )),
            ["data.actor.roles[1]"]
        );
        let numbers: Vec<u32> = (0..10_000).collect();
        let Err(Invalid::Fields(errors)) = validate(
            with(login(), "/data/actor/roles", Some(json!(numbers))),
            &limits(),
            now(),
        ) else {
            panic!("roles of numbers are refused");
        };
        assert_eq!(errors.len(), 1, "one error for the whole array: {errors:?}");
        assert!(
            errors[0].to_string().contains("and 9999 more roles"),
            "{}",
            errors[0]
        );
        assert_eq!(
            refused(with(login(), "/data/actor/roles", Some(json!("admin")))),
            ["data.actor.roles"]
        );
        assert_eq!(
            refused(with(login(), "/data/actor/name", Some(json!(5)))),
            ["data.actor.name"]
        );
        assert_eq!(
            refused(with(login(), "/data/actor/session_id", Some(json!([])))),
            ["data.actor.session_id"]
        );
        let ev =
            validate(with(login(), "/data/actor/type", None), &limits(), now()).expect("valid");
        assert_eq!(
            ev.data()["actor"]["type"],
            "user",
            "actor.type defaults to user"
        );
        let ev = validate(
            with(login(), "/data/actor/department", Some(json!("x"))),
            &limits(),
            now(),
        )
        .expect("extra actor keys are kept");
        assert_eq!(ev.data()["actor"]["department"], "x");
    }

    /// The normalizations of an accepted event: (path, reason) pairs.
    fn normalized(event: Value) -> (ValidEvent, Vec<(String, Normalization)>) {
        let ev = validate(event, &limits(), now()).expect("accepted, normalized");
        let pairs = ev
            .warnings
            .iter()
            .map(|w| (w.path.clone(), w.reason))
            .collect();
        (ev, pairs)
    }

    #[test]
    fn what_the_original_accepted_is_accepted_and_named() {
        use Normalization::*;
        let (ev, w) = normalized(with(login(), "/data/actor/id", Some(json!(""))));
        assert_eq!(w, [("data.actor.id".to_string(), ActorIdEmpty)]);
        assert_eq!(ev.data()["actor"]["id"], "");
        for ip in [
            "unknown",
            "999.1.1.1",
            "10.0.0.1, 10.0.0.2",
            "::ffff:zz",
            "",
        ] {
            let (ev, w) = normalized(with(login(), "/data/actor/ip", Some(json!(ip))));
            assert_eq!(
                w,
                [("data.actor.ip".to_string(), ActorIpNotAnAddress)],
                "{ip}"
            );
            assert_eq!(ev.data()["actor"]["ip"], ip, "kept as sent");
        }
        let long = "é".repeat(MAX_IP_BYTES);
        let (ev, w) = normalized(with(login(), "/data/actor/ip", Some(json!(long))));
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0].1, ActorIpTruncated);
        let kept = ev.data()["actor"]["ip"].as_str().expect("ip");
        assert_eq!(kept.len(), MAX_IP_BYTES);
        assert!(long.starts_with(kept));
        let (ev, w) = normalized(with(login(), "/time", None));
        assert_eq!(w, [("time".to_string(), TimeDefaulted)]);
        assert_eq!(ev.occurred_at, now());
        assert_eq!(ev.attributes["time"], "2026-04-22T15:00:00.000000Z");
        let (ev, w) = normalized(with(login(), "/time", Some(Value::Null)));
        assert_eq!(
            w,
            [
                ("time".to_string(), NullDropped),
                ("time".to_string(), TimeDefaulted)
            ]
        );
        assert_eq!(ev.occurred_at, now());
        let (ev, w) = normalized(with(login(), "/data/actor/session_id", Some(Value::Null)));
        assert_eq!(w, [("data.actor.session_id".to_string(), NullDropped)]);
        assert!(ev.data()["actor"].get("session_id").is_none());
        let (_, w) = normalized(login());
        assert!(w.is_empty(), "a clean event is not normalized: {w:?}");
    }

    #[test]
    fn action_outcome_resource_and_reason_rules() {
        assert_eq!(
            refused(with(login(), "/data/action", Some(json!("")))),
            ["data.action"]
        );
        assert_eq!(
            refused(with(login(), "/data/outcome", Some(json!("ok")))),
            ["data.outcome"]
        );
        assert_eq!(
            refused(with(login(), "/data/outcome", None)),
            ["data.outcome"]
        );
        assert_eq!(
            refused(with(login(), "/data/resource", Some(json!({"id": "b_1"})))),
            ["data.resource.type"]
        );
        assert_eq!(
            refused(with(
                login(),
                "/data/resource",
                Some(json!({"type": "b", "id": 12}))
            )),
            ["data.resource.id"]
        );
        assert_eq!(
            refused(with(login(), "/data/resource", Some(json!([1])))),
            ["data.resource"]
        );
        assert_eq!(
            refused(with(login(), "/data/reason", Some(json!(false)))),
            ["data.reason"]
        );
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let bad = json!({"specversion": "2.0", "source": "", "type": "t", "time": "yesterday",
                         "data": {"actor": {"id": 7}, "action": "a", "outcome": "maybe"}});
        assert_eq!(
            refused(bad),
            [
                "specversion",
                "source",
                "time",
                "data.actor.id",
                "data.outcome"
            ]
        );
    }

    #[test]
    fn a_non_object_is_refused_at_the_root() {
        assert_eq!(refused(json!([1, 2])), [""]);
    }

    #[test]
    fn nul_is_refused_wherever_it_hides() {
        let mut event = with(
            login(),
            "/data/changes",
            Some(json!({"note": ["ok", "a\u{0}b"]})),
        );
        event = with(event, "/data/actor/name", Some(json!("x\u{0}")));
        event = with(event, "/data/context", Some(json!({"k\u{0}": 1})));
        assert_eq!(
            refused(event),
            vec![
                "data.actor.name".to_string(),
                "data.changes.note[1]".to_string(),
                "data.context.k\u{0}".to_string()
            ]
        );
        let nul_id = with(login(), "/id", Some(json!("demo\u{0}")));
        assert_eq!(refused(nul_id), vec!["id".to_string()]);
    }

    #[test]
    fn indexed_strings_must_fit_an_index_entry() {
        let long = "x".repeat(MAX_INDEXED_BYTES + 1);
        let just = "x".repeat(MAX_INDEXED_BYTES);
        for pointer in ["/id", "/source", "/type", "/data/actor/id"] {
            assert_eq!(
                refused(with(login(), pointer, Some(json!(long)))),
                vec![pointer.trim_start_matches('/').replace('/', ".")],
                "{pointer}"
            );
            assert!(
                validate(with(login(), pointer, Some(json!(just))), &limits(), now()).is_ok(),
                "{pointer} at the limit"
            );
        }
        let resource = json!({"type": long, "id": long});
        assert_eq!(
            refused(with(login(), "/data/resource", Some(resource))),
            vec![
                "data.resource.type".to_string(),
                "data.resource.id".to_string()
            ]
        );
        // Not indexed: a long subject or action is fine.
        let subject = with(login(), "/subject", Some(json!(long)));
        assert!(validate(subject, &limits(), now()).is_ok());
    }

    #[test]
    fn an_oversized_event_is_too_large() {
        let big = "x".repeat(70 * 1024);
        let err = validate(
            with(login(), "/data/note", Some(json!(big))),
            &limits(),
            now(),
        )
        .expect_err("too large");
        assert!(
            matches!(err, Invalid::TooLarge { limit: 65536, .. }),
            "{err:?}"
        );
    }
}
