//! A client for one upstream MCP server. It finds out which era the
//! upstream speaks (`server/discover` first, else `initialize`), holds the
//! upstream session in the session era and re-initializes it transparently
//! when the upstream forgets it, and keeps pooled keep-alive connections.
//! Calls are never retried once the upstream may have acted on them.
//!
//! This file holds the client itself (`Upstream`) and a dual-era upstream's
//! session lane; `exchange` its requests and the handshake, `listen` what
//! the upstream says on its own, `wire` the bytes of an exchange, `limits`
//! the slots, shares and buffered answers, `config` `[[upstream]]`.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use dome_core::protocol::{self, code};

mod config;
mod exchange;
pub mod h1;
mod limits;
mod listen;
pub mod pool;
pub mod sse;
mod wire;

pub use config::*;
pub use limits::*;
pub use wire::*;

/// Why an upstream call failed: it always names the upstream, and says
/// who failed (`side`) and whether sending the call again is safe
/// (`retry_safe`), as pingora's errors carry their source and retry type.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The request never reached the upstream (connecting, or writing it,
    /// failed).
    #[error("upstream `{0}` is unreachable: {1}")]
    Unreachable(String, String),
    /// The connection failed after the request was sent: the upstream may
    /// have acted on it.
    #[error("the connection to upstream `{0}` failed after the request was sent: {1}")]
    Broken(String, String),
    /// `sent`: the wait was for the answer (the upstream may have acted),
    /// not for one of its slots.
    #[error("upstream `{upstream}` timed out")]
    Timeout { upstream: String, sent: bool },
    #[error("upstream `{0}` answered HTTP {1}")]
    Status(String, u16),
    #[error("upstream `{0}` sent an invalid response: {1}")]
    Invalid(String, String),
    #[error(
        "upstream `{0}`'s answer was dropped: Dome holds as many buffered answers as it may \
         ([mcp] max_buffered_response_bytes); retry later"
    )]
    Overloaded(String),
    #[error(
        "upstream `{0}` is busy with this agent's other requests ({1} at once, its share of the \
         upstream's max_requests_per_agent); retry once one is answered"
    )]
    Busy(String, usize),
}

/// Why an upstream's `url` cannot be used (config validation says so at
/// `upstream[i].url`). Not an `UpstreamError`: no call failed.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("`{url}` is not a URL")]
    NotAUrl {
        url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("`{0}`: only http:// upstreams are supported")]
    NotHttp(String),
    /// Its host or path does not make a connection pool.
    #[error("upstream `{name}`")]
    Address {
        name: String,
        #[source]
        source: pool::AddressError,
    },
}

/// A failed call's `error.data` for its caller: which upstream, and
/// whether sending the same call again cannot make it act twice.
pub fn failure_data(upstream: &str, retry_safe: bool) -> Value {
    json!({"upstream": upstream, "retrySafe": retry_safe})
}

/// Who a failed upstream call failed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The upstream, or the network to it.
    Upstream,
    /// Dome's own limits (an agent's share of the upstream, the memory for
    /// buffered answers).
    Dome,
}

impl UpstreamError {
    /// The JSON-RPC error to give the caller.
    pub fn to_jsonrpc(&self) -> Value {
        json!({"code": self.code(), "message": self.to_string(), "data": self.data()})
    }

    /// What the caller is told besides the message: which upstream, and
    /// whether sending the same call again cannot make it act twice.
    pub fn data(&self) -> Value {
        failure_data(self.upstream(), self.retry_safe())
    }

    /// The upstream the call went to.
    pub fn upstream(&self) -> &str {
        match self {
            UpstreamError::Unreachable(u, _)
            | UpstreamError::Broken(u, _)
            | UpstreamError::Timeout { upstream: u, .. }
            | UpstreamError::Status(u, _)
            | UpstreamError::Invalid(u, _)
            | UpstreamError::Overloaded(u)
            | UpstreamError::Busy(u, _) => u,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            UpstreamError::Overloaded(_) | UpstreamError::Busy(..) => Side::Dome,
            _ => Side::Upstream,
        }
    }

