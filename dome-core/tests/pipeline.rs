//! The request pipeline as a table, on a virtual clock and with no socket,
//! the way quinn-proto's in-memory tests run: each row is one message as it
//! arrives (headers and body), the instant it arrives, and what its
//! upstream answers if it gets that far. The row runs through the core's
//! phases in the shell's order (parse, era, the stateless ladder, what a
//! caller may send, the agent's budget, the catalog route, policy and the
//! tool and tenant budgets, then client input across the eras and
//! subscriptions), and its verdict, the HTTP status its era gives it, and
//! what its record learns are checked.

use std::collections::HashMap;

use dome_core::{
    admit::{self, Facts, Snapshot, Who},
    audit::record::Decision,
    budget::{Bucket, Rate, RuleBudgets},
    catalog::{self, Catalog, Kind, PrefixMode},
    envelope::{self, Parsed},
    era, input,
    policy::compile::{Policy, compile},
    protocol::{self, code},
    rules,
    subscriptions::ListenFilter,
};
use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::{Value, json};

const MS: u64 = 1_000_000;

const POLICY: &str = r#"
[[rule]]
id = "echo"
effect = "allow"
[rule.when]
tool = ["demo.echo", "approve"]

[[rule]]
id = "counter"
effect = "allow"
[rule.when]
kind = "resource"
tool = "demo://counter"
"#;

/// What became of a row.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Refused before it reached an upstream: (JSON-RPC code, HTTP status).
    Refused(i64, u16),
    /// Forwarded to (upstream, its own name for the tool), and answered.
    Answered(&'static str, String),
    /// The upstream asked for input: the session-era caller is asked these
    /// requests (by method) on the call's stream.
    AskedOnStream(Vec<String>),
    /// The upstream asked a stateless caller mid-call: the call is parked
    /// and the caller answered `input_required` with these keys.
    Parked(Vec<String>),
    /// The upstream asked what the caller cannot answer, and was told so
    /// with this code.
    ToldUpstream(i64),
    /// A listen stream, with the filter it acknowledged.
    Listening(Value),
}

struct Row {
    name: &'static str,
    at_ms: u64,
    headers: Vec<(&'static str, &'static str)>,
    body: Value,
    /// A session-era caller's capabilities, declared at `initialize`.
    session_caps: Option<&'static str>,
    /// What the upstream answers when the call reaches it.
    upstream: Value,
    expect: Verdict,
    /// The record's decision, when the call got one.
    decision: Option<Decision>,
}

fn stateless_headers(
    method: &'static str,
    name: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
        ("mcp-name", name),
    ]
}

fn stateless_call(name: &str, args: Value, caps: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": name, "arguments": args,
        "_meta": {protocol::META_PROTOCOL_VERSION: "2026-07-28",
                  protocol::META_CLIENT_CAPABILITIES: caps}}})
}

fn session_call(name: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": name, "arguments": args}})
}

fn ok_result() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}]}})
}

fn input_required(methods: &[&str]) -> Value {
    let requests: serde_json::Map<String, Value> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("q{i}"), json!({"method": m, "params": {}})))
        .collect();
    json!({"jsonrpc": "2.0", "id": 1, "result": {
        "resultType": "input_required", "inputRequests": requests, "requestState": "up-1"}})
}

/// A session-era upstream's request to the client, mid-call.
fn asks_mid_call(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 99, "method": method, "params": {}})
}

struct World {
    policy: Policy,
    rule_budgets: RuleBudgets,
    tools: Catalog,
    agent_budget: Bucket,
    tool_budgets: HashMap<String, Bucket>,
    tenant_budget: Bucket,
    labels: Vec<String>,
}

impl World {
    fn new() -> World {
        let upstreams = [
            ("demo".to_string(), PrefixMode::Always),
            ("sdk".to_string(), PrefixMode::Never),
        ];
        let lists = vec![
            Some(vec![json!({"name": "echo"})]),
            Some(vec![json!({"name": "approve"}), json!({"name": "wipe"})]),
        ];
        World {
            policy: compile(&[("p.toml".into(), POLICY.into())]).expect("policy compiles"),
            rule_budgets: RuleBudgets::default(),
            tools: catalog::assemble_named(Kind::Tools, &upstreams, lists, &Catalog::default()),
            agent_budget: Bucket::new(Rate {
                calls_per_s: 1.0,
                burst: 2,
            }),
            tool_budgets: HashMap::new(),
            tenant_budget: Bucket::new(Rate {
                calls_per_s: 100.0,
                burst: 100,
            }),
            labels: vec![],
        }
    }

