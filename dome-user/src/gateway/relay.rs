//! The relay of an upstream's event stream to the caller, event by event:
//! requests to the client under Dome's ids, log messages at the caller's
//! level, redaction, and the final answer only once its record is durable.

use super::*;

pub(super) use dome_core::subscriptions::{admits_log, log_floor, set_level_of};

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
        None if crate::gateway::input::is_input_required(v) => {
            c.outcome = Some(Outcome::InputRequired)
        }
        None => c.outcome = Some(Outcome::Ok),
    }
}

/// Where a relayed stream's final response goes and what its caller can do.
pub(super) struct RelayTo {
    pub(super) id: Value,
    pub(super) era: CallerEra,
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
    /// Who sent the request, for rounds of input that may follow outside
    /// it.
    pub(super) ctx: RequestCtx,
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
    body: crate::upstream::pool::Body,
    parser: SseParser,
    to: RelayTo,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let relay = Relay {
        session: to.inflight.as_ref().map(|i| i.session.clone()),
        name: up.name().to_string(),
        up,
        to,
        tx,
        bytes_out: 0,
        unreadable: 0,
    };
    tokio::spawn(relay.run(body, parser));
    sse_response(rx)
}

/// One relayed stream: where it goes and what was sent so far.
struct Relay {
    up: Arc<Upstream>,
    /// The upstream's name, for messages.
    name: String,
    to: RelayTo,
    /// The caller's session (session era, a call with an id).
    session: Option<Arc<Session>>,
    tx: Push,
    bytes_out: u64,
    /// Events that were not JSON-RPC, withheld.
    unreadable: u32,
}

/// What became of one event.
enum Flow {
    /// Relayed (or dropped); the stream goes on.
    Next,
    /// A request for a stateless caller's input, gathered until the
    /// events that arrived together are read: (the upstream's id, it).
    Ask(Value, Value),
    /// The call is over: answered, cancelled, or the caller went away.
    Done,
}

