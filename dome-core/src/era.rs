//! Which era a message speaks, and the stateless era's checks of it:
//! MCP's session era (2025-03-26 to 2025-11-25: `initialize`,
//! `Mcp-Session-Id`) and its stateless era (2026-07-28: the version in
//! `_meta` on every request, routing headers that must agree with the
//! body). No I/O: headers and the parsed envelope in, a verdict out.

use http::HeaderMap;
use serde_json::{Value, json};

use crate::{
    envelope::{Envelope, Meta},
    protocol::{self, code},
};

/// Whether a POSTed message speaks the stateless era: its `_meta` carries
/// a protocol version, it is `server/discover`, or its
/// `MCP-Protocol-Version` header names a stateless version. Everything
/// else is the session era's.
pub fn is_stateless(e: &Envelope, method: &str, header_version: Option<&str>) -> bool {
    matches!(
        &e.meta,
        Meta::Object {
            version: Some(_),
            ..
        }
    ) || method == "server/discover"
        || header_version.is_some_and(protocol::is_stateless_version)
}

/// The stateless era's validation ladder: envelope keys, routing headers,
/// then the version. First failure wins.
pub fn stateless_ladder(
    e: &Envelope,
    method: &str,
    headers: &HeaderMap,
) -> Result<(), (i64, String, Option<Value>)> {
    let missing = |key: &str| {
        (
            code::INVALID_PARAMS,
            format!("params._meta is missing {key}"),
            None,
        )
    };
    let (version, has_capabilities) = match &e.meta {
        Meta::Object {
            version,
            has_capabilities,
        } => (version.clone(), *has_capabilities),
        _ => {
            return Err((
                code::INVALID_PARAMS,
                format!(
                    "params._meta must be an object carrying {} and {}",
                    protocol::META_PROTOCOL_VERSION,
                    protocol::META_CLIENT_CAPABILITIES
                ),
                None,
            ));
        }
    };
    let Some(version) = version else {
        return Err(missing(protocol::META_PROTOCOL_VERSION));
    };
    if !has_capabilities {
        return Err(missing(protocol::META_CLIENT_CAPABILITIES));
    }
    let header = |n| headers.get(n).and_then(|v| v.to_str().ok());
    if header(protocol::H_VERSION).is_none_or(|h| Some(h) != version.as_deref()) {
        return Err((
            code::HEADER_MISMATCH,
            "MCP-Protocol-Version header does not match _meta's protocol version".into(),
            None,
        ));
    }
    if header(protocol::H_METHOD) != Some(method) {
        return Err((
            code::HEADER_MISMATCH,
            "Mcp-Method header does not match the body's method".into(),
            None,
        ));
    }
    if let Some(key) = protocol::name_key(method)
        && let Some(body_name) = e.name.as_deref()
        && header(protocol::H_NAME) != Some(body_name)
    {
        return Err((
            code::HEADER_MISMATCH,
            format!("Mcp-Name header does not match the body's {key}"),
            None,
        ));
    }
    let Some(v) = version else {
        return Err((
            code::INVALID_PARAMS,
            "the protocol version must be a string".into(),
            None,
        ));
    };
    if !protocol::is_stateless_version(&v) {
        return Err((
            code::UNSUPPORTED_VERSION,
            "Unsupported protocol version".into(),
            Some(json!({"supported": protocol::STATELESS_VERSIONS, "requested": v})),
        ));
    }
    Ok(())
}

/// What a request's `Accept` headers take: (JSON, an event stream). MCP
/// asks a POST to take both.
pub fn accepts(headers: &HeaderMap) -> (bool, bool) {
    // Media ranges, parameters dropped, compared without allocating (this
    // runs on every POST).
    let (mut json, mut sse) = (false, false);
    let ranges = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim());
    for t in ranges {
        let is = |m: &str| t.eq_ignore_ascii_case(m);
        if is("*/*") {
            return (true, true);
        }
        json |= is("application/json") || is("application/*");
        sse |= is("text/event-stream") || is("text/*");
    }
    (json, sse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{self, Parsed};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn env(v: Value) -> Envelope {
        match envelope::parse(v.to_string().as_bytes(), envelope::DEFAULT_MAX_DEPTH).unwrap() {
            Parsed::One(e) => *e,
            Parsed::Batch => panic!("batch"),
        }
    }

    fn call(version: &str) -> Envelope {
        env(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo",
            "_meta": {protocol::META_PROTOCOL_VERSION: version, protocol::META_CLIENT_CAPABILITIES: {}}}}),
        )
    }

    fn routing(version: &str, method: &str, name: &str) -> HeaderMap {
        headers(&[
            ("mcp-protocol-version", version),
            ("mcp-method", method),
            ("mcp-name", name),
        ])
    }

    /// The ladder's error code for a tools/call of `echo` at `body_version`.
    fn ladder_code(body_version: &str, h: &HeaderMap) -> Option<i64> {
        stateless_ladder(&call(body_version), "tools/call", h)
            .err()
            .map(|e| e.0)
    }

    #[test]
    fn ladder_checks_headers_then_version() {
        let ok = routing("2026-07-28", "tools/call", "echo");
        assert_eq!(ladder_code("2026-07-28", &ok), None);
        let wrong_name = routing("2026-07-28", "tools/call", "other");
        assert_eq!(
            ladder_code("2026-07-28", &wrong_name),
            Some(code::HEADER_MISMATCH)
        );
        let wrong_method = routing("2026-07-28", "tools/list", "echo");
        assert_eq!(
            ladder_code("2026-07-28", &wrong_method),
            Some(code::HEADER_MISMATCH)
        );
        let future = routing("2099-01-01", "tools/call", "echo");
        let e = stateless_ladder(&call("2099-01-01"), "tools/call", &future).unwrap_err();
        assert_eq!(e.0, code::UNSUPPORTED_VERSION);
        assert_eq!(e.2.unwrap()["supported"], json!(["2026-07-28"]));
        let no_meta = env(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}));
        assert_eq!(
            stateless_ladder(&no_meta, "tools/list", &ok).unwrap_err().0,
            code::INVALID_PARAMS
        );
    }

    #[test]
    fn accept_rules() {
        assert_eq!(
            accepts(&headers(&[(
                "accept",
                "application/json, text/event-stream"
            )])),
            (true, true)
        );
        assert_eq!(accepts(&headers(&[("accept", "*/*")])), (true, true));
        assert_eq!(
            accepts(&headers(&[("accept", "application/json")])),
            (true, false)
        );
        // Parameters, case, subtype wildcards and repeated headers.
        assert_eq!(
            accepts(&headers(&[
                ("accept", "Application/JSON;q=0.9"),
                ("accept", " text/*; q=0.1")
            ])),
            (true, true)
        );
        assert_eq!(
            accepts(&headers(&[("accept", "text/html, application/*")])),
            (true, false)
        );
        assert_eq!(accepts(&headers(&[])), (false, false));
    }
}
