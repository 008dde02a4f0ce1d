//! A client for one upstream MCP server. It finds out which era the
//! upstream speaks (`server/discover` first, else `initialize`), holds the
//! upstream session in the session era and re-initializes it transparently
//! when the upstream forgets it, and keeps pooled keep-alive connections.
//! Calls are never retried once the upstream may have acted on them.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::protocol::{self, code};

/// How tool names of this upstream appear downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// Always `upstream.tool`.
    Always,
    /// Never prefixed; on a clash the upstream listed first wins.
    Never,
    /// Prefixed only where two upstreams offer the same name.
    OnConflict,
}

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

fn default_max_response() -> usize {
    super::sse::DEFAULT_MAX_EVENT
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

fn default_max_concurrent() -> usize {
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

fn default_prefix() -> PrefixMode {
    PrefixMode::OnConflict
}
fn default_timeout() -> u64 {
    30_000
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_max_idle() -> usize {
    64
}

/// Why an upstream call failed; always names the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{0}` is unreachable: {1}")]
    Unreachable(String, String),
    #[error("upstream `{0}` timed out")]
    Timeout(String),
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

impl UpstreamError {
    /// The JSON-RPC error to give the caller.
    pub fn to_jsonrpc(&self) -> Value {
        json!({"code": self.code(), "message": self.to_string()})
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

/// Bytes of upstream answers held buffered over all calls, and the most
/// there may be (`[mcp] max_buffered_response_bytes`): one atomic each,
/// so charging takes no lock. Every upstream answer read whole, and every
/// event still arriving in an event stream's parser, is charged here.
pub struct Buffered {
    held: std::sync::atomic::AtomicUsize,
    limit: std::sync::atomic::AtomicUsize,
    /// Answers dropped at the limit, since start.
    refused: AtomicU64,
}

pub static BUFFERED: Buffered = Buffered {
    held: std::sync::atomic::AtomicUsize::new(0),
    limit: std::sync::atomic::AtomicUsize::new(256 << 20),
    refused: AtomicU64::new(0),
};

impl Buffered {
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// What `/stats` shows: bytes held now, the limit, answers refused.
    pub fn to_json(&self) -> Value {
        json!({
            "bytes": self.held.load(Ordering::Relaxed),
            "limit": self.limit.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
        })
    }

    /// Takes `n` bytes more, unless that would pass the limit.
    fn take(&self, n: usize) -> bool {
        let before = self.held.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.limit.load(Ordering::Relaxed) {
            self.held.fetch_sub(n, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes charged to [`BUFFERED`] while this lives.
#[derive(Default)]
pub struct Charge(usize);

impl Charge {
    /// Charges `n` bytes more; false (nothing charged) over the budget.
    pub fn grow(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if !BUFFERED.take(n) {
            return false;
        }
        self.0 += n;
        true
    }

    /// Bytes charged.
    pub fn held(&self) -> usize {
        self.0
    }

    /// Gives back `n` of the bytes charged.
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.0);
        BUFFERED.give(n);
        self.0 -= n;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.0 > 0 {
            BUFFERED.give(self.0);
        }
    }
}

/// An answer's bytes with their charge: given back when the last
/// reference to them goes.
struct Charged {
    bytes: Bytes,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The key a caller without credentials is counted under in an upstream's
/// per-agent shares (identity slots are far below it).
pub const ANONYMOUS_AGENT: u32 = u32::MAX;

/// Requests each agent has waiting on one upstream, sharded by identity
/// slot so calls of different agents do not wait on one lock.
struct AgentShares {
    shards: Box<[std::sync::Mutex<std::collections::HashMap<u32, u32>>]>,
    share: u32,
}

const SHARE_SHARDS: usize = 16;

impl AgentShares {
    fn new(share: usize) -> Self {
        AgentShares {
            shards: (0..SHARE_SHARDS).map(|_| Default::default()).collect(),
            share: u32::try_from(share).unwrap_or(u32::MAX).max(1),
        }
    }

    fn shard(&self, agent: u32) -> &std::sync::Mutex<std::collections::HashMap<u32, u32>> {
        &self.shards[agent as usize % SHARE_SHARDS]
    }

    /// One more of `agent`'s requests, unless it holds its share.
    fn take(&self, agent: u32) -> Option<Share<'_>> {
        let mut m = self.shard(agent).lock().expect("shares lock");
        let n = m.entry(agent).or_default();
        if *n >= self.share {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self,
            agent,
        })
    }
}

/// One request counted against its agent's share while it lives.
struct Share<'a> {
    shares: &'a AgentShares,
    agent: u32,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut m = self.shares.shard(self.agent).lock().expect("shares lock");
        if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(self.agent) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// What a request holds while its answer is awaited: a slot of the
/// upstream's, its agent's share, and the deadline of the whole exchange.
struct Held<'a> {
    _slot: tokio::sync::SemaphorePermit<'a>,
    _share: Option<Share<'a>>,
    deadline: tokio::time::Instant,
}

/// What an upstream answered.
pub enum Reply {
    /// One JSON-RPC message (the response), with the upstream's request id.
    Json(Value),
    /// The same, as the upstream's bytes (`tools/call`: passed on without a tree).
    Raw(Bytes),
    /// An SSE stream: notifications, then the response.
    Stream(Response<super::pool::Body>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Era {
    Unknown,
    Session { id: Option<String>, version: String },
    Stateless { version: String },
}

/// Receives notifications an upstream sends on its own stream.
pub type NotificationSink = Arc<dyn Fn(&Value) + Send + Sync>;

pub struct Upstream {
    pub config: UpstreamConfig,
    /// The name, shared (not copied) by each call's record and metrics.
    label: std::sync::Arc<str>,
    /// Keep-alive connections, one set per lane (see `workers`): a
    /// worker's connections live on its own runtime and only it uses them.
    pool: super::pool::Pool,
    /// Read on every call by every worker: an `ArcSwap`, so reading takes
    /// no lock and writes no shared cache line.
    era: arc_swap::ArcSwap<Era>,
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
    /// tool calls (`None`: it speaks only the stateless era). Found on the
    /// first such call, not at start: most fleets have no such callers.
    session_lane: tokio::sync::OnceCell<Option<Arc<Upstream>>>,
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
    pub fn new(config: UpstreamConfig) -> Result<Self, String> {
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
    ) -> Result<Self, String> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|e| format!("`{}` is not a URL: {e}", config.url))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "`{}`: only http:// upstreams are supported",
                config.url
            ));
        }
        // The idle allowance is the upstream's, shared out over the lanes.
        let pool = super::pool::Pool::new(
            &uri,
            crate::workers::lanes(),
            config.max_idle_connections,
            Duration::from_millis(config.connect_timeout_ms),
        )
        .map_err(|e| format!("upstream `{}`: {e}", config.name))?;
        Ok(Upstream {
            label: config.name.as_str().into(),
            config,
            pool,
            era: arc_swap::ArcSwap::from_pointee(Era::Unknown),
            capabilities: RwLock::new(Value::Null),
            connecting: tokio::sync::Mutex::new(()),
            sink: std::sync::OnceLock::new(),
            me: std::sync::OnceLock::new(),
            slots,
            shares,
            session_lane: tokio::sync::OnceCell::new(),
            next_id: AtomicU64::new(1),
            wanted: Default::default(),
            listen_filter: tokio::sync::watch::Sender::new(0),
            listen_opened: tokio::sync::watch::Sender::new(0),
        })
    }

    /// An SSE parser held to this upstream's response limit.
    pub fn sse_parser(&self) -> super::sse::SseParser {
        super::sse::SseParser::new(self.config.max_response_bytes).charged()
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

    /// Opens the session's GET stream and passes what arrives to the sink,
    /// reconnecting while the upstream session lasts.
    fn spawn_listener(&self, session: String) {
        let (Some(me), Some(_)) = (self.me.get().and_then(|w| w.upgrade()), self.sink.get()) else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let current = match &**me.era.load() {
                    Era::Session {
                        id: Some(id),
                        version,
                    } if *id == session => version.clone(),
                    _ => return,
                };
                let req = Request::get(me.pool.target().clone())
                    .header(header::ACCEPT, "text/event-stream")
                    .header(protocol::H_SESSION, session.as_str())
                    .header(protocol::H_VERSION, current)
                    .body(Full::new(Bytes::new()));
                let Ok(req) = req else { return };
                match me.pool.send(req).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let mut body = resp.into_body();
                        let mut parser = me.sse_parser();
                        while let Some(Ok(frame)) = body.frame().await {
                            let Some(data) = frame.data_ref() else {
                                continue;
                            };
                            if let Err(e) = parser.push(data) {
                                tracing::warn!(upstream = %me.name(), error = %e, "its stream is dropped and opened again");
                                break;
                            }
                            while let Some(ev) = parser.next_event() {
                                if let (Ok(v), Some(sink)) =
                                    (serde_json::from_str::<Value>(&ev), me.sink.get())
                                {
                                    sink(&v);
                                }
                            }
                        }
                    }
                    // 405: the upstream has no stream to offer; nothing to listen to.
                    Ok(resp) if resp.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// A stateless upstream has no standing stream: Dome opens one
    /// `subscriptions/listen` for the change notifications the upstream
    /// offers and the resource URIs its clients want, passes what arrives to
    /// the sink, and reopens it when the wanted URIs change or it ends.
    fn spawn_stateless_listener(&self) {
        let caps = self.capabilities();
        let offers = |kind: &str, flag: &str| caps[kind][flag] == true;
        if !(offers("tools", "listChanged")
            || offers("prompts", "listChanged")
            || offers("resources", "listChanged")
            || offers("resources", "subscribe"))
        {
            return;
        }
        let (Some(me), Some(_)) = (self.me.get().cloned(), self.sink.get()) else {
            return;
        };
        let mut changed = self.listen_filter.subscribe();
        tokio::spawn(async move {
            loop {
                let Some(up) = me.upgrade() else { return };
                if !matches!(**up.era.load(), Era::Stateless { .. }) {
                    return;
                }
                let generation = *changed.borrow_and_update();
                let opened = up.open_listen().await;
                up.listen_opened.send_replace(generation);
                let reopen = match opened {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let mut body = resp.into_body();
                        let mut parser = up.sse_parser();
                        // Hold only a weak reference while waiting, so a
                        // reload that drops this upstream ends the stream.
                        drop(up);
                        loop {
                            let frame = tokio::select! {
                                f = body.frame() => f,
                                _ = changed.changed() => break true,
                            };
                            let Some(Ok(frame)) = frame else { break false };
                            let Some(data) = frame.data_ref() else {
                                continue;
                            };
                            let Some(up) = me.upgrade() else { return };
                            if let Err(e) = parser.push(data) {
                                tracing::warn!(upstream = %up.name(), error = %e, "its listen stream is dropped and opened again");
                                break false;
                            }
                            while let Some(ev) = parser.next_event() {
                                let Ok(mut v) = serde_json::from_str::<Value>(&ev) else {
                                    continue;
                                };
                                if v["method"] == "notifications/subscriptions/acknowledged"
                                    || v.get("method").is_none()
                                {
                                    continue;
                                }
                                // The subscription id is Dome's own; each
                                // client's stream is stamped with its own.
                                if let Some(m) = v["params"]["_meta"].as_object_mut() {
                                    m.remove(protocol::META_SUBSCRIPTION_ID);
                                }
                                if let Some(sink) = up.sink.get() {
                                    sink(&v);
                                }
                            }
                        }
                    }
                    Ok(resp) => {
                        tracing::warn!(upstream = %up.name(), status = %resp.status(), "subscriptions/listen refused");
                        false
                    }
                    Err(e) => {
                        tracing::debug!(upstream = %up.name(), error = %e, "subscriptions/listen failed");
                        false
                    }
                };
                if !reopen {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = changed.changed() => {}
                    }
                }
            }
        });
    }

    /// Opens a `subscriptions/listen` stream with the current filter.
    async fn open_listen(&self) -> Result<Response<super::pool::Body>, UpstreamError> {
        let Era::Stateless { version } = (**self.era.load()).clone() else {
            return Err(UpstreamError::Invalid(
                self.name().into(),
                "not a stateless upstream".into(),
            ));
        };
        let caps = self.capabilities();
        let mut filter = serde_json::Map::new();
        for (kind, key) in [
            ("tools", "toolsListChanged"),
            ("prompts", "promptsListChanged"),
            ("resources", "resourcesListChanged"),
        ] {
            if caps[kind]["listChanged"] == true {
                filter.insert(key.into(), true.into());
            }
        }
        let uris: Vec<String> = self
            .wanted
            .lock()
            .expect("wanted lock")
            .keys()
            .cloned()
            .collect();
        if !uris.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(uris));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
            "params": {"notifications": filter, "_meta": stateless_meta(&version)}});
        let req = self.build("subscriptions/listen", None, &body)?;
        // Dome's own standing stream: it holds no slot once it has begun.
        Ok(self.exchange(req, None).await?.0)
    }

    /// A client of Dome's starts (`on`) or stops wanting updates of `uri`,
    /// which this upstream serves. The upstream hears of it only when the
    /// first client starts or the last one stops: a session-era upstream by
    /// `resources/subscribe`/`unsubscribe` (its answer is returned), a
    /// stateless one by its listen stream reopening with the new filter
    /// (`None`: nothing to relay).
    pub async fn want(&self, uri: &str, on: bool) -> Result<Option<Value>, UpstreamError> {
        let edge = {
            let mut wanted = self.wanted.lock().expect("wanted lock");
            let n = wanted.entry(uri.to_string()).or_insert(0);
            if on {
                *n += 1;
                *n == 1
            } else {
                *n = n.saturating_sub(1);
                let last = *n == 0;
                if last {
                    wanted.remove(uri);
                }
                last
            }
        };
        if !edge {
            return Ok(None);
        }
        self.ensure_connected().await?;
        if matches!(**self.era.load(), Era::Stateless { .. }) {
            self.listen_filter.send_modify(|g| *g += 1);
            let generation = *self.listen_filter.borrow();
            // Until the stream carries the new filter. A reopen is a connect
            // and a request head, so the connect timeout bounds the wait: a
            // listener that is gone or stuck must not hold the client.
            let mut opened = self.listen_opened.subscribe();
            let bound = Duration::from_millis(self.config.connect_timeout_ms);
            let _ = tokio::time::timeout(bound, opened.wait_for(|g| *g >= generation)).await;
            return Ok(None);
        }
        let method = if on {
            "resources/subscribe"
        } else {
            "resources/unsubscribe"
        };
        let answer = match self.request(method, json!({"uri": uri})).await {
            Ok((Reply::Json(v), _)) => Ok(v),
            Ok((Reply::Raw(b), _)) => serde_json::from_slice(&b)
                .map_err(|e| UpstreamError::Invalid(self.name().into(), format!("not JSON: {e}"))),
            Ok((Reply::Stream(st), _)) => first_response(self, st).await,
            Err(e) => Err(e),
        };
        let refused = !matches!(&answer, Ok(v) if v.get("result").is_some());
        if on && refused {
            // Not subscribed after all: the next client to ask tries again.
            let mut wanted = self.wanted.lock().expect("wanted lock");
            if let Some(n) = wanted.get_mut(uri) {
                *n -= 1;
                if *n == 0 {
                    wanted.remove(uri);
                }
            }
        }
        answer.map(Some)
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
        let lane = self
            .session_lane
            .get_or_try_init(|| async {
                let mut config = self.config.clone();
                config.era = EraSetting::Session;
                let lane = Upstream::sharing(config, self.slots.clone(), self.shares.clone())
                    .map_err(|e| UpstreamError::Invalid(self.name().into(), e))?;
                match lane.connect().await {
                    Ok(()) => {
                        tracing::info!(upstream = %self.name(), "upstream speaks both eras: session-era callers' tool calls go to it in the session era");
                        Ok(Some(Arc::new(lane)))
                    }
                    // Unreachable now: asked again on the next call.
                    Err(e @ (UpstreamError::Unreachable(..) | UpstreamError::Timeout(_))) => {
                        Err(e)
                    }
                    // Refused: it speaks only the stateless era (Dome
                    // translates its `input_required` rounds).
                    Err(e) => {
                        tracing::info!(upstream = %self.name(), error = %e, "upstream speaks only the stateless era");
                        Ok(None)
                    }
                }
            })
            .await;
        match lane {
            Ok(Some(l)) => l.clone(),
            _ => self.clone(),
        }
    }

    /// Whether the upstream speaks the stateless era (its results carry `resultType`).
    pub fn speaks_stateless(&self) -> bool {
        matches!(**self.era.load(), Era::Stateless { .. })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// Sends a request and returns the upstream's reply. `params` is sent as
    /// given (plus the era's envelope). In the session era an expired
    /// upstream session is re-initialized and the request sent once more:
    /// the upstream refused it without acting on it.
    pub async fn request(
        &self,
        method: &str,
        params: Value,
    ) -> Result<(Reply, u64), UpstreamError> {
        self.request_as(method, params, None, None).await
    }

    /// As [`Upstream::request`], with Dome's identity assertion for the
    /// caller, on behalf of `agent` (its identity slot, or
    /// [`ANONYMOUS_AGENT`]; `None`: Dome's own request), held to its share.
    pub async fn request_as(
        &self,
        method: &str,
        params: Value,
        assertion: Option<(&header::HeaderName, &str)>,
        agent: Option<u32>,
    ) -> Result<(Reply, u64), UpstreamError> {
        self.with_session(|| self.send_as(method, params.clone(), assertion, agent))
            .await
    }

    /// Connects, sends, and — when a session-era upstream answers 404 (it
    /// forgot the session, so it did not act on the request) — initializes a
    /// new session and sends once more.
    async fn with_session<'a, F, Fut>(&'a self, send: F) -> Result<(Reply, u64), UpstreamError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(Reply, u64, StatusCode), UpstreamError>> + 'a,
    {
        // Connecting is the rare path: boxed, so a call's future (moved
        // on every call) does not carry the handshake's.
        if **self.era.load() == Era::Unknown {
            Box::pin(self.ensure_connected()).await?;
        }
        let (reply, id, status) = send().await?;
        if status == StatusCode::NOT_FOUND && matches!(**self.era.load(), Era::Session { .. }) {
            tracing::info!(upstream = %self.name(), "upstream session expired; initializing a new one");
            self.era.store(Arc::new(Era::Unknown));
            Box::pin(self.ensure_connected()).await?;
            let (reply, id, status) = send().await?;
            return finish(self.name(), reply, id, status);
        }
        finish(self.name(), reply, id, status)
    }

    /// Calls a tool: arguments (JSON text, passed through as it came), the
    /// caller's `_meta` entries and Dome's assertion are in `call`. The body
    /// is written directly: no JSON tree is built on this path.
    /// `id` comes from [`Upstream::allocate_id`], so the caller can name the
    /// call (to cancel it) before it is sent.
    pub async fn call_tool(
        &self,
        id: u64,
        call: &CallParts<'_>,
    ) -> Result<(Reply, u64), UpstreamError> {
        self.with_session(|| self.send_call(id, call)).await
    }

    /// A fresh request id on this upstream.
    pub fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn send_call(
        &self,
        id: u64,
        call: &CallParts<'_>,
    ) -> Result<(Reply, u64, StatusCode), UpstreamError> {
        // The era is borrowed for the body only (no copy of its version).
        let body = match &**self.era.load() {
            Era::Stateless { version } => call_body(id, call, Some(version)),
            _ => call_body(id, call, None),
        };
        let mut req = self.build_text("tools/call", Some(call.name), Bytes::from(body))?;
        if let Some((h, v)) = call.assertion
            && let Ok(v) = header::HeaderValue::from_str(v)
        {
            req.headers_mut().insert(h.clone(), v);
        }
        let (resp, held) = self.exchange(req, call.agent).await?;
        let status = resp.status();
        Ok((read_reply_raw(self, resp, held).await?, id, status))
    }

    /// Answers a request the upstream sent (sampling, elicitation, roots).
    pub async fn answer(
        &self,
        id: Value,
        result: Option<Value>,
        error: Option<Value>,
    ) -> Result<(), UpstreamError> {
        let body = match (result, error) {
            (Some(r), _) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
            (None, Some(e)) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
            (None, None) => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
        };
        let req = self.build("", None, &body)?;
        let (resp, held) = self.exchange(req, None).await?;
        let _ = tokio::time::timeout_at(held.deadline, resp.into_body().collect()).await;
        Ok(())
    }

    /// Sends a notification (no reply expected beyond the HTTP status).
    pub async fn notify(&self, method: &str, params: Value) -> Result<(), UpstreamError> {
        self.ensure_connected().await?;
        self.notify_connected(method, params).await
    }

    async fn notify_connected(&self, method: &str, params: Value) -> Result<(), UpstreamError> {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params});
        let req = self.build(method, None, &body)?;
        let (resp, held) = self.exchange(req, None).await?;
        let _ = tokio::time::timeout_at(held.deadline, resp.into_body().collect()).await;
        Ok(())
    }

    async fn ensure_connected(&self) -> Result<(), UpstreamError> {
        if **self.era.load() != Era::Unknown {
            return Ok(());
        }
        // One connect at a time; whoever waited finds it done.
        let _guard = self.connecting.lock().await;
        if **self.era.load() != Era::Unknown {
            return Ok(());
        }
        let connected = self.handshake().await;
        if connected.is_err() {
            // Whatever the handshake got to, the next request starts over.
            // An upstream down at start was left taken for a session-era
            // one without a session (an `initialize` that never arrived),
            // and stayed out of the catalog until its configuration changed.
            self.era.store(Arc::new(Era::Unknown));
        }
        connected
    }

    /// Finds the upstream's era: `server/discover`, else `initialize`.
    async fn handshake(&self) -> Result<(), UpstreamError> {
        // The stateless era first: one round trip, no state to keep.
        let discover = json!({"_meta": stateless_meta(protocol::LATEST_STATELESS)});
        self.era.store(Arc::new(Era::Stateless {
            version: protocol::LATEST_STATELESS.into(),
        }));
        if self.config.era != EraSetting::Session
            && let Ok((Reply::Json(v), _, StatusCode::OK)) =
                self.send("server/discover", discover).await
            && v["result"]["supportedVersions"]
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .any(|x| x.as_str().is_some_and(protocol::is_stateless_version))
                })
        {
            *self.capabilities.write().expect("caps") = v["result"]["capabilities"].clone();
            tracing::info!(upstream = %self.name(), "upstream speaks the stateless era");
            self.spawn_stateless_listener();
            return Ok(());
        }
        if self.config.era == EraSetting::Stateless {
            self.era.store(Arc::new(Era::Unknown));
            return Err(UpstreamError::Invalid(
                self.name().into(),
                "configured for the stateless era, but server/discover failed".into(),
            ));
        }
        self.era.store(Arc::new(Era::Session {
            id: None,
            version: protocol::LATEST_SESSION.into(),
        }));
        // Dome relays the upstream's requests to its clients, so it declares
        // what a client may answer; a client that cannot gets an error back.
        let init = json!({
            "protocolVersion": protocol::LATEST_SESSION,
            "capabilities": {"sampling": {}, "elicitation": {"form": {}}, "roots": {"listChanged": false}},
            "clientInfo": protocol::implementation(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": init});
        let req = self.build("initialize", None, &body)?;
        let (resp, held) = self.exchange(req, None).await?;
        let status = resp.status();
        let session = resp
            .headers()
            .get(protocol::H_SESSION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let reply = read_reply(self, resp, held).await?;
        let msg = match reply {
            Reply::Json(v) => v,
            Reply::Raw(b) => serde_json::from_slice(&b).map_err(|e| {
                UpstreamError::Invalid(self.name().into(), format!("not JSON: {e}"))
            })?,
            Reply::Stream(s) => first_response(self, s).await?,
        };
        if !status.is_success() || msg.get("result").is_none() {
            self.era.store(Arc::new(Era::Unknown));
            return Err(UpstreamError::Invalid(
                self.name().into(),
                format!("initialize failed (HTTP {status}): {msg}"),
            ));
        }
        let version = msg["result"]["protocolVersion"]
            .as_str()
            .unwrap_or(protocol::LATEST_SESSION)
            .to_string();
        *self.capabilities.write().expect("caps") = msg["result"]["capabilities"].clone();
        self.era.store(Arc::new(Era::Session {
            id: session.clone(),
            version,
        }));
        self.notify_connected("notifications/initialized", json!({}))
            .await?;
        if let Some(sid) = session {
            self.spawn_listener(sid);
        }
        tracing::info!(upstream = %self.name(), "upstream speaks the session era");
        Ok(())
    }

    async fn send(
        &self,
        method: &str,
        params: Value,
    ) -> Result<(Reply, u64, StatusCode), UpstreamError> {
        self.send_as(method, params, None, None).await
    }

    async fn send_as(
        &self,
        method: &str,
        mut params: Value,
        assertion: Option<(&header::HeaderName, &str)>,
        agent: Option<u32>,
    ) -> Result<(Reply, u64, StatusCode), UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Era::Stateless { version } = &**self.era.load() {
            if !params.is_object() {
                params = json!({});
            }
            let meta = params
                .as_object_mut()
                .expect("object")
                .entry("_meta")
                .or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                for (k, v) in stateless_meta(version).as_object().expect("object") {
                    m.entry(k.clone()).or_insert(v.clone());
                }
            }
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let name =
            protocol::name_key(method).and_then(|k| body["params"][k].as_str().map(str::to_string));
        let mut req = self.build(method, name.as_deref(), &body)?;
        if let Some((h, v)) = assertion
            && let Ok(v) = header::HeaderValue::from_str(v)
        {
            req.headers_mut().insert(h.clone(), v);
        }
        let (resp, held) = self.exchange(req, agent).await?;
        let status = resp.status();
        Ok((read_reply(self, resp, held).await?, id, status))
    }

    fn build(
        &self,
        method: &str,
        name: Option<&str>,
        body: &Value,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        self.build_text(method, name, Bytes::from(body.to_string()))
    }

    fn build_text(
        &self,
        method: &str,
        name: Option<&str>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        use header::HeaderValue;
        // Names and fixed values made once: no header parsing per call.
        use protocol::{
            H_METHOD as METHOD, H_NAME as NAME, H_SESSION as SESSION, H_VERSION as VERSION,
        };
        let invalid = |e: header::InvalidHeaderValue| {
            UpstreamError::Invalid(self.name().into(), format!("bad header value: {e}"))
        };
        // Versions and methods are nearly always ones Dome knows: those
        // become header values without a copy.
        let value = |v: &str| match protocol::interned(v) {
            Some(k) => Ok(HeaderValue::from_static(k)),
            None => HeaderValue::from_str(v).map_err(invalid),
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = self.pool.target().clone();
        // Room for every header the request gets (the pool adds `Host`),
        // so the map is allocated once and never grown.
        *req.headers_mut() = header::HeaderMap::with_capacity(8);
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        match &**self.era.load() {
            Era::Stateless { version } => {
                h.insert(VERSION, value(version)?);
                h.insert(METHOD, value(method)?);
                if let Some(n) = name {
                    h.insert(NAME, HeaderValue::from_str(n).map_err(invalid)?);
                }
            }
            Era::Session { id, version } => {
                if method != "initialize" {
                    h.insert(VERSION, value(version)?);
                }
                if let Some(id) = id {
                    h.insert(SESSION, HeaderValue::from_str(id).map_err(invalid)?);
                }
            }
            Era::Unknown => {}
        }
        Ok(req)
    }

    /// Sends `req` within the upstream's slots and `agent`'s share of them
    /// (`None`: Dome's own request, held to the slots only). What is held
    /// goes with the response: until its body is read, or for a streamed
    /// one until it begins (it then runs on its own connection).
    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        agent: Option<u32>,
    ) -> Result<(Response<super::pool::Body>, Held<'_>), UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout();
        // An agent holding its share is refused at once: queued, it would
        // wait behind its own requests, and others' behind it.
        let share = match agent {
            Some(a) => Some(self.shares.take(a).ok_or_else(|| {
                UpstreamError::Busy(self.name().into(), self.config.agent_share())
            })?),
            None => None,
        };
        let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, self.slots.acquire()).await else {
            return Err(UpstreamError::Timeout(self.name().into()));
        };
        let held = Held {
            _slot: slot,
            _share: share,
            deadline,
        };
        // Boxed, so the futures of the call path above stay small (each is
        // moved whole when created).
        match tokio::time::timeout_at(deadline, Box::pin(self.pool.send(req))).await {
            Err(_) => Err(UpstreamError::Timeout(self.name().into())),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(self.name().into(), e)),
            Ok(Ok(r)) => Ok((r, held)),
        }
    }

    /// Ends the upstream session (session era) on shutdown, and the
    /// session lane's.
    pub async fn close(&self) {
        if let Some(Some(lane)) = self.session_lane.get() {
            Box::pin(lane.close()).await;
        }
        let era = (**self.era.load()).clone();
        if let Era::Session {
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

/// What a `tools/call` carries to the upstream, as JSON texts.
pub struct CallParts<'a> {
    pub name: &'a str,
    pub arguments: Option<&'a str>,
    /// The caller's `_meta` entries other than the era envelope.
    pub meta: &'a [(String, String)],
    /// Other params (`inputResponses`, `requestState`, …).
    pub extra: &'a [(String, String)],
    /// The caller's capabilities (stateless era), told to a stateless upstream.
    pub client_capabilities: Option<&'a str>,
    /// The identity assertion Dome signed for this call, and its header.
    pub assertion: Option<(&'a header::HeaderName, &'a str)>,
    /// A session-era caller's log level, told to a stateless upstream (a
    /// stateless caller's own is among its `meta`).
    pub log_level: Option<&'a str>,
    /// Whose call it is, for the agent's share of the upstream's slots
    /// (see [`Upstream::request_as`]).
    pub agent: Option<u32>,
}

/// The JSON text of a `tools/call` request, written straight into one
/// buffer: the caller's arguments and `_meta` values are already JSON text.
pub fn call_body(id: u64, call: &CallParts<'_>, stateless_version: Option<&str>) -> String {
    let CallParts {
        name,
        arguments,
        meta,
        extra,
        client_capabilities,
        log_level,
        ..
    } = *call;
    use std::fmt::Write as _;
    // Sized for the whole body, so it is never grown: the fixed parts,
    // Dome's client info and the caller's texts.
    let texts = arguments.map_or(0, str::len)
        + client_capabilities.map_or(0, str::len)
        + meta
            .iter()
            .chain(extra)
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    let mut b = String::with_capacity(256 + client_info_entry().len() + name.len() + texts);
    let _ = write!(
        b,
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":"
    );
    push_json_str(&mut b, name);
    if let Some(a) = arguments {
        b.push_str(",\"arguments\":");
        b.push_str(a);
    }
    for (k, v) in extra {
        b.push(',');
        push_json_str(&mut b, k);
        b.push(':');
        b.push_str(v);
    }
    if meta.is_empty() && stateless_version.is_none() {
        b.push_str("}}");
        return b;
    }
    b.push_str(",\"_meta\":{");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        push_json_str(&mut b, k);
        b.push(':');
        b.push_str(v);
    }
    if let Some(v) = stateless_version {
        if !meta.is_empty() {
            b.push(',');
        }
        push_json_str(&mut b, protocol::META_PROTOCOL_VERSION);
        b.push(':');
        push_json_str(&mut b, v);
        b.push(',');
        push_json_str(&mut b, protocol::META_CLIENT_CAPABILITIES);
        b.push(':');
        b.push_str(client_capabilities.unwrap_or("{}"));
        b.push(',');
        b.push_str(client_info_entry());
        if let Some(level) = log_level
            && !meta.iter().any(|(k, _)| k == protocol::META_LOG_LEVEL)
        {
            b.push(',');
            push_json_str(&mut b, protocol::META_LOG_LEVEL);
            b.push(':');
            push_json_str(&mut b, level);
        }
    }
    b.push_str("}}}");
    b
}

