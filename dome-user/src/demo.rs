//! The demo upstream: a small, fast MCP server for the quickstart, the tests
//! and the benchmarks. It speaks Streamable HTTP in both eras (session and
//! stateless) and offers three tools: `echo`, `slow` (sends progress
//! notifications on an SSE response) and `records` (returns rows with e-mail
//! addresses and card-like numbers, for the redaction work).

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::mcp::protocol::{self, code};

type Body = BoxBody<Bytes, Infallible>;
/// A session's GET stream.
type Push = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

#[derive(Default)]
struct State {
    sessions: Mutex<HashSet<String>>,
    next: std::sync::atomic::AtomicU64,
    session_only: bool,
    /// `slow` calls under way, as "{session}/{request id as JSON text}"
    /// (the session is empty in the stateless era).
    slow_running: Mutex<HashSet<String>>,
    /// Those of them the client cancelled with `notifications/cancelled`. A
    /// cancellation of a call not under way is forgotten: remembered, it
    /// would stop a later call that happens to reuse the id (every client's
    /// ids start at 0 or 1), which would end without an answer.
    cancelled: Mutex<HashSet<String>>,
    slow_completed: AtomicU64,
    /// The response stream was closed before the call finished.
    slow_aborted: AtomicU64,
    /// Stopped by `notifications/cancelled`.
    slow_cancelled: AtomicU64,
    resources: bool,
    whoami: bool,
    deep: bool,
    /// Each session's GET stream (server-initiated messages).
    streams: Mutex<std::collections::HashMap<String, Push>>,
    /// Subscribed sessions by resource URI.
    subscriptions: Mutex<std::collections::HashMap<String, HashSet<String>>>,
    counter: AtomicU64,
    /// Open `subscriptions/listen` streams (stateless era).
    listens: Mutex<Vec<DemoListen>>,
    /// `tools/list` requests answered: lets tests see what Dome asks for.
    tool_lists: AtomicU64,
    aliases: Mutex<Vec<String>>,
    misbehave: bool,
    /// Where it listens (an alias's answer names it).
    addr: String,
}

/// One `subscriptions/listen` stream: its id, what it asked for, where it goes.
struct DemoListen {
    id: Value,
    tools: bool,
    uris: HashSet<String>,
    push: Push,
}

impl State {
    /// Sends `note` to every session GET stream in `sessions` (all when
    /// `None`) and every listen stream `admits` lets through (stamped with
    /// its id); returns how many streams took it.
    async fn publish(
        &self,
        note: &Value,
        sessions: Option<Vec<String>>,
        admits: impl Fn(&DemoListen) -> bool,
    ) -> usize {
        let pushes: Vec<Push> = {
            let streams = self.streams.lock().unwrap();
            match sessions {
                Some(ids) => ids.iter().filter_map(|s| streams.get(s).cloned()).collect(),
                None => streams.values().cloned().collect(),
            }
        };
        let mut notified = 0;
        for tx in pushes {
            if tx.send(Ok(Frame::data(sse(note)))).await.is_ok() {
                notified += 1;
            }
        }
        let listens: Vec<(Value, Push)> = {
            let mut listens = self.listens.lock().unwrap();
            listens.retain(|l| !l.push.is_closed());
            listens
                .iter()
                .filter(|l| admits(l))
                .map(|l| (l.id.clone(), l.push.clone()))
                .collect()
        };
        for (id, tx) in listens {
            let mut stamped = note.clone();
            stamped["params"]["_meta"][protocol::META_SUBSCRIPTION_ID] = id;
            if tx.send(Ok(Frame::data(sse(&stamped)))).await.is_ok() {
                notified += 1;
            }
        }
        notified
    }
}

