//! The official Python MCP SDK as the client through Dome, in both protocol
//! eras, against two upstreams at once: the Rust demo upstream and an
//! upstream written with the same SDK.

mod common;

use common::*;
use serde_json::json;

fn upstreams(demo: std::net::SocketAddr, sdk: std::net::SocketAddr) -> String {
    format!(
        "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\nprefix = \"on_conflict\"\n\n\
         [[upstream]]\nname = \"sdk\"\nurl = \"http://{sdk}/mcp\"\nprefix = \"on_conflict\"\n"
    )
}

fn check_client_view(seen: &serde_json::Value, version: &str) {
    assert_eq!(seen["protocol_version"], version, "{seen}");
    assert_eq!(
        seen["tools"],
        json!(DEMO_AND_SDK_TOOLS),
        "one list, clashing names prefixed: {seen}"
    );
    assert_eq!(seen["demo_echo"], "hello through dome");
    assert_eq!(seen["sdk_echo"], "sdk:hi");
    assert_eq!(seen["add"], "42");
    assert_eq!(seen["slow"], "done after 4 steps");
    let progress = seen["slow_progress"].as_array().unwrap();
    assert_eq!(
        progress.len(),
        4,
        "every progress notification arrived: {seen}"
    );
    assert_eq!(progress[3][0], 4.0);
    assert_eq!(progress[3][2], "step 4 of 4");
    assert_eq!(seen["countdown"], "liftoff");
    assert_eq!(
        seen["countdown_progress"].as_array().unwrap().len(),
        3,
        "{seen}"
    );
    assert_eq!(seen["fail_is_error"], true);
    // The SDK upstream reports a raised exception as a tool error (without
    // its message); Dome passes it through as it is.
    assert!(
        seen["fail_text"]
            .as_str()
            .unwrap()
            .starts_with("Error executing tool fail"),
        "{seen}"
    );
    assert_eq!(seen["unknown_tool_error"], -32602, "{seen}");
}

#[test]
fn python_sdk_client_in_both_eras_through_dome_to_two_upstreams() {
    let (_demo, demo_addr) = start_demo(&[]);
    let (_sdk, sdk_addr) = start_sdk_upstream();
    let dome = start_dome("two-upstreams", &upstreams(demo_addr, sdk_addr));
    let url = format!("http://{}/mcp", dome.mcp);

    let legacy = run_client("client_checks.py", &[&url, "legacy"]);
    check_client_view(&legacy, "2025-11-25");
    let modern = run_client("client_checks.py", &[&url, "2026-07-28"]);
    check_client_view(&modern, "2026-07-28");
}

#[test]
fn one_upstream_failing_leaves_the_other_working() {
    let (_demo, demo_addr) = start_demo(&[]);
    let (mut sdk, sdk_addr) = start_sdk_upstream();
    let dome = start_dome("isolation", &upstreams(demo_addr, sdk_addr));
    let url = format!("http://{}/mcp", dome.mcp);
    let before = run_client("client_isolation.py", &[&url, "legacy"]);
    assert_eq!(before["add"], "42", "{before}");

    sdk.kill();
    for mode in ["legacy", "2026-07-28"] {
        let after = run_client("client_isolation.py", &[&url, mode]);
        // The failed upstream's tools drop out; the other's stay, under
        // the names they had (a rule written for `demo.echo` holds).
        assert_eq!(
            after["tools"],
            json!(["demo.echo", "records", "slow"]),
            "{after}"
        );
        assert_eq!(after["echo"], "still here", "{after}");
        let err = after["add_error"].as_str().unwrap();
        assert!(
            err.contains("upstream `sdk`"),
            "the error names the upstream: {err}"
        );
    }
}