/// `"…/clientInfo":{"name":"dome","version":…}`, made once.
fn client_info_entry() -> &'static str {
    static ENTRY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENTRY.get_or_init(|| {
        let mut e = String::new();
        push_json_str(&mut e, protocol::META_CLIENT_INFO);
        e.push(':');
        e.push_str(&protocol::implementation().to_string());
        e
    })
}

/// `s` as a JSON string literal, appended to `out` (no intermediate value).
fn push_json_str(out: &mut String, s: &str) {
    // Plain names (the common case) need no escaping.
    if s.bytes()
        .all(|c| c >= 0x20 && c != b'"' && c != b'\\' && c < 0x7f)
    {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&Value::String(s.to_string()).to_string());
    }
}

fn stateless_meta(version: &str) -> Value {
    json!({
        protocol::META_PROTOCOL_VERSION: version,
        protocol::META_CLIENT_CAPABILITIES: {},
        protocol::META_CLIENT_INFO: protocol::implementation(),
    })
}

fn finish(
    name: &str,
    reply: Reply,
    id: u64,
    status: StatusCode,
) -> Result<(Reply, u64), UpstreamError> {
    match (&reply, status) {
        (_, s) if s.is_success() => Ok((reply, id)),
        // JSON-RPC errors come with 4xx in the stateless era: still a reply.
        (Reply::Raw(b), _) if ResponseParts::of(b).is_some() => Ok((reply, id)),
        (Reply::Json(v), _) if v.get("error").is_some() || v.get("result").is_some() => {
            Ok((reply, id))
        }
        (_, s) => Err(UpstreamError::Status(name.into(), s.as_u16())),
    }
}

