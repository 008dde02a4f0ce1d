//! The audit trail through the real `dome` binary: every call recorded with
//! who, what, why and the decision; queries from the CLI and the admin API;
//! and a crash (SIGKILL under load) after which recovery and verify pass
//! and every call a client saw answered is found.

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const SUPPORT: &str = "dome_support-bot_key-of-the-support-agent";
const ADMIN: &str = "admin-token-for-the-audit-test";

const POLICY: &str = r#"
[[rule]]
id = "echo-logged"
effect = "allow"
[rule.when]
tool = "echo"
[rule.obligations]
log_args = "full"

[[rule]]
id = "records-redacted"
effect = "allow"
[rule.when]
tool = "records"
[rule.obligations]
redact = ["email", "card"]

[[rule]]
id = "no-slow"
effect = "deny"
reason = "slow is off limits"
[rule.when]
tool = "slow"
"#;

fn start(name: &str, audit: &str) -> (Proc, Dome) {
    start_with(name, audit, POLICY, "")
}

/// `agent`: more keys of the agent's table.
fn start_with(name: &str, audit: &str, policy: &str, agent: &str) -> (Proc, Dome) {
    let (demo_proc, demo) = start_demo(&[]);
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let policies = tmp.join(format!("{name}-{}.rules", std::process::id()));
    let _ = std::fs::remove_dir_all(&policies);
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("main.toml"), policy).unwrap();
    let data = tmp.join(format!("{name}-{}.audit-data", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let admin = local(free_port());
    let dome = start_dome(
        name,
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             [auth]\ndata_dir = \"{}\"\n[policy]\ndir = \"{}\"\n\
             [admin]\nlisten = \"{admin}\"\ntoken_sha256 = \"{}\"\n\
             [audit]\nnode = \"edge-test\"\n{audit}\n\
             [[tenant]]\nname = \"acme\"\ndelegation = true\n\
             [[agent]]\nid = \"support-bot\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n\
             tool_budgets = {{ echo = {{ calls_per_s = 0.001, burst = 3 }} }}\n{agent}\n",
            data.display(),
            policies.display(),
            sha(ADMIN),
            sha(SUPPORT)
        ),
    );
    (demo_proc, dome)
}

fn admin_addr(dome: &Dome) -> std::net::SocketAddr {
    let text = std::fs::read_to_string(&dome.config).unwrap();
    let line = text
        .lines()
        .skip_while(|l| *l != "[admin]")
        .find(|l| l.starts_with("listen"))
        .unwrap();
    line.split('"').nth(1).unwrap().parse().unwrap()
}

fn call_body(id: u64, tool: &str, args: Value, intent: Option<&str>) -> String {
    let mut meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                          "io.modelcontextprotocol/clientCapabilities": {}});
    if let Some(i) = intent {
        meta["dome/intent"] = i.into();
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args, "_meta": meta}})
    .to_string()
}

