//! Streamable HTTP rules of both eras, checked on the wire with raw HTTP
//! against a real Dome in front of the real demo upstream.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::*;
use serde_json::{Value, json};

const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn setup(extra: &str) -> (Proc, Dome) {
    let (demo, addr) = start_demo(&[]);
    let dome = start_dome(
        "http-rules",
        &format!("{extra}\n[[upstream]]\nname = \"demo\"\nurl = \"http://{addr}/mcp\"\n"),
    );
    (demo, dome)
}

fn post(dome: &Dome, headers: &[(&str, &str)], body: &str) -> (u16, Vec<(String, String)>, Value) {
    let (status, h, b) = http(dome.mcp, "POST", "/mcp", headers, body);
    let v = serde_json::from_str(&b).unwrap_or(Value::Null);
    (status, h, v)
}

fn initialize(dome: &Dome, version: &str) -> String {
    initialize_with(dome, version, json!({}))
}

/// A session whose client declared `capabilities`.
fn initialize_with(dome: &Dome, version: &str, capabilities: Value) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}}});
    let (status, h, v) = post(dome, &[ACCEPT, JSON], &body.to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["protocolVersion"], version);
    let sid = header(&h, "mcp-session-id")
        .expect("session id")
        .to_string();
    assert_eq!(sid.len(), 32, "128 random bits");
    sid
}

fn stateless(method: &str, name: Option<&str>, params: Value) -> (Vec<(String, String)>, String) {
    let mut p = params;
    p["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    if let Some(n) = name {
        p["name"] = n.into();
    }
    let mut h = vec![
        ("MCP-Protocol-Version".to_string(), "2026-07-28".to_string()),
        ("Mcp-Method".to_string(), method.to_string()),
    ];
    if let Some(n) = name {
        h.push(("Mcp-Name".to_string(), n.to_string()));
    }
    (
        h,
        json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": p}).to_string(),
    )
}

fn as_refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    v.push(ACCEPT);
    v.push(JSON);
    v
}

#[test]
fn session_era_rules() {
    let (_demo, dome) = setup("");
    let sid = initialize(&dome, "2025-06-18");
    let with_sid = [ACCEPT, JSON, ("Mcp-Session-Id", sid.as_str())];

    // Unknown versions negotiate down to the latest Dome speaks.
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2024-01-01", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (_, _, v) = post(&dome, &[ACCEPT, JSON], &body.to_string());
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25");

    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let (status, _, v) = post(&dome, &with_sid, ping);
    assert_eq!((status, &v["result"]), (200, &json!({})));

    let (status, _, v) = post(&dome, &[ACCEPT, JSON], ping);
    assert_eq!(status, 400, "no session id: {v}");
    let (status, _, v) = post(&dome, &[ACCEPT, JSON, ("Mcp-Session-Id", "0123")], ping);
    assert_eq!(status, 404, "unknown session: {v}");
    let (status, _, _) = post(
        &dome,
        &[
            ACCEPT,
            JSON,
            ("Mcp-Session-Id", &sid),
            ("MCP-Protocol-Version", "1999-01-01"),
        ],
        ping,
    );
    assert_eq!(status, 400, "unsupported MCP-Protocol-Version header");

    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(post(&dome, &with_sid, note).0, 202);
    let cancelled =
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}"#;
    assert_eq!(post(&dome, &with_sid, cancelled).0, 202);

    let (status, _, v) = post(
        &dome,
        &with_sid,
        r#"{"jsonrpc":"2.0","id":2,"method":"nope/nope"}"#,
    );
    assert_eq!((status, v["error"]["code"].as_i64()), (200, Some(-32601)));

    let (status, _, v) = post(
        &dome,
        &with_sid,
        r#"[{"jsonrpc":"2.0","id":3,"method":"ping"}]"#,
    );
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "no batches after 2025-03-26"
    );

    assert_eq!(
        http(
            dome.mcp,
            "GET",
            "/mcp",
            &[("Accept", "text/event-stream")],
            ""
        )
        .0,
        405
    );
    assert_eq!(
        http(dome.mcp, "DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "").0,
        200
    );
    assert_eq!(
        post(&dome, &with_sid, ping).0,
        404,
        "a deleted session is gone"
    );
    assert_eq!(
        http(dome.mcp, "DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "").0,
        404
    );
}

#[test]
fn batches_only_under_2025_03_26() {
    let (_demo, dome) = setup("");
    let sid = initialize(&dome, "2025-03-26");
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},
                   {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"b"}}}]"#;
    let (status, _, v) = post(&dome, &[ACCEPT, JSON, ("Mcp-Session-Id", &sid)], batch);
    assert_eq!(status, 200, "{v}");
    let a = v.as_array().expect("an array of responses");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["id"], 1);
    assert_eq!(a[1]["result"]["content"][0]["text"], "b");

    // JSON-RPC 2.0 §6: an element that is no valid request gets an error
    // of its own; a notification and an answer get none.
    let mixed = r#"[1, {"jsonrpc":"2.0","id":4}, {"jsonrpc":"1.0","id":5,"method":"ping"},
                    {"jsonrpc":"2.0","id":null,"method":"ping"},
                    {"jsonrpc":"2.0","id":6,"method":"initialize","params":{}},
                    {"jsonrpc":"2.0","id":7,"result":{}},
                    {"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}},
                    {"jsonrpc":"2.0","id":8,"method":"ping"}]"#;
    let (status, _, v) = post(&dome, &[ACCEPT, JSON, ("Mcp-Session-Id", &sid)], mixed);
    assert_eq!(status, 200, "{v}");
    let got: Vec<(Value, Option<i64>)> = v
        .as_array()
        .expect("an array of responses")
        .iter()
        .map(|r| (r["id"].clone(), r["error"]["code"].as_i64()))
        .collect();
    assert_eq!(
        got,
        [
            (Value::Null, Some(-32600)),
            (json!(4), Some(-32600)),
            (json!(5), Some(-32600)),
            (Value::Null, Some(-32600)),
            (json!(6), Some(-32600)),
            (json!(8), None),
        ],
        "{v}"
    );
    assert_eq!(v[5]["result"], json!({}), "{v}");
    // An empty batch is one error; one of notifications only gets 202.
    let (status, _, v) = post(&dome, &[ACCEPT, JSON, ("Mcp-Session-Id", &sid)], "[]");
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32600)));
    let notes = r#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
    let (status, _, _) = post(&dome, &[ACCEPT, JSON, ("Mcp-Session-Id", &sid)], notes);
    assert_eq!(status, 202);
    // A session that does not exist is 404, as for a single message.
    let (status, _, v) = post(&dome, &[ACCEPT, JSON, ("Mcp-Session-Id", "nope")], notes);
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (404, Some(-32002)),
        "{v}"
    );
}