/// How the demo upstream behaves.
#[derive(Clone, Debug, Default)]
pub struct DemoOptions {
    /// Speak only the session era (as servers written before 2026-07-28 do).
    pub session_only: bool,
    /// Offer one subscribable resource, `demo://counter`; `POST /demo-touch`
    /// bumps it and notifies its subscribers (on their GET streams, or
    /// listen streams in the stateless era); `POST /demo-tools-changed`
    /// announces a tool list change.
    pub resources: bool,
    /// Offer `whoami`, which shows the identity headers a call arrived with.
    pub whoami: bool,
    /// Offer `deep`, whose result nests `depth` arrays deep: an upstream
    /// Dome must not relay (it refuses results nested past `max_json_depth`).
    pub deep: bool,
    /// More names for `echo` (each answers `NAME@ADDR:` and the message);
    /// `POST /demo-alias` with a name as its body adds one while it runs.
    /// Lets tests publish names that clash or trespass.
    pub aliases: Vec<String>,
    /// Offer tools that misbehave the way a hostile or broken upstream
    /// would: `stall` (answers after `ms`, its head included), `drip`
    /// (the head at once, then its body of `bytes` in pieces of `piece`
    /// bytes every `interval_ms`; `chunked`: without a length) and
    /// `drip_sse` (an event stream that sends one progress notification,
    /// then, if `event_bytes` is set, the start of an event that long, then
    /// nothing for `ms`).
    pub misbehave: bool,
}

/// Serves the demo upstream on `addr` (`/mcp`); returns the bound address.
pub async fn serve(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, DemoOptions::default()).await
}

