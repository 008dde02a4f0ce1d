//! The admin API and the `dome agents` / `dome blocks` commands: agent
//! registration, rotation, disabling and deletion across a restart, and
//! escalation blocks (user space here; the kernel half is in `kernel_escalation`).

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-for-the-tests";

/// Runs `dome ARGS --config CONFIG` with the admin token; (success, JSON out).
fn cli(dome: &Dome, args: &[&str]) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_dome"))
        .args(args)
        .arg("--config")
        .arg(&dome.config)
        .env("DOME_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

/// An `echo` call with `key`: the HTTP status and the JSON-RPC error code
/// (a policy denial is 200 with -32005; an authentication failure is 401
/// or 403 with -32003).
fn echo(dome: &Dome, key: &str) -> (u16, Option<i64>) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "m"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let auth = format!("Bearer {key}");
    let (status, _, answer) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
            ("Authorization", &auth),
        ],
        &body,
    );
    let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
    (status, v["error"]["code"].as_i64())
}

fn dome_with_admin(name: &str, extra: &str) -> (Proc, Dome, std::net::SocketAddr) {
    let (demo_proc, demo) = start_demo(&[]);
    let admin = local(free_port());
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.admin-data", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let dome = start_dome(
        name,
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             [auth]\ndata_dir = \"{}\"\n\
             [admin]\nlisten = \"{admin}\"\ntoken_sha256 = \"{}\"\n\
             [[tenant]]\nname = \"acme\"\n\
             [[agent]]\nid = \"cfg-bot\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n{extra}",
            data.display(),
            sha(ADMIN_TOKEN),
            sha("dome_cfg-bot_config-agent-key-for-tests")
        ),
    );
    (demo_proc, dome, admin)
}

#[test]
fn agents_are_registered_rotated_disabled_and_deleted_across_a_restart() {
    let (_demo, mut dome, admin) = dome_with_admin("admin", "");

    // The admin API wants its token.
    let (status, _, _) = http(admin, "GET", "/agents", &[], "");
    assert_eq!(status, 401);
    let (status, _, _) = http(
        admin,
        "GET",
        "/agents",
        &[("Authorization", "Bearer wrong")],
        "",
    );
    assert_eq!(status, 401);

    let (ok, v) = cli(
        &dome,
        &[
            "agents",
            "register",
            "--tenant",
            "acme",
            "--name",
            "Billing bot",
            "--label",
            "billing",
        ],
    );
    assert!(ok, "{v}");
    let key = v["api_key"].as_str().unwrap().to_string();
    let id = v["agent"]["id"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("dome_{id}_")), "{key}");
    assert_eq!(v["agent"]["labels"], json!(["billing"]));
    assert_eq!(echo(&dome, &key), (200, None));

    // A registration for no tenant is refused, and nothing is stored.
    let (ok, v) = cli(
        &dome,
        &["agents", "register", "--tenant", "nobody", "--name", "x"],
    );
    assert!(!ok, "{v}");

    // Listed with both agents; never a key or a hash.
    let (ok, v) = cli(&dome, &["agents", "list"]);
    assert!(ok);
    let text = v.to_string();
    assert!(!text.contains(&key) && !text.contains(&sha(&key)), "{text}");
    let ids: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{v}");
    assert!(
        ids.contains(&"cfg-bot") && ids.contains(&id.as_str()),
        "{v}"
    );

    // Registration survives a restart, slot included.
    let slot = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap()["slot"]
        .clone();
    dome.restart();
    assert_eq!(echo(&dome, &key), (200, None));
    let (_, v) = cli(&dome, &["agents", "show", &id]);
    assert_eq!(v["slot"], slot, "{v}");

    // Rotation with an overlap: both keys work; with none, only the new one.
    let (ok, v) = cli(&dome, &["agents", "rotate", &id]);
    assert!(ok, "{v}");
    let key2 = v["api_key"].as_str().unwrap().to_string();
    assert_eq!(echo(&dome, &key2), (200, None));
    assert_eq!(echo(&dome, &key), (200, None), "inside the overlap");
    let (ok, v) = cli(&dome, &["agents", "rotate", &id, "--overlap-s", "0"]);
    assert!(ok, "{v}");
    let key3 = v["api_key"].as_str().unwrap().to_string();
    assert_eq!(echo(&dome, &key3), (200, None));
    assert_eq!(echo(&dome, &key), (401, Some(-32003)));
    assert_eq!(echo(&dome, &key2), (401, Some(-32003)));

    let (ok, _) = cli(&dome, &["agents", "disable", &id]);
    assert!(ok);
    assert_eq!(echo(&dome, &key3), (401, Some(-32003)));
    let (ok, _) = cli(&dome, &["agents", "enable", &id]);
    assert!(ok);
    assert_eq!(echo(&dome, &key3), (200, None));

    // Agents of the config file are changed there, not here.
    let (ok, v) = cli(&dome, &["agents", "disable", "cfg-bot"]);
    assert!(!ok, "{v}");

    let (ok, _) = cli(&dome, &["agents", "delete", &id]);
    assert!(ok);
    assert_eq!(echo(&dome, &key3), (401, Some(-32003)));
    let (ok, _) = cli(&dome, &["agents", "show", &id]);
    assert!(!ok);
}