    /// Whether the call certainly did not act upstream, so sending it again
    /// cannot do anything twice: it never left Dome, or never reached the
    /// upstream, or the upstream refused it unread (HTTP 429 or 503). An
    /// answer that went missing after the upstream had it is never safe.
    pub fn retry_safe(&self) -> bool {
        match self {
            UpstreamError::Unreachable(..) | UpstreamError::Busy(..) => true,
            UpstreamError::Timeout { sent, .. } => !sent,
            UpstreamError::Status(_, s) => matches!(s, 429 | 503),
            UpstreamError::Broken(..)
            | UpstreamError::Invalid(..)
            | UpstreamError::Overloaded(_) => false,
        }
    }

    /// Its JSON-RPC code: an agent over its share may retry (-32004); the
    /// rest is the upstream's failure.
    pub fn code(&self) -> i64 {
        match self {
            UpstreamError::Busy(..) => code::RATE_LIMITED,
            _ => code::UPSTREAM_UNAVAILABLE,
        }
    }
}

/// What an upstream answered.
pub enum Reply {
    /// One JSON-RPC message (the response), with the upstream's request id.
    Json(Value),
    /// The same, as the upstream's bytes (`tools/call`: passed on without a tree).
    Raw(Bytes),
    /// An SSE stream: notifications, then the response.
    Stream(Response<pool::Body>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// What Dome found an upstream speaks: not yet known, the session era (with
/// its session, once made), or the stateless era.
enum UpstreamEra {
    Unknown,
    Session { id: Option<String>, version: String },
    Stateless { version: String },
}

/// What is known of a dual-era upstream's session lane (see
/// `Upstream::for_session_caller`).
enum Lane {
    Unknown,
    Found(Arc<Upstream>),
    /// Not to be had before `until`: calls go to the upstream itself.
    Absent {
        until: Instant,
    },
}

/// How long an upstream that refused the session era, or could not be
/// reached, is not asked again: one failed `initialize` a minute at most.
const LANE_RETRY: Duration = Duration::from_secs(60);

/// Receives notifications an upstream sends on its own stream.
pub type NotificationSink = Arc<dyn Fn(&Value) + Send + Sync>;

pub struct Upstream {
    pub config: UpstreamConfig,
    /// The name, shared (not copied) by each call's record and metrics.
    label: std::sync::Arc<str>,
    /// Keep-alive connections, one set per lane (see `workers`): a
    /// worker's connections live on its own runtime and only it uses them.
    pool: pool::Pool,
    /// Read on every call by every worker: an `ArcSwap`, so reading takes
    /// no lock and writes no shared cache line.
    era: arc_swap::ArcSwap<UpstreamEra>,
    /// What the upstream said it offers (`initialize` or `server/discover`).
    capabilities: RwLock<Value>,
    connecting: tokio::sync::Mutex<()>,
    /// Where notifications from the upstream's own (GET) stream go.
    sink: std::sync::OnceLock<NotificationSink>,
    /// This upstream, for the GET-stream task it spawns.
    me: std::sync::OnceLock<std::sync::Weak<Upstream>>,
    next_id: AtomicU64,
    /// Shared with the session lane: one upstream, one allowance.
    slots: Arc<tokio::sync::Semaphore>,
    /// Of those slots, what each agent holds.
    shares: Arc<AgentShares>,
    /// With `era = "auto"`, an upstream found to speak the stateless era
    /// may speak the session era too; its tools that call back mid-call
    /// (sampling, elicitation) then work only there. This is the same
    /// upstream spoken to in the session era, for session-era callers'
    /// tool calls. Found on the first such call, not at start: most
    /// fleets have no such callers.
    /// Read on each such call: an `ArcSwap`, no lock.
    session_lane: arc_swap::ArcSwap<Lane>,
    /// One probe for the lane at a time; calls meanwhile wait for it.
    lane_probe: tokio::sync::Mutex<()>,
    /// Resource URIs Dome's clients want updates for, and how many want
    /// each: the upstream is asked once per URI, however many clients ask.
    wanted: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Bumped when `wanted` changes: a stateless upstream's listen stream
    /// then reopens with the new filter (a filter cannot change mid-stream).
    listen_filter: tokio::sync::watch::Sender<u64>,
    /// The last `listen_filter` generation the listen stream was (re)opened
    /// with, or tried to be: `want` waits for its own, so a client told its
    /// subscription stands is not racing the reopen.
    listen_opened: tokio::sync::watch::Sender<u64>,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Self, UrlError> {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_requests.max(1),
        ));
        let shares = Arc::new(AgentShares::new(config.agent_share()));
        Self::sharing(config, slots, shares)
    }

