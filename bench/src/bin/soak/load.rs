//! The soak's load: a fixed pattern of operations, each a few requests of
//! one kind (both protocol eras; allowed, denied and over-budget calls;
//! streamed calls with progress; cancellations), each answer judged
//! against what that kind may get. Every `tools/call` states the intent
//! `soak-<n>` (n unique), so the trail can be checked call by call.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bench::harness::{Sender, connect, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Incoming};
use serde_json::{Value, json};

pub(crate) const SESSION_VERSION: &str = "2025-11-25";
pub(crate) const STATELESS_VERSION: &str = "2026-07-28";
/// How long a cancelled stream may take to end once Dome was told.
const CANCEL_END: Duration = Duration::from_secs(10);
/// The longest a pooled connection idles before it is dropped (Dome's
/// keep-alive limit is `header_timeout_ms`, 30 s).
const IDLE_MAX: Duration = Duration::from_secs(5);
/// Unexpected answers kept verbatim for the report.
const SAMPLES: usize = 20;

/// One operation of the mix.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// Stateless `echo` by the well-funded agent: a result.
    Echo,
    /// Stateless calls policy refuses: -32005 (HTTP 200, as every refusal
    /// a client should read).
    Denied,
    /// Stateless `echo` by the agent with a small budget: mostly -32004
    /// (HTTP 200), a result when its bucket has a call.
    OverBudget,
    /// Stateless `slow` with a progress token: every step's progress, then the result.
    Slow,
    /// Stateless `slow`, the connection closed after the first progress.
    CancelClose,
    /// A session: initialize, allowed, redacted, denied and streamed calls, DELETE.
    Session,
    /// A session of the agent with a small budget.
    SessionPoor,
    /// A session whose streamed call is cancelled with `notifications/cancelled`.
    SessionCancel,
}

/// The mix, cycled: about 1.5 calls per operation.
pub(crate) const PATTERN: [Op; 20] = {
    use Op::*;
    [
        Echo,
        Denied,
        Echo,
        OverBudget,
        Session,
        Echo,
        Slow,
        Denied,
        Echo,
        CancelClose,
        OverBudget,
        Echo,
        SessionCancel,
        Echo,
        Denied,
        Slow,
        Session,
        OverBudget,
        Echo,
        SessionPoor,
    ]
};

/// A call a session makes: (the operation it is judged as, tool, its
/// arguments for call number n, with a progress token).
type SessionCall = (&'static str, &'static str, fn(u64) -> Value, bool);

/// A JSON-RPC answer.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Result(Value),
    Error { code: i64, message: String },
}

/// What came back for one request.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub status: u16,
    pub session: Option<String>,
    pub answer: Option<Answer>,
    pub progress: u32,
    /// A part of the response that is not the JSON-RPC it should be.
    pub malformed: Option<String>,
}

impl Reply {
    fn result(&self) -> Option<&Value> {
        match &self.answer {
            Some(Answer::Result(v)) => Some(v),
            _ => None,
        }
    }

    fn code(&self) -> Option<i64> {
        match &self.answer {
            Some(Answer::Error { code, .. }) => Some(*code),
            _ => None,
        }
    }

    fn label(&self) -> String {
        match &self.answer {
            Some(Answer::Result(_)) => "result".into(),
            Some(Answer::Error { code, .. }) => format!("error {code}"),
            None => "no answer".into(),
        }
    }

    fn describe(&self) -> String {
        let answer = match &self.answer {
            Some(Answer::Result(v)) => {
                let mut t = v.to_string();
                t.truncate(200);
                format!("result {t}")
            }
            Some(Answer::Error { code, message }) => format!("error {code} {message}"),
            None => "no answer".into(),
        };
        let malformed = self
            .malformed
            .as_deref()
            .map(|m| format!(", malformed: {m}"))
            .unwrap_or_default();
        format!(
            "HTTP {}, {answer}, {} progress{malformed}",
            self.status, self.progress
        )
    }
}

