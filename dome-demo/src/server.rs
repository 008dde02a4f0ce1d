//! The MCP server proper: an rmcp [`ServerHandler`], its tools and its
//! resource. Results are written as JSON and read into rmcp's types, so the
//! wire shapes stay visible here. Each says `resultType: "complete"`, which
//! 2026-07-28 requires (the Python SDK refuses a stateless result without
//! it): rmcp's constructors set it, but a result read from JSON has it only
//! if written, and rmcp strips it for a session-era peer.
//!
//! Where rmcp answers otherwise than the hand-written server it replaced,
//! as the spec allows, rmcp's answer stands:
//! - `ping` in the stateless era is -32601 (the old server answered it);
//!   2026-07-28 has no `ping`.
//! - A session rmcp no longer knows gets 404 with a plain-text body (the
//!   old server sent a JSON-RPC error with it); the spec asks for the 404.
//! - In the session era a call whose stream closes runs on: disconnection
//!   is not cancellation (2025-11-25, Streamable HTTP); the old server
//!   stopped it. `notifications/cancelled` stops it.
//! - Every session has a GET stream (the old server offered one only with
//!   `--resources`, else 405).
//!
//! Where rmcp does not do what the spec says a server should, the handler
//! does it through [`CallStream`]: in the session era rmcp sends a log line
//! or a withdrawal to the GET stream, not the call's.

// Logging (and sampling, roots) are deprecated by SEP-2577 in rmcp; the
// protocol versions Dome serves still have them.
#![allow(deprecated)]

use std::{borrow::Cow, sync::Arc, sync::atomic::Ordering, time::Duration};

use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler,
    model::{
        CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, DiscoverResult,
        Implementation, InitializeRequestParams, InitializeResult, ListResourceTemplatesResult,
        ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
        PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ServerCapabilities,
        ServerConfig, ServerRequest, SetLevelRequestMethod, SetLevelRequestParams,
        SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
    },
    service::{PeerRequestOptions, RequestContext, SubscriptionContext},
};
use serde_json::{Value, json};

use crate::{CallStream, Listen, State, names};

/// The versions Dome serves: the three of the session era and 2026-07-28.
const ALL_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];
const SESSION_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
];

#[derive(Clone)]
pub(crate) struct Demo {
    state: Arc<State>,
}

