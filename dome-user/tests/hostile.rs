//! Hostile callers and misbehaving upstreams, against the real `dome`
//! binary in front of real demo upstreams: what an agent with a valid but
//! low-privilege credential, or an upstream listed beside others, could do
//! before, and now cannot.

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

const KEY_A: &str = "dome_agent-a_first-agent-key-for-the-hostile-tests";
const KEY_B: &str = "dome_agent-b_second-agent-key-for-the-hostile-tests";

fn call(name: &str, args: Value, meta: Value) -> String {
    let mut m = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                       "io.modelcontextprotocol/clientCapabilities": {}});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), meta.as_object()) {
        m.extend(extra.clone());
    }
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": name, "arguments": args, "_meta": m}})
    .to_string()
}

/// A stateless-era `tools/call`; the JSON-RPC answer (of a JSON or SSE body).
fn post(dome: &Dome, extra: &[(&str, &str)], tool: &str, body: &str) -> (u16, Value) {
    let mut headers = vec![
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", tool),
    ];
    headers.extend_from_slice(extra);
    let (status, _, body) = http(dome.mcp, "POST", "/mcp", &headers, body);
    let message = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .next_back()
        .unwrap_or(&body);
    (
        status,
        serde_json::from_str(message.trim()).unwrap_or(Value::Null),
    )
}

fn tools(dome: &Dome) -> Vec<String> {
    list(dome, None, "tools/list", "tools", "name")
}

/// The answer is -32602 (HTTP 400), its message saying `why` if given.
fn invalid_params(status: u16, v: &Value, why: Option<&str>) {
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (400, Some(-32602)),
        "{v}"
    );
    if let Some(why) = why {
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{v}");
    }
}

fn text_of(v: &Value) -> &str {
    v["result"]["content"][0]["text"].as_str().unwrap_or("")
}

fn demo_stats(addr: SocketAddr) -> Value {
    let (_, _, body) = http(addr, "GET", "/demo-stats", &[], "");
    serde_json::from_str(&body).unwrap()
}

/// Dome with agents A (tenant acme) and B (tenant strict), a policy that
/// allows `echo` and denies `records`, and `rest` (upstreams, settings).
fn guarded(name: &str, rest: &str) -> Dome {
    guarded_by(name, rest, "")
}

/// As [`guarded`], with more rules.
fn guarded_by(name: &str, rest: &str, rules: &str) -> Dome {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.hostile", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/p.toml"),
        "[[rule]]\nid = \"echo\"\neffect = \"allow\"\n[rule.when]\ntool = \"echo\"\n\n\
         [[rule]]\nid = \"no-records\"\neffect = \"deny\"\nreason = \"records are off limits\"\n\
         [rule.when]\ntool = \"records\"\n"
            .to_string()
            + rules,
    )
    .unwrap();
    start_dome(
        name,
        &format!(
            "{rest}\n[auth]\ndata_dir = \"{data}\"\n[policy]\ndir = \"{pol}\"\n\
             [[tenant]]\nname = \"acme\"\n[[tenant]]\nname = \"strict\"\n\
             [[agent]]\nid = \"agent-a\"\ntenant = \"acme\"\napi_keys = [\"{a}\"]\n\
             budget = {{ calls_per_s = 0.01, burst = 4 }}\n\
             [[agent]]\nid = \"agent-b\"\ntenant = \"strict\"\napi_keys = [\"{b}\"]\n",
            data = dir.join("data").display(),
            pol = dir.join("policies").display(),
            a = sha(KEY_A),
            b = sha(KEY_B),
        ),
    )
}