/// Opens session `sid`'s GET stream and reads as far as its 200.
fn open_get_stream(dome: &Dome, sid: &str) -> TcpStream {
    let mut stream = TcpStream::connect(dome.mcp).unwrap();
    write!(
        stream,
        "GET /mcp HTTP/1.1\r\nHost: dome\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the stream is open");
    stream
}

/// Sessions do not pile up. One unused for `session_idle_s` with nothing
/// open is ended (its client gets 404, as for any ended session); one in
/// use, or with its GET stream open, lives on. An agent at
/// `max_sessions_per_agent` that opens another loses its least recently
/// used one (callers without credentials count as one agent).
#[test]
fn idle_sessions_end_and_an_agent_holds_at_most_its_allowance() {
    let (_demo, dome) = setup("[mcp]\nsession_idle_s = 2\n");
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let status_of =
        |dome: &Dome, sid: &str| post(dome, &[ACCEPT, JSON, ("Mcp-Session-Id", sid)], ping).0;
    let idle = initialize(&dome, "2025-11-25");
    let used = initialize(&dome, "2025-11-25");
    let streaming = initialize(&dome, "2025-11-25");
    let stream = open_get_stream(&dome, &streaming);
    // (Idle ends are checked every second.)
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(status_of(&dome, &used), 200, "used every 0.4 s");
    }
    assert_eq!(status_of(&dome, &idle), 404, "unused for 4 s");
    assert_eq!(status_of(&dome, &streaming), 200, "its stream is open");
    drop(stream);
    std::thread::sleep(Duration::from_millis(4000));
    assert_eq!(
        status_of(&dome, &streaming),
        404,
        "idle once its stream closed"
    );

    let (_demo, dome) = setup("[mcp]\nmax_sessions_per_agent = 2\n");
    let (a, b) = (
        initialize(&dome, "2025-11-25"),
        initialize(&dome, "2025-11-25"),
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(status_of(&dome, &a), 200, "a is now the more recently used");
    let c = initialize(&dome, "2025-11-25");
    assert_eq!(
        [a, b, c].map(|sid| status_of(&dome, &sid)),
        [200, 404, 200],
        "b made room for c"
    );
}

/// SIGTERM drains: `/readyz` turns 503, the listener stops taking
/// connections, a call in flight finishes with its result, an open GET
/// stream is ended (rather than holding Dome to its 10 s grace period),
/// and Dome exits cleanly.
#[test]
fn sigterm_drains_calls_in_flight_and_closes_streams() {
    let (_demo, mut dome) = setup("");
    assert_eq!(http(dome.stats, "GET", "/healthz", &[], "").0, 200);
    let (status, _, body) = http(dome.stats, "GET", "/readyz", &[], "");
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));

    let sid = initialize(&dome, "2025-11-25");
    let mut stream = open_get_stream(&dome, &sid);
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();

    // A call of ten 300 ms steps, in flight when the signal comes.
    let (mcp, call_sid) = (dome.mcp, sid.clone());
    let call = std::thread::spawn(move || {
        let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"steps": 10, "delay_ms": 300}}});
        http(
            mcp,
            "POST",
            "/mcp",
            &[ACCEPT, JSON, ("Mcp-Session-Id", &call_sid)],
            &body.to_string(),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(dome.proc.child.id() as i32, libc::SIGTERM) };

    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let (status, _, body) = http(dome.stats, "GET", "/readyz", &[], "");
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            let (_, _, metrics) = http(dome.stats, "GET", "/metrics", &[], "");
            assert!(metrics.contains("\ndome_ready 0\n"), "{metrics}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never unready: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(dome.mcp).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the GET stream ends, well before the grace period");

    let (status, _, body) = call.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("done after 10 steps"), "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = dome.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "dome did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
}

