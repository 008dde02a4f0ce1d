//! Resource exhaustion by an agent with a valid key, or by a misbehaving
//! upstream, against the real `dome` binary: connections, streams, upstream
//! slots, slow response bodies and buffered response memory are each held
//! to a share one caller cannot take from the others.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

const KEY_A: &str = "dome_agent-a_first-agent-key-for-the-exhaustion-tests";
const KEY_B: &str = "dome_agent-b_second-agent-key-for-the-exhaustion-tests";

/// Dome with agents A and B (authentication required), a policy allowing
/// every call, `server` settings and `rest` (upstreams, sections).
fn with_agents(name: &str, server: &str, rest: &str) -> Dome {
    start_dome_server(name, server, &agents_rest(name, rest))
}

/// `rest` with agents A and B, authentication and an allow-all policy.
fn agents_rest(name: &str, rest: &str) -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.exhaustion", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/p.toml"),
        "[[rule]]\nid = \"all\"\neffect = \"allow\"\n",
    )
    .unwrap();
    format!(
        "{rest}\n[auth]\ndata_dir = \"{data}\"\n[policy]\ndir = \"{pol}\"\n\
         [[tenant]]\nname = \"acme\"\n\
         [[agent]]\nid = \"agent-a\"\ntenant = \"acme\"\napi_keys = [\"{a}\"]\n\
         [[agent]]\nid = \"agent-b\"\ntenant = \"acme\"\napi_keys = [\"{b}\"]\n",
        data = dir.join("data").display(),
        pol = dir.join("policies").display(),
        a = sha(KEY_A),
        b = sha(KEY_B),
    )
}

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
           "io.modelcontextprotocol/clientCapabilities": {}})
}

fn list_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta()}})
        .to_string()
}

fn call_body(tool: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": tool, "arguments": args, "_meta": meta()}})
    .to_string()
}

/// One stateless-era request on an open connection, kept alive: its
/// status and its JSON-RPC message (of a JSON or SSE body); status 0 when
/// the connection closed or timed out first.
fn send(
    s: &mut TcpStream,
    key: &str,
    method: &str,
    name: Option<&str>,
    body: &str,
) -> (u16, Value) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\n\
         Mcp-Method: {method}\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(n) = name {
        req.push_str(&format!("Mcp-Name: {n}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, Value::Null);
    }
    read_response(s)
}

/// Reads one HTTP/1.1 response (Content-Length or chunked).
fn read_response(s: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return (0, Value::Null);
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let lower = head.to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let body = match length {
            Some(n) if rest.len() >= n => rest[..n].to_string(),
            Some(_) => continue,
            None if rest.ends_with("0\r\n\r\n") => dechunk(rest),
            None => continue,
        };
        let message = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .next_back()
            .unwrap_or(&body)
            .trim()
            .to_string();
        return (
            status,
            serde_json::from_str(&message).unwrap_or(Value::Null),
        );
    }
}

/// Whether Dome closed the connection within `wait` (bytes it sent
/// before closing are read past).
fn closed_by_dome(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut b = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap()
}