/// A response being read: JSON, or SSE event by event.
struct Stream {
    body: Incoming,
    sse: bool,
    buf: Vec<u8>,
    reply: Reply,
    /// Read to its end (the connection can take another request).
    done: bool,
}

impl Stream {
    async fn open(sender: &mut Sender, req: Request<Full<Bytes>>) -> anyhow::Result<Stream> {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Stream {
            reply: Reply {
                status: resp.status().as_u16(),
                session,
                ..Reply::default()
            },
            body: resp.into_body(),
            sse,
            buf: Vec::new(),
            done: false,
        })
    }

    /// Reads until the response ends (true) or, with `until_progress`,
    /// until a progress notification arrives (false).
    async fn pump(&mut self, until_progress: bool) -> anyhow::Result<bool> {
        loop {
            let Some(frame) = self.body.frame().await else {
                self.done = true;
                self.finish();
                return Ok(true);
            };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            self.buf.extend_from_slice(&data);
            if self.sse {
                let before = self.reply.progress;
                self.events();
                if until_progress && self.reply.progress > before {
                    return Ok(false);
                }
            }
        }
    }

    fn events(&mut self) {
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                self.message(&data.join("\n"));
            }
        }
    }

    fn finish(&mut self) {
        if self.sse {
            if !self.buf.iter().all(u8::is_ascii_whitespace) {
                self.buf.extend_from_slice(b"\n\n");
                self.events();
            }
        } else if !self.buf.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            self.message(&text);
        }
    }

    fn message(&mut self, text: &str) {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let mut t = text.to_string();
                t.truncate(200);
                self.reply.malformed = Some(format!("{e}: {t}"));
                return;
            }
        };
        if v["method"] == "notifications/progress" {
            self.reply.progress += 1;
        } else if v.get("method").is_some() {
            // Log messages and other notifications on the way.
        } else if let Some(r) = v.get("result") {
            self.set(Answer::Result(r.clone()));
        } else if let Some(e) = v.get("error") {
            let answer = Answer::Error {
                code: e["code"].as_i64().unwrap_or(0),
                message: e["message"].as_str().unwrap_or_default().to_string(),
            };
            self.set(answer);
        } else {
            let mut t = text.to_string();
            t.truncate(200);
            self.reply.malformed = Some(format!("neither result nor error: {t}"));
        }
    }

    fn set(&mut self, answer: Answer) {
        if self.reply.answer.is_some() {
            self.reply.malformed = Some("a second answer".into());
        }
        self.reply.answer = Some(answer);
    }
}

/// One request read to its end.
async fn exchange(sender: &mut Sender, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
    let mut s = Stream::open(sender, req).await?;
    s.pump(false).await?;
    Ok(s.reply)
}

/// The upstream restart: calls overlapping it may fail with the upstream's
/// error. `None` before it; the window's end is `None` while it lasts.
pub(crate) type Window = Option<(Instant, Option<Instant>)>;

/// Counts of one phase of the run.
#[derive(Default)]
pub(crate) struct Tally {
    /// `tools/call` requests sent.
    pub calls: u64,
    /// Other requests sent (initialize, notifications, DELETE).
    pub requests: u64,
    /// Expected outcomes by operation and outcome.
    pub outcomes: BTreeMap<&'static str, BTreeMap<String, u64>>,
    pub unexpected: u64,
    pub samples: Vec<String>,
    /// Failures the upstream restart explains, by kind.
    pub restart_window: BTreeMap<String, u64>,
    /// Calls answered, by number, with the JSON-RPC error code (0 for a result).
    pub answered: Vec<(u64, i64)>,
    /// Calls cancelled before an answer, by number.
    pub cancelled: Vec<u64>,
}

pub(crate) struct Ctx {
    pub addr: SocketAddr,
    pub key: String,
    pub poor_key: String,
    next_call: AtomicU64,
    /// Idle connections, with when each was last used.
    pool: Mutex<Vec<(Sender, Instant)>>,
    pub tally: Mutex<Tally>,
    pub window: Mutex<Window>,
}

