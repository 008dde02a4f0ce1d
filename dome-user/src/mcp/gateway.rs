//! The MCP endpoint agents talk to (`POST/GET/DELETE /mcp`), in both eras:
//! the session era (`initialize`, `Mcp-Session-Id`) and the stateless era
//! (`server/discover`, per-request `_meta`, routing headers). Each request
//! goes through the phases in order — parse, (authenticate, budget, decide:
//! the identity and policy issues hook in at `admit`), forward, (filter
//! response), respond — and a client's mistake is answered with its JSON-RPC
//! code, never a 500.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, RwLock},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderMap},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    identity::{
        authn::{self, Caller},
        escalation::Subject,
    },
    stats::metrics::{Metrics, RequestRecord},
};

use super::{
    catalog::{self, Catalog, Kind},
    envelope::{self, Envelope, EnvelopeError, Meta, Parsed},
    protocol::{self, code},
    sse::{self, SseParser},
    upstream::{Reply, Upstream},
};

pub type Body = BoxBody<Bytes, Infallible>;

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
// A client keeps one GET or listen stream per session or subscription set;
// a hundred leaves room for a runtime sharing one agent id, and keeps one
// agent's streams (each a task, a channel and a socket) from growing
// without end.
fn default_streams_per_agent() -> usize {
    100
}
// Sixteen answers of the default max_response_bytes, or thousands of
// ordinary ones, at once.
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
/// The most `max_json_depth` may be: recursive walks of a message (its
/// re-encoding, policy's, redaction's) run on worker threads' stacks.
pub const MAX_JSON_DEPTH_LIMIT: usize = 1024;

/// Milliseconds on the monotonic clock: when sessions were last used.
fn mono_ms() -> u64 {
    crate::clock::monotonic_ns() / 1_000_000
}

/// Ids Dome gives the upstreams' requests to clients.
static NEXT_SERVER_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Session {
    id: String,
    version: &'static str,
    /// The client's GET stream, for messages no request of its own carries.
    push: std::sync::Mutex<Option<Push>>,
    /// Upstream requests relayed to this client, by the id Dome gave them
    /// (JSON text): which upstream asked, and its id for the request.
    server_requests: std::sync::Mutex<HashMap<String, (Arc<Upstream>, Value)>>,
    /// Calls in flight, by the client's request id (JSON text): where they
    /// went, so `notifications/cancelled` reaches the right upstream request,
    /// and the relay that stops answering it.
    inflight: std::sync::Mutex<HashMap<String, InflightCall>>,
    /// What the client declared at `initialize` (JSON text): a stateless
    /// upstream is told, so it knows what it may ask for.
    capabilities: Option<String>,
    /// Requests Dome itself sent this client (a stateless upstream's
    /// `input_required` round), by Dome's id (JSON text): where the answer goes.
    local_requests: std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<Value>>>,
    /// Who opened the session: every later request must be the same agent
    /// (and is vouched for upstream as that agent and user).
    caller: Option<Caller>,
    /// The lowest log level the client wants (an index into `LOG_LEVELS`),
    /// set by its `logging/setLevel`; everything until it does.
    log_floor: std::sync::atomic::AtomicUsize,
    /// When the client last used the session (`mono_ms`).
    last_used: std::sync::atomic::AtomicU64,
    /// The GET stream's count against its agent's streams: let go when the
    /// stream is replaced or the session ends (its body holds it too).
    push_slot: std::sync::Mutex<Option<StreamSlot>>,
}

/// One open stream counted against its agent's share
/// (`max_streams_per_agent`) while every handle of it lives: the body
/// that carries it, and for a GET stream its session. The first handle
/// dropped lets it go.
struct StreamSlot(Arc<StreamCount>);

struct StreamCount {
    table: std::sync::Weak<SessionTable>,
    agent: u32,
    released: std::sync::atomic::AtomicBool,
}

impl StreamSlot {
    fn handle(&self) -> StreamSlot {
        StreamSlot(self.0.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self
            .0
            .released
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        if let Some(table) = self.0.table.upgrade() {
            let mut m = table
                .stream_shard(self.0.agent)
                .lock()
                .expect("streams lock");
            if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(self.0.agent) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

const STREAM_SHARDS: usize = 16;

impl Session {
    fn last_used(&self) -> u64 {
        self.last_used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the client holds something of the session open: its GET
    /// stream, or a call in flight.
    fn busy(&self) -> bool {
        self.push
            .lock()
            .expect("push lock")
            .as_ref()
            .is_some_and(|p| !p.is_closed())
            || !self.inflight.lock().expect("inflight lock").is_empty()
    }
}

/// A session-era call in flight: the upstream and its id for the call,
/// and where a client's `notifications/cancelled` is announced to the relay.
#[derive(Clone)]
struct InflightCall {
    upstream: Arc<Upstream>,
    uid: u64,
    /// Notified once the client cancelled: the relay stops, answers nothing
    /// (a cancelled request gets no response, as the specification asks)
    /// and records the call cancelled rather than failed.
    cancelled: Arc<tokio::sync::Notify>,
}

/// Removes a call from its session's in-flight table when dropped.
struct Inflight {
    session: Arc<Session>,
    key: String,
    cancelled: Arc<tokio::sync::Notify>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.session
            .inflight
            .lock()
            .expect("inflight lock")
            .remove(&self.key);
    }
}

/// Downstream sessions and listen streams. Shared by successive gateways,
/// so a config reload keeps every session and stream.
#[derive(Default)]
pub struct SessionTable {
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Subscribed session ids by resource URI (session era).
    subscriptions: std::sync::Mutex<HashMap<String, std::collections::HashSet<String>>>,
    /// Open `subscriptions/listen` streams (stateless era), by a key of Dome's.
    listens: std::sync::Mutex<HashMap<u64, Listen>>,
    /// Calls waiting for a stateless caller's input, by the token in the
    /// `requestState` it was given (see `input`).
    parked: std::sync::Mutex<HashMap<String, (Instant, super::input::Parked)>>,
    /// Set when Dome shuts down: the streams that would never end close.
    closing: tokio::sync::watch::Sender<bool>,
    /// Open streams per agent (`agent_key`), sharded.
    streams: [std::sync::Mutex<HashMap<u32, u32>>; STREAM_SHARDS],
}

/// One client's `subscriptions/listen` stream: what it asked for (and
/// Dome honored) and where its notifications go.
struct Listen {
    /// The listen request's id, stamped on every message of the stream.
    id: Value,
    filter: ListenFilter,
    push: Push,
}

#[derive(Default)]
struct ListenFilter {
    tools: bool,
    prompts: bool,
    resources: bool,
    uris: std::collections::HashSet<String>,
}

impl ListenFilter {
    fn admits(&self, method: &str, uri: &str) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            "notifications/resources/updated" => self.uris.contains(uri),
            _ => false,
        }
    }

    fn to_json(&self) -> Value {
        let mut f = serde_json::Map::new();
        for (on, key) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
            (self.resources, "resourcesListChanged"),
        ] {
            if on {
                f.insert(key.into(), true.into());
            }
        }
        if !self.uris.is_empty() {
            let mut uris: Vec<&String> = self.uris.iter().collect();
            uris.sort();
            f.insert("resourceSubscriptions".into(), json!(uris));
        }
        Value::Object(f)
    }
}

static NEXT_LISTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

type Push = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

impl SessionTable {
    pub fn new() -> Arc<Self> {
        Arc::new(SessionTable::default())
    }

    fn stream_shard(&self, agent: u32) -> &std::sync::Mutex<HashMap<u32, u32>> {
        &self.streams[agent as usize % STREAM_SHARDS]
    }

    /// Counts one more open stream of `agent`'s, unless it holds `cap`.
    fn open_stream_slot(self: &Arc<Self>, agent: u32, cap: usize) -> Option<StreamSlot> {
        let mut m = self.stream_shard(agent).lock().expect("streams lock");
        let n = m.entry(agent).or_default();
        if *n as usize >= cap.max(1) {
            return None;
        }
        *n += 1;
        Some(StreamSlot(Arc::new(StreamCount {
            table: Arc::downgrade(self),
            agent,
            released: false.into(),
        })))
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .read()
            .expect("sessions lock")
            .get(id)
            .cloned()
    }

    /// The session `id` if the current caller opened it: another agent's
    /// session id is as good as none, whatever it asks of the session
    /// (a request, its GET stream, ending it).
    fn owned(&self, id: &str) -> Option<Arc<Session>> {
        let s = self
            .get(id)
            .filter(|s| same_agent(s.caller.as_ref(), current_caller().as_ref()))?;
        s.last_used
            .store(mono_ms(), std::sync::atomic::Ordering::Relaxed);
        Some(s)
    }

    /// The sessions unused for `idle_ms` by `now` (`mono_ms`) that hold
    /// nothing open.
    fn idle(&self, now: u64, idle_ms: u64) -> Vec<String> {
        self.sessions
            .read()
            .expect("sessions lock")
            .values()
            .filter(|s| now.saturating_sub(s.last_used()) >= idle_ms && !s.busy())
            .map(|s| s.id.clone())
            .collect()
    }

    /// The sessions to end so that `caller`'s agent, about to open one
    /// more, holds at most `cap`: its least recently used first.
    fn over_cap(&self, caller: Option<&Caller>, cap: usize) -> Vec<String> {
        let sessions = self.sessions.read().expect("sessions lock");
        let mut own: Vec<(u64, &String)> = sessions
            .values()
            .filter(|s| same_agent(s.caller.as_ref(), caller))
            .map(|s| (s.last_used(), &s.id))
            .collect();
        let over = (own.len() + 1).saturating_sub(cap.max(1));
        if over == 0 {
            return Vec::new();
        }
        own.sort_unstable();
        own.into_iter()
            .take(over)
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn pushes(&self, ids: Option<&std::collections::HashSet<String>>) -> Vec<Push> {
        let sessions = self.sessions.read().expect("sessions lock");
        sessions
            .iter()
            .filter(|(id, _)| ids.is_none_or(|set| set.contains(*id)))
            .filter_map(|(_, s)| s.push.lock().expect("push lock").clone())
            .collect()
    }

    /// Routes a notification an upstream sent on its own stream (a session
    /// era GET stream or Dome's listen stream): a resource update to the
    /// sessions and listen streams that asked for that URI only; list
    /// changes to every session and to the listen streams that asked for
    /// that kind. A log message that belongs to no request could concern
    /// any tenant's call: it goes to Dome's log, not to every client.
    pub fn route_upstream_notification(&self, upstream: &str, v: &Value) {
        let method = v["method"].as_str().unwrap_or_default();
        let uri = v["params"]["uri"].as_str().unwrap_or_default();
        let targets = match method {
            "notifications/resources/updated" => {
                let subs = self
                    .subscriptions
                    .lock()
                    .expect("subscriptions lock")
                    .get(uri)
                    .cloned();
                match subs {
                    Some(set) => self.pushes(Some(&set)),
                    None => Vec::new(),
                }
            }
            m if m.ends_with("/list_changed") => self.pushes(None),
            "notifications/message" => {
                tracing::info!(
                    upstream,
                    level = v["params"]["level"].as_str().unwrap_or("-"),
                    logger = v["params"]["logger"].as_str().unwrap_or("-"),
                    data = %v["params"]["data"],
                    "an upstream logged on its own stream"
                );
                Vec::new()
            }
            _ => Vec::new(),
        };
        let event = sse::event(&v.to_string());
        for push in targets {
            // A full or closed stream loses this notification, never blocks the upstream's.
            let _ = push.try_send(Ok(Frame::data(event.clone())));
        }
        let listens = self.listens.lock().expect("listens lock");
        for l in listens.values().filter(|l| l.filter.admits(method, uri)) {
            let mut stamped = v.clone();
            stamped["params"]["_meta"][protocol::META_SUBSCRIPTION_ID] = l.id.clone();
            let _ = l
                .push
                .try_send(Ok(Frame::data(sse::event(&stamped.to_string()))));
        }
    }

    /// Records that `session` is (`on`) or is no longer subscribed to
    /// `uri`; true when that changed anything.
    fn subscribe(&self, uri: &str, session: &str, on: bool) -> bool {
        let mut subs = self.subscriptions.lock().expect("subscriptions lock");
        let set = subs.entry(uri.to_string()).or_default();
        let changed = if on {
            set.insert(session.to_string())
        } else {
            set.remove(session)
        };
        if set.is_empty() {
            subs.remove(uri);
        }
        changed
    }

    /// Parks a call until the caller's retry; returns the `input_required`
    /// result that asks for its input. Calls parked too long are dropped
    /// (which cancels them upstream).
    fn park(&self, call: super::input::Parked) -> Value {
        let token = new_session_id();
        let result = super::input::input_required(&call.asks, &token);
        let now = Instant::now();
        self.drop_expired_parked(now);
        self.parked
            .lock()
            .expect("parked lock")
            .insert(token, (now, call));
        result
    }

    /// At shutdown: ends every session's GET stream and every listen
    /// stream, which would otherwise keep their connections open to the
    /// end of the grace period (calls in flight finish as usual).
    pub fn close_streams(&self) {
        let _ = self.closing.send(true);
        for s in self.sessions.read().expect("sessions lock").values() {
            s.push.lock().expect("push lock").take();
            s.push_slot.lock().expect("push slot lock").take();
        }
    }

    /// Drops the parked calls no retry took in time, closing the upstream
    /// streams they hold.
    fn drop_expired_parked(&self, now: Instant) {
        self.parked
            .lock()
            .expect("parked lock")
            .retain(|_, (at, _)| now.duration_since(*at) < super::input::PARK_TTL);
    }

    /// Ends a session; returns the URIs it was subscribed to.
    fn remove(&self, id: &str) -> Option<Vec<String>> {
        self.sessions.write().expect("sessions lock").remove(id)?;
        let mut subs = self.subscriptions.lock().expect("subscriptions lock");
        let mut uris = Vec::new();
        subs.retain(|uri, set| {
            if set.remove(id) {
                uris.push(uri.clone());
            }
            !set.is_empty()
        });
        Some(uris)
    }

    pub fn len(&self) -> usize {
        self.sessions.read().expect("sessions lock").len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
struct RefreshState {
    running: tokio::sync::Mutex<()>,
    /// Listings completed.
    generation: std::sync::atomic::AtomicU64,
    /// When the last began (`mono_ms`).
    started_ms: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct RetryState {
    running: std::sync::atomic::AtomicBool,
    attempts: std::sync::atomic::AtomicU32,
    next_ms: std::sync::atomic::AtomicU64,
}

/// The gateway: upstreams, the current catalog and the downstream sessions.
pub struct Gateway {
    config: McpConfig,
    upstreams: Vec<Arc<Upstream>>,
    /// One catalog per kind (`Kind::index`).
    catalogs: [arc_swap::ArcSwap<Catalog>; 4],
    /// One listing at a time per kind, and how recent the last is.
    refreshes: [RefreshState; 4],
    /// When failed upstreams are listed again.
    retry: RetryState,
    sessions: Arc<SessionTable>,
    metrics: Arc<Metrics>,
    body_timeout: std::time::Duration,
    identity: Arc<Identity>,
}

/// Who may call and how Dome vouches for them upstream.
pub struct Identity {
    pub registry: Arc<crate::identity::registry::Registry>,
    pub signer: Arc<crate::identity::assertion::Signer>,
    /// Every request must authenticate.
    pub required: bool,
    /// The MCP endpoint's public URL (RFC 9728 `resource`).
    pub resource: String,
    pub escalation: Arc<crate::identity::escalation::Escalation>,
    /// The kernel tier, when attached: authenticated flows are bound there.
    pub tier: Option<Arc<crate::xdp::KernelTier>>,
    /// The packet and byte budget an agent's identity slot gets.
    pub kernel_budget: crate::xdp::BudgetSpec,
    /// Tenants' identity providers, for bearer tokens.
    pub jwt: Arc<crate::identity::jwt::Verifier>,
    /// The policy in force.
    pub policy: Arc<crate::policy::compile::Policy>,
    /// Every activated policy version.
    pub policy_store: Arc<crate::policy::store::PolicyStore>,
    /// A candidate policy judged beside the active one, never enforced.
    pub shadow: Option<Arc<crate::policy::compile::Policy>>,
    /// Where every call's record goes.
    pub audit: Arc<crate::audit::Trail>,
    /// Budgets set by policy rules (their `budget` obligation).
    pub rule_budgets: Arc<crate::identity::budget::RuleBudgets>,
}

/// What an allowing decision asks of the call.
#[derive(Default)]
struct Allowed {
    /// Redaction of the result.
    redaction: Option<Redaction>,
    /// The rule's budget for this agent × tool, instead of the configured one.
    budget: Option<crate::identity::budget::Rate>,
}

/// Shadow decisions that differed from the active policy's, since start.
pub static SHADOW_DISAGREEMENTS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
/// Calls the shadow policy judged, since start.
pub static SHADOW_DECISIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Policy argument paths the tools' input schemas cannot hold (refreshed
/// with the tool catalog; shown on `/stats`).
pub static SCHEMA_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Items each kind's catalog left out, and why (`/stats`): a clash, a
/// name in another upstream's namespace, an invalid name.
pub static CATALOG_CONFLICTS: std::sync::Mutex<[Vec<Value>; 4]> =
    std::sync::Mutex::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()]);

impl Identity {
    /// Where the protected-resource metadata is (RFC 9728): the well-known
    /// path at the resource's origin.
    fn metadata_url(&self) -> String {
        let origin = match self.resource.find("://") {
            Some(i) => match self.resource[i + 3..].find('/') {
                Some(j) => &self.resource[..i + 3 + j],
                None => self.resource.as_str(),
            },
            None => self.resource.as_str(),
        };
        format!("{origin}{METADATA_PATH}")
    }
}

const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// `params._meta` key of the caller's stated intent (carried in the assertion).
pub const INTENT_META: &str = "dome/intent";

use crate::audit::Call;
use crate::audit::call::phase as audit_phase;
const JWKS_PATH: &str = "/.well-known/jwks.json";

/// What `/stats` learns of one request: its method label and JSON-RPC
/// error code, noted where they become known.
#[derive(Default)]
struct Tally {
    method: &'static str,
    rpc_error: Option<i64>,
    parse: Option<std::time::Duration>,
    auth: Option<std::time::Duration>,
    policy: Option<std::time::Duration>,
    /// (upstream, tool, time to the upstream's answer).
    upstream: Option<(Arc<str>, Arc<str>, std::time::Duration)>,
    /// The request body's size.
    bytes_in: u64,
    /// The audit record of the call this request makes (more than one
    /// only in a 2025-03-26 batch).
    call: Option<Call>,
    more_calls: Vec<Call>,
}

/// Hands the call's record to the request that is answering it (finished
/// in `handle` once the response is known). Outside a request (a spawned
/// task) the record is committed at once.
fn stash(call: Call) {
    let mut call = Some(call);
    let _ = TALLY.try_with(|t| {
        let mut t = t.borrow_mut();
        if let Some(prev) = t.call.take() {
            t.more_calls.push(prev);
        }
        t.call = call.take();
    });
    // Not abandoned (a dropped record without an outcome is): ended as
    // `commit_calls` would end it.
    if let Some(c) = call.as_mut()
        && c.outcome.is_none()
    {
        c.outcome = Some(crate::audit::record::Outcome::Ok);
    }
}

/// A committed record to wait for: its trail, its ticket, and the
/// request's JSON-RPC id (to answer with if the wait fails).
type Committed = (Arc<crate::audit::trail::Trail>, u64, Option<Value>);

/// Commits the records of the calls a request made, with the outcome and
/// size the answer gives them.
fn commit_calls(tally: &mut Tally, resp: &Response<Body>) -> Option<Committed> {
    use crate::audit::record::Outcome;
    let mut call = tally.call.take()?;
    let mut last = None;
    for mut c in std::mem::take(&mut tally.more_calls) {
        if c.outcome.is_none() {
            c.outcome = Some(Outcome::Ok);
        }
        last = c.commit().or(last);
    }
    call.bytes_out = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    if call.status.is_none()
        && let Some(code) = tally.rpc_error
    {
        call.status = Some(code as i32);
        call.outcome = Some(Outcome::Error);
    }
    if call.outcome.is_none() {
        call.outcome = Some(Outcome::Ok);
    }
    let id = call.rpc_id.take();
    let (trail, ticket) = call.commit().or(last)?;
    Some((trail, ticket, id))
}

/// Takes the current call's record back (its answer streams on after the
/// request returns).
fn unstash() -> Option<Call> {
    TALLY
        .try_with(|t| t.borrow_mut().call.take())
        .ok()
        .flatten()
}

/// A session-era caller's request that a stateless upstream answered
/// `input_required`: what `Gateway::fulfil` asks the caller for and sends
/// again.
struct Asked {
    session: Arc<Session>,
    e: Envelope,
    /// `tools/call`, or one of [`input_method`]'s.
    method: &'static str,
    /// The caller's id for it.
    id: Value,
}

/// The methods besides `tools/call` whose answer may be `input_required`
/// (the schema allows it for prompts and reads; completion is taken
/// alike, should an upstream ask there), as a static name.
fn input_method(method: &str) -> Option<&'static str> {
    match method {
        "prompts/get" => Some("prompts/get"),
        "resources/read" => Some("resources/read"),
        "completion/complete" => Some("completion/complete"),
        _ => None,
    }
}

/// The request `e` of `method` again, with the client's `answers` to the
/// upstream's requests and the upstream's `state`, in place of any it had.
fn with_answers(
    e: &Envelope,
    method: &str,
    answers: serde_json::Map<String, Value>,
    state: Option<&Value>,
) -> Envelope {
    let mut again = e.clone();
    if method == "tools/call" {
        again
            .extra_params
            .retain(|(k, _)| k != "inputResponses" && k != "requestState");
        again
            .extra_params
            .push(("inputResponses".into(), Value::Object(answers).to_string()));
        if let Some(state) = state {
            again
                .extra_params
                .push(("requestState".into(), state.to_string()));
        }
        return again;
    }
    // Other methods pass their whole `params` on.
    let mut params: serde_json::Map<String, Value> = e
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    params.remove("requestState");
    params.insert("inputResponses".into(), Value::Object(answers));
    if let Some(state) = state {
        params.insert("requestState".into(), state.clone());
    }
    again.params = Some(Value::Object(params).to_string());
    again
}

/// What the caller can answer (JSON text): a stateless caller says so with
/// each request, a session's client did at `initialize`.
fn caller_capabilities<'a>(e: &'a Envelope, session: Option<&'a Arc<Session>>) -> Option<&'a str> {
    e.client_capabilities
        .as_deref()
        .or_else(|| session.and_then(|s| s.capabilities.as_deref()))
}

/// Applies `f` to the current call's record, if any.
fn with_call(f: impl FnOnce(&mut Call)) {
    let _ = TALLY.try_with(|t| {
        if let Some(c) = t.borrow_mut().call.as_mut() {
            f(c)
        }
    });
}

/// How a result ended, from its JSON text, when not plainly: the tool's
/// `isError`, or the upstream waiting for the caller's input (a quote inside
/// a JSON string is escaped, so these keys can only be keys).
fn result_outcome(text: &[u8]) -> Option<crate::audit::record::Outcome> {
    use crate::audit::record::Outcome;
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // memchr's SIMD search (the answer is scanned on every call), its
    // searchers built once.
    static IS_ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"isError\""));
    static RESULT_TYPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"resultType\""));
    // The value after `"key":`, spaces skipped.
    let after = |key: &Finder<'static>| {
        key.find(text).map(|i| {
            let rest = &text[i + key.needle().len()..];
            let skip = rest.iter().take_while(|b| matches!(b, b' ' | b':')).count();
            &rest[skip..]
        })
    };
    if after(&IS_ERROR).is_some_and(|v| v.starts_with(b"true")) {
        Some(Outcome::ToolError)
    } else if after(&RESULT_TYPE).is_some_and(|v| v.starts_with(b"\"input_required\"")) {
        Some(Outcome::InputRequired)
    } else {
        None
    }
}