#[test]
fn a_message_nested_thousands_deep_is_refused_and_dome_keeps_serving() {
    let (_demo, mut dome) = setup("[mcp]\nmax_json_depth = 128\n");
    // 15,000 levels in 30 KB aborted the process (a stack overflow in a
    // recursive re-encoding), for every tenant at once.
    let deep =
        |open: &str, close: &str| format!("{}1{}", open.repeat(15_000), close.repeat(15_000));
    let bodies = [
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":{}}}}}}}"#,
            deep("[", "]")
        ),
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"_meta":{{"x":{}}}}}}}"#,
            deep(r#"{"a":"#, "}")
        ),
        format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"ping"}}"#,
            deep("[", "]")
        ),
        format!(
            r#"[{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}}]"#,
            deep("[", "]")
        ),
    ];
    for body in &bodies {
        let (status, _, v) = post(&dome, &[ACCEPT, JSON], body);
        assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32600)));
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("deeper than 128"),
            "{v}"
        );
    }
    assert!(dome.proc.child.try_wait().unwrap().is_none(), "dome exited");
    let (h, body) = stateless(
        "tools/call",
        Some("echo"),
        json!({"arguments": {"message": [[["ok"]]]}}),
    );
    let (status, _, v) = post(&dome, &as_refs(&h), &body);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn client_mistakes_get_their_codes_never_a_500() {
    let (_demo, dome) = setup("[mcp]\nmax_body_bytes = 2048\n");
    let (status, _, v) = post(&dome, &[ACCEPT, JSON], "{not json");
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32700)));
    let (status, _, v) = post(
        &dome,
        &[ACCEPT, JSON],
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
    );
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32600)));
    let (status, _, v) = post(&dome, &[ACCEPT, JSON], r#"{"jsonrpc":"2.0","id":1}"#);
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32600)));
    // MCP's ids are strings or integers, never null (plain JSON-RPC allows
    // null and fractions; an object or array is no id anywhere).
    let discover = |id: &str| {
        post(
            &dome,
            &[
                ACCEPT,
                JSON,
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", "server/discover"),
            ],
            &format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"server/discover","params":{{"_meta":{{
                    "io.modelcontextprotocol/protocolVersion":"2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
            ),
        )
    };
    for id in ["null", "1.5", r#"{"a":1}"#, "[1]", "true"] {
        let (status, _, v) = discover(id);
        assert_eq!(
            (status, v["error"]["code"].as_i64(), &v["id"]),
            (400, Some(-32600), &Value::Null),
            "id {id}: {v}"
        );
    }
    for id in [r#""req-1""#, "-7"] {
        let (status, _, v) = discover(id);
        assert_eq!((status, v["id"].to_string()), (200, id.to_string()), "{v}");
    }
    // A repeated member name: policy and the upstream could read different
    // tools or resources from it, so it is refused.
    let (status, _, v) = post(
        &dome,
        &[ACCEPT, JSON],
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"demo://a","uri":"demo://b"}}"#,
    );
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`uri` twice"),
        "{v}"
    );
    let (status, _, v) = post(
        &dome,
        &[ACCEPT, JSON],
        "{\"jsonrpc\":\"2.0\",\"id\":1\0,\"method\":\"ping\"}",
    );
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "{v}"
    );
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(4096)
    );
    let (status, _, v) = post(&dome, &[ACCEPT, JSON], &big);
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (413, Some(-32600)),
        "{v}"
    );
    let (status, _, _) = post(
        &dome,
        &[("Accept", "application/json"), JSON],
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(status, 406, "Accept must allow SSE too");
    let (status, _, _) = post(
        &dome,
        &[ACCEPT, JSON, ("Origin", "https://evil.example")],
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(status, 403);
    // An Origin that is not plain ASCII cannot be read, so it is refused
    // too (it used to pass as if absent).
    let (status, _, _) = post(
        &dome,
        &[ACCEPT, JSON, ("Origin", "https://évil.example")],
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(status, 403, "an unreadable Origin");
    let sid = initialize(&dome, "2025-11-25");
    let (status, _, _) = post(
        &dome,
        &[
            ACCEPT,
            JSON,
            ("Origin", "http://localhost:3000"),
            ("Mcp-Session-Id", &sid),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(status, 200, "loopback origins are fine");
    assert_eq!(http(dome.mcp, "GET", "/other", &[], "").0, 404);
}

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

fn demo_stats(addr: std::net::SocketAddr) -> Value {
    let (_, _, body) = http(addr, "GET", "/demo-stats", &[], "");
    serde_json::from_str(&body).unwrap()
}

fn wait_demo(addr: std::net::SocketAddr, key: &str) {
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
fn start_slow(dome: &Dome, headers: &[(&str, &str)], body: &str) -> (TcpStream, String) {
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
