//! MCP protocol constants shared by the gateway, the upstream client and the
//! demo upstream: versions of both eras, JSON-RPC error codes, header names.

use http::header::HeaderName;

/// Versions reached through the `initialize` handshake (the session era),
/// oldest first.
pub const SESSION_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
/// Versions of the stateless era (per-request `_meta`, `server/discover`).
pub const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];
/// The session-era version Dome offers an upstream, and answers a client
/// asking for one it does not speak.
pub const LATEST_SESSION: &str = "2025-11-25";
/// The stateless-era version Dome speaks to an upstream.
pub const LATEST_STATELESS: &str = "2026-07-28";

/// Dome's own `_meta` namespace (`dome/intent`): read by Dome, stripped
/// from what goes upstream.
pub const META_DOME_PREFIX: &str = "dome/";
/// `params._meta` key of the caller's stated intent (carried in the assertion).
pub const INTENT_META: &str = "dome/intent";
// `_meta` keys of the stateless era.
/// The request's protocol version (the stateless era has no handshake).
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// What the caller can answer (elicitation, sampling, …), on every
/// request.
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// Who the caller is (name and version).
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// Who the server is, on a result.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// A stateless caller's opt-in to log messages: the lowest level it wants
/// (absent: none).
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// The era envelope: Dome writes its own for each side.
pub const META_ERA_KEYS: [&str; 3] = [
    META_PROTOCOL_VERSION,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
];
/// Log levels, lowest first (RFC 5424 as MCP names them).
pub const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// A log level's rank (its index in `LOG_LEVELS`), `None` for no level.
pub fn log_level_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|x| *x == level)
}
/// On every message of a `subscriptions/listen` stream: the listen request's id.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Members of a result that only the stateless era defines (the last two
/// only on an `input_required` one, which a session-era caller is never
/// handed: a stray one must not pass for a result).
pub const STATELESS_RESULT_FIELDS: [&str; 5] = [
    "resultType",
    "ttlMs",
    "cacheScope",
    "inputRequests",
    "requestState",
];
/// `_meta` keys of a result that only the stateless era defines.
pub const STATELESS_RESULT_META: [&str; 6] = [
    META_SERVER_INFO,
    META_PROTOCOL_VERSION,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_SUBSCRIPTION_ID,
];

/// Fits a stateless upstream's JSON-RPC response to a session-era
/// (2025-11-25) caller: what only the stateless era defines goes, since
/// that era's schema lacks it. (`_meta` keys of 2025-11-25 itself, such as
/// `io.modelcontextprotocol/related-task`, stay.) Whether anything changed.
pub fn fit_to_session_era(response: &mut serde_json::Value) -> bool {
    let Some(result) = response.get_mut("result").and_then(|r| r.as_object_mut()) else {
        return false;
    };
    let mut changed = false;
    for f in STATELESS_RESULT_FIELDS {
        changed |= result.remove(f).is_some();
    }
    if let Some(meta) = result.get_mut("_meta").and_then(|m| m.as_object_mut()) {
        for k in STATELESS_RESULT_META {
            changed |= meta.remove(k).is_some();
        }
        if meta.is_empty() {
            result.remove("_meta");
        }
    }
    changed
}

/// Dome as an MCP implementation (`serverInfo` downstream, `clientInfo`
/// upstream).
pub fn implementation() -> serde_json::Value {
    serde_json::json!({"name": "dome", "version": env!("CARGO_PKG_VERSION")})
}

// HTTP headers, as names made at compile time: a lookup by one skips
// parsing the name (requests are looked up several times each).
/// Session era: the session `initialize` opened, on every later request.
pub const H_SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
/// The request's protocol version (in the stateless era it must be the
/// one `_meta` states).
pub const H_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// Stateless era: the body's method, for routing without reading the
/// body; Dome refuses a request where the two differ.
pub const H_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// Stateless era: the tool or prompt name, or resource URI, the body
/// names (see [`name_key`]); checked against the body like `Mcp-Method`.
pub const H_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// W3C Trace Context: the call's audit record keeps its trace id.
pub const H_TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The HTTP status a stateless-era error answer carries: a client's
/// mistake is a 4xx, an unknown method 404, an audit trail that cannot
/// take the call 503; every other JSON-RPC error rides a 200.
pub fn stateless_status(code: i64) -> http::StatusCode {
    use http::StatusCode;
    match code {
        code::PARSE_ERROR
        | code::INVALID_REQUEST
        | code::INVALID_PARAMS
        | code::HEADER_MISMATCH
        | code::MISSING_CLIENT_CAPABILITY
        | code::UNSUPPORTED_VERSION => StatusCode::BAD_REQUEST,
        code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        code::AUDIT_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    }
}

