//! Rounds of client input across eras: a stateless caller's retry resumes
//! a parked session-era call (`resume`); a session-era caller is asked on
//! its request's stream what a stateless upstream's `input_required`
//! wants, and the upstream is asked again with the answers (`fulfil`).

use super::*;

/// Why a session-era caller's request that a stateless upstream answered
/// `input_required` is refused when it came without an event stream (or
/// in a batch): the requests for its input go to it on one.
pub(super) const NEEDS_A_STREAM: &str = "the upstream needs the client's input, which Dome asks for on an \
                              event stream: send this request alone, with \
                              `Accept: text/event-stream`";

/// A session-era caller's request that a stateless upstream answered
/// `input_required`: what `Gateway::fulfil` asks the caller for and sends
/// again.
pub(super) struct Asked {
    pub(super) session: Arc<Session>,
    pub(super) e: Envelope,
    /// `tools/call`, or one of [`input_method`]'s.
    pub(super) method: &'static str,
    /// The caller's id for it.
    pub(super) id: Value,
}

/// The methods besides `tools/call` whose answer may be `input_required`
/// (the schema allows it for prompts and reads; completion is taken
/// alike, should an upstream ask there), as a static name.
pub(super) fn input_method(method: &str) -> Option<&'static str> {
    match method {
        "prompts/get" => Some("prompts/get"),
        "resources/read" => Some("resources/read"),
        "completion/complete" => Some("completion/complete"),
        _ => None,
    }
}

/// The request `e` of `method` again, with the client's `answers` to the
/// upstream's requests and the upstream's `state`, in place of any it had.
pub(super) fn with_answers(
    e: &Envelope,
    method: &str,
    answers: serde_json::Map<String, Value>,
    state: Option<&Value>,
) -> Envelope {
    let mut again = e.clone();
    if method == "tools/call" {
        again
            .extra_params
            .retain(|(k, _)| k != "inputResponses" && k != "requestState");
        again
            .extra_params
            .push(("inputResponses".into(), Value::Object(answers).to_string()));
        if let Some(state) = state {
            again
                .extra_params
                .push(("requestState".into(), state.to_string()));
        }
        return again;
    }
    // Other methods pass their whole `params` on.
    let mut params: serde_json::Map<String, Value> = e
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    params.remove("requestState");
    params.insert("inputResponses".into(), Value::Object(answers));
    if let Some(state) = state {
        params.insert("requestState".into(), state.clone());
    }
    again.params = Some(Value::Object(params).to_string());
    again
}

/// What the caller can answer (JSON text): a stateless caller says so with
/// each request, a session's client did at `initialize`.
pub(super) fn caller_capabilities<'a>(
    e: &'a Envelope,
    session: Option<&'a Arc<Session>>,
) -> Option<&'a str> {
    e.client_capabilities
        .as_deref()
        .or_else(|| session.and_then(|s| s.capabilities.as_deref()))
}