/// As [`serve`], with options.
pub async fn serve_with(
    addr: SocketAddr,
    options: DemoOptions,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = Arc::new(State {
        session_only: options.session_only,
        resources: options.resources,
        whoami: options.whoami,
        deep: options.deep,
        aliases: Mutex::new(options.aliases),
        misbehave: options.misbehave,
        addr: local.to_string(),
        ..Default::default()
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("static parts")
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()).boxed())
        .expect("static parts")
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/demo-stats" {
        let listens: Vec<Value> = {
            let mut l = state.listens.lock().unwrap();
            l.retain(|l| !l.push.is_closed());
            l.iter()
                .map(|l| json!({"id": l.id, "tools": l.tools, "uris": l.uris}))
                .collect()
        };
        // What became of `slow` calls: lets tests see cancellations arrive.
        return full(
            StatusCode::OK,
            json!({
                "slow_completed": state.slow_completed.load(Ordering::Relaxed),
                "slow_aborted": state.slow_aborted.load(Ordering::Relaxed),
                "slow_cancelled": state.slow_cancelled.load(Ordering::Relaxed),
                "tool_lists": state.tool_lists.load(Ordering::Relaxed),
                "listens": listens,
                "subscribers": state.subscriptions.lock().unwrap().iter()
                    .map(|(uri, set)| (uri.clone(), set.len()))
                    .collect::<std::collections::HashMap<_, _>>(),
            }),
        );
    }
    if req.uri().path() == "/demo-alias" {
        use http_body_util::BodyExt;
        let Ok(body) = req.into_body().collect().await else {
            return full(StatusCode::BAD_REQUEST, json!({}));
        };
        let name = String::from_utf8_lossy(&body.to_bytes()).trim().to_string();
        state.aliases.lock().unwrap().push(name);
        return full(StatusCode::OK, json!({}));
    }
    if req.uri().path() == "/demo-touch" {
        let n = state.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let uri = "demo://counter";
        let subscribers: Vec<String> = state
            .subscriptions
            .lock()
            .unwrap()
            .get(uri)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let note = json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}});
        let notified = state
            .publish(&note, Some(subscribers), |l| l.uris.contains(uri))
            .await;
        return full(StatusCode::OK, json!({"counter": n, "notified": notified}));
    }
    if req.uri().path() == "/demo-tools-changed" {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        let notified = state.publish(&note, None, |l| l.tools).await;
        return full(StatusCode::OK, json!({"notified": notified}));
    }
    if req.uri().path() != "/mcp" {
        return empty(StatusCode::NOT_FOUND);
    }
    let session = req
        .headers()
        .get(protocol::H_SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match *req.method() {
        Method::POST => {}
        Method::DELETE => {
            return match session {
                Some(s) if state.sessions.lock().unwrap().remove(&s) => empty(StatusCode::OK),
                Some(_) => empty(StatusCode::NOT_FOUND),
                None => empty(StatusCode::BAD_REQUEST),
            };
        }
        Method::GET if state.resources => {
            let Some(sid) = session.filter(|s| state.sessions.lock().unwrap().contains(s)) else {
                return empty(StatusCode::BAD_REQUEST);
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
            state.streams.lock().unwrap().insert(sid, tx);
            return sse_stream(rx);
        }
        _ => return empty(StatusCode::METHOD_NOT_ALLOWED),
    }
    // What Dome vouched for (the `whoami` tool shows it), and every header
    // that reached the upstream (so tests can see what was not forwarded).
    let identity_headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("dome-") || *k == header::AUTHORIZATION)
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.to_str().unwrap_or_default().into()),
            )
        })
        .collect();
    let wants_sse = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let Ok(body) = req.into_body().collect().await else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let msg: Value = match serde_json::from_slice(&body.to_bytes()) {
        Ok(v) => v,
        Err(_) => {
            return full(
                StatusCode::BAD_REQUEST,
                error(&Value::Null, code::PARSE_ERROR, "parse error"),
            );
        }
    };
    let method = msg["method"].as_str().unwrap_or_default().to_string();
    let id = msg.get("id").cloned();
    let Some(id) = id else {
        if method == "notifications/cancelled" {
            let key = slow_key(session.as_deref(), &msg["params"]["requestId"]);
            if state.slow_running.lock().unwrap().contains(&key) {
                state.cancelled.lock().unwrap().insert(key);
            }
        }
        // Notifications and responses are acknowledged.
        return empty(StatusCode::ACCEPTED);
    };
    let stateless =
        !state.session_only && msg["params"]["_meta"][protocol::META_PROTOCOL_VERSION].is_string();
    if stateless {
        let v = msg["params"]["_meta"][protocol::META_PROTOCOL_VERSION]
            .as_str()
            .unwrap_or_default();
        if !protocol::is_stateless_version(v) {
            let mut e = error(
                &id,
                code::UNSUPPORTED_VERSION,
                "Unsupported protocol version",
            );
            e["error"]["data"] = json!({"supported": protocol::STATELESS_VERSIONS, "requested": v});
            return full(StatusCode::BAD_REQUEST, e);
        }
    } else if method == "initialize" {
        let requested = msg["params"]["protocolVersion"]
            .as_str()
            .unwrap_or_default();
        let n = state
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sid = format!("demo-{n:016x}-{:08x}", std::process::id());
        state.sessions.lock().unwrap().insert(sid.clone());
        let mut resp = full(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": protocol::negotiate(requested),
                "capabilities": capabilities(state.resources),
                "serverInfo": {"name": "dome-demo-upstream", "version": env!("CARGO_PKG_VERSION")},
            }}),
        );
        resp.headers_mut()
            .insert(protocol::H_SESSION, sid.parse().expect("ascii"));
        return resp;
    } else {
        match &session {
            None => {
                return full(
                    StatusCode::BAD_REQUEST,
                    error(&id, code::INVALID_REQUEST, "missing Mcp-Session-Id"),
                );
            }
            Some(s) if !state.sessions.lock().unwrap().contains(s) => {
                return full(
                    StatusCode::NOT_FOUND,
                    error(&id, code::SESSION_NOT_FOUND, "unknown session"),
                );
            }
            _ => {}
        }
    }

    let complete = |mut result: Value| {
        if stateless {
            result["resultType"] = "complete".into();
            if matches!(method.as_str(), "tools/list" | "server/discover") {
                result["ttlMs"] = 0.into();
                result["cacheScope"] = "public".into();
            }
        }
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    };
    if method == "tools/list" {
        state.tool_lists.fetch_add(1, Ordering::Relaxed);
    }
    match method.as_str() {
        "server/discover" => full(
            StatusCode::OK,
            complete(json!({
                "supportedVersions": protocol::STATELESS_VERSIONS,
                "capabilities": capabilities(state.resources),
                "serverInfo": {"name": "dome-demo-upstream", "version": env!("CARGO_PKG_VERSION")},
            })),
        ),
        "ping" => full(StatusCode::OK, complete(json!({}))),
        // Session era: the demo logs one line per slow call at `info`
        // whatever the level (a server may filter; this one need not).
        "logging/setLevel" if !stateless => full(StatusCode::OK, complete(json!({}))),
        "resources/list" if state.resources => full(
            StatusCode::OK,
            complete(
                json!({"resources": [{"uri": "demo://counter", "name": "counter", "mimeType": "text/plain"}]}),
            ),
        ),
        "resources/templates/list" if state.resources => {
            full(StatusCode::OK, complete(json!({"resourceTemplates": []})))
        }
        "resources/read" if state.resources => full(
            StatusCode::OK,
            complete(
                json!({"contents": [{"uri": "demo://counter", "mimeType": "text/plain",
                "text": state.counter.load(Ordering::Relaxed).to_string()}]}),
            ),
        ),
        "subscriptions/listen" if stateless && state.resources => {
            let asked = &msg["params"]["notifications"];
            let tools = asked["toolsListChanged"] == true;
            let uris: HashSet<String> = asked["resourceSubscriptions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let mut honored = json!({});
            if tools {
                honored["toolsListChanged"] = true.into();
            }
            if !uris.is_empty() {
                honored["resourceSubscriptions"] = json!(uris);
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
            let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                "params": {"notifications": honored, "_meta": {protocol::META_SUBSCRIPTION_ID: id}}});
            let _ = tx.try_send(Ok(Frame::data(sse(&ack))));
            state.listens.lock().unwrap().push(DemoListen {
                id: id.clone(),
                tools,
                uris,
                push: tx,
            });
            sse_stream(rx)
        }
        "resources/subscribe" | "resources/unsubscribe" if state.resources => {
            let uri = msg["params"]["uri"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let sid = session.clone().unwrap_or_default();
            let mut subs = state.subscriptions.lock().unwrap();
            let set = subs.entry(uri).or_default();
            if method == "resources/subscribe" {
                set.insert(sid);
            } else {
                set.remove(&sid);
            }
            full(StatusCode::OK, complete(json!({})))
        }
        "tools/list" => {
            let mut list = tools();
            if state.whoami {
                list.as_array_mut().expect("array").push(json!({
                    "name": "whoami",
                    "description": "Shows the identity headers the call arrived with (Dome's assertion).",
                    "inputSchema": {"type": "object"},
                }));
            }
            if state.deep {
                list.as_array_mut().expect("array").push(json!({
                    "name": "deep",
                    "description": "Answers with a result nested `depth` arrays deep.",
                    "inputSchema": {"type": "object"},
                }));
            }
            for alias in state.aliases.lock().unwrap().iter() {
                list.as_array_mut().expect("array").push(json!({
                    "name": alias,
                    "description": "echo, under another name",
                    "inputSchema": {"type": "object"},
                }));
            }
            if state.misbehave {
                for name in ["stall", "drip", "drip_sse"] {
                    list.as_array_mut().expect("array").push(json!({
                        "name": name,
                        "description": "Misbehaves (see DemoOptions::misbehave).",
                        "inputSchema": {"type": "object"},
                    }));
                }
            }
            if state.resources {
                list.as_array_mut().expect("array").push(json!({
                    "name": "ask_then_cancel",
                    "description": "Asks the client something, then withdraws the question.",
                    "inputSchema": {"type": "object"},
                }));
            }
            full(StatusCode::OK, complete(json!({"tools": list})))
        }
        "tools/call" => {
            let name = msg["params"]["name"].as_str().unwrap_or_default();
            let args = &msg["params"]["arguments"];
            let alias = state.aliases.lock().unwrap().iter().any(|a| a == name);
            match name {
                _ if alias => {
                    let text = format!(
                        "{name}@{}:{}",
                        state.addr,
                        args["message"].as_str().unwrap_or_default()
                    );
                    full(
                        StatusCode::OK,
                        complete(
                            json!({"content": [{"type": "text", "text": text}], "isError": false}),
                        ),
                    )
                }
                "echo" => {
                    let text = args["message"].as_str().unwrap_or_default();
                    full(
                        StatusCode::OK,
                        complete(json!({
                            "content": [{"type": "text", "text": text}],
                            "structuredContent": {"message": text},
                            "isError": false,
                        })),
                    )
                }
                "deep" if state.deep => {
                    let depth = args["depth"].as_u64().unwrap_or(200).clamp(1, 1_000);
                    let mut nested = json!("bottom");
                    for _ in 0..depth {
                        nested = Value::Array(vec![nested]);
                    }
                    full(
                        StatusCode::OK,
                        complete(json!({
                            "content": [{"type": "text", "text": "deep"}],
                            "structuredContent": {"nested": nested},
                            "isError": false,
                        })),
                    )
                }
                "stall" if state.misbehave => {
                    let ms = args["ms"].as_u64().unwrap_or(1000).min(600_000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    full(
                        StatusCode::OK,
                        complete(
                            json!({"content": [{"type": "text", "text": "stalled"}], "isError": false}),
                        ),
                    )
                }
                "drip" if state.misbehave => {
                    let bytes = args["bytes"].as_u64().unwrap_or(1000).min(64 << 20) as usize;
                    let piece = args["piece"].as_u64().unwrap_or(1).max(1) as usize;
                    let interval =
                        Duration::from_millis(args["interval_ms"].as_u64().unwrap_or(1000));
                    // A text of about `bytes`, in a whole JSON-RPC answer.
                    let text = "x".repeat(bytes.saturating_sub(100));
                    let whole = Bytes::from(
                        complete(
                            json!({"content": [{"type": "text", "text": text}], "isError": false}),
                        )
                        .to_string(),
                    );
                    let len = whole.len();
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                    tokio::spawn(async move {
                        let mut at = 0;
                        while at < whole.len() {
                            let end = (at + piece).min(whole.len());
                            if tx
                                .send(Ok(Frame::data(whole.slice(at..end))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            at = end;
                            tokio::time::sleep(interval).await;
                        }
                    });
                    let mut resp = Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "application/json");
                    if args["chunked"] != true {
                        resp = resp.header(header::CONTENT_LENGTH, len);
                    }
                    resp.body(
                        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed(),
                    )
                    .expect("static parts")
                }
                "drip_sse" if state.misbehave => {
                    let ms = args["ms"].as_u64().unwrap_or(60_000).min(600_000);
                    // Optionally the start of an event of this many bytes,
                    // finished only after the silence.
                    let partial = args["event_bytes"].as_u64().unwrap_or(0).min(64 << 20) as usize;
                    let token = msg["params"]["_meta"]["progressToken"].clone();
                    let result = complete(
                        json!({"content": [{"type": "text", "text": "late"}], "isError": false}),
                    );
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                    tokio::spawn(async move {
                        let n = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                            "progressToken": token, "progress": 1, "total": 2}});
                        if tx.send(Ok(Frame::data(sse(&n)))).await.is_err() {
                            return;
                        }
                        if partial > 0 {
                            let start = format!("data: {}", "x".repeat(partial));
                            if tx.send(Ok(Frame::data(Bytes::from(start)))).await.is_err() {
                                return;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        if partial > 0 {
                            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"\n\n")))).await;
                        }
                        let _ = tx.send(Ok(Frame::data(sse(&result)))).await;
                    });
                    sse_stream(rx)
                }
                "whoami" if state.whoami => full(
                    StatusCode::OK,
                    complete(json!({
                        "content": [{"type": "text", "text": Value::Object(identity_headers).to_string()}],
                        // What arrived in `_meta`, for tests of what Dome passes on.
                        "structuredContent": {"meta": msg["params"]["_meta"].clone()},
                        "isError": false,
                    })),
                ),
                "records" => {
                    let n = args["count"].as_u64().unwrap_or(3).min(100);
                    let rows: Vec<Value> = (0..n)
                        .map(|i| {
                            json!({
                                "id": i,
                                "name": format!("Customer {i}"),
                                "email": format!("customer{i}@example.com"),
                                "card": "4111 1111 1111 1111",
                            })
                        })
                        .collect();
                    full(
                        StatusCode::OK,
                        complete(json!({
                            "content": [{"type": "text", "text": Value::Array(rows.clone()).to_string()}],
                            "structuredContent": {"records": rows},
                            "isError": false,
                        })),
                    )
                }
                "ask_then_cancel" if state.resources => {
                    // A request to the client on the call's stream, withdrawn
                    // at once: lets tests see a cancellation relayed downstream.
                    let ask = json!({"jsonrpc": "2.0", "id": "q1", "method": "elicitation/create",
                        "params": {"message": "Never mind", "requestedSchema": {"type": "object", "properties": {}}}});
                    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": "q1", "reason": "no longer needed"}});
                    let done = complete(
                        json!({"content": [{"type": "text", "text": "withdrawn"}], "isError": false}),
                    );
                    let body = [sse(&ask), sse(&cancel), sse(&done)].concat();
                    Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(Full::new(Bytes::from(body)).boxed())
                        .expect("static parts")
                }
                "slow" => {
                    // `hold_ms`: nothing at all, not even headers, for so
                    // long (a call waiting on the upstream's first byte).
                    let running = SlowRunning::new(state, slow_key(session.as_deref(), &id));
                    let hold = args["hold_ms"].as_u64().unwrap_or(0).min(10_000);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    let steps = args["steps"].as_u64().unwrap_or(3).clamp(1, 50);
                    let delay =
                        Duration::from_millis(args["delay_ms"].as_u64().unwrap_or(50).min(2000));
                    let token = msg["params"]["_meta"]["progressToken"].clone();
                    let result = complete(json!({
                        "content": [{"type": "text", "text": format!("done after {steps} steps")}],
                        "isError": false,
                    }));
                    if !wants_sse {
                        tokio::time::sleep(delay * steps as u32).await;
                        drop(running);
                        return full(StatusCode::OK, result);
                    }
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
                    let state = state.clone();
                    // One log line: always in the session era, in the
                    // stateless era only when the request asked for `info`.
                    let log = !stateless
                        || msg["params"]["_meta"][protocol::META_LOG_LEVEL]
                            .as_str()
                            .and_then(protocol::log_level_rank)
                            .is_some_and(|l| l <= 1);
                    tokio::spawn(async move {
                        if log {
                            let m = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {
                                "level": "info", "logger": "slow", "data": format!("working in {steps} steps")}});
                            if tx.send(Ok(Frame::data(sse(&m)))).await.is_err() {
                                return;
                            }
                        }
                        for i in 1..=steps {
                            tokio::time::sleep(delay).await;
                            if running.cancelled() {
                                state.slow_cancelled.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            if tx.is_closed() {
                                state.slow_aborted.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            if !token.is_null() {
                                let n = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                                    "progressToken": token, "progress": i, "total": steps,
                                    "message": format!("step {i} of {steps}")}});
                                if tx.send(Ok(Frame::data(sse(&n)))).await.is_err() {
                                    state.slow_aborted.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            }
                        }
                        if tx.send(Ok(Frame::data(sse(&result)))).await.is_ok() {
                            state.slow_completed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            state.slow_aborted.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    sse_stream(rx)
                }
                other => full(
                    StatusCode::OK,
                    error(&id, code::INVALID_PARAMS, &format!("unknown tool: {other}")),
                ),
            }
        }
        other => {
            let status = if stateless {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            full(
                status,
                error(
                    &id,
                    code::METHOD_NOT_FOUND,
                    &format!("method not found: {other}"),
                ),
            )
        }
    }
}