impl Ctx {
    pub(crate) fn new(addr: SocketAddr, key: String, poor_key: String) -> Ctx {
        Ctx {
            addr,
            key,
            poor_key,
            next_call: AtomicU64::new(0),
            pool: Mutex::default(),
            tally: Mutex::default(),
            window: Mutex::default(),
        }
    }

    /// Closes every idle connection (Dome's count of open files then
    /// holds no client connection).
    pub(crate) fn close_idle(&self) {
        self.pool.lock().expect("pool").clear();
    }

    async fn take(&self) -> anyhow::Result<Sender> {
        loop {
            let pooled = self.pool.lock().expect("pool").pop();
            match pooled {
                // Well inside Dome's keep-alive limit, so Dome never
                // closes one as it is being used.
                Some((s, used)) if !s.is_closed() && used.elapsed() < IDLE_MAX => return Ok(s),
                Some(_) => continue,
                None => return connect(self.addr).await,
            }
        }
    }

    fn give(&self, s: Sender) {
        if !s.is_closed() {
            self.pool.lock().expect("pool").push((s, Instant::now()));
        }
    }

    fn call_number(&self) -> u64 {
        self.next_call.fetch_add(1, Ordering::Relaxed)
    }

    fn in_window(&self, started: Instant) -> bool {
        match *self.window.lock().expect("window") {
            None => false,
            Some((from, until)) => {
                Instant::now() >= from && until.is_none_or(|until| started <= until)
            }
        }
    }

    fn unexpected(&self, t: &mut Tally, what: String) {
        t.unexpected += 1;
        if t.samples.len() < SAMPLES {
            t.samples.push(what);
        }
    }

    /// Judges a `tools/call`'s reply: `expected` says whether the
    /// operation may get it. A reply that is not expected is still
    /// explained when it is the upstream's unavailability (or its tools
    /// missing from the catalog, or a connection lost) during the restart.
    fn judge(
        &self,
        op: &'static str,
        n: u64,
        started: Instant,
        got: &anyhow::Result<Reply>,
        expected: impl Fn(&Reply) -> bool,
    ) {
        let window = self.in_window(started);
        let mut t = self.tally.lock().expect("tally");
        t.calls += 1;
        let reply = match got {
            Ok(r) => r,
            Err(e) if window => {
                *t.restart_window
                    .entry(format!("connection: {e}"))
                    .or_default() += 1;
                return;
            }
            Err(e) => {
                return self.unexpected(&mut t, format!("{op} soak-{n}: {e:#}"));
            }
        };
        if let Some(a) = &reply.answer {
            let code = match a {
                Answer::Result(_) => 0,
                Answer::Error { code, .. } => *code,
            };
            t.answered.push((n, code));
        }
        let clean = reply.malformed.is_none() && reply.status < 500;
        if clean && expected(reply) {
            *t.outcomes
                .entry(op)
                .or_default()
                .entry(reply.label())
                .or_default() += 1;
            return;
        }
        let restart = match &reply.answer {
            Some(Answer::Error { code: -32001, .. }) => Some("upstream unavailable (-32001)"),
            Some(Answer::Error {
                code: -32602,
                message,
            }) if message.starts_with("Unknown tool") => Some("tool not in the catalog (-32602)"),
            _ => None,
        };
        match restart {
            Some(kind) if window && reply.malformed.is_none() => {
                *t.restart_window.entry(kind.to_string()).or_default() += 1;
            }
            _ => self.unexpected(&mut t, format!("{op} soak-{n}: {}", reply.describe())),
        }
    }

    /// Judges a request that is not a call (initialize, a notification, DELETE).
    fn judge_request(&self, what: &str, started: Instant, ok: anyhow::Result<()>) {
        let window = self.in_window(started);
        let mut t = self.tally.lock().expect("tally");
        t.requests += 1;
        match ok {
            Ok(()) => {}
            Err(e) if window => {
                *t.restart_window
                    .entry(format!("{what}: {e:#}"))
                    .or_default() += 1;
            }
            Err(e) => self.unexpected(&mut t, format!("{what}: {e:#}")),
        }
    }

