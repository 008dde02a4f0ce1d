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
/// to `call`, or to the request's own call when that is `None`.
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
    match call {
        Some(c) => c.add_redactions(&counts),
        None => with_call(|c| c.add_redactions(&counts)),
    }
    Ok(Reply::Json(v))
}

/// Arguments as the audit record logs them: with the rule's redactions,
/// or every built-in detector when the rule has none (values a policy
/// did not think of stay out of the trail too).
pub(super) fn logged_args(
    text: &str,
    redactor: Option<&crate::policy::redact::Redactor>,
) -> String {
    static ALL: std::sync::LazyLock<crate::policy::redact::Redactor> =
        std::sync::LazyLock::new(|| {
            let names: Vec<String> = crate::policy::redact::DETECTORS
                .iter()
                .map(|d| d.to_string())
                .collect();
            crate::policy::redact::Redactor::new(&names).expect("built-in detectors compile")
        });
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        return String::new();
    };
    let mut counts = Default::default();
    redactor
        .unwrap_or(&ALL)
        .value(&mut v, &Value::Null, &mut counts);
    let full = v.to_string();
    if full.len() <= MAX_LOGGED_ARGS_BYTES {
        return full;
    }
    // Still JSON, and still a start an operator can read; the digest in
    // the record identifies the whole.
    let head = crate::audit::call::capped(&full, MAX_LOGGED_ARGS_BYTES);
    json!({"dome/truncated": {"bytes": full.len(), "head": head}}).to_string()
}

/// The most of a call's arguments `log_args = "full"` keeps in its record
/// (they were kept whole: a body of `max_body_bytes` in every record let
/// one agent write the trail at its own pace).
pub const MAX_LOGGED_ARGS_BYTES: usize = 4096;

/// A bucket that never refuses, to fill unused budget levels.
pub(super) static UNLIMITED: std::sync::LazyLock<crate::identity::budget::Bucket> =
    std::sync::LazyLock::new(|| {
        crate::identity::budget::Bucket::new(crate::identity::budget::Rate {
            calls_per_s: f64::MAX,
            burst: u32::MAX,
        })
    });
