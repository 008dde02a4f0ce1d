//! The demo upstream: a small MCP server for the quickstart, the tests and
//! the benchmarks, built on rmcp, the official Rust MCP SDK, so that Dome's
//! tests talk to an implementation of the spec that is not Dome's own (this
//! crate depends on neither dome-core nor dome-user).
//!
//! rmcp 3.11.0 serves both eras on one endpoint: a request that names
//! 2026-07-28 in `_meta` (or is `server/discover`) is served statelessly,
//! anything else through `initialize` and `Mcp-Session-Id`
//! (`transport/streamable_http_server/tower.rs`, `is_legacy_request` and
//! `handle_post`). So every MCP behaviour here is rmcp's, with three
//! exceptions, served by a few lines of raw HTTP in front of it:
//!
//! - `/demo-stats`, `/demo-touch`, `/demo-tools-changed`, `/demo-alias`:
//!   hooks for the tests (what reached the upstream; make it notify), not
//!   MCP at all.
//! - `--misbehave` (`stall`, `drip`, `drip_sse`, in [`hostile`]): a head
//!   held back, a body dripped under its `Content-Length`, half an SSE
//!   event. These are an HTTP peer breaking the transport, which an SDK
//!   that conforms by construction has no way to do.
//! - In the session era, a log line about a call and the withdrawal of a
//!   request made during it go on the call's event stream, where the spec
//!   says they should and where rmcp does not put them (see [`CallStream`]).
//!
//! The benchmark's throughput runs against `--lean` instead, a few lines of
//! JSON with no SDK: rmcp costs twice the CPU per call (figures in
//! [`lean`]).
//!
//! Where rmcp answers otherwise than the hand-written server this crate
//! replaces, the spec decided which stands: see the notes on [`server`].

mod hostile;
mod lean;
mod server;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use rmcp::{
    Peer, RoleServer,
    service::SubscriptionSink,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The MCP names this crate needs, copied rather than taken from dome-core.
pub(crate) mod names {
    pub(crate) const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub(crate) const SERVER_NAME: &str = "dome-demo-upstream";
    pub(crate) const COUNTER_URI: &str = "demo://counter";
}

/// How the demo upstream behaves.
#[derive(Clone, Debug, Default)]
pub struct DemoOptions {
    /// Speak only the session era (as servers written before 2026-07-28 do).
    pub session_only: bool,
    /// Offer one subscribable resource, `demo://counter`; `POST /demo-touch`
    /// bumps it and notifies its subscribers (on their GET streams, or
    /// listen streams in the stateless era); `POST /demo-tools-changed`
    /// announces a tool list change. Also offers `ask_then_cancel`.
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
    /// Serve only what `bench e2e` measures (stateless `server/discover`,
    /// `tools/list`, `tools/call echo`) without rmcp, which costs twice the
    /// CPU per call (see the `lean` module); every other option is ignored.
    pub lean: bool,
}

/// What the server shares between its MCP handler and the test hooks.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) options: DemoOptions,
    /// Where it listens (an alias's answer names it).
    pub(crate) addr: String,
    pub(crate) aliases: Mutex<Vec<String>>,
    pub(crate) counter: AtomicU64,
    /// `tools/list` requests answered: lets tests see what Dome asks for.
    pub(crate) tool_lists: AtomicU64,
    pub(crate) slow_completed: AtomicU64,
    /// The response stream was closed before the call finished (stateless
    /// era, where rmcp cancels the handler when its stream goes).
    pub(crate) slow_aborted: AtomicU64,
    /// Stopped by `notifications/cancelled` (session era).
    pub(crate) slow_cancelled: AtomicU64,
    /// Every session's peer, for list-changed notifications.
    pub(crate) sessions: Mutex<Vec<Peer<RoleServer>>>,
    /// Subscribed sessions (by `Mcp-Session-Id`) by resource URI.
    pub(crate) subscriptions: Mutex<HashMap<String, HashMap<String, Peer<RoleServer>>>>,
    /// Open `subscriptions/listen` streams (stateless era).
    pub(crate) listens: Mutex<Vec<Listen>>,
    /// Numbers listen streams and the requests `ask_then_cancel` makes.
    pub(crate) serial: AtomicU64,
}

