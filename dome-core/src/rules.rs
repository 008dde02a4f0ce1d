//! What a caller may send, beyond the envelope's own bounds: names, URIs
//! in their plain form, arguments, request ids, and string fields the audit
//! record stores. Every one is checked before a call is judged.

use serde_json::Value;

use crate::catalog::Kind;

/// Why a resource URI is refused, if it is: a path spelled other than
/// its plain form (an empty, `.` or `..` segment, or a percent-encoded
/// character that needs no encoding, `/` or `\\`) could be read by the
/// upstream as another resource than the one policy judged
/// (`file:///pub/../etc/secret` passed a deny rule on `file:///etc/*`).
pub fn uri_problem(kind: Kind, uri: &str) -> Option<String> {
    if !matches!(kind, Kind::Resources | Kind::Templates) {
        return None;
    }
    let path = match uri.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => uri.split_once(':').map_or(uri, |(_, p)| p),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments = path.split('/').count();
    // A trailing `/` is a name of its own; an empty segment anywhere else
    // is a `//`.
    let bad_segment = path
        .split('/')
        .enumerate()
        .any(|(i, seg)| matches!(seg, "." | "..") || (seg.is_empty() && i + 1 < segments));
    let bytes = path.as_bytes();
    let bad_escape = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && std::str::from_utf8(&w[1..])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~/\\%".contains(&b))
    });
    (bad_segment || bad_escape || path.contains('\\')).then(|| {
        "the URI's path is not in its plain form (an empty, `.` or `..` segment, a backslash, or an escape that needs none)".to_string()
    })
}

/// Why arguments are refused.
pub const ARGUMENTS_RULE: &str = "params.arguments is an object";

/// Whether `text` (JSON) is arguments MCP allows: an object, or null.
pub fn arguments_ok(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') || t == "null"
}

/// The longest name (tool, prompt, resource URI) a call may give: every
/// record stores it.
pub const MAX_NAME_BYTES: usize = 2048;

/// Whether `text`, a JSON string as text, decodes to more than `max` bytes
/// (its text is never shorter than what it spells, so most are decided
/// without decoding).
pub fn json_str_over(text: &str, max: usize) -> bool {
    text.len() > max
        && serde_json::from_str::<String>(text).map_or(text.len() > max, |s| s.len() > max)
}

/// What MCP allows as a request's id.
pub const ID_RULE: &str = "a request id is a string or an integer (never null)";

/// Whether a request's id is one MCP allows: a string or an integer, or
/// none at all (a notification). Not null, unlike plain JSON-RPC.
pub fn request_id_ok(id: Option<&Value>) -> bool {
    match id {
        None | Some(Value::String(_)) => true,
        Some(Value::Number(n)) => n.is_i64() || n.is_u64(),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_are_taken_only_in_their_plain_form() {
        for ok in [
            "file:///etc/secret",
            "notes://one/readme",
            "demo://counter",
            "users://one/42",
            "file:///dir/",
            "file:///a%20b",
            "urn:x:y",
            "file:///q?x=..//",
        ] {
            assert_eq!(uri_problem(Kind::Resources, ok), None, "{ok}");
        }
        for bad in [
            "file:////etc/secret",
            "file:///./etc/secret",
            "file:///pub/../etc/secret",
            "file:///%65tc/secret",
            "file:///etc%2fsecret",
            "file:///etc%5Csecret",
            "file:///%252e%252e/etc",
            "file:///pub\\..\\etc",
            "file:///a//b",
        ] {
            assert!(uri_problem(Kind::Resources, bad).is_some(), "{bad}");
        }
        assert_eq!(uri_problem(Kind::Prompts, "a/../b"), None);
    }
}