/// One agent with a valid key used to be able to hold every connection:
/// `tools/list` is free and an authenticated connection was never shed.
/// Now an agent's requests on a connection beyond its share are refused
/// (429, -32004) while another agent's are served; and at the global
/// limit the connection idle longest is closed for a newcomer, even an
/// authenticated one, instead of the newcomer waiting for it to time out.
#[test]
fn one_agent_cannot_hold_every_connection_and_idle_ones_make_room_at_the_limit() {
    let (_demo, demo) = start_demo(&[]);
    let dome = with_agents(
        "conn-per-agent",
        "max_connections = 4\nmax_connections_per_agent = 3\nworkers = 1\nheader_timeout_ms = 60000",
        &format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"),
    );
    // wait_port's probe connections may still be counted briefly.
    std::thread::sleep(Duration::from_millis(300));
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        let mut s = connect(dome.mcp);
        let (status, v) = send(&mut s, KEY_A, "tools/list", None, &list_body());
        assert_eq!(status, 200, "{v}");
        held.push(s);
        std::thread::sleep(Duration::from_millis(30));
    }
    // A's fourth connection: refused, and closed after the answer.
    let mut fourth = connect(dome.mcp);
    let (status, v) = send(&mut fourth, KEY_A, "tools/list", None, &list_body());
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (429, Some(-32004)),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_connections_per_agent"),
        "{v}"
    );
    assert!(closed_by_dome(&mut fourth, Duration::from_secs(2)));
    drop(fourth);
    std::thread::sleep(Duration::from_millis(100));
    // B takes the last slot; A's connections stay open and idle.
    let mut b1 = connect(dome.mcp);
    let (status, v) = send(&mut b1, KEY_B, "tools/list", None, &list_body());
    assert_eq!(status, 200, "{v}");
    // The pool is full of authenticated idle connections: B's next one is
    // served at once, in place of the one idle longest (A's first).
    let started = Instant::now();
    let mut b2 = connect(dome.mcp);
    let (status, v) = send(&mut b2, KEY_B, "tools/list", None, &list_body());
    assert_eq!(status, 200, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the newcomer waited {:?}",
        started.elapsed()
    );
    assert!(
        closed_by_dome(&mut held[0], Duration::from_secs(2)),
        "the connection idle longest was not the one closed"
    );
    // A's shed connection gave its share back: A connects again.
    let mut again = connect(dome.mcp);
    let started = Instant::now();
    let (status, v) = send(&mut again, KEY_A, "tools/list", None, &list_body());
    assert_eq!(status, 200, "{v}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A `tools/call` of `tool` as `key` on a connection of its own; its
/// status and JSON-RPC answer, and how long it took.
fn call(dome: &Dome, key: &str, tool: &str, args: Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let mut s = connect(dome.mcp);
    let (status, v) = send(
        &mut s,
        key,
        "tools/call",
        Some(tool),
        &call_body(tool, args),
    );
    (status, v, started.elapsed())
}

/// One agent could take every slot of an upstream (`max_concurrent_requests`)
/// and make every other agent's calls wait behind its own. Each agent now
/// holds at most its share (half, by default): its calls beyond are refused
/// at once with a retryable -32004 (`data.retryAfterMs`), and another agent's call goes
/// through at once.
#[test]
fn one_agent_cannot_take_every_slot_of_an_upstream() {
    let (_demo, demo) = start_demo(&["--misbehave"]);
    let dome = with_agents(
        "upstream-share",
        "",
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\nmax_concurrent_requests = 4\n"
        ),
    );
    // A sends four calls that each take four seconds, all at once.
    let a: Vec<_> = (0..4)
        .map(|_| {
            let dome_mcp = dome.mcp;
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut s = connect(dome_mcp);
                let (status, v) = send(
                    &mut s,
                    KEY_A,
                    "tools/call",
                    Some("stall"),
                    &call_body("stall", json!({"ms": 4000})),
                );
                (status, v, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // B is not queued behind them.
    let (status, v, took) = call(&dome, KEY_B, "echo", json!({"message": "hi"}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "hi", "{v}");
    assert!(took < Duration::from_secs(2), "B waited {took:?} behind A");
    let answers: Vec<(u16, Value, Duration)> = a.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, v, _)| *status == 200 && v["error"]["code"] == -32004)
        .collect();
    assert_eq!(refused.len(), 2, "{answers:?}");
    for (_, v, took) in &refused {
        assert_eq!(v["error"]["code"], -32004, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("max_requests_per_agent"),
            "{v}"
        );
        assert!(
            *took < Duration::from_secs(2),
            "refused only after {took:?}"
        );
    }
    let served = answers
        .iter()
        .filter(|(status, v, _)| *status == 200 && v["error"].is_null())
        .count();
    assert_eq!(served, 2, "{answers:?}");
}

/// The call failed as the upstream's (-32001), saying `says`, within `within`.
fn assert_upstream_failed(status: u16, v: &Value, took: Duration, says: &str, within: u64) {
    assert_eq!(status, 200, "{}", short(v));
    assert_eq!(v["error"]["code"], -32001, "{}", short(v));
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{}", short(v));
    assert!(
        took < Duration::from_secs(within),
        "answered after {took:?}"
    );
}

fn assert_timed_out(status: u16, v: &Value, took: Duration) {
    assert_upstream_failed(status, v, took, "upstream `demo` timed out", 6);
    // The upstream had the call: sending it again might do it twice.
    assert_eq!(
        v["error"]["data"],
        json!({"upstream": "demo", "retrySafe": false}),
        "{}",
        short(v)
    );
}

/// An upstream's `timeout_ms` bounded only the wait for the answer's head:
/// one that sent its head at once and then a byte a second held the call
/// (a slot, its memory, the caller) for as long as it liked, and so did a
/// streamed answer that went quiet after its first event. Now a whole
/// answer must arrive by the deadline and a stream may not go quiet past
/// `stream_idle_timeout_ms`: the caller gets the usual timeout error, the
/// upstream's connection is dropped, and the record says it timed out.
#[test]
fn an_upstream_that_drips_its_answer_or_goes_quiet_mid_stream_times_out() {
    let (_demo, demo) = start_demo(&["--misbehave"]);
    let dome = with_agents(
        "drip",
        "",
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             timeout_ms = 2000\nstream_idle_timeout_ms = 1500\n"
        ),
    );
    let (status, v, took) = call(
        &dome,
        KEY_A,
        "drip",
        json!({"bytes": 600, "piece": 1, "interval_ms": 1000}),
    );
    assert_timed_out(status, &v, took);
    // One progress event, then a minute of silence.
    let (status, v, took) = call(&dome, KEY_A, "drip_sse", json!({"ms": 60000}));
    assert_timed_out(status, &v, took);
    // The upstream still serves calls that behave.
    let (status, v, _) = call(&dome, KEY_A, "echo", json!({"message": "still here"}));
    assert_eq!(
        (status, v["result"]["content"][0]["text"].as_str()),
        (200, Some("still here")),
        "{v}"
    );
    let records = audit_records(&dome);
    for tool in ["drip", "drip_sse"] {
        let r = records
            .iter()
            .find(|r| r["name"] == tool)
            .unwrap_or_else(|| panic!("no record of {tool}: {records:?}"));
        assert_eq!(
            (r["status"].as_i64(), r["outcome"].as_str()),
            (Some(-32001), Some("error")),
            "{r}"
        );
        assert!(
            r["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("timed out"),
            "{r}"
        );
    }
}

/// Sends a request that may answer with a stream that stays open; returns
/// the status, the head (lower-cased) and the first message (the JSON
/// body of a refusal, or the stream's first event when `event` is set).
fn open(s: &mut TcpStream, request: &str, event: bool) -> (u16, String, Value) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return (0, String::new(), Value::Null);
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let head = head.to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if head.contains("text/event-stream") {
            if !event {
                return (status, head, Value::Null);
            }
            let Some(data) = rest
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .filter(|_| rest.contains("\n\n"))
            else {
                continue;
            };
            return (status, head, serde_json::from_str(data.trim()).unwrap());
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if rest.len() < length {
            continue;
        }
        return (
            status,
            head,
            serde_json::from_str(&rest[..length]).unwrap_or(Value::Null),
        );
    }
}

fn listen_request(key: &str, id: u64) -> String {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": true}, "_meta": meta()}})
    .to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\n\
         Mcp-Method: subscriptions/listen\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A `subscriptions/listen` stream of `key`'s: the connection holding it
/// open and its first event, or the refusal.
fn listen(dome: &Dome, key: &str) -> (TcpStream, u16, Value) {
    let mut s = connect(dome.mcp);
    let (status, _, v) = open(&mut s, &listen_request(key, 5), true);
    (s, status, v)
}

/// The session's GET stream: the connection holding it, and its status
/// (and the refusal's JSON, if refused).
fn get_stream(dome: &Dome, key: &str, session: &str) -> (TcpStream, u16, Value) {
    let mut s = connect(dome.mcp);
    let (status, _, v) = open(
        &mut s,
        &format!(
            "GET /mcp HTTP/1.1\r\nHost: d\r\nAccept: text/event-stream\r\n\
             MCP-Protocol-Version: 2025-11-25\r\nMcp-Session-Id: {session}\r\n\
             Authorization: Bearer {key}\r\n\r\n"
        ),
        false,
    );
    (s, status, v)
}

fn assert_too_many_streams(status: u16, v: &Value) {
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (429, Some(-32004)),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_streams_per_agent"),
        "{v}"
    );
}

/// One agent could open long-lived streams (`subscriptions/listen`, a
/// session's GET stream, one per session up to `max_sessions_per_agent`)
/// until Dome ran out of memory or descriptors. Each agent now holds at
/// most `max_streams_per_agent` of them open: one more is refused with
/// 429 (-32004) while other agents still open theirs, a session's new GET
/// stream replaces its old one rather than counting twice, and a closed
/// stream gives its place back.
#[test]
fn one_agent_cannot_open_streams_without_end() {
    let (_demo, demo) = start_demo(&["--resources"]);
    let dome = with_agents(
        "streams",
        "",
        &format!(
            "[mcp]\nmax_streams_per_agent = 2\n\
             [[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"
        ),
    );
    let (first, status, v) = listen(&dome, KEY_A);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["method"], "notifications/subscriptions/acknowledged",
        "{v}"
    );
    let (_second, status, v) = listen(&dome, KEY_A);
    assert_eq!(status, 200, "{v}");
    let (_, status, v) = listen(&dome, KEY_A);
    assert_too_many_streams(status, &v);
    // Another agent is not held to A's count.
    let (_b, status, v) = listen(&dome, KEY_B);
    assert_eq!(status, 200, "{v}");
    // A closes a stream: its place is free again, for a session's GET stream.
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let one = open_session(&dome, KEY_A);
    let (_get, status, v) = get_stream(&dome, KEY_A, &one);
    assert_eq!(status, 200, "{v}");
    // The session's next GET stream replaces the first: still two open.
    let (_get_again, status, v) = get_stream(&dome, KEY_A, &one);
    assert_eq!(status, 200, "{v}");
    // Another session's is one more than A's share.
    let two = open_session(&dome, KEY_A);
    let (_, status, v) = get_stream(&dome, KEY_A, &two);
    assert_too_many_streams(status, &v);
}

