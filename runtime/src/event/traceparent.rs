//! W3C Trace Context `traceparent` (version-format `00`, forward-compatible versions allowed).

/// Checks a `traceparent` value; returns why it is invalid.
pub(crate) fn check(value: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = value.split('-').collect();
    if parts.len() < 4 {
        return Err("must be VERSION-TRACEID-PARENTID-FLAGS (W3C Trace Context)");
    }
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let (version, trace_id, parent_id, flags) = (parts[0], parts[1], parts[2], parts[3]);
    if !hex(version, 2) || version == "ff" {
        return Err("version must be two lowercase hex digits other than ff");
    }
    if version == "00" && parts.len() != 4 {
        return Err("version 00 has exactly four fields");
    }
    if !hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return Err("trace-id must be 32 lowercase hex digits, not all zero");
    }
    if !hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
        return Err("parent-id must be 16 lowercase hex digits, not all zero");
    }
    if !hex(flags, 2) {
        return Err("trace-flags must be two lowercase hex digits");
    }
    Ok(())
}

/// The trace-id field of a valid `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    check(traceparent).ok()?;
    traceparent.split('-').nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_w3c_example_and_extracts_its_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(check(tp), Ok(()));
        assert_eq!(trace_id_of(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(check(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
