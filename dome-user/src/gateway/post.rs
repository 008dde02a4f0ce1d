//! POST: the body read within its limits, one message parsed and checked
//! (or a batch), the era ladder of its headers, and `initialize`; then
//! `methods::dispatch`.

use super::*;

pub(super) use dome_core::era::{accepts, is_stateless, stateless_ladder};

impl Gateway {
    pub(super) async fn post(
        self: Arc<Self>,
        req: Request<Incoming>,
        ex: &mut Exchange,
    ) -> Response<Body> {
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
        let bytes = match self.read_body(body).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        ex.tally.bytes_in = bytes.len() as u64;
        let parse_start = Instant::now();
        let parsed = envelope::parse(&bytes, self.config.max_json_depth);
        let took = parse_start.elapsed();
        ex.tally.parse = Some(took);
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let session_id = header(protocol::H_SESSION).map(str::to_string);
        let e = match parsed {
            Ok(Parsed::One(e)) => e,
            Ok(Parsed::Batch) => {
                ex.note_method("batch");
                // Cold paths are boxed so the hot path's future (moved on
                // every call) stays small.
                return Box::pin(self.batch(&bytes, session_id.as_deref(), ex)).await;
            }
            Err(err) => return self.malformed(&ex.ctx, err),
        };
        let id = e.id.clone().unwrap_or(Value::Null);
        let is_response = e.method.is_none() && e.is_response;
        if let Err(refused) = self.check_message(&ex.ctx, &e, &id, is_response) {
            return json_response(StatusCode::BAD_REQUEST, &refused);
        }
        let method = e.method.as_deref().unwrap_or_default();
        let is_notification = is_response || e.id.is_none();
        ex.note_method(if is_notification {
            "notification"
        } else {
            method_label(method)
        });

        let header_version = header(protocol::H_VERSION);
        let stateless = is_stateless(&e, method, header_version);

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
                .dispatch(ex, CallerEra::Stateless, method, id, &e, None)
                .await;
        }

        // Session era.
        if method == "initialize" {
            return self.initialize(ex.caller(), id, &e);
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
        let Some(session) = self.sessions.owned(&sid, ex.caller()) else {
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
            ex,
            CallerEra::Session(session.version),
            method,
            id,
            &e,
            Some(session),
        )
        .await
    }

    /// A POST's body, within `[mcp] max_body_bytes` and the body timeout
    /// (else the answer refusing it).
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Response<Body>> {
        let collected = tokio::time::timeout(
            self.body_timeout,
            Limited::new(body, self.config.max_body_bytes).collect(),
        )
        .await;
        let Ok(collected) = collected else {
            return Err(json_response(
                StatusCode::REQUEST_TIMEOUT,
                &rpc_error(
                    &Value::Null,
                    code::INVALID_REQUEST,
                    "the request body did not arrive in time",
                ),
            ));
        };
        match collected {
            Ok(b) => Ok(b.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &rpc_error(
                        &Value::Null,
                        code::INVALID_REQUEST,
                        format!("request body over {} bytes", self.config.max_body_bytes),
                    ),
                ))
            }
            Err(_) => Err(empty(StatusCode::BAD_REQUEST)),
        }
    }

    /// The answer to a body that is not one JSON-RPC message (struck
    /// against its source).
    fn malformed(&self, ctx: &RequestCtx, err: EnvelopeError) -> Response<Body> {
        self.strike(ctx, None, "malformed request");
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
        json_response(
            StatusCode::BAD_REQUEST,
            &rpc_error(&Value::Null, code, message),
        )
    }

    /// Whether a message is one Dome takes (its `jsonrpc`, id, method and
    /// caller-controlled fields), else the JSON-RPC error refusing it (at
    /// HTTP 400).
    fn check_message(
        &self,
        ctx: &RequestCtx,
        e: &Envelope,
        id: &Value,
        is_response: bool,
    ) -> Result<(), Value> {
        let refuse = |id: &Value, code, why: &str| Err(rpc_error(id, code, why));
        if !e.jsonrpc_ok {
            return refuse(id, code::INVALID_REQUEST, "jsonrpc must be \"2.0\"");
        }
        if !is_response && !request_id_ok(e.id.as_ref()) {
            return refuse(&Value::Null, code::INVALID_REQUEST, ID_RULE);
        }
        if e.method.is_none() && !is_response {
            return refuse(id, code::INVALID_REQUEST, "a request needs a method");
        }
        if let Some(why) = self.bad_caller_field(ctx, e) {
            self.strike(ctx, None, "a field over its cap or of the wrong type");
            return refuse(id, code::INVALID_PARAMS, &why);
        }
        Ok(())
    }

    /// A JSON-RPC batch (2025-03-26 sessions only). As JSON-RPC 2.0 §6
    /// says: each request gets its answer in one array, an element that is
    /// no valid request gets an error of its own, notifications and answers
    /// to Dome's requests get none, and an empty batch is one error.
    pub(super) async fn batch(
        self: Arc<Self>,
        bytes: &[u8],
        session: Option<&str>,
        ex: &mut Exchange,
    ) -> Response<Body> {
        let session = match session {
            Some(sid) => match self.sessions.owned(sid, ex.caller()) {
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
        let era = CallerEra::Session(session.version);
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
                Some(_) if let Some(why) = self.bad_caller_field(&ex.ctx, &e) => {
                    out.push(rpc_error(&id, code::INVALID_PARAMS, why))
                }
                Some(method) => {
                    let (_, v) = self
                        .answer_in(ex, Some(&session), era, method, id, &e)
                        .await;
                    out.push(v);
                }
            }
        }
        if out.is_empty() {
            return empty(StatusCode::ACCEPTED);
        }
        json_response(StatusCode::OK, &Value::Array(out))
    }

    pub(super) fn initialize(
        self: &Arc<Self>,
        caller: Option<&Caller>,
        id: Value,
        e: &Envelope,
    ) -> Response<Body> {
        let requested = e.init_version.as_deref().unwrap_or_default();
        let version = protocol::negotiate(requested);
        let caller = caller.cloned();
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
}
