//! JSON-RPC methods: what Dome answers itself (lists, discover, ping,
//! levels) and what it forwards, by method and era.

use super::*;

impl Gateway {
    /// A page of a `*/list`: visibility equals authorization, so a caller
    /// sees the tools, prompts, resources and templates some policy rule
    /// could allow it to use (resources and prompts were listed to anyone
    /// before). A cursor is tied to the list's version.
    pub(super) async fn list(
        &self,
        caller: Option<&Caller>,
        kind: Kind,
        e: &Envelope,
    ) -> Result<Value, (i64, String)> {
        let cursor = e.cursor.as_deref();
        let cat = match cursor {
            None => self.refresh_for_client(kind).await,
            Some(_) => self.current(kind),
        };
        let policy = &self.authority.policy;
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
                    ..policy_request(caller, policy_kind, name, upstream, None, None)
                })
            })
            .collect();
        let offset = match cursor.map(catalog::parse_cursor) {
            None => 0,
            Some(Some((v, o))) if v == cat.version && o <= visible.len() => o,
            Some(_) => {
                return Err((
                    code::INVALID_PARAMS,
                    "invalid or stale cursor: the list changed; list again from the start".into(),
                ));
            }
        };
        let end = (offset + self.config.page_size.max(1)).min(visible.len());
        let mut result = json!({ kind.field(): &visible[offset..end] });
        if end < visible.len() {
            result["nextCursor"] = catalog::cursor(cat.version, end).into();
        }
        Ok(result)
    }

    /// Answers a request that needs no streaming (also used for batches).
    pub(super) async fn answer_unstreamed(
        &self,
        ex: &mut Exchange,
        session: Option<&Arc<Session>>,
        era: CallerEra,
        method: &str,
        id: Value,
        e: &Envelope,
    ) -> (StatusCode, Value) {
        let ok = |mut result: Value| {
            if era == CallerEra::Stateless {
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
            let status = if era == CallerEra::Stateless {
                stateless_status(c)
            } else {
                StatusCode::OK
            };
            (status, rpc_error(&id, c, m))
        };
        match method {
            "ping" if era != CallerEra::Stateless => ok(json!({})),
            // Removed in the stateless era (it has `subscriptions/listen`).
            "resources/subscribe" | "resources/unsubscribe" if era == CallerEra::Stateless => err(
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
            m if let Some(kind) = Kind::of_method(m) => match self.list(ex.caller(), kind, e).await
            {
                Ok(result) => ok(result),
                Err((c, m)) => err(c, m),
            },
            "prompts/get"
            | "resources/read"
            | "completion/complete"
            | "resources/subscribe"
            | "resources/unsubscribe" => match self.forward_other(ex, method, e, session).await {
                // Its requests go to a session-era caller only on an event
                // stream (`dispatch`); this answer has none.
                Ok((_, reply))
                    if era != CallerEra::Stateless
                        && crate::gateway::input::required(&reply).is_some() =>
                {
                    ex.with_call(|c| c.failed(code::INVALID_REQUEST, NEEDS_A_STREAM));
                    err(code::INVALID_REQUEST, NEEDS_A_STREAM.into())
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
            "logging/setLevel" if era != CallerEra::Stateless => match set_level_of(e) {
                Ok(_) => ok(json!({})),
                Err(m) => err(code::INVALID_PARAMS, m.to_string()),
            },
            "tools/call" => self.answer_call(ex, session, era, id, e).await,
            other => err(code::METHOD_NOT_FOUND, format!("Method not found: {other}")),
        }
    }

    /// A `tools/call` answered as one JSON body (a batch: no event stream,
    /// so no session lane either; a dual-era upstream asking mid-call would
    /// have no one to ask, where its `input_required` is refused with a
    /// reason).
    async fn answer_call(
        &self,
        ex: &mut Exchange,
        session: Option<&Arc<Session>>,
        era: CallerEra,
        id: Value,
        e: &Envelope,
    ) -> (StatusCode, Value) {
        let err = |c: i64, m: String| {
            let status = if era == CallerEra::Stateless {
                stateless_status(c)
            } else {
                StatusCode::OK
            };
            (status, rpc_error(&id, c, m))
        };
        match self.forward_call(ex, e, session, false).await {
            Err(r) => {
                let status = if era == CallerEra::Stateless {
                    stateless_status(r.code)
                } else {
                    StatusCode::OK
                };
                (status, r.to_rpc(&id))
            }
            Ok((upstream, Reply::Stream(st), _, redaction)) => {
                match crate::upstream::first_response(&upstream, st).await {
                    Ok(mut v) => {
                        if let Some(r) = &redaction {
                            let counts = r.apply(&mut v);
                            ex.with_call(|c| c.add_redactions(&counts));
                        }
                        if v["result"]["isError"] == true {
                            ex.with_call(|c| {
                                c.outcome = Some(crate::audit::record::Outcome::ToolError)
                            });
                        }
                        v["id"] = id.clone();
                        if era != CallerEra::Stateless
                            && crate::gateway::input::is_input_required(&v)
                        {
                            ex.with_call(|c| c.failed(code::INVALID_REQUEST, NEEDS_A_STREAM));
                            return err(code::INVALID_REQUEST, NEEDS_A_STREAM.into());
                        }
                        if era != CallerEra::Stateless && upstream.speaks_stateless() {
                            protocol::fit_to_session_era(&mut v);
                        }
                        (StatusCode::OK, v)
                    }
                    Err(e) => err(code::UPSTREAM_UNAVAILABLE, e.to_string()),
                }
            }
            Ok((_, reply, _, _))
                if era != CallerEra::Stateless
                    && crate::gateway::input::required(&reply).is_some() =>
            {
                ex.with_call(|c| c.failed(code::INVALID_REQUEST, NEEDS_A_STREAM));
                err(code::INVALID_REQUEST, NEEDS_A_STREAM.into())
            }
            Ok((upstream, reply, _, redaction)) => {
                match redacted(
                    reply,
                    redaction.as_ref(),
                    upstream.name(),
                    ex.tally.call.as_mut(),
                )
                .and_then(|reply| readdress(era, &upstream, &id, reply, "tools/call"))
                {
                    Ok((status, text, _)) => {
                        if let Some(o) = result_outcome(&text) {
                            ex.with_call(|c| c.outcome = Some(o));
                        }
                        (status, serde_json::from_slice(&text).unwrap_or_default())
                    }
                    Err((c, m)) => err(c, m),
                }
            }
        }
    }

    pub(super) async fn dispatch(
        self: Arc<Self>,
        ex: &mut Exchange,
        era: CallerEra,
        method: &str,
        id: Value,
        e: &Envelope,
        session: Option<Arc<Session>>,
    ) -> Response<Body> {
        if method == "tools/call"
            && era == CallerEra::Stateless
            && let Some(token) = crate::gateway::input::parked_token(&e.extra_params)
        {
            return Box::pin(self.resume(ex, &token, id, e)).await;
        }
        // Every POST accepts an event stream (`post` refuses one that does
        // not with 406), so each answer below may be one.
        if method == "tools/call" {
            // Boxed: its future would otherwise be carried (and moved) by
            // every enclosing layer.
            let lane = era != CallerEra::Stateless;
            match Box::pin(self.forward_call(ex, e, session.as_ref(), lane)).await {
                Ok((upstream, Reply::Stream(st), guard, redaction)) => {
                    let to = RelayTo {
                        id,
                        era,
                        inflight: guard,
                        stateless: (era == CallerEra::Stateless)
                            .then(|| (e.client_capabilities.clone(), self.sessions.clone())),
                        tool: e.name.clone().unwrap_or_default(),
                        retry: session.is_some().then(|| (self.clone(), e.clone())),
                        redaction,
                        log_floor: match (era, &session) {
                            (CallerEra::Stateless, _) => Some(log_floor(e)),
                            (_, Some(s)) => {
                                Some(s.log_floor.load(std::sync::atomic::Ordering::Relaxed))
                            }
                            _ => None,
                        },
                        ctx: ex.ctx.detached(),
                        call: ex.take_call(),
                    };
                    let parser = upstream.sse_parser();
                    return relay(upstream, st.into_body(), parser, to);
                }
                Ok((upstream, reply, _, redaction))
                    if let Some(s) = &session
                        && let Some(first) = crate::gateway::input::required(&reply) =>
                {
                    // A stateless upstream wants input this session-era
                    // client gives by answering requests on the stream.
                    let asked = Asked {
                        session: s.clone(),
                        e: e.clone(),
                        method: "tools/call",
                        id,
                    };
                    return self.ask_for_input(ex, upstream.name(), asked, first, redaction);
                }
                Ok((upstream, reply, _, redaction)) => {
                    let reply = redacted(
                        reply,
                        redaction.as_ref(),
                        upstream.name(),
                        ex.tally.call.as_mut(),
                    );
                    return match reply.and_then(|r| readdress(era, &upstream, &id, r, method)) {
                        Ok((status, text, code)) => {
                            if let Some(o) = result_outcome(&text) {
                                ex.with_call(|c| c.outcome = Some(o));
                            }
                            raw_json_response(status, text, code)
                        }
                        Err((c, m)) => json_response(StatusCode::OK, &rpc_error(&id, c, m)),
                    };
                }
                Err(r) => return refused(&r, &id, era),
            }
        }
        if let (Some(s), Some(method)) = (&session, input_method(method)) {
            // A session-era caller of a prompt, read or completion: a
            // stateless upstream may answer `input_required`, whose requests
            // go to the caller on the call's stream, as for a tool call.
            return match Box::pin(self.forward_other(ex, method, e, Some(s))).await {
                Ok((upstream, reply))
                    if let Some(first) = crate::gateway::input::required(&reply) =>
                {
                    let asked = Asked {
                        session: s.clone(),
                        e: e.clone(),
                        method,
                        id,
                    };
                    // Redacted already, each round (`forward_other`).
                    self.ask_for_input(ex, upstream.name(), asked, first, None)
                }
                Ok((upstream, reply)) => match readdress(era, &upstream, &id, reply, method) {
                    Ok((status, text, code)) => raw_json_response(status, text, code),
                    Err((c, m)) => json_response(StatusCode::OK, &rpc_error(&id, c, m)),
                },
                Err((c, m)) => json_response(StatusCode::OK, &rpc_error(&id, c, m)),
            };
        }
        if method == "subscriptions/listen" && era == CallerEra::Stateless {
            return Box::pin(self.listen(&ex.ctx, id, e)).await;
        }
        // Boxed: every method but tools/call, so the tools/call future
        // stays small.
        let (status, v) = Box::pin(self.answer_in(ex, session.as_ref(), era, method, id, e)).await;
        json_response(status, &v)
    }

    /// `answer_unstreamed`, with what a session keeps of its own: its resource
    /// subscriptions and its log level (alone or in a batch).
    pub(super) async fn answer_in(
        &self,
        ex: &mut Exchange,
        session: Option<&Arc<Session>>,
        era: CallerEra,
        method: &str,
        id: Value,
        e: &Envelope,
    ) -> (StatusCode, Value) {
        if let (Some(s), "resources/subscribe" | "resources/unsubscribe") = (session, method) {
            return Box::pin(self.subscribe(&ex.ctx, s, method == "resources/subscribe", id, e))
                .await;
        }
        // (The level is read only for this method: no parse on others.)
        if method == "logging/setLevel"
            && let Some(s) = session
            && let Ok(floor) = set_level_of(e)
        {
            s.log_floor
                .store(floor, std::sync::atomic::Ordering::Relaxed);
        }
        self.answer_unstreamed(ex, session, era, method, id, e)
            .await
    }
}
