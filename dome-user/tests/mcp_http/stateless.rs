//! The stateless era's rules, pagination, streamed answers, stats, cancellation both ways, log levels, and upstream response limits.

use super::*;

#[test]
fn stateless_era_rules() {
    let (_demo, dome) = setup("");
    let (h, body) = stateless("server/discover", None, json!({}));
    let (status, _, v) = post(&dome, &as_refs(&h), &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["supportedVersions"], json!(["2026-07-28"]));
    assert_eq!(
        v["result"]["capabilities"],
        json!({"tools": {"listChanged": false}, "logging": {}}),
        "the demo upstream offers tools and logging only, so Dome announces nothing more"
    );
    assert_eq!(v["result"]["resultType"], "complete");

    let (h, body) = stateless(
        "tools/call",
        Some("echo"),
        json!({"arguments": {"message": "m"}}),
    );
    let (status, _, v) = post(&dome, &as_refs(&h), &body);
    assert_eq!(
        (status, &v["result"]["content"][0]["text"]),
        (200, &json!("m"))
    );

    // Mcp-Name disagrees with the body.
    let (mut h, body) = stateless(
        "tools/call",
        Some("echo"),
        json!({"arguments": {"message": "m"}}),
    );
    h[2].1 = "records".into();
    let (status, _, v) = post(&dome, &as_refs(&h), &body);
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32020)));
    // Mcp-Method disagrees with the body.
    let (mut h, body) = stateless("tools/list", None, json!({}));
    h[1].1 = "tools/call".into();
    assert_eq!(post(&dome, &as_refs(&h), &body).2["error"]["code"], -32020);

    // A version Dome does not serve.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2099-01-01",
        "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let h = [
        ACCEPT,
        JSON,
        ("MCP-Protocol-Version", "2099-01-01"),
        ("Mcp-Method", "tools/list"),
    ];
    let (status, _, v) = post(&dome, &h, &body);
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32022)));
    assert_eq!(v["error"]["data"]["supported"], json!(["2026-07-28"]));

    // Unknown method: 404; ping is not part of this era.
    for m in ["nope/nope", "ping"] {
        let (h, body) = stateless(m, None, json!({}));
        let (status, _, v) = post(&dome, &as_refs(&h), &body);
        assert_eq!(
            (status, v["error"]["code"].as_i64()),
            (404, Some(-32601)),
            "{m}"
        );
    }
    // Unknown tool.
    let (h, body) = stateless("tools/call", Some("ghost"), json!({"arguments": {}}));
    let (status, _, v) = post(&dome, &as_refs(&h), &body);
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32602)));
    // Notifications are acknowledged.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let h = [
        ACCEPT,
        JSON,
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "notifications/progress"),
    ];
    assert_eq!(post(&dome, &h, &note).0, 202);
    assert_eq!(
        http(dome.mcp, "DELETE", "/mcp", &[], "").0,
        400,
        "no session to delete"
    );
}

#[test]
fn tools_list_pages_walk_the_whole_catalog() {
    let (_demo, dome) = setup("[mcp]\npage_size = 2\n");
    let sid = initialize(&dome, "2025-11-25");
    let h = [ACCEPT, JSON, ("Mcp-Session-Id", sid.as_str())];
    let (_, _, v) = post(
        &dome,
        &h,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    let page1: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(page1, ["echo", "slow"]);
    let cursor = v["result"]["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let body =
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": cursor}})
            .to_string();
    let (_, _, v) = post(&dome, &h, &body);
    assert_eq!(v["result"]["tools"][0]["name"], "records");
    assert!(v["result"].get("nextCursor").is_none(), "last page: {v}");
    let bad = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"garbage"}}"#;
    assert_eq!(post(&dome, &h, bad).2["error"]["code"], -32602);
}

/// Progress events reach the client as the upstream sends them: the first
/// arrives while the call is still running.
#[test]
fn sse_responses_stream_through_unbuffered() {
    let (_demo, dome) = setup("");
    let sid = initialize(&dome, "2025-11-25");
    let body = json!({"jsonrpc": "2.0", "id": "s", "method": "tools/call", "params": {
        "name": "slow", "arguments": {"steps": 3, "delay_ms": 400}, "_meta": {"progressToken": "tok"}}})
    .to_string();
    let h = [
        ACCEPT,
        JSON,
        ("Mcp-Session-Id", sid.as_str()),
        ("Connection", "close"),
    ];
    let (mut s, mut seen) = start_slow(&dome, &h, &body);
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(
        !seen.contains("done after"),
        "the result must not have arrived with the first progress event"
    );
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    seen.push_str(&rest);
    assert!(seen.contains("\"progress\":3"));
    assert!(
        seen.contains("done after 3 steps") && seen.contains("\"id\":\"s\""),
        "{seen}"
    );
}

