//! Streamable HTTP rules of both eras, checked on the wire with raw HTTP
//! against a real Dome in front of the real demo upstream.

#[path = "../common/mod.rs"]
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

mod stateless;
