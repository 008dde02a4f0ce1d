//! The demo upstream on the wire: raw HTTP/1.1, read to the end.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(options: dome_demo::DemoOptions) -> SocketAddr {
    let (addr, _task) = dome_demo::serve_with("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    addr
}

/// POSTs `body` to `/mcp` and returns the status, the head and the body.
async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &Value) -> (u16, String, String) {
    let body = body.to_string();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn stateless(method: &str, mut params: Value) -> (Vec<(&'static str, String)>, Value) {
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": "p"});
    let mut h = vec![
        ("MCP-Protocol-Version", "2026-07-28".to_string()),
        ("Mcp-Method", method.to_string()),
    ];
    if let Some(n) = params["name"].as_str() {
        h.push(("Mcp-Name", n.to_string()));
    }
    (
        h,
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
    )
}

fn refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The JSON-RPC messages of an event stream, or the one JSON body.
fn messages(body: &str) -> Vec<Value> {
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    if events.is_empty() {
        vec![serde_json::from_str(body).unwrap()]
    } else {
        events
    }
}

#[tokio::test]
async fn stateless_echo_and_slow() {
    let addr = start(Default::default()).await;
    let (h, body) = stateless(
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "m"}}),
    );
    let (status, _, text) = post(addr, &refs(&h), &body).await;
    assert_eq!(status, 200, "{text}");
    let m = &messages(&text)[0];
    assert_eq!(m["result"]["structuredContent"]["message"], "m", "{m}");
    assert_eq!(m["result"]["resultType"], "complete", "{m}");

    let (h, body) = stateless(
        "tools/call",
        json!({"name": "slow", "arguments": {"steps": 2, "delay_ms": 1}}),
    );
    let (_, _, text) = post(addr, &refs(&h), &body).await;
    let methods: Vec<Value> = messages(&text)
        .iter()
        .map(|m| m["method"].clone())
        .collect();
    assert_eq!(
        methods,
        [
            json!("notifications/progress"),
            json!("notifications/progress"),
            Value::Null
        ],
        "no log line unless asked for: {text}"
    );
}

/// In the session era the log line of a call comes on the call's stream
/// (rmcp alone would send it to the session's GET stream).
#[tokio::test]
async fn a_session_call_s_log_line_comes_on_its_stream() {
    let addr = start(Default::default()).await;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (status, head, text) = post(addr, &[], &init).await;
    assert_eq!(status, 200, "{text}");
    let sid = head
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .unwrap()
        .to_string();
    let with_sid = [
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(addr, &with_sid, &note).await.0, 202);
    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "slow", "arguments": {"steps": 1, "delay_ms": 1}, "_meta": {"progressToken": "p"}}});
    let (_, _, text) = post(addr, &with_sid, &call).await;
    let got: Vec<(Value, Value)> = messages(&text)
        .iter()
        .map(|m| (m["method"].clone(), m["id"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("notifications/message"), Value::Null),
            (json!("notifications/progress"), Value::Null),
            (Value::Null, json!(5)),
        ],
        "{text}"
    );
    assert!(!text.contains("resultType"), "a session-era result: {text}");
}

#[tokio::test]
async fn lean_answers_what_the_benchmark_asks() {
    let addr = start(dome_demo::DemoOptions {
        lean: true,
        ..Default::default()
    })
    .await;
    let (h, body) = stateless("server/discover", json!({}));
    let (status, _, text) = post(addr, &refs(&h), &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        messages(&text)[0]["result"]["supportedVersions"],
        json!(["2026-07-28"])
    );
    let (h, body) = stateless(
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "m"}}),
    );
    let (status, head, text) = post(addr, &refs(&h), &body).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(messages(&text)[0]["result"]["content"][0]["text"], "m");
    let (h, body) = stateless("ping", json!({}));
    assert_eq!(post(addr, &refs(&h), &body).await.0, 404);
}