#[test]
fn stats_show_latency_histograms_and_counts() {
    let (_demo, dome) = setup("");
    let sid = initialize(&dome, "2025-11-25");
    let h = [ACCEPT, JSON, ("Mcp-Session-Id", sid.as_str())];
    for i in 0..5 {
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "x"}}});
        assert_eq!(post(&dome, &h, &body.to_string()).0, 200);
    }
    post(&dome, &h, "{oops");
    let (status, _, body) = http(dome.stats, "GET", "/stats", &[], "");
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    let lat = &s["latency"];
    assert_eq!(lat["tool"]["echo"]["count"], 5, "{s}");
    assert_eq!(lat["upstream"]["demo"]["count"], 5, "{s}");
    assert_eq!(lat["phase"]["upstream"]["count"], 5, "{s}");
    assert!(lat["phase"]["total"]["count"].as_u64().unwrap() >= 7, "{s}");
    assert!(lat["phase"]["parse"]["count"].as_u64().unwrap() >= 7, "{s}");
    for q in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(lat["tool"]["echo"][q].as_u64().unwrap() > 0, "{q}: {s}");
    }
    assert_eq!(s["requests"]["by_method"]["tools/call"], 5, "{s}");
    assert_eq!(s["requests"]["by_jsonrpc_error"]["-32700"], 1, "{s}");
    assert_eq!(s["requests"]["by_http_status"]["400"], 1, "{s}");
    let (status, _, text) = http(dome.stats, "GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    assert!(
        text.contains("dome_tool_latency_seconds_count{tool=\"echo\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("dome_jsonrpc_errors_total{code=\"-32700\"} 1"),
        "{text}"
    );
    assert!(text.contains("dome_xdp_attached 0"), "{text}");
    // The session opened above, and readiness as /readyz has it.
    assert!(text.contains("\ndome_sessions 1\n"), "{text}");
    assert!(text.contains("\ndome_ready 1\n"), "{text}");
}

pub(super) fn demo_stats(addr: std::net::SocketAddr) -> Value {
    let (_, _, body) = http(addr, "GET", "/demo-stats", &[], "");
    serde_json::from_str(&body).unwrap()
}

pub(super) fn wait_demo(addr: std::net::SocketAddr, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while demo_stats(addr)[key] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{key} never reached the upstream: {}",
            demo_stats(addr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a `slow` call and returns the stream, and what it said, once its
/// first progress event arrived.
pub(super) fn start_slow(dome: &Dome, headers: &[(&str, &str)], body: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(dome.mcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\"progress\":1") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (s, seen)
}

#[test]
fn cancellation_reaches_the_upstream_in_both_eras() {
    let (_demo, demo) = start_demo(&[]);
    let dome = start_dome(
        "cancel",
        &format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"),
    );

    // Session era: notifications/cancelled names the client's request id.
    let sid = initialize(&dome, "2025-11-25");
    let h = [ACCEPT, JSON, ("Mcp-Session-Id", sid.as_str())];
    let call = json!({"jsonrpc": "2.0", "id": "c1", "method": "tools/call", "params": {
        "name": "slow", "arguments": {"steps": 20, "delay_ms": 150}, "_meta": {"progressToken": "p"}}});
    let _stream = start_slow(&dome, &h, &call.to_string());
    assert!(_stream.1.contains("step 1 of 20"));
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c1"}});
    assert_eq!(post(&dome, &h, &cancel.to_string()).0, 202);
    wait_demo(demo, "slow_cancelled");

    // Stateless era: closing the response stream cancels the upstream call.
    let (sh, body) = stateless(
        "tools/call",
        Some("slow"),
        json!({"arguments": {"steps": 20, "delay_ms": 150}}),
    );
    let mut body: Value = serde_json::from_str(&body).unwrap();
    body["params"]["_meta"]["progressToken"] = "q".into();
    let (stream, _) = start_slow(&dome, &as_refs(&sh), &body.to_string());
    drop(stream);
    wait_demo(demo, "slow_aborted");
    assert_eq!(demo_stats(demo)["slow_completed"], 0);
}

/// An upstream's request to the client, and its withdrawal, reach the client
/// under the same id of Dome's.
#[test]
fn upstream_cancellation_of_a_relayed_request_names_dome_s_id() {
    let (_demo, demo) = start_demo(&["--session-only", "--resources"]);
    let dome = start_dome(
        "withdraw",
        &format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"),
    );
    // A client that can be asked (one that cannot is never sent the request).
    let sid = initialize_with(&dome, "2025-11-25", json!({"elicitation": {}}));
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"ask_then_cancel","arguments":{}}}"#;
    let (status, _, text) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &[ACCEPT, JSON, ("Mcp-Session-Id", sid.as_str())],
        body,
    );
    assert_eq!(status, 200);
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    let asked = &events[0]["id"];
    assert!(
        asked.as_str().unwrap().starts_with("dome-"),
        "Dome's own id: {asked}"
    );
    assert_eq!(events[1]["method"], "notifications/cancelled");
    assert_eq!(
        &events[1]["params"]["requestId"], asked,
        "the withdrawal names the id the client saw"
    );
    assert_eq!(events[2]["id"], 7);
}