    fn cancelled(&self, op: &'static str, n: u64, how: &str) {
        let mut t = self.tally.lock().expect("tally");
        t.calls += 1;
        t.cancelled.push(n);
        *t.outcomes
            .entry(op)
            .or_default()
            .entry(how.to_string())
            .or_default() += 1;
    }

    /// Runs one operation; everything it meets goes into the tally.
    pub(crate) async fn run(&self, op: Op) {
        match op {
            Op::Echo => self.stateless_echo("echo", false).await,
            Op::OverBudget => self.stateless_echo("over_budget", true).await,
            Op::Denied => self.stateless_denied().await,
            Op::Slow => self.stateless_slow().await,
            Op::CancelClose => self.stateless_cancel().await,
            Op::Session => self.session(false).await,
            Op::SessionPoor => self.session(true).await,
            Op::SessionCancel => self.session_cancel().await,
        }
    }

    fn stateless(
        &self,
        key: &str,
        n: u64,
        tool: &str,
        args: Value,
        progress: bool,
    ) -> Request<Full<Bytes>> {
        let mut meta = json!({
            "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "dome/intent": format!("soak-{n}"),
        });
        if progress {
            meta["progressToken"] = json!(format!("p{n}"));
        }
        let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": tool, "arguments": args, "_meta": meta}});
        let headers = [
            ("mcp-protocol-version", STATELESS_VERSION),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
        ];
        post(self.addr, Some(key), &headers, body.to_string())
    }

    /// One call on a pooled connection, read to its end.
    async fn call(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let mut s = self.take().await?;
        let r = exchange(&mut s, req).await;
        self.give(s);
        r
    }

    async fn stateless_echo(&self, op: &'static str, poor: bool) {
        let n = self.call_number();
        let message = format!("soak message {n}");
        let key = if poor { &self.poor_key } else { &self.key };
        let req = self.stateless(key, n, "echo", json!({ "message": message }), false);
        let started = Instant::now();
        let got = self.call(req).await;
        self.judge(op, n, started, &got, |r| {
            let echoed = r.status == 200 && r.result().is_some_and(|v| echoes(v, &message));
            echoed || (poor && r.status == 200 && r.code() == Some(-32004))
        });
    }

    async fn stateless_denied(&self) {
        let n = self.call_number();
        // A deny rule on the argument, or no rule allowing the call at all.
        let (tool, args) = if n.is_multiple_of(2) {
            ("echo", json!({"message": format!("forbidden {n}")}))
        } else {
            ("records", json!({"count": 1000}))
        };
        let req = self.stateless(&self.key, n, tool, args, false);
        let started = Instant::now();
        let got = self.call(req).await;
        self.judge("denied", n, started, &got, |r| {
            r.status == 200 && r.code() == Some(-32005)
        });
    }

    async fn stateless_slow(&self) {
        let n = self.call_number();
        let req = self.stateless(
            &self.key,
            n,
            "slow",
            json!({"steps": 3, "delay_ms": 20}),
            true,
        );
        let started = Instant::now();
        let got = self.call(req).await;
        self.judge("slow", n, started, &got, |r| {
            r.status == 200 && r.result().is_some() && r.progress == 3
        });
    }

    /// Closes the connection once the first progress arrives: Dome must
    /// cancel the upstream call and record it.
    async fn stateless_cancel(&self) {
        let n = self.call_number();
        let req = self.stateless(
            &self.key,
            n,
            "slow",
            json!({"steps": 20, "delay_ms": 25}),
            true,
        );
        let started = Instant::now();
        let got = async {
            let mut s = self.take().await?;
            let mut stream = Stream::open(&mut s, req).await?;
            let ended = stream.pump(true).await?;
            // Not given back: the connection goes with the stream.
            anyhow::Ok((ended, stream.reply))
        }
        .await;
        match got {
            Ok((false, reply)) if reply.status == 200 && reply.malformed.is_none() => {
                self.cancelled("cancel_close", n, "closed after progress")
            }
            Ok((_, reply)) => self.judge("cancel_close", n, started, &Ok(reply), |_| false),
            Err(e) => self.judge("cancel_close", n, started, &Err(e), |_| false),
        }
    }

