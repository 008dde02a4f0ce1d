//! Resource subscriptions (session era) and `subscriptions/listen`
//! streams (stateless era).

use super::*;

impl Gateway {
    /// The upstream serving resource `uri`: the one that lists it, else the
    /// one with a template that could produce it.
    pub(super) async fn resource_upstream(&self, uri: &str) -> Option<Arc<Upstream>> {
        let index = match self.lookup(Kind::Resources, uri).await {
            Some(r) => Some(r.upstream),
            None => {
                let mut t = self.current(Kind::Templates);
                if catalog::template_route(&t, uri).is_none() {
                    t = self.refresh_for_client(Kind::Templates).await;
                }
                catalog::template_route(&t, uri).or_else(|| t.routes.get(uri).map(|r| r.upstream))
            }
        }?;
        self.upstreams.get(index).cloned()
    }

    /// `resources/subscribe` and `unsubscribe` of a session: recorded per
    /// session; the upstream is asked only for the first subscriber of a URI
    /// and told when the last one leaves (see `Upstream::want`).
    /// Whether policy lets `caller` read resource `uri`: a subscription is
    /// a standing read, judged like one (the denial's reason otherwise).
    pub(super) fn may_read(
        &self,
        uri: &str,
        upstream: Option<&Upstream>,
        caller: Option<&Caller>,
        intent: Option<&str>,
    ) -> Result<(), String> {
        let req = policy_request(
            caller,
            "resource",
            uri,
            upstream.map(|u| u.name()),
            intent,
            None,
        );
        match self.authority.policy.decide(&req) {
            crate::policy::compile::Decision::Allow { obligations, .. }
                if obligations.require_intent && intent.is_none() =>
            {
                Err(format!(
                    "denied: this resource needs a stated intent (params._meta[\"{INTENT_META}\"])"
                ))
            }
            crate::policy::compile::Decision::Allow { .. } => Ok(()),
            crate::policy::compile::Decision::Deny { reason, .. } => {
                Err(format!("denied: {reason}"))
            }
        }
    }

    pub(super) async fn subscribe(
        &self,
        ctx: &RequestCtx,
        session: &Arc<Session>,
        on: bool,
        id: Value,
        e: &Envelope,
    ) -> (StatusCode, Value) {
        let ok = (
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": {}}),
        );
        let Some(uri) = e
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .and_then(|p| p["uri"].as_str().map(str::to_string))
        else {
            return (
                StatusCode::OK,
                rpc_error(&id, code::INVALID_PARAMS, "params.uri is required"),
            );
        };
        if let Some(why) = uri_problem(Kind::Resources, &uri) {
            return (StatusCode::OK, rpc_error(&id, code::INVALID_PARAMS, why));
        }
        let Some(upstream) = self.resource_upstream(&uri).await else {
            return (
                StatusCode::OK,
                rpc_error(
                    &id,
                    code::INVALID_PARAMS,
                    format!("Unknown resource: {uri}"),
                ),
            );
        };
        if on
            && let Err(reason) = self.may_read(
                &uri,
                Some(&upstream),
                session.caller.as_ref(),
                intent_of(ctx, e).as_deref(),
            )
        {
            return (StatusCode::OK, rpc_error(&id, code::POLICY_DENIED, reason));
        }
        if !self.sessions.subscribe(&uri, &session.id, on) {
            // Already subscribed (or not subscribed): nothing changes.
            return ok;
        }
        match upstream.want(&uri, on).await {
            Ok(Some(answer)) if answer.get("result").is_none() => {
                if on {
                    self.sessions.subscribe(&uri, &session.id, false);
                }
                let mut answer = answer;
                answer["id"] = id;
                (StatusCode::OK, answer)
            }
            Ok(_) => ok,
            Err(err) => {
                if on {
                    self.sessions.subscribe(&uri, &session.id, false);
                }
                (
                    StatusCode::OK,
                    rpc_error(&id, code::UPSTREAM_UNAVAILABLE, err.to_string()),
                )
            }
        }
    }