impl Gateway {
    /// A stateless caller's retry of a call Dome parked for its input: the
    /// answers go to the upstream's requests, and the call's stream resumes
    /// as this request's response. Answers still missing are asked again.
    pub(super) async fn resume(
        &self,
        ex: &mut Exchange,
        token: &str,
        id: Value,
        e: &Envelope,
    ) -> Response<Body> {
        // Taken only by a retry of the same tool from the agent that began
        // the call: anyone else's attempt leaves it waiting for its owner.
        let parked = {
            let mut parked = self.sessions.parked.lock().expect("parked lock");
            match parked.get(token) {
                Some((_, p))
                    if e.name.as_deref() == Some(p.tool.as_str())
                        && same_agent(p.owner.as_ref(), ex.caller()) =>
                {
                    parked.remove(token).map(|(_, p)| p)
                }
                _ => None,
            }
        };
        let Some(mut call) = parked else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &rpc_error(
                    &id,
                    code::INVALID_PARAMS,
                    "requestState names no call Dome is holding for this tool (expired, already resumed, or another tool's)",
                ),
            );
        };
        let answers = crate::gateway::input::responses(&e.extra_params);
        let mut missing = Vec::new();
        let mut given = Vec::new();
        for (key, up_id, req) in call.asks.drain(..) {
            match answers.get(&key) {
                Some(a) => given.push((up_id, a.clone())),
                None => missing.push((key, up_id, req)),
            }
        }
        let up = call.upstream.clone();
        let answered = async move {
            for (up_id, a) in given {
                if let Err(err) = up.answer_server_request(up_id, Some(a), None).await {
                    tracing::debug!(upstream = %up.name(), error = %err, "relaying an input response failed");
                }
            }
        };
        if !missing.is_empty() {
            tokio::spawn(answered);
            call.asks = missing;
            let result = self.sessions.park(call);
            return json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "result": result}),
            );
        }
        let crate::gateway::input::Parked {
            upstream,
            body,
            parser,
            tool,
            redaction: call_redaction,
            ..
        } = call;
        // The answers reach the upstream before its stream is read again.
        answered.await;
        // The resumed call gets a record of its own (the parked one says
        // it waited for input).
        let mut record = match self
            .open_call(ex, crate::audit::record::Kind::Tool, e, None)
            .await
        {
            Ok(c) => c,
            Err(r) => return refused(&r, &id, CallerEra::Stateless),
        };
        record.name = Some(tool.as_str().into());
        record.upstream = Some(upstream.label().clone());
        record.decision = crate::audit::record::Decision::Allow;
        let to = RelayTo {
            id,
            era: CallerEra::Stateless,
            inflight: None,
            stateless: Some((e.client_capabilities.clone(), self.sessions.clone())),
            tool,
            retry: None,
            // The parked call was judged when it began.
            redaction: call_redaction,
            log_floor: Some(log_floor(e)),
            ctx: ex.ctx.detached(),
            call: Some(record),
        };
        relay(upstream, body, parser, to)
    }

    /// Answers a session-era caller whose request a stateless upstream
    /// answered `input_required` (`first`): the requests go to it on an
    /// event stream (`fulfil`), unless it cannot take one of them, which
    /// ends the call at once with -32021 naming the capability.
    pub(super) fn ask_for_input(
        self: &Arc<Self>,
        ex: &mut Exchange,
        upstream: &str,
        asked: Asked,
        first: Value,
        redaction: Option<Redaction>,
    ) -> Response<Body> {
        let caps = asked.session.capabilities.as_deref();
        if let Some(error) = crate::gateway::input::round_problem(upstream, 1, caps, &first) {
            let answer = json!({"jsonrpc": "2.0", "id": asked.id, "error": error});
            ex.with_call(|c| note_final(c, &answer, None));
            return json_response(StatusCode::OK, &answer);
        }
        ex.with_call(|c| c.outcome = Some(crate::audit::record::Outcome::InputRequired));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let gw = self.clone();
        // The rounds run after this request's task: they take its context
        // (caller, intent header, source, trace) along.
        let ctx = ex.ctx.detached();
        tokio::spawn(async move { gw.fulfil(ctx, asked, first, redaction, tx).await });
        sse_response(rx)
    }

    /// Rounds of a stateless upstream's `input_required` for a session-era
    /// client: each request goes to the client on the call's stream (`tx`)
    /// under an id of Dome's; with every answer in, the call goes to the
    /// upstream again with `inputResponses` and its `requestState`, until a
    /// final result, which goes to the client under its own id.
    /// `ctx`: who sent the request the rounds answer.
    pub(super) async fn fulfil(
        self: Arc<Self>,
        ctx: RequestCtx,
        asked: Asked,
        first: Value,
        redaction: Option<Redaction>,
        tx: Push,
    ) {
        let Asked {
            session,
            e,
            method,
            id,
        } = asked;
        // The redactions of the round whose requests go out: the upstream's
        // questions are its output too.
        let mut asking = redaction;
        let mut result = first;
        // Round 1 was checked before this began (`ask_for_input`); each
        // later one is as it arrives, with its record.
        let mut round = 1;
        loop {
            if tx.is_closed() {
                return;
            }
            let Some(answers) = ask_client(&session, &result, asking.as_ref(), &tx, &id).await
            else {
                return;
            };
            let again = with_answers(&e, method, answers, result.get("requestState"));
            let (forwarded, mut record) = self.round(&ctx, method, &again, &session).await;
            let (upstream, reply, redaction) = match forwarded {
                Ok(r) => r,
                Err(r) => {
                    drop(record);
                    push(&tx, &r.to_rpc(&id)).await;
                    return;
                }
            };
            let Some(mut last) = read_round(
                &upstream,
                reply,
                &session,
                redaction.as_ref(),
                &mut record,
                &tx,
                &id,
            )
            .await
            else {
                return;
            };
            if crate::gateway::input::is_input_required(&last) {
                round += 1;
                let caps = session.capabilities.as_deref();
                let problem = crate::gateway::input::round_problem(
                    upstream.name(),
                    round,
                    caps,
                    &last["result"],
                );
                if let Some(error) = problem {
                    // The call ends here, and its last record says why.
                    let answer = json!({"jsonrpc": "2.0", "id": id, "error": error});
                    if let Some(mut c) = record.take() {
                        note_final(&mut c, &answer, None);
                        let _ = c.finish().await;
                    }
                    push(&tx, &answer).await;
                    return;
                }
                if let Some(c) = record.as_mut() {
                    c.outcome = Some(crate::audit::record::Outcome::InputRequired);
                }
                result = last["result"].take();
                asking = redaction;
                continue;
            }
            let counts = redaction.as_ref().map(|r| r.apply(&mut last));
            last["id"] = id.clone();
            protocol::fit_to_session_era(&mut last);
            if let Some(mut c) = record.take() {
                note_final(&mut c, &last, counts.as_ref());
                // The answer leaves only once its record is durable.
                if let Err(u) = c.finish().await {
                    last = rpc_error(&id, code::AUDIT_UNAVAILABLE, u.0);
                }
            }
            push(&tx, &last).await;
            return;
        }
    }

    /// One round's call upstream, with the answers in `again`, and its
    /// record, taken back from the round's own exchange: this task answers
    /// outside any request, and finishes the record before its answer
    /// leaves.
    async fn round(
        &self,
        ctx: &RequestCtx,
        method: &'static str,
        again: &Envelope,
        session: &Arc<Session>,
    ) -> (
        Result<(Arc<Upstream>, Reply, Option<Redaction>), Refusal>,
        Option<Call>,
    ) {
        let mut ex = Exchange::new(ctx.clone());
        let r = if method == "tools/call" {
            // The first round's upstream, not its session lane.
            self.forward_call(&mut ex, again, Some(session), false)
                .await
                .map(|(u, r, _, red)| (u, r, red))
        } else {
            // Redacted there, as the first round was.
            self.forward_other(&mut ex, method, again, Some(session))
                .await
                .map(|(u, r)| (u, r, None))
                .map_err(Refusal::from)
        };
        (r, ex.take_call())
    }
}