/// At most the first 300 characters of `v`, for a message.
fn short(v: &Value) -> String {
    v.to_string().chars().take(300).collect()
}

fn assert_overloaded(status: u16, v: &Value, took: Duration) {
    assert_upstream_failed(status, v, took, "max_buffered_response_bytes", 3);
}

/// Each upstream answer was capped (`max_response_bytes`), but nothing
/// bounded them together: enough concurrent calls with large, slow answers
/// held any amount of memory. Answers read whole (by the length they
/// declare, else piece by piece) and events still arriving on a stream are
/// now charged to one budget, `[mcp] max_buffered_response_bytes`: an
/// answer that would pass it is dropped with its connection and its call
/// refused with an error naming the key (not a crash, not a 500), and
/// what a finished answer held is free again for the next.
#[test]
fn upstream_answers_held_at_once_stay_within_one_memory_budget() {
    let (_demo, demo) = start_demo(&["--misbehave"]);
    let dome = with_agents(
        "buffered",
        "",
        &format!(
            "[mcp]\nmax_buffered_response_bytes = 100000\n\
             [[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             max_response_bytes = 100000\n"
        ),
    );
    // 60 KB without a declared length, arriving over about two seconds.
    let mcp = dome.mcp;
    let slow = std::thread::spawn(move || {
        let mut s = connect(mcp);
        send(
            &mut s,
            KEY_A,
            "tools/call",
            Some("drip"),
            &call_body(
                "drip",
                json!({"bytes": 60000, "piece": 10000, "interval_ms": 300, "chunked": true}),
            ),
        )
    });
    std::thread::sleep(Duration::from_millis(1000));
    // 80 KB declared while the first holds over 20 KB: refused at once.
    let big = json!({"bytes": 80000, "piece": 80000, "interval_ms": 0});
    let (status, v, took) = call(&dome, KEY_B, "drip", big.clone());
    assert_overloaded(status, &v, took);
    // The first is answered whole.
    let (status, v) = slow.join().unwrap();
    assert_eq!(status, 200, "{}", short(&v));
    assert!(text_len(&v) > 59_000, "{}", short(&v));
    // And what it held is free again: the same call now passes.
    let (status, v, _) = call(&dome, KEY_B, "drip", big);
    assert_eq!(status, 200, "{}", short(&v));
    assert!(text_len(&v) > 79_000);

    // An event stream: an event of 60 KB still arriving holds its bytes,
    // so a second one is refused.
    let stream = std::thread::spawn(move || {
        let mut s = connect(mcp);
        send(
            &mut s,
            KEY_A,
            "tools/call",
            Some("drip_sse"),
            &call_body("drip_sse", json!({"event_bytes": 60000, "ms": 2500})),
        )
    });
    std::thread::sleep(Duration::from_millis(1000));
    let (status, v, took) = call(
        &dome,
        KEY_B,
        "drip_sse",
        json!({"event_bytes": 60000, "ms": 100}),
    );
    assert_overloaded(status, &v, took);
    let (status, v) = stream.join().unwrap();
    assert_eq!(
        (status, v["result"]["content"][0]["text"].as_str()),
        (200, Some("late")),
        "{v}"
    );
    // Dome is up and serving, and says what the budget refused.
    let (status, v, _) = call(&dome, KEY_B, "echo", json!({"message": "fine"}));
    assert_eq!(status, 200, "{v}");
    let stats = dome.stats_json();
    let buffered = &stats["buffered_responses"];
    assert_eq!(buffered["refused"], 2, "{buffered}");
    assert_eq!(buffered["limit"], 100000, "{buffered}");
    // Every answer gave back what it held once it was sent.
    let deadline = Instant::now() + Duration::from_secs(2);
    while dome.stats_json()["buffered_responses"]["bytes"] != 0 {
        assert!(
            Instant::now() < deadline,
            "{}",
            dome.stats_json()["buffered_responses"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text_len(v: &Value) -> usize {
    v["result"]["content"][0]["text"]
        .as_str()
        .map_or(0, str::len)
}

/// `[mcp]`'s new limits apply on reload, as the rest of the section does:
/// a stream refused at a share of one is served once the file says two,
/// and the buffer budget on `/stats` follows the file.
#[test]
fn the_stream_and_buffer_limits_apply_on_reload_without_a_restart() {
    let (_demo, demo) = start_demo(&["--resources"]);
    let rest = |streams: u32, buffered: u32| {
        agents_rest(
            "reload-limits",
            &format!(
                "[mcp]\nmax_streams_per_agent = {streams}\nmax_buffered_response_bytes = {buffered}\n\
                 [[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
                 max_response_bytes = 100000\n"
            ),
        )
    };
    let dome = start_dome_server("reload-limits", "", &rest(1, 100_000));
    let (_first, status, v) = listen(&dome, KEY_A);
    assert_eq!(status, 200, "{v}");
    let (_, status, v) = listen(&dome, KEY_A);
    assert_too_many_streams(status, &v);
    assert_eq!(dome.stats_json()["buffered_responses"]["limit"], 100_000);

    let before = dome.stats_json()["config"]["version"].clone();
    dome.rewrite(&rest(2, 200_000));
    let deadline = Instant::now() + Duration::from_secs(10);
    while dome.stats_json()["config"]["version"] == before {
        assert!(Instant::now() < deadline, "the new file was not loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_second, status, v) = listen(&dome, KEY_A);
    assert_eq!(status, 200, "{v}");
    assert_eq!(dome.stats_json()["buffered_responses"]["limit"], 200_000);
}
