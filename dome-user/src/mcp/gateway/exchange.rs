//! What one request carries through its phases besides its arguments: the
//! tally `/stats` and the audit record learn from (`TALLY`), and who sent it
//! (`CTX`). Task-locals: a task spawned to outlive the request takes a
//! detached copy (`detached_ctx`).

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

/// Hands the call's record to the request that is answering it (finished
/// in `handle` once the response is known). Outside a request (a spawned
/// task) the record is committed at once.
pub(super) fn stash(call: Call) {
    let mut call = Some(call);
    let _ = TALLY.try_with(|t| {
        let mut t = t.borrow_mut();
        if let Some(prev) = t.call.take() {
            t.more_calls.push(prev);
        }
        t.call = call.take();
    });
    // Not abandoned (a dropped record without an outcome is): ended as
    // `commit_calls` would end it.
    if let Some(c) = call.as_mut()
        && c.outcome.is_none()
    {
        c.outcome = Some(crate::audit::record::Outcome::Ok);
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

/// Takes the current call's record back (its answer streams on after the
/// request returns).
pub(super) fn unstash() -> Option<Call> {
    TALLY
        .try_with(|t| t.borrow_mut().call.take())
        .ok()
        .flatten()
}

/// Applies `f` to the current call's record, if any.
pub(super) fn with_call(f: impl FnOnce(&mut Call)) {
    let _ = TALLY.try_with(|t| {
        if let Some(c) = t.borrow_mut().call.as_mut() {
            f(c)
        }
    });
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

tokio::task_local! {
    /// Boxed: a task-local is swapped in and out of its thread slot on
    /// every poll, so it should be a pointer, not the whole tally.
    pub(super) static TALLY: std::cell::RefCell<Box<Tally>>;
    /// Who sent the request being served.
    pub(super) static CTX: RequestCtx;
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

/// This request's context, for work that outlives it (a round of input
/// the client answers later): the same caller, intent and trace, but not
/// its arrival, so each round's record times that round.
pub(super) fn detached_ctx() -> RequestCtx {
    let mut ctx = CTX.try_with(|c| c.clone()).unwrap_or_default();
    ctx.arrived = None;
    ctx
}

pub(super) fn current_caller() -> Option<Caller> {
    CTX.try_with(|c| c.caller.clone()).ok().flatten()
}

pub(super) fn note_method(m: &'static str) {
    let _ = TALLY.try_with(|t| t.borrow_mut().method = m);
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