tokio::task_local! {
    /// Boxed: a task-local is swapped in and out of its thread slot on
    /// every poll, so it should be a pointer, not the whole tally.
    static TALLY: std::cell::RefCell<Box<Tally>>;
    /// Who sent the request being served.
    static CTX: RequestCtx;
}

#[derive(Clone, Default)]
struct RequestCtx {
    /// The authenticated caller (`None`: anonymous, allowed only when
    /// `[auth] required = false`).
    caller: Option<Caller>,
    /// The client's address.
    source: Option<std::net::IpAddr>,
    /// The `Dome-Intent` header, when the caller states its intent there.
    intent: Option<String>,
    /// When the request arrived.
    arrived: Option<Instant>,
    /// The W3C trace id of the caller's `traceparent`.
    trace: Option<String>,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}

fn current_caller() -> Option<Caller> {
    CTX.try_with(|c| c.caller.clone()).ok().flatten()
}

fn note_method(m: &'static str) {
    let _ = TALLY.try_with(|t| t.borrow_mut().method = m);
}

fn method_label(m: &str) -> &'static str {
    match m {
        "initialize" => "initialize",
        "ping" => "ping",
        "tools/list" => "tools/list",
        "tools/call" => "tools/call",
        "server/discover" => "server/discover",
        _ => "other",
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    if let Some(c) = v["error"]["code"].as_i64() {
        let _ = TALLY.try_with(|t| t.borrow_mut().rpc_error = Some(c));
    }
    json_body(status, Bytes::from(v.to_string()))
}

/// A JSON response (built directly: no builder, no header parsing).
fn json_body(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON body already written as text.
fn raw_json_response(
    status: StatusCode,
    text: impl Into<Bytes>,
    rpc_error: Option<i64>,
) -> Response<Body> {
    if let Some(c) = rpc_error {
        let _ = TALLY.try_with(|t| t.borrow_mut().rpc_error = Some(c));
    }
    json_body(status, text.into())
}

/// (HTTP status, the answer's JSON text, its JSON-RPC error code if any).
type Readdressed = (StatusCode, Vec<u8>, Option<i64>);

/// An upstream's `tools/call` answer re-addressed to the caller's `id`,
/// without building a tree of it: (HTTP status, JSON text, error code).
fn readdress(
    era: Era,
    upstream: &Upstream,
    id: &Value,
    reply: Reply,
    method: &str,
) -> Result<Readdressed, (i64, String)> {
    let stateless_caller = era == Era::Stateless;
    let mut bytes = match reply {
        Reply::Raw(b) => b,
        Reply::Json(mut v) => {
            protocol::fit_to_era(&mut v, stateless_caller);
            Bytes::from(v.to_string())
        }
        Reply::Stream(_) => unreachable!("streams are relayed"),
    };
    // A stateless upstream's answer to a session-era caller loses what that
    // era lacks, and every answer the upstream's `serverInfo`: read as a
    // tree only then (the search: 10-12 ns on a 231-byte answer, memchr
    // 2.8 on this machine).
    {
        use memchr::memmem::Finder;
        use std::sync::LazyLock;
        static SERVER_INFO: LazyLock<Finder<'static>> =
            LazyLock::new(|| Finder::new(protocol::META_SERVER_INFO));
        let refit = (!stateless_caller && upstream.speaks_stateless())
            || SERVER_INFO.find(&bytes).is_some();
        if refit
            && !envelope::nests_deeper(&bytes, envelope::DEFAULT_MAX_DEPTH)
            && let Ok(mut v) = serde_json::from_slice::<Value>(&bytes)
            && protocol::fit_to_era(&mut v, stateless_caller)
        {
            bytes = Bytes::from(v.to_string());
        }
    }
    // Relayed as text: a result nested 100,000 deep reached the caller,
    // whose parser it could take down.
    if envelope::nests_deeper(&bytes, envelope::DEFAULT_MAX_DEPTH) {
        return Err((
            code::UPSTREAM_UNAVAILABLE,
            format!(
                "upstream `{}` answered with JSON nested deeper than {} levels",
                upstream.name(),
                envelope::DEFAULT_MAX_DEPTH
            ),
        ));
    }
    let Some(parts) = super::upstream::ResponseParts::of(&bytes) else {
        return Err((
            code::UPSTREAM_UNAVAILABLE,
            format!(
                "upstream `{}` sent something that is not a JSON-RPC response",
                upstream.name()
            ),
        ));
    };
    let fields = if era == Era::Stateless && !upstream.speaks_stateless() {
        if method == "resources/read" {
            super::upstream::CACHEABLE
        } else {
            super::upstream::RESULT_TYPE
        }
    } else {
        ""
    };
    let code = parts.error_code();
    let status = match code {
        Some(c) if era == Era::Stateless => stateless_status(c),
        _ => StatusCode::OK,
    };
    Ok((status, parts.readdressed(id, fields), code))
}

/// An SSE response fed by `rx`, one event per frame, sent as it comes.
fn sse_response(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .expect("static parts")
}

/// As [`sse_response`], the stream counted against its agent while its
/// body lives (the client closing it, or Dome ending it, lets it go).
fn held_sse_response(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
    slot: StreamSlot,
) -> Response<Body> {
    sse_response(rx).map(|b| {
        b.map_frame(move |f| {
            let _held = &slot;
            f
        })
        .boxed()
    })
}

/// 429 for a stream beyond its agent's share.
fn too_many_streams(id: &Value, cap: usize) -> Response<Body> {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &rpc_error(
            id,
            code::RATE_LIMITED,
            format!(
                "this agent has {cap} streams open ([mcp] max_streams_per_agent); close one first"
            ),
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// 404 for a session id Dome does not know (never issued, or ended).
/// A call as policy sees it, for `caller` (anonymous when `None`).
fn policy_request<'a>(
    caller: Option<&'a Caller>,
    kind: &'a str,
    tool: &'a str,
    upstream: Option<&'a str>,
    intent: Option<&'a str>,
    args: Option<&'a Value>,
) -> crate::policy::compile::Request<'a> {
    crate::policy::compile::Request {
        tenant: caller.map(|c| c.agent.tenant.as_str()),
        agent: caller.map(|c| c.agent.id.as_str()),
        labels: caller.map_or(&[], |c| c.agent.labels.as_slice()),
        user: caller.and_then(|c| c.user.as_deref()),
        tool,
        kind,
        upstream,
        upstream_tool: None,
        intent,
        args,
    }
}

/// Header in which a caller may state its intent instead of `_meta`.
pub const H_INTENT: header::HeaderName = header::HeaderName::from_static("dome-intent");

/// The caller's stated intent: `params._meta["dome/intent"]`, else the
/// `Dome-Intent` header.
fn intent_of(e: &Envelope) -> Option<String> {
    e.dome_meta
        .iter()
        .find(|(k, _)| k == INTENT_META)
        .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
        .or_else(|| CTX.try_with(|c| c.intent.clone()).ok().flatten())
        // Blank is no intent: `" "` or a zero-width space met
        // `require_intent`.
        .filter(|i| {
            i.chars()
                .any(|c| !c.is_whitespace() && !crate::terminal::is_unsafe(c))
        })
}

/// Why a resource URI is refused, if it is: a path spelled other than
/// its plain form (an empty, `.` or `..` segment, or a percent-encoded
/// character that needs no encoding, `/` or `\\`) could be read by the
/// upstream as another resource than the one policy judged
/// (`file:///pub/../etc/secret` passed a deny rule on `file:///etc/*`).
fn uri_problem(kind: Kind, uri: &str) -> Option<String> {
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
const ARGUMENTS_RULE: &str = "params.arguments is an object";

/// Whether `text` (JSON) is arguments MCP allows: an object, or null.
fn arguments_ok(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') || t == "null"
}

/// The longest name (tool, prompt, resource URI) a call may give: every
/// record stores it.
pub const MAX_NAME_BYTES: usize = 2048;

/// Whether `text`, a JSON string as text, decodes to more than `max` bytes
/// (its text is never shorter than what it spells, so most are decided
/// without decoding).
fn json_str_over(text: &str, max: usize) -> bool {
    text.len() > max
        && serde_json::from_str::<String>(text).map_or(text.len() > max, |s| s.len() > max)
}

/// What MCP allows as a request's id.
const ID_RULE: &str = "a request id is a string or an integer (never null)";

/// Whether a request's id is one MCP allows: a string or an integer, or
/// none at all (a notification). Not null, unlike plain JSON-RPC.
fn request_id_ok(id: Option<&Value>) -> bool {
    match id {
        None | Some(Value::String(_)) => true,
        Some(Value::Number(n)) => n.is_i64() || n.is_u64(),
        Some(_) => false,
    }
}

/// The key a caller's requests are counted under in an upstream's
/// per-agent shares: its identity slot; callers without credentials share one.
fn agent_key(caller: Option<&Caller>) -> u32 {
    caller.map_or(super::upstream::ANONYMOUS_AGENT, |c| c.agent.slot)
}

fn same_agent(a: Option<&Caller>, b: Option<&Caller>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.agent.id == b.agent.id,
        _ => false,
    }
}

fn session_not_found(id: &Value) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &rpc_error(id, code::SESSION_NOT_FOUND, "unknown or ended session"),
    )
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()).boxed())
        .expect("static parts")
}

fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// `text` as an RFC 6750 `error_description`: printable ASCII without `"`
/// and `\\` (anything else becomes `?`).
fn challenge_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}

