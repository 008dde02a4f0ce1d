//! Forwarding a call: its record opened, the caller's budgets taken, the
//! policy decision, the identity assertion, and the request to the
//! upstream that owns the name.

use super::*;

impl Gateway {
    /// Phase: budget, the agent's (`dome_core::admit::charge`; every call
    /// counts, the ones policy denies and the unknown ones too).
    pub(super) fn charge(
        &self,
        ex: &Exchange,
        caller: Option<&Caller>,
        who: Option<&admit::Who<'_>>,
        call: &mut Call,
    ) -> Result<admit::Charged, Refusal> {
        let mut effects = admit::Effects::default();
        let mut noted = admit::Noted::default();
        let charged = admit::charge(who, crate::clock::monotonic_ns(), &mut effects, &mut noted);
        self.apply(&ex.ctx, caller, effects, noted, call, None);
        charged
    }

    /// Phase: decide, then the tool's and tenant's budgets
    /// (`dome_core::admit::admit`): the one way to an [`admit::Admitted`],
    /// which the upstream client takes to send a call.
    pub(super) fn admit(
        &self,
        ex: &mut Exchange,
        charged: admit::Charged,
        facts: &admit::Facts<'_>,
        caller: Option<&Caller>,
        call: &mut Call,
    ) -> Result<admit::Admitted, Refusal> {
        let started = Instant::now();
        let authority = &self.authority;
        let snapshot = admit::Snapshot {
            policy: &authority.policy,
            shadow: authority.shadow.as_deref(),
            rule_budgets: &authority.rule_budgets,
        };
        let mut effects = admit::Effects::default();
        let mut noted = admit::Noted::default();
        let admitted = admit::admit(
            charged,
            facts,
            &snapshot,
            crate::clock::monotonic_ns(),
            &mut effects,
            &mut noted,
        );
        let took = started.elapsed();
        call.phase_ns[audit_phase::POLICY] = took.as_nanos() as u64;
        ex.tally.policy = Some(took);
        self.apply(&ex.ctx, caller, effects, noted, call, Some(facts));
        admitted
    }

    /// Opens the audit record of a call of `kind`: reserves its room in the
    /// ring (a call that could not be recorded is refused, unless the
    /// operator chose to drop records) and notes what is known already.
    pub(super) async fn open_call(
        &self,
        ex: &Exchange,
        kind: crate::audit::record::Kind,
        e: &Envelope,
        session: Option<&Arc<Session>>,
    ) -> Result<Call, Refusal> {
        let audit = &self.authority.audit;
        let slot = audit.reserve().await.map_err(|u| Refusal {
            code: code::AUDIT_UNAVAILABLE,
            message: u.0,
            retry_after_ms: None,
            data: None,
        })?;
        // What the record needs of the request (not all of it: no intent copy).
        let ctx = &ex.ctx;
        let mut call = Call::new(
            slot,
            kind,
            ctx.arrived.unwrap_or_else(Instant::now),
            crate::clock::unix_us(),
        );
        call.caller = caller_of(session, ctx);
        call.source = ctx.source;
        call.session = session.map(|s| s.id.clone());
        call.trace_id = ctx.trace.clone().or_else(|| {
            e.meta_entries
                .iter()
                .find(|(k, _)| k == "traceparent")
                .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
                .and_then(|t| trace_id(&t))
        });
        // Taken here, with the rest of what the request says, so every
        // record has it: a call refused before it is judged (over the
        // agent's budget, naming no tool) was recorded without it.
        call.intent = intent_of(ctx, e);
        call.policy = Some(self.authority.policy.clone());
        call.rpc_id = e.id.clone();
        let t = &ex.tally;
        call.bytes_in = t.bytes_in;
        call.phase_ns[audit_phase::PARSE] = t.parse.map_or(0, |d| d.as_nanos() as u64);
        call.phase_ns[audit_phase::AUTH] = t.auth.map_or(0, |d| d.as_nanos() as u64);
        Ok(call)
    }

    /// Forwards a prompt, resource or completion request to the upstream
    /// that owns what it names, with the upstream's own name for it. Its
    /// audit record goes with the exchange (see `Exchange::stash`).
    pub(super) async fn forward_other(
        &self,
        ex: &mut Exchange,
        method: &str,
        e: &Envelope,
        session: Option<&Arc<Session>>,
    ) -> Result<(Arc<Upstream>, Reply), (i64, String)> {
        use crate::audit::record::Kind as AuditKind;
        let kind = match method {
            "prompts/get" => AuditKind::Prompt,
            "completion/complete" => AuditKind::Completion,
            _ => AuditKind::Resource,
        };
        let mut call = self
            .open_call(ex, kind, e, session)
            .await
            .map_err(|r| (r.code, r.message))?;
        let result = self
            .forward_other_inner(ex, method, e, session, &mut call)
            .await;
        if let Err((c, m)) = &result {
            call.failed(*c, m);
        }
        ex.stash(call);
        result
    }