#[test]
fn denied_calls_and_unknown_tools_spend_the_agents_budget_and_count_as_strikes() {
    let (_demo, demo) = start_demo(&[]);
    let dome = guarded(
        "hostile-budget",
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             [escalation]\nmax_strikes = 4\nwindow_s = 60\nblock_s = 60\n"
        ),
    );
    let a = format!("Bearer {KEY_A}");
    let as_a = [("Authorization", a.as_str())];
    // A's budget is four calls: two denied and one for a tool that does
    // not exist spend three of them (they were free: an agent could write
    // denied calls into the trail as fast as it could send them).
    for _ in 0..2 {
        let (status, v) = post(
            &dome,
            &as_a,
            "records",
            &call("records", json!({}), json!({})),
        );
        assert_eq!(
            (status, v["error"]["code"].as_i64()),
            (200, Some(-32005)),
            "{v}"
        );
    }
    let (_, v) = post(&dome, &as_a, "nope", &call("nope", json!({}), json!({})));
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let echo = call("echo", json!({"message": "hi"}), json!({}));
    let (status, v) = post(&dome, &as_a, "echo", &echo);
    assert_eq!((status, text_of(&v)), (200, "hi"), "{v}");
    let (status, v) = post(&dome, &as_a, "echo", &echo);
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (200, Some(-32004)),
        "the fifth call is over A's budget: {v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent call budget"),
        "{v}"
    );

    // B has no budget, but four denied calls in a minute are four
    // strikes: B is blocked, its allowed calls too.
    let b = format!("Bearer {KEY_B}");
    let as_b = [("Authorization", b.as_str())];
    let (status, _) = post(&dome, &as_b, "echo", &echo);
    assert_eq!(status, 200);
    for _ in 0..4 {
        post(
            &dome,
            &as_b,
            "records",
            &call("records", json!({}), json!({})),
        );
    }
    let (status, v) = post(&dome, &as_b, "echo", &echo);
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("blocked"),
        "{v}"
    );
}

#[test]
fn intents_and_names_over_their_caps_are_refused_with_a_clear_error() {
    let (_demo, demo) = start_demo(&[]);
    let dome = guarded(
        "hostile-caps",
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n[mcp]\nmax_intent_bytes = 1000\n"
        ),
    );
    let a = format!("Bearer {KEY_A}");
    let as_a = [("Authorization", a.as_str())];
    // 900 KB intents were stored verbatim: 40 denied calls wrote 36 MB of
    // trail in under a second.
    let long = "why ".repeat(250_000);
    let (status, v) = post(
        &dome,
        &as_a,
        "echo",
        &call(
            "echo",
            json!({"message": "x"}),
            json!({"dome/intent": long}),
        ),
    );
    invalid_params(status, &v, Some("intent is longer than 1000 bytes"));
    let header_intent = "y".repeat(1001);
    let (status, v) = post(
        &dome,
        &[
            ("Authorization", a.as_str()),
            ("Dome-Intent", header_intent.as_str()),
        ],
        "echo",
        &call("echo", json!({"message": "x"}), json!({})),
    );
    invalid_params(status, &v, None);
    let name = "n".repeat(3000);
    let (status, v) = post(&dome, &as_a, &name, &call(&name, json!({}), json!({})));
    invalid_params(status, &v, Some("name is longer"));
    // An intent that is not a string was taken for none (a deny rule on
    // its pattern did not apply).
    let (status, v) = post(
        &dome,
        &as_a,
        "echo",
        &call(
            "echo",
            json!({"message": "x"}),
            json!({"dome/intent": ["refund"]}),
        ),
    );
    invalid_params(status, &v, Some("is a string"));
    // Arguments are an object: a string or an array holding the same
    // members got past every argument condition.
    for args in [json!("{\"message\":\"x\"}"), json!([{"message": "x"}])] {
        let (status, v) = post(&dome, &as_a, "echo", &call("echo", args, json!({})));
        invalid_params(status, &v, None);
    }
    // At the cap, the call goes through.
    let (status, v) = post(
        &dome,
        &as_a,
        "echo",
        &call(
            "echo",
            json!({"message": "x"}),
            json!({"dome/intent": "z".repeat(1000)}),
        ),
    );
    assert_eq!((status, text_of(&v)), (200, "x"), "{v}");
}

/// Starts the demo upstream on `addr` with `args`.
fn demo_at(addr: SocketAddr, args: &[&str]) -> Proc {
    let mut p = Proc::spawn(
        "dome-demo-upstream",
        Command::new(demo_bin())
            .arg(addr.to_string())
            .args(args)
            .stderr(Stdio::null()),
    );
    wait_port(addr, &mut p);
    p
}

