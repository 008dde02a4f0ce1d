//! What one request carries through its phases besides its arguments, as
//! one explicit value (`Exchange`, pingora's per-request context): who
//! sent it (`RequestCtx`), and the tally `/stats` and its audit records
//! learn from. `handle` makes it and passes it down by `&mut`. Work that
//! outlives the request (rounds of client input) is handed a detached copy
//! of who sent it and makes an exchange of its own, whose records it
//! finishes itself: nothing is written into a request that has ended.

use super::*;

/// What `/stats` learns of one request: its method label and JSON-RPC
/// error code, noted where they become known.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) method: &'static str,
    pub(super) rpc_error: Option<i64>,
    pub(super) parse: Option<std::time::Duration>,
    pub(super) auth: Option<std::time::Duration>,
    pub(super) policy: Option<std::time::Duration>,
    /// (upstream, tool, time to the upstream's answer).
    pub(super) upstream: Option<(Arc<str>, Arc<str>, std::time::Duration)>,
    /// The request body's size.
    pub(super) bytes_in: u64,
    /// The audit record of the call this request makes (more than one
    /// only in a 2025-03-26 batch).
    pub(super) call: Option<Call>,
    pub(super) more_calls: Vec<Call>,
}

/// One request as it moves through the phases.
pub(super) struct Exchange {
    pub(super) ctx: RequestCtx,
    /// Boxed: the request's future is moved whole between its layers, so
    /// it carries a pointer, not the tally.
    pub(super) tally: Box<Tally>,
}

impl Exchange {
    pub(super) fn new(ctx: RequestCtx) -> Self {
        Exchange {
            ctx,
            tally: Box::new(Tally {
                method: "invalid",
                ..Default::default()
            }),
        }
    }

    /// The authenticated caller (`None`: anonymous).
    pub(super) fn caller(&self) -> Option<&Caller> {
        self.ctx.caller.as_ref()
    }

    /// Hands the call's record to whoever answers this exchange: `handle`
    /// finishes it once the response is known; a round of input takes it
    /// back (`take_call`) and finishes it before its answer leaves.
    pub(super) fn stash(&mut self, call: Call) {
        if let Some(prev) = self.tally.call.replace(call) {
            self.tally.more_calls.push(prev);
        }
    }

    /// Takes the current call's record back (its answer streams on after
    /// the request returns, or it is finished by a round of input).
    pub(super) fn take_call(&mut self) -> Option<Call> {
        self.tally.call.take()
    }

    /// Applies `f` to the current call's record, if any.
    pub(super) fn with_call(&mut self, f: impl FnOnce(&mut Call)) {
        if let Some(c) = self.tally.call.as_mut() {
            f(c)
        }
    }

    pub(super) fn note_method(&mut self, m: &'static str) {
        self.tally.method = m;
    }
}

/// A committed record to wait for: its trail, its ticket, and the
/// request's JSON-RPC id (to answer with if the wait fails).
pub(super) type Committed = (Arc<crate::audit::trail::Trail>, u64, Option<Value>);

/// Commits the records of the calls a request made, with the outcome and
/// size the answer gives them.
pub(super) fn commit_calls(tally: &mut Tally, resp: &Response<Body>) -> Option<Committed> {
    use crate::audit::record::Outcome;
    let mut call = tally.call.take()?;
    let mut last = None;
    for mut c in std::mem::take(&mut tally.more_calls) {
        if c.outcome.is_none() {
            c.outcome = Some(Outcome::Ok);
        }
        last = c.commit().or(last);
    }
    call.bytes_out = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    if call.status.is_none()
        && let Some(code) = tally.rpc_error
    {
        call.status = Some(code as i32);
        call.outcome = Some(Outcome::Error);
    }
    if call.outcome.is_none() {
        call.outcome = Some(Outcome::Ok);
    }
    let id = call.rpc_id.take();
    let (trail, ticket) = call.commit().or(last)?;
    Some((trail, ticket, id))
}

/// How a result ended, from its JSON text, when not plainly: the tool's
/// `isError`, or the upstream waiting for the caller's input (a quote inside
/// a JSON string is escaped, so these keys can only be keys).
pub(super) fn result_outcome(text: &[u8]) -> Option<crate::audit::record::Outcome> {
    use crate::audit::record::Outcome;
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // memchr's SIMD search (the answer is scanned on every call), its
    // searchers built once.
    static IS_ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"isError\""));
    static RESULT_TYPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"resultType\""));
    // The value after `"key":`, spaces skipped.
    let after = |key: &Finder<'static>| {
        key.find(text).map(|i| {
            let rest = &text[i + key.needle().len()..];
            let skip = rest.iter().take_while(|b| matches!(b, b' ' | b':')).count();
            &rest[skip..]
        })
    };
    if after(&IS_ERROR).is_some_and(|v| v.starts_with(b"true")) {
        Some(Outcome::ToolError)
    } else if after(&RESULT_TYPE).is_some_and(|v| v.starts_with(b"\"input_required\"")) {
        Some(Outcome::InputRequired)
    } else {
        None
    }
}

#[derive(Clone, Default)]
pub(super) struct RequestCtx {
    /// The authenticated caller (`None`: anonymous, allowed only when
    /// `[auth] required = false`).
    pub(super) caller: Option<Caller>,
    /// The client's address.
    pub(super) source: Option<std::net::IpAddr>,
    /// The `Dome-Intent` header, when the caller states its intent there.
    pub(super) intent: Option<String>,
    /// When the request arrived.
    pub(super) arrived: Option<Instant>,
    /// The W3C trace id of the caller's `traceparent`.
    pub(super) trace: Option<String>,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub(super) fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}

impl RequestCtx {
    /// Who sent this request, for work that outlives it (a round of input
    /// the client answers later): the same caller, intent and trace, but
    /// not its arrival, so each round's record times that round.
    pub(super) fn detached(&self) -> RequestCtx {
        RequestCtx {
            arrived: None,
            ..self.clone()
        }
    }
}

pub(super) fn method_label(m: &str) -> &'static str {
    match m {
        "initialize" => "initialize",
        "ping" => "ping",
        "tools/list" => "tools/list",
        "tools/call" => "tools/call",
        "server/discover" => "server/discover",
        _ => "other",
    }
}