/// HTTP status for a JSON-RPC error in the stateless era: those the
/// 2026-07-28 transport names (400, and 404 for an unknown method), 503
/// when the trail cannot take the record, else 200.
///
/// A policy denial (-32005) and an over-budget or busy refusal (-32004)
/// are 200, as in the session era: 200 is the one status at which every
/// client tested shows the JSON-RPC error with its `data` (`retryAfterMs`).
/// With 403 and 429, the TypeScript SDK v2 throws `SdkHttpError` with the
/// raw body, the v1 SDK and the Python SDK 1.x the HTTP error alone, and
/// the Inspector CLI reports 403 as `auth_required`. 401 and 403 stay
/// with what HTTP authentication means.
fn stateless_status(code: i64) -> StatusCode {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Era {
    Session(&'static str),
    Stateless,
}

impl Gateway {
    /// `body_timeout`: how long a request body may take to arrive (408 beyond).
    pub fn new(
        config: McpConfig,
        upstreams: Vec<Arc<Upstream>>,
        metrics: Arc<Metrics>,
        sessions: Arc<SessionTable>,
        body_timeout: std::time::Duration,
        identity: Arc<Identity>,
    ) -> Arc<Self> {
        // Live on reload: the budget is the process's, its limit the config's.
        super::upstream::BUFFERED.set_limit(config.max_buffered_response_bytes);
        for u in &upstreams {
            let table = Arc::downgrade(&sessions);
            let name = u.name().to_string();
            u.set_notification_sink(Arc::new(move |v: &Value| {
                if let Some(t) = table.upgrade() {
                    t.route_upstream_notification(&name, v);
                }
            }));
        }
        Arc::new(Gateway {
            config,
            upstreams,
            metrics,
            catalogs: std::array::from_fn(|_| arc_swap::ArcSwap::from_pointee(Catalog::default())),
            refreshes: Default::default(),
            retry: Default::default(),
            sessions,
            body_timeout,
            identity,
        })
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Lists one kind from every upstream again.
    pub async fn refresh(&self, kind: Kind) -> Arc<Catalog> {
        let state = &self.refreshes[kind.index()];
        let _one_at_a_time = state.running.lock().await;
        self.refresh_locked(kind).await
    }

    async fn refresh_locked(&self, kind: Kind) -> Arc<Catalog> {
        let state = &self.refreshes[kind.index()];
        state
            .started_ms
            .store(mono_ms(), std::sync::atomic::Ordering::Relaxed);
        let previous = self.current(kind);
        let cat = Arc::new(catalog::build(kind, &self.upstreams, &previous).await);
        self.catalogs[kind.index()].store(cat.clone());
        state
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        if kind == Kind::Tools {
            self.check_argument_paths(&cat);
        }
        let conflicts: Vec<Value> = cat.conflicts.iter().map(|c| c.to_json(kind)).collect();
        let mut known = CATALOG_CONFLICTS.lock().expect("catalog conflicts");
        for c in conflicts
            .iter()
            .filter(|c| !known[kind.index()].contains(c))
        {
            tracing::warn!(upstream = %c["upstream"], key = %c["public"], why = %c["why"], "{} left out of the catalog", kind.key());
        }
        known[kind.index()] = conflicts;
        cat
    }

    /// A listing a client's request asks for (`*/list`, a name not in the
    /// catalog): requests that arrive while one is under way take its
    /// result, and one made less than `[mcp] catalog_refresh_ms` ago is
    /// used as it is. Before, every call naming an unknown tool listed
    /// every upstream again (50 calls, 50 `tools/list` to each upstream).
    async fn refresh_for_client(&self, kind: Kind) -> Arc<Catalog> {
        let state = &self.refreshes[kind.index()];
        let seen = state.generation.load(std::sync::atomic::Ordering::Acquire);
        let _one_at_a_time = state.running.lock().await;
        let fresh = mono_ms()
            .saturating_sub(state.started_ms.load(std::sync::atomic::Ordering::Relaxed))
            < self.config.catalog_refresh_ms;
        let done_meanwhile = state.generation.load(std::sync::atomic::Ordering::Acquire) != seen;
        if done_meanwhile
            || (fresh && state.generation.load(std::sync::atomic::Ordering::Relaxed) > 0)
        {
            return self.current(kind);
        }
        self.refresh_locked(kind).await
    }

    /// Takes over the names the gateway this one replaces (a reload) gave,
    /// so a reload does not rename what a clash named: its catalogs become
    /// this one's previous listing, routed by upstream name.
    pub fn inherit_names(&self, old: &Gateway) {
        for kind in Kind::ALL {
            let was = old.current(kind);
            let remap = |r: &catalog::Route| {
                let i = self.upstreams.iter().position(|u| u.name() == &*r.label)?;
                Some(catalog::Route {
                    upstream: i,
                    ..r.clone()
                })
            };
            let mut cat = Catalog::default();
            for (into, from) in [
                (&mut cat.routes, &was.routes),
                (&mut cat.unavailable, &was.unavailable),
            ] {
                into.extend(
                    from.iter()
                        .filter_map(|(k, r)| Some((k.clone(), remap(r)?))),
                );
            }
            self.catalogs[kind.index()].store(Arc::new(cat));
        }
    }

    /// Lists again, with backoff, what upstreams that failed their last
    /// listing have (down at start or reload, they stayed out of the
    /// catalog until their configuration changed). Run every second by
    /// the runtime; the listing runs on its own task.
    pub fn retry_failed(self: &Arc<Self>) {
        let failing = Kind::ALL
            .iter()
            .any(|k| !self.current(*k).failed.is_empty());
        let retry = &self.retry;
        let now = mono_ms();
        if !failing {
            retry
                .attempts
                .store(0, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if now < retry.next_ms.load(std::sync::atomic::Ordering::Relaxed)
            || retry
                .running
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let gw = self.clone();
        tokio::spawn(async move {
            let mut still = false;
            for kind in Kind::ALL {
                if !gw.current(kind).failed.is_empty() {
                    still |= !gw.refresh(kind).await.failed.is_empty();
                }
            }
            let retry = &gw.retry;
            let attempts = if still {
                retry
                    .attempts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1
            } else {
                retry
                    .attempts
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("every upstream answers its listings again");
                0
            };
            // 1 s, 2 s, 4 s … at most a minute between attempts.
            let wait_ms = 1000u64 << attempts.min(6);
            retry.next_ms.store(
                mono_ms() + wait_ms.min(60_000),
                std::sync::atomic::Ordering::Relaxed,
            );
            retry
                .running
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Checks the policy's argument paths against the tools' published
    /// `inputSchema`s; logs what is new and keeps the list for `/stats`.
    fn check_argument_paths(&self, tools: &Catalog) {
        let policy = &self.identity.policy;
        let mut found: Vec<String> = tools
            .items
            .iter()
            .flat_map(|t| {
                policy.schema_warnings(t["name"].as_str().unwrap_or_default(), &t["inputSchema"])
            })
            .collect();
        // A rule naming a tool no upstream lists (a typo, or a name a
        // clash changed) applies to nothing, silently.
        for (rule, tool) in policy.named_tools() {
            if !tools.routes.contains_key(tool) && !tools.unavailable.contains_key(tool) {
                found.push(format!(
                    "rule `{rule}` names the tool `{tool}`, which no upstream lists (see catalog_conflicts)"
                ));
            }
        }
        let mut known = SCHEMA_WARNINGS.lock().expect("schema warnings");
        for w in found.iter().filter(|w| !known.contains(w)) {
            tracing::warn!(policy = %policy.version, "{w}");
        }
        *known = found;
    }

    /// Lists every kind again; returns how many items of each.
    pub async fn refresh_all(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for kind in Kind::ALL {
            n[kind.index()] = self.refresh(kind).await.items.len();
        }
        n
    }

    fn current(&self, kind: Kind) -> Arc<Catalog> {
        self.catalogs[kind.index()].load_full()
    }

    /// Where `key` of `kind` goes, listing again once when it is unknown.
    async fn lookup(&self, kind: Kind, key: &str) -> Option<catalog::Route> {
        // An item of an upstream that is down is not listed, but a request
        // for it still goes there, so the caller learns which upstream failed.
        let find = |cat: &Catalog| {
            cat.routes
                .get(key)
                .or_else(|| cat.unavailable.get(key))
                .cloned()
        };
        // The common case borrows the snapshot (no reference count taken).
        if let Some(r) = find(&self.catalogs[kind.index()].load()) {
            return Some(r);
        }
        find(&*self.refresh_for_client(kind).await)
    }

    /// What Dome announces: the union of its upstreams' capabilities, each
    /// flag true only where some upstream's is (change notifications and
    /// resource subscriptions are relayed in both eras).
    fn capabilities(&self) -> Value {
        let mut caps = serde_json::Map::new();
        for u in &self.upstreams {
            let c = u.capabilities();
            for key in ["tools", "prompts", "resources", "completions", "logging"] {
                if c.get(key).is_none() {
                    continue;
                }
                let entry = caps.entry(key).or_insert_with(|| match key {
                    "tools" | "prompts" => json!({"listChanged": false}),
                    "resources" => json!({"listChanged": false, "subscribe": false}),
                    _ => json!({}),
                });
                for flag in ["listChanged", "subscribe"] {
                    if c[key][flag] == true && entry.get(flag).is_some() {
                        entry[flag] = true.into();
                    }
                }
            }
        }
        Value::Object(caps)
    }

    /// Answers one request that came in on `conn`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<crate::transport::Conn>,
    ) -> Response<Body> {
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let tally = std::cell::RefCell::new(Box::new(Tally {
            method: "invalid",
            ..Default::default()
        }));
        // In a block, so the scope's storage is free while the record is
        // awaited below (this future is moved once per request).
        let (mut resp, mut tally) = {
            let scoped = TALLY.scope(tally, self.route(req, conn, start));
            tokio::pin!(scoped);
            let resp = scoped.as_mut().await;
            let tally = scoped
                .as_mut()
                .take_value()
                .expect("the tally outlives its scope")
                .into_inner();
            (resp, tally)
        };
        // Phase: audit. The answer leaves only once its record is durable.
        if let Some((trail, ticket, id)) = commit_calls(&mut tally, &resp)
            && let Err(u) = trail.durable(ticket).await
        {
            tracing::error!(error = %u.0, "answering a call failed closed: its audit record is not durable");
            tally.rpc_error = Some(code::AUDIT_UNAVAILABLE);
            resp = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &rpc_error(&id.unwrap_or(Value::Null), code::AUDIT_UNAVAILABLE, u.0),
            );
        }
        metrics.request(&RequestRecord {
            method: tally.method,
            status: resp.status().as_u16(),
            rpc_error: tally.rpc_error,
            total: start.elapsed(),
            parse: tally.parse,
            auth: tally.auth,
            policy: tally.policy,
            upstream: tally.upstream.as_ref().map(|(u, t, d)| (&**u, &**t, *d)),
        });
        resp
    }

    /// `arrived`: when `handle` took the request (one clock read for both).
    async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<crate::transport::Conn>,
        arrived: Instant,
    ) -> Response<Body> {
        let path = req.uri().path();
        if req.method() == Method::GET {
            if (path == METADATA_PATH
                || path.strip_prefix(METADATA_PATH) == Some(&self.config.path))
                && self.has_authorization_server()
            {
                return json_response(StatusCode::OK, &self.resource_metadata());
            }
            if path == JWKS_PATH {
                let mut r = raw_json_response(
                    StatusCode::OK,
                    self.identity.signer.jwks().to_string(),
                    None,
                );
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("max-age=300"),
                );
                return r;
            }
        }
        if path != self.config.path {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("not found; MCP is at {}", self.config.path)}),
            );
        }
        // Phase: authenticate.
        let source = Some(conn.peer.ip());
        let now_s = crate::clock::unix_s();
        let escalation = &self.identity.escalation;
        let index = self.identity.registry.index();
        let caller = match authn::authenticate(
            req.headers(),
            req.uri().query(),
            &index,
            &self.identity.jwt,
            self.identity.required,
            now_s,
        ) {
            Ok(c) => c,
            Err(f) => {
                // Struck by the identity it claimed, or its source when it
                // claimed none; refused as blocked while that is blocked.
                let blocked = escalation.failed_login(
                    conn.peer.ip(),
                    &f,
                    crate::clock::monotonic_ns(),
                    now_s,
                );
                if let Some(p) = f
                    .refresh_issuer
                    .as_ref()
                    .and_then(|i| self.identity.jwt.by_issuer.get(i))
                {
                    // A key the provider may have rotated in: fetch its set
                    // again (at most every 5 s); the client's retry may pass.
                    let p = p.clone();
                    tokio::spawn(async move { p.refresh(now_s, 5).await });
                }
                if blocked {
                    return self.blocked();
                }
                return self.unauthenticated(f);
            }
        };
        if let Some(c) = &caller {
            if escalation.blocked(None, Some(c.agent.slot), now_s) {
                return self.blocked();
            }
            self.bind_kernel(&conn, c);
        } else if escalation.blocked(source, None, now_s) {
            // A source block holds only against anonymous requests.
            return self.blocked();
        }
        // A connection that carried an authenticated request is shed after
        // idle ones that have not; one agent holds at most its share.
        if !conn.authenticated(caller.as_ref().map(|c| c.agent.slot)) {
            return self.over_connections();
        }
        let took = arrived.elapsed();
        let _ = TALLY.try_with(|t| t.borrow_mut().auth = Some(took));
        let intent = req
            .headers()
            .get(H_INTENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        CTX.scope(
            RequestCtx {
                caller,
                source,
                intent,
                arrived: Some(arrived),
                trace: req
                    .headers()
                    .get(protocol::H_TRACEPARENT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(trace_id),
            },
            self.route_authenticated(req),
        )
        .await
    }

    /// Binds the connection's flow to the agent's kernel identity slot
    /// (once per connection): its packets are then held to the agent's
    /// budget in XDP. The binding goes when the connection closes.
    fn bind_kernel(&self, conn: &crate::transport::Conn, c: &Caller) {
        let Some(tier) = &self.identity.tier else {
            return;
        };
        let mut binding = conn.binding.lock().expect("binding lock");
        if binding.as_ref().is_some_and(|b| b.slot == c.agent.slot) {
            return;
        }
        let flow = crate::xdp::Flow {
            proto: crate::xdp::L4::Tcp,
            src: conn.peer.ip(),
            src_port: conn.peer.port(),
            dst_port: conn.local_port,
        };
        let bound = tier
            .set_budget(c.agent.slot, &self.identity.kernel_budget)
            .and_then(|()| tier.bind_flow(&flow, c.agent.slot));
        match bound {
            Ok(()) => {
                *binding = Some(crate::transport::ConnBinding {
                    tier: tier.clone(),
                    flow,
                    slot: c.agent.slot,
                })
            }
            Err(e) => {
                tracing::warn!(agent = %c.agent.id, error = %e, "binding the flow in the kernel tier failed")
            }
        }
    }

    /// A strike against the caller: its agent when authenticated (never
    /// the address it shares with others), else its source.
    fn strike_source(&self, why: &str) {
        let who = CTX
            .try_with(|c| match &c.caller {
                Some(c) => Some(Subject::Agent {
                    id: c.agent.id.clone(),
                    slot: c.agent.slot,
                }),
                None => c.source.map(Subject::Source),
            })
            .ok()
            .flatten();
        if let Some(who) = who {
            self.identity.escalation.strike(
                who,
                why,
                crate::clock::monotonic_ns(),
                crate::clock::unix_s(),
            );
        }
    }

    /// Why a caller-controlled field the audit record stores is over its
    /// cap or of the wrong type, if one is: intents (in `_meta` or the header) and names are
    /// stored verbatim, so without a cap one agent could write megabytes
    /// of trail a call (and push older records out under `retain_mb`).
    fn bad_caller_field(&self, e: &Envelope) -> Option<String> {
        let max = self.config.max_intent_bytes;
        if e.name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES) {
            return Some(format!("the name is longer than {MAX_NAME_BYTES} bytes"));
        }
        let intent = e.dome_meta.iter().find(|(k, _)| k == INTENT_META);
        // An intent of another type was read as none, so a deny rule on
        // its pattern did not apply.
        if intent.is_some_and(|(_, v)| !v.starts_with('"')) {
            return Some(format!("the intent (_meta[\"{INTENT_META}\"]) is a string"));
        }
        let in_meta = intent.is_some_and(|(_, v)| json_str_over(v, max));
        let in_header = || {
            CTX.try_with(|c| c.intent.as_ref().is_some_and(|i| i.len() > max))
                .unwrap_or(false)
        };
        (in_meta || in_header())
            .then(|| format!("the intent is longer than {max} bytes ([mcp] max_intent_bytes)"))
    }

    /// A strike against the calling agent (a caller without credentials,
    /// where authentication is off, against its source).
    fn strike_caller(&self, caller: Option<&Caller>, why: &str) {
        let Some(c) = caller else {
            return self.strike_source(why);
        };
        self.identity.escalation.strike(
            Subject::Agent {
                id: c.agent.id.clone(),
                slot: c.agent.slot,
            },
            why,
            crate::clock::monotonic_ns(),
            crate::clock::unix_s(),
        );
    }

    /// Takes one call from each bucket there is in `levels` (named for
    /// the refusal), all or none; a refusal is recorded, struck against
    /// the agent and answered with when to retry.
    fn take_budget(
        &self,
        c: &Caller,
        call: &mut Call,
        levels: [(&str, Option<&crate::identity::budget::Bucket>); 2],
    ) -> Result<(), Refusal> {
        // No allocation on this path.
        let mut buckets: [&crate::identity::budget::Bucket; 2] = [&UNLIMITED; 2];
        let mut names = [""; 2];
        let mut n = 0;
        for (label, bucket) in levels {
            if let Some(bucket) = bucket {
                buckets[n] = bucket;
                names[n] = label;
                n += 1;
            }
        }
        let Err((i, refusal)) =
            crate::identity::budget::take_all(&buckets[..n], crate::clock::monotonic_ns())
        else {
            return Ok(());
        };
        let retry_ms = refusal.retry_after_ns.div_ceil(1_000_000);
        call.decision = crate::audit::record::Decision::OverBudget;
        self.strike_caller(Some(c), "over budget");
        Err(Refusal {
            code: code::RATE_LIMITED,
            message: format!("over the {} call budget; retry in {retry_ms} ms", names[i]),
            retry_after_ms: Some(retry_ms),
        })
    }

    /// 429 for a request of an agent that holds its share of connections
    /// (`[server] max_connections_per_agent`) on one more: the connection
    /// closes after the answer (HTTP/1.1), so the client uses one it has.
    fn over_connections(&self) -> Response<Body> {
        let mut resp = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &rpc_error(
                &Value::Null,
                code::RATE_LIMITED,
                "this agent holds its share of connections ([server] max_connections_per_agent); \
                 send on a connection it has open, or close one",
            ),
        );
        let h = resp.headers_mut();
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        resp
    }

    /// 403 for a source or agent blocked by escalation.
    fn blocked(&self) -> Response<Body> {
        json_response(
            StatusCode::FORBIDDEN,
            &rpc_error(
                &Value::Null,
                code::UNAUTHORIZED,
                "blocked for repeated abuse; try again later",
            ),
        )
    }

    /// The RFC 9728 protected-resource metadata.
    fn resource_metadata(&self) -> Value {
        json!({
            "resource": self.identity.resource,
            "authorization_servers": self
                .identity
                .jwt
                .by_issuer
                .keys()
                .collect::<std::collections::BTreeSet<_>>(),
            "bearer_methods_supported": ["header"],
            "resource_name": "Dome MCP gateway",
        })
    }

    /// Whether an authorization server is configured (a tenant trusts an
    /// identity provider): only then is there OAuth metadata to advertise.
    fn has_authorization_server(&self) -> bool {
        !self.identity.jwt.by_issuer.is_empty()
    }

    /// 401/403/400 with an RFC 6750 challenge: the error and its
    /// description, and the OAuth metadata only where an authorization
    /// server is configured and the credential was not an API key. (Told of
    /// metadata, clients start OAuth discovery and dynamic registration,
    /// and the user never sees "invalid API key".)
    fn unauthenticated(&self, f: authn::Failure) -> Response<Body> {
        let mut params = Vec::new();
        if self.has_authorization_server() && !f.api_key {
            params.push(format!(
                "resource_metadata=\"{}\"",
                self.identity.metadata_url()
            ));
        }
        if let Some(e) = f.error {
            params.push(format!("error=\"{e}\""));
            params.push(format!(
                "error_description=\"{}\"",
                challenge_text(&f.message)
            ));
        }
        if let Some(scope) = &f.scope {
            params.push(format!("scope=\"{scope}\""));
        }
        let challenge = if params.is_empty() {
            "Bearer".to_string()
        } else {
            format!("Bearer {}", params.join(", "))
        };
        let mut resp = json_response(
            f.status,
            &rpc_error(&Value::Null, code::UNAUTHORIZED, f.message),
        );
        if let Ok(v) = header::HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }

    async fn route_authenticated(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() != self.config.path {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("not found; MCP is at {}", self.config.path)}),
            );
        }
        if !self.origin_allowed(req.headers()) {
            return json_response(
                StatusCode::FORBIDDEN,
                &rpc_error(&Value::Null, code::INVALID_REQUEST, "Origin not allowed"),
            );
        }
        match *req.method() {
            // Boxed: every future above this one is created by moving it
            // whole, so a small handle here saves copies on every request.
            Method::POST => Box::pin(self.post(req)).await,
            Method::GET if req.headers().contains_key(protocol::H_SESSION) => {
                note_method("other");
                self.open_stream(req.headers())
            }
            Method::DELETE => {
                note_method("delete");
                self.delete(req.headers())
            }
            _ => Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "POST, DELETE")
                .body(Full::new(Bytes::new()).boxed())
                .expect("static parts"),
        }
    }

    /// `GET` in the session era: the session's stream for messages that
    /// answer no request of the client's (resource updates, list changes).
    fn open_stream(&self, headers: &HeaderMap) -> Response<Body> {
        if !accepts(headers).1 {
            return json_response(
                StatusCode::NOT_ACCEPTABLE,
                &rpc_error(
                    &Value::Null,
                    code::INVALID_REQUEST,
                    "Accept must list text/event-stream",
                ),
            );
        }
        let sid = headers
            .get(protocol::H_SESSION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some(session) = self.sessions.owned(sid) else {
            return session_not_found(&Value::Null);
        };
        // A new GET replaces an older one: that one ends, and its count
        // goes, first (ended even if this one is refused, so no stream
        // stays open uncounted).
        session.push.lock().expect("push lock").take();
        session.push_slot.lock().expect("push slot lock").take();
        let cap = self.config.max_streams_per_agent;
        let Some(slot) = self
            .sessions
            .open_stream_slot(agent_key(session.caller.as_ref()), cap)
        else {
            return too_many_streams(&Value::Null, cap);
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        *session.push_slot.lock().expect("push slot lock") = Some(slot.handle());
        *session.push.lock().expect("push lock") = Some(tx);
        held_sse_response(rx, slot)
    }

    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        // An origin that is not visible ASCII is no origin Dome can allow.
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        if self.config.allowed_origins.iter().any(|o| o == origin) {
            return true;
        }
        let host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }

    fn delete(self: &Arc<Self>, headers: &HeaderMap) -> Response<Body> {
        // The stateless era has no sessions to delete.
        if headers
            .get(protocol::H_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(protocol::is_stateless_version)
        {
            return Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "POST")
                .body(Full::new(Bytes::new()).boxed())
                .expect("static parts");
        }
        let Some(id) = headers
            .get(protocol::H_SESSION)
            .and_then(|v| v.to_str().ok())
        else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &Value::Null,
                    code::INVALID_REQUEST,
                    "DELETE needs an Mcp-Session-Id",
                ),
            );
        };
        if self.sessions.owned(id).is_some() && self.end_session(id) {
            empty(StatusCode::OK)
        } else {
            session_not_found(&Value::Null)
        }
    }

    /// Ends session `id` and its upstream subscriptions; false when there
    /// is no such session.
    fn end_session(self: &Arc<Self>, id: &str) -> bool {
        let Some(uris) = self.sessions.remove(id) else {
            return false;
        };
        for uri in uris {
            let gw = self.clone();
            tokio::spawn(async move {
                if let Some(u) = gw.resource_upstream(&uri).await {
                    let _ = u.want(&uri, false).await;
                }
            });
        }
        true
    }

    /// Ends the sessions unused for `[mcp] session_idle_s` that hold
    /// nothing open, and drops parked calls past their time; returns how
    /// many sessions ended. Run every second by the runtime.
    pub fn sweep_expired(self: &Arc<Self>) -> usize {
        self.sessions.drop_expired_parked(Instant::now());
        self.retry_failed();
        let idle_ms = self.config.session_idle_s.saturating_mul(1000);
        let ids = self.sessions.idle(mono_ms(), idle_ms);
        for id in &ids {
            self.end_session(id);
        }
        if !ids.is_empty() {
            tracing::info!(
                ended = ids.len(),
                idle_s = self.config.session_idle_s,
                "ended idle sessions"
            );
        }
        ids.len()
    }

    async fn post(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let headers = parts.headers;
        let (json_ok, sse_ok) = accepts(&headers);
        if !(json_ok && sse_ok) {
            return json_response(
                StatusCode::NOT_ACCEPTABLE,
                &rpc_error(
                    &Value::Null,
                    code::INVALID_REQUEST,
                    "Accept must list both application/json and text/event-stream",
                ),
            );
        }
        // Phase: parse.
        let collected = tokio::time::timeout(
            self.body_timeout,
            Limited::new(body, self.config.max_body_bytes).collect(),
        )
        .await;
        let Ok(collected) = collected else {
            return json_response(
                StatusCode::REQUEST_TIMEOUT,
                &rpc_error(
                    &Value::Null,
                    code::INVALID_REQUEST,
                    "the request body did not arrive in time",
                ),
            );
        };
        let bytes = match collected {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &rpc_error(
                        &Value::Null,
                        code::INVALID_REQUEST,
                        format!("request body over {} bytes", self.config.max_body_bytes),
                    ),
                );
            }
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        };
        let _ = TALLY.try_with(|t| t.borrow_mut().bytes_in = bytes.len() as u64);
        let parse_start = Instant::now();
        let parsed = envelope::parse(&bytes, self.config.max_json_depth);
        let took = parse_start.elapsed();
        let _ = TALLY.try_with(|t| t.borrow_mut().parse = Some(took));
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let session_id = header(protocol::H_SESSION).map(str::to_string);
        let e = match parsed {
            Ok(Parsed::One(e)) => e,
            Ok(Parsed::Batch) => {
                note_method("batch");
                // Cold paths are boxed so the hot path's future (moved on
                // every call) stays small.
                return Box::pin(self.batch(&bytes, session_id.as_deref())).await;
            }
            Err(err) => {
                self.strike_source("malformed request");
                let (code, message) = match err {
                    EnvelopeError::Parse(why) => (code::PARSE_ERROR, format!("Parse error: {why}")),
                    EnvelopeError::NotObject => (
                        code::INVALID_REQUEST,
                        "a JSON-RPC message is an object".into(),
                    ),
                    EnvelopeError::Repeated(name) => (
                        code::INVALID_REQUEST,
                        format!("an object names the member `{name}` twice"),
                    ),
                    EnvelopeError::TooDeep(limit) => (
                        code::INVALID_REQUEST,
                        format!("objects and arrays nest deeper than {limit} levels"),
                    ),
                };
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &rpc_error(&Value::Null, code, message),
                );
            }
        };
        let id = e.id.clone().unwrap_or(Value::Null);
        if !e.jsonrpc_ok {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&id, code::INVALID_REQUEST, "jsonrpc must be \"2.0\""),
            );
        }
        let is_response = e.method.is_none() && e.is_response;
        if !is_response && !request_id_ok(e.id.as_ref()) {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&Value::Null, code::INVALID_REQUEST, ID_RULE),
            );
        }
        if e.method.is_none() && !is_response {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&id, code::INVALID_REQUEST, "a request needs a method"),
            );
        }
        if let Some(why) = self.bad_caller_field(&e) {
            self.strike_source("a field over its cap or of the wrong type");
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&id, code::INVALID_PARAMS, why),
            );
        }
        let method = e.method.as_deref().unwrap_or_default();
        let is_notification = is_response || e.id.is_none();
        note_method(if is_notification {
            "notification"
        } else {
            method_label(method)
        });

        let header_version = header(protocol::H_VERSION);
        let stateless = matches!(
            &e.meta,
            Meta::Object {
                version: Some(_),
                ..
            }
        ) || method == "server/discover"
            || header_version.is_some_and(protocol::is_stateless_version);

        if stateless {
            if let Err((code, message, data)) = stateless_ladder(&e, method, &headers) {
                let mut err = rpc_error(&id, code, message);
                if let Some(d) = data {
                    err["error"]["data"] = d;
                }
                return json_response(stateless_status(code), &err);
            }
            if is_notification {
                return empty(StatusCode::ACCEPTED);
            }
            return self
                .dispatch(Era::Stateless, method, id, &e, sse_ok, None)
                .await;
        }

        // Session era.
        if method == "initialize" {
            return self.initialize(id, &e);
        }
        let Some(sid) = session_id else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &id,
                    code::INVALID_REQUEST,
                    "missing Mcp-Session-Id: call initialize first",
                ),
            );
        };
        let Some(session) = self.sessions.owned(&sid) else {
            return session_not_found(&id);
        };
        if let Some(v) = header_version
            && !protocol::is_session_version(v)
        {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &id,
                    code::INVALID_REQUEST,
                    format!("unsupported MCP-Protocol-Version `{v}`"),
                ),
            );
        }
        if is_notification {
            if method == "notifications/cancelled" {
                self.forward_cancel(&session, &e);
            }
            if is_response {
                self.forward_answer(&session, &bytes);
            }
            return empty(StatusCode::ACCEPTED);
        }
        self.dispatch(
            Era::Session(session.version),
            method,
            id,
            &e,
            sse_ok,
            Some(session),
        )
        .await
    }

    /// A JSON-RPC batch (2025-03-26 sessions only). As JSON-RPC 2.0 §6
    /// says: each request gets its answer in one array, an element that is
    /// no valid request gets an error of its own, notifications and answers
    /// to Dome's requests get none, and an empty batch is one error.
    async fn batch(self: Arc<Self>, bytes: &[u8], session: Option<&str>) -> Response<Body> {
        let session = match session {
            Some(sid) => match self.sessions.owned(sid) {
                Some(s) => Some(s),
                None => return session_not_found(&Value::Null),
            },
            None => None,
        };
        let Some(session) = session.filter(|s| s.version == "2025-03-26") else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &Value::Null,
                    code::INVALID_REQUEST,
                    "JSON-RPC batches are accepted only in sessions of protocol version 2025-03-26",
                ),
            );
        };
        let Ok(batch) = serde_json::from_slice::<Vec<Value>>(bytes) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&Value::Null, code::PARSE_ERROR, "Parse error"),
            );
        };
        if batch.is_empty() {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(&Value::Null, code::INVALID_REQUEST, "an empty batch"),
            );
        }
        let era = Era::Session(session.version);
        let mut out = Vec::new();
        for msg in batch {
            // Batches are rare (one old protocol version): each element takes
            // the ordinary envelope path.
            let text = msg.to_string();
            let Ok(Parsed::One(e)) = envelope::parse(text.as_bytes(), self.config.max_json_depth)
            else {
                out.push(rpc_error(
                    &Value::Null,
                    code::INVALID_REQUEST,
                    "a batch element is a JSON-RPC object",
                ));
                continue;
            };
            let id = e.id.clone().unwrap_or(Value::Null);
            let refuse = |m: &str| rpc_error(&id, code::INVALID_REQUEST, m);
            match e.method.as_deref() {
                _ if !e.jsonrpc_ok => out.push(refuse("jsonrpc must be \"2.0\"")),
                Some(_) if !request_id_ok(e.id.as_ref()) => {
                    out.push(rpc_error(&Value::Null, code::INVALID_REQUEST, ID_RULE))
                }
                None if e.is_response => self.forward_answer(&session, text.as_bytes()),
                None => out.push(refuse("a request needs a method")),
                Some("notifications/cancelled") if e.id.is_none() => {
                    self.forward_cancel(&session, &e)
                }
                Some(_) if e.id.is_none() => {}
                Some("initialize") => out.push(refuse("initialize cannot be part of a batch")),
                Some(_) if let Some(why) = self.bad_caller_field(&e) => {
                    out.push(rpc_error(&id, code::INVALID_PARAMS, why))
                }
                Some(method) => {
                    let (_, v) = self.answer_in(Some(&session), era, method, id, &e).await;
                    out.push(v);
                }
            }
        }
        if out.is_empty() {
            return empty(StatusCode::ACCEPTED);
        }
        json_response(StatusCode::OK, &Value::Array(out))
    }

    fn initialize(self: &Arc<Self>, id: Value, e: &Envelope) -> Response<Body> {
        let requested = e.init_version.as_deref().unwrap_or_default();
        let version = protocol::negotiate(requested);
        let caller = current_caller();
        // One agent cannot fill the table: at its allowance, its least
        // recently used session makes room (its client gets 404 and can
        // initialize again, as for any ended session).
        let evict = self
            .sessions
            .over_cap(caller.as_ref(), self.config.max_sessions_per_agent);
        for old in &evict {
            self.end_session(old);
        }
        if !evict.is_empty() {
            tracing::info!(
                agent = caller.as_ref().map_or("(none)", |c| c.agent.id.as_str()),
                ended = evict.len(),
                max_sessions_per_agent = self.config.max_sessions_per_agent,
                "an agent at its session allowance opened another: its least recently used ended"
            );
        }
        let sid = new_session_id();
        self.sessions
            .sessions
            .write()
            .expect("sessions lock")
            .insert(
                sid.clone(),
                Arc::new(Session {
                    id: sid.clone(),
                    version,
                    push: Default::default(),
                    inflight: Default::default(),
                    server_requests: Default::default(),
                    capabilities: e
                        .params
                        .as_deref()
                        .and_then(|p| serde_json::from_str::<Value>(p).ok())
                        .and_then(|p| p.get("capabilities").map(Value::to_string)),
                    local_requests: Default::default(),
                    caller,
                    log_floor: Default::default(),
                    last_used: mono_ms().into(),
                    push_slot: Default::default(),
                }),
            );
        let result = json!({
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": protocol::implementation(),
        });
        let mut resp = json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        );
        resp.headers_mut().insert(
            protocol::H_SESSION,
            sid.parse().expect("hex is a valid header"),
        );
        resp
    }

    /// Answers a request that needs no streaming (also used for batches).
    async fn answer(
        &self,
        session: Option<&Arc<Session>>,
        era: Era,
        method: &str,
        id: Value,
        e: &Envelope,
    ) -> (StatusCode, Value) {
        let ok = |mut result: Value| {
            if era == Era::Stateless {
                result["resultType"] = "complete".into();
                if method == "server/discover" || Kind::of_method(method).is_some() {
                    // Cacheable results: the list is per caller (policy
                    // filters it), so private, and stale at once until
                    // policy says how long a view stays valid.
                    result["ttlMs"] = 0.into();
                    result["cacheScope"] = "private".into();
                }
            }
            (
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": id, "result": result}),
            )
        };
        let err = |c: i64, m: String| {
            let status = if era == Era::Stateless {
                stateless_status(c)
            } else {
                StatusCode::OK
            };
            (status, rpc_error(&id, c, m))
        };
        match method {
            "ping" if era != Era::Stateless => ok(json!({})),
            // Removed in the stateless era (it has `subscriptions/listen`).
            "resources/subscribe" | "resources/unsubscribe" if era == Era::Stateless => err(
                code::METHOD_NOT_FOUND,
                format!("Method not found: {method}"),
            ),
            "server/discover" => ok(json!({
                "supportedVersions": protocol::STATELESS_VERSIONS,
                "capabilities": self.capabilities(),
                "serverInfo": protocol::implementation(),
                // Where clients since spec PR #3002 look; the body's copy is for older ones.
                "_meta": {protocol::META_SERVER_INFO: protocol::implementation()},
            })),
            m if Kind::of_method(m).is_some() => {
                let kind = Kind::of_method(m).expect("matched");
                let cursor = e.cursor.as_deref();
                let cat = match cursor {
                    None => self.refresh_for_client(kind).await,
                    Some(_) => self.current(kind),
                };
                // Visibility equals authorization: a caller sees the tools,
                // prompts, resources and templates some policy rule could
                // allow it to use (resources and prompts were listed to
                // anyone before).
                let caller = current_caller();
                let policy = &self.identity.policy;
                let policy_kind = match kind {
                    Kind::Tools => "tool",
                    Kind::Prompts => "prompt",
                    Kind::Resources | Kind::Templates => "resource",
                };
                let visible: Vec<&Value> = cat
                    .items
                    .iter()
                    .filter(|t| {
                        let name = t[kind.key()].as_str().unwrap_or_default();
                        let route = cat.routes.get(name);
                        let upstream = route
                            .and_then(|r| self.upstreams.get(r.upstream))
                            .map(|u| u.name());
                        policy.could_allow(&crate::policy::compile::Request {
                            upstream_tool: route.map(|r| &*r.original),
                            ..policy_request(
                                caller.as_ref(),
                                policy_kind,
                                name,
                                upstream,
                                None,
                                None,
                            )
                        })
                    })
                    .collect();
                let offset = match cursor.map(catalog::parse_cursor) {
                    None => 0,
                    Some(Some((v, o))) if v == cat.version && o <= visible.len() => o,
                    Some(_) => {
                        return err(
                            code::INVALID_PARAMS,
                            "invalid or stale cursor: the list changed; list again from the start"
                                .into(),
                        );
                    }
                };
                let end = (offset + self.config.page_size.max(1)).min(visible.len());
                let mut result = json!({ kind.field(): &visible[offset..end] });
                if end < visible.len() {
                    result["nextCursor"] = catalog::cursor(cat.version, end).into();
                }
                ok(result)
            }
            "prompts/get"
            | "resources/read"
            | "completion/complete"
            | "resources/subscribe"
            | "resources/unsubscribe" => match self
                .forward_other(method, e, caller_capabilities(e, session))
                .await
            {
                // Its requests go to a session-era caller only on an event
                // stream (`dispatch`); this answer has none.
                Ok((_, reply))
                    if era != Era::Stateless && super::input::required(&reply).is_some() =>
                {
                    let why = "the upstream needs the client's input, which Dome asks for on \
                               an event stream: send this request alone, with \
                               `Accept: text/event-stream`";
                    with_call(|c| c.failed(code::INVALID_REQUEST, why));
                    err(code::INVALID_REQUEST, why.into())
                }
                Ok((upstream, reply)) => match readdress(era, &upstream, &id, reply, method) {
                    Ok((status, text, _)) => {
                        (status, serde_json::from_slice(&text).unwrap_or_default())
                    }
                    Err((c, m)) => err(c, m),
                },
                Err((c, m)) => err(c, m),
            },
            // The level is the session's own (see `dispatch`); Dome's
            // upstream sessions serve every caller, so it is not passed on.
            "logging/setLevel" if era != Era::Stateless => match set_level_of(e) {
                Ok(_) => ok(json!({})),
                Err(m) => err(code::INVALID_PARAMS, m),
            },
            "tools/call" => match self.forward_call(e, era, None).await {
                Err(r) => {
                    let status = if era == Era::Stateless {
                        stateless_status(r.code)
                    } else {
                        StatusCode::OK
                    };
                    (status, r.to_rpc(&id))
                }
                Ok((upstream, Reply::Stream(st), _, redaction)) => {
                    match super::upstream::first_response(&upstream, st).await {
                        Ok(mut v) => {
                            if let Some(r) = &redaction {
                                let counts = r.apply(&mut v);
                                with_call(|c| c.add_redactions(&counts));
                            }
                            if v["result"]["isError"] == true {
                                with_call(|c| {
                                    c.outcome = Some(crate::audit::record::Outcome::ToolError)
                                });
                            }
                            v["id"] = id.clone();
                            protocol::fit_to_era(&mut v, era == Era::Stateless);
                            (StatusCode::OK, v)
                        }
                        Err(e) => err(code::UPSTREAM_UNAVAILABLE, e.to_string()),
                    }
                }
                Ok((upstream, reply, _, redaction)) => {
                    match redacted(reply, redaction.as_ref(), upstream.name(), None)
                        .and_then(|reply| readdress(era, &upstream, &id, reply, method))
                    {
                        Ok((status, text, _)) => {
                            if let Some(o) = result_outcome(&text) {
                                with_call(|c| c.outcome = Some(o));
                            }
                            (status, serde_json::from_slice(&text).unwrap_or_default())
                        }
                        Err((c, m)) => err(c, m),
                    }
                }
            },
            other => err(code::METHOD_NOT_FOUND, format!("Method not found: {other}")),
        }
    }

    /// Opens the audit record of a call of `kind`: reserves its room in the
    /// ring (a call that could not be recorded is refused, unless the
    /// operator chose to drop records) and notes what is known already.
    async fn open_call(
        &self,
        kind: crate::audit::record::Kind,
        e: &Envelope,
        session: Option<&Arc<Session>>,
    ) -> Result<Call, Refusal> {
        let audit = &self.identity.audit;
        let slot = audit.reserve().await.map_err(|u| Refusal {
            code: code::AUDIT_UNAVAILABLE,
            message: u.0,
            retry_after_ms: None,
        })?;
        // What the record needs of the request (not all of it: no intent copy).
        let (caller, source, arrived, trace) = CTX
            .try_with(|c| (c.caller.clone(), c.source, c.arrived, c.trace.clone()))
            .unwrap_or_default();
        let mut call = Call::new(
            slot,
            kind,
            arrived.unwrap_or_else(Instant::now),
            crate::clock::unix_us(),
        );
        call.caller = session.and_then(|s| s.caller.clone()).or(caller);
        call.source = source;
        call.session = session.map(|s| s.id.clone());
        call.trace_id = trace.or_else(|| {
            e.meta_entries
                .iter()
                .find(|(k, _)| k == "traceparent")
                .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
                .and_then(|t| trace_id(&t))
        });
        // Taken here, with the rest of what the request says, so every
        // record has it: a call refused before it is judged (over the
        // agent's budget, naming no tool) was recorded without it.
        call.intent = intent_of(e);
        call.policy = Some(self.identity.policy.clone());
        call.rpc_id = e.id.clone();
        let _ = TALLY.try_with(|t| {
            let t = t.borrow();
            call.bytes_in = t.bytes_in;
            call.phase_ns[audit_phase::PARSE] = t.parse.map_or(0, |d| d.as_nanos() as u64);
            call.phase_ns[audit_phase::AUTH] = t.auth.map_or(0, |d| d.as_nanos() as u64);
        });
        Ok(call)
    }

    /// Forwards a prompt, resource or completion request to the upstream
    /// that owns what it names, with the upstream's own name for it. Its
    /// audit record goes with the request (see `stash`).
    async fn forward_other(
        &self,
        method: &str,
        e: &Envelope,
        caps: Option<&str>,
    ) -> Result<(Arc<Upstream>, Reply), (i64, String)> {
        use crate::audit::record::Kind as AuditKind;
        let kind = match method {
            "prompts/get" => AuditKind::Prompt,
            "completion/complete" => AuditKind::Completion,
            _ => AuditKind::Resource,
        };
        let mut call = self
            .open_call(kind, e, None)
            .await
            .map_err(|r| (r.code, r.message))?;
        let result = self.forward_other_inner(method, e, caps, &mut call).await;
        if let Err((c, m)) = &result {
            call.failed(*c, m);
        }
        stash(call);
        result
    }

    async fn forward_other_inner(
        &self,
        method: &str,
        e: &Envelope,
        caps: Option<&str>,
        call: &mut Call,
    ) -> Result<(Arc<Upstream>, Reply), (i64, String)> {
        let mut params: Value = e
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_else(|| json!({}));
        // The caller's era envelope stays here (the upstream client adds
        // its own), and so does Dome's namespace (upstreams trust it).
        if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                !k.starts_with("io.modelcontextprotocol/")
                    && !k.starts_with(protocol::META_DOME_PREFIX)
            });
        }
        let (kind, key, field): (Kind, Option<String>, Option<&str>) = match method {
            "prompts/get" => (
                Kind::Prompts,
                params["name"].as_str().map(str::to_string),
                Some("name"),
            ),
            "completion/complete" => match params["ref"]["type"].as_str() {
                Some("ref/prompt") => (
                    Kind::Prompts,
                    params["ref"]["name"].as_str().map(str::to_string),
                    None,
                ),
                Some("ref/resource") => (
                    Kind::Templates,
                    params["ref"]["uri"].as_str().map(str::to_string),
                    None,
                ),
                // Any other type was judged by its `uri` and forwarded with
                // its `name`, which the upstream may read instead.
                _ => {
                    return Err((
                        code::INVALID_PARAMS,
                        "completion/complete needs ref.type \"ref/prompt\" or \"ref/resource\""
                            .to_string(),
                    ));
                }
            },
            _ => (
                Kind::Resources,
                params["uri"].as_str().map(str::to_string),
                None,
            ),
        };
        let Some(key) = key else {
            return Err((
                code::INVALID_PARAMS,
                format!("{method} needs the name or URI of what it asks for"),
            ));
        };
        // A completion's reference is not the envelope's name: capped here
        // (a 1 MB `ref.uri` was stored in every record of the call).
        if key.len() > MAX_NAME_BYTES {
            return Err((
                code::INVALID_PARAMS,
                format!("the name is longer than {MAX_NAME_BYTES} bytes"),
            ));
        }
        call.name = Some(key.as_str().into());
        if params
            .get("arguments")
            .is_some_and(|a| !a.is_object() && !a.is_null())
        {
            return Err((code::INVALID_PARAMS, ARGUMENTS_RULE.to_string()));
        }
        if let Some(why) = uri_problem(kind, &key) {
            return Err((code::INVALID_PARAMS, why));
        }
        // Phase: budget, the agent's: prompts, resources and completions
        // count like tool calls (they were free).
        let caller = current_caller();
        if let Some(c) = &caller {
            self.take_budget(
                c,
                call,
                [("agent", c.agent.budgets.agent.as_ref()), ("", None)],
            )
            .map_err(|r| (r.code, r.message))?;
        }
        // The upstream's own name for a prompt (a URI is never renamed).
        let mut original: Option<Arc<str>> = None;
        let upstream = match kind {
            Kind::Resources | Kind::Templates => {
                let direct = if kind == Kind::Resources {
                    self.lookup(Kind::Resources, &key).await
                } else {
                    None
                };
                match direct {
                    Some(r) => Some(r.upstream),
                    None => {
                        let mut t = self.current(Kind::Templates);
                        if catalog::template_route(&t, &key).is_none() {
                            t = self.refresh_for_client(Kind::Templates).await;
                        }
                        catalog::template_route(&t, &key)
                            .or_else(|| t.routes.get(&key).map(|r| r.upstream))
                    }
                }
            }
            _ => self.lookup(kind, &key).await.map(|r| {
                match (field, method) {
                    (Some(f), _) => params[f] = Value::from(&*r.original),
                    (None, "completion/complete") => {
                        params["ref"]["name"] = Value::from(&*r.original)
                    }
                    _ => {}
                }
                original = Some(r.original.clone());
                r.upstream
            }),
        };
        let Some(index) = upstream else {
            self.strike_caller(caller.as_ref(), "unknown name");
            return Err((
                code::INVALID_PARAMS,
                format!("Unknown {}: {key}", kind.key()),
            ));
        };
        let upstream = self.upstreams[index].clone();
        call.upstream = Some(upstream.label().clone());
        // Phase: decide (prompts, resources and completion by kind and name).
        let policy_kind = match method {
            "prompts/get" => "prompt",
            "completion/complete" => "completion",
            _ => "resource",
        };
        let args_text = params.get("arguments").map(Value::to_string);
        let intent = call.intent.clone();
        if let Some(a) = &args_text {
            call.digest_args(a);
        }
        let redaction = match self.decide_kind(
            policy_kind,
            &key,
            original.as_deref(),
            args_text.as_deref(),
            &upstream,
            caller.as_ref(),
            intent.as_deref(),
            call,
        ) {
            Ok(allowed) => allowed.redaction,
            Err(r) => {
                self.strike_caller(caller.as_ref(), "denied by policy");
                return Err((r.code, r.message));
            }
        };
        if let Some(c) = &caller
            && let Err(r) = self.take_budget(
                c,
                call,
                [("tenant", c.tenant.budget.as_deref()), ("", None)],
            )
        {
            if let Some(b) = &c.agent.budgets.agent {
                b.give_back();
            }
            return Err((r.code, r.message));
        }
        let assertion = match &caller {
            Some(c) => Some(self.vouch(&upstream, c, None, intent.as_deref(), call)?),
            None => None,
        };
        // A stateless upstream is told what the caller can answer, as for
        // a tool call: it may ask for input on a prompt or a read too.
        if let Some(c) = caps.and_then(|c| serde_json::from_str::<Value>(c).ok())
            && let Some(p) = params.as_object_mut()
        {
            let meta = p.entry("_meta").or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                m.insert(protocol::META_CLIENT_CAPABILITIES.into(), c);
            }
        }
        let start = Instant::now();
        let vouched = assertion
            .as_deref()
            .map(|a| (&self.identity.signer.header, a));
        let result = upstream
            .request_as(method, params, vouched, Some(agent_key(caller.as_ref())))
            .await;
        call.phase_ns[audit_phase::UPSTREAM] = start.elapsed().as_nanos() as u64;
        let reply = match result {
            Ok((Reply::Stream(s), _)) => {
                match super::upstream::first_response(&upstream, s).await {
                    Ok(v) => Reply::Json(v),
                    Err(err) => return Err((code::UPSTREAM_UNAVAILABLE, err.to_string())),
                }
            }
            Ok((reply, _)) => reply,
            Err(err) => return Err((err.code(), err.to_string())),
        };
        let reply = redacted(reply, redaction.as_ref(), upstream.name(), Some(call))?;
        Ok((upstream, reply))
    }

    /// Passes a client's answer to a relayed upstream request back to the
    /// upstream that asked, under the upstream's id.
    fn forward_answer(&self, session: &Arc<Session>, bytes: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let key = msg["id"].to_string();
        let local = session
            .local_requests
            .lock()
            .expect("local requests lock")
            .remove(&key);
        if let Some(tx) = local {
            let _ = tx.send(msg);
            return;
        }
        let target = session
            .server_requests
            .lock()
            .expect("server requests lock")
            .remove(&key);
        let Some((upstream, up_id)) = target else {
            tracing::debug!(id = %key, "an answer to no relayed request");
            return;
        };
        tokio::spawn(async move {
            if let Err(err) = upstream
                .answer(up_id, msg.get("result").cloned(), msg.get("error").cloned())
                .await
            {
                tracing::debug!(upstream = %upstream.name(), error = %err, "relaying an answer failed");
            }
        });
    }

    /// Passes a client's `notifications/cancelled` to the upstream request
    /// it names, with that upstream's request id.
    fn forward_cancel(&self, session: &Arc<Session>, e: &Envelope) {
        let Some(rid) = &e.request_id else { return };
        let target = session
            .inflight
            .lock()
            .expect("inflight lock")
            .get(&rid.to_string())
            .cloned();
        let Some(InflightCall {
            upstream,
            uid,
            cancelled,
        }) = target
        else {
            tracing::debug!(request = %rid, "cancellation for no call in flight");
            return;
        };
        // A stored permit: the relay sees it even if it is not waiting yet.
        cancelled.notify_one();
        tokio::spawn(async move {
            let params = json!({"requestId": uid, "reason": "cancelled by the client"});
            if let Err(err) = upstream.notify("notifications/cancelled", params).await {
                tracing::debug!(upstream = %upstream.name(), error = %err, "forwarding a cancellation failed");
            }
        });
    }

    /// A tool's `outputSchema`, as its upstream published it.
    fn output_schema(&self, tool: &str) -> Value {
        self.current(Kind::Tools)
            .items
            .iter()
            .find(|t| t["name"] == tool)
            .map(|t| t["outputSchema"].clone())
            .unwrap_or(Value::Null)
    }

    /// Policy on a call of `kind` (`tool`, `prompt`, `resource`,
    /// `completion`) naming `tool`, with its arguments as JSON text: who,
    /// what of which upstream, with which arguments and intent. A denial
    /// carries the reason an agent may see. The decision, its rule and the
    /// arguments (where the rule says to log them) go into the call's record.
    #[allow(clippy::too_many_arguments)]
    fn decide_kind(
        &self,
        kind: &str,
        tool: &str,
        original: Option<&str>,
        args_text: Option<&str>,
        upstream: &Upstream,
        caller: Option<&Caller>,
        intent: Option<&str>,
        call: &mut Call,
    ) -> Result<Allowed, Refusal> {
        let started = Instant::now();
        let policy = &self.identity.policy;
        let args: Option<Value> = match args_text {
            Some(a) if policy.reads_args => match serde_json::from_str(a) {
                Ok(v) => Some(v),
                // Arguments policy cannot read are never judged as absent
                // ones (serde_json stops at 128 levels, which a raised
                // `max_json_depth` lets through).
                Err(_) => {
                    call.decision = crate::audit::record::Decision::Deny;
                    return Err(Refusal {
                        code: code::POLICY_DENIED,
                        message: "denied: the arguments are too deeply nested to judge".into(),
                        retry_after_ms: None,
                    });
                }
            },
            _ => None,
        };
        let req = crate::policy::compile::Request {
            upstream_tool: original,
            ..policy_request(
                caller,
                kind,
                tool,
                Some(upstream.name()),
                intent,
                args.as_ref(),
            )
        };
        let deny = |reason: &str| Refusal {
            code: code::POLICY_DENIED,
            message: format!("denied: {reason}"),
            retry_after_ms: None,
        };
        let decision = policy.decide(&req);
        if let Some(shadow) = &self.identity.shadow {
            let other = shadow.decide(&req);
            SHADOW_DECISIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if other.effect() != decision.effect() {
                SHADOW_DISAGREEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    tool,
                    agent = req.agent.unwrap_or("-"),
                    active = ?decision.effect(),
                    shadow = ?other.effect(),
                    shadow_version = %shadow.version,
                    "shadow policy disagrees"
                );
            }
        }
        let took = started.elapsed();
        call.phase_ns[audit_phase::POLICY] = took.as_nanos() as u64;
        let _ = TALLY.try_with(|t| t.borrow_mut().policy = Some(took));
        match decision {
            crate::policy::compile::Decision::Allow {
                obligations,
                redactor,
                rule,
            } => {
                call.rule = Some(rule.clone());
                if obligations.require_intent && intent.is_none() {
                    call.decision = crate::audit::record::Decision::Deny;
                    return Err(deny(&format!(
                        "this call needs a stated intent (params._meta[\"{INTENT_META}\"])"
                    )));
                }
                call.decision = crate::audit::record::Decision::Allow;
                if obligations.log_args == crate::policy::lang::LogArgs::Full
                    && let Some(text) = args_text
                {
                    call.args = Some(logged_args(text, redactor.map(|r| &**r)));
                }
                Ok(Allowed {
                    redaction: redactor.map(|r| Redaction {
                        redactor: r.clone(),
                        // Only a tool has an output schema.
                        schema: if kind == "tool" {
                            self.output_schema(tool)
                        } else {
                            Value::Null
                        },
                    }),
                    budget: obligations.budget,
                })
            }
            crate::policy::compile::Decision::Deny { rule, reason } => {
                tracing::debug!(tool, rule = ?rule, "policy denied a call");
                call.decision = crate::audit::record::Decision::Deny;
                call.rule = rule.map(Arc::from);
                Err(deny(reason))
            }
        }
    }

    /// The signed assertion that tells `upstream` whose call this is.
    fn vouch(
        &self,
        upstream: &Upstream,
        c: &Caller,
        session: Option<&Arc<Session>>,
        intent: Option<&str>,
        call: &Call,
    ) -> Result<String, (i64, String)> {
        let signer = &self.identity.signer;
        let now = crate::clock::unix_s();
        let call_id = call.call_id_hex();
        let call_id = std::str::from_utf8(&call_id).unwrap_or_default();
        let claims = crate::identity::assertion::Claims {
            iss: "dome",
            aud: upstream.name(),
            sub: &c.agent.id,
            tenant: &c.agent.tenant,
            agent_kind: match c.agent.kind {
                crate::identity::config::AgentKind::CustomerAgent => "customer_agent",
                crate::identity::config::AgentKind::Partner => "partner",
            },
            labels: &c.agent.labels,
            user: c.user.as_deref(),
            session: session.map(|s| s.id.as_str()),
            intent,
            policy: &self.identity.policy.version,
            jti: call_id,
            iat: now,
            exp: now + signer.ttl_s,
        };
        signer.sign(&claims).map_err(|err| {
            tracing::error!(error = %err, "signing the identity assertion failed");
            (
                code::INTERNAL_ERROR,
                "cannot vouch for the caller".to_string(),
            )
        })
    }

    /// A tool call, every phase: its audit record is opened first (so
    /// whatever happens is recorded) and handed to the request answering
    /// it (see `stash`).
    async fn forward_call(
        &self,
        e: &Envelope,
        era: Era,
        session: Option<&Arc<Session>>,
    ) -> Result<(Arc<Upstream>, Reply, Option<Inflight>, Option<Redaction>), Refusal> {
        let mut call = self
            .open_call(crate::audit::record::Kind::Tool, e, session)
            .await?;
        let result = self.forward_call_inner(e, era, session, &mut call).await;
        if let Err(r) = &result {
            call.failed(r.code, &r.message);
        }
        stash(call);
        result
    }

    /// Phase: forward. Resolves the public tool name and sends the call to
    /// its upstream with the upstream's own name and request id.
    async fn forward_call_inner(
        &self,
        e: &Envelope,
        era: Era,
        session: Option<&Arc<Session>>,
        call: &mut Call,
    ) -> Result<(Arc<Upstream>, Reply, Option<Inflight>, Option<Redaction>), Refusal> {
        if let Some(a) = &e.arguments {
            call.digest_args(a);
            // Arguments are an object (or absent): a string or an array
            // holding the same members got past every argument condition.
            if !arguments_ok(a) {
                return Err((code::INVALID_PARAMS, ARGUMENTS_RULE.to_string()).into());
            }
        }
        let Some(name) = e.name.as_deref() else {
            return Err((
                code::INVALID_PARAMS,
                "tools/call needs params.name".to_string(),
            )
                .into());
        };
        // What the call asked for is in its record whatever becomes of it
        // (capped, like every caller-controlled field: `bad_caller_field`).
        call.name = Some(name.into());
        // A session's caller authenticated when it opened the session (a
        // task that outlives the request, like a round of client input,
        // finds it there).
        let caller = session
            .and_then(|s| s.caller.clone())
            .or_else(current_caller);
        // Phase: budget, the agent's. Every call counts, the ones policy
        // denies and the ones naming no tool too: those were free, so an
        // agent could write denied calls (with their intents) into the
        // audit trail, and make Dome list every upstream for each unknown
        // name, as fast as it could send them. (The tenant's is taken once
        // the call is allowed: one agent's denied calls must not use up
        // what its tenant's other agents may call.)
        if let Some(c) = &caller {
            self.take_budget(
                c,
                call,
                [("agent", c.agent.budgets.agent.as_ref()), ("", None)],
            )?;
        }
        let Some(route) = self.lookup(Kind::Tools, name).await else {
            self.strike_caller(caller.as_ref(), "unknown tool");
            return Err((code::INVALID_PARAMS, format!("Unknown tool: {name}")).into());
        };
        // The catalog's shared names: nothing copied per call.
        call.name = Some(route.public.clone());
        let mut upstream = self.upstreams[route.upstream].clone();
        if era != Era::Stateless {
            // Spoken to in the caller's era where it speaks both.
            upstream = upstream.for_session_caller().await;
        }
        call.upstream = Some(upstream.label().clone());
        // Phase: decide.
        let intent = call.intent.clone();
        let decided = self.decide_kind(
            "tool",
            name,
            Some(&route.original),
            e.arguments.as_deref(),
            &upstream,
            caller.as_ref(),
            intent.as_deref(),
            call,
        );
        let Allowed { redaction, budget } = match decided {
            Ok(a) => a,
            Err(refusal) => {
                self.strike_caller(caller.as_ref(), "denied by policy");
                return Err(refusal);
            }
        };
        // Phase: budget, the agent's for this tool (the allowing rule's
        // replaces the configured one) and the tenant's. Refused here, the
        // call gives back what it took of the agent's: it is refused for
        // this tool or tenant, not for all.
        if let Some(c) = &caller {
            let by_rule =
                budget.map(|rate| self.identity.rule_budgets.bucket(&c.agent.id, name, rate));
            let tool = by_rule
                .as_deref()
                .or_else(|| c.agent.budgets.tools.get(name));
            let levels = [
                ("agent x tool", tool),
                ("tenant", c.tenant.budget.as_deref()),
            ];
            if let Err(refusal) = self.take_budget(c, call, levels) {
                if let Some(b) = &c.agent.budgets.agent {
                    b.give_back();
                }
                return Err(refusal);
            }
        }
        // Phase: vouch. The caller's own credential never goes upstream.
        let assertion = match &caller {
            Some(c) => Some(
                self.vouch(&upstream, c, session, intent.as_deref(), call)
                    .map_err(Refusal::from)?,
            ),
            None => None,
        };
        let uid = upstream.allocate_id();
        let guard = match (session, &e.id) {
            (Some(s), Some(client_id)) => {
                let key = client_id.to_string();
                let cancelled = Arc::new(tokio::sync::Notify::new());
                s.inflight.lock().expect("inflight lock").insert(
                    key.clone(),
                    InflightCall {
                        upstream: upstream.clone(),
                        uid,
                        cancelled: cancelled.clone(),
                    },
                );
                Some(Inflight {
                    session: s.clone(),
                    key,
                    cancelled,
                })
            }
            _ => None,
        };
        let start = Instant::now();
        // The caller's era envelope stays here (the envelope parser left it
        // out of `meta_entries`); the upstream client adds its own.
        // A session's client declared its capabilities at `initialize`.
        let caps = caller_capabilities(e, session);
        let result = upstream
            .call_tool(
                uid,
                &super::upstream::CallParts {
                    name: &route.original,
                    arguments: e.arguments.as_deref(),
                    meta: &e.meta_entries,
                    extra: &e.extra_params,
                    client_capabilities: caps,
                    assertion: assertion
                        .as_deref()
                        .map(|a| (&self.identity.signer.header, a)),
                    log_level: session.and_then(|s| {
                        let floor = s.log_floor.load(std::sync::atomic::Ordering::Relaxed);
                        protocol::LOG_LEVELS.get(floor).copied()
                    }),
                    agent: Some(agent_key(caller.as_ref())),
                },
            )
            .await;
        // Time to the upstream's answer (for a stream: to its first byte).
        let took = start.elapsed();
        call.phase_ns[audit_phase::UPSTREAM] = took.as_nanos() as u64;
        let _ = TALLY.try_with(|t| {
            t.borrow_mut().upstream = Some((upstream.label().clone(), route.public.clone(), took))
        });
        match result {
            Ok((reply, _)) => Ok((upstream, reply, guard, redaction)),
            Err(e) => {
                tracing::warn!(upstream = %upstream.name(), error = %e, tool = name, "tools/call failed");
                Err(Refusal {
                    code: e.code(),
                    message: e.to_string(),
                    // An agent over its share retries once one of its calls is answered.
                    retry_after_ms: (e.code() == code::RATE_LIMITED).then_some(1000),
                })
            }
        }
    }

    async fn dispatch(
        self: Arc<Self>,
        era: Era,
        method: &str,
        id: Value,
        e: &Envelope,
        sse_ok: bool,
        session: Option<Arc<Session>>,
    ) -> Response<Body> {
        if method == "tools/call"
            && era == Era::Stateless
            && let Some(token) = super::input::parked_token(&e.extra_params)
        {
            return Box::pin(self.resume(&token, id, e)).await;
        }
        if method == "tools/call" && sse_ok {
            // Boxed: its future would otherwise be carried (and moved) by
            // every enclosing layer.
            match Box::pin(self.forward_call(e, era, session.as_ref())).await {
                Ok((upstream, Reply::Stream(st), guard, redaction)) => {
                    let to = RelayTo {
                        id,
                        era,
                        inflight: guard,
                        stateless: (era == Era::Stateless)
                            .then(|| (e.client_capabilities.clone(), self.sessions.clone())),
                        tool: e.name.clone().unwrap_or_default(),
                        retry: session.is_some().then(|| (self.clone(), e.clone())),
                        redaction,
                        log_floor: match (era, &session) {
                            (Era::Stateless, _) => Some(log_floor(e)),
                            (_, Some(s)) => {
                                Some(s.log_floor.load(std::sync::atomic::Ordering::Relaxed))
                            }
                            _ => None,
                        },
                        call: unstash(),
                    };
                    let parser = upstream.sse_parser();
                    return relay(upstream, st.into_body(), parser, to);
                }
                Ok((_, reply, _, redaction))
                    if let Some(s) = &session
                        && let Some(first) = super::input::required(&reply) =>
                {
                    // A stateless upstream wants input this session-era
                    // client gives by answering requests on the stream.
                    with_call(|c| c.outcome = Some(crate::audit::record::Outcome::InputRequired));
                    let (tx, rx) = tokio::sync::mpsc::channel(16);
                    let (gw, s, e) = (self.clone(), s.clone(), e.clone());
                    tokio::spawn(async move {
                        let asked = Asked {
                            session: s,
                            e,
                            method: "tools/call",
                            id,
                        };
                        gw.fulfil(asked, first, redaction, tx).await
                    });
                    return sse_response(rx);
                }
                Ok((upstream, reply, _, redaction)) => {
                    let reply = redacted(reply, redaction.as_ref(), upstream.name(), None);
                    return match reply.and_then(|r| readdress(era, &upstream, &id, r, method)) {
                        Ok((status, text, code)) => {
                            if let Some(o) = result_outcome(&text) {
                                with_call(|c| c.outcome = Some(o));
                            }
                            raw_json_response(status, text, code)
                        }
                        Err((c, m)) => json_response(StatusCode::OK, &rpc_error(&id, c, m)),
                    };
                }
                Err(r) => return r.respond(&id, era),
            }
        }
        if let (Some(s), true, Some(method)) = (&session, sse_ok, input_method(method)) {
            // A session-era caller of a prompt, read or completion: a
            // stateless upstream may answer `input_required`, whose requests
            // go to the caller on the call's stream, as for a tool call.
            let caps = caller_capabilities(e, Some(s));
            return match Box::pin(self.forward_other(method, e, caps)).await {
                Ok((_, reply)) if let Some(first) = super::input::required(&reply) => {
                    with_call(|c| c.outcome = Some(crate::audit::record::Outcome::InputRequired));
                    let (tx, rx) = tokio::sync::mpsc::channel(16);
                    let (gw, s, e) = (self.clone(), s.clone(), e.clone());
                    // Redacted already, each round (`forward_other`).
                    let asked = Asked {
                        session: s,
                        e,
                        method,
                        id,
                    };
                    tokio::spawn(async move { gw.fulfil(asked, first, None, tx).await });
                    sse_response(rx)
                }
                Ok((upstream, reply)) => match readdress(era, &upstream, &id, reply, method) {
                    Ok((status, text, code)) => raw_json_response(status, text, code),
                    Err((c, m)) => json_response(StatusCode::OK, &rpc_error(&id, c, m)),
                },
                Err((c, m)) => json_response(StatusCode::OK, &rpc_error(&id, c, m)),
            };
        }
        if method == "subscriptions/listen" && era == Era::Stateless {
            return Box::pin(self.listen(id, e, sse_ok)).await;
        }
        // Boxed: every method but tools/call, so the tools/call future
        // stays small.
        let (status, v) = Box::pin(self.answer_in(session.as_ref(), era, method, id, e)).await;
        json_response(status, &v)
    }

    /// `answer`, with what a session keeps of its own: its resource
    /// subscriptions and its log level (alone or in a batch).
    async fn answer_in(
        &self,
        session: Option<&Arc<Session>>,
        era: Era,
        method: &str,
        id: Value,
        e: &Envelope,
    ) -> (StatusCode, Value) {
        if let (Some(s), "resources/subscribe" | "resources/unsubscribe") = (session, method) {
            return Box::pin(self.subscribe(s, method == "resources/subscribe", id, e)).await;
        }
        // (The level is read only for this method: no parse on others.)
        if method == "logging/setLevel"
            && let Some(s) = session
            && let Ok(floor) = set_level_of(e)
        {
            s.log_floor
                .store(floor, std::sync::atomic::Ordering::Relaxed);
        }
        self.answer(session, era, method, id, e).await
    }
}