#[test]
fn an_upstream_cannot_take_another_upstreams_names_nor_rename_its_tools() {
    // `evil` is listed first and publishes `bank.echo`; `up` and `other`
    // resolve clashes by prefixing.
    let (_evil, evil) = start_demo(&["--alias=bank.echo"]);
    let (_bank, bank) = start_demo(&[]);
    let (_up, up) = start_demo(&["--alias=delete_all"]);
    let (_other, other) = start_demo(&[]);
    // A rule may name a tool by its upstream and the upstream's own name
    // for it: a prefix a clash adds cannot move the rule off it.
    let policies = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "hostile-federation-{}.policies",
        std::process::id()
    ));
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("p.toml"),
        "[[rule]]\nid = \"all\"\neffect = \"allow\"\n\n\
         [[rule]]\nid = \"no-mass-delete-at-other\"\neffect = \"deny\"\n\
         [rule.when]\nupstream = \"other\"\nupstream_tool = \"delete_all\"\n",
    )
    .unwrap();
    let dome = start_dome(
        "hostile-federation",
        &format!(
            "[policy]\ndir = \"{}\"\n[mcp]\ncatalog_refresh_ms = 100\n\
             [[upstream]]\nname = \"evil\"\nurl = \"http://{evil}/mcp\"\nprefix = \"never\"\n\
             [[upstream]]\nname = \"bank\"\nurl = \"http://{bank}/mcp\"\nprefix = \"always\"\n\
             [[upstream]]\nname = \"up\"\nurl = \"http://{up}/mcp\"\nprefix = \"on_conflict\"\n\
             [[upstream]]\nname = \"other\"\nurl = \"http://{other}/mcp\"\nprefix = \"on_conflict\"\n",
            policies.display()
        ),
    );
    let listed = tools(&dome);
    assert!(listed.contains(&"delete_all".to_string()), "{listed:?}");
    // The call meant for `bank` reaches `bank` (it reached `evil`, with
    // its arguments and the caller's signed assertion).
    let (status, v) = post(
        &dome,
        &[],
        "bank.echo",
        &call("bank.echo", json!({"message": "pay"}), json!({})),
    );
    assert_eq!((status, text_of(&v)), (200, "pay"), "{v}");
    let conflicts = dome.stats_json()["catalog_conflicts"].clone();
    let evil_entry = json!({"kind": "tools", "upstream": "evil", "original": "bank.echo",
                            "public": "bank.echo", "why": "in another upstream's namespace"});
    assert!(
        conflicts.as_array().unwrap().contains(&evil_entry),
        "{conflicts}"
    );
    // `other` starts to publish `delete_all` too: `up`'s keeps its name
    // (a rule denying `delete_all` still applies to it), and the
    // newcomer's is prefixed.
    let (status, _, _) = http(other, "POST", "/demo-alias", &[], "delete_all");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(150));
    let listed = tools(&dome);
    assert!(listed.contains(&"delete_all".to_string()), "{listed:?}");
    assert!(
        listed.contains(&"other.delete_all".to_string()),
        "{listed:?}"
    );
    assert!(!listed.contains(&"up.delete_all".to_string()), "{listed:?}");
    let (_, v) = post(
        &dome,
        &[],
        "delete_all",
        &call("delete_all", json!({"message": "m"}), json!({})),
    );
    assert_eq!(text_of(&v), format!("delete_all@{up}:m"), "{v}");
    let (_, v) = post(
        &dome,
        &[],
        "other.delete_all",
        &call("other.delete_all", json!({"message": "m"}), json!({})),
    );
    assert_eq!(
        v["error"]["code"], -32005,
        "the rule on other's delete_all holds: {v}"
    );
}

