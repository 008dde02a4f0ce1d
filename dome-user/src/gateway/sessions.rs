//! Session-era state: the session table, each session's in-flight calls,
//! requests relayed to its client, subscriptions and streams (counted per
//! agent), and parked calls waiting for a stateless caller's input.

use super::*;

/// Ids Dome gives the upstreams' requests to clients.
pub(super) static NEXT_SERVER_REQUEST: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(1);

pub(super) struct Session {
    pub(super) id: String,
    pub(super) version: &'static str,
    /// The client's GET stream, for messages no request of its own carries.
    pub(super) push: std::sync::Mutex<Option<Push>>,
    /// Upstream requests relayed to this client, by the id Dome gave them
    /// (JSON text): which upstream asked, and its id for the request.
    pub(super) server_requests: std::sync::Mutex<HashMap<String, (Arc<Upstream>, Value)>>,
    /// Calls in flight, by the client's request id (JSON text): where they
    /// went, so `notifications/cancelled` reaches the right upstream request,
    /// and the relay that stops answering it.
    pub(super) inflight: std::sync::Mutex<HashMap<String, InflightCall>>,
    /// What the client declared at `initialize` (JSON text): a stateless
    /// upstream is told, so it knows what it may ask for.
    pub(super) capabilities: Option<String>,
    /// Requests Dome itself sent this client (a stateless upstream's
    /// `input_required` round), by Dome's id (JSON text): where the answer goes.
    pub(super) local_requests:
        std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<Value>>>,
    /// Who opened the session: every later request must be the same agent
    /// (and is vouched for upstream as that agent and user).
    pub(super) caller: Option<Caller>,
    /// The lowest log level the client wants (an index into `LOG_LEVELS`),
    /// set by its `logging/setLevel`; everything until it does.
    pub(super) log_floor: std::sync::atomic::AtomicUsize,
    /// When the client last used the session (`mono_ms`).
    pub(super) last_used: std::sync::atomic::AtomicU64,
    /// The GET stream's count against its agent's streams: let go when the
    /// stream is replaced or the session ends (its body holds it too).
    pub(super) push_slot: std::sync::Mutex<Option<StreamSlot>>,
}

/// One open stream counted against its agent's share
/// (`max_streams_per_agent`) while every handle of it lives: the body
/// that carries it, and for a GET stream its session. The first handle
/// dropped lets it go.
pub(super) struct StreamSlot(pub(super) Arc<StreamCount>);

pub(super) struct StreamCount {
    pub(super) table: std::sync::Weak<SessionTable>,
    pub(super) agent: u32,
    pub(super) released: std::sync::atomic::AtomicBool,
}

impl StreamSlot {
    pub(super) fn handle(&self) -> StreamSlot {
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

pub(super) const STREAM_SHARDS: usize = 16;

impl Session {
    pub(super) fn last_used(&self) -> u64 {
        self.last_used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the client holds something of the session open: its GET
    /// stream, or a call in flight.
    pub(super) fn busy(&self) -> bool {
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
pub(super) struct InflightCall {
    pub(super) upstream: Arc<Upstream>,
    pub(super) uid: u64,
    /// Notified once the client cancelled: the relay stops, answers nothing
    /// (a cancelled request gets no response, as the specification asks)
    /// and records the call cancelled rather than failed.
    pub(super) cancelled: Arc<tokio::sync::Notify>,
}

/// Removes a call from its session's in-flight table when dropped.
pub(super) struct Inflight {
    pub(super) session: Arc<Session>,
    pub(super) key: String,
    pub(super) cancelled: Arc<tokio::sync::Notify>,
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
    pub(super) sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Subscribed session ids by resource URI (session era).
    pub(super) subscriptions: std::sync::Mutex<HashMap<String, std::collections::HashSet<String>>>,
    /// Open `subscriptions/listen` streams (stateless era), by a key of Dome's.
    pub(super) listens: std::sync::Mutex<HashMap<u64, Listen>>,
    /// Calls waiting for a stateless caller's input, by the token in the
    /// `requestState` it was given (see `input`).
    pub(super) parked: std::sync::Mutex<HashMap<String, (Instant, crate::gateway::input::Parked)>>,
    /// Set when Dome shuts down: the streams that would never end close.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
    /// Open streams per agent (`agent_key`), sharded.
    pub(super) streams: [std::sync::Mutex<HashMap<u32, u32>>; STREAM_SHARDS],
}

/// One client's `subscriptions/listen` stream: what it asked for (and
/// Dome honored) and where its notifications go.
pub(super) struct Listen {
    /// The listen request's id, stamped on every message of the stream.
    pub(super) id: Value,
    pub(super) filter: ListenFilter,
    pub(super) push: Push,
}

pub(super) use dome_core::subscriptions::ListenFilter;

pub(super) static NEXT_LISTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(super) type Push = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

impl SessionTable {
    pub fn new() -> Arc<Self> {
        Arc::new(SessionTable::default())
    }

    pub(super) fn stream_shard(&self, agent: u32) -> &std::sync::Mutex<HashMap<u32, u32>> {
        &self.streams[agent as usize % STREAM_SHARDS]
    }

    /// Counts one more open stream of `agent`'s, unless it holds `cap`.
    pub(super) fn open_stream_slot(self: &Arc<Self>, agent: u32, cap: usize) -> Option<StreamSlot> {
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

    pub(super) fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .read()
            .expect("sessions lock")
            .get(id)
            .cloned()
    }

    /// The session `id` if `caller` opened it: another agent's
    /// session id is as good as none, whatever it asks of the session
    /// (a request, its GET stream, ending it).
    pub(super) fn owned(&self, id: &str, caller: Option<&Caller>) -> Option<Arc<Session>> {
        let s = self
            .get(id)
            .filter(|s| same_agent(s.caller.as_ref(), caller))?;
        s.last_used
            .store(mono_ms(), std::sync::atomic::Ordering::Relaxed);
        Some(s)
    }

    /// The sessions unused for `idle_ms` by `now` (`mono_ms`) that hold
    /// nothing open.
    pub(super) fn idle(&self, now: u64, idle_ms: u64) -> Vec<String> {
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
    pub(super) fn over_cap(&self, caller: Option<&Caller>, cap: usize) -> Vec<String> {
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

    pub(super) fn pushes(&self, ids: Option<&std::collections::HashSet<String>>) -> Vec<Push> {
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
    pub(super) fn subscribe(&self, uri: &str, session: &str, on: bool) -> bool {
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
    pub(super) fn park(&self, call: crate::gateway::input::Parked) -> Value {
        let token = new_session_id();
        let result = crate::gateway::input::input_required(&call.asks, &token);
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
    pub(super) fn drop_expired_parked(&self, now: Instant) {
        self.parked
            .lock()
            .expect("parked lock")
            .retain(|_, (at, _)| now.duration_since(*at) < crate::gateway::input::PARK_TTL);
    }

    /// Ends a session; returns the URIs it was subscribed to.
    pub(super) fn remove(&self, id: &str) -> Option<Vec<String>> {
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

/// The key a caller's requests are counted under in an upstream's
/// per-agent shares: its identity slot; callers without credentials share one.
pub(super) fn agent_key(caller: Option<&Caller>) -> u32 {
    caller.map_or(crate::upstream::ANONYMOUS_AGENT, |c| c.agent.slot)
}

pub(super) fn same_agent(a: Option<&Caller>, b: Option<&Caller>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.agent.id == b.agent.id,
        _ => false,
    }
}

/// 128 random bits, hex: unguessable and a valid header value.
pub(super) fn new_session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