#[test]
fn stateless_client_reaches_a_session_only_upstream_across_its_restart() {
    let (mut demo, demo_addr) = start_demo(&["--session-only"]);
    let dome = start_dome(
        "session-only",
        &format!("[[upstream]]\nname = \"legacy\"\nurl = \"http://{demo_addr}/mcp\"\n"),
    );
    let url = format!("http://{}/mcp", dome.mcp);
    let first = run_client("client_isolation.py", &[&url, "2026-07-28"]);
    assert_eq!(first["echo"], "still here", "{first}");

    // The upstream restarts and forgets every session; Dome initializes a new one.
    demo.kill();
    let mut again = Proc::spawn(
        "dome-demo-upstream",
        std::process::Command::new(demo_bin())
            .arg(demo_addr.to_string())
            .arg("--session-only"),
    );
    wait_port(demo_addr, &mut again);
    let second = run_client("client_isolation.py", &[&url, "2026-07-28"]);
    assert_eq!(second["echo"], "still here", "{second}");
    let legacy = run_client("client_isolation.py", &[&url, "legacy"]);
    assert_eq!(legacy["echo"], "still here", "{legacy}");
}

/// Prompts, resources (text and binary), templates and completion from two
/// upstreams at once, in both eras.
#[test]
fn prompts_and_resources_from_two_upstreams() {
    let (_one, one) = start_sdk_flavor("one");
    let (_two, two) = start_sdk_flavor("two");
    let dome = start_dome(
        "resources",
        &format!(
            "[[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\n\n[[upstream]]\nname = \"two\"\nurl = \"http://{two}/mcp\"\n"
        ),
    );
    let url = format!("http://{}/mcp", dome.mcp);
    for mode in ["legacy", "2026-07-28"] {
        let seen = run_client("client_resources.py", &[&url, mode]);
        assert_eq!(
            seen["prompts"],
            json!(["one.brief", "one.greet", "two.brief", "two.greet"]),
            "{mode}: {seen}"
        );
        assert_eq!(seen["greet_two"], "Hello Ada from two", "{mode}: {seen}");
        assert_eq!(
            seen["resources"],
            json!([
                "blob://one/bytes",
                "blob://two/bytes",
                "notes://one/readme",
                "notes://two/readme"
            ]),
            "{mode}: {seen}"
        );
        assert_eq!(
            seen["templates"],
            json!([
                "users://one/{user_id}",
                "users://two/{user_id}",
                "vault://one/{item}",
                "vault://two/{item}"
            ]),
            "{mode}: {seen}"
        );
        assert_eq!(seen["readme_one"], "readme of one");
        assert_eq!(seen["blob_two"], json!([0, 1, 2, 250, 251, 252]));
        assert_eq!(
            seen["user_two_42"], "user 42 of two",
            "the template routed the read to `two`"
        );
        assert_eq!(seen["completion"], json!(["Gr-one"]), "{mode}: {seen}");
        if mode == "legacy" {
            // (A client pinned to 2026-07-28 skips discovery and knows no capabilities.)
            assert_eq!(
                seen["caps"],
                json!(["completions", "prompts", "resources", "tools"]),
                "the union of the upstreams' capabilities, no logging: {seen}"
            );
        }
    }
}

/// A tool that needs the client's input works for a client of either era
/// in front of an upstream of either era: the same era passes through
/// (`input_required` rounds, or mid-call requests relayed under Dome's ids);
/// across eras Dome translates (it parks a session upstream's call for a
/// stateless client's retry, or asks a session client on the call's stream
/// and calls a stateless upstream again with the answers).
#[test]
fn client_input_works_across_eras() {
    let (_one, one) = start_sdk_flavor("one");
    // A second upstream beside it, so routing is not trivially right.
    let (_demo, demo) = start_demo(&[]);
    for upstream_era in ["stateless", "session"] {
        let dome = start_dome(
            &format!("elicit-{upstream_era}"),
            &format!(
                "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
                 [[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\nera = \"{upstream_era}\"\n"
            ),
        );
        let url = format!("http://{}/mcp", dome.mcp);
        for client in ["2026-07-28", "legacy"] {
            let seen = run_client("client_elicit.py", &[&url, client]);
            let case = format!("{client} client, {upstream_era} upstream");
            assert_eq!(seen["asked"], json!(["Which colour?"]), "{case}: {seen}");
            assert_eq!(seen["text"], "fence painted teal", "{case}: {seen}");
            assert_eq!(seen["is_error"], false, "{case}: {seen}");
            // The trail has the call: waiting for input, then answered.
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_dome"))
                .args([
                    "audit", "query", "--format", "jsonl", "--tool", "paint", "--config",
                ])
                .arg(&dome.config)
                .output()
                .unwrap();
            let outcomes: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["outcome"].to_string()
                })
                .collect();
            assert!(
                outcomes.iter().any(|o| o == "\"input_required\"")
                    && outcomes.last().is_some_and(|o| o == "\"ok\""),
                "{case}: {outcomes:?}"
            );
        }
    }
}