/// JSON-RPC error codes.
pub mod code {
    /// JSON-RPC: the body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// JSON-RPC: JSON, but not a valid request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// JSON-RPC: no such method (or not one this peer takes).
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// JSON-RPC: the method's params are wrong.
    pub const INVALID_PARAMS: i64 = -32602;
    /// JSON-RPC: the server failed.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Stateless era: an HTTP routing header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// Stateless era: the request needs a capability the caller did not
    /// declare (`data.requiredCapabilities` names it).
    pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
    /// Stateless era: the requested protocol version is not served.
    pub const UNSUPPORTED_VERSION: i64 = -32022;
    /// Dome: an upstream could not be reached or failed (implementation-defined range).
    pub const UPSTREAM_UNAVAILABLE: i64 = -32001;
    /// Dome: the request's session is unknown or ended.
    pub const SESSION_NOT_FOUND: i64 = -32002;
    /// Dome: the request is not authenticated (HTTP 401/403).
    pub const UNAUTHORIZED: i64 = -32003;
    /// Dome: over a call budget, or an agent's share of an upstream (HTTP
    /// 200 in both eras, so clients show it); `data.retryAfterMs`.
    pub const RATE_LIMITED: i64 = -32004;
    /// Dome: policy denies the call (HTTP 200 in both eras, so clients
    /// show it); the message is the reason an agent may be shown.
    pub const POLICY_DENIED: i64 = -32005;
    /// Dome: the audit trail cannot record the call, so it is not run (or,
    /// when it already ran, not answered); HTTP 503.
    pub const AUDIT_UNAVAILABLE: i64 = -32006;
}

/// Methods a request usually names.
const METHODS: [&str; 17] = [
    "tools/call",
    "tools/list",
    "initialize",
    "ping",
    "server/discover",
    "notifications/initialized",
    "notifications/cancelled",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "subscriptions/listen",
    "logging/setLevel",
];

/// `s` as a static string when it is a method or protocol version Dome
/// knows: those are kept and sent on without a copy.
pub fn interned(s: &str) -> Option<&'static str> {
    METHODS
        .iter()
        .chain(&SESSION_VERSIONS)
        .chain(&STATELESS_VERSIONS)
        .find(|k| **k == s)
        .copied()
}

/// Whether `v` is a session-era version Dome negotiates.
pub fn is_session_version(v: &str) -> bool {
    SESSION_VERSIONS.contains(&v)
}

/// Whether `v` is a stateless-era version Dome serves.
pub fn is_stateless_version(v: &str) -> bool {
    STATELESS_VERSIONS.contains(&v)
}

/// Version negotiation of `initialize`: the client's version when Dome
/// speaks it, else the latest session-era version.
pub fn negotiate(requested: &str) -> &'static str {
    SESSION_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST_SESSION)
}

/// The methods whose name the stateless era mirrors in `Mcp-Name`, and the
/// params key holding it.
pub fn name_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// MCP's tool-name alphabet: `[A-Za-z0-9_.-]{1,128}`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_keeps_known_versions_and_falls_back_to_latest() {
        assert_eq!(negotiate("2025-06-18"), "2025-06-18");
        assert_eq!(negotiate("2024-01-01"), LATEST_SESSION);
        assert_eq!(negotiate("2026-07-28"), LATEST_SESSION);
    }

    #[test]
    fn known_methods_and_versions_are_interned() {
        for s in ["tools/call", "ping", "2025-03-26", "2026-07-28"] {
            assert_eq!(interned(s), Some(s));
        }
        assert_eq!(interned("tools/calls"), None);
        assert_eq!(interned("2099-01-01"), None);
    }

    #[test]
    fn tool_names() {
        assert!(valid_tool_name("demo.echo-1_x"));
        assert!(!valid_tool_name(""));
        assert!(!valid_tool_name("has space"));
        assert!(!valid_tool_name(&"a".repeat(129)));
    }
}