fn post(dome: &Dome, extra: &[(&str, &str)], tool: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {SUPPORT}");
    let mut headers = vec![
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", tool),
        ("Authorization", auth.as_str()),
    ];
    headers.extend_from_slice(extra);
    let (status, _, text) = http(dome.mcp, "POST", "/mcp", &headers, body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `dome audit ARGS… --config CONFIG`: (exit code, stdout, stderr).
fn audit_cli(dome: &Dome, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dome"))
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(&dome.config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Found by `cargo xtask soak`: a call refused over the agent's (or the
/// tenant's) budget is refused before its tool is looked up and judged,
/// and its record had neither the tool nor the intent.
#[test]
fn a_call_over_the_agents_budget_is_recorded_with_its_tool_and_intent() {
    let (_demo, dome) = start_with(
        "audit-over-budget",
        "fsync = \"always\"",
        POLICY,
        "budget = { calls_per_s = 0.001, burst = 1 }",
    );
    let call = |id, intent| {
        post(
            &dome,
            &[],
            "echo",
            &call_body(id, "echo", json!({"message": "x"}), Some(intent)),
        )
    };
    let (status, v) = call(1, "within budget");
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(2, "over budget");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["code"], -32004, "{v}");

    let (code, out, err) = audit_cli(&dome, &["query", "--format", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let records = jsonl(&out);
    assert_eq!(records.len(), 2, "{out}");
    let refused = &records[1];
    assert_eq!(refused["decision"], "over_budget", "{refused}");
    assert_eq!(refused["status"], -32004, "{refused}");
    assert_eq!(refused["name"], "echo", "{refused}");
    assert_eq!(refused["intent"], "over budget", "{refused}");
    // Found by intent, as an operator would look for it.
    let (_, out, _) = audit_cli(
        &dome,
        &["query", "--format", "jsonl", "--intent", "over budget"],
    );
    assert_eq!(jsonl(&out).len(), 1, "{out}");
}

#[test]
fn every_call_is_recorded_with_who_what_why_and_the_decision() {
    let (_demo, dome) = start("audit-record", "fsync = \"always\"");
    make_one_call_of_each_kind(&dome);
    each_record_says_who_what_why_and_the_decision(&dome);
    the_trail_is_queried_filtered_exported_and_served(&dome);
}

/// Allowed (arguments logged, an end user, a trace, an intent), redacted,
/// denied, over budget, and a tool nobody has.
fn make_one_call_of_each_kind(dome: &Dome) {
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // Allowed, with its arguments logged (an e-mail address redacted), an
    // end user, a trace and an intent.
    let (status, v) = post(
        dome,
        &[("traceparent", trace), ("Dome-User", "alice@acme.example")],
        "echo",
        &call_body(
            1,
            "echo",
            json!({"message": "write to bob@example.com"}),
            Some("look up order 7"),
        ),
    );
    assert_eq!(status, 200, "{v}");
    // Allowed, with values redacted from the result.
    let (status, v) = post(
        dome,
        &[],
        "records",
        &call_body(2, "records", json!({"count": 2}), Some("answer ticket 42")),
    );
    assert_eq!(status, 200, "{v}");
    // Denied by a rule.
    let (status, v) = post(
        dome,
        &[],
        "slow",
        &call_body(3, "slow", json!({"steps": 1}), None),
    );
    assert_eq!((status, &v["error"]["code"]), (200, &json!(-32005)), "{v}");
    // Over the echo budget (burst 3: two more pass, the next does not).
    for id in 4..6 {
        assert_eq!(
            post(
                dome,
                &[],
                "echo",
                &call_body(id, "echo", json!({"message": "x"}), None)
            )
            .0,
            200
        );
    }
    let (status, v) = post(
        dome,
        &[],
        "echo",
        &call_body(6, "echo", json!({"message": "x"}), None),
    );
    assert_eq!((status, &v["error"]["code"]), (200, &json!(-32004)), "{v}");
    // A tool nobody has.
    let (status, _) = post(dome, &[], "nope", &call_body(7, "nope", json!({}), None));
    assert_eq!(status, 400);
}

fn each_record_says_who_what_why_and_the_decision(dome: &Dome) {
    let (code, out, err) = audit_cli(dome, &["query", "--format", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let records = jsonl(&out);
    assert_eq!(records.len(), 7, "{out}");
    let policy_version = dome.stats_json()["config"]["policy_version"]
        .as_str()
        .unwrap()
        .to_string();
    for r in &records {
        assert_eq!(r["tenant"], "acme", "{r}");
        assert_eq!(r["agent"], "support-bot", "{r}");
        assert_eq!(r["node"], "edge-test", "{r}");
        assert_eq!(r["source"], "127.0.0.1", "{r}");
        assert_eq!(r["kind"], "tool", "{r}");
        assert_eq!(r["policy_version"], policy_version.as_str(), "{r}");
        assert!(r["call_id"].as_str().unwrap().len() == 16, "{r}");
        assert!(r["phase_ns"]["total"].as_u64().unwrap() > 0, "{r}");
        assert!(r["bytes_in"].as_u64().unwrap() > 0, "{r}");
    }
    let by_name = |n: &str| -> Vec<&Value> { records.iter().filter(|r| r["name"] == n).collect() };

    let first = by_name("echo")[0];
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["status"], 0);
    assert_eq!(first["rule"], "echo-logged");
    assert_eq!(first["upstream"], "demo");
    assert_eq!(first["intent"], "look up order 7");
    assert_eq!(first["user"], "alice@acme.example");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // The arguments: their digest, and (as the rule says) their text with
    // the e-mail address out.
    let sent = json!({"message": "write to bob@example.com"}).to_string();
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, sent.as_bytes()));
    assert_eq!(first["args_sha256"], digest.as_str());
    let logged = first["args"]["message"].as_str().unwrap();
    assert!(
        logged.starts_with("write to ") && !logged.contains("bob@"),
        "{logged}"
    );
    assert!(first["phase_ns"]["upstream"].as_u64().unwrap() > 0);
    assert!(first["phase_ns"]["policy"].as_u64().unwrap() > 0);
    assert!(first["bytes_out"].as_u64().unwrap() > 0);

    let rec = by_name("records")[0];
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["rule"], "records-redacted");
    assert!(rec["redactions"]["email"].as_u64().unwrap() >= 2, "{rec}");
    assert!(rec["redactions"]["card"].as_u64().unwrap() >= 2, "{rec}");
    // Not logged: the rule did not ask.
    assert_eq!(rec["args"], Value::Null);
    assert!(rec["args_sha256"].is_string());

    let slow = by_name("slow")[0];
    assert_eq!(slow["decision"], "deny");
    assert_eq!(slow["rule"], "no-slow");
    assert_eq!(slow["status"], -32005);
    assert_eq!(slow["outcome"], "error");
    assert!(slow["reason"].as_str().unwrap().contains("off limits"));
    assert_eq!(
        slow["phase_ns"]["upstream"],
        Value::Null,
        "never went upstream"
    );

    let echoes = by_name("echo");
    assert_eq!(echoes.len(), 4);
    assert_eq!(echoes[3]["decision"], "over_budget");
    assert_eq!(echoes[3]["status"], -32004);

    let nope = by_name("nope")[0];
    assert_eq!(nope["decision"], "error");
    assert_eq!(nope["status"], -32602);
}

/// Filters from the CLI, a table, bad filters and folders named, the
/// admin API's stream, export, and `/stats`.
fn the_trail_is_queried_filtered_exported_and_served(dome: &Dome) {
    // Filters, from the CLI …
    let (code, out, _) = audit_cli(dome, &["query", "--format", "jsonl", "--decision", "deny"]);
    assert_eq!(code, 0);
    let denied = jsonl(&out);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["name"], "slow");
    let (_, out, _) = audit_cli(
        dome,
        &[
            "query", "--format", "jsonl", "--intent", "TICKET", "--since", "5m",
        ],
    );
    assert_eq!(jsonl(&out).len(), 1);
    let (_, out, _) = audit_cli(
        dome,
        &["query", "--format", "jsonl", "--user", "alice@acme.example"],
    );
    assert_eq!(jsonl(&out).len(), 1);
    let (_, out, _) = audit_cli(
        dome,
        &[
            "query",
            "--format",
            "jsonl",
            "--tool",
            "echo",
            "--newest-first",
            "--limit",
            "1",
        ],
    );
    let newest = jsonl(&out);
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["decision"], "over_budget");
    let (_, out, _) = audit_cli(dome, &["query", "--tenant", "globex", "--format", "jsonl"]);
    assert!(jsonl(&out).is_empty());
    // … as a table …
    let (code, out, _) = audit_cli(dome, &["query"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 8, "{out}");
    assert!(out.lines().next().unwrap().starts_with("TIME"));
    // … a bad filter is named …
    let (code, _, err) = audit_cli(dome, &["query", "--decision", "maybe"]);
    assert_eq!(code, 2);
    assert!(err.contains("decision `maybe`"), "{err}");
    // … and so is a folder with no trail in it.
    let (code, _, err) = audit_cli(dome, &["verify", "--dir", "/nonexistent/audit"]);
    assert_eq!(code, 2);
    assert!(err.contains("no audit trail"), "{err}");
    // … and from the admin API, streamed.
    let admin = admin_addr(dome);
    let auth = format!("Bearer {ADMIN}");
    let (status, headers, body) = http(
        admin,
        "GET",
        "/audit?decision=over_budget&tool=echo",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/x-ndjson")
    );
    let got = jsonl(&body);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["status"], -32004);
    let (status, _, body) = http(
        admin,
        "GET",
        "/audit?since=yesterday",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = http(admin, "GET", "/audit", &[], "");
    assert_eq!(status, 401);
    let (status, _, body) = http(
        admin,
        "GET",
        "/audit/verify",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["records"], 7);

    // Export for a SIEM, and /stats.
    let out_file = dome.config.with_extension("export.jsonl");
    let (code, _, err) = audit_cli(dome, &["export", "--out", out_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(jsonl(&std::fs::read_to_string(&out_file).unwrap()).len(), 7);
    let stats = dome.stats_json();
    assert_eq!(stats["audit"]["records"], 7, "{}", stats["audit"]);
    assert_eq!(stats["audit"]["dropped"], 0);
    assert_eq!(stats["audit"]["fsync"], "always");
    assert!(stats["audit"]["syncs"].as_u64().unwrap() >= 1);
}

/// One client thread: calls `echo` with a unique intent until Dome goes
/// away; returns the intents of the calls it saw answered.
fn load(dome_mcp: std::net::SocketAddr, thread: usize, stop: Arc<Mutex<bool>>) -> Vec<String> {
    let mut answered = Vec::new();
    let auth = format!("Bearer {SUPPORT}");
    for i in 0.. {
        if *stop.lock().unwrap() {
            break;
        }
        let intent = format!("crash-{thread}-{i}");
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "records", "arguments": {"count": 1},
              "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {},
                        "dome/intent": intent}}})
        .to_string();
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&dome_mcp, Duration::from_millis(500))
        else {
            break;
        };
        use std::io::{Read, Write};
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "POST /mcp HTTP/1.1\r\nHost: dome\r\nConnection: close\r\nAccept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n\
             Mcp-Name: records\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            break;
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        // Answered: a whole response with a result for this call.
        if text.starts_with("HTTP/1.1 200")
            && text.contains("\"result\"")
            && text.contains("\"content\"")
        {
            answered.push(intent);
        } else if text.is_empty() {
            break;
        }
    }
    answered
}

