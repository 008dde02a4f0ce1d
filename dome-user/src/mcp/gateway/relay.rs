//! The relay of an upstream's event stream to the caller, event by event:
//! requests to the client under Dome's ids, log messages at the caller's
//! level, redaction, and the final answer only once its record is durable.

use super::*;

/// Whether `message` passes a caller's lowest wanted log level (an index
/// into `LOG_LEVELS`, `None`: all): a caller gets log messages only at the
/// level it asked for, which a session-era upstream does not know of a
/// stateless caller, and no upstream knows of a session.
pub(super) fn admits_log(message: &Value, floor: Option<usize>) -> bool {
    let Some(floor) = floor else { return true };
    message["method"] != "notifications/message"
        || message["params"]["level"]
            .as_str()
            .and_then(protocol::log_level_rank)
            .is_some_and(|l| l >= floor)
}

/// The level a `logging/setLevel` asks for, as an index into `LOG_LEVELS`.
pub(super) fn set_level_of(e: &Envelope) -> Result<usize, String> {
    let params: Value = e
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let level = params["level"].as_str().unwrap_or_default();
    protocol::log_level_rank(level).ok_or_else(|| {
        format!(
            "unknown log level `{level}`; levels: {}",
            protocol::LOG_LEVELS.join(", ")
        )
    })
}

/// The lowest log level a stateless caller asked for in
/// `_meta["io.modelcontextprotocol/logLevel"]`, as an index into
/// `LOG_LEVELS`; past the end when it asked for none (or named no level).
pub(super) fn log_floor(e: &Envelope) -> usize {
    e.meta_entries
        .iter()
        .find(|(k, _)| k == protocol::META_LOG_LEVEL)
        .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
        .and_then(|l| protocol::log_level_rank(&l))
        .unwrap_or(protocol::LOG_LEVELS.len())
}

/// Notes a call's final JSON-RPC response in its record: redactions, and
/// how it ended (error code, the tool's `isError`, waiting for input, or a
/// result).
pub(super) fn note_final(c: &mut Call, v: &Value, counts: Option<&crate::policy::redact::Counts>) {
    use crate::audit::record::Outcome;
    if let Some(counts) = counts {
        c.add_redactions(counts);
    }
    match v["error"]["code"].as_i64() {
        Some(code) => c.failed(code, v["error"]["message"].as_str().unwrap_or("")),
        None if v["result"]["isError"] == true => c.outcome = Some(Outcome::ToolError),
        None if crate::mcp::input::is_input_required(v) => c.outcome = Some(Outcome::InputRequired),
        None => c.outcome = Some(Outcome::Ok),
    }
}

/// Where a relayed stream's final response goes and what its caller can do.
pub(super) struct RelayTo {
    pub(super) id: Value,
    pub(super) era: Era,
    pub(super) inflight: Option<Inflight>,
    /// A stateless caller: the capabilities it declared (JSON text), and
    /// where a call waiting for its input is parked between its rounds.
    pub(super) stateless: Option<(Option<String>, Arc<SessionTable>)>,
    /// The tool called, so a retry that resumes a parked call names it.
    pub(super) tool: String,
    /// A session-era caller's call, to call again when a stateless upstream
    /// answers `input_required` at the end of its stream.
    pub(super) retry: Option<(Arc<Gateway>, Envelope)>,
    /// Redaction the policy asks of the result.
    pub(super) redaction: Option<Redaction>,
    /// The caller's lowest wanted log level (an index into `LOG_LEVELS`;
    /// past its end: none): a stateless caller's from the request, a
    /// session's from its `logging/setLevel`; `None`: all.
    pub(super) log_floor: Option<usize>,
    /// The call's audit record, finished when the final response passes
    /// (and before it does, so nothing is answered unrecorded).
    pub(super) call: Option<Call>,
}

