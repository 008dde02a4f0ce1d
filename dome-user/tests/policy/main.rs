//! Policy through the real `dome` binary: decisions on identity, tool,
//! arguments and intent; tool visibility; obligations; live reload that
//! refuses a broken or failing policy and keeps the old one serving.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};

const SUPPORT: &str = "dome_support-bot_key-of-the-support-agent";
const SALES: &str = "dome_sales-bot_key-of-the-sales-agent";

const POLICY: &str = r#"
[[rule]]
id = "echo-for-acme"
effect = "allow"
[rule.when]
tenant = "acme"
tool = "echo"
args = [{ path = "/message", op = "max_len", max = 10 }]

[[rule]]
id = "records-for-support"
effect = "allow"
[rule.when]
labels = ["support"]
tool = "records"
[rule.obligations]
require_intent = true
redact = ["email", "card"]

[[rule]]
id = "slow-hidden-result"
effect = "allow"
[rule.when]
tool = "slow"
[rule.obligations]
redact = ["regex:done after \\d+ steps"]

[[test]]
name = "support reads records"
request = { tenant = "acme", labels = ["support"], tool = "records", intent = "help a customer" }
expect = "allow"
"#;

fn call(tool: &str, args: Value, intent: Option<&str>) -> String {
    let mut meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                          "io.modelcontextprotocol/clientCapabilities": {}});
    if let Some(i) = intent {
        meta["dome/intent"] = i.into();
    }
    json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
           "params": {"name": tool, "arguments": args, "_meta": meta}})
    .to_string()
}

fn post(dome: &Dome, key: &str, method: &str, name: &str, body: &str) -> (u16, Value) {
    let (status, text) = post_text(dome, key, method, name, body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A stateless-era request as `key`'s agent; the status and the body as
/// it came (JSON or SSE).
fn post_text(dome: &Dome, key: &str, method: &str, name: &str, body: &str) -> (u16, String) {
    let auth = format!("Bearer {key}");
    let (status, _, text) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", method),
            ("Mcp-Name", name),
            ("Authorization", &auth),
        ],
        body,
    );
    (status, text)
}

fn tools(dome: &Dome, key: &str) -> Vec<String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let auth = format!("Bearer {key}");
    let (_, _, text) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/list"),
            ("Authorization", &auth),
        ],
        &body,
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn start(name: &str) -> (Proc, Dome, std::path::PathBuf) {
    start_with(name, &[], POLICY)
}

fn start_with(name: &str, demo_flags: &[&str], policy: &str) -> (Proc, Dome, std::path::PathBuf) {
    let (demo_proc, demo) = start_demo(demo_flags);
    let upstream = format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n");
    let (dome, policies) = start_with_upstream(name, &upstream, policy);
    (demo_proc, dome, policies)
}

/// A fresh policy folder for the test `name`, holding `policy`.
fn policy_dir(name: &str, policy: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.rules", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.toml"), policy).unwrap();
    dir
}

/// Dome in front of `upstream` (its TOML), with `policy` and the two
/// agents of tenant `acme`; also the policy folder.
fn start_with_upstream(name: &str, upstream: &str, policy: &str) -> (Dome, std::path::PathBuf) {
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let policies = policy_dir(name, policy);
    let data = tmp.join(format!("{name}-{}.agents-data", std::process::id()));
    let dome = start_dome(
        name,
        &format!(
            "{upstream}\
             [auth]\ndata_dir = \"{}\"\n[policy]\ndir = \"{}\"\n\
             [[tenant]]\nname = \"acme\"\n\
             [[agent]]\nid = \"support-bot\"\ntenant = \"acme\"\nlabels = [\"support\"]\napi_keys = [\"{}\"]\n\
             [[agent]]\nid = \"sales-bot\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n",
            data.display(),
            policies.display(),
            sha(SUPPORT),
            sha(SALES)
        ),
    );
    (dome, policies)
}