/// Log messages on a call's stream: a stateless caller opts in with
/// `_meta["io.modelcontextprotocol/logLevel"]` and gets only that level and
/// above; a session gets every level until its `logging/setLevel`, which
/// holds for that session alone. Dome passes the level on to a stateless
/// upstream and filters itself what a session-era upstream (which logs
/// regardless) sends.
#[test]
fn log_messages_reach_a_stateless_caller_only_at_its_level() {
    for flags in [&[][..], &["--session-only"][..]] {
        let (_demo, demo) = start_demo(flags);
        let dome = start_dome(
            "logs",
            &format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"),
        );
        let slow = json!({"name": "slow", "arguments": {"steps": 1, "delay_ms": 1}});
        for (level, logged) in [
            (None, false),
            (Some("warning"), false),
            (Some("info"), true),
            (Some("debug"), true),
        ] {
            let (h, body) = stateless("tools/call", Some("slow"), slow.clone());
            let mut body: Value = serde_json::from_str(&body).unwrap();
            body["params"]["_meta"]["progressToken"] = "p".into();
            if let Some(l) = level {
                body["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = l.into();
            }
            let (status, _, text) = http(dome.mcp, "POST", "/mcp", &as_refs(&h), &body.to_string());
            assert_eq!(status, 200, "{text}");
            assert!(
                text.contains("done after 1 steps"),
                "{flags:?} {level:?}: {text}"
            );
            assert!(text.contains("notifications/progress"), "{text}");
            assert_eq!(
                text.contains("\"notifications/message\""),
                logged,
                "{flags:?} at {level:?}: {text}"
            );
            if logged {
                assert!(text.contains("working in 1 steps"), "{text}");
            }
        }
        // A session-era caller: every level until its `logging/setLevel`,
        // which is its own (another session still gets everything).
        let sid = initialize(&dome, "2025-11-25");
        let other = initialize(&dome, "2025-11-25");
        let in_session = |sid: &str, body: Value| {
            http(
                dome.mcp,
                "POST",
                "/mcp",
                &[ACCEPT, JSON, ("Mcp-Session-Id", sid)],
                &body.to_string(),
            )
            .2
        };
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "slow", "arguments": {"steps": 1, "delay_ms": 1}, "_meta": {"progressToken": "p"}}});
        let set = |level: &str| json!({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": level}});
        let text = in_session(&sid, call.clone());
        assert!(text.contains("working in 1 steps"), "{flags:?}: {text}");
        let v: Value = serde_json::from_str(&in_session(&sid, set("loud"))).unwrap();
        assert_eq!(v["error"]["code"], -32602, "{v}");
        let v: Value = serde_json::from_str(&in_session(&sid, set("warning"))).unwrap();
        assert_eq!(v["result"], json!({}), "{v}");
        let text = in_session(&sid, call.clone());
        assert!(text.contains("done after 1 steps"), "{text}");
        assert!(!text.contains("notifications/message"), "{flags:?}: {text}");
        let text = in_session(&other, call.clone());
        assert!(text.contains("working in 1 steps"), "{flags:?}: {text}");
    }
}

/// An upstream's response over `max_response_bytes`, plain or as an event
/// of a stream, is refused with an error that names the upstream; one
/// under the limit passes whole, and the upstream keeps serving.
#[test]
fn a_response_over_the_upstreams_limit_is_refused_naming_it() {
    let (_leaky, addr) = start_py_server("leaky_upstream.py", &[]);
    let dome = start_dome(
        "limits",
        &format!(
            "[[upstream]]\nname = \"leaky\"\nurl = \"http://{addr}/mcp\"\nmax_response_bytes = 262144\n"
        ),
    );
    let call = |tool: &str, kib: u64| {
        let (h, body) = stateless("tools/call", Some(tool), json!({"arguments": {"kib": kib}}));
        let mut body: Value = serde_json::from_str(&body).unwrap();
        body["params"]["_meta"]["progressToken"] = "p".into();
        let (status, _, text) = http(dome.mcp, "POST", "/mcp", &as_refs(&h), &body.to_string());
        assert!(status != 0 && status < 500, "{tool} {kib}: {status} {text}");
        text
    };
    for (tool, what) in [("big", "a response"), ("big_streamed", "an event")] {
        let text = call(tool, 100);
        assert!(
            text.contains(&"x".repeat(100 * 1024)),
            "{tool}: {}",
            &text[..200.min(text.len())]
        );
        let text = call(tool, 1024);
        assert!(
            text.contains("upstream `leaky`")
                && text.contains(&format!("{what} over 262144 bytes")),
            "{tool}: {}",
            &text[..400.min(text.len())]
        );
        assert!(!text.contains("xxxxxxxx"), "nothing of it is passed on");
        let text = call(tool, 1);
        assert!(
            text.contains(&"x".repeat(1024)),
            "{tool} still serves: {text}"
        );
    }
}
