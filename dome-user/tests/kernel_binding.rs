//! The gateway's kernel binding, without root: Dome's own runtime (its
//! gateway, MCP listener, admin API and live reload) runs in this process
//! with a `MemoryEnforcer` in place of the XDP program
//! (`runtime::run_with_enforcer`), in front of the demo upstream, over real
//! sockets on 127.0.0.1. What the gateway and escalation ask of the kernel
//! tier is read back from the enforcer: the flows bound to agents' identity
//! slots, the slots' budgets, their blocks. How the XDP program meters
//! what it is told is `xdp_verdicts` and `xdp_veth` (root).

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;
use dome::kernel::{BudgetSpec, Flow, L4, MemoryEnforcer, enforcer::MemoryState};
use serde_json::{Value, json};

const KEY_A: &str = "dome_agent-a_first-agent-key-for-the-kernel-tests";
const KEY_B: &str = "dome_agent-b_second-agent-key-for-the-kernel-tests";
const ADMIN_TOKEN: &str = "admin-token-for-the-kernel-tests";

/// `[xdp.default_budget]` as Dome starts with it: not the default, so
/// the budget seen in the enforcer is the configured one.
const BUDGET: BudgetSpec = BudgetSpec {
    packets_per_sec: 300,
    burst_packets: 30,
    bytes_per_sec: 3_000_000,
    burst_bytes: 300_000,
};

/// Dome run in this process over a `MemoryEnforcer`, and the demo upstream
/// behind it. Dome runs until the test process ends.
struct InProcess {
    kernel: Arc<MemoryEnforcer>,
    mcp: SocketAddr,
    stats: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    /// The config's text before its `[xdp]` section, for a rewrite.
    head: String,
    _demo: Proc,
}

/// Starts Dome (`runtime::run_with_enforcer`) on a config of its own, with
/// agents `agent-a` and `agent-b` of tenant `acme`, `[xdp]` budget
/// [`BUDGET`], three strikes to a block, and a policy that allows `echo`
/// only. Returns once it listens.
fn start(name: &str) -> InProcess {
    let (demo_proc, demo) = start_demo(&[]);
    let (mcp, stats, admin) = (local(free_port()), local(free_port()), local(free_port()));
    let config = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.toml", std::process::id()));
    let data = data_dir(&config);
    let _ = std::fs::remove_dir_all(&data);
    let policies = config.with_extension("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("echo-only.toml"),
        "[[rule]]\nid = \"echo\"\neffect = \"allow\"\n[rule.when]\ntool = \"echo\"\n",
    )
    .unwrap();
    let head = format!(
        "[server]\nlisten = \"{mcp}\"\nworkers = 1\n[stats]\nlisten = \"{stats}\"\n\
         [admin]\nlisten = \"{admin}\"\ntoken_sha256 = \"{}\"\n\
         [escalation]\nmax_strikes = 3\nwindow_s = 60\nblock_s = 600\n\
         [[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
         [auth]\ndata_dir = \"{}\"\n[policy]\ndir = \"{}\"\n\
         [[tenant]]\nname = \"acme\"\n\
         [[agent]]\nid = \"agent-a\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n\
         [[agent]]\nid = \"agent-b\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n",
        sha(ADMIN_TOKEN),
        data.display(),
        policies.display(),
        sha(KEY_A),
        sha(KEY_B),
    );
    std::fs::write(&config, format!("{head}{}", xdp_section(&BUDGET))).unwrap();

    let kernel = Arc::new(MemoryEnforcer::default());
    let enforcer: Arc<dyn dome::kernel::Enforcer> = kernel.clone();
    let path = config.clone();
    let dome = std::thread::Builder::new()
        .name(format!("dome-{name}"))
        .spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("a runtime for Dome");
            rt.block_on(dome::runtime::run_with_enforcer(&path, enforcer))
        })
        .unwrap();
    // The stats listener is the last to open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&stats, Duration::from_millis(200)).is_err() {
        if dome.is_finished() {
            panic!("Dome stopped: {:?}", dome.join());
        }
        assert!(Instant::now() < deadline, "Dome never listened on {stats}");
        std::thread::sleep(Duration::from_millis(30));
    }
    InProcess {
        kernel,
        mcp,
        stats,
        admin,
        config,
        head,
        _demo: demo_proc,
    }
}

/// The `[xdp]` section: only its budget matters, as no program loads.
fn xdp_section(budget: &BudgetSpec) -> String {
    format!(
        "[xdp.default_budget]\npackets_per_sec = {}\nburst_packets = {}\n\
         bytes_per_sec = {}\nburst_bytes = {}\n",
        budget.packets_per_sec, budget.burst_packets, budget.bytes_per_sec, budget.burst_bytes
    )
}

impl InProcess {
    /// What the gateway and escalation have asked of the kernel tier so far.
    fn kernel(&self) -> MemoryState {
        self.kernel.state()
    }