    /// `subscriptions/listen` (stateless era): the response is a stream that
    /// opens with `notifications/subscriptions/acknowledged` (the filter
    /// Dome honors: what the client asked for that some upstream offers)
    /// and then carries the matching change notifications of every
    /// upstream, each stamped with the listen request's id, until the
    /// client closes it.
    pub(super) async fn listen(&self, ctx: &RequestCtx, id: Value, e: &Envelope) -> Response<Body> {
        let bad = |c: i64, m: &str| json_response(stateless_status(c), &rpc_error(&id, c, m));
        let caps = self.capabilities();
        if !dome_core::subscriptions::offers_changes(&caps) {
            return bad(
                code::METHOD_NOT_FOUND,
                "Method not found: subscriptions/listen (no upstream offers change notifications)",
            );
        }
        if id.is_null() {
            return bad(
                code::INVALID_REQUEST,
                "subscriptions/listen needs a request id",
            );
        }
        let params: Value = e
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        // Counted before anything is subscribed upstream for it.
        let cap = self.config.max_streams_per_agent;
        let Some(slot) = self
            .sessions
            .open_stream_slot(agent_key(ctx.caller.as_ref()), cap)
        else {
            return too_many_streams(&id, cap);
        };
        let Some(asked) = params.get("notifications").and_then(Value::as_object) else {
            return bad(
                code::INVALID_PARAMS,
                "subscriptions/listen needs params.notifications (a SubscriptionFilter)",
            );
        };
        let mut filter = ListenFilter::of_lists(asked, &caps);
        let wanted = if caps["resources"]["subscribe"] == true {
            self.listen_uris(ctx, asked, e, &mut filter).await
        } else {
            Vec::new()
        };
        let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": filter.to_json(), "_meta": {protocol::META_SUBSCRIPTION_ID: id}}});
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // The ack goes first: nothing is routed to this stream before it is
        // registered below.
        let _ = tx.try_send(Ok(Frame::data(sse::event(&ack.to_string()))));
        let key = NEXT_LISTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions.listens.lock().expect("listens lock").insert(
            key,
            Listen {
                id,
                filter,
                push: tx.clone(),
            },
        );
        let table = self.sessions.clone();
        let mut closing = table.closing.subscribe();
        tokio::spawn(async move {
            // The client closed the stream, or Dome is shutting down: forget
            // it and its URIs (the stream ends once this sender goes too).
            tokio::select! {
                _ = tx.closed() => {}
                _ = closing.wait_for(|c| *c) => {}
            }
            drop(tx);
            table.listens.lock().expect("listens lock").remove(&key);
            for (u, uri) in wanted {
                let _ = u.want(&uri, false).await;
            }
        });
        held_sse_response(rx, slot)
    }

    /// The resource URIs a `subscriptions/listen` asks for, into `filter`:
    /// each one policy lets the caller read, wanted from the upstream
    /// serving it (returned, to be given up when the stream ends).
    async fn listen_uris(
        &self,
        ctx: &RequestCtx,
        asked: &serde_json::Map<String, Value>,
        e: &Envelope,
        filter: &mut ListenFilter,
    ) -> Vec<(Arc<Upstream>, String)> {
        let mut wanted = Vec::new();
        let uris = asked
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default();
        let caller = ctx.caller.clone();
        let intent = intent_of(ctx, e);
        for uri in uris {
            let upstream = self.resource_upstream(uri).await;
            // Policy first: a URI the caller may not read is left out of
            // the filter Dome acknowledges.
            if let Err(reason) =
                self.may_read(uri, upstream.as_deref(), caller.as_ref(), intent.as_deref())
            {
                tracing::debug!(uri, reason, "resource subscription denied by policy");
                continue;
            }
            // Like a subscription to a URI no upstream serves, one the
            // upstream refuses is honored and never fires.
            filter.uris.insert(uri.to_string());
            let Some(u) = upstream else { continue };
            match u.want(uri, true).await {
                Ok(Some(a)) if a.get("result").is_none() => {
                    tracing::debug!(upstream = %u.name(), uri, answer = %a, "resource subscription refused");
                }
                Ok(_) => wanted.push((u, uri.to_string())),
                Err(err) => {
                    tracing::warn!(upstream = %u.name(), uri, error = %err, "resource subscription failed");
                }
            }
        }
        wanted
    }
}
