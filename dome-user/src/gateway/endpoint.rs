//! The HTTP endpoint: routing, limits and Origin, authentication and the
//! kernel binding of a connection, strikes against a misbehaving caller,
//! GET streams, DELETE and the session sweep. POST is `post`.

use super::*;

impl Gateway {
    /// Answers one request that came in on `conn`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<crate::net::Conn>,
    ) -> Response<Body> {
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let mut ex = Exchange::new(RequestCtx {
            source: Some(conn.peer.ip()),
            arrived: Some(start),
            ..Default::default()
        });
        let mut resp = self.route(req, conn, &mut ex).await;
        let tally = &mut ex.tally;
        if let Some(RpcErrorCode(c)) = resp.extensions().get() {
            tally.rpc_error = Some(*c);
        }
        // Phase: audit. The answer leaves only once its record is durable.
        if let Some((trail, ticket, id)) = commit_calls(tally, &resp)
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

    /// `ex` comes with the request's source and arrival; authentication
    /// adds who sent it.
    pub(super) async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<crate::net::Conn>,
        ex: &mut Exchange,
    ) -> Response<Body> {
        let arrived = ex.ctx.arrived.unwrap_or_else(Instant::now);
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
                    self.authority.signer.jwks().to_string(),
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
        let escalation = &self.authority.escalation;
        let index = self.authority.registry.index();
        let caller = match authn::authenticate(
            req.headers(),
            req.uri().query(),
            &index,
            &self.authority.jwt,
            self.authority.required,
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
                    .and_then(|i| self.authority.jwt.by_issuer.get(i))
                {
                    // A key the provider may have rotated in: fetch its set
                    // again (at most every 5 s); the client's retry may pass.
                    let p = p.clone();
                    tokio::spawn(async move { crate::store::jwks::refresh(&p, now_s, 5).await });
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
        ex.tally.auth = Some(arrived.elapsed());
        ex.ctx.caller = caller;
        ex.ctx.intent = req
            .headers()
            .get(H_INTENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        ex.ctx.trace = req
            .headers()
            .get(protocol::H_TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id);
        self.route_authenticated(req, ex).await
    }

    /// Binds the connection's flow to the agent's kernel identity slot
    /// (once per connection): its packets are then held to the agent's
    /// budget in XDP. The binding goes when the connection closes.
    pub(super) fn bind_kernel(&self, conn: &crate::net::Conn, c: &Caller) {
        let Some(tier) = &self.authority.enforcer else {
            return;
        };
        let mut binding = conn.binding.lock().expect("binding lock");
        if binding.as_ref().is_some_and(|b| b.slot == c.agent.slot) {
            return;
        }
        let flow = crate::kernel::Flow {
            proto: crate::kernel::L4::Tcp,
            src: conn.peer.ip(),
            src_port: conn.peer.port(),
            dst_port: conn.local_port,
        };
        let bound = tier
            .set_budget(c.agent.slot, &self.authority.kernel_budget)
            .and_then(|()| tier.bind_flow(&flow, c.agent.slot));
        match bound {
            Ok(()) => {
                *binding = Some(crate::net::ConnBinding {
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

    /// Why a caller-controlled field the audit record stores is over its
    /// cap or of the wrong type, if one is: intents (in `_meta` or the header) and names are
    /// stored verbatim, so without a cap one agent could write megabytes
    /// of trail a call (and push older records out under `retain_mb`).
    pub(super) fn bad_caller_field(&self, ctx: &RequestCtx, e: &Envelope) -> Option<String> {
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
        let in_header = || ctx.intent.as_ref().is_some_and(|i| i.len() > max);
        (in_meta || in_header())
            .then(|| format!("the intent is longer than {max} bytes ([mcp] max_intent_bytes)"))
    }

    /// 429 for a request of an agent that holds its share of connections
    /// (`[server] max_connections_per_agent`) on one more: the connection
    /// closes after the answer (HTTP/1.1), so the client uses one it has.
    pub(super) fn over_connections(&self) -> Response<Body> {
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
    pub(super) fn blocked(&self) -> Response<Body> {
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
    pub(super) fn resource_metadata(&self) -> Value {
        json!({
            "resource": self.authority.resource,
            "authorization_servers": self
                .authority
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
    pub(super) fn has_authorization_server(&self) -> bool {
        !self.authority.jwt.by_issuer.is_empty()
    }

    /// 401/403/400 with an RFC 6750 challenge: the error and its
    /// description, and the OAuth metadata only where an authorization
    /// server is configured and the credential was not an API key. (Told of
    /// metadata, clients start OAuth discovery and dynamic registration,
    /// and the user never sees "invalid API key".)
    pub(super) fn unauthenticated(&self, f: authn::Failure) -> Response<Body> {
        let mut params = Vec::new();
        if self.has_authorization_server() && !f.api_key {
            params.push(format!(
                "resource_metadata=\"{}\"",
                self.authority.metadata_url()
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

    pub(super) async fn route_authenticated(
        self: Arc<Self>,
        req: Request<Incoming>,
        ex: &mut Exchange,
    ) -> Response<Body> {
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
            Method::POST => Box::pin(self.post(req, ex)).await,
            Method::GET if req.headers().contains_key(protocol::H_SESSION) => {
                ex.note_method("other");
                self.open_stream(req.headers(), ex.caller())
            }
            Method::DELETE => {
                ex.note_method("delete");
                self.delete(req.headers(), ex.caller())
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
    pub(super) fn open_stream(
        &self,
        headers: &HeaderMap,
        caller: Option<&Caller>,
    ) -> Response<Body> {
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
        let Some(session) = self.sessions.owned(sid, caller) else {
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

    pub(super) fn origin_allowed(&self, headers: &HeaderMap) -> bool {
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

    pub(super) fn delete(
        self: &Arc<Self>,
        headers: &HeaderMap,
        caller: Option<&Caller>,
    ) -> Response<Body> {
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
        if self.sessions.owned(id, caller).is_some() && self.end_session(id) {
            empty(StatusCode::OK)
        } else {
            session_not_found(&Value::Null)
        }
    }

    /// Ends session `id` and its upstream subscriptions; false when there
    /// is no such session.
    pub(super) fn end_session(self: &Arc<Self>, id: &str) -> bool {
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
}