#[test]
fn calls_are_judged_and_callers_see_only_what_they_may_call() {
    let (_demo, dome, _) = start("policy-decide");
    // Visibility equals authorization.
    assert_eq!(tools(&dome, SUPPORT), ["echo", "slow", "records"]);
    assert_eq!(tools(&dome, SALES), ["echo", "slow"]);

    let (status, v) = post(
        &dome,
        SALES,
        "tools/call",
        "echo",
        &call("echo", json!({"message": "short"}), None),
    );
    assert_eq!(status, 200, "{v}");
    // An argument outside what the rule allows: default deny, a stable code,
    // a reason without the policy's internals.
    let (status, v) = post(
        &dome,
        SALES,
        "tools/call",
        "echo",
        &call("echo", json!({"message": "far too long a message"}), None),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["code"], -32005, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        !msg.contains("echo-for-acme") && !msg.contains("max_len"),
        "{msg}"
    );
    // Not a support agent.
    let (status, v) = post(
        &dome,
        SALES,
        "tools/call",
        "records",
        &call("records", json!({"count": 1}), Some("x")),
    );
    assert_eq!((status, &v["error"]["code"]), (200, &json!(-32005)), "{v}");
    // The obligation: support may read records only with a stated intent.
    let (status, v) = post(
        &dome,
        SUPPORT,
        "tools/call",
        "records",
        &call("records", json!({"count": 1}), None),
    );
    assert_eq!((status, &v["error"]["code"]), (200, &json!(-32005)), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("intent"),
        "{v}"
    );
    let (status, v) = post(
        &dome,
        SUPPORT,
        "tools/call",
        "records",
        &call("records", json!({"count": 1}), Some("answer ticket 42")),
    );
    assert_eq!(status, 200, "{v}");
    // The intent may come in the Dome-Intent header instead.
    let auth = format!("Bearer {SUPPORT}");
    let (status, _, body) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "records"),
            ("Authorization", &auth),
            ("Dome-Intent", "answer ticket 43"),
        ],
        &call("records", json!({"count": 1}), None),
    );
    assert_eq!(status, 200, "{body}");
    // The policy version is on /stats.
    let s = dome.stats_json();
    assert_eq!(s["config"]["policy_rules"], 3, "{s}");
}

/// Echo allowed to everyone, with deny rules an attacker would try to
/// slip past by choosing the JSON type of an argument.
const HOSTILE_TYPES: &str = r#"
[[rule]]
id = "echo-for-all"
effect = "allow"
[rule.when]
tool = "echo"

[[rule]]
id = "no-big-amounts"
effect = "deny"
reason = "amounts over 1000 need a human"
[rule.when]
tool = "echo"
args = [{ path = "/amount", op = "range", min = 1001 }]

[[rule]]
id = "no-rm"
effect = "deny"
reason = "no deleting"
[rule.when]
tool = "echo"
args = [{ path = "/cmd", op = "regex", value = "rm\\s+-rf" }]
"#;

/// Whether `args` to `echo` are denied (-32005) or answered.
fn denied(dome: &Dome, args: Value) -> bool {
    let (status, v) = post(
        dome,
        SALES,
        "tools/call",
        "echo",
        &call("echo", args.clone(), None),
    );
    assert_eq!(status, 200, "{args}: {v}");
    match v["error"]["code"].as_i64() {
        Some(-32005) => true,
        None => false,
        _ => panic!("{args}: {v}"),
    }
}