/// Sends one message on a caller's stream; false once it went away.
async fn push(tx: &Push, v: &Value) -> bool {
    tx.send(Ok(Frame::data(sse::event(&v.to_string()))))
        .await
        .is_ok()
}

/// Puts one round's requests (`result`'s `inputRequests`) to the client
/// under ids of Dome's and waits for every answer: the answers by key, or
/// `None` once the call is over (the client went away, refused, or did
/// not answer; it was told why).
async fn ask_client(
    session: &Arc<Session>,
    result: &Value,
    asking: Option<&Redaction>,
    tx: &Push,
    id: &Value,
) -> Option<serde_json::Map<String, Value>> {
    let mut waits = Vec::new();
    let requests = result["inputRequests"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (key, req) in requests {
        let down_id = format!(
            "dome-{}",
            NEXT_SERVER_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (otx, orx) = tokio::sync::oneshot::channel();
        session
            .local_requests
            .lock()
            .expect("local requests lock")
            .insert(Value::String(down_id.clone()).to_string(), otx);
        let mut msg = json!({"jsonrpc": "2.0", "id": down_id, "method": req["method"]});
        if let Some(p) = req.get("params") {
            msg["params"] = p.clone();
        }
        if let Some(r) = asking {
            r.apply_any(&mut msg);
        }
        if !push(tx, &msg).await {
            return None;
        }
        waits.push((key, orx));
    }
    let mut answers = serde_json::Map::new();
    for (key, orx) in waits {
        let answer = tokio::select! {
            a = tokio::time::timeout(crate::gateway::input::ANSWER_TTL, orx) => a,
            _ = tx.closed() => return None,
        };
        match answer {
            Ok(Ok(a)) if a.get("result").is_some() => {
                answers.insert(key, a["result"].clone());
            }
            Ok(Ok(a)) => {
                // The client refused: the call ends with its error.
                let mut err = a;
                err["id"] = id.clone();
                push(tx, &err).await;
                return None;
            }
            _ => {
                let why = "the client did not answer the upstream's request for input";
                push(tx, &rpc_error(id, code::INVALID_REQUEST, why)).await;
                return None;
            }
        }
    }
    Some(answers)
}

/// A round's reply read to its response. On a stream, notifications pass
/// on to the client (at its log level, redacted) and the response ends the
/// round. `None` once the call is over (the client went away, or the
/// upstream broke the stream, which the client was told).
async fn read_round(
    upstream: &Upstream,
    reply: Reply,
    session: &Arc<Session>,
    redaction: Option<&Redaction>,
    record: &mut Option<Call>,
    tx: &Push,
    id: &Value,
) -> Option<Value> {
    let resp = match reply {
        Reply::Stream(resp) => resp,
        Reply::Json(v) => return Some(v),
        Reply::Raw(b) => {
            return Some(serde_json::from_slice(&b).unwrap_or_else(|_| {
                let why = format!(
                    "upstream `{}` sent something that is not JSON",
                    upstream.name()
                );
                rpc_error(id, code::UPSTREAM_UNAVAILABLE, why)
            }));
        }
    };
    let mut body = resp.into_body();
    let mut parser = upstream.sse_parser();
    let floor = session.log_floor.load(std::sync::atomic::Ordering::Relaxed);
    let mut broke = None;
    'read: while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                broke = Some(e);
                break;
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if parser.push(data).is_err() {
            break;
        }
        while let Some(ev) = parser.next_event() {
            let Ok(mut v) = serde_json::from_str::<Value>(&ev) else {
                continue;
            };
            if v.get("method").is_none() {
                return Some(v);
            }
            if !admits_log(&v, Some(floor)) {
                continue;
            }
            if let Some(r) = redaction {
                let counts = r.apply_any(&mut v);
                if let Some(c) = record.as_mut() {
                    c.add_redactions(&counts);
                }
            }
            if !push(tx, &v).await {
                break 'read;
            }
        }
    }
    if tx.is_closed() {
        return None;
    }
    // Quiet past its idle timeout, it timed out.
    let why = match broke {
        Some(e) if e.kind() == std::io::ErrorKind::TimedOut => format!(
            "{}: {e}",
            crate::upstream::stream_error(upstream.name(), &e)
        ),
        _ => format!("upstream `{}` broke the stream", upstream.name()),
    };
    push(tx, &rpc_error(id, code::UPSTREAM_UNAVAILABLE, why)).await;
    None
}