    /// Parse, era and the stateless era's ladder: the message and whether
    /// it speaks the stateless era, or its refusal.
    fn arrive(row: &Row) -> Result<(Box<envelope::Envelope>, bool), Verdict> {
        let mut headers = HeaderMap::new();
        for (k, v) in &row.headers {
            headers.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        let e = match envelope::parse(row.body.to_string().as_bytes(), 64) {
            Ok(Parsed::One(e)) => e,
            Ok(Parsed::Batch) => return Err(Verdict::Refused(code::INVALID_REQUEST, 400)),
            Err(_) => return Err(Verdict::Refused(code::PARSE_ERROR, 400)),
        };
        let method = e.method.as_deref().unwrap_or_default();
        let header_version = headers
            .get(protocol::H_VERSION)
            .and_then(|v| v.to_str().ok());
        let stateless = era::is_stateless(&e, method, header_version);
        if stateless && let Err((c, _, _)) = era::stateless_ladder(&e, method, &headers) {
            return Err(Verdict::Refused(c, protocol::stateless_status(c).as_u16()));
        }
        Ok((e, stateless))
    }

    /// One row through the phases, as the shell orders them.
    fn run(&self, row: &Row) -> (Verdict, Option<Decision>) {
        let now = 1_000 * 1_000 * MS + row.at_ms * MS;
        let (e, stateless) = match Self::arrive(row) {
            Ok(a) => a,
            Err(v) => return (v, None),
        };
        let method = e.method.as_deref().unwrap_or_default().to_string();
        let status = |c: i64| {
            if stateless {
                protocol::stateless_status(c).as_u16()
            } else {
                200
            }
        };
        // What a caller may send.
        if !rules::request_id_ok(e.id.as_ref()) {
            return (Verdict::Refused(code::INVALID_REQUEST, 400), None);
        }
        if method == "subscriptions/listen" {
            return (self.listen(&e, now), None);
        }
        let name = e.name.as_deref().unwrap_or_default();
        if name.len() > rules::MAX_NAME_BYTES
            || e.arguments
                .as_deref()
                .is_some_and(|a| !rules::arguments_ok(a))
        {
            return (
                Verdict::Refused(code::INVALID_PARAMS, status(code::INVALID_PARAMS)),
                None,
            );
        }
        // The agent's budget, then the route.
        let who = Who {
            agent: "bot",
            tenant: "acme",
            labels: &self.labels,
            user: None,
            agent_budget: Some(&self.agent_budget),
            tool_budgets: &self.tool_budgets,
            tenant_budget: Some(&self.tenant_budget),
        };
        let (mut effects, mut noted) = (admit::Effects::default(), admit::Noted::default());
        let refused = |r: admit::Refusal, noted: &admit::Noted| {
            (
                Verdict::Refused(r.code, r.status(stateless).as_u16()),
                noted.decision,
            )
        };
        let charged = match admit::charge(Some(&who), now, &mut effects, &mut noted) {
            Ok(c) => c,
            Err(r) => return refused(r, &noted),
        };
        let Some(route) = self.tools.routes.get(name) else {
            // No decision: the record keeps its default, an error.
            return (
                Verdict::Refused(code::INVALID_PARAMS, status(code::INVALID_PARAMS)),
                noted.decision,
            );
        };
        let upstream = if route.upstream == 0 { "demo" } else { "sdk" };
        let facts = Facts {
            who: Some(&who),
            kind: "tool",
            name,
            upstream,
            original: Some(&route.original),
            intent: None,
            args_text: e.arguments.as_deref(),
        };
        let snapshot = Snapshot {
            policy: &self.policy,
            shadow: None,
            rule_budgets: &self.rule_budgets,
        };
        let admitted = match admit::admit(charged, &facts, &snapshot, now, &mut effects, &mut noted)
        {
            Ok(a) => a,
            Err(r) => return refused(r, &noted),
        };
        let _ = admitted;
        let verdict = Self::answered(row, &e, stateless, upstream, &route.original);
        (verdict, noted.decision)
    }

    /// The upstream's answer, and client input across the eras.
    fn answered(
        row: &Row,
        e: &envelope::Envelope,
        stateless: bool,
        upstream: &'static str,
        original: &str,
    ) -> Verdict {
        let answer = &row.upstream;
        if let Some(result) = input::required_in(answer.to_string().as_bytes()) {
            // A stateless upstream wants input.
            if stateless {
                // A stateless caller gets it as it came.
                Verdict::Answered(upstream, "input_required".into())
            } else {
                match input::round_problem(upstream, 1, row.session_caps, &result) {
                    Some(err) => {
                        let c = err["code"].as_i64().unwrap();
                        Verdict::Refused(c, 200)
                    }
                    None => Verdict::AskedOnStream(
                        result["inputRequests"]
                            .as_object()
                            .unwrap()
                            .values()
                            .map(|r| r["method"].as_str().unwrap().to_string())
                            .collect(),
                    ),
                }
            }
        } else if answer.get("method").is_some() {
            // A session-era upstream asks mid-call.
            let caps = if stateless {
                e.client_capabilities.as_deref()
            } else {
                row.session_caps
            };
            if !input::may_ask(caps, &answer["method"]) {
                // The upstream is told; the call goes on without it.
                let err = input::cannot_take(&answer["method"], code::METHOD_NOT_FOUND);
                Verdict::ToldUpstream(err["code"].as_i64().unwrap())
            } else if stateless {
                let asks = vec![("dome-1".to_string(), answer["id"].clone(), answer.clone())];
                let parked = input::input_required(&asks, "tok");
                // The caller's retry names the parked call and answers it.
                let state = parked["requestState"].to_string();
                let retry = vec![
                    ("requestState".to_string(), state),
                    (
                        "inputResponses".to_string(),
                        json!({"dome-1": {"action": "accept"}}).to_string(),
                    ),
                ];
                assert_eq!(
                    input::parked_token(&retry).as_deref(),
                    Some("tok"),
                    "{}",
                    row.name
                );
                assert!(
                    input::responses(&retry).contains_key("dome-1"),
                    "{}",
                    row.name
                );
                Verdict::Parked(
                    parked["inputRequests"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .cloned()
                        .collect(),
                )
            } else {
                Verdict::AskedOnStream(vec![answer["method"].as_str().unwrap().to_string()])
            }
        } else {
            Verdict::Answered(upstream, original.to_string())
        }
    }

    /// `subscriptions/listen`: the list changes asked and offered, and the
    /// URIs policy lets the caller read.
    fn listen(&self, e: &envelope::Envelope, now: u64) -> Verdict {
        let params: Value = serde_json::from_str(e.params.as_deref().unwrap_or("{}")).unwrap();
        let asked = params["notifications"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let caps = json!({"tools": {"listChanged": true}, "resources": {"subscribe": true}});
        let mut filter = ListenFilter::of_lists(&asked, &caps);
        let snapshot = Snapshot {
            policy: &self.policy,
            shadow: None,
            rule_budgets: &self.rule_budgets,
        };
        for uri in asked["resourceSubscriptions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let uri = uri.as_str().unwrap();
            if rules::uri_problem(Kind::Resources, uri).is_some() {
                continue;
            }
            let facts = Facts {
                who: None,
                kind: "resource",
                name: uri,
                upstream: "demo",
                original: None,
                intent: None,
                args_text: None,
            };
            let (mut effects, mut noted) = (admit::Effects::default(), admit::Noted::default());
            let charged = admit::charge(None, now, &mut effects, &mut noted).unwrap();
            if admit::admit(charged, &facts, &snapshot, now, &mut effects, &mut noted).is_ok() {
                filter.uris.insert(uri.to_string());
            }
        }
        Verdict::Listening(filter.to_json())
    }
}

/// The front of the pipeline: eras, the ladder, what a caller may send,
/// policy, budgets, routes.
fn front_rows() -> Vec<Row> {
    vec![
        Row {
            name: "a stateless call, allowed, reaches its upstream under the upstream's name",
            at_ms: 0,
            headers: stateless_headers("tools/call", "demo.echo"),
            body: stateless_call("demo.echo", json!({"text": "hi"}), json!({})),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Answered("demo", "echo".into()),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a stateless call whose Mcp-Name header disagrees is a 400",
            at_ms: 0,
            headers: stateless_headers("tools/call", "other"),
            body: stateless_call("demo.echo", json!({}), json!({})),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::HEADER_MISMATCH, 400),
            decision: None,
        },
        Row {
            name: "a stateless call of a version not served is refused with the versions",
            at_ms: 0,
            headers: vec![
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "demo.echo"),
            ],
            body: json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "demo.echo",
                "_meta": {protocol::META_PROTOCOL_VERSION: "2099-01-01", protocol::META_CLIENT_CAPABILITIES: {}}}}),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::UNSUPPORTED_VERSION, 400),
            decision: None,
        },
        Row {
            name: "a session-era call policy does not allow is denied with a 200",
            at_ms: 0,
            headers: vec![],
            body: session_call("wipe", json!({})),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::POLICY_DENIED, 200),
            decision: Some(Decision::Deny),
        },
        Row {
            name: "the agent's budget (burst 2) is spent, the denied call too",
            at_ms: 0,
            headers: vec![],
            body: session_call("demo.echo", json!({})),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::RATE_LIMITED, 200),
            decision: Some(Decision::OverBudget),
        },
        Row {
            name: "a stateless caller over budget gets the status its era gives",
            at_ms: 0,
            headers: stateless_headers("tools/call", "demo.echo"),
            body: stateless_call("demo.echo", json!({}), json!({})),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::RATE_LIMITED, 200),
            decision: Some(Decision::OverBudget),
        },
        Row {
            name: "a second later the budget has one call again; a name no upstream lists is unknown",
            at_ms: 1_000,
            headers: vec![],
            body: session_call("nothing", json!({})),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::INVALID_PARAMS, 200),
            decision: None,
        },
        Row {
            name: "arguments that are not an object are refused before any budget",
            at_ms: 1_000,
            headers: vec![],
            body: session_call("demo.echo", json!([1, 2])),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::INVALID_PARAMS, 200),
            decision: None,
        },
    ]
}

