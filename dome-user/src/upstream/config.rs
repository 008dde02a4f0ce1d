//! `[[upstream]]` of the config: where the upstream is, which era to speak,
//! its timeouts and limits, and how its names are prefixed.

use super::*;

pub use dome_core::catalog::PrefixMode;

/// `[[upstream]]` in `dome.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http://host:port/path` of the upstream's MCP endpoint.
    pub url: String,
    #[serde(default = "default_prefix")]
    pub prefix: PrefixMode,
    /// Whole-call timeout, milliseconds: the wait for a slot, the answer's
    /// head and, unless it streams, its whole body.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// The longest a streamed answer may go without an event, milliseconds
    /// (default: `timeout_ms`); then the call fails as timed out and its
    /// connection is dropped.
    #[serde(default)]
    pub stream_idle_timeout_ms: Option<u64>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Idle keep-alive connections kept per upstream.
    #[serde(default = "default_max_idle")]
    pub max_idle_connections: usize,
    /// Which era to speak to it: `auto` (stateless if it answers
    /// `server/discover`, else the session era), `session` or `stateless`.
    #[serde(default)]
    pub era: EraSetting,
    /// Requests waiting for this upstream's answer at once (until it is
    /// read; a streamed one until it begins); more wait for a slot, within
    /// `timeout_ms`.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// How many of those slots one agent's requests may hold at once
    /// (callers without credentials count as one agent); its next request
    /// is refused at once with a retryable error (-32004) rather than
    /// queued, so one agent cannot make the others wait. Default: half of
    /// `max_concurrent_requests`, at least 1.
    #[serde(default)]
    pub max_requests_per_agent: Option<usize>,
    /// The most a response may take, and each event of a streamed one:
    /// an upstream that sends more gets an error naming it, not Dome's
    /// memory.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
}

pub(super) fn default_max_response() -> usize {
    crate::upstream::sse::DEFAULT_MAX_EVENT
}

/// `era` of an `[[upstream]]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EraSetting {
    #[default]
    Auto,
    Session,
    Stateless,
}

pub(super) fn default_max_concurrent() -> usize {
    256
}

impl UpstreamConfig {
    /// How long a streamed answer may go without an event.
    pub fn stream_idle(&self) -> Duration {
        Duration::from_millis(self.stream_idle_timeout_ms.unwrap_or(self.timeout_ms))
    }

    /// The slots one agent may hold: `max_requests_per_agent`, or half of
    /// `max_concurrent_requests` (at least 1).
    pub fn agent_share(&self) -> usize {
        self.max_requests_per_agent
            .unwrap_or(self.max_concurrent_requests / 2)
            .max(1)
    }
}

pub(super) fn default_prefix() -> PrefixMode {
    PrefixMode::OnConflict
}

pub(super) fn default_timeout() -> u64 {
    30_000
}

pub(super) fn default_connect_timeout() -> u64 {
    2_000
}

pub(super) fn default_max_idle() -> usize {
    64
}