#[test]
fn calls_to_unknown_tools_do_not_make_dome_list_every_upstream_each_time() {
    let demos: Vec<(Proc, SocketAddr)> = (0..4).map(|_| start_demo(&[])).collect();
    let upstreams: String = demos
        .iter()
        .enumerate()
        .map(|(i, (_, a))| format!("[[upstream]]\nname = \"u{i}\"\nurl = \"http://{a}/mcp\"\n"))
        .collect();
    // (Each unknown name is a strike against the caller: not this test's
    // subject.)
    let dome = start_dome(
        "hostile-amplify",
        &format!("{upstreams}[escalation]\nmax_strikes = 1000\n"),
    );
    let before: Vec<u64> = demos
        .iter()
        .map(|(_, a)| demo_stats(*a)["tool_lists"].as_u64().unwrap())
        .collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..5 {
            let dome = &dome;
            s.spawn(move || {
                for i in 0..10 {
                    let name = format!("no_such_tool_{t}_{i}");
                    let (_, v) = post(dome, &[], &name, &call(&name, json!({}), json!({})));
                    assert_eq!(v["error"]["code"], -32602, "{v}");
                }
            });
        }
    });
    // One listing a second at most (`catalog_refresh_ms`), however many
    // calls ask: 50 calls made 50 `tools/list` to each upstream.
    let most = 1 + started.elapsed().as_secs() + 1;
    for ((_, a), before) in demos.iter().zip(before) {
        let lists = demo_stats(*a)["tool_lists"].as_u64().unwrap() - before;
        assert!(lists <= most, "{a} was listed {lists} times for 50 calls");
    }
}

#[test]
fn an_upstream_down_at_start_joins_the_catalog_once_it_answers() {
    let (_demo, demo) = start_demo(&[]);
    let late = local(free_port());
    let dome = start_dome(
        "hostile-late",
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             [[upstream]]\nname = \"late\"\nurl = \"http://{late}/mcp\"\nprefix = \"always\"\n"
        ),
    );
    assert!(!tools(&dome).contains(&"late.echo".to_string()));
    let _late = demo_at(late, &[]);
    // Retried with backoff (1 s, 2 s, 4 s …): it stayed out until its
    // configuration changed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if tools(&dome).contains(&"late.echo".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "late.echo never appeared: {:?}",
            tools(&dome)
        );
    }
    let (status, v) = post(
        &dome,
        &[],
        "late.echo",
        &call("late.echo", json!({"message": "here"}), json!({})),
    );
    assert_eq!((status, text_of(&v)), (200, "here"), "{v}");
}

#[test]
fn dome_s_meta_namespace_never_reaches_the_upstream() {
    let (_demo, demo) = start_demo(&["--whoami"]);
    let dome = start_dome(
        "hostile-meta",
        &format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"),
    );
    // A caller's `dome/…` keys reached the upstream as they were, where
    // they could pass for Dome's word.
    let (status, v) = post(
        &dome,
        &[],
        "whoami",
        &call(
            "whoami",
            json!({}),
            json!({"dome/intent": "audit me", "dome/agent": "admin", "dome/verified": true,
                   "progressToken": "p", "acme/x": 1}),
        ),
    );
    assert_eq!(status, 200, "{v}");
    let meta = &v["result"]["structuredContent"]["meta"];
    assert_eq!(meta["acme/x"], 1, "{v}");
    for key in ["dome/intent", "dome/agent", "dome/verified"] {
        assert!(
            meta.get(key).is_none(),
            "{key} reached the upstream: {meta}"
        );
    }
}