async fn read_reply(
    up: &Upstream,
    resp: Response<super::pool::Body>,
    held: Held<'_>,
) -> Result<Reply, UpstreamError> {
    let name = up.name();
    match read_reply_raw(up, resp, held).await? {
        Reply::Raw(body) if body.is_empty() => Ok(Reply::Json(Value::Null)),
        Reply::Raw(body) => serde_json::from_slice(&body)
            .map(Reply::Json)
            .map_err(|e| UpstreamError::Invalid(name.into(), format!("not JSON: {e}"))),
        other => Ok(other),
    }
}

/// The reply in `resp`: a stream as it is (what the request held is let
/// go), else its whole body, read by the exchange's deadline (an upstream
/// sending its body slowly keeps neither the slot nor the call past it:
/// the connection is dropped and the caller told it timed out).
async fn read_reply_raw(
    up: &Upstream,
    resp: Response<super::pool::Body>,
    held: Held<'_>,
) -> Result<Reply, UpstreamError> {
    let name = up.name();
    let max = up.config.max_response_bytes;
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if is_sse {
        // A stream may last as long as its upstream keeps it going, but
        // not go quiet for longer than its idle timeout.
        let mut resp = resp;
        resp.body_mut().idle_timeout(up.config.stream_idle());
        return Ok(Reply::Stream(resp));
    }
    let too_big = || {
        UpstreamError::Invalid(
            name.into(),
            format!("a response over {max} bytes (max_response_bytes)"),
        )
    };
    // Refused before reading when the length says so; else counted as it
    // comes (dropping the body closes the connection).
    if resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return Err(too_big());
    }
    // Charged against every call's buffered answers: the length it declares
    // at once, else each piece as it comes. Over the budget, the answer is
    // dropped (and its connection with it).
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let mut charge = Charge::default();
    if let Some(n) = declared
        && !charge.grow(n)
    {
        return Err(UpstreamError::Overloaded(name.into()));
    }
    let mut body = resp.into_body();
    let mut buf = bytes::BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| UpstreamError::Unreachable(name.into(), e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(too_big());
            }
            if declared.is_none() && !charge.grow(data.len()) {
                return Err(UpstreamError::Overloaded(name.into()));
            }
            if buf.is_empty() && data.len() == declared.unwrap_or(usize::MAX) {
                // The whole answer in one piece (the usual case): no copy.
                return Ok(Some(data));
            }
            buf.extend_from_slice(&data);
        }
        Ok(None)
    };
    let whole = tokio::time::timeout_at(held.deadline, read)
        .await
        .map_err(|_| UpstreamError::Timeout(name.into()))??;
    drop(held);
    let body = whole.unwrap_or_else(|| buf.freeze());
    // The charge lasts as long as the bytes do.
    Ok(Reply::Raw(Bytes::from_owner(Charged {
        bytes: body,
        _charge: charge,
    })))
}

