//! What policy asks to be redacted from an answer, and arguments as the
//! audit record logs them.

use super::*;

/// What a policy rule asks to be redacted from a call's result, with the
/// tool's output schema (so structured content stays valid).
#[derive(Clone)]
pub struct Redaction {
    pub(super) redactor: Arc<crate::policy::redact::Redactor>,
    pub(super) schema: Value,
}

impl Redaction {
    /// Redacts a JSON-RPC response in place, its result or its error;
    /// says how many values of each kind it took out.
    pub(super) fn apply(&self, response: &mut Value) -> crate::policy::redact::Counts {
        if let Some(result) = response.get_mut("result") {
            return self.redactor.result(result, &self.schema);
        }
        match response.get_mut("error") {
            Some(error) => self.redactor.error(error),
            None => Default::default(),
        }
    }

    /// Redacts any message an upstream sends during a call: a response as
    /// [`Redaction::apply`], a notification's or request's params.
    pub(super) fn apply_any(&self, message: &mut Value) -> crate::policy::redact::Counts {
        if message.get("method").is_none() {
            return self.apply(message);
        }
        match message.get_mut("params") {
            Some(params) => self.redactor.params(params),
            None => Default::default(),
        }
    }
}

/// `reply` with the policy's redactions applied (a tree is built only
/// then). A reply that cannot be read cannot be redacted: it is refused,
/// naming the upstream, rather than passed on as it came. The counts go
/// to `call`'s record.
pub(super) fn redacted(
    reply: Reply,
    redaction: Option<&Redaction>,
    upstream: &str,
    call: Option<&mut Call>,
) -> Result<Reply, (i64, String)> {
    let Some(r) = redaction else { return Ok(reply) };
    let mut v: Value = match &reply {
        Reply::Json(v) => v.clone(),
        Reply::Raw(b) => serde_json::from_slice(b).map_err(|e| {
            (
                code::UPSTREAM_UNAVAILABLE,
                format!(
                    "upstream `{upstream}` sent a response that cannot be read ({e}), \
                     and policy says to redact it: withheld"
                ),
            )
        })?,
        Reply::Stream(_) => return Ok(reply),
    };
    let counts = r.apply(&mut v);
    if let Some(c) = call {
        c.add_redactions(&counts);
    }
    Ok(Reply::Json(v))
}

pub use dome_core::admit::MAX_LOGGED_ARGS_BYTES;