impl Gateway {
    /// The upstream serving resource `uri`: the one that lists it, else the
    /// one with a template that could produce it.
    async fn resource_upstream(&self, uri: &str) -> Option<Arc<Upstream>> {
        let index = match self.lookup(Kind::Resources, uri).await {
            Some(r) => Some(r.upstream),
            None => {
                let mut t = self.current(Kind::Templates);
                if catalog::template_route(&t, uri).is_none() {
                    t = self.refresh_for_client(Kind::Templates).await;
                }
                catalog::template_route(&t, uri).or_else(|| t.routes.get(uri).map(|r| r.upstream))
            }
        }?;
        self.upstreams.get(index).cloned()
    }

    /// A stateless caller's retry of a call Dome parked for its input: the
    /// answers go to the upstream's requests, and the call's stream resumes
    /// as this request's response. Answers still missing are asked again.
    async fn resume(&self, token: &str, id: Value, e: &Envelope) -> Response<Body> {
        // Taken only by a retry of the same tool from the agent that began
        // the call: anyone else's attempt leaves it waiting for its owner.
        let parked = {
            let mut parked = self.sessions.parked.lock().expect("parked lock");
            let caller = current_caller();
            match parked.get(token) {
                Some((_, p))
                    if e.name.as_deref() == Some(p.tool.as_str())
                        && same_agent(p.owner.as_ref(), caller.as_ref()) =>
                {
                    parked.remove(token).map(|(_, p)| p)
                }
                _ => None,
            }
        };
        let Some(mut call) = parked else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &id,
                    code::INVALID_PARAMS,
                    "requestState names no call Dome is holding for this tool (expired, already resumed, or another tool's)",
                ),
            );
        };
        let answers = super::input::responses(&e.extra_params);
        let mut missing = Vec::new();
        let mut given = Vec::new();
        for (key, up_id, req) in call.asks.drain(..) {
            match answers.get(&key) {
                Some(a) => given.push((up_id, a.clone())),
                None => missing.push((key, up_id, req)),
            }
        }
        let up = call.upstream.clone();
        let answered = async move {
            for (up_id, a) in given {
                if let Err(err) = up.answer(up_id, Some(a), None).await {
                    tracing::debug!(upstream = %up.name(), error = %err, "relaying an input response failed");
                }
            }
        };
        if !missing.is_empty() {
            tokio::spawn(answered);
            call.asks = missing;
            let result = self.sessions.park(call);
            return json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "result": result}),
            );
        }
        let super::input::Parked {
            upstream,
            body,
            parser,
            tool,
            redaction: call_redaction,
            ..
        } = call;
        // The answers reach the upstream before its stream is read again.
        answered.await;
        // The resumed call gets a record of its own (the parked one says
        // it waited for input).
        let mut record = match self
            .open_call(crate::audit::record::Kind::Tool, e, None)
            .await
        {
            Ok(c) => c,
            Err(r) => return r.respond(&id, Era::Stateless),
        };
        record.name = Some(tool.as_str().into());
        record.upstream = Some(upstream.label().clone());
        record.decision = crate::audit::record::Decision::Allow;
        let to = RelayTo {
            id,
            era: Era::Stateless,
            inflight: None,
            stateless: Some((e.client_capabilities.clone(), self.sessions.clone())),
            tool,
            retry: None,
            // The parked call was judged when it began.
            redaction: call_redaction,
            log_floor: Some(log_floor(e)),
            call: Some(record),
        };
        relay(upstream, body, parser, to)
    }

    /// Rounds of a stateless upstream's `input_required` for a session-era
    /// client: each request goes to the client on the call's stream (`tx`)
    /// under an id of Dome's; with every answer in, the call goes to the
    /// upstream again with `inputResponses` and its `requestState`, until a
    /// final result, which goes to the client under its own id.
    async fn fulfil(
        self: Arc<Self>,
        asked: Asked,
        first: Value,
        redaction: Option<Redaction>,
        tx: Push,
    ) {
        let Asked {
            session,
            e,
            method,
            id,
        } = asked;
        // The redactions of the round whose requests go out: the upstream's
        // questions are its output too.
        let mut asking = redaction;
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(Frame::data(sse::event(&v.to_string()))))
                    .await
                    .is_ok()
            }
        };
        let mut result = first;
        loop {
            let mut waits = Vec::new();
            let requests = result["inputRequests"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for (key, req) in requests {
                let down_id = format!(
                    "dome-{}",
                    NEXT_SERVER_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                let (otx, orx) = tokio::sync::oneshot::channel();
                session
                    .local_requests
                    .lock()
                    .expect("local requests lock")
                    .insert(Value::String(down_id.clone()).to_string(), otx);
                let mut msg = json!({"jsonrpc": "2.0", "id": down_id, "method": req["method"]});
                if let Some(p) = req.get("params") {
                    msg["params"] = p.clone();
                }
                if let Some(r) = &asking {
                    r.apply_any(&mut msg);
                }
                // Asked of a client that cannot answer, it would refuse
                // with no more than "method not found": the call ends with
                // the error the upstream would have given, had it checked.
                if !super::input::declares(session.capabilities.as_deref(), &req["method"]) {
                    session
                        .local_requests
                        .lock()
                        .expect("local requests lock")
                        .remove(&Value::String(down_id).to_string());
                    let mut error =
                        super::input::cannot_take(&req["method"], code::MISSING_CLIENT_CAPABILITY);
                    error["message"] = format!(
                        "upstream asked for input: {}",
                        error["message"].as_str().unwrap_or_default()
                    )
                    .into();
                    tracing::info!(method = %req["method"], "an upstream asked a client for input it cannot give");
                    send(json!({"jsonrpc": "2.0", "id": id, "error": error})).await;
                    return;
                }
                if !send(msg).await {
                    return;
                }
                waits.push((key, orx));
            }
            let mut answers = serde_json::Map::new();
            for (key, orx) in waits {
                let answer = tokio::select! {
                    a = tokio::time::timeout(super::input::ANSWER_TTL, orx) => a,
                    _ = tx.closed() => return,
                };
                match answer {
                    Ok(Ok(a)) if a.get("result").is_some() => {
                        answers.insert(key, a["result"].clone());
                    }
                    Ok(Ok(a)) => {
                        // The client refused: the call ends with its error.
                        let mut err = a;
                        err["id"] = id.clone();
                        send(err).await;
                        return;
                    }
                    _ => {
                        send(rpc_error(
                            &id,
                            code::INVALID_REQUEST,
                            "the client did not answer the upstream's request for input",
                        ))
                        .await;
                        return;
                    }
                }
            }
            let again = with_answers(&e, method, answers, result.get("requestState"));
            // Each round is a call upstream with a record of its own, kept
            // here (this task answers outside any request).
            let (forwarded, mut record) = TALLY
                .scope(std::cell::RefCell::new(Box::default()), async {
                    let r = if method == "tools/call" {
                        self.forward_call(&again, Era::Session(session.version), Some(&session))
                            .await
                            .map(|(u, r, _, red)| (u, r, red))
                    } else {
                        let caps = session.capabilities.as_deref();
                        // Redacted there, as the first round was.
                        self.forward_other(method, &again, caps)
                            .await
                            .map(|(u, r)| (u, r, None))
                            .map_err(Refusal::from)
                    };
                    (r, unstash())
                })
                .await;
            let (upstream, reply, redaction) = match forwarded {
                Ok(r) => r,
                Err(r) => {
                    drop(record);
                    send(r.to_rpc(&id)).await;
                    return;
                }
            };
            let last = match reply {
                Reply::Stream(resp) => {
                    // Notifications pass on; the response ends the round.
                    let mut body = resp.into_body();
                    let mut parser = upstream.sse_parser();
                    let mut last = None;
                    let floor = session.log_floor.load(std::sync::atomic::Ordering::Relaxed);
                    let mut broke = None;
                    'read: while let Some(frame) = body.frame().await {
                        let frame = match frame {
                            Ok(f) => f,
                            Err(e) => {
                                broke = Some(e);
                                break;
                            }
                        };
                        let Some(data) = frame.data_ref() else {
                            continue;
                        };
                        if parser.push(data).is_err() {
                            break;
                        }
                        while let Some(ev) = parser.next_event() {
                            let Ok(mut v) = serde_json::from_str::<Value>(&ev) else {
                                continue;
                            };
                            if v.get("method").is_none() {
                                last = Some(v);
                                break 'read;
                            }
                            if !admits_log(&v, Some(floor)) {
                                continue;
                            }
                            if let Some(r) = &redaction {
                                let counts = r.apply_any(&mut v);
                                if let Some(c) = record.as_mut() {
                                    c.add_redactions(&counts);
                                }
                            }
                            if !send(v).await {
                                return;
                            }
                        }
                    }
                    match last {
                        Some(v) => v,
                        None => {
                            // Quiet past its idle timeout, it timed out.
                            let why = match broke {
                                Some(e) if e.kind() == std::io::ErrorKind::TimedOut => format!(
                                    "{}: {e}",
                                    super::upstream::stream_error(upstream.name(), &e)
                                ),
                                _ => format!("upstream `{}` broke the stream", upstream.name()),
                            };
                            send(rpc_error(&id, code::UPSTREAM_UNAVAILABLE, why)).await;
                            return;
                        }
                    }
                }
                Reply::Json(v) => v,
                Reply::Raw(b) => serde_json::from_slice(&b).unwrap_or_else(|_| {
                    rpc_error(
                        &id,
                        code::UPSTREAM_UNAVAILABLE,
                        format!(
                            "upstream `{}` sent something that is not JSON",
                            upstream.name()
                        ),
                    )
                }),
            };
            if super::input::is_input_required(&last) {
                if let Some(c) = record.as_mut() {
                    c.outcome = Some(crate::audit::record::Outcome::InputRequired);
                }
                result = last["result"].clone();
                asking = redaction;
                continue;
            }
            let mut last = last;
            let counts = redaction.as_ref().map(|r| r.apply(&mut last));
            last["id"] = id.clone();
            protocol::fit_to_era(&mut last, false);
            if let Some(mut c) = record.take() {
                note_final(&mut c, &last, counts.as_ref());
                // The answer leaves only once its record is durable.
                if let Err(u) = c.finish().await {
                    last = rpc_error(&id, code::AUDIT_UNAVAILABLE, u.0);
                }
            }
            send(last).await;
            return;
        }
    }

    /// `resources/subscribe` and `unsubscribe` of a session: recorded per
    /// session; the upstream is asked only for the first subscriber of a URI
    /// and told when the last one leaves (see `Upstream::want`).
    /// Whether policy lets `caller` read resource `uri`: a subscription is
    /// a standing read, judged like one (the denial's reason otherwise).
    fn may_read(
        &self,
        uri: &str,
        upstream: Option<&Upstream>,
        caller: Option<&Caller>,
        intent: Option<&str>,
    ) -> Result<(), String> {
        let req = policy_request(
            caller,
            "resource",
            uri,
            upstream.map(|u| u.name()),
            intent,
            None,
        );
        match self.identity.policy.decide(&req) {
            crate::policy::compile::Decision::Allow { obligations, .. }
                if obligations.require_intent && intent.is_none() =>
            {
                Err(format!(
                    "denied: this resource needs a stated intent (params._meta[\"{INTENT_META}\"])"
                ))
            }
            crate::policy::compile::Decision::Allow { .. } => Ok(()),
            crate::policy::compile::Decision::Deny { reason, .. } => {
                Err(format!("denied: {reason}"))
            }
        }
    }

    async fn subscribe(
        &self,
        session: &Arc<Session>,
        on: bool,
        id: Value,
        e: &Envelope,
    ) -> (StatusCode, Value) {
        let ok = (
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": {}}),
        );
        let Some(uri) = e
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .and_then(|p| p["uri"].as_str().map(str::to_string))
        else {
            return (
                StatusCode::OK,
                rpc_error(&id, code::INVALID_PARAMS, "params.uri is required"),
            );
        };
        if let Some(why) = uri_problem(Kind::Resources, &uri) {
            return (StatusCode::OK, rpc_error(&id, code::INVALID_PARAMS, why));
        }
        let Some(upstream) = self.resource_upstream(&uri).await else {
            return (
                StatusCode::OK,
                rpc_error(
                    &id,
                    code::INVALID_PARAMS,
                    format!("Unknown resource: {uri}"),
                ),
            );
        };
        if on
            && let Err(reason) = self.may_read(
                &uri,
                Some(&upstream),
                session.caller.as_ref(),
                intent_of(e).as_deref(),
            )
        {
            return (StatusCode::OK, rpc_error(&id, code::POLICY_DENIED, reason));
        }
        if !self.sessions.subscribe(&uri, &session.id, on) {
            // Already subscribed (or not subscribed): nothing changes.
            return ok;
        }
        match upstream.want(&uri, on).await {
            Ok(Some(answer)) if answer.get("result").is_none() => {
                if on {
                    self.sessions.subscribe(&uri, &session.id, false);
                }
                let mut answer = answer;
                answer["id"] = id;
                (StatusCode::OK, answer)
            }
            Ok(_) => ok,
            Err(err) => {
                if on {
                    self.sessions.subscribe(&uri, &session.id, false);
                }
                (
                    StatusCode::OK,
                    rpc_error(&id, code::UPSTREAM_UNAVAILABLE, err.to_string()),
                )
            }
        }
    }

    /// `subscriptions/listen` (stateless era): the response is a stream that
    /// opens with `notifications/subscriptions/acknowledged` (the filter
    /// Dome honors: what the client asked for that some upstream offers)
    /// and then carries the matching change notifications of every
    /// upstream, each stamped with the listen request's id, until the
    /// client closes it.
    async fn listen(&self, id: Value, e: &Envelope, sse_ok: bool) -> Response<Body> {
        let bad = |c: i64, m: &str| json_response(stateless_status(c), &rpc_error(&id, c, m));
        let caps = self.capabilities();
        let offers = |kind: &str, flag: &str| caps[kind][flag] == true;
        if !(offers("tools", "listChanged")
            || offers("prompts", "listChanged")
            || offers("resources", "listChanged")
            || offers("resources", "subscribe"))
        {
            return bad(
                code::METHOD_NOT_FOUND,
                "Method not found: subscriptions/listen (no upstream offers change notifications)",
            );
        }
        if id.is_null() {
            return bad(
                code::INVALID_REQUEST,
                "subscriptions/listen needs a request id",
            );
        }
        if !sse_ok {
            return bad(
                code::INVALID_REQUEST,
                "subscriptions/listen answers with a stream: Accept must list text/event-stream",
            );
        }
        let params: Value = e
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        // Counted before anything is subscribed upstream for it.
        let cap = self.config.max_streams_per_agent;
        let Some(slot) = self
            .sessions
            .open_stream_slot(agent_key(current_caller().as_ref()), cap)
        else {
            return too_many_streams(&id, cap);
        };
        let Some(asked) = params.get("notifications").and_then(Value::as_object) else {
            return bad(
                code::INVALID_PARAMS,
                "subscriptions/listen needs params.notifications (a SubscriptionFilter)",
            );
        };
        let wants = |key: &str| asked.get(key) == Some(&Value::Bool(true));
        let mut filter = ListenFilter {
            tools: wants("toolsListChanged") && offers("tools", "listChanged"),
            prompts: wants("promptsListChanged") && offers("prompts", "listChanged"),
            resources: wants("resourcesListChanged") && offers("resources", "listChanged"),
            uris: Default::default(),
        };
        let mut wanted = Vec::new();
        if offers("resources", "subscribe") {
            let uris = asked
                .get("resourceSubscriptions")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                .unwrap_or_default();
            let caller = current_caller();
            let intent = intent_of(e);
            for uri in uris {
                let upstream = self.resource_upstream(uri).await;
                // Policy first: a URI the caller may not read is left out
                // of the filter Dome acknowledges.
                if let Err(reason) =
                    self.may_read(uri, upstream.as_deref(), caller.as_ref(), intent.as_deref())
                {
                    tracing::debug!(uri, reason, "resource subscription denied by policy");
                    continue;
                }
                // Like a subscription to a URI no upstream serves, one the
                // upstream refuses is honored and never fires.
                filter.uris.insert(uri.to_string());
                if let Some(u) = upstream {
                    match u.want(uri, true).await {
                        Ok(Some(a)) if a.get("result").is_none() => {
                            tracing::debug!(upstream = %u.name(), uri, answer = %a, "resource subscription refused");
                        }
                        Ok(_) => wanted.push((u, uri.to_string())),
                        Err(err) => {
                            tracing::warn!(upstream = %u.name(), uri, error = %err, "resource subscription failed");
                        }
                    }
                }
            }
        }
        let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": filter.to_json(), "_meta": {protocol::META_SUBSCRIPTION_ID: id}}});
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // The ack goes first: nothing is routed to this stream before it is
        // registered below.
        let _ = tx.try_send(Ok(Frame::data(sse::event(&ack.to_string()))));
        let key = NEXT_LISTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions.listens.lock().expect("listens lock").insert(
            key,
            Listen {
                id,
                filter,
                push: tx.clone(),
            },
        );
        let table = self.sessions.clone();
        let mut closing = table.closing.subscribe();
        tokio::spawn(async move {
            // The client closed the stream, or Dome is shutting down: forget
            // it and its URIs (the stream ends once this sender goes too).
            tokio::select! {
                _ = tx.closed() => {}
                _ = closing.wait_for(|c| *c) => {}
            }
            drop(tx);
            table.listens.lock().expect("listens lock").remove(&key);
            for (u, uri) in wanted {
                let _ = u.want(&uri, false).await;
            }
        });
        held_sse_response(rx, slot)
    }
}