impl Demo {
    pub(crate) fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// rmcp's type for `v`, written as JSON.
fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

/// The call's own event stream, in the session era (see [`CallStream`]).
fn call_stream(context: &RequestContext<RoleServer>) -> Option<CallStream> {
    context
        .extensions
        .get::<http::request::Parts>()?
        .extensions
        .get::<CallStream>()
        .cloned()
}

/// A request of the stateless era (its version in `_meta`).
fn stateless(context: &RequestContext<RoleServer>) -> bool {
    context.meta.protocol_version().is_some()
}

fn capabilities(resources: bool) -> Value {
    if resources {
        json!({"tools": {"listChanged": true}, "resources": {"subscribe": true, "listChanged": false}, "logging": {}})
    } else {
        json!({"tools": {"listChanged": false}, "logging": {}})
    }
}

/// A tool's result. `resultType` is rmcp's to strip for a session-era peer.
fn result(mut v: Value) -> Result<CallToolResponse, ErrorData> {
    v["resultType"] = "complete".into();
    if v.get("isError").is_none() {
        v["isError"] = false.into();
    }
    Ok(from_json::<CallToolResult>(v)?.into())
}

fn text(t: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": t.into()}]})
}

impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        let caps: ServerCapabilities =
            serde_json::from_value(capabilities(self.state.options.resources))
                .expect("static capabilities");
        ServerConfig::new(caps).with_server_info(Implementation::new(
            names::SERVER_NAME,
            env!("CARGO_PKG_VERSION"),
        ))
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(if self.state.options.session_only {
            SESSION_VERSIONS
        } else {
            ALL_VERSIONS
        })
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let mut sessions = self.state.sessions.lock().unwrap();
        sessions.retain(|p| !p.is_transport_closed());
        sessions.push(context.peer.clone());
        drop(sessions);
        self.negotiate_initialize(&request)
    }

    async fn discover(
        &self,
        _context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, ErrorData> {
        // The same for every caller.
        Ok(DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        )
        .with_cache_scope(CacheScope::Public))
    }

    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        // A stateless caller names its level on each request instead. In the
        // session era the demo logs one line per `slow` call at `info`
        // whatever the level (a server may filter; this one need not).
        if stateless(&context) {
            return Err(ErrorData::method_not_found::<SetLevelRequestMethod>());
        }
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.state.tool_lists.fetch_add(1, Ordering::Relaxed);
        let mut list = tools();
        let add = |list: &mut Vec<Value>, name: &str, description: &str| {
            list.push(json!({"name": name, "description": description, "inputSchema": {"type": "object"}}));
        };
        let options = &self.state.options;
        if options.whoami {
            add(
                &mut list,
                "whoami",
                "Shows the identity headers the call arrived with (Dome's assertion).",
            );
        }
        if options.deep {
            add(
                &mut list,
                "deep",
                "Answers with a result nested `depth` arrays deep.",
            );
        }
        for alias in self.state.aliases.lock().unwrap().iter() {
            add(&mut list, alias, "echo, under another name");
        }
        if options.misbehave {
            for name in ["stall", "drip", "drip_sse"] {
                add(&mut list, name, "Misbehaves (see DemoOptions::misbehave).");
            }
        }
        if options.resources {
            add(
                &mut list,
                "ask_then_cancel",
                "Asks the client something, then withdraws the question.",
            );
        }
        let mut v = json!({"tools": list, "resultType": "complete"});
        if stateless(&context) {
            // The same for every caller, as before rmcp (whose default is
            // private).
            v["ttlMs"] = 0.into();
            v["cacheScope"] = "public".into();
        }
        from_json(v)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let options = &self.state.options;
        let alias = self.state.aliases.lock().unwrap().iter().any(|a| a == name);
        match name {
            _ if alias => result(text(format!(
                "{name}@{}:{}",
                self.state.addr,
                args["message"].as_str().unwrap_or_default()
            ))),
            "echo" => {
                let message = args["message"].as_str().unwrap_or_default();
                let mut v = text(message);
                v["structuredContent"] = json!({"message": message});
                result(v)
            }
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
                let mut v = text(Value::Array(rows.clone()).to_string());
                v["structuredContent"] = json!({"records": rows});
                result(v)
            }
            "whoami" if options.whoami => {
                // What Dome vouched for, and every header that reached the
                // upstream (so tests can see what was not forwarded).
                let headers: serde_json::Map<String, Value> = context
                    .extensions
                    .get::<http::request::Parts>()
                    .map(|p| {
                        p.headers
                            .iter()
                            .filter(|(k, _)| {
                                k.as_str().starts_with("dome-") || *k == http::header::AUTHORIZATION
                            })
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    Value::String(v.to_str().unwrap_or_default().into()),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut v = text(Value::Object(headers).to_string());
                // What arrived in `_meta`, for tests of what Dome passes on.
                let meta = serde_json::to_value(&context.meta).unwrap_or_default();
                v["structuredContent"] = json!({"meta": meta});
                result(v)
            }
            "deep" if options.deep => {
                let depth = args["depth"].as_u64().unwrap_or(200).clamp(1, 1_000);
                let mut nested = json!("bottom");
                for _ in 0..depth {
                    nested = Value::Array(vec![nested]);
                }
                let mut v = text("deep");
                v["structuredContent"] = json!({"nested": nested});
                result(v)
            }
            "ask_then_cancel" if options.resources => {
                // A request to the client on the call's stream, withdrawn at
                // once: lets tests see a cancellation relayed downstream.
                let params = json!({"message": "Never mind", "requestedSchema": {"type": "object", "properties": {}}});
                if let Some(stream) = call_stream(&context) {
                    // Both on the call's stream, in order; the id is not one
                    // of rmcp's (numbers), so the client's answer, if any,
                    // is dropped as an answer to nothing.
                    let id = format!(
                        "demo-ask-{}",
                        self.state.serial.fetch_add(1, Ordering::Relaxed)
                    );
                    stream.send(&json!({"jsonrpc": "2.0", "id": id, "method": "elicitation/create", "params": params}));
                    stream.send(
                        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": id, "reason": "no longer needed"}}),
                    );
                    return result(text("withdrawn"));
                }
                let ask: ServerRequest =
                    from_json(json!({"method": "elicitation/create", "params": params}))?;
                let handle = context
                    .peer
                    .send_cancellable_request(ask, PeerRequestOptions::no_options())
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                let _ = handle.cancel(Some("no longer needed".into())).await;
                result(text("withdrawn"))
            }
            "slow" => self.slow(&args, &context).await,
            other => Err(ErrorData::invalid_params(
                format!("unknown tool: {other}"),
                None,
            )),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.resources()?;
        from_json(
            json!({"resources": [{"uri": names::COUNTER_URI, "name": "counter", "mimeType": "text/plain"}],
                "resultType": "complete"}),
        )
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.resources()?;
        from_json(json!({"resourceTemplates": [], "resultType": "complete"}))
    }

    async fn read_resource(
        &self,
        _request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.resources()?;
        let counter = self.state.counter.load(Ordering::Relaxed).to_string();
        Ok(from_json::<ReadResourceResult>(json!({"contents": [
            {"uri": names::COUNTER_URI, "mimeType": "text/plain", "text": counter}],
            "resultType": "complete"}))?
        .into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.resources()?;
        let sid = session_id(&context);
        self.state
            .subscriptions
            .lock()
            .unwrap()
            .entry(request.uri)
            .or_default()
            .insert(sid, context.peer.clone());
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.resources()?;
        let sid = session_id(&context);
        if let Some(set) = self
            .state
            .subscriptions
            .lock()
            .unwrap()
            .get_mut(&request.uri)
        {
            set.remove(&sid);
        }
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // Whatever was asked: rmcp keeps only what the capabilities offer.
        self.state.options.resources.then(|| requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let key = self.state.serial.fetch_add(1, Ordering::Relaxed);
        let accepted = context.accepted();
        self.state.listens.lock().unwrap().push(Listen {
            key,
            id: serde_json::to_value(&context.request_context().id).unwrap_or_default(),
            tools: accepted.tools_list_changed == Some(true),
            uris: accepted.resource_subscriptions.clone().unwrap_or_default(),
            sink: context.sink().clone(),
        });
        context.cancelled().await;
        self.state.listens.lock().unwrap().retain(|l| l.key != key);
        Ok(())
    }
}

impl Demo {
    fn resources(&self) -> Result<(), ErrorData> {
        if self.state.options.resources {
            Ok(())
        } else {
            Err(ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                "resources are off (start with --resources)",
                None,
            ))
        }
    }

    /// `slow`: works in `steps` of `delay_ms`, reporting progress after each
    /// (when the call has a progress token) and logging one line first.
    /// `hold_ms`: nothing at all for so long (in the stateless era, where
    /// rmcp holds the head until the first message, not even headers).
    async fn slow(
        &self,
        args: &Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let state = &self.state;
        let stateless = stateless(context);
        let ct = &context.ct;
        // A closed stream cancels a stateless call (rmcp drops it with its
        // response); in the session era only `notifications/cancelled` does.
        let stopped = || {
            if stateless {
                state.slow_aborted.fetch_add(1, Ordering::Relaxed);
            } else {
                state.slow_cancelled.fetch_add(1, Ordering::Relaxed);
            }
            Err(ErrorData::internal_error("cancelled", None))
        };
        let hold = args["hold_ms"].as_u64().unwrap_or(0).min(10_000);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(hold)) => {}
            _ = ct.cancelled() => return stopped(),
        }
        let steps = args["steps"].as_u64().unwrap_or(3).clamp(1, 50);
        let delay = Duration::from_millis(args["delay_ms"].as_u64().unwrap_or(50).min(2000));
        let token = context.meta.get_progress_token();
        // One log line: always in the session era, in the stateless era only
        // when the request asked for `info` or below.
        let log = !stateless
            || context
                .meta
                .log_level()
                .is_some_and(|l| matches!(l, LoggingLevel::Debug | LoggingLevel::Info));
        let peer: &Peer<RoleServer> = &context.peer;
        // A message that cannot be sent: in the stateless era the caller
        // closed the call's stream, which stops the call; in the session era
        // the call goes on (see the module comment).
        if log {
            let m = json!({"level": "info", "logger": "slow", "data": format!("working in {steps} steps")});
            let sent = match call_stream(context) {
                Some(stream) => stream.send(
                    &json!({"jsonrpc": "2.0", "method": "notifications/message", "params": m}),
                ),
                None => {
                    let m: LoggingMessageNotificationParam = from_json(m)?;
                    peer.notify_logging_message(m).await.is_ok()
                }
            };
            if !sent && stateless {
                return stopped();
            }
        }
        for i in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = ct.cancelled() => return stopped(),
            }
            if let Some(token) = &token {
                let p: ProgressNotificationParam = from_json(json!({
                    "progressToken": token, "progress": i, "total": steps,
                    "message": format!("step {i} of {steps}")}))?;
                if peer.notify_progress(p).await.is_err() && stateless {
                    return stopped();
                }
            }
        }
        if ct.is_cancelled() {
            return stopped();
        }
        state.slow_completed.fetch_add(1, Ordering::Relaxed);
        result(text(format!("done after {steps} steps")))
    }
}