/// One `subscriptions/listen` stream: what it was granted and its sink
/// (which stamps each notification with the stream's id).
pub(crate) struct Listen {
    pub(crate) key: u64,
    pub(crate) id: Value,
    pub(crate) tools: bool,
    pub(crate) uris: Vec<String>,
    pub(crate) sink: SubscriptionSink,
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
    if options.lean {
        return lean::serve(listener).await;
    }
    let local = listener.local_addr()?;
    let state = Arc::new(State {
        aliases: Mutex::new(options.aliases.clone()),
        options,
        addr: local.to_string(),
        ..Default::default()
    });
    let handler_state = state.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(server::Demo::new(handler_state.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            // A plain answer as JSON, as most servers send it; anything sent
            // before the answer turns it into an event stream.
            .with_json_response(true)
            // Tests and benchmarks reach it by whatever address they started
            // it on; it is a fixture on loopback, not a deployment.
            .disable_allowed_hosts(),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (state, mcp) = (state.clone(), mcp.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (state, mcp) = (state.clone(), mcp.clone());
                    async move { Ok::<_, Infallible>(route(&state, &mcp, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

type Mcp = StreamableHttpService<server::Demo, LocalSessionManager>;

async fn route(state: &Arc<State>, mcp: &Mcp, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/mcp" => {}
        "/demo-stats" => return json_response(StatusCode::OK, stats(state)),
        "/demo-alias" => {
            let Ok(body) = req.into_body().collect().await else {
                return json_response(StatusCode::BAD_REQUEST, json!({}));
            };
            let name = String::from_utf8_lossy(&body.to_bytes()).trim().to_string();
            state.aliases.lock().unwrap().push(name);
            return json_response(StatusCode::OK, json!({}));
        }
        "/demo-touch" => {
            let n = state.counter.fetch_add(1, Ordering::Relaxed) + 1;
            let notified = server::touch(state, names::COUNTER_URI).await;
            return json_response(StatusCode::OK, json!({"counter": n, "notified": notified}));
        }
        "/demo-tools-changed" => {
            let notified = server::tools_changed(state).await;
            return json_response(StatusCode::OK, json!({"notified": notified}));
        }
        _ => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new()).boxed())
                .expect("static parts");
        }
    }
    if state.options.misbehave && req.method() == Method::POST {
        // The body is read here to find the misbehaving tools; everything
        // else goes on to rmcp as it came.
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await else {
            return json_response(StatusCode::BAD_REQUEST, json!({}));
        };
        let body = body.to_bytes();
        if let Some(resp) = hostile::answer(&body).await {
            return resp;
        }
        return session_call(mcp, Request::from_parts(parts, Full::new(body))).await;
    }
    session_call(mcp, req).await
}

/// Hands `req` to rmcp; a POST in a session gets a [`CallStream`], which the
/// handler writes to the response's event stream with.
async fn session_call<B>(mcp: &Mcp, mut req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    if req.method() != Method::POST || !req.headers().contains_key("mcp-session-id") {
        return mcp.handle(req).await;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    req.extensions_mut().insert(CallStream(tx));
    let resp = mcp.handle(req).await;
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !sse {
        return resp;
    }
    resp.map(|inner| {
        WithInjected {
            inner,
            injected: Some(rx),
        }
        .boxed()
    })
}

/// The event stream of the session-era call being handled. rmcp 3.11.0 puts
/// a server's message on the call's stream only if it is progress (by its
/// token), the call's answer, or a request made from the call's handler;
/// any other notification, such as a log message or the withdrawal of a
/// request the server made, goes to the session's GET stream
/// (`transport/streamable_http_server/session/local.rs`,
/// `resolve_outbound_channel`). The spec (2025-11-25, Streamable HTTP,
/// "Sending Messages to the Server") says messages on a call's stream
/// SHOULD relate to the call and those on the GET stream SHOULD NOT; a
/// gateway that serves many callers through one upstream session (Dome)
/// cannot tell whose call a log line on the GET stream was about. So the
/// handler writes those few messages itself, here.
#[derive(Clone)]
pub(crate) struct CallStream(tokio::sync::mpsc::UnboundedSender<Bytes>);

impl CallStream {
    /// Sends `message` as an event of the call's stream.
    pub(crate) fn send(&self, message: &Value) -> bool {
        self.0
            .send(Bytes::from(format!("event: message\ndata: {message}\n\n")))
            .is_ok()
    }
}

/// rmcp's response body with what the handler wrote through its
/// [`CallStream`] ahead of whatever rmcp has ready; it ends with rmcp's.
struct WithInjected {
    inner: Body,
    injected: Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>,
}

impl hyper::body::Body for WithInjected {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        if let Some(rx) = &mut self.injected {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(event))));
                }
                Poll::Ready(None) => self.injected = None,
                Poll::Pending => {}
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// What reached the upstream, for tests to check.
fn stats(state: &State) -> Value {
    let listens: Vec<Value> = {
        let l = state.listens.lock().unwrap();
        l.iter()
            .map(|l| json!({"id": l.id, "tools": l.tools, "uris": l.uris}))
            .collect()
    };
    json!({
        "slow_completed": state.slow_completed.load(Ordering::Relaxed),
        "slow_aborted": state.slow_aborted.load(Ordering::Relaxed),
        "slow_cancelled": state.slow_cancelled.load(Ordering::Relaxed),
        "tool_lists": state.tool_lists.load(Ordering::Relaxed),
        "listens": listens,
        "subscribers": state.subscriptions.lock().unwrap().iter()
            .map(|(uri, set)| (uri.clone(), set.len()))
            .collect::<HashMap<_, _>>(),
    })
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("static parts")
}
