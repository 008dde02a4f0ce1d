//! A tool call that needs the client's input, across the eras: the rules,
//! with no I/O (the parked calls themselves are the shell's). A session-era
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

use std::time::Duration;

use serde_json::{Value, json};

/// `requestState` values Dome issues start with this; others are the
/// upstream's own and pass through.
pub const STATE_PREFIX: &str = "dome-parked:";

/// How long a parked call waits for the caller's retry; then its upstream
/// stream is dropped, which cancels the call there.
pub const PARK_TTL: Duration = Duration::from_secs(300);

/// How long Dome waits for a session-era caller to answer one round.
pub const ANSWER_TTL: Duration = Duration::from_secs(600);

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

/// The result of a JSON-RPC response, as text, when it is
/// `input_required`.
pub fn required_in(text: &[u8]) -> Option<Value> {
    // Cheap test first: almost every reply is a plain result.
    INPUT_REQUIRED.find(text)?;
    let mut v: Value = serde_json::from_slice(text).ok()?;
    is_input_required(&v).then(|| v["result"].take())
}

static INPUT_REQUIRED: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new("input_required"));

/// Whether a client may be sent `method`: one that needs a capability only
/// if it declared it (JSON text of its capabilities); any other (`ping`)
/// needs none.
pub fn may_ask(caps: Option<&str>, method: &Value) -> bool {
    capability_for(method).is_none() || declares(caps, method)
}

/// How many times one request may be answered `input_required` before
/// Dome gives up on it: every round is a call upstream and a record, so an
/// upstream must not ask without end.
pub const MAX_ROUNDS: usize = 16;

/// Why round `round` (from 1) of `input_required` (`result`) from
/// `upstream` is not put to a session-era client whose capabilities are
/// `caps`, as the JSON-RPC error that ends its request: one round too
/// many, a round asking for nothing (it would be called again at once),
/// or a request the client did not declare it can take (checked before
/// any is sent, so a client is never asked half of a round).
pub fn round_problem(
    upstream: &str,
    round: usize,
    caps: Option<&str>,
    result: &Value,
) -> Option<Value> {
    use crate::protocol::code;
    if round > MAX_ROUNDS {
        return Some(
            json!({"code": code::UPSTREAM_UNAVAILABLE, "message": format!(
                "upstream `{upstream}` asked for input more than {MAX_ROUNDS} times for one request: given up"
            )}),
        );
    }
    let requests = match result["inputRequests"].as_object() {
        Some(r) if !r.is_empty() => r,
        _ => {
            return Some(
                json!({"code": code::UPSTREAM_UNAVAILABLE, "message": format!(
                    "upstream `{upstream}` answered input_required but asked for nothing"
                )}),
            );
        }
    };
    requests
        .values()
        .find(|r| !may_ask(caps, &r["method"]))
        .map(|r| {
            let mut error = cannot_take(&r["method"], code::MISSING_CLIENT_CAPABILITY);
            let m = error["message"].as_str().unwrap_or_default().to_string();
            error["message"] = format!("upstream `{upstream}` asked for input, but {m}").into();
            error
        })
}

/// Whether a JSON-RPC response carries an `input_required` result.
pub fn is_input_required(v: &Value) -> bool {
    v["result"]["resultType"] == "input_required"
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
    fn a_round_is_put_to_a_client_only_if_it_can_take_all_of_it() {
        let ask = |methods: &[&str]| {
            let requests: serde_json::Map<String, Value> = methods
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("k{i}"), json!({"method": m, "params": {}})))
                .collect();
            json!({"resultType": "input_required", "inputRequests": requests})
        };
        let caps = Some(r#"{"elicitation":{}}"#);
        assert_eq!(
            round_problem("u", 1, caps, &ask(&["elicitation/create"])),
            None
        );
        // `ping` needs no capability.
        assert_eq!(round_problem("u", 1, caps, &ask(&["ping"])), None);
        // One request it cannot take refuses the whole round, naming it.
        let e = round_problem(
            "u",
            1,
            caps,
            &ask(&["elicitation/create", "sampling/createMessage"]),
        )
        .expect("refused");
        assert_eq!(e["code"], -32021);
        assert_eq!(e["data"]["requiredCapabilities"], json!({"sampling": {}}));
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("`sampling` capability")
        );
        // Nothing asked: it would be called again at once, without end.
        assert_eq!(
            round_problem("u", 1, caps, &ask(&[])).expect("refused")["code"],
            -32001
        );
        assert_eq!(
            round_problem("u", 1, caps, &json!({"resultType": "input_required"})).expect("refused")
                ["code"],
            -32001
        );
        // One round too many.
        let e = round_problem("u", MAX_ROUNDS + 1, caps, &ask(&["elicitation/create"]))
            .expect("refused");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("more than 16 times")
        );
        assert!(round_problem("u", MAX_ROUNDS, caps, &ask(&["elicitation/create"])).is_none());
    }

    #[test]
    fn only_requests_needing_a_capability_need_it_declared() {
        assert!(may_ask(None, &json!("ping")));
        assert!(may_ask(Some("{}"), &json!("tasks/get")));
        assert!(!may_ask(Some("{}"), &json!("roots/list")));
        assert!(may_ask(Some(r#"{"roots":{}}"#), &json!("roots/list")));
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
}