impl Relay {
    /// The loop: frames until the call is answered, cancelled or parked,
    /// or the upstream fails it (the caller is then told why).
    async fn run(mut self, mut body: crate::upstream::pool::Body, mut parser: SseParser) {
        // The call stays cancellable until its stream ends.
        let inflight = self.to.inflight.take();
        let cancelled = inflight.as_ref().map(|i| i.cancelled.clone());
        let cancel_notice = async {
            match &cancelled {
                Some(c) => c.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancel_notice);
        let failure = loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = self.tx.closed() => {
                    tracing::debug!(upstream = %self.name, "client closed the stream; cancelling the upstream call");
                    return self.cancelled(None);
                }
                _ = &mut cancel_notice => {
                    // The upstream heard of it (`forward_cancel`); whatever
                    // it still sends is for no one. Ending the stream here
                    // also holds nothing for an upstream that ignores it.
                    tracing::debug!(upstream = %self.name, "client cancelled the call");
                    return self.cancelled(Some("cancelled by the client (notifications/cancelled)"));
                }
            };
            let data = match frame {
                // The stream ended without an answer (a response is the
                // last thing relayed): the caller still gets one.
                None => break self.ended_without_answer(),
                // Quiet past its idle timeout: the upstream timed out (the
                // body dropped its connection).
                Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                    break format!("{}: {e}", crate::upstream::stream_error(&self.name, &e));
                }
                Some(Err(_)) => break format!("upstream `{}` broke the stream", self.name),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            if let Err(e) = parser.push(&data) {
                // Dropping the body closes the upstream connection.
                break format!("upstream `{}` sent {e}", self.name);
            }
            // Requests for a stateless caller's input, gathered over the
            // events that arrived together.
            let mut asks: Vec<(Value, Value)> = Vec::new();
            while let Some(ev) = parser.next_event() {
                match self.event(&ev).await {
                    Flow::Next => {}
                    Flow::Ask(up_id, request) => asks.push((up_id, request)),
                    Flow::Done => return,
                }
            }
            if !asks.is_empty() && self.to.stateless.is_some() {
                return self.park(asks, body, parser).await;
            }
        };
        self.fail(failure).await
    }

    /// The call's record, when the client went away or cancelled.
    fn cancelled(mut self, reason: Option<&str>) {
        if let Some(c) = self.to.call.as_mut() {
            c.outcome = Some(crate::audit::record::Outcome::Cancelled);
            if let Some(r) = reason {
                c.reason = Some(r.into());
            }
            c.bytes_out = self.bytes_out;
        }
    }

    fn ended_without_answer(&self) -> String {
        if self.unreadable > 0 {
            format!(
                "upstream `{}` sent {} message(s) that cannot be read (withheld) and no answer",
                self.name, self.unreadable
            )
        } else {
            format!(
                "upstream `{}` ended the stream without an answer",
                self.name
            )
        }
    }

    /// One event of the upstream's stream.
    async fn event(&mut self, ev: &str) -> Flow {
        if ev.trim().is_empty() {
            // A priming event (an id to resume from, no message).
            return Flow::Next;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(ev) else {
            // Not relayed: unread, it could not be redacted, and the
            // caller could not read it either.
            self.unreadable += 1;
            tracing::debug!(upstream = %self.name, "an event that is not JSON-RPC was dropped");
            return Flow::Next;
        };
        let is_response =
            v.get("method").is_none() && (v.get("result").is_some() || v.get("error").is_some());
        if !admits_log(&v, self.to.log_floor) {
            return Flow::Next;
        }
        if is_response {
            if crate::gateway::input::is_input_required(&v)
                && self.to.retry.is_some()
                && self.session.is_some()
            {
                return self.ask_session(v).await;
            }
            v = self.final_response(v).await;
            self.send(&v).await;
            return Flow::Done;
        }
        // What the upstream says on the way (progress and log messages,
        // requests to the client) is its output too.
        if let Some(r) = &self.to.redaction {
            let counts = r.apply_any(&mut v);
            if let Some(c) = self.to.call.as_mut() {
                c.add_redactions(&counts);
            }
        }
        if v["method"] == "notifications/cancelled" {
            self.name_withdrawn_request(&mut v);
        }
        if v.get("method").is_some() && v.get("id").is_some() {
            let up_id = v["id"].take();
            if let Some(ask) = self.route_request(up_id, &mut v) {
                return ask;
            }
        }
        if self.send(&v).await {
            Flow::Next
        } else {
            Flow::Done
        }
    }

    /// Sends one message to the caller; false once it went away.
    async fn send(&mut self, v: &Value) -> bool {
        let text = v.to_string();
        self.bytes_out += text.len() as u64;
        self.tx
            .send(Ok(Frame::data(sse::event(&text))))
            .await
            .is_ok()
    }

    /// The upstream gave up a request it relayed to the client: name it by
    /// the id the client knows.
    fn name_withdrawn_request(&self, v: &mut Value) {
        let Some(s) = &self.session else { return };
        let up_id = v["params"]["requestId"].clone();
        let mut pending = s.server_requests.lock().expect("server requests lock");
        let key = pending
            .iter()
            .find(|(_, (u, id))| Arc::ptr_eq(u, &self.up) && *id == up_id)
            .map(|(k, _)| k.clone());
        if let Some(k) = key {
            pending.remove(&k);
            v["params"]["requestId"] = serde_json::from_str(&k).unwrap_or(Value::Null);
        }
    }

    /// A request from the upstream to the client (sampling, elicitation,
    /// roots), `v` with its id taken (`up_id`): relayed to a session-era
    /// caller under an id of Dome's (`None`: send `v` on), gathered for a
    /// stateless caller's `input_required`, or refused to the upstream when
    /// the caller cannot take it.
    fn route_request(&self, up_id: Value, v: &mut Value) -> Option<Flow> {
        match (&self.session, &self.to.stateless) {
            (Some(s), _)
                if crate::gateway::input::may_ask(s.capabilities.as_deref(), &v["method"]) =>
            {
                // Its answer is routed back by `forward_answer`.
                let down_id = format!(
                    "dome-{}",
                    NEXT_SERVER_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                s.server_requests
                    .lock()
                    .expect("server requests lock")
                    .insert(
                        Value::String(down_id.clone()).to_string(),
                        (self.up.clone(), up_id),
                    );
                v["id"] = Value::String(down_id);
                None
            }
            (None, Some((caps, _)))
                if crate::gateway::input::declares(caps.as_deref(), &v["method"]) =>
            {
                Some(Flow::Ask(up_id, v.take()))
            }
            _ => {
                // Nobody to ask (the caller did not declare the capability):
                // the upstream hears so, in the terms of its era (it speaks
                // the session era: only those upstreams ask mid-call).
                let err = crate::gateway::input::cannot_take(&v["method"], code::METHOD_NOT_FOUND);
                let up = self.up.clone();
                tokio::spawn(async move {
                    let _ = up.answer_server_request(up_id, None, Some(err)).await;
                });
                Some(Flow::Next)
            }
        }
    }

    /// The final response, for the caller: redacted, under its id, in its
    /// era, and only once its record is durable.
    async fn final_response(&mut self, mut v: Value) -> Value {
        let id = &self.to.id;
        let counts = self.to.redaction.as_ref().map(|r| r.apply(&mut v));
        v["id"] = id.clone();
        if self.to.era != CallerEra::Stateless && self.up.speaks_stateless() {
            protocol::fit_to_session_era(&mut v);
        }
        if self.to.era == CallerEra::Stateless
            && v.get("result").is_some()
            && v["result"].get("resultType").is_none()
        {
            v["result"]["resultType"] = "complete".into();
        }
        if let Some(mut c) = self.to.call.take() {
            note_final(&mut c, &v, counts.as_ref());
            c.bytes_out = self.bytes_out + v.to_string().len() as u64;
            if let Err(u) = c.finish().await {
                tracing::error!(error = %u.0, "answering a call failed closed: its audit record is not durable");
                v = rpc_error(id, code::AUDIT_UNAVAILABLE, u.0);
            }
        }
        v
    }

    /// A stateless upstream answered a session-era caller's call
    /// `input_required` at the end of its stream: the caller is asked on
    /// this stream, round after round (`Gateway::fulfil`).
    async fn ask_session(&mut self, mut v: Value) -> Flow {
        let (Some((gw, e)), Some(s)) = (self.to.retry.clone(), self.session.clone()) else {
            return Flow::Done;
        };
        let first = v["result"].take();
        let caps = s.capabilities.as_deref();
        if let Some(error) = crate::gateway::input::round_problem(&self.name, 1, caps, &first) {
            let answer = json!({"jsonrpc": "2.0", "id": self.to.id, "error": error});
            if let Some(mut c) = self.to.call.take() {
                note_final(&mut c, &answer, None);
                let _ = c.finish().await;
            }
            self.send(&answer).await;
            return Flow::Done;
        }
        if let Some(mut c) = self.to.call.take() {
            // Written as it drops; the next round has a record of its own.
            c.outcome = Some(crate::audit::record::Outcome::InputRequired);
        }
        let asked = Asked {
            session: s,
            e,
            method: "tools/call",
            id: self.to.id.clone(),
        };
        let ctx = self.to.ctx.clone();
        gw.fulfil(
            ctx,
            asked,
            first,
            self.to.redaction.clone(),
            self.tx.clone(),
        )
        .await;
        Flow::Done
    }

    /// A stateless caller's call waits for its input: parked, with the rest
    /// of the upstream's stream, and the caller answered `input_required`.
    async fn park(
        mut self,
        asks: Vec<(Value, Value)>,
        body: crate::upstream::pool::Body,
        parser: SseParser,
    ) {
        let Some((_, table)) = self.to.stateless.take() else {
            return;
        };
        let bytes_out = self.bytes_out;
        // The record is written as it drops; its caller owns the call.
        let owner = self.to.call.take().and_then(|mut c| {
            c.outcome = Some(crate::audit::record::Outcome::InputRequired);
            c.bytes_out = bytes_out;
            c.caller.clone()
        });
        let result = table.park(crate::gateway::input::Parked {
            upstream: self.up.clone(),
            body,
            parser,
            tool: std::mem::take(&mut self.to.tool),
            redaction: self.to.redaction.take(),
            owner,
            asks: asks
                .into_iter()
                .enumerate()
                .map(|(i, (up_id, req))| (format!("dome-{}", i + 1), up_id, req))
                .collect(),
        });
        let v = json!({"jsonrpc": "2.0", "id": self.to.id, "result": result});
        self.send(&v).await;
    }

    /// The upstream failed the call mid-stream: the caller still gets an
    /// answer, and the record says why.
    async fn fail(mut self, failure: String) {
        if let Some(mut c) = self.to.call.take() {
            c.failed(code::UPSTREAM_UNAVAILABLE, &failure);
            c.bytes_out = self.bytes_out;
            let _ = c.finish().await;
        }
        let mut e = rpc_error(&self.to.id, code::UPSTREAM_UNAVAILABLE, failure);
        // The upstream had the call and began answering: it may have acted,
        // so sending it again is not safe (`UpstreamError::retry_safe`).
        e["error"]["data"] = crate::upstream::failure_data(&self.name, false);
        self.send(&e).await;
    }
}