/// The session a request came in, from its `Mcp-Session-Id`.
fn session_id(context: &RequestContext<RoleServer>) -> String {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `demo://counter` changed: tells the sessions subscribed to it and the
/// listen streams that asked for it. Returns how many took the news.
pub(crate) async fn touch(state: &State, uri: &str) -> usize {
    let peers: Vec<Peer<RoleServer>> = match state.subscriptions.lock().unwrap().get_mut(uri) {
        Some(subscribers) => {
            // Sessions that ended went with their subscriptions.
            subscribers.retain(|_, p| !p.is_transport_closed());
            subscribers.values().cloned().collect()
        }
        None => Vec::new(),
    };
    let mut notified = 0;
    for peer in peers {
        let param = from_json(json!({"uri": uri})).expect("static");
        if peer.notify_resource_updated(param).await.is_ok() {
            notified += 1;
        }
    }
    let sinks: Vec<_> = state
        .listens
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.uris.iter().any(|u| u == uri))
        .map(|l| l.sink.clone())
        .collect();
    for sink in sinks {
        if sink.notify_resource_updated(uri).await.is_ok() {
            notified += 1;
        }
    }
    notified
}

/// The tool list changed: tells every session and the listen streams that
/// asked. Returns how many took the news.
pub(crate) async fn tools_changed(state: &State) -> usize {
    let peers: Vec<Peer<RoleServer>> = {
        let mut sessions = state.sessions.lock().unwrap();
        sessions.retain(|p| !p.is_transport_closed());
        sessions.clone()
    };
    let mut notified = 0;
    for peer in peers {
        if peer.notify_tool_list_changed().await.is_ok() {
            notified += 1;
        }
    }
    let sinks: Vec<_> = state
        .listens
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.tools)
        .map(|l| l.sink.clone())
        .collect();
    for sink in sinks {
        if sink.notify_tool_list_changed().await.is_ok() {
            notified += 1;
        }
    }
    notified
}

fn tools() -> Vec<Value> {
    vec![
        json!({
            "name": "echo",
            "description": "Returns the message it is given.",
            "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
            "outputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
        }),
        json!({
            "name": "slow",
            "description": "Works in steps, reporting progress after each.",
            "inputSchema": {"type": "object", "properties": {
                "steps": {"type": "integer", "minimum": 1, "maximum": 50},
                "delay_ms": {"type": "integer", "minimum": 0, "maximum": 2000}}},
        }),
        json!({
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
        }),
    ]
}