/// How a `slow` call is known to cancellations: its session and request id.
fn slow_key(session: Option<&str>, id: &Value) -> String {
    format!("{}/{id}", session.unwrap_or_default())
}

/// A `slow` call under way, from its request's arrival until it ends (or
/// its handler is dropped, the client gone): only then can it be cancelled.
struct SlowRunning {
    state: Arc<State>,
    key: String,
}

impl SlowRunning {
    fn new(state: &Arc<State>, key: String) -> Self {
        state.slow_running.lock().unwrap().insert(key.clone());
        Self {
            state: state.clone(),
            key,
        }
    }

    fn cancelled(&self) -> bool {
        self.state.cancelled.lock().unwrap().contains(&self.key)
    }
}

impl Drop for SlowRunning {
    fn drop(&mut self) {
        self.state.slow_running.lock().unwrap().remove(&self.key);
        self.state.cancelled.lock().unwrap().remove(&self.key);
    }
}

/// An SSE response fed by `rx`, events sent as they come.
fn sse_stream(rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .expect("static parts")
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {v}\n\n"))
}

fn capabilities(resources: bool) -> Value {
    if resources {
        json!({"tools": {"listChanged": true}, "resources": {"subscribe": true, "listChanged": false}, "logging": {}})
    } else {
        json!({"tools": {"listChanged": false}, "logging": {}})
    }
}

fn tools() -> Value {
    json!([

        {
            "name": "echo",
            "description": "Returns the message it is given.",
            "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
            "outputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
        },
        {
            "name": "slow",
            "description": "Works in steps, reporting progress after each.",
            "inputSchema": {"type": "object", "properties": {
                "steps": {"type": "integer", "minimum": 1, "maximum": 50},
                "delay_ms": {"type": "integer", "minimum": 0, "maximum": 2000}}},
        },
        {
            "name": "records",
            "description": "Returns customer records (with e-mail addresses and card numbers).",
            "inputSchema": {"type": "object", "properties": {"count": {"type": "integer", "minimum": 0, "maximum": 100}}},
            "outputSchema": {"type": "object", "properties": {"records": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"},
                    "email": {"type": "string", "format": "email"}, "card": {"type": "string"},
                },
                "required": ["id", "name", "email", "card"],
            }}}, "required": ["records"]},
        },
    ])
}