/// What a policy rule asks to be redacted from a call's result, with the
/// tool's output schema (so structured content stays valid).
#[derive(Clone)]
pub struct Redaction {
    redactor: Arc<crate::policy::redact::Redactor>,
    schema: Value,
}

impl Redaction {
    /// Redacts a JSON-RPC response in place, its result or its error;
    /// says how many values of each kind it took out.
    fn apply(&self, response: &mut Value) -> crate::policy::redact::Counts {
        if let Some(result) = response.get_mut("result") {
            return self.redactor.result(result, &self.schema);
        }
        match response.get_mut("error") {
            Some(error) => self.redactor.error(error),
            None => Default::default(),
        }
    }

    /// Redacts any message an upstream sends during a call: a response as
    /// [`Redaction::apply`], a notification's or request's params.
    fn apply_any(&self, message: &mut Value) -> crate::policy::redact::Counts {
        if message.get("method").is_none() {
            return self.apply(message);
        }
        match message.get_mut("params") {
            Some(params) => self.redactor.params(params),
            None => Default::default(),
        }
    }
}

/// Whether `message` passes a caller's lowest wanted log level (an index
/// into `LOG_LEVELS`, `None`: all): a caller gets log messages only at the
/// level it asked for, which a session-era upstream does not know of a
/// stateless caller, and no upstream knows of a session.
fn admits_log(message: &Value, floor: Option<usize>) -> bool {
    let Some(floor) = floor else { return true };
    message["method"] != "notifications/message"
        || message["params"]["level"]
            .as_str()
            .and_then(protocol::log_level_rank)
            .is_some_and(|l| l >= floor)
}

