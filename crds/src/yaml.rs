//! YAML for the whole workspace, through one maintained crate (`serde-saphyr`; `serde_yaml` is
//! archived). Everything that reads or writes YAML — the runtime's config loader, the CRD and
//! manifest printers, the tests — goes through these three functions, so the crate behind them
//! is one change.
//!
//! Reading is bounded: serde-saphyr's default budget refuses alias bombs ("billion laughs") and
//! over-deep nesting instead of expanding them, and duplicate mapping keys are an error. Untyped
//! scalars read as YAML 1.2 core and as serde_yaml read them, so a config file means what it
//! meant: `yes`/`on` stay strings, and `0755` or `1_000` stay strings too.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a text is not the YAML that was expected, or a value cannot be written as YAML. (Boxed:
/// serde-saphyr's errors carry the offending snippet and are large.) A read error is worded for
/// whoever edits the file (serde-saphyr's user formatter), not with advice about its `Options`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", .0.render_with_formatter(&serde_saphyr::UserMessageFormatter))]
    Read(Box<serde_saphyr::Error>),
    #[error("{0}")]
    Write(Box<serde_saphyr::SerializeError>),
}

impl From<serde_saphyr::Error> for Error {
    fn from(e: serde_saphyr::Error) -> Error {
        Error::Read(Box::new(e))
    }
}

impl From<serde_saphyr::SerializeError> for Error {
    fn from(e: serde_saphyr::SerializeError) -> Error {
        Error::Write(Box::new(e))
    }
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    }
}

/// One YAML document. An empty text is the document `null`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    Ok(serde_saphyr::from_str_with_options(text, options())?)
}

/// Every document of a multi-document stream (`---` separated), empty documents skipped.
pub fn from_str_multiple<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, Error> {
    Ok(serde_saphyr::from_str_multiple_with_options::<T, Vec<T>>(
        text,
        options(),
    )?)
}

/// A value as one YAML document. Strings stay on one line (quoted where needed, newlines
/// escaped) rather than folded, so a CEL rule or a message reads as it was written.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, Error> {
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    Ok(serde_saphyr::to_string_with_options(value, options)?)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn reads_scalars_as_yaml_1_2_does() {
        let v: Value = from_str(
            "port: 8080\nratio: 0.5\non: yes\nflag: true\nnothing: ~\nname: '8080'\nlist: [a, 1]\nmode: 0755\nbig: 1_000\n",
        )
        .expect("yaml");
        assert_eq!(
            v,
            json!({"port": 8080, "ratio": 0.5, "on": "yes", "flag": true, "nothing": null,
                   "name": "8080", "list": ["a", 1], "mode": "0755", "big": "1_000"})
        );
    }

    #[test]
    fn an_empty_text_is_null() {
        assert_eq!(from_str::<Value>("").expect("yaml"), Value::Null);
    }

    #[test]
    fn refuses_duplicate_keys_and_alias_bombs() {
        let e = from_str::<Value>("port: 1\nport: 2\n").expect_err("duplicate key");
        let message = e.to_string();
        assert!(
            message.contains("duplicate") && message.contains("port"),
            "{message}"
        );
        assert!(message.contains("line 2"), "{message}");
        assert!(
            !message.contains("Options"),
            "no advice meant for programmers: {message}"
        );
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, prev) in ('b'..='j').zip('a'..='i') {
            bomb.push_str(&format!("{i}: &{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(from_str::<Value>(&bomb).is_err(), "10^10 expanded scalars");
    }

    #[test]
    fn writes_what_it_reads() {
        let v = json!({"a": [1, "two", {"b": null}], "c": "multi\nline", "d": "yes"});
        let text = to_string(&v).expect("yaml");
        assert_eq!(from_str::<Value>(&text).expect("yaml"), v, "{text}");
        let docs: Vec<Value> = from_str_multiple("a: 1\n---\n---\nb: 2\n").expect("yaml");
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": 2})]);
    }
}
