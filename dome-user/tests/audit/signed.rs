//! The signed trail seen from outside: verification of rewritten and cut trails, retention, escaping, cancelled calls and capped arguments.

use super::*;

#[test]
fn a_rewritten_or_cut_trail_fails_verify_against_the_signed_checkpoints() {
    let (_demo, mut dome) = start("audit-signed", "fsync = \"always\"\ncheckpoint_records = 5");
    for i in 0..12 {
        let intent = format!("refund order {i}");
        let (status, v) = post(
            &dome,
            &[],
            "records",
            &call_body(i, "records", json!({"count": 1}), Some(&intent)),
        );
        assert_eq!(status, 200, "{v}");
    }
    // The key: made at first start, private, its public half published
    // beside it and on /stats.
    let key = data_folder(&dome).join("audit.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public = std::fs::read_to_string(key.with_extension("key.pub")).unwrap();
    let stats = dome.stats_json();
    let cps = &stats["audit"]["checkpoints"];
    assert_eq!(cps["key"], public.trim(), "{cps}");
    assert!(cps["written"].as_u64().unwrap() >= 2, "{cps}");
    let (_, _, metrics) = http(dome.stats, "GET", "/metrics", &[], "");
    assert!(
        metrics.contains("dome_audit_checkpoints_total "),
        "{metrics}"
    );
    // A clean shutdown signs the end.
    stop(&mut dome);
    let (code, out, err) = audit_cli(&dome, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("signatures checked against key"), "{out}");
    assert!(out.contains("the trail ends with checkpoint"), "{out}");
    assert!(out.contains("(shutdown, "), "{out}");

    // Exported for anchoring elsewhere.
    let (code, out, err) = audit_cli(&dome, &["checkpoints", "--format", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let exported = jsonl(&out);
    assert!(exported.len() >= 3, "{out}");
    let last = exported.last().unwrap();
    assert_eq!(last["reason"], "shutdown");
    let anchor = format!("{}:{}", last["covers_seq"], last["head"].as_str().unwrap());
    let (code, out, err) = audit_cli(&dome, &["verify", "--expect-head", &anchor]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("matches"), "{out}");

    let dir = audit_folder(&dome);
    let seg = dome::audit::segment::list(&dir).unwrap().remove(0);
    let pristine = std::fs::read(&seg.path).unwrap();

    // A record rewritten, its CRC and the whole chain recomputed.
    rechain(&dir, |_, p| {
        if let Some(at) = p.windows(14).position(|w| w == b"refund order 3") {
            p[at..at + 14].copy_from_slice(b"refund ORDER 3");
        }
    });
    let (code, out, err) = audit_cli(&dome, &["verify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("BAD") && err.contains("rewritten"), "{err}");

    // The newest records cut back to the checkpoint before the last: a
    // valid trail by itself, but not the one anchored.
    std::fs::write(&seg.path, &pristine).unwrap();
    let mut at = dome::audit::segment::HEADER;
    let mut cut_at = None;
    let prior = exported[exported.len() - 2]["seq"].as_u64().unwrap();
    while let Ok(f) = dome::audit::frame::read(&pristine, at) {
        if f.header.seq == prior {
            cut_at = Some(f.next);
        }
        at = f.next;
    }
    std::fs::write(&seg.path, &pristine[..cut_at.unwrap()]).unwrap();
    let (code, out, err) = audit_cli(&dome, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = audit_cli(&dome, &["verify", "--expect-head", &anchor]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("cut off"), "{err}");
    let (code, _, err) = audit_cli(&dome, &["verify", "--expect-head", "7:xyz"]);
    assert_eq!(code, 2);
    assert!(err.contains("SEQ:HASH"), "{err}");
}

#[test]
fn retention_is_loud_in_the_log_on_stats_and_metrics_and_verify_reports_what_went() {
    let policy = "[[rule]]\nid = \"slow-logged\"\neffect = \"allow\"\n[rule.when]\ntool = \"slow\"\n\
                  [rule.obligations]\nlog_args = \"full\"\n";
    let (_demo, dome) = start_with(
        "audit-retain",
        "fsync = \"always\"\nsegment_mb = 1\nretain_mb = 1",
        policy,
        "",
    );
    // More than the trail may hold: 700 calls whose records keep 4 KiB
    // of arguments each (the most `log_args` keeps).
    let pad = "x".repeat(8 << 10);
    for i in 0..700 {
        let (status, v) = post(
            &dome,
            &[],
            "slow",
            &call_body(
                i,
                "slow",
                json!({"steps": 1, "delay_ms": 0, "pad": pad}),
                Some("fill the trail"),
            ),
        );
        assert_eq!(status, 200, "{v}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = dome.stats_json();
        if s["audit"]["retention"]["segments_retired"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "nothing retired: {}", s["audit"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the writer finish what the last calls started.
    std::thread::sleep(Duration::from_millis(500));
    let stats = dome.stats_json();
    let retention = &stats["audit"]["retention"];
    // The newest retirement: what went, and why (the size limit, long
    // before `retain_days`).
    assert!(retention["last"]["first_seq"].as_u64() <= retention["last"]["last_seq"].as_u64());
    assert_eq!(retention["last"]["reason"], "size", "{retention}");
    assert!(
        retention["records_retired"].as_u64() >= retention["last"]["last_seq"].as_u64(),
        "every frame up to the newest retirement went: {retention}"
    );
    let (_, _, metrics) = http(dome.stats, "GET", "/metrics", &[], "");
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(metric("dome_audit_segments_retired_total") >= 1);
    assert!(metric("dome_audit_records_retired_total") >= 1);
    assert!(metric("dome_audit_retired_bytes_total") >= 1 << 20);
    let log = std::fs::read_to_string(dome.config.with_extension("log")).unwrap();
    assert!(
        log.contains("WARN") && log.contains("audit retention removed records"),
        "{log}"
    );
    // Verify says what went, and when; it does not just pass over it.
    let (code, out, err) = audit_cli(&dome, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("retired by retention at 20"), "{out}");
    let last = retention["last"]["last_seq"].as_u64().unwrap();
    assert!(
        out.contains(&format!("records before {} were retired", last + 1)),
        "{out}"
    );
}

#[test]
fn the_query_table_and_admin_output_escape_what_callers_wrote() {
    let (_demo, dome) = start("audit-escape", "fsync = \"always\"");
    let intent = "check\n2026 allow ok forged\x1b[2K\u{9b}1A\u{202e}evil";
    let (status, v) = post(
        &dome,
        &[],
        "records",
        &call_body(1, "records", json!({"count": 1}), Some(intent)),
    );
    assert_eq!(status, 200, "{v}");
    let (code, out, err) = audit_cli(&dome, &["query"]);
    assert_eq!(code, 0, "{err}");
    // One header and one row: the newline did not forge a second.
    assert_eq!(out.lines().count(), 2, "{out}");
    for raw in ['\x1b', '\u{9b}', '\u{202e}'] {
        assert!(!out.contains(raw), "{raw:?} reached the terminal: {out:?}");
    }
    assert!(out.contains("check\\n2026 allow"), "{out}");
    assert!(
        out.contains("\\x1b[2K") && out.contains("\\u{202e}evil"),
        "{out}"
    );
    // JSON Lines stays faithful: the same intent, byte for byte.
    let (_, out, _) = audit_cli(&dome, &["query", "--format", "jsonl"]);
    assert!(
        !out.contains('\u{9b}') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    assert_eq!(jsonl(&out)[0]["intent"], intent);

    // Names an admin (or a compromised admin client) registers reach
    // `dome agents` output escaped, and still as the same JSON.
    let name = "evil\u{9b}2K\u{202e}bot";
    let admin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dome"))
            .args(args)
            .arg("--config")
            .arg(&dome.config)
            .env("DOME_ADMIN_TOKEN", ADMIN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    admin(&["agents", "register", "--tenant", "acme", "--name", name]);
    let out = admin(&["agents", "list"]);
    assert!(
        !out.contains('\u{9b}') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(out.contains("\\u009b2K\\u202ebot"), "{out}");
    assert!(listed.to_string().contains(name), "{listed}");
}

pub(super) const ALLOW_SLOW: &str = r#"
[[rule]]
id = "all"
effect = "allow"
[rule.when]
tool = "*"
"#;

/// The first record of `tool` whose intent is `intent`, waited for.
pub(super) fn record_of(dome: &Dome, intent: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = audit_records(dome);
        if let Some(r) = records.iter().find(|r| r["intent"] == intent) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no record with intent {intent}: {records:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Found by probing: a session-era call the client cancelled with
/// `notifications/cancelled` was answered -32001 ("the upstream ended the
/// stream without an answer") and recorded as an upstream error; and a
/// stateless call whose client left before the upstream answered was
/// recorded `unknown`. A cancelled request gets no answer (the
/// specification's cancellation rules), and both are recorded cancelled.
#[test]
fn a_call_its_client_cancels_is_not_answered_and_is_recorded_cancelled() {
    use std::io::{Read, Write};
    let (_demo, dome) = start_with("audit-cancel", "fsync = \"always\"", ALLOW_SLOW, "");
    let auth = format!("Bearer {SUPPORT}");
    let base = [
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let sid = open_session(&dome, SUPPORT);
    let mut in_session = base.to_vec();
    in_session.push(("Mcp-Session-Id", sid.as_str()));

    // Session era: cancelled after its first progress.
    let call = json!({"jsonrpc": "2.0", "id": "c1", "method": "tools/call", "params": {
        "name": "slow", "arguments": {"steps": 20, "delay_ms": 150},
        "_meta": {"progressToken": "p", "dome/intent": "cancelled-in-session"}}});
    let body = call.to_string();
    let mut s = std::net::TcpStream::connect(dome.mcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in &in_session {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{req}\r\n{body}").as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"progress\":1") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": "c1", "reason": "changed my mind"}});
    let (status, _, text) = http(dome.mcp, "POST", "/mcp", &in_session, &cancel.to_string());
    assert_eq!(status, 202, "{text}");
    // The stream ends, without an answer to c1.
    let at = seen.len();
    loop {
        let n = s.read(&mut buf).expect("the stream ends once cancelled");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    let rest = String::from_utf8_lossy(&seen[at..]).into_owned();
    assert!(
        !rest.contains("\"result\"") && !rest.contains("\"error\""),
        "a cancelled request was answered: {rest}"
    );
    let r = record_of(&dome, "cancelled-in-session");
    assert_eq!(r["outcome"], "cancelled", "{r}");
    assert_eq!(r["name"], "slow", "{r}");

    // Stateless era: the client leaves before the upstream's first byte.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}, "dome/intent": "left-before-the-answer"});
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "slow", "arguments": {"hold_ms": 1500, "steps": 1}, "_meta": meta}})
    .to_string();
    let mut s = std::net::TcpStream::connect(dome.mcp).unwrap();
    s.write_all(
        format!(
            "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nAuthorization: {auth}\r\n\
             MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: slow\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let r = record_of(&dome, "left-before-the-answer");
    assert_eq!(r["outcome"], "cancelled", "{r}");
}

/// Found by probing: `log_args = "full"` kept arguments whole, so each
/// call could write up to `max_body_bytes` into the trail.
#[test]
fn logged_arguments_are_capped_in_the_record() {
    let (_demo, dome) = start("audit-args-cap", "fsync = \"always\"");
    let big = "a".repeat(200_000);
    let (status, v) = post(
        &dome,
        &[],
        "echo",
        &call_body(1, "echo", json!({"message": big}), Some("big-args")),
    );
    assert_eq!(status, 200, "{v}");
    let r = record_of(&dome, "big-args");
    let kept = &r["args"]["dome/truncated"];
    assert_eq!(kept["bytes"].as_u64(), Some(200_014), "{kept}");
    let head = kept["head"].as_str().unwrap();
    assert!(
        head.len() <= 4096 && head.starts_with("{\"message\":\"aaa"),
        "{head}"
    );
    assert!(
        r.to_string().len() < 8192,
        "the record is {} bytes",
        r.to_string().len()
    );
}
