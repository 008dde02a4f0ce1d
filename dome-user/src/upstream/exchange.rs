//! Requests to the upstream: the era found by handshake (`server/discover`,
//! else `initialize`), a session re-initialized when the upstream forgets
//! it, request heads built without parsing, and each exchange held to the
//! upstream's slots, the agent's share and the timeout.

use super::*;

impl Upstream {
    /// Sends a request and returns the upstream's reply. `params` is sent as
    /// given (plus the era's envelope). In the session era an expired
    /// upstream session is re-initialized and the request sent once more:
    /// the upstream refused it without acting on it.
    pub async fn request(
        &self,
        method: &str,
        params: Value,
    ) -> Result<(Reply, u64), UpstreamError> {
        self.with_session(|| self.send_as(method, params.clone(), None, None))
            .await
    }

    /// As [`Upstream::request`], for a caller's request that admission let
    /// through (`_admitted`: no other way to send one), with Dome's
    /// identity assertion for the caller, on behalf of `agent` (its
    /// identity slot, or [`ANONYMOUS_AGENT`]), held to its share.
    pub async fn request_as(
        &self,
        _admitted: &dome_core::admit::Admitted,
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
    pub(super) async fn with_session<'a, F, Fut>(
        &'a self,
        send: F,
    ) -> Result<(Reply, u64), UpstreamError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(Reply, u64, StatusCode), UpstreamError>> + 'a,
    {
        // Connecting is the rare path: boxed, so a call's future (moved
        // on every call) does not carry the handshake's.
        if **self.era.load() == UpstreamEra::Unknown {
            Box::pin(self.ensure_connected()).await?;
        }
        let (reply, id, status) = send().await?;
        if status == StatusCode::NOT_FOUND
            && matches!(**self.era.load(), UpstreamEra::Session { .. })
        {
            tracing::info!(upstream = %self.name(), "upstream session expired; initializing a new one");
            self.era.store(Arc::new(UpstreamEra::Unknown));
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
    /// `_admitted`: only a call admission let through can be sent.
    pub async fn call_tool(
        &self,
        _admitted: &dome_core::admit::Admitted,
        id: u64,
        call: &CallParts<'_>,
    ) -> Result<(Reply, u64), UpstreamError> {
        self.with_session(|| self.send_call(id, call)).await
    }

    /// A fresh request id on this upstream.
    pub fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) async fn send_call(
        &self,
        id: u64,
        call: &CallParts<'_>,
    ) -> Result<(Reply, u64, StatusCode), UpstreamError> {
        // The era is borrowed for the body only (no copy of its version).
        let body = match &**self.era.load() {
            UpstreamEra::Stateless { version } => call_body(id, call, Some(version)),
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
    pub async fn answer_server_request(
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

    pub(super) async fn notify_connected(
        &self,
        method: &str,
        params: Value,
    ) -> Result<(), UpstreamError> {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params});
        let req = self.build(method, None, &body)?;
        let (resp, held) = self.exchange(req, None).await?;
        let _ = tokio::time::timeout_at(held.deadline, resp.into_body().collect()).await;
        Ok(())
    }

    pub(super) async fn ensure_connected(&self) -> Result<(), UpstreamError> {
        if **self.era.load() != UpstreamEra::Unknown {
            return Ok(());
        }
        // One connect at a time; whoever waited finds it done.
        let _guard = self.connecting.lock().await;
        if **self.era.load() != UpstreamEra::Unknown {
            return Ok(());
        }
        let connected = self.handshake().await;
        if connected.is_err() {
            // Whatever the handshake got to, the next request starts over.
            // An upstream down at start was left taken for a session-era
            // one without a session (an `initialize` that never arrived),
            // and stayed out of the catalog until its configuration changed.
            self.era.store(Arc::new(UpstreamEra::Unknown));
        }
        connected
    }

    /// Finds the upstream's era: `server/discover`, else `initialize`.
    pub(super) async fn handshake(&self) -> Result<(), UpstreamError> {
        // The stateless era first: one round trip, no state to keep.
        let discover = json!({"_meta": stateless_meta(protocol::LATEST_STATELESS)});
        self.era.store(Arc::new(UpstreamEra::Stateless {
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
            self.era.store(Arc::new(UpstreamEra::Unknown));
            return Err(UpstreamError::Invalid(
                self.name().into(),
                "configured for the stateless era, but server/discover failed".into(),
            ));
        }
        self.era.store(Arc::new(UpstreamEra::Session {
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
            self.era.store(Arc::new(UpstreamEra::Unknown));
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
        self.era.store(Arc::new(UpstreamEra::Session {
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

    pub(super) async fn send(
        &self,
        method: &str,
        params: Value,
    ) -> Result<(Reply, u64, StatusCode), UpstreamError> {
        self.send_as(method, params, None, None).await
    }

    pub(super) async fn send_as(
        &self,
        method: &str,
        mut params: Value,
        assertion: Option<(&header::HeaderName, &str)>,
        agent: Option<u32>,
    ) -> Result<(Reply, u64, StatusCode), UpstreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let UpstreamEra::Stateless { version } = &**self.era.load() {
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
        // A session the upstream forgot is a 404 with whatever body it likes
        // (rmcp's is plain text): not read as JSON, so `with_session` gets to
        // start a new session instead of failing on the body.
        if status == StatusCode::NOT_FOUND
            && matches!(**self.era.load(), UpstreamEra::Session { .. })
        {
            let _ = tokio::time::timeout_at(held.deadline, resp.into_body().collect()).await;
            return Ok((Reply::Json(Value::Null), id, status));
        }
        Ok((read_reply(self, resp, held).await?, id, status))
    }

    pub(super) fn build(
        &self,
        method: &str,
        name: Option<&str>,
        body: &Value,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        self.build_text(method, name, Bytes::from(body.to_string()))
    }

    pub(super) fn build_text(
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
            UpstreamEra::Stateless { version } => {
                h.insert(VERSION, value(version)?);
                h.insert(METHOD, value(method)?);
                if let Some(n) = name {
                    h.insert(NAME, HeaderValue::from_str(n).map_err(invalid)?);
                }
            }
            UpstreamEra::Session { id, version } => {
                if method != "initialize" {
                    h.insert(VERSION, value(version)?);
                }
                if let Some(id) = id {
                    h.insert(SESSION, HeaderValue::from_str(id).map_err(invalid)?);
                }
            }
            UpstreamEra::Unknown => {}
        }
        Ok(req)
    }

    /// Sends `req` within the upstream's slots and `agent`'s share of them
    /// (`None`: Dome's own request, held to the slots only). What is held
    /// goes with the response: until its body is read, or for a streamed
    /// one until it begins (it then runs on its own connection).
    pub(super) async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        agent: Option<u32>,
    ) -> Result<(Response<crate::upstream::pool::Body>, Held<'_>), UpstreamError> {
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
            return Err(UpstreamError::Timeout {
                upstream: self.name().into(),
                sent: false,
            });
        };
        let held = Held {
            _slot: slot,
            _share: share,
            deadline,
        };
        // Boxed, so the futures of the call path above stay small (each is
        // moved whole when created).
        match tokio::time::timeout_at(deadline, Box::pin(self.pool.send(req))).await {
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name().into(),
                sent: true,
            }),
            Ok(Err(e)) if e.sent => Err(UpstreamError::Broken(self.name().into(), e.message)),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(self.name().into(), e.message)),
            Ok(Ok(r)) => Ok((r, held)),
        }
    }
}