    /// Waits until the kernel tier holds what `done` looks for: a
    /// connection's flow is unbound only once Dome has seen it close.
    fn kernel_until(&self, what: &str, done: impl Fn(&MemoryState) -> bool) -> MemoryState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = self.kernel();
            if done(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "{what}: {state:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An admin API request: (status, JSON body).
    fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let (status, _, body) = http(self.admin, method, path, &[("Authorization", &auth)], "");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// The identity slot the registry gave `agent`.
    fn slot(&self, agent: &str) -> u32 {
        let (status, v) = self.admin("GET", &format!("/agents/{agent}"));
        assert_eq!(status, 200, "{v}");
        v["slot"].as_u64().unwrap() as u32
    }

    /// Rewrites the config with `budget` in `[xdp]` and waits for the
    /// reload to apply.
    fn reload_with_budget(&self, budget: &BudgetSpec) {
        let reloads = |d: &InProcess| {
            let (_, _, body) = http(d.stats, "GET", "/stats", &[], "");
            let s: Value = serde_json::from_str(&body).unwrap();
            s["config"]["reloads"].as_u64().unwrap()
        };
        let before = reloads(self);
        std::fs::write(
            &self.config,
            format!("{}{}", self.head, xdp_section(budget)),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads(self) == before {
            assert!(Instant::now() < deadline, "the new budget never reloaded");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client connection held open (HTTP/1.1 keep-alive), so that what Dome
/// bound for it can be looked at while it lasts.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(dome: &InProcess) -> Client {
        let s = TcpStream::connect_timeout(&dome.mcp, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    /// This connection as the kernel keys it: the client's address and
    /// port, Dome's port.
    fn flow(&self) -> Flow {
        let (me, dome) = (
            self.writer.local_addr().unwrap(),
            self.writer.peer_addr().unwrap(),
        );
        Flow {
            proto: L4::Tcp,
            src: me.ip(),
            src_port: me.port(),
            dst_port: dome.port(),
        }
    }

    /// Calls `tool` with `key` (`None`: no credential): the HTTP status and
    /// the JSON-RPC error code, if any (a policy denial is 200 with
    /// -32005).
    fn call(&mut self, key: Option<&str>, tool: &str) -> (u16, Option<i64>) {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": tool, "arguments": {"message": "m"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}})
        .to_string();
        let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        // One write: `write!` sends each formatted piece on its own, and a
        // 401 answered before the body's piece arrives leaves the body
        // unread, so hyper closes the connection (as it may for any client).
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: dome\r\nAccept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\n\
             Mcp-Method: tools/call\r\nMcp-Name: {tool}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(request.as_bytes()).unwrap();
        let (status, body) = self.response();
        // A JSON answer, or the last message of an SSE one.
        let message = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .next_back()
            .unwrap_or(&body);
        let v: Value = serde_json::from_str(message.trim()).unwrap_or(Value::Null);
        (status, v["error"]["code"].as_i64())
    }

    /// One response, read to its end without closing the connection:
    /// (status, body).
    fn response(&mut self) -> (u16, String) {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (mut length, mut chunked) = (0, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let Some((k, v)) = line.trim_end().split_once(':') else {
                break;
            };
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if !chunked {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).unwrap();
        } else {
            loop {
                line.clear();
                self.reader.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// An agent's request binds its connection's flow (client address and
/// port → Dome's port) to the agent's identity slot, once, whatever else
/// it sends on it; another agent's connection is bound to its own slot; a
/// connection that never authenticated is bound to nothing. Each binding
/// goes when its connection closes.
#[test]
fn an_authenticated_connection_is_bound_to_its_agents_slot_until_it_closes() {
    let dome = start("kernel-bind");
    let (slot_a, slot_b) = (dome.slot("agent-a"), dome.slot("agent-b"));
    assert_ne!(slot_a, slot_b);

    let mut a = Client::connect(&dome);
    assert_eq!(dome.kernel().flows.get(&a.flow()), None, "bound on connect");
    assert_eq!(a.call(Some(KEY_A), "echo"), (200, None));
    assert_eq!(dome.kernel().flows.get(&a.flow()), Some(&slot_a));
    let mut b = Client::connect(&dome);
    assert_eq!(b.call(Some(KEY_B), "echo"), (200, None));
    assert_eq!(a.call(Some(KEY_A), "echo"), (200, None));
    let kernel = dome.kernel();
    assert_eq!(kernel.flows.get(&b.flow()), Some(&slot_b));
    assert_eq!(kernel.flows.get(&a.flow()), Some(&slot_a));
    assert_eq!(kernel.flows.len(), 2, "{kernel:?}");

    let mut stranger = Client::connect(&dome);
    assert_eq!(stranger.call(None, "echo"), (401, Some(-32003)));
    assert_eq!(
        stranger.call(Some("dome_agent-a_a-wrong-key-a-wrong-key"), "echo"),
        (401, Some(-32003))
    );
    assert_eq!(dome.kernel().flows.get(&stranger.flow()), None);

    let (flow_a, flow_b) = (a.flow(), b.flow());
    drop(a);
    let kernel = dome.kernel_until("agent-a's flow unbound", |k| !k.flows.contains_key(&flow_a));
    assert_eq!(kernel.flows.get(&flow_b), Some(&slot_b), "{kernel:?}");
    drop(b);
    dome.kernel_until("every flow unbound", |k| k.flows.is_empty());
}

/// Binding a flow holds the agent's slot to `[xdp] default_budget`; after
/// a live reload that changes it, the agent's next connection binds with
/// the new budget.
#[test]
fn an_agents_kernel_budget_is_the_configured_one_and_follows_a_reload() {
    let dome = start("kernel-budget");
    let slot = dome.slot("agent-a");
    assert_eq!(
        dome.kernel().budgets.get(&slot),
        None,
        "set before any request"
    );
    let mut first = Client::connect(&dome);
    assert_eq!(first.call(Some(KEY_A), "echo"), (200, None));
    assert_eq!(dome.kernel().budgets.get(&slot), Some(&BUDGET));

    let changed = BudgetSpec {
        packets_per_sec: 50,
        burst_packets: 5,
        bytes_per_sec: 500_000,
        burst_bytes: 50_000,
    };
    dome.reload_with_budget(&changed);
    // Found by this test: the budget was set only when a connection was
    // bound, so an agent that kept its one connection open stayed on the
    // old budget. Every agent's slot follows the reload at once.
    let kernel = dome.kernel();
    assert_eq!(kernel.budgets.get(&slot), Some(&changed), "{kernel:?}");
    assert_eq!(
        kernel.budgets.get(&dome.slot("agent-b")),
        Some(&changed),
        "{kernel:?}"
    );
    assert_eq!(kernel.flows.get(&first.flow()), Some(&slot));
    assert_eq!(first.call(Some(KEY_A), "echo"), (200, None));
    let mut next = Client::connect(&dome);
    assert_eq!(next.call(Some(KEY_A), "echo"), (200, None));
    let kernel = dome.kernel();
    assert_eq!(kernel.budgets.get(&slot), Some(&changed));
    assert_eq!(kernel.flows.get(&next.flow()), Some(&slot));
}

/// An agent denied by policy `max_strikes` times is blocked in the kernel
/// tier for `block_s` (and refused in user space: 403, its new connections
/// left unbound); lifting the block through the admin API lifts it in the
/// kernel too, and the agent is served and bound again. The other agent is
/// never blocked.
#[test]
fn repeated_denials_block_the_agent_in_the_kernel_until_the_admin_lifts_it() {
    let dome = start("kernel-block");
    let (slot_a, slot_b) = (dome.slot("agent-a"), dome.slot("agent-b"));
    let mut b = Client::connect(&dome);
    assert_eq!(b.call(Some(KEY_B), "echo"), (200, None));
    for strike in 1..=3 {
        assert_eq!(
            dome.kernel().blocked.get(&slot_b),
            None,
            "before strike {strike}"
        );
        assert_eq!(b.call(Some(KEY_B), "slow"), (200, Some(-32005)));
    }
    let kernel = dome.kernel();
    assert_eq!(
        kernel.blocked.get(&slot_b),
        Some(&Some(Duration::from_secs(600))),
        "{kernel:?}"
    );
    assert_eq!(kernel.blocked.len(), 1, "{kernel:?}");
    assert_eq!(b.call(Some(KEY_B), "echo").0, 403);
    let mut again = Client::connect(&dome);
    assert_eq!(again.call(Some(KEY_B), "echo").0, 403);
    assert_eq!(dome.kernel().flows.get(&again.flow()), None);
    let mut a = Client::connect(&dome);
    assert_eq!(a.call(Some(KEY_A), "echo"), (200, None));
    assert_eq!(dome.kernel().flows.get(&a.flow()), Some(&slot_a));

    let (status, v) = dome.admin("GET", "/blocks");
    assert_eq!(status, 200, "{v}");
    let key = format!("identity/{slot_b}");
    assert_eq!(v["blocks"][0]["key"], key.as_str(), "{v}");
    assert_eq!(v["blocks"][0]["kernel"], true, "{v}");
    let (status, v) = dome.admin("DELETE", &format!("/blocks/{key}"));
    assert_eq!(status, 200, "{v}");
    assert!(dome.kernel().blocked.is_empty(), "{:?}", dome.kernel());
    assert_eq!(again.call(Some(KEY_B), "echo"), (200, None));
    assert_eq!(dome.kernel().flows.get(&again.flow()), Some(&slot_b));
}