#[test]
fn repeated_bad_credentials_get_their_claim_blocked_until_lifted() {
    let (_demo, dome, _admin) = dome_with_admin(
        "escalate",
        "[escalation]\nmax_strikes = 3\nwindow_s = 60\nblock_s = 600\n",
    );
    let good = "dome_cfg-bot_config-agent-key-for-tests";
    let wrong = "dome_cfg-bot_a-wrong-key-a-wrong-key";
    assert_eq!(echo(&dome, good), (200, None));
    for _ in 0..3 {
        assert_eq!(echo(&dome, wrong), (401, Some(-32003)));
    }
    // Blocked: the claim's failing attempts are turned away...
    assert_eq!(echo(&dome, wrong), (403, Some(-32003)));
    // ...but not the agent's real key, from the same source.
    assert_eq!(echo(&dome, good), (200, None));
    let (ok, v) = cli(&dome, &["blocks", "list"]);
    assert!(ok, "{v}");
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{v}");
    assert_eq!(blocks[0]["subject"]["claim"], "agent cfg-bot", "{v}");
    assert_eq!(v["escalations"], 1);
    let key = blocks[0]["key"].as_str().unwrap().to_string();
    let (ok, v) = cli(&dome, &["blocks", "lift", &key]);
    assert!(ok, "{v}");
    assert_eq!(echo(&dome, wrong), (401, Some(-32003)));
}

/// One request from a chosen loopback source address; `None` when the
/// connection cannot be made (its SYN was dropped).
#[cfg(feature = "kernel-tests")]
fn request_from(src: &str, dome: &Dome, key: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect_timeout(&dome.mcp.into(), std::time::Duration::from_secs(1))
        .ok()?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "m"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n\
         Mcp-Name: echo\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Escalation never drops an address in the kernel for its bad logins (the
/// kernel cannot tell an attacker from the agents behind the same NAT):
/// after repeated bad credentials from one source, an agent with a valid
/// key still connects from it and is served; an authenticated connection's
/// flow is bound to its agent's identity. Needs root (XDP on `lo`, SKB mode).
#[cfg(feature = "kernel-tests")]
#[test]
fn kernel_escalation_never_drops_an_address_for_its_bad_logins() {
    let (_demo, dome, _admin) = dome_with_admin(
        "kernel-escalate",
        "[escalation]\nmax_strikes = 3\nwindow_s = 60\nblock_s = 600\n",
    );
    // start_dome turns XDP off; this test needs it on `lo`.
    let text = std::fs::read_to_string(&dome.config).unwrap().replace(
        "[xdp]\nenabled = false\n",
        "[xdp]\ninterface = \"lo\"\nmode = \"skb\"\n",
    );
    std::fs::write(&dome.config, text).unwrap();
    let mut dome = dome;
    dome.restart();
    let s = dome.stats_json();
    assert_eq!(s["xdp"]["status"], "attached", "{s}");

    let good = "dome_cfg-bot_config-agent-key-for-tests";
    assert_eq!(request_from("127.0.0.1", &dome, good), Some(200));
    let s = dome.stats_json();
    assert!(
        s["xdp"]["counters"]["pass_bound"].as_u64().unwrap() >= 1,
        "the authenticated flow was bound: {s}"
    );

    for _ in 0..5 {
        assert!(matches!(
            request_from("127.0.0.77", &dome, "dome_cfg-bot_a-wrong-key-a-wrong-key"),
            Some(401 | 403)
        ));
        assert!(matches!(
            request_from("127.0.0.77", &dome, "garbage"),
            Some(401 | 403)
        ));
    }
    // Anonymous attempts from there are refused now, in user space...
    assert_eq!(request_from("127.0.0.77", &dome, "garbage"), Some(403));
    // ...while a valid key from the same address connects and is served.
    assert_eq!(request_from("127.0.0.77", &dome, good), Some(200));
    let s = dome.stats_json();
    assert_eq!(
        s["xdp"]["counters"]["drop_blocklist"].as_u64().unwrap_or(0),
        0,
        "{s}"
    );
}

/// Every activated policy version is kept; `dome policy rollback` puts the
/// previous one's files back exactly and the live reload activates it.
#[test]
fn policy_rollback_restores_the_previous_version_exactly() {
    let (_demo, dome, _admin) = dome_with_admin("rollback", "");
    let good = "dome_cfg-bot_config-agent-key-for-tests";
    let policies = dome.config.with_extension("policies");
    let original = std::fs::read_to_string(policies.join("allow-all.toml")).unwrap();
    let v1 = dome.stats_json()["config"]["policy_version"].clone();
    assert_eq!(echo(&dome, good), (200, None));

    std::fs::write(
        policies.join("no-echo.toml"),
        "message = \"stop echo\"\n[[rule]]\nid = \"no-echo\"\neffect = \"deny\"\nreason = \"echo is off\"\n[rule.when]\ntool = \"echo\"\n",
    )
    .unwrap();
    let wait = |pred: &dyn Fn(&Value) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = dome.stats_json();
            if pred(&s) {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "{s}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait(&|s| s["config"]["policy_version"] != v1);
    assert_eq!(
        echo(&dome, good),
        (200, Some(-32005)),
        "denied by the new policy"
    );

    let (ok, v) = cli(&dome, &["policy", "versions"]);
    assert!(ok, "{v}");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{v}");
    assert_eq!(versions[1]["message"], "stop echo");

    let (ok, v) = cli(&dome, &["policy", "rollback"]);
    assert!(ok, "{v}");
    assert_eq!(v["restored"], v1);
    wait(&|s| s["config"]["policy_version"] == v1);
    assert_eq!(echo(&dome, good), (200, None));
    assert!(!policies.join("no-echo.toml").exists());
    assert_eq!(
        std::fs::read_to_string(policies.join("allow-all.toml")).unwrap(),
        original
    );
    // An unknown version is refused and changes nothing.
    let (ok, _) = cli(&dome, &["policy", "rollback", "0000000000000000"]);
    assert!(!ok);
}
