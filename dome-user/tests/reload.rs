//! Live reload: a changed file is applied without dropping sessions, a bad
//! file is refused with file, line and field while the running config stays,
//! SIGHUP reloads, listener changes wait for a restart, and a call in flight
//! finishes on the config it started with.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

const H: [(&str, &str); 2] = [
    ("Accept", "application/json, text/event-stream"),
    ("Content-Type", "application/json"),
];

fn upstream(name: &str, addr: std::net::SocketAddr, prefix: &str) -> String {
    format!("[[upstream]]\nname = \"{name}\"\nurl = \"http://{addr}/mcp\"\nprefix = \"{prefix}\"\n")
}

fn wait_for(dome: &Dome, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = dome.stats_json();
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened: {}",
            s["config"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tool_names(dome: &Dome, sid: &str) -> Vec<String> {
    let mut h = H.to_vec();
    h.push(("Mcp-Session-Id", sid));
    let (status, _, body) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &h,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn initialize(dome: &Dome) -> String {
    let body = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (status, h, _) = http(dome.mcp, "POST", "/mcp", &H, body);
    assert_eq!(status, 200);
    header(&h, "mcp-session-id").unwrap().to_string()
}

#[test]
fn reload_applies_good_files_refuses_bad_ones_and_keeps_sessions() {
    let (_a, a) = start_demo(&[]);
    let (_b, b) = start_demo(&[]);
    let dome = start_dome("reload", &upstream("a", a, "never"));
    let sid = initialize(&dome);
    assert_eq!(tool_names(&dome, &sid), ["echo", "slow", "records"]);
    let v1 = dome.stats_json()["config"]["version"]
        .as_str()
        .unwrap()
        .to_string();

    // A second upstream appears when the file changes; the session survives.
    dome.rewrite(&format!(
        "{}\n{}",
        upstream("a", a, "never"),
        upstream("b", b, "always")
    ));
    let s = wait_for(&dome, "reload", |s| s["config"]["version"] != v1.as_str());
    assert_eq!(s["config"]["last_reload"]["ok"], true, "{}", s["config"]);
    assert_eq!(
        tool_names(&dome, &sid),
        ["echo", "slow", "records", "b.echo", "b.slow", "b.records"]
    );
    let v2 = s["config"]["version"].as_str().unwrap().to_string();

    // A bad file is refused, named by file, line and field; the old one stays.
    dome.rewrite(&format!(
        "{}\n[mcp]\npage_size = \"many\"\n",
        upstream("a", a, "never")
    ));
    let s = wait_for(&dome, "refusal", |s| {
        s["config"]["last_reload"]["ok"] == false
    });
    let err = s["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("{}:14:", dome.config.display())),
        "{err}"
    );
    assert!(err.contains("mcp.page_size"), "{err}");
    assert_eq!(s["config"]["version"], v2.as_str());
    assert_eq!(tool_names(&dome, &sid).len(), 6, "still the running config");

    // SIGHUP reloads too; a listener change waits for a restart.
    let other = free_port();
    std::fs::write(
        &dome.config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{other}\"\n[stats]\nlisten = \"{}\"\n[xdp]\nenabled = false\n[mcp]\npage_size = 2\n{}{}{}",
            dome.stats,
            upstream("a", a, "never"),
            auth_off(&dome.config),
            allow_all_policy(&dome.config)
        ),
    )
    .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(dome.proc.child.id() as i32, libc::SIGHUP) };
    let s = wait_for(&dome, "SIGHUP reload", |s| {
        s["config"]["last_reload"]["ok"] == true && s["config"]["version"] != v2.as_str()
    });
    assert_eq!(
        s["config"]["last_reload"]["needs_restart"],
        json!(["server.listen"])
    );
    assert_eq!(
        tool_names(&dome, &sid),
        ["echo", "slow"],
        "page_size 2 applied on the old listener"
    );
    assert_eq!(s["sessions"], 1);
}

#[test]
fn a_call_in_flight_finishes_on_the_config_it_started_with() {
    let (_a, a) = start_demo(&[]);
    let dome = start_dome("inflight", &upstream("a", a, "never"));
    let sid = initialize(&dome);
    let v1 = dome.stats_json()["config"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"jsonrpc": "2.0", "id": "long", "method": "tools/call", "params": {
        "name": "slow", "arguments": {"steps": 4, "delay_ms": 500}, "_meta": {"progressToken": 1}}})
    .to_string();
    let mut s = TcpStream::connect(dome.mcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The upstream leaves the config while the call runs.
    std::thread::sleep(Duration::from_millis(300));
    dome.rewrite("");
    wait_for(&dome, "reload", |s| s["config"]["version"] != v1.as_str());
    assert!(tool_names(&dome, &sid).is_empty(), "no upstreams now");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.contains("done after 4 steps") && out.contains("\"id\":\"long\""),
        "{out}"
    );
}