/// Client input across the eras, and subscriptions.
fn input_rows() -> Vec<Row> {
    let elicit = Some(r#"{"elicitation":{}}"#);
    vec![
        Row {
            name: "a stateless upstream's input_required goes to a session-era caller on its stream",
            at_ms: 2_000,
            headers: vec![],
            body: session_call("approve", json!({})),
            session_caps: elicit,
            upstream: input_required(&["elicitation/create"]),
            expect: Verdict::AskedOnStream(vec!["elicitation/create".into()]),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a round the session-era caller cannot take ends the call with -32021",
            at_ms: 3_000,
            headers: vec![],
            body: session_call("approve", json!({})),
            session_caps: elicit,
            upstream: input_required(&["elicitation/create", "sampling/createMessage"]),
            expect: Verdict::Refused(code::MISSING_CLIENT_CAPABILITY, 200),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a round asking for nothing is the upstream's fault",
            at_ms: 4_000,
            headers: vec![],
            body: session_call("approve", json!({})),
            session_caps: elicit,
            upstream: input_required(&[]),
            expect: Verdict::Refused(code::UPSTREAM_UNAVAILABLE, 200),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a stateless caller's input_required passes as it came",
            at_ms: 5_000,
            headers: stateless_headers("tools/call", "approve"),
            body: stateless_call("approve", json!({}), json!({"elicitation": {}})),
            session_caps: None,
            upstream: input_required(&["elicitation/create"]),
            expect: Verdict::Answered("sdk", "input_required".into()),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a session upstream asking a stateless caller mid-call parks the call; the retry resumes it",
            at_ms: 6_000,
            headers: stateless_headers("tools/call", "approve"),
            body: stateless_call("approve", json!({}), json!({"elicitation": {}})),
            session_caps: None,
            upstream: asks_mid_call("elicitation/create"),
            expect: Verdict::Parked(vec!["dome-1".into()]),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a session upstream asking what the session client cannot answer gets -32601",
            at_ms: 7_000,
            headers: vec![],
            body: session_call("approve", json!({})),
            session_caps: elicit,
            upstream: asks_mid_call("sampling/createMessage"),
            expect: Verdict::ToldUpstream(code::METHOD_NOT_FOUND),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a session upstream's ping needs no capability",
            at_ms: 8_000,
            headers: vec![],
            body: session_call("approve", json!({})),
            session_caps: None,
            upstream: asks_mid_call("ping"),
            expect: Verdict::AskedOnStream(vec!["ping".into()]),
            decision: Some(Decision::Allow),
        },
        Row {
            name: "a listen stream carries list changes offered and URIs policy allows, in plain form",
            at_ms: 9_000,
            headers: stateless_headers("subscriptions/listen", "x"),
            body: json!({"jsonrpc": "2.0", "id": 3, "method": "subscriptions/listen", "params": {
                "notifications": {"toolsListChanged": true, "promptsListChanged": true,
                    "resourceSubscriptions": ["demo://counter", "demo://secret", "demo://counter/../secret"]},
                "_meta": {protocol::META_PROTOCOL_VERSION: "2026-07-28", protocol::META_CLIENT_CAPABILITIES: {}}}}),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Listening(
                json!({"toolsListChanged": true, "resourceSubscriptions": ["demo://counter"]}),
            ),
            decision: None,
        },
        Row {
            name: "a request id of null is no id MCP allows",
            at_ms: 9_000,
            headers: vec![],
            body: json!({"jsonrpc": "2.0", "id": null, "method": "tools/call", "params": {"name": "demo.echo"}}),
            session_caps: None,
            upstream: ok_result(),
            expect: Verdict::Refused(code::INVALID_REQUEST, 400),
            decision: None,
        },
    ]
}

#[test]
fn every_phase_of_the_pipeline_in_both_eras_on_a_virtual_clock() {
    let rows: Vec<Row> = front_rows().into_iter().chain(input_rows()).collect();
    let world = World::new();
    for row in &rows {
        let (verdict, decision) = world.run(row);
        assert_eq!(verdict, row.expect, "{}", row.name);
        assert_eq!(
            decision, row.decision,
            "{}: the record's decision",
            row.name
        );
    }
    // A StatusCode is what the shell answers with.
    assert_eq!(
        protocol::stateless_status(code::METHOD_NOT_FOUND),
        StatusCode::NOT_FOUND
    );
}