#[test]
fn a_deny_rule_is_not_passed_by_changing_an_arguments_type() {
    let (_demo, dome, _) = start_with("policy-types", &[], HOSTILE_TYPES);
    // What the rules are for.
    assert!(!denied(&dome, json!({"message": "hi", "amount": 5})));
    assert!(!denied(&dome, json!({"message": "hi", "amount": "5"})));
    assert!(!denied(&dome, json!({"message": "hi", "cmd": ["ls -l"]})));
    assert!(denied(&dome, json!({"amount": 5000})));
    assert!(denied(&dome, json!({"cmd": "rm -rf /"})));
    // The number as a string, in the forms a lenient SDK reads as 5000.
    for amount in [
        json!("5000"),
        json!(" 5_000 "),
        json!("5e3"),
        json!("0x1388"),
        json!([5000]),
    ] {
        assert!(denied(&dome, json!({ "amount": amount })), "{amount}");
    }
    // The command wrapped in an array or an object.
    for cmd in [
        json!(["rm -rf /"]),
        json!({"argv": ["sh", "-c", "rm  -rf /"]}),
    ] {
        assert!(denied(&dome, json!({ "cmd": cmd })), "{cmd}");
    }
    // A lone surrogate elsewhere in the arguments does not get them past
    // policy unjudged: the message is no JSON Dome reads (serde_json
    // refuses it too; simd-json 0.15 read it as U+0000) and goes nowhere.
    let body = call("echo", json!({"amount": 5000, "note": "NOTE"}), None)
        .replace("\"NOTE\"", r#""\ud800""#);
    let (status, v) = post(&dome, SALES, "tools/call", "echo", &body);
    assert_eq!((status, &v["error"]["code"]), (400, &json!(-32700)), "{v}");
}

#[test]
fn a_path_prefix_rule_sees_through_every_spelling_of_a_path() {
    let policy = r#"
[[rule]]
id = "echo-for-all"
effect = "allow"
[rule.when]
tool = "echo"

[[rule]]
id = "not-etc"
effect = "deny"
reason = "not under /etc"
[rule.when]
tool = "echo"
args = [{ path = "/path", op = "path_prefix", value = "/etc" }]
"#;
    let (_demo, dome, _) = start_with("policy-paths", &[], policy);
    for path in ["/srv/notes.txt", "/etcetera/x", "/tmp/etc/x"] {
        assert!(!denied(&dome, json!({ "path": path })), "{path}");
    }
    for path in [
        "/etc/shadow",
        "//etc/shadow",
        "/./etc/x",
        "/tmp/../etc/x",
        "/tmp/%2e%2e/etc/shadow",
        "etc/shadow",
    ] {
        assert!(denied(&dome, json!({ "path": path })), "{path}");
    }
}

#[test]
fn a_broken_or_failing_policy_is_refused_and_the_old_one_keeps_serving() {
    let (_demo, dome, policies) = start("policy-reload");
    let before = dome.stats_json()["config"]["policy_version"].clone();
    let wait_reload = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = dome.stats_json();
            if pred(&s) {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {s}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // A file that does not compile: refused with its file and line.
    std::fs::write(
        policies.join("zz-broken.toml"),
        "[[rule]]\nid = \"x\"\neffect = \"maybe\"\n",
    )
    .unwrap();
    let s = wait_reload("broken refused", &|s| {
        s["config"]["last_reload"]["ok"] == false
    });
    let err = s["config"]["last_reload"]["error"].as_str().unwrap();
    assert!(err.contains("zz-broken.toml:3"), "{err}");
    assert_eq!(s["config"]["policy_version"], before);
    assert_eq!(
        tools(&dome, SUPPORT),
        ["echo", "slow", "records"],
        "the old policy still serves"
    );

    // A policy whose own tests fail: refused too.
    std::fs::write(
        policies.join("zz-broken.toml"),
        "[[test]]\nname = \"sales reads records\"\nrequest = { tenant = \"acme\", tool = \"records\" }\nexpect = \"allow\"\n",
    )
    .unwrap();
    let s = wait_reload("failing tests refused", &|s| {
        s["config"]["last_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("sales reads records"))
    });
    assert_eq!(s["config"]["policy_version"], before);

    // A good change applies live: echo for nobody now.
    std::fs::remove_file(policies.join("zz-broken.toml")).unwrap();
    std::fs::write(
        policies.join("main.toml"),
        POLICY.replace("tool = \"echo\"", "tool = \"echo-nobody-has\""),
    )
    .unwrap();
    wait_reload("good change applied", &|s| {
        s["config"]["last_reload"]["ok"] == true && s["config"]["policy_version"] != before
    });
    assert_eq!(tools(&dome, SALES), ["slow"]);
    let (status, v) = post(
        &dome,
        SALES,
        "tools/call",
        "echo",
        &call("echo", json!({"message": "hi"}), None),
    );
    assert_eq!((status, &v["error"]["code"]), (200, &json!(-32005)), "{v}");
}

/// The policy's redactions: text and structured content of a result lose
/// the e-mail addresses and card numbers (the structure and types stay, an
/// e-mail field keeps an address shape), also on a streamed result; the
/// counts show on /stats.
#[test]
fn results_are_redacted_as_the_rule_says() {
    let (_demo, dome, _) = start("policy-redact");
    let (status, v) = post(
        &dome,
        SUPPORT,
        "tools/call",
        "records",
        &call("records", json!({"count": 2}), Some("answer ticket 42")),
    );
    assert_eq!(status, 200, "{v}");
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        !text.contains("@example.com") && !text.contains("4111"),
        "{text}"
    );
    // The text was JSON and still is.
    let rows: Value = serde_json::from_str(text).unwrap();
    assert_eq!(rows[1]["email"], "[REDACTED:email]");
    let sc = &v["result"]["structuredContent"]["records"];
    assert_eq!(sc[0]["email"], "redacted@redacted.invalid", "{v}");
    assert_eq!(sc[0]["card"], "[REDACTED:card]");
    assert_eq!(sc[0]["id"], 0, "numbers stay numbers");
    assert_eq!(
        sc[1]["name"], "Customer 1",
        "what matches no detector stays"
    );

    // A streamed result (SSE with progress): its final result is redacted.
    let (status, _, body) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "slow"),
            ("Authorization", &format!("Bearer {SALES}")),
        ],
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
            "name": "slow", "arguments": {"steps": 2, "delay_ms": 10},
            "_meta": {"progressToken": "p",
                      "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}})
        .to_string(),
    );
    assert_eq!(status, 200);
    assert!(body.contains("notifications/progress"), "{body}");
    assert!(!body.contains("done after"), "{body}");
    assert!(body.contains("[REDACTED]"), "{body}");

    let s = dome.stats_json();
    assert!(s["redactions"]["email"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["redactions"]["card"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["redactions"]["custom"].as_u64().unwrap() >= 1, "{s}");
}

/// A shadow policy judges beside the active one without enforcing:
/// disagreements are counted; `dome policy diff` shows what would change.
#[test]
fn a_shadow_policy_is_judged_but_not_enforced() {
    let (_demo, demo) = start_demo(&[]);
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let active = tmp.join(format!("shadow-{}.active", std::process::id()));
    let shadow = tmp.join(format!("shadow-{}.shadow", std::process::id()));
    for (d, text) in [
        (&active, POLICY.to_string()),
        (&shadow, "[[rule]]\nid = \"nothing-but-records\"\neffect = \"allow\"\n[rule.when]\ntool = \"records\"\n".to_string()),
    ] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("main.toml"), text).unwrap();
    }
    let data = tmp.join(format!("shadow-{}.agents-data", std::process::id()));
    let dome = start_dome(
        "policy-shadow",
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             [auth]\ndata_dir = \"{}\"\n[policy]\ndir = \"{}\"\nshadow_dir = \"{}\"\n\
             [[tenant]]\nname = \"acme\"\n\
             [[agent]]\nid = \"sales-bot\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n",
            data.display(),
            active.display(),
            shadow.display(),
            sha(SALES)
        ),
    );
    // The active policy allows it; the shadow would not: allowed, counted.
    let (status, _) = post(
        &dome,
        SALES,
        "tools/call",
        "echo",
        &call("echo", json!({"message": "hi"}), None),
    );
    assert_eq!(status, 200);
    let s = dome.stats_json();
    assert_eq!(s["shadow_policy"]["decisions"], 1, "{s}");
    assert_eq!(s["shadow_policy"]["disagreements"], 1, "{s}");

    let requests = tmp.join(format!("shadow-{}.requests.json", std::process::id()));
    std::fs::write(
        &requests,
        json!([{"tenant": "acme", "agent": "sales-bot", "tool": "echo", "args": {"message": "hi"}}]).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dome"))
        .args(["policy", "diff"])
        .arg(&active)
        .arg(&shadow)
        .arg("--requests")
        .arg(&requests)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The active policy's own test case (support reads records) is allowed
    // by both; the echo call would change.
    assert!(
        text.contains("Allow -> Deny") && text.contains("\"tool\":\"echo\""),
        "{text}"
    );
    assert!(text.contains("1 of 2 decisions change"), "{text}");
}

