//! Calls waiting for a caller's input (`Parked`), and replies read for
//! `input_required`; the rules of input across the eras are
//! `dome_core::input`, re-exported here.

use std::sync::Arc;

use serde_json::Value;

pub use dome_core::input::*;

use crate::upstream::{Reply, Upstream, sse::SseParser};

/// A call waiting for a stateless caller's input.
pub struct Parked {
    pub upstream: Arc<Upstream>,
    /// The rest of the upstream's response stream.
    pub body: crate::upstream::pool::Body,
    pub parser: SseParser,
    /// The tool called: a retry must name the same one.
    pub tool: String,
    /// (key given to the caller, the upstream's request id, the request).
    pub asks: Vec<(String, Value, Value)>,
    /// What policy asked to be redacted from the call's result.
    pub redaction: Option<super::Redaction>,
    /// Who began the call: only that agent may resume it.
    pub owner: Option<crate::identity::authn::Caller>,
}

/// The result of a non-streamed reply when it is `input_required`.
pub fn required(reply: &Reply) -> Option<Value> {
    match reply {
        Reply::Json(v) if is_input_required(v) => Some(v["result"].clone()),
        Reply::Raw(b) => required_in(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_input_required_replies_are_taken() {
        let yes = Reply::Raw(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","requestState":"s"}}"#,
        ));
        assert_eq!(required(&yes).unwrap()["requestState"], "s");
        let no = Reply::Raw(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"input_required"}]}}"#,
        ));
        assert!(required(&no).is_none());
    }
}