#[test]
fn answered_calls_survive_a_crash() {
    let (_demo, mut dome) = start("audit-crash", "fsync = \"batch\"\ncommit_ms = 2");
    let stop = Arc::new(Mutex::new(false));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            let mcp = dome.mcp;
            std::thread::spawn(move || load(mcp, t, stop))
        })
        .collect();
    // Load for a while, then SIGKILL Dome mid-flight.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(50));
    }
    dome.proc.kill();
    *stop.lock().unwrap() = true;
    let answered: BTreeSet<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        answered.len() > 50,
        "only {} calls answered",
        answered.len()
    );

    // A crash can cut a write in half; make sure the newest segment ends in
    // a torn frame (a copy of half its last frame), as if one had.
    let data = {
        let text = std::fs::read_to_string(&dome.config).unwrap();
        let line = text.lines().find(|l| l.starts_with("data_dir")).unwrap();
        std::path::PathBuf::from(line.split('"').nth(1).unwrap()).join("audit")
    };
    let newest = dome::audit::segment::list(&data).unwrap().pop().unwrap();
    let bytes = std::fs::read(&newest.path).unwrap();
    let mut at = dome::audit::segment::HEADER;
    let mut last = (at, at);
    while let Ok(f) = dome::audit::frame::read(&bytes, at) {
        last = (at, f.next);
        at = f.next;
    }
    assert!(last.1 > last.0, "the segment has frames");
    let torn = bytes[last.0..last.0 + (last.1 - last.0) / 2].to_vec();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest.path)
        .unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    let (code, out, _) = audit_cli(&dome, &["verify"]);
    // A partial last frame is reported, not called corruption.
    assert!(code == 0 || out.contains("partial"), "{out}");

    // Restart: recovery cuts the torn tail and says so.
    dome.restart();
    let log = std::fs::read_to_string(dome.config.with_extension("restart.log")).unwrap();
    assert!(log.contains("cut a torn tail"), "{log}");
    let (code, out, err) = audit_cli(&dome, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok") && !out.contains("partial"), "{out}");

    // Every call a client saw answered is in the trail.
    let (code, out, err) = audit_cli(&dome, &["export", "--intent", "crash-"]);
    assert_eq!(code, 0, "{err}");
    let recorded: BTreeSet<String> = jsonl(&out)
        .iter()
        .filter(|r| r["outcome"] == "ok")
        .map(|r| r["intent"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = answered.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "{} answered calls missing: {missing:?}",
        missing.len()
    );

    // And the trail goes on after recovery.
    let (status, _) = post(
        &dome,
        &[],
        "records",
        &call_body(1, "records", json!({"count": 1}), Some("after the crash")),
    );
    assert_eq!(status, 200);
    let (code, out, _) = audit_cli(
        &dome,
        &["query", "--intent", "after the crash", "--format", "jsonl"],
    );
    assert_eq!(code, 0);
    assert_eq!(jsonl(&out).len(), 1);
    assert_eq!(audit_cli(&dome, &["verify"]).0, 0);
}

/// `n` concurrent slow calls; returns (HTTP status, body) of each.
fn concurrent_slow_calls(dome: &Dome, n: usize) -> Vec<(u16, Value)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    post(
                        dome,
                        &[],
                        "slow",
                        &call_body(
                            i as u64,
                            "slow",
                            json!({"steps": 1, "delay_ms": 1500}),
                            Some("hold the ring"),
                        ),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_full_ring_refuses_calls_closed_or_drops_them_counted() {
    let allow_all = "[[rule]]\nid = \"all\"\neffect = \"allow\"\n";
    let audit = "ring = 16\non_full = \"fail\"\nfull_wait_ms = 20";
    let (_demo, dome) = start_with("audit-full", audit, allow_all, "");
    // Each call in flight holds its record's room: 24 at once cannot all
    // be recorded, and those that cannot are not run.
    let results = concurrent_slow_calls(&dome, 24);
    let refused: Vec<&(u16, Value)> = results.iter().filter(|(s, _)| *s == 503).collect();
    let answered = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(refused.len() + answered, 24, "{results:?}");
    assert!(refused.len() >= 8, "{} refused", refused.len());
    assert!((1..=16).contains(&answered), "{answered} answered");
    let (_, v) = refused[0];
    assert_eq!(v["error"]["code"], -32006, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not keeping up"),
        "{v}"
    );
    let stats = dome.stats_json();
    assert_eq!(stats["audit"]["refused"], refused.len() as u64);
    assert_eq!(stats["audit"]["records"], answered as u64);
    let (_, out, _) = audit_cli(&dome, &["query", "--format", "jsonl", "--tool", "slow"]);
    assert_eq!(jsonl(&out).len(), answered);

    // The operator may prefer running calls unrecorded: a live reload to
    // `on_full = "drop"` runs them all and counts every drop.
    let text = std::fs::read_to_string(&dome.config).unwrap();
    std::fs::write(
        &dome.config,
        text.replace("on_full = \"fail\"", "on_full = \"drop\""),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dome.stats_json()["audit"]["on_full"] != "drop" {
        assert!(Instant::now() < deadline, "the reload never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let results = concurrent_slow_calls(&dome, 24);
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let stats = dome.stats_json();
    let dropped = stats["audit"]["dropped"].as_u64().unwrap();
    assert!(dropped >= 8, "{}", stats["audit"]);
    assert_eq!(
        stats["audit"]["records"].as_u64().unwrap(),
        answered as u64 + 24 - dropped
    );
}

/// The audit folder of a Dome started by `start_with`.
fn audit_folder(dome: &Dome) -> std::path::PathBuf {
    data_folder(dome).join("audit")
}

fn data_folder(dome: &Dome) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&dome.config).unwrap();
    let line = text.lines().find(|l| l.starts_with("data_dir")).unwrap();
    std::path::PathBuf::from(line.split('"').nth(1).unwrap())
}

/// SIGTERM, and wait for Dome to finish its clean shutdown.
fn stop(dome: &mut Dome) {
    // SAFETY: signalling a child process this test started and still owns.
    unsafe { libc::kill(dome.proc.child.id() as i32, libc::SIGTERM) };
    let status = dome.proc.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// What an attacker with write access to the folder does: rewrites every
/// frame, `edit` changing payloads, with every CRC and hash link
/// recomputed.
fn rechain(dir: &std::path::Path, mut edit: impl FnMut(u64, &mut Vec<u8>)) {
    use dome::audit::{frame, segment};
    let mut prev = None;
    for seg in segment::list(dir).unwrap() {
        let buf = segment::read_aligned(&seg.path).unwrap();
        let mut out = buf[..segment::HEADER].to_vec();
        let mut at = segment::HEADER;
        while let Ok(f) = frame::read(&buf, at) {
            at = f.next;
            let mut payload = f.payload.to_vec();
            edit(f.header.seq, &mut payload);
            let p = prev.unwrap_or(f.header.prev);
            prev = Some(frame::append(
                &mut out,
                f.header.seq,
                f.header.schema,
                f.header.time_us,
                &p,
                &payload,
            ));
        }
        std::fs::write(&seg.path, &out).unwrap();
    }
}

mod signed;