    /// A client of the upstream `config` names, within `slots` and `shares`.
    fn sharing(
        config: UpstreamConfig,
        slots: Arc<tokio::sync::Semaphore>,
        shares: Arc<AgentShares>,
    ) -> Result<Self, UrlError> {
        let uri: hyper::Uri = config.url.parse().map_err(|source| UrlError::NotAUrl {
            url: config.url.clone(),
            source,
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(UrlError::NotHttp(config.url.clone()));
        }
        // The idle allowance is the upstream's, shared out over the lanes.
        let pool = pool::Pool::new(
            &uri,
            crate::net::workers::lanes(),
            config.max_idle_connections,
            Duration::from_millis(config.connect_timeout_ms),
        )
        .map_err(|source| UrlError::Address {
            name: config.name.clone(),
            source,
        })?;
        Ok(Upstream {
            label: config.name.as_str().into(),
            config,
            pool,
            era: arc_swap::ArcSwap::from_pointee(UpstreamEra::Unknown),
            capabilities: RwLock::new(Value::Null),
            connecting: tokio::sync::Mutex::new(()),
            sink: std::sync::OnceLock::new(),
            me: std::sync::OnceLock::new(),
            slots,
            shares,
            session_lane: arc_swap::ArcSwap::from_pointee(Lane::Unknown),
            lane_probe: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            wanted: Default::default(),
            listen_filter: tokio::sync::watch::Sender::new(0),
            listen_opened: tokio::sync::watch::Sender::new(0),
        })
    }

    /// An SSE parser held to this upstream's response limit.
    pub fn sse_parser(&self) -> sse::SseParser {
        sse::SseParser::metered(self.config.max_response_bytes, Default::default())
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The name as a shared string (cloned without copying).
    pub fn label(&self) -> &std::sync::Arc<str> {
        &self.label
    }

    /// Where the upstream's own notifications go (set once; a reused
    /// upstream keeps its first sink, which outlives reloads).
    pub fn set_notification_sink(self: &Arc<Self>, sink: NotificationSink) {
        let _ = self.sink.set(sink);
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// The upstream's capabilities, after it was first reached (`Null` before).
    pub fn capabilities(&self) -> Value {
        self.capabilities.read().expect("caps").clone()
    }

    /// Connects (finds the era, initializes) if not yet done.
    pub async fn connect(&self) -> Result<(), UpstreamError> {
        self.ensure_connected().await
    }

    /// Where a session-era caller's tool call goes: this upstream, or its
    /// session lane when `era = "auto"` found it speaks both eras. A
    /// session-era client of a dual-era server directly would speak the
    /// session era to it, and its tools that call back work only there.
    pub async fn for_session_caller(self: &Arc<Self>) -> Arc<Upstream> {
        if self.config.era != EraSetting::Auto || !self.speaks_stateless() {
            return self.clone();
        }
        if let Some(lane) = self.lane_now(Instant::now()) {
            return lane;
        }
        // Probed by one call; the others wait for its outcome (bounded by
        // the connect timeout and the handshake's exchange).
        let _probe = self.lane_probe.lock().await;
        if let Some(lane) = self.lane_now(Instant::now()) {
            return lane;
        }
        let mut config = self.config.clone();
        config.era = EraSetting::Session;
        let probed = match Upstream::sharing(config, self.slots.clone(), self.shares.clone()) {
            Ok(lane) => lane.connect().await.map(|()| lane),
            Err(e) => Err(UpstreamError::Invalid(
                self.name().into(),
                crate::error_chain(&e),
            )),
        };
        let (state, lane) = match probed {
            Ok(lane) => {
                tracing::info!(upstream = %self.name(), "upstream speaks both eras: session-era callers' tool calls go to it in the session era");
                let lane = Arc::new(lane);
                (Lane::Found(lane.clone()), lane)
            }
            Err(e) => {
                // Refused (it speaks only the stateless era, whose
                // `input_required` rounds Dome translates) or unreachable
                // for now: asked again after a while, not on every call.
                tracing::info!(upstream = %self.name(), error = %e, "upstream not spoken to in the session era for now");
                let until = Instant::now() + LANE_RETRY;
                (Lane::Absent { until }, self.clone())
            }
        };
        self.session_lane.store(Arc::new(state));
        lane
    }

    /// The lane as last found, unless it is time to look again (`None`).
    fn lane_now(self: &Arc<Self>, now: Instant) -> Option<Arc<Upstream>> {
        match &**self.session_lane.load() {
            Lane::Found(l) => Some(l.clone()),
            Lane::Absent { until } if now < *until => Some(self.clone()),
            _ => None,
        }
    }

    /// Whether the upstream speaks the stateless era (its results carry `resultType`).
    pub fn speaks_stateless(&self) -> bool {
        matches!(**self.era.load(), UpstreamEra::Stateless { .. })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// Ends the upstream session (session era) on shutdown, and the
    /// session lane's.
    pub async fn close(&self) {
        let lane = match &**self.session_lane.load() {
            Lane::Found(l) => Some(l.clone()),
            _ => None,
        };
        if let Some(lane) = lane {
            Box::pin(lane.close()).await;
        }
        let era = (**self.era.load()).clone();
        if let UpstreamEra::Session {
            id: Some(id),
            version,
        } = era
        {
            let req = Request::delete(self.pool.target().clone())
                .header(protocol::H_SESSION, id)
                .header(protocol::H_VERSION, version)
                .body(Full::new(Bytes::new()));
            if let Ok(req) = req {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.pool.send(req)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_url_is_named_with_why() {
        let with_url = |url: &str| -> UpstreamConfig {
            toml::from_str(&format!("name = \"demo\"\nurl = \"{url}\"\n")).unwrap()
        };
        let text = |url: &str| crate::error_chain(&Upstream::new(with_url(url)).err().unwrap());
        assert_eq!(
            text("not a url"),
            "`not a url` is not a URL: invalid uri character"
        );
        assert_eq!(
            text("https://demo.test/mcp"),
            "`https://demo.test/mcp`: only http:// upstreams are supported"
        );
        assert!(Upstream::new(with_url("http://127.0.0.1:1/mcp")).is_ok());
    }

    #[test]
    fn responses_are_readdressed_without_a_tree() {
        let body =
            br#"{"jsonrpc":"2.0","id":77,"result":{"content":[{"type":"text","text":"hi"}]}}"#;
        let p = ResponseParts::of(body).unwrap();
        let v: Value = serde_json::from_slice(&p.readdressed(&json!("c-1"), "")).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": "c-1", "result": {"content": [{"type": "text", "text": "hi"}]}})
        );
        let v: Value = serde_json::from_slice(&p.readdressed(&json!(5), RESULT_TYPE)).unwrap();
        assert_eq!(v["result"]["resultType"], "complete");
        let empty = ResponseParts::of(br#"{"jsonrpc":"2.0","id":1,"result":{ }}"#).unwrap();
        let v: Value = serde_json::from_slice(&empty.readdressed(&json!(1), RESULT_TYPE)).unwrap();
        assert_eq!(v["result"], json!({"resultType": "complete"}));
        let err = ResponseParts::of(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}"#,
        )
        .unwrap();
        assert_eq!(err.error_code(), Some(-32602));
        let v: Value = serde_json::from_slice(&err.readdressed(&json!(9), RESULT_TYPE)).unwrap();
        assert_eq!(v["error"]["message"], "no");
        assert!(ResponseParts::of(b"{\"jsonrpc\":\"2.0\"}").is_none());
        assert!(ResponseParts::of(b"garbage").is_none());
    }

    #[test]
    fn call_bodies_are_valid_json() {
        let meta = vec![("progressToken".to_string(), "\"t\"".to_string())];
        let extra = vec![("requestState".to_string(), "\"s1\"".to_string())];
        let call = CallParts {
            name: "ec\"ho",
            arguments: Some(r#"{"a":[1,{"b":null}]}"#),
            meta: &meta,
            extra: &extra,
            client_capabilities: Some(r#"{"elicitation":{}}"#),
            assertion: None,
            log_level: None,
            agent: None,
        };
        let b = call_body(9, &call, Some("2026-07-28"));
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["params"]["name"], "ec\"ho");
        assert_eq!(v["params"]["arguments"]["a"][1]["b"], Value::Null);
        assert_eq!(v["params"]["_meta"]["progressToken"], "t");
        assert_eq!(v["params"]["requestState"], "s1");
        assert_eq!(
            v["params"]["_meta"][protocol::META_CLIENT_CAPABILITIES],
            json!({"elicitation": {}})
        );
        assert_eq!(
            v["params"]["_meta"][protocol::META_PROTOCOL_VERSION],
            "2026-07-28"
        );
        let plain: Value = serde_json::from_str(&call_body(
            1,
            &CallParts {
                name: "x",
                arguments: None,
                meta: &[],
                extra: &[],
                client_capabilities: None,
                assertion: None,
                log_level: Some("info"),
                agent: None,
            },
            None,
        ))
        .unwrap();
        assert_eq!(
            plain,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}})
        );
        // `_meta` from the caller only (session-era upstream), and the era's
        // entries only (no caller `_meta`).
        let no_era = CallParts {
            client_capabilities: None,
            ..call
        };
        let v: Value = serde_json::from_str(&call_body(2, &no_era, None)).unwrap();
        assert_eq!(v["params"]["_meta"], json!({"progressToken": "t"}));
        let only_era = CallParts { meta: &[], ..call };
        let v: Value = serde_json::from_str(&call_body(3, &only_era, Some("2026-07-28"))).unwrap();
        let m = v["params"]["_meta"].as_object().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[protocol::META_CLIENT_INFO]["name"], "dome");
        // A session-era caller's log level, for a stateless upstream only,
        // and never over the caller's own.
        let leveled = CallParts {
            log_level: Some("warning"),
            ..only_era
        };
        let v: Value = serde_json::from_str(&call_body(4, &leveled, Some("2026-07-28"))).unwrap();
        assert_eq!(v["params"]["_meta"][protocol::META_LOG_LEVEL], "warning");
        let own = vec![(
            protocol::META_LOG_LEVEL.to_string(),
            "\"error\"".to_string(),
        )];
        let v: Value = serde_json::from_str(&call_body(
            5,
            &CallParts {
                meta: &own,
                ..leveled
            },
            Some("2026-07-28"),
        ))
        .unwrap();
        assert_eq!(v["params"]["_meta"][protocol::META_LOG_LEVEL], "error");
    }

    #[test]
    fn json_strings_are_escaped_only_when_needed() {
        for s in ["echo", "a\"b", "back\\slash", "tab\there", "é", "\u{7f}"] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s, "{out}");
        }
    }
}