/// Resources (and prompts) are judged by kind and name like tools.
#[test]
fn resources_are_judged_by_kind_and_name() {
    let policy = format!(
        "{POLICY}\n[[rule]]\nid = \"counter-for-support\"\neffect = \"allow\"\n[rule.when]\nkind = \"resource\"\ntool = \"demo://*\"\nlabels = [\"support\"]\n"
    );
    let (_demo, dome, _) = start_with("policy-kinds", &["--resources"], &policy);
    let read = json!({"jsonrpc": "2.0", "id": 4, "method": "resources/read", "params": {
        "uri": "demo://counter",
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let (status, v) = post(&dome, SUPPORT, "resources/read", "demo://counter", &read);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["contents"][0]["uri"], "demo://counter", "{v}");
    let (status, v) = post(&dome, SALES, "resources/read", "demo://counter", &read);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["code"], -32005, "{v}");

    // A subscription is a standing read: judged the same way. Session era:
    for (key, allowed) in [(SUPPORT, true), (SALES, false)] {
        let v = subscribe_in_session(&dome, key, "demo://counter");
        if allowed {
            assert!(v.get("result").is_some(), "{v}");
        } else {
            assert_eq!(v["error"]["code"], -32005, "{v}");
        }
    }
    // Stateless era: a URI the caller may not read is left out of the
    // filter Dome acknowledges.
    for (key, allowed) in [(SUPPORT, true), (SALES, false)] {
        let ack = listen_ack(&dome, key, "demo://counter");
        let uris = &ack["params"]["notifications"]["resourceSubscriptions"];
        let honored = uris
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == "demo://counter"));
        assert_eq!(honored, allowed, "{ack}");
    }
}