/// What every stateless-era result carries.
pub const RESULT_TYPE: &str = "\"resultType\":\"complete\"";
/// What a stateless-era cacheable result (lists, reads) carries besides:
/// private and stale at once, since Dome's view is per caller.
pub const CACHEABLE: &str = "\"resultType\":\"complete\",\"ttlMs\":0,\"cacheScope\":\"private\"";

/// A JSON-RPC response seen without building a tree: its `result` or
/// `error` as raw JSON text borrowed from the body.
#[derive(serde::Deserialize)]
pub struct ResponseParts<'a> {
    #[serde(borrow, default)]
    pub result: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a serde_json::value::RawValue>,
}

impl<'a> ResponseParts<'a> {
    pub fn of(body: &'a [u8]) -> Option<Self> {
        let p: ResponseParts<'a> = serde_json::from_slice(body).ok()?;
        (p.result.is_some() || p.error.is_some()).then_some(p)
    }

    /// The error's code, if this is an error response.
    pub fn error_code(&self) -> Option<i64> {
        #[derive(serde::Deserialize)]
        struct Code {
            code: i64,
        }
        serde_json::from_str::<Code>(self.error?.get())
            .ok()
            .map(|c| c.code)
    }

    /// The response re-addressed to `id`, as JSON text. `fields` (JSON
    /// members, e.g. `"resultType":"complete"`) are added to a result object:
    /// what a stateless-era caller needs from a session-era upstream's answer.
    /// The text is one buffer, handed on as the response body uncopied.
    pub fn readdressed(&self, id: &Value, fields: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + fields.len() + self.result.or(self.error).map_or(0, |r| r.get().len()),
        );
        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        // Writing a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, id);
        match (self.result, self.error) {
            (Some(r), _) => {
                out.extend_from_slice(b",\"result\":");
                let raw = r.get().trim_start();
                match raw.strip_prefix('{') {
                    Some(rest) if !fields.is_empty() => {
                        out.push(b'{');
                        out.extend_from_slice(fields.as_bytes());
                        if !rest.trim_start().starts_with('}') {
                            out.push(b',');
                        }
                        out.extend_from_slice(rest.as_bytes());
                    }
                    _ => out.extend_from_slice(raw.as_bytes()),
                }
            }
            (None, Some(e)) => {
                out.extend_from_slice(b",\"error\":");
                out.extend_from_slice(e.get().as_bytes());
            }
            (None, None) => out.extend_from_slice(b",\"result\":{}"),
        }
        out.push(b'}');
        out
    }
}

/// Why a streamed answer broke off: it went quiet past its idle timeout
/// (a timeout, like any other), or its connection failed.
pub fn stream_error(name: &str, e: &std::io::Error) -> UpstreamError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        UpstreamError::Timeout(name.into())
    } else {
        UpstreamError::Unreachable(name.into(), e.to_string())
    }
}

/// Reads an SSE reply to its JSON-RPC response, dropping notifications.
pub async fn first_response(
    up: &Upstream,
    resp: Response<super::pool::Body>,
) -> Result<Value, UpstreamError> {
    let name = up.name();
    let mut body = resp.into_body();
    let mut parser = up.sse_parser();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| stream_error(name, &e))?;
        if let Some(data) = frame.data_ref() {
            parser
                .push(data)
                .map_err(|e| UpstreamError::Invalid(name.into(), e))?;
            while let Some(ev) = parser.next_event() {
                if let Ok(v) = serde_json::from_str::<Value>(&ev)
                    && (v.get("result").is_some() || v.get("error").is_some())
                {
                    return Ok(v);
                }
            }
        }
    }
    Err(UpstreamError::Invalid(
        name.into(),
        "the stream ended without a response".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