/// Session era: a resource update reaches the session that subscribed to it
/// (on its GET stream), and no other session — whether the upstream speaks
/// the session era (Dome subscribes there) or only serves
/// `subscriptions/listen` (Dome listens there for the URI).
#[test]
fn resource_updates_reach_only_the_subscriber() {
    for flags in [&["--session-only", "--resources"][..], &["--resources"][..]] {
        let (_demo, demo) = start_demo(flags);
        let (_one, one) = start_sdk_flavor("one");
        let dome = start_dome(
            "subscribe",
            &format!(
                "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
                 [[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\n"
            ),
        );
        let url = format!("http://{}/mcp", dome.mcp);
        let touch = format!("http://{demo}/demo-touch");
        let seen = run_client("client_subscribe.py", &[&url, &touch]);
        assert_eq!(
            seen["a"],
            json!([["notifications/resources/updated", "demo://counter"]]),
            "{flags:?}: {seen}"
        );
        assert_eq!(seen["b"], json!([]), "{flags:?}: {seen}");
        assert_eq!(seen["counter"], "1");
    }
}

/// Stateless era: each `subscriptions/listen` stream is acknowledged with
/// the filter Dome honors and then carries exactly what it asked for,
/// stamped with its id, from an upstream of either era; the upstream
/// subscription ends when the last stream that wanted it closes.
#[test]
fn listen_streams_carry_what_they_asked_for() {
    for flags in [&["--session-only", "--resources"][..], &["--resources"][..]] {
        let (_demo, demo) = start_demo(flags);
        let (_one, one) = start_sdk_flavor("one");
        let dome = start_dome(
            "listen",
            &format!(
                "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
                 [[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\n"
            ),
        );
        let url = format!("http://{}/mcp", dome.mcp);
        let seen = run_client(
            "client_listen.py",
            &[
                &url,
                &format!("http://{demo}/demo-touch"),
                &format!("http://{demo}/demo-tools-changed"),
                &format!("http://{demo}/demo-stats"),
            ],
        );
        assert_eq!(
            seen["a_honored"],
            json!({"resourceSubscriptions": ["demo://counter"]}),
            "{flags:?}: {seen}"
        );
        assert_eq!(
            seen["b_honored"],
            json!({"toolsListChanged": true}),
            "{seen}"
        );
        assert_eq!(
            seen["a"],
            json!([["resource_updated", "demo://counter"]]),
            "{flags:?}: {seen}"
        );
        assert_eq!(
            seen["b"],
            json!([["tools_list_changed"]]),
            "{flags:?}: {seen}"
        );
        assert_eq!(seen["counter"], "1");
        if flags.contains(&"--session-only") {
            // Dome relays the session upstream's GET stream; no listen there.
            assert_eq!(seen["upstream_listens_open"], json!([]), "{seen}");
        } else {
            // One upstream stream serves both clients' streams.
            let open = seen["upstream_listens_open"].as_array().unwrap();
            assert_eq!(open.len(), 1, "{seen}");
            assert_eq!(open[0]["uris"], json!(["demo://counter"]), "{seen}");
            assert_eq!(open[0]["tools"], true, "{seen}");
            let after = seen["upstream_listens_after"].as_array().unwrap();
            assert!(after.iter().all(|l| l["uris"] == json!([])), "{seen}");
        }
    }
}

/// A session-era client is asked for the input a stateless upstream's
/// prompt or read needs, on the request's stream, and gets the final
/// answer (it received `{"resultType":"input_required",…}` raw, which no
/// session-era SDK can read). A tool that asks mid-call, session style,
/// works through Dome as it works directly: Dome speaks the session era
/// to an upstream that speaks both (`era = "auto"`), where it was always
/// spoken to in the stateless era and the tool failed.
#[test]
fn input_a_prompt_read_or_session_style_tool_needs_reaches_a_session_era_client() {
    let (_one, one) = start_sdk_flavor("one");
    let dome = start_dome(
        "input-kinds",
        &format!("[[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\n"),
    );
    let url = format!("http://{}/mcp", dome.mcp);
    let seen = run_client("client_input_kinds.py", &[&url, "legacy"]);
    assert_eq!(
        seen["prompt"]["text"], "Brief on tides for operators from one",
        "{seen}"
    );
    assert_eq!(
        seen["read"]["text"], "gold opened with open sesame",
        "{seen}"
    );
    assert_eq!(seen["call"]["text"], "deploy: approved", "{seen}");
    assert_eq!(
        seen["asked"],
        json!([
            "Who is the brief for?",
            "Passphrase for gold?",
            "Approve deploy?"
        ]),
        "{seen}"
    );
    // The stateless era's own rounds pass through as they are.
    let seen = run_client("client_input_kinds.py", &[&url, "2026-07-28"]);
    assert_eq!(
        seen["prompt"]["text"], "Brief on tides for operators from one",
        "{seen}"
    );
    assert_eq!(
        seen["read"]["text"], "gold opened with open sesame",
        "{seen}"
    );
}

/// A client that declared no elicitation capability is not sent an
/// `elicitation/create` it can only refuse with "method not found": a
/// stateless upstream's request for input ends the call with -32021,
/// naming the capability, and a session-era upstream asking mid-call is
/// answered that the client cannot take it.
#[test]
fn a_client_is_never_asked_what_it_did_not_declare_it_can_answer() {
    let (_one, one) = start_sdk_flavor("one");
    let dome = start_dome(
        "input-undeclared",
        &format!("[[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\n"),
    );
    let url = format!("http://{}/mcp", dome.mcp);
    let seen = run_client(
        "client_input_kinds.py",
        &[&url, "legacy", "--no-elicitation"],
    );
    assert_eq!(seen["asked"], json!([]), "{seen}");
    for step in ["prompt", "read"] {
        assert_eq!(seen[step]["code"], -32021, "{step}: {seen}");
        assert_eq!(
            seen[step]["data"]["requiredCapabilities"],
            json!({"elicitation": {}}),
            "{step}: {seen}"
        );
        let message = seen[step]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("`elicitation` capability"),
            "{step}: {seen}"
        );
    }
    // The upstream heard why and ended its tool with that reason.
    let call = seen["call"]["message"].as_str().unwrap_or_default();
    assert!(
        call.contains("did not declare the `elicitation` capability"),
        "{seen}"
    );
}

/// What a stateless upstream answers reaches a session-era (2025-11-25)
/// caller in that era's schema: without `resultType`, `ttlMs`,
/// `cacheScope` or the era's `_meta` keys (the upstream's `serverInfo`
/// among them).
#[test]
fn each_era_s_answers_carry_only_that_era_s_fields() {
    let (_one, one) = start_sdk_flavor("one");
    let dome = start_dome(
        "era-fields",
        &format!("[[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\nera = \"stateless\"\n"),
    );
    let exchange = |headers: &[(&str, &str)], body: &str| {
        let mut all = vec![
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
        ];
        all.extend_from_slice(headers);
        http(dome.mcp, "POST", "/mcp", &all, body)
    };
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (_, headers, _) = exchange(&[], init);
    let sid = header(&headers, "mcp-session-id")
        .expect("a session")
        .to_string();
    let post = |headers: &[(&str, &str)], body: &str| {
        let (status, _, text) = exchange(headers, body);
        assert_eq!(status, 200, "{text}");
        // One JSON answer, or an event stream whose last event is it.
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .next_back()
            .map(str::to_string)
            .unwrap_or(text);
        serde_json::from_str::<serde_json::Value>(last.trim()).unwrap()
    };
    let session = [
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let requests = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"notes://one/readme"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"greet","arguments":{"name":"Ada"}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"name","value":"A"}}}"#,
    ];
    for body in requests {
        let v = post(&session, body);
        let result = &v["result"];
        assert!(result.is_object(), "{v}");
        for field in ["resultType", "ttlMs", "cacheScope", "_meta"] {
            assert!(result.get(field).is_none(), "{field} in {v}");
        }
    }
    // A stateless caller keeps its era's fields.
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
    let stateless = [("MCP-Protocol-Version", "2026-07-28")];
    for (method, name, body) in [
        (
            "tools/call",
            "add",
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"add","arguments":{{"a":1,"b":2}},{meta}}}}}"#
            ),
        ),
        (
            "resources/read",
            "notes://one/readme",
            format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{{"uri":"notes://one/readme",{meta}}}}}"#
            ),
        ),
    ] {
        let mut headers = stateless.to_vec();
        headers.push(("Mcp-Method", method));
        headers.push(("Mcp-Name", name));
        let v = post(&headers, &body);
        assert_eq!(v["result"]["resultType"], "complete", "{v}");
    }
}