/// The level a `logging/setLevel` asks for, as an index into `LOG_LEVELS`.
fn set_level_of(e: &Envelope) -> Result<usize, String> {
    let params: Value = e
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let level = params["level"].as_str().unwrap_or_default();
    protocol::log_level_rank(level).ok_or_else(|| {
        format!(
            "unknown log level `{level}`; levels: {}",
            protocol::LOG_LEVELS.join(", ")
        )
    })
}

/// The lowest log level a stateless caller asked for in
/// `_meta["io.modelcontextprotocol/logLevel"]`, as an index into
/// `LOG_LEVELS`; past the end when it asked for none (or named no level).
fn log_floor(e: &Envelope) -> usize {
    e.meta_entries
        .iter()
        .find(|(k, _)| k == protocol::META_LOG_LEVEL)
        .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
        .and_then(|l| protocol::log_level_rank(&l))
        .unwrap_or(protocol::LOG_LEVELS.len())
}

/// `reply` with the policy's redactions applied (a tree is built only
/// then). A reply that cannot be read cannot be redacted: it is refused,
/// naming the upstream, rather than passed on as it came. The counts go
/// to `call`, or to the request's own call when that is `None`.
fn redacted(
    reply: Reply,
    redaction: Option<&Redaction>,
    upstream: &str,
    call: Option<&mut Call>,
) -> Result<Reply, (i64, String)> {
    let Some(r) = redaction else { return Ok(reply) };
    let mut v: Value = match &reply {
        Reply::Json(v) => v.clone(),
        Reply::Raw(b) => serde_json::from_slice(b).map_err(|e| {
            (
                code::UPSTREAM_UNAVAILABLE,
                format!(
                    "upstream `{upstream}` sent a response that cannot be read ({e}), \
                     and policy says to redact it: withheld"
                ),
            )
        })?,
        Reply::Stream(_) => return Ok(reply),
    };
    let counts = r.apply(&mut v);
    match call {
        Some(c) => c.add_redactions(&counts),
        None => with_call(|c| c.add_redactions(&counts)),
    }
    Ok(Reply::Json(v))
}