/// Relays an upstream SSE response event by event as it arrives, giving the
/// final response the caller's id. Dropping the downstream stream (the
/// client went away) drops the upstream body, which closes that upstream
/// connection and so cancels the call there.
///
/// A request the upstream sends mid-call goes to a session-era caller under
/// an id of Dome's. A stateless caller cannot take requests: Dome parks the
/// call and answers `input_required` with the upstream's requests; the
/// caller's retry resumes it (see `Gateway::resume`).
pub(super) fn relay(
    up: Arc<Upstream>,
    body: crate::mcp::pool::Body,
    parser: SseParser,
    to: RelayTo,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let session = to.inflight.as_ref().map(|i| i.session.clone());
    // For rounds of input that may follow, outside this request.
    let ctx = detached_ctx();
    tokio::spawn(async move {
        let RelayTo {
            id,
            era,
            inflight,
            stateless,
            tool,
            retry,
            redaction,
            log_floor,
            call,
        } = to;
        let mut call = call;
        let upstream = up.name().to_string();
        let mut bytes_out = 0u64;
        let mut unreadable = 0u32;
        // The call stays cancellable until its stream ends.
        let cancelled = inflight.as_ref().map(|i| i.cancelled.clone());
        let _inflight = inflight;
        let mut body = body;
        let mut parser = parser;
        let cancel_notice = async {
            match &cancelled {
                Some(c) => c.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancel_notice);
        // The loop returns once the call is answered, cancelled or parked;
        // it breaks with why the upstream failed it.
        let failure = loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = tx.closed() => {
                    tracing::debug!(%upstream, "client closed the stream; cancelling the upstream call");
                    if let Some(c) = call.as_mut() {
                        c.outcome = Some(crate::audit::record::Outcome::Cancelled);
                        c.bytes_out = bytes_out;
                    }
                    return;
                }
                _ = &mut cancel_notice => {
                    // The upstream heard of it (`forward_cancel`); whatever
                    // it still sends is for no one. Ending the stream here
                    // also holds nothing for an upstream that ignores it.
                    tracing::debug!(%upstream, "client cancelled the call");
                    if let Some(c) = call.as_mut() {
                        c.outcome = Some(crate::audit::record::Outcome::Cancelled);
                        c.reason = Some("cancelled by the client (notifications/cancelled)".into());
                        c.bytes_out = bytes_out;
                    }
                    return;
                }
            };
            let Some(frame) = frame else {
                // The stream ended without an answer (a response is the
                // last thing relayed): the caller still gets one.
                break if unreadable > 0 {
                    format!(
                        "upstream `{upstream}` sent {unreadable} message(s) that cannot be read \
                         (withheld) and no answer"
                    )
                } else {
                    format!("upstream `{upstream}` ended the stream without an answer")
                };
            };
            let frame = match frame {
                Ok(f) => f,
                // Quiet past its idle timeout: the upstream timed out (the
                // body dropped its connection).
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    break format!("{}: {e}", crate::mcp::upstream::stream_error(&upstream, &e));
                }
                Err(_) => break format!("upstream `{upstream}` broke the stream"),
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if let Err(e) = parser.push(data) {
                // Dropping the body closes the upstream connection.
                break format!("upstream `{upstream}` sent {e}");
            }
            // Requests for a stateless caller's input, gathered over the
            // events that arrived together.
            let mut asks: Vec<(Value, Value)> = Vec::new();
            while let Some(ev) = parser.next_event() {
                if ev.trim().is_empty() {
                    // A priming event (an id to resume from, no message).
                    continue;
                }
                let Ok(mut v) = serde_json::from_str::<Value>(&ev) else {
                    // Not relayed: unread, it could not be redacted, and
                    // the caller could not read it either.
                    unreadable += 1;
                    tracing::debug!(%upstream, "an event that is not JSON-RPC was dropped");
                    continue;
                };
                let is_response = v.get("method").is_none()
                    && (v.get("result").is_some() || v.get("error").is_some());
                if !admits_log(&v, log_floor) {
                    continue;
                }
                // What the upstream says on the way (progress and log
                // messages, requests to the client) is its output too.
                if !is_response && let Some(r) = &redaction {
                    let counts = r.apply_any(&mut v);
                    if let Some(c) = call.as_mut() {
                        c.add_redactions(&counts);
                    }
                }
                if v["method"] == "notifications/cancelled"
                    && let Some(s) = &session
                {
                    // The upstream gave up a request it relayed to the
                    // client: name it by the id the client knows.
                    let up_id = v["params"]["requestId"].clone();
                    let mut pending = s.server_requests.lock().expect("server requests lock");
                    let key = pending
                        .iter()
                        .find(|(_, (u, id))| Arc::ptr_eq(u, &up) && *id == up_id)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = key {
                        pending.remove(&k);
                        v["params"]["requestId"] = serde_json::from_str(&k).unwrap_or(Value::Null);
                    }
                }
                if v.get("method").is_some() && v.get("id").is_some() {
                    // A request from the upstream to the client (sampling,
                    // elicitation, roots).
                    let up_id = v["id"].take();
                    match (&session, &stateless) {
                        (Some(s), _)
                            if crate::mcp::input::may_ask(
                                s.capabilities.as_deref(),
                                &v["method"],
                            ) =>
                        {
                            // Relayed under an id of Dome's, its answer
                            // routed back (see `forward_answer`).
                            let down_id = format!(
                                "dome-{}",
                                NEXT_SERVER_REQUEST
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            );
                            s.server_requests
                                .lock()
                                .expect("server requests lock")
                                .insert(
                                    Value::String(down_id.clone()).to_string(),
                                    (up.clone(), up_id),
                                );
                            v["id"] = Value::String(down_id);
                        }
                        (None, Some((caps, _)))
                            if crate::mcp::input::declares(caps.as_deref(), &v["method"]) =>
                        {
                            asks.push((up_id, v));
                            continue;
                        }
                        _ => {
                            // Nobody to ask (the caller did not declare the
                            // capability): the upstream hears so, in the
                            // terms of its era (it speaks the session era:
                            // only those upstreams ask mid-call).
                            let err = crate::mcp::input::cannot_take(
                                &v["method"],
                                code::METHOD_NOT_FOUND,
                            );
                            let up = up.clone();
                            tokio::spawn(async move {
                                let _ = up.answer(up_id, None, Some(err)).await;
                            });
                            continue;
                        }
                    }
                }
                if is_response
                    && crate::mcp::input::is_input_required(&v)
                    && let (Some((gw, e)), Some(s)) = (&retry, &session)
                {
                    let first = v["result"].take();
                    let caps = s.capabilities.as_deref();
                    if let Some(error) =
                        crate::mcp::input::round_problem(&upstream, 1, caps, &first)
                    {
                        let code = error["code"].as_i64().unwrap_or(code::INVALID_REQUEST);
                        let message = error["message"].as_str().unwrap_or_default().to_string();
                        if let Some(mut c) = call.take() {
                            c.failed(code, &message);
                            let _ = c.finish().await;
                        }
                        let answer = json!({"jsonrpc": "2.0", "id": id, "error": error});
                        let _ = tx
                            .send(Ok(Frame::data(sse::event(&answer.to_string()))))
                            .await;
                        return;
                    }
                    if let Some(c) = call.as_mut() {
                        c.outcome = Some(crate::audit::record::Outcome::InputRequired);
                    }
                    drop(call.take());
                    let asked = Asked {
                        session: s.clone(),
                        e: e.clone(),
                        method: "tools/call",
                        id: id.clone(),
                    };
                    let rounds = gw
                        .clone()
                        .fulfil(asked, first, redaction.clone(), tx.clone());
                    CTX.scope(ctx.clone(), rounds).await;
                    return;
                }
                if is_response {
                    let counts = redaction.as_ref().map(|r| r.apply(&mut v));
                    v["id"] = id.clone();
                    if era != Era::Stateless && up.speaks_stateless() {
                        protocol::fit_to_session_era(&mut v);
                    }
                    if era == Era::Stateless
                        && v.get("result").is_some()
                        && v["result"].get("resultType").is_none()
                    {
                        v["result"]["resultType"] = "complete".into();
                    }
                    if let Some(mut c) = call.take() {
                        note_final(&mut c, &v, counts.as_ref());
                        let text = v.to_string();
                        c.bytes_out = bytes_out + text.len() as u64;
                        // The answer leaves only once its record is durable.
                        if let Err(u) = c.finish().await {
                            tracing::error!(error = %u.0, "answering a call failed closed: its audit record is not durable");
                            v = rpc_error(&id, code::AUDIT_UNAVAILABLE, u.0);
                        }
                    }
                }
                let text = v.to_string();
                bytes_out += text.len() as u64;
                if tx.send(Ok(Frame::data(sse::event(&text)))).await.is_err() {
                    return;
                }
                if is_response {
                    return;
                }
            }
            if !asks.is_empty()
                && let Some((_, table)) = &stateless
            {
                // The record is written as it drops; its caller owns the call.
                let owner = call.take().and_then(|mut c| {
                    c.outcome = Some(crate::audit::record::Outcome::InputRequired);
                    c.bytes_out = bytes_out;
                    c.caller.clone()
                });
                let result = table.park(crate::mcp::input::Parked {
                    upstream: up.clone(),
                    body,
                    parser,
                    tool,
                    redaction,
                    owner,
                    asks: asks
                        .into_iter()
                        .enumerate()
                        .map(|(i, (up_id, req))| (format!("dome-{}", i + 1), up_id, req))
                        .collect(),
                });
                let v = json!({"jsonrpc": "2.0", "id": id, "result": result});
                let _ = tx.send(Ok(Frame::data(sse::event(&v.to_string())))).await;
                return;
            }
        };
        // The caller still gets an answer, and the record says why.
        if let Some(mut c) = call.take() {
            c.failed(code::UPSTREAM_UNAVAILABLE, &failure);
            c.bytes_out = bytes_out;
            let _ = c.finish().await;
        }
        let e = rpc_error(&id, code::UPSTREAM_UNAVAILABLE, failure);
        let _ = tx.send(Ok(Frame::data(sse::event(&e.to_string())))).await;
    });
    sse_response(rx)
}