    pub(super) async fn forward_other_inner(
        &self,
        ex: &mut Exchange,
        method: &str,
        e: &Envelope,
        session: Option<&Arc<Session>>,
        call: &mut Call,
    ) -> Result<(Arc<Upstream>, Reply), (i64, String)> {
        let OtherTarget {
            mut params,
            kind,
            key,
            field,
        } = other_target(method, e, call)?;
        // Phase: budget, the agent's: prompts, resources and completions
        // count like tool calls (they were free).
        let caller = caller_of(session, &ex.ctx);
        let who = caller.as_ref().map(who_of);
        let charged = self
            .charge(ex, caller.as_ref(), who.as_ref(), call)
            .map_err(|r| (r.code, r.message))?;
        // The upstream's own name for a prompt (a URI is never renamed).
        let (upstream, original) = self
            .route_other(method, kind, &key, field, &mut params)
            .await;
        let Some(index) = upstream else {
            self.strike(&ex.ctx, caller.as_ref(), "unknown name");
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
        let facts = admit::Facts {
            who: who.as_ref(),
            kind: policy_kind,
            name: &key,
            upstream: upstream.name(),
            original: original.as_deref(),
            intent: intent.as_deref(),
            args_text: args_text.as_deref(),
        };
        let admitted = self
            .admit(ex, charged, &facts, caller.as_ref(), call)
            .map_err(|r| (r.code, r.message))?;
        let redaction = self.redaction_of(&admitted, policy_kind, &key);
        let assertion = match &caller {
            Some(c) => Some(self.vouch(&upstream, c, session, intent.as_deref(), call)?),
            None => None,
        };
        // A stateless upstream is told what the caller can answer, as for
        // a tool call: it may ask for input on a prompt or a read too.
        if upstream.speaks_stateless() {
            tell_capabilities(&mut params, caller_capabilities(e, session));
        }
        let start = Instant::now();
        let vouched = assertion
            .as_deref()
            .map(|a| (&self.authority.signer.header, a));
        let result = upstream
            .request_as(
                &admitted,
                method,
                params,
                vouched,
                Some(agent_key(caller.as_ref())),
            )
            .await;
        call.phase_ns[audit_phase::UPSTREAM] = start.elapsed().as_nanos() as u64;
        let reply = match result {
            Ok((Reply::Stream(s), _)) => {
                match crate::upstream::first_response(&upstream, s).await {
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

    /// The upstream serving a prompt, resource or completion `key` of
    /// `kind`, and the upstream's own name for it, written into `params`
    /// (a URI is never renamed; a resource no listing names goes to the
    /// upstream whose template matches it).
    async fn route_other(
        &self,
        method: &str,
        kind: Kind,
        key: &str,
        field: Option<&str>,
        params: &mut Value,
    ) -> (Option<usize>, Option<Arc<str>>) {
        if matches!(kind, Kind::Resources | Kind::Templates) {
            if kind == Kind::Resources
                && let Some(r) = self.lookup(Kind::Resources, key).await
            {
                return (Some(r.upstream), None);
            }
            let mut t = self.current(Kind::Templates);
            if catalog::template_route(&t, key).is_none() {
                t = self.refresh_for_client(Kind::Templates).await;
            }
            let index =
                catalog::template_route(&t, key).or_else(|| t.routes.get(key).map(|r| r.upstream));
            return (index, None);
        }
        let Some(r) = self.lookup(kind, key).await else {
            return (None, None);
        };
        match (field, method) {
            (Some(f), _) => params[f] = Value::from(&*r.original),
            (None, "completion/complete") => params["ref"]["name"] = Value::from(&*r.original),
            _ => {}
        }
        (Some(r.upstream), Some(r.original.clone()))
    }

    /// Passes a client's answer to a relayed upstream request back to the
    /// upstream that asked, under the upstream's id.
    pub(super) fn forward_answer(&self, session: &Arc<Session>, bytes: &[u8]) {
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
                .answer_server_request(up_id, msg.get("result").cloned(), msg.get("error").cloned())
                .await
            {
                tracing::debug!(upstream = %upstream.name(), error = %err, "relaying an answer failed");
            }
        });
    }

    /// Passes a client's `notifications/cancelled` to the upstream request
    /// it names, with that upstream's request id.
    pub(super) fn forward_cancel(&self, session: &Arc<Session>, e: &Envelope) {
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
    pub(super) fn output_schema(&self, tool: &str) -> Value {
        self.current(Kind::Tools)
            .items
            .iter()
            .find(|t| t["name"] == tool)
            .map(|t| t["outputSchema"].clone())
            .unwrap_or(Value::Null)
    }

    /// The redaction an admitted call's answer gets, with the tool's output
    /// schema (only a tool has one).
    fn redaction_of(
        &self,
        admitted: &admit::Admitted,
        kind: &str,
        name: &str,
    ) -> Option<Redaction> {
        admitted.redactor().map(|r| Redaction {
            redactor: r.clone(),
            schema: if kind == "tool" {
                self.output_schema(name)
            } else {
                Value::Null
            },
        })
    }

    /// The signed assertion that tells `upstream` whose call this is.
    pub(super) fn vouch(
        &self,
        upstream: &Upstream,
        c: &Caller,
        session: Option<&Arc<Session>>,
        intent: Option<&str>,
        call: &Call,
    ) -> Result<String, (i64, String)> {
        let signer = &self.authority.signer;
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
            policy: &self.authority.policy.version,
            jti: call_id,
            iat: now,
            exp: now + signer.ttl_s,
        };
        signer.sign(&claims).map_err(|err| {
            tracing::error!(error = %crate::error_chain(&err), "signing the identity assertion failed");
            (
                code::INTERNAL_ERROR,
                "cannot vouch for the caller".to_string(),
            )
        })
    }

    /// A tool call, every phase: its audit record is opened first (so
    /// whatever happens is recorded) and handed to the request answering
    /// it (see `Exchange::stash`).
    /// `session_lane`: the caller speaks the session era, so a dual-era
    /// upstream is spoken to in that era (`Upstream::for_session_caller`);
    /// not for a round of input, which stays with the first round's era.
    pub(super) async fn forward_call(
        &self,
        ex: &mut Exchange,
        e: &Envelope,
        session: Option<&Arc<Session>>,
        session_lane: bool,
    ) -> Result<(Arc<Upstream>, Reply, Option<Inflight>, Option<Redaction>), Refusal> {
        let mut call = self
            .open_call(ex, crate::audit::record::Kind::Tool, e, session)
            .await?;
        let result = self
            .forward_call_inner(ex, e, session, session_lane, &mut call)
            .await;
        if let Err(r) = &result {
            call.failed(r.code, &r.message);
        }
        ex.stash(call);
        result
    }

    /// Phase: forward. Resolves the public tool name and sends the call to
    /// its upstream with the upstream's own name and request id.
    pub(super) async fn forward_call_inner(
        &self,
        ex: &mut Exchange,
        e: &Envelope,
        session: Option<&Arc<Session>>,
        session_lane: bool,
        call: &mut Call,
    ) -> Result<(Arc<Upstream>, Reply, Option<Inflight>, Option<Redaction>), Refusal> {
        let name = tool_named(e, call)?;
        let caller = caller_of(session, &ex.ctx);
        let who = caller.as_ref().map(who_of);
        let charged = self.charge(ex, caller.as_ref(), who.as_ref(), call)?;
        let Some(route) = self.lookup(Kind::Tools, name).await else {
            self.strike(&ex.ctx, caller.as_ref(), "unknown tool");
            return Err((code::INVALID_PARAMS, format!("Unknown tool: {name}")).into());
        };
        // The catalog's shared names: nothing copied per call.
        call.name = Some(route.public.clone());
        let mut upstream = self.upstreams[route.upstream].clone();
        call.upstream = Some(upstream.label().clone());
        // Phase: decide.
        let intent = call.intent.clone();
        let facts = admit::Facts {
            who: who.as_ref(),
            kind: "tool",
            name,
            upstream: upstream.name(),
            original: Some(&route.original),
            intent: intent.as_deref(),
            args_text: e.arguments.as_deref(),
        };
        let admitted = self.admit(ex, charged, &facts, caller.as_ref(), call)?;
        let redaction = self.redaction_of(&admitted, "tool", name);
        if session_lane {
            // Spoken to in the caller's era where it speaks both (after the
            // decision: a denied call opens nothing upstream).
            upstream = upstream.for_session_caller().await;
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
        let guard = session
            .zip(e.id.as_ref())
            .map(|(s, client_id)| in_flight(s, client_id, &upstream, uid));
        let start = Instant::now();
        // The caller's era envelope stays here (the envelope parser left it
        // out of `meta_entries`); the upstream client adds its own.
        // A session's client declared its capabilities at `initialize`.
        let caps = caller_capabilities(e, session);
        let result = upstream
            .call_tool(
                &admitted,
                uid,
                &crate::upstream::CallParts {
                    name: &route.original,
                    arguments: e.arguments.as_deref(),
                    meta: &e.meta_entries,
                    extra: &e.extra_params,
                    client_capabilities: caps,
                    assertion: assertion
                        .as_deref()
                        .map(|a| (&self.authority.signer.header, a)),
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
        ex.tally.upstream = Some((upstream.label().clone(), route.public.clone(), took));
        match result {
            Ok((reply, _)) => Ok((upstream, reply, guard, redaction)),
            Err(e) => {
                tracing::warn!(upstream = %upstream.name(), error = %e, tool = name, "tools/call failed");
                Err(upstream_refusal(&e))
            }
        }
    }
}

/// What a prompt, resource or completion request names, read, checked and
/// noted in its record (`call`): its params (the caller's era envelope and Dome's namespace taken out),
/// the catalog it is looked up in, its name or URI, and the params field
/// that carries the name (renamed to the upstream's own).
fn other_target(method: &str, e: &Envelope, call: &mut Call) -> Result<OtherTarget, (i64, String)> {
    let mut params: Value = e
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!({}));
    // The caller's era envelope stays here (the upstream client adds
    // its own), and so does Dome's namespace (upstreams trust it).
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
        meta.retain(|k, _| {
            !k.starts_with("io.modelcontextprotocol/") && !k.starts_with(protocol::META_DOME_PREFIX)
        });
    }
    let (kind, key, field): (Kind, Option<String>, Option<&'static str>) = match method {
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
    // In the record whatever becomes of the call, refused for its
    // arguments or its URI too.
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
    Ok(OtherTarget {
        params,
        kind,
        key,
        field,
    })
}

/// What a prompt, resource or completion request names (`other_target`).
struct OtherTarget {
    params: Value,
    kind: Kind,
    key: String,
    /// The params field carrying the name, if the name is renamed there.
    field: Option<&'static str>,
}

/// Tells a stateless upstream, in `params._meta`, the capabilities the
/// caller declared (JSON text).
fn tell_capabilities(params: &mut Value, caps: Option<&str>) {
    let Some(c) = caps.and_then(|c| serde_json::from_str::<Value>(c).ok()) else {
        return;
    };
    if let Some(p) = params.as_object_mut()
        && let Some(m) = p
            .entry("_meta")
            .or_insert_with(|| json!({}))
            .as_object_mut()
    {
        m.insert(protocol::META_CLIENT_CAPABILITIES.into(), c);
    }
}

/// A session's call in flight on `upstream` under `uid`, so the client can
/// cancel it by its own id; the guard takes it off when the call ends.
fn in_flight(s: &Arc<Session>, client_id: &Value, upstream: &Arc<Upstream>, uid: u64) -> Inflight {
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
    Inflight {
        session: s.clone(),
        key,
        cancelled,
    }
}

/// The tool a call names, its arguments checked and digested into its
/// record, and the name recorded whatever becomes of the call (capped, like
/// every caller-controlled field: `bad_caller_field`).
fn tool_named<'e>(e: &'e Envelope, call: &mut Call) -> Result<&'e str, Refusal> {
    if let Some(a) = &e.arguments {
        call.digest_args(a);
        // Arguments are an object (or absent): a string or an array
        // holding the same members got past every argument condition.
        if !arguments_ok(a) {
            return Err((code::INVALID_PARAMS, ARGUMENTS_RULE.to_string()).into());
        }
    }
    let Some(name) = e.name.as_deref() else {
        let why = "tools/call needs params.name".to_string();
        return Err((code::INVALID_PARAMS, why).into());
    };
    call.name = Some(name.into());
    Ok(name)
}

/// Who makes a call: a session's caller authenticated when it opened the
/// session, else the request's.
fn caller_of(session: Option<&Arc<Session>>, ctx: &RequestCtx) -> Option<Caller> {
    session
        .and_then(|s| s.caller.clone())
        .or_else(|| ctx.caller.clone())
}

/// The caller as admission sees it: names and budget buckets, borrowed.
fn who_of(c: &Caller) -> admit::Who<'_> {
    admit::Who {
        agent: &c.agent.id,
        tenant: &c.agent.tenant,
        labels: &c.agent.labels,
        user: c.user.as_deref(),
        agent_budget: c.agent.budgets.agent.as_ref(),
        tool_budgets: &c.agent.budgets.tools,
        tenant_budget: c.tenant.budget.as_deref(),
    }
}