/// A stateless-era list request of `method`; the items of its result's `field`.
fn list(dome: &Dome, auth: Option<&str>, method: &str, field: &str, key: &str) -> Vec<String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let mut headers = vec![
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
    ];
    headers.extend(auth.map(|a| ("Authorization", a)));
    let (status, _, text) = http(dome.mcp, "POST", "/mcp", &headers, &body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["result"][field]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t[key].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn resources_templates_and_prompts_are_listed_only_where_policy_could_allow_them() {
    let (_sdk, sdk) = start_sdk_upstream();
    let dome = guarded_by(
        "hostile-visibility",
        &format!("[[upstream]]\nname = \"sdk\"\nurl = \"http://{sdk}/mcp\"\n"),
        "\n[[rule]]\nid = \"notes\"\neffect = \"allow\"\n[rule.when]\nkind = \"resource\"\n\
         tool = \"notes://*\"\nagent = \"agent-a\"\n",
    );
    let a = format!("Bearer {KEY_A}");
    let b = format!("Bearer {KEY_B}");
    // Listed to anyone before, though reading them was denied.
    assert_eq!(
        list(&dome, Some(&a), "resources/list", "resources", "uri"),
        vec!["notes://one/readme"]
    );
    assert!(list(&dome, Some(&b), "resources/list", "resources", "uri").is_empty());
    assert!(
        list(
            &dome,
            Some(&a),
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate"
        )
        .is_empty()
    );
    assert!(list(&dome, Some(&a), "prompts/list", "prompts", "name").is_empty());
    assert_eq!(
        list(&dome, Some(&a), "tools/list", "tools", "name"),
        vec!["echo"]
    );

    let ask = |method: &str, params: Value| {
        let mut p = params;
        p["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": {}});
        let name = p["uri"]
            .as_str()
            .or(p["name"].as_str())
            .unwrap_or_default()
            .to_string();
        let body = json!({"jsonrpc": "2.0", "id": 3, "method": method, "params": p}).to_string();
        let (_, _, text) = http(
            dome.mcp,
            "POST",
            "/mcp",
            &[
                ("Accept", "application/json, text/event-stream"),
                ("Content-Type", "application/json"),
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", method),
                ("Mcp-Name", name.as_str()),
                ("Authorization", a.as_str()),
            ],
            &body,
        );
        serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
    };
    // A URI spelled other than plainly could reach what a deny rule on its
    // plain form keeps out.
    for uri in [
        "notes://one/../two/readme",
        "notes://one//readme",
        "notes://one/%72eadme",
    ] {
        let v = ask("resources/read", json!({"uri": uri}));
        assert_eq!(v["error"]["code"], -32602, "{uri}: {v}");
    }
    // Refused, each is still recorded with the URI it named.
    let records = audit_records(&dome);
    for uri in ["notes://one/../two/readme", "notes://one/%72eadme"] {
        assert!(
            records
                .iter()
                .any(|r| r["name"] == uri && r["kind"] == "resource"),
            "{uri}: {records:?}"
        );
    }
    // A completion reference of another type was judged by its `uri` and
    // forwarded with its `name`.
    let v = ask(
        "completion/complete",
        json!({"ref": {"type": "ref/other", "uri": "users://one/{user_id}", "name": "greet"},
               "argument": {"name": "name", "value": "x"}}),
    );
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = ask("resources/read", json!({"uri": "notes://one/readme"}));
    assert_eq!(v["result"]["contents"][0]["text"], "readme of one", "{v}");
    // Prompts count against the agent's budget like tool calls (four
    // calls, and one was the read above).
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            ask(
                "prompts/get",
                json!({"name": "greet", "arguments": {"name": "x"}}),
            )["error"]["code"]
                .clone(),
        );
    }
    assert_eq!(
        codes,
        vec![json!(-32005), json!(-32005), json!(-32005), json!(-32004)]
    );
}

/// An upstream's result nested past the bound is refused, not relayed: a
/// result nested 100,000 deep reached the caller, whose parser it could
/// take down (found by probing; the refusal was unit-tested only).
#[test]
fn an_upstream_result_nested_past_the_bound_is_refused_not_relayed() {
    let (_demo, demo) = start_demo(&["--deep"]);
    let dome = guarded_by(
        "hostile-deep",
        &format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"),
        "\n[[rule]]\nid = \"deep\"\neffect = \"allow\"\n[rule.when]\ntool = \"deep\"\n",
    );
    let a = format!("Bearer {KEY_A}");
    let auth = [("Authorization", a.as_str())];
    let (status, v) = post(
        &dome,
        &auth,
        "deep",
        &call("deep", json!({"depth": 100}), json!({})),
    );
    assert_eq!(status, 200, "{v}");
    let mut inner = &v["result"]["structuredContent"]["nested"];
    let mut depth = 0;
    while let Some(a) = inner.as_array() {
        inner = &a[0];
        depth += 1;
    }
    assert_eq!((depth, inner.as_str()), (100, Some("bottom")), "{v}");

    let (status, v) = post(
        &dome,
        &auth,
        "deep",
        &call("deep", json!({"depth": 200}), json!({})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["code"], -32001, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nested deeper than 128"), "{v}");
}
