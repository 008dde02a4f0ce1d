//! A tool call that needs the client's input, across the eras. A session-era
//! upstream asks mid-call (a JSON-RPC request on the call's stream); a
//! stateless upstream answers `input_required` and expects the call again
//! with `inputResponses` and its `requestState`. Dome translates when caller
//! and upstream speak different eras:
//!
//! - stateless caller, session upstream: the call is parked (its upstream
//!   stream held open) and the caller gets `input_required` with the
//!   upstream's requests and a `requestState` naming the parked call; the
//!   retry answers the upstream's requests and resumes the stream.
//! - session caller, stateless upstream: the `input_required` requests go to
//!   the caller on the call's stream under ids of Dome's; with the answers,
//!   Dome calls the upstream again, as many rounds as it asks for.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{sse::SseParser, upstream::Reply, upstream::Upstream};

/// `requestState` values Dome issues start with this; others are the
/// upstream's own and pass through.
pub const STATE_PREFIX: &str = "dome-parked:";

/// How long a parked call waits for the caller's retry; then its upstream
/// stream is dropped, which cancels the call there.
pub const PARK_TTL: Duration = Duration::from_secs(300);

/// How long Dome waits for a session-era caller to answer one round.
pub const ANSWER_TTL: Duration = Duration::from_secs(600);

/// A call waiting for a stateless caller's input.
pub struct Parked {
    pub upstream: Arc<Upstream>,
    /// The rest of the upstream's response stream.
    pub body: super::pool::Body,
    pub parser: SseParser,
    /// The tool called: a retry must name the same one.
    pub tool: String,
    /// (key given to the caller, the upstream's request id, the request).
    pub asks: Vec<(String, Value, Value)>,
    /// What policy asked to be redacted from the call's result.
    pub redaction: Option<super::gateway::Redaction>,
    /// Who began the call: only that agent may resume it.
    pub owner: Option<crate::identity::authn::Caller>,
}

/// Whether capabilities a caller declared (JSON text: a stateless caller's
/// per request, a session's at `initialize`) let it answer `method`.
pub fn declares(caps: Option<&str>, method: &Value) -> bool {
    let Some(need) = capability_for(method) else {
        return false;
    };
    caps.and_then(|c| serde_json::from_str::<Value>(c).ok())
        .is_some_and(|v| v.get(need).is_some())
}

/// The capability a client declares to take `method` from a server.
pub fn capability_for(method: &Value) -> Option<&'static str> {
    match method.as_str() {
        Some("elicitation/create") => Some("elicitation"),
        Some("sampling/createMessage") => Some("sampling"),
        Some("roots/list") => Some("roots"),
        _ => None,
    }
}

/// The error for a request a client cannot take, because it did not
/// declare the capability (`code`: -32021 in the stateless era, where it
/// is defined; -32601 to a session-era upstream, which knows that one).
/// It names the method and the capability, so whoever reads it knows it
/// was the client's choice, not a fault of the upstream's or Dome's.
pub fn cannot_take(method: &Value, code: i64) -> Value {
    let m = method.as_str().unwrap_or("?");
    match capability_for(method) {
        Some(cap) => json!({
            "code": code,
            "message": format!("the client cannot take `{m}`: it did not declare the `{cap}` capability"),
            "data": {"requiredCapabilities": {cap: {}}},
        }),
        None => json!({
            "code": code,
            "message": format!("the client cannot take `{m}`: no client capability covers it"),
        }),
    }
}

/// The `input_required` result asking for `asks`, resumable with `token`.
pub fn input_required(asks: &[(String, Value, Value)], token: &str) -> Value {
    let requests: serde_json::Map<String, Value> = asks
        .iter()
        .map(|(key, _, req)| {
            let mut r = json!({"method": req["method"]});
            if let Some(p) = req.get("params") {
                r["params"] = p.clone();
            }
            (key.clone(), r)
        })
        .collect();
    json!({
        "resultType": "input_required",
        "inputRequests": requests,
        "requestState": format!("{STATE_PREFIX}{token}"),
    })
}

/// The token of a Dome-issued `requestState` among a call's extra params.
pub fn parked_token(extra: &[(String, String)]) -> Option<String> {
    let (_, text) = extra.iter().find(|(k, _)| k == "requestState")?;
    let state: String = serde_json::from_str(text).ok()?;
    state.strip_prefix(STATE_PREFIX).map(str::to_string)
}

/// The `inputResponses` map among a call's extra params.
pub fn responses(extra: &[(String, String)]) -> serde_json::Map<String, Value> {
    extra
        .iter()
        .find(|(k, _)| k == "inputResponses")
        .and_then(|(_, t)| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// The result of a non-streamed reply when it is `input_required`.
pub fn required(reply: &Reply) -> Option<Value> {
    let v = match reply {
        Reply::Json(v) => v.clone(),
        // Cheap test first: almost every reply is a plain result.
        Reply::Raw(b) if memchr_str(b, b"input_required") => serde_json::from_slice(b).ok()?,
        _ => return None,
    };
    is_input_required(&v).then(|| v["result"].clone())
}

/// Whether a JSON-RPC response carries an `input_required` result.
pub fn is_input_required(v: &Value) -> bool {
    v["result"]["resultType"] == "input_required"
}

fn memchr_str(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_decide_who_can_be_asked() {
        let m = json!("elicitation/create");
        assert!(declares(Some(r#"{"elicitation":{}}"#), &m));
        assert!(!declares(Some(r#"{"sampling":{}}"#), &m));
        assert!(!declares(None, &m));
        assert!(!declares(
            Some(r#"{"elicitation":{}}"#),
            &json!("tools/call")
        ));
    }

    #[test]
    fn parked_state_round_trips() {
        let asks = vec![(
            "dome-1".to_string(),
            json!(7),
            json!({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create", "params": {"message": "?"}}),
        )];
        let r = input_required(&asks, "abc");
        assert_eq!(r["inputRequests"]["dome-1"]["method"], "elicitation/create");
        assert_eq!(r["inputRequests"]["dome-1"]["params"]["message"], "?");
        assert!(r["inputRequests"]["dome-1"].get("id").is_none());
        let extra = vec![("requestState".to_string(), r["requestState"].to_string())];
        assert_eq!(parked_token(&extra).as_deref(), Some("abc"));
        let foreign = vec![("requestState".to_string(), "\"upstream-own\"".to_string())];
        assert_eq!(parked_token(&foreign), None);
    }

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