/// Every round of input a session-era agent gives a stateless upstream's
/// prompt or read is its own: judged, charged and recorded for the agent
/// and its session, as the first round is (later rounds run after the
/// request that began them, and were anonymous there). A request that
/// cannot take the upstream's questions (in a batch: no event stream) is
/// told so, where it was handed a stray `input_required` as a result.
#[test]
fn each_round_of_input_is_the_agent_s_and_needs_an_event_stream() {
    let (_one, one) = start_sdk_flavor("one");
    let key = "dome_briefer_key-of-the-briefing-agent";
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rounds-{}.data", std::process::id()));
    let dome = start_dome(
        "rounds",
        &format!(
            "[[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\n\
             [auth]\ndata_dir = \"{}\"\n\
             [[tenant]]\nname = \"acme\"\n\
             [[agent]]\nid = \"briefer\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n",
            data.display(),
            sha(key)
        ),
    );
    let url = format!("http://{}/mcp", dome.mcp);
    let seen = run_client("client_input_kinds.py", &[&url, "legacy", "--key", key]);
    assert_eq!(
        seen["prompt"]["text"], "Brief on tides for operators from one",
        "{seen}"
    );
    assert_eq!(
        seen["read"]["text"], "gold opened with open sesame",
        "{seen}"
    );
    let records = audit_records(&dome);
    for (kind, name) in [("prompt", "brief"), ("resource", "vault://one/gold")] {
        let rounds: Vec<_> = records
            .iter()
            .filter(|r| r["kind"] == kind && r["name"] == name)
            .collect();
        assert_eq!(rounds.len(), 2, "{kind}: {rounds:?}");
        assert_eq!(rounds[0]["outcome"], "input_required", "{rounds:?}");
        assert_eq!(rounds[1]["outcome"], "ok", "{rounds:?}");
        for r in &rounds {
            assert_eq!(r["agent"], "briefer", "{r}");
            assert!(r["session"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        }
    }
    // In a batch (2025-03-26 has them; answered as one JSON array, no
    // event stream), the questions have nowhere to go.
    let auth = format!("Bearer {key}");
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{"elicitation":{}},"clientInfo":{"name":"t","version":"1"}}}"#;
    let base = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let mut headers = base.to_vec();
    headers.push(("Accept", "application/json, text/event-stream"));
    let (status, h, text) = http(dome.mcp, "POST", "/mcp", &headers, init);
    assert_eq!(status, 200, "{text}");
    let sid = header(&h, "mcp-session-id").unwrap().to_string();
    let mut headers = base.to_vec();
    headers.push(("Accept", "application/json, text/event-stream"));
    headers.push(("Mcp-Session-Id", sid.as_str()));
    headers.push(("MCP-Protocol-Version", "2025-03-26"));
    for body in [
        r#"[{"jsonrpc":"2.0","id":5,"method":"prompts/get","params":{"name":"brief","arguments":{"subject":"x"}}}]"#,
        r#"[{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"paint","arguments":{"thing":"gate"}}}]"#,
    ] {
        let (status, _, text) = http(dome.mcp, "POST", "/mcp", &headers, body);
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let v = if v.is_array() { v[0].clone() } else { v };
        assert_eq!(v["error"]["code"], -32600, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("event stream"),
            "{v}"
        );
    }
}