/// `initialize`, then `resources/subscribe` to `uri` in that session.
fn subscribe_in_session(dome: &Dome, key: &str, uri: &str) -> Value {
    let auth = format!("Bearer {key}");
    let base = [
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let sid = open_session(dome, key);
    let mut with_session = base.to_vec();
    with_session.push(("Mcp-Session-Id", &sid));
    with_session.push(("MCP-Protocol-Version", "2025-11-25"));
    let sub = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
        "params": {"uri": uri}})
    .to_string();
    let (status, _, text) = http(dome.mcp, "POST", "/mcp", &with_session, &sub);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Opens `subscriptions/listen` for `uri` and returns the acknowledgement
/// (the stream's first event), then closes the stream.
fn listen_ack(dome: &Dome, key: &str, uri: &str) -> Value {
    use std::io::{BufRead, Write};
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "subscriptions/listen", "params": {
        "notifications": {"resourceSubscriptions": [uri]},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let mut s = std::net::TcpStream::connect(dome.mcp).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: dome\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\n\
         Mcp-Method: subscriptions/listen\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            return serde_json::from_str(data).unwrap();
        }
    }
}

#[test]
fn a_rules_budget_replaces_the_configured_one() {
    let policy = r#"
[[rule]]
id = "echo-twice"
effect = "allow"
[rule.when]
tool = "echo"
[rule.obligations]
budget = { calls_per_s = 0.001, burst = 2 }

[[rule]]
id = "slow-unbudgeted"
effect = "allow"
[rule.when]
tool = "slow"
"#;
    let (_demo, dome, _) = start_with("policy-budget", &[], policy);
    let echo = call("echo", json!({"message": "hi"}), None);
    for _ in 0..2 {
        let (status, v) = post(&dome, SALES, "tools/call", "echo", &echo);
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = post(&dome, SALES, "tools/call", "echo", &echo);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["code"], -32004, "{v}");
    // Per agent: another agent has its own two calls.
    let (status, v) = post(&dome, SUPPORT, "tools/call", "echo", &echo);
    assert_eq!(status, 200, "{v}");
    // Tools the rule does not allow keep their configured budget (none).
    for _ in 0..4 {
        let (status, v) = post(
            &dome,
            SALES,
            "tools/call",
            "slow",
            &call("slow", json!({"steps": 1, "delay_ms": 1}), None),
        );
        assert_eq!(status, 200, "{v}");
    }
}

mod redaction;