    fn in_session(&self, key: &str, sid: &str, body: &Value) -> Request<Full<Bytes>> {
        let headers = [
            ("mcp-session-id", sid),
            ("mcp-protocol-version", SESSION_VERSION),
        ];
        post(self.addr, Some(key), &headers, body.to_string())
    }

    fn session_call(
        &self,
        key: &str,
        sid: &str,
        n: u64,
        tool: &str,
        args: Value,
        progress: bool,
    ) -> Request<Full<Bytes>> {
        let mut meta = json!({"dome/intent": format!("soak-{n}")});
        if progress {
            meta["progressToken"] = json!(format!("p{n}"));
        }
        let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": tool, "arguments": args, "_meta": meta}});
        self.in_session(key, sid, &body)
    }

    /// initialize and notifications/initialized: the session's id.
    async fn open_session(&self, s: &mut Sender, key: &str) -> Option<String> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": SESSION_VERSION, "capabilities": {},
                       "clientInfo": {"name": "dome-soak", "version": "1"}}});
        let started = Instant::now();
        let got = async {
            let r = exchange(s, post(self.addr, Some(key), &[], init.to_string())).await?;
            anyhow::ensure!(
                r.status == 200 && r.result().is_some(),
                "initialize: {}",
                r.describe()
            );
            r.session
                .ok_or_else(|| anyhow::anyhow!("initialize: no Mcp-Session-Id"))
        }
        .await;
        let sid = match got {
            Ok(sid) => sid,
            Err(e) => {
                self.judge_request("initialize", started, Err(e));
                return None;
            }
        };
        self.judge_request("initialize", started, Ok(()));
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let started = Instant::now();
        let got = exchange(s, self.in_session(key, &sid, &note)).await;
        self.judge_request("notifications/initialized", started, accepted(got));
        Some(sid)
    }

    async fn close_session(&self, s: &mut Sender, key: &str, sid: &str) {
        let req = Request::delete("/mcp")
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {key}"))
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", SESSION_VERSION)
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let started = Instant::now();
        let got = exchange(s, req).await.and_then(|r| {
            anyhow::ensure!((200..300).contains(&r.status), "DELETE: HTTP {}", r.status);
            Ok(())
        });
        self.judge_request("DELETE", started, got);
    }

    async fn session(&self, poor: bool) {
        let key = if poor {
            self.poor_key.clone()
        } else {
            self.key.clone()
        };
        let mut s = match self.take().await {
            Ok(s) => s,
            Err(e) => return self.judge_request("connect", Instant::now(), Err(e)),
        };
        let Some(sid) = self.open_session(&mut s, &key).await else {
            return;
        };
        let calls: &[SessionCall] = if poor {
            &[
                (
                    "session_over_budget",
                    "echo",
                    |n| json!({"message": format!("soak message {n}")}),
                    false,
                ),
                (
                    "session_over_budget",
                    "echo",
                    |n| json!({"message": format!("soak message {n}")}),
                    false,
                ),
            ]
        } else {
            &[
                (
                    "session_echo",
                    "echo",
                    |n| json!({"message": format!("soak message {n}")}),
                    false,
                ),
                ("session_records", "records", |_| json!({"count": 2}), false),
                (
                    "session_denied",
                    "echo",
                    |n| json!({"message": format!("forbidden {n}")}),
                    false,
                ),
                (
                    "session_slow",
                    "slow",
                    |_| json!({"steps": 2, "delay_ms": 20}),
                    true,
                ),
                (
                    "session_echo",
                    "echo",
                    |n| json!({"message": format!("soak message {n}")}),
                    false,
                ),
            ]
        };
        for (op, tool, args, progress) in calls {
            let n = self.call_number();
            let req = self.session_call(&key, &sid, n, tool, args(n), *progress);
            let started = Instant::now();
            let got = exchange(&mut s, req).await;
            let message = format!("soak message {n}");
            self.judge(op, n, started, &got, |r| match *op {
                "session_echo" => r.result().is_some_and(|v| echoes(v, &message)),
                "session_over_budget" => {
                    r.result().is_some_and(|v| echoes(v, &message)) || r.code() == Some(-32004)
                }
                // Redacted: the demo's addresses never come back.
                "session_records" => r
                    .result()
                    .is_some_and(|v| !v.to_string().contains("@example.")),
                "session_denied" => r.code() == Some(-32005),
                "session_slow" => r.result().is_some() && r.progress == 2,
                _ => false,
            });
            if got.is_err() {
                // The connection is gone; the session stays until DELETE.
                match self.take().await {
                    Ok(fresh) => s = fresh,
                    Err(e) => return self.judge_request("connect", Instant::now(), Err(e)),
                }
            }
        }
        self.close_session(&mut s, &key, &sid).await;
        self.give(s);
    }

    /// A streamed call cancelled with `notifications/cancelled` (sent on
    /// another connection) after its first progress: its stream ends,
    /// with or without an answer.
    async fn session_cancel(&self) {
        let key = self.key.clone();
        let (mut s, mut aux) = match (self.take().await, self.take().await) {
            (Ok(s), Ok(aux)) => (s, aux),
            (Err(e), _) | (_, Err(e)) => {
                return self.judge_request("connect", Instant::now(), Err(e));
            }
        };
        let Some(sid) = self.open_session(&mut s, &key).await else {
            self.give(aux);
            return;
        };
        let n = self.call_number();
        let req = self.session_call(
            &key,
            &sid,
            n,
            "slow",
            json!({"steps": 20, "delay_ms": 25}),
            true,
        );
        let started = Instant::now();
        let streamed = async {
            let mut stream = Stream::open(&mut s, req).await?;
            let ended = stream.pump(true).await?;
            anyhow::Ok((stream, ended))
        }
        .await;
        let (mut stream, ended) = match streamed {
            Ok(x) => x,
            Err(e) => {
                self.judge("session_cancel", n, started, &Err(e), |_| false);
                self.give(aux);
                return;
            }
        };
        if ended {
            // Over before any progress: only the restart explains that.
            let reply = std::mem::take(&mut stream.reply);
            self.judge("session_cancel", n, started, &Ok(reply), |_| false);
        } else {
            let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": n, "reason": "soak: cancelled after the first progress"}});
            let sent = Instant::now();
            let got = exchange(&mut aux, self.in_session(&key, &sid, &cancel)).await;
            self.judge_request("notifications/cancelled", sent, accepted(got));
            let rest = tokio::time::timeout(CANCEL_END, stream.pump(false)).await;
            match rest {
                Err(_) => self.judge(
                    "session_cancel",
                    n,
                    started,
                    &Err(anyhow::anyhow!(
                        "the stream went on {CANCEL_END:?} after notifications/cancelled"
                    )),
                    |_| false,
                ),
                Ok(Err(e)) => self.judge("session_cancel", n, started, &Err(e), |_| false),
                Ok(Ok(_)) if stream.reply.answer.is_none() && stream.reply.malformed.is_none() => {
                    self.cancelled("session_cancel", n, "stream ended without an answer")
                }
                // The call may have ended as the notice arrived; an error
                // saying it was cancelled is an answer too.
                Ok(Ok(_)) => {
                    let reply = std::mem::take(&mut stream.reply);
                    self.judge("session_cancel", n, started, &Ok(reply), |r| {
                        r.result().is_some() || r.code().is_some_and(|c| c != -32006 && c != -32603)
                    })
                }
            }
        }
        let done = stream.done;
        drop(stream);
        self.close_session(&mut aux, &key, &sid).await;
        self.give(aux);
        if done {
            self.give(s);
        }
    }
}

/// An echo result carrying `message`.
fn echoes(result: &Value, message: &str) -> bool {
    result["structuredContent"]["message"] == message
        || result["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains(message))
}

/// A notification's answer: 202 Accepted.
fn accepted(got: anyhow::Result<Reply>) -> anyhow::Result<()> {
    let r = got?;
    anyhow::ensure!(r.status == 202, "HTTP {} ({})", r.status, r.describe());
    Ok(())
}