/// Notes a call's final JSON-RPC response in its record: redactions, and
/// how it ended (error code, the tool's `isError`, waiting for input, or a
/// result).
fn note_final(c: &mut Call, v: &Value, counts: Option<&crate::policy::redact::Counts>) {
    use crate::audit::record::Outcome;
    if let Some(counts) = counts {
        c.add_redactions(counts);
    }
    match v["error"]["code"].as_i64() {
        Some(code) => c.failed(code, v["error"]["message"].as_str().unwrap_or("")),
        None if v["result"]["isError"] == true => c.outcome = Some(Outcome::ToolError),
        None if super::input::is_input_required(v) => c.outcome = Some(Outcome::InputRequired),
        None => c.outcome = Some(Outcome::Ok),
    }
}

/// Arguments as the audit record logs them: with the rule's redactions,
/// or every built-in detector when the rule has none (values a policy
/// did not think of stay out of the trail too).
fn logged_args(text: &str, redactor: Option<&crate::policy::redact::Redactor>) -> String {
    static ALL: std::sync::LazyLock<crate::policy::redact::Redactor> =
        std::sync::LazyLock::new(|| {
            let names: Vec<String> = crate::policy::redact::DETECTORS
                .iter()
                .map(|d| d.to_string())
                .collect();
            crate::policy::redact::Redactor::new(&names).expect("built-in detectors compile")
        });
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        return String::new();
    };
    let mut counts = Default::default();
    redactor
        .unwrap_or(&ALL)
        .value(&mut v, &Value::Null, &mut counts);
    let full = v.to_string();
    if full.len() <= MAX_LOGGED_ARGS_BYTES {
        return full;
    }
    // Still JSON, and still a start an operator can read; the digest in
    // the record identifies the whole.
    let head = crate::audit::call::capped(&full, MAX_LOGGED_ARGS_BYTES);
    json!({"dome/truncated": {"bytes": full.len(), "head": head}}).to_string()
}

