//! `[mcp]` of the config: the endpoint's path and its limits (bodies,
//! sessions, streams, buffered answers, JSON depth), with their defaults.

use super::*;

/// `[mcp]` in `dome.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The MCP endpoint's path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Largest request body accepted (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Tools per `tools/list` page.
    #[serde(default = "default_page")]
    pub page_size: usize,
    /// Origins allowed besides loopback ones (`Origin` header); others get 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// A session-era session no request has used for this long, with no
    /// stream open and no call in flight, is ended.
    #[serde(default = "default_session_idle")]
    pub session_idle_s: u64,
    /// Sessions one agent may hold (callers without credentials count as
    /// one agent); opening one more ends its least recently used.
    #[serde(default = "default_sessions_per_agent")]
    pub max_sessions_per_agent: usize,
    /// Long-lived streams one agent may hold open at once (session GET
    /// streams and `subscriptions/listen` streams; callers without
    /// credentials count as one agent); one more is refused with 429
    /// (-32004). A session has at most one GET stream: a new one replaces it.
    #[serde(default = "default_streams_per_agent")]
    pub max_streams_per_agent: usize,
    /// Bytes of upstream answers Dome may hold buffered at once, over all
    /// calls (each is also held to its upstream's `max_response_bytes`); an
    /// answer that would take more is dropped with its connection and the
    /// call refused.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_response_bytes: usize,
    /// A listing clients ask for (`*/list`, an unknown name) reuses one
    /// made less than this long ago.
    #[serde(default = "default_catalog_refresh_ms")]
    pub catalog_refresh_ms: u64,
    /// Longest intent a call may state (-32602 beyond): it is stored in
    /// every record of the call.
    #[serde(default = "default_max_intent")]
    pub max_intent_bytes: usize,
    /// Deepest nesting of objects and arrays a message may have (-32600
    /// beyond); every recursive walk of a message stays within it.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            path: default_path(),
            max_body_bytes: default_max_body(),
            page_size: default_page(),
            allowed_origins: Vec::new(),
            session_idle_s: default_session_idle(),
            max_sessions_per_agent: default_sessions_per_agent(),
            max_streams_per_agent: default_streams_per_agent(),
            max_buffered_response_bytes: default_max_buffered(),
            max_json_depth: default_max_json_depth(),
            max_intent_bytes: default_max_intent(),
            catalog_refresh_ms: default_catalog_refresh_ms(),
        }
    }
}

/// The most `max_json_depth` may be: recursive walks of a message (its
/// re-encoding, policy's, redaction's) run on worker threads' stacks.
pub const MAX_JSON_DEPTH_LIMIT: usize = 1024;

fn default_path() -> String {
    "/mcp".into()
}

fn default_max_body() -> usize {
    1 << 20
}

fn default_page() -> usize {
    100
}

fn default_session_idle() -> u64 {
    3600
}

fn default_sessions_per_agent() -> usize {
    1000
}

fn default_streams_per_agent() -> usize {
    100
}

fn default_max_buffered() -> usize {
    256 << 20
}

fn default_catalog_refresh_ms() -> u64 {
    1000
}

fn default_max_intent() -> usize {
    1024
}

fn default_max_json_depth() -> usize {
    envelope::DEFAULT_MAX_DEPTH
}