/// The most of a call's arguments `log_args = "full"` keeps in its record
/// (they were kept whole: a body of `max_body_bytes` in every record let
/// one agent write the trail at its own pace).
pub const MAX_LOGGED_ARGS_BYTES: usize = 4096;

/// A bucket that never refuses, to fill unused budget levels.
static UNLIMITED: std::sync::LazyLock<crate::identity::budget::Bucket> =
    std::sync::LazyLock::new(|| {
        crate::identity::budget::Bucket::new(crate::identity::budget::Rate {
            calls_per_s: f64::MAX,
            burst: u32::MAX,
        })
    });

/// Why a tool call was not forwarded.
struct Refusal {
    code: i64,
    message: String,
    /// Over a budget or an agent's share of an upstream: when the call
    /// would pass (`data.retryAfterMs`).
    retry_after_ms: Option<u64>,
}

impl From<(i64, String)> for Refusal {
    fn from((code, message): (i64, String)) -> Self {
        Refusal {
            code,
            message,
            retry_after_ms: None,
        }
    }
}

impl Refusal {
    fn to_rpc(&self, id: &Value) -> Value {
        let mut v = rpc_error(id, self.code, self.message.clone());
        if let Some(ms) = self.retry_after_ms {
            v["error"]["data"] = json!({"retryAfterMs": ms});
        }
        v
    }

    /// The response in `era`.
    fn respond(&self, id: &Value, era: Era) -> Response<Body> {
        let status = if era == Era::Stateless {
            stateless_status(self.code)
        } else {
            StatusCode::OK
        };
        json_response(status, &self.to_rpc(id))
    }
}

/// Where a relayed stream's final response goes and what its caller can do.
struct RelayTo {
    id: Value,
    era: Era,
    inflight: Option<Inflight>,
    /// A stateless caller: the capabilities it declared (JSON text), and
    /// where a call waiting for its input is parked between its rounds.
    stateless: Option<(Option<String>, Arc<SessionTable>)>,
    /// The tool called, so a retry that resumes a parked call names it.
    tool: String,
    /// A session-era caller's call, to call again when a stateless upstream
    /// answers `input_required` at the end of its stream.
    retry: Option<(Arc<Gateway>, Envelope)>,
    /// Redaction the policy asks of the result.
    redaction: Option<Redaction>,
    /// The caller's lowest wanted log level (an index into `LOG_LEVELS`;
    /// past its end: none): a stateless caller's from the request, a
    /// session's from its `logging/setLevel`; `None`: all.
    log_floor: Option<usize>,
    /// The call's audit record, finished when the final response passes
    /// (and before it does, so nothing is answered unrecorded).
    call: Option<Call>,
}

/// Relays an upstream SSE response event by event as it arrives, giving the
/// final response the caller's id. Dropping the downstream stream (the
/// client went away) drops the upstream body, which closes that upstream
/// connection and so cancels the call there.
///
/// A request the upstream sends mid-call goes to a session-era caller under
/// an id of Dome's. A stateless caller cannot take requests: Dome parks the
/// call and answers `input_required` with the upstream's requests; the
/// caller's retry resumes it (see `Gateway::resume`).
fn relay(
    up: Arc<Upstream>,
    body: super::pool::Body,
    parser: SseParser,
    to: RelayTo,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let session = to.inflight.as_ref().map(|i| i.session.clone());
    tokio::spawn(async move {
        let RelayTo {
            id,
            era,
            inflight,
            stateless,
            tool,
            retry,
            redaction,
            log_floor,
            call,
        } = to;
        let mut call = call;
        let upstream = up.name().to_string();
        let mut bytes_out = 0u64;
        let mut unreadable = 0u32;
        // The call stays cancellable until its stream ends.
        let cancelled = inflight.as_ref().map(|i| i.cancelled.clone());
        let _inflight = inflight;
        let mut body = body;
        let mut parser = parser;
        let cancel_notice = async {
            match &cancelled {
                Some(c) => c.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancel_notice);
        // The loop returns once the call is answered, cancelled or parked;
        // it breaks with why the upstream failed it.
        let failure = loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = tx.closed() => {
                    tracing::debug!(%upstream, "client closed the stream; cancelling the upstream call");
                    if let Some(c) = call.as_mut() {
                        c.outcome = Some(crate::audit::record::Outcome::Cancelled);
                        c.bytes_out = bytes_out;
                    }
                    return;
                }
                _ = &mut cancel_notice => {
                    // The upstream heard of it (`forward_cancel`); whatever
                    // it still sends is for no one. Ending the stream here
                    // also holds nothing for an upstream that ignores it.
                    tracing::debug!(%upstream, "client cancelled the call");
                    if let Some(c) = call.as_mut() {
                        c.outcome = Some(crate::audit::record::Outcome::Cancelled);
                        c.reason = Some("cancelled by the client (notifications/cancelled)".into());
                        c.bytes_out = bytes_out;
                    }
                    return;
                }
            };
            let Some(frame) = frame else {
                // The stream ended without an answer (a response is the
                // last thing relayed): the caller still gets one.
                break if unreadable > 0 {
                    format!(
                        "upstream `{upstream}` sent {unreadable} message(s) that cannot be read \
                         (withheld) and no answer"
                    )
                } else {
                    format!("upstream `{upstream}` ended the stream without an answer")
                };
            };
            let frame = match frame {
                Ok(f) => f,
                // Quiet past its idle timeout: the upstream timed out (the
                // body dropped its connection).
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    break format!("{}: {e}", super::upstream::stream_error(&upstream, &e));
                }
                Err(_) => break format!("upstream `{upstream}` broke the stream"),
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if let Err(e) = parser.push(data) {
                // Dropping the body closes the upstream connection.
                break format!("upstream `{upstream}` sent {e}");
            }
            // Requests for a stateless caller's input, gathered over the
            // events that arrived together.
            let mut asks: Vec<(Value, Value)> = Vec::new();
            while let Some(ev) = parser.next_event() {
                if ev.trim().is_empty() {
                    // A priming event (an id to resume from, no message).
                    continue;
                }
                let Ok(mut v) = serde_json::from_str::<Value>(&ev) else {
                    // Not relayed: unread, it could not be redacted, and
                    // the caller could not read it either.
                    unreadable += 1;
                    tracing::debug!(%upstream, "an event that is not JSON-RPC was dropped");
                    continue;
                };
                let is_response = v.get("method").is_none()
                    && (v.get("result").is_some() || v.get("error").is_some());
                if !admits_log(&v, log_floor) {
                    continue;
                }
                // What the upstream says on the way (progress and log
                // messages, requests to the client) is its output too.
                if !is_response && let Some(r) = &redaction {
                    let counts = r.apply_any(&mut v);
                    if let Some(c) = call.as_mut() {
                        c.add_redactions(&counts);
                    }
                }
                if v["method"] == "notifications/cancelled"
                    && let Some(s) = &session
                {
                    // The upstream gave up a request it relayed to the
                    // client: name it by the id the client knows.
                    let up_id = v["params"]["requestId"].clone();
                    let mut pending = s.server_requests.lock().expect("server requests lock");
                    let key = pending
                        .iter()
                        .find(|(_, (u, id))| Arc::ptr_eq(u, &up) && *id == up_id)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = key {
                        pending.remove(&k);
                        v["params"]["requestId"] = serde_json::from_str(&k).unwrap_or(Value::Null);
                    }
                }
                if v.get("method").is_some() && v.get("id").is_some() {
                    // A request from the upstream to the client (sampling,
                    // elicitation, roots).
                    let up_id = v["id"].take();
                    match (&session, &stateless) {
                        (Some(s), _)
                            if super::input::declares(s.capabilities.as_deref(), &v["method"]) =>
                        {
                            // Relayed under an id of Dome's, its answer
                            // routed back (see `forward_answer`).
                            let down_id = format!(
                                "dome-{}",
                                NEXT_SERVER_REQUEST
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            );
                            s.server_requests
                                .lock()
                                .expect("server requests lock")
                                .insert(
                                    Value::String(down_id.clone()).to_string(),
                                    (up.clone(), up_id),
                                );
                            v["id"] = Value::String(down_id);
                        }
                        (None, Some((caps, _)))
                            if super::input::declares(caps.as_deref(), &v["method"]) =>
                        {
                            asks.push((up_id, v));
                            continue;
                        }
                        _ => {
                            // Nobody to ask (the caller did not declare the
                            // capability): the upstream hears so, in the
                            // terms of its era (it speaks the session era:
                            // only those upstreams ask mid-call).
                            let err =
                                super::input::cannot_take(&v["method"], code::METHOD_NOT_FOUND);
                            let up = up.clone();
                            tokio::spawn(async move {
                                let _ = up.answer(up_id, None, Some(err)).await;
                            });
                            continue;
                        }
                    }
                }
                if is_response
                    && super::input::is_input_required(&v)
                    && let (Some((gw, e)), Some(s)) = (&retry, &session)
                {
                    let first = v["result"].take();
                    if let Some(c) = call.as_mut() {
                        c.outcome = Some(crate::audit::record::Outcome::InputRequired);
                    }
                    drop(call.take());
                    gw.clone()
                        .fulfil(
                            Asked {
                                session: s.clone(),
                                e: e.clone(),
                                method: "tools/call",
                                id: id.clone(),
                            },
                            first,
                            redaction.clone(),
                            tx.clone(),
                        )
                        .await;
                    return;
                }
                if is_response {
                    let counts = redaction.as_ref().map(|r| r.apply(&mut v));
                    v["id"] = id.clone();
                    protocol::fit_to_era(&mut v, era == Era::Stateless);
                    if era == Era::Stateless
                        && v.get("result").is_some()
                        && v["result"].get("resultType").is_none()
                    {
                        v["result"]["resultType"] = "complete".into();
                    }
                    if let Some(mut c) = call.take() {
                        note_final(&mut c, &v, counts.as_ref());
                        let text = v.to_string();
                        c.bytes_out = bytes_out + text.len() as u64;
                        // The answer leaves only once its record is durable.
                        if let Err(u) = c.finish().await {
                            tracing::error!(error = %u.0, "answering a call failed closed: its audit record is not durable");
                            v = rpc_error(&id, code::AUDIT_UNAVAILABLE, u.0);
                        }
                    }
                }
                let text = v.to_string();
                bytes_out += text.len() as u64;
                if tx.send(Ok(Frame::data(sse::event(&text)))).await.is_err() {
                    return;
                }
                if is_response {
                    return;
                }
            }
            if !asks.is_empty()
                && let Some((_, table)) = &stateless
            {
                // The record is written as it drops; its caller owns the call.
                let owner = call.take().and_then(|mut c| {
                    c.outcome = Some(crate::audit::record::Outcome::InputRequired);
                    c.bytes_out = bytes_out;
                    c.caller.clone()
                });
                let result = table.park(super::input::Parked {
                    upstream: up.clone(),
                    body,
                    parser,
                    tool,
                    redaction,
                    owner,
                    asks: asks
                        .into_iter()
                        .enumerate()
                        .map(|(i, (up_id, req))| (format!("dome-{}", i + 1), up_id, req))
                        .collect(),
                });
                let v = json!({"jsonrpc": "2.0", "id": id, "result": result});
                let _ = tx.send(Ok(Frame::data(sse::event(&v.to_string())))).await;
                return;
            }
        };
        // The caller still gets an answer, and the record says why.
        if let Some(mut c) = call.take() {
            c.failed(code::UPSTREAM_UNAVAILABLE, &failure);
            c.bytes_out = bytes_out;
            let _ = c.finish().await;
        }
        let e = rpc_error(&id, code::UPSTREAM_UNAVAILABLE, failure);
        let _ = tx.send(Ok(Frame::data(sse::event(&e.to_string())))).await;
    });
    sse_response(rx)
}

/// The stateless era's validation ladder: envelope keys, routing headers,
/// then the version. First failure wins.
fn stateless_ladder(
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

fn accepts(headers: &HeaderMap) -> (bool, bool) {
    // Media ranges, parameters dropped, compared without allocating (this
    // runs on every POST).
    let (mut json, mut sse) = (false, false);
    let ranges = headers
        .get_all(header::ACCEPT)
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

/// 128 random bits, hex: unguessable and a valid header value.
fn new_session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod uri_tests {
    use super::*;

    #[test]
    fn a_blank_intent_is_no_intent() {
        let with = |text: &str| Envelope {
            dome_meta: vec![(INTENT_META.to_string(), text.to_string())],
            ..Default::default()
        };
        for blank in [r#"" ""#, r#""\u200b""#, r#""\t \n""#, r#""""#] {
            assert_eq!(intent_of(&with(blank)), None, "{blank}");
        }
        assert_eq!(
            intent_of(&with(r#"" refund ""#)).as_deref(),
            Some(" refund ")
        );
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
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

    #[test]
    fn outcomes_read_from_result_text() {
        use crate::audit::record::Outcome;
        let r = |t: &str| result_outcome(t.as_bytes());
        assert_eq!(
            r(r#"{"result":{"content":[],"isError":true}}"#),
            Some(Outcome::ToolError)
        );
        assert_eq!(
            r(r#"{"result":{"isError": true}}"#),
            Some(Outcome::ToolError)
        );
        assert_eq!(r(r#"{"result":{"isError":false}}"#), None);
        assert_eq!(
            r(r#"{"result":{"resultType":"input_required","inputRequests":{}}}"#),
            Some(Outcome::InputRequired)
        );
        assert_eq!(r(r#"{"result":{"resultType":"complete"}}"#), None);
        // The words inside a string value are not the keys.
        assert_eq!(
            r(r#"{"result":{"content":[{"type":"text","text":"{\"isError\":true}"}]}}"#),
            None
        );
    }

    #[test]
    fn session_ids_are_long_and_distinct() {
        let a = new_session_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_session_id());
    }
}
