//! Helpers for the integration tests: real processes, real sockets.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// A port nothing listens on, for a process the test starts. It comes from
/// below the kernel's ephemeral range (32768-60999 by default): a port from
/// that range, found free by binding port 0, can be taken by any outgoing
/// connection (the tests make many) before the process binds it. Each call
/// in this test binary gets a port of its own.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries that run at once start apart.
    let start = (std::process::id() % 2_000) * 10;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub(crate) fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A child process killed when dropped.
pub(crate) struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts connections on `addr`.
pub(crate) fn wait_port(addr: SocketAddr, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = proc.child.try_wait().unwrap() {
            panic!("{} exited early ({status})", proc.name);
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened on {addr}",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// The Python interpreter of a virtual environment under `target/` that has
/// the official MCP SDK (pinned), created on first use.
pub(crate) fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        venv(
            &workspace().join("target/pyenv"),
            "dome-sdk.stamp",
            "mcp==2.3.0",
        )
    })
    .clone()
}

/// The interpreter of the virtual environment at `dir` with `pkg` (a pip
/// requirement) installed: made the first time, and again whenever the
/// stamp file `stamp` names another requirement.
pub(crate) fn venv(dir: &Path, stamp: &str, pkg: &str) -> PathBuf {
    let py = dir.join("bin/python");
    let stamp = dir.join(stamp);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(pkg) && py.is_file() {
        return py;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(dir)
        .status()
        .expect("python3 -m venv");
    assert!(ok.success(), "creating {} failed", dir.display());
    let ok = Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            pkg,
        ])
        .status()
        .expect("pip install");
    assert!(ok.success(), "installing {pkg} failed");
    std::fs::write(&stamp, pkg).unwrap();
    py
}

/// The tools a client sees through a Dome in front of the demo upstream
/// (`demo`) and the Python SDK upstream (`sdk`), both `prefix =
/// "on_conflict"`: one list, the clashing `echo` prefixed.
pub(crate) const DEMO_AND_SDK_TOOLS: [&str; 10] = [
    "add",
    "approve",
    "ask_llm",
    "countdown",
    "demo.echo",
    "fail",
    "paint",
    "records",
    "sdk.echo",
    "slow",
];

pub(crate) fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// A raw HTTP/1.1 exchange: (status, lower-cased headers, body).
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: dome\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // A server may answer and close before it has read everything (a 431 for
    // an oversized head): a failed write is not the test's verdict, the reply is.
    let _ = s.write_all(req.as_bytes());
    let _ = s.write_all(body.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, headers, body)
}

/// `dome audit query --format jsonl` on Dome's config: every record.
pub(crate) fn audit_records(dome: &Dome) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_dome"))
        .args(["audit", "query", "--format", "jsonl", "--config"])
        .arg(&dome.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A session opened (`initialize`, protocol 2025-11-25) with API key `key`:
/// its id.
pub(crate) fn open_session(dome: &Dome, key: &str) -> String {
    let auth = format!("Bearer {key}");
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (status, headers, text) = http(
        dome.mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ],
        init,
    );
    assert_eq!(status, 200, "{text}");
    header(&headers, "mcp-session-id")
        .expect("a session")
        .to_string()
}

/// A chunked body's data, its framing taken off.
pub(crate) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The SHA-256 (hex) of an API key or token, as the config stores it.
pub(crate) fn sha(key: &str) -> String {
    dome::identity::apikey::to_hex(&dome::identity::apikey::hash(key))
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Dome started on a config written for the test, XDP off (the kernel tests
/// own XDP), stats and MCP on free ports.
pub(crate) struct Dome {
    pub proc: Proc,
    pub mcp: SocketAddr,
    pub stats: SocketAddr,
    pub config: PathBuf,
}

fn config_text(config: &Path, mcp: SocketAddr, stats: SocketAddr, rest: &str) -> String {
    config_text_server(config, mcp, stats, "", rest)
}

/// As `config_text`, with `server` (settings of `[server]` besides its listener).
fn config_text_server(
    config: &Path,
    mcp: SocketAddr,
    stats: SocketAddr,
    server: &str,
    rest: &str,
) -> String {
    let auth = if rest.contains("[auth]") {
        String::new()
    } else {
        auth_off(config)
    };
    let policy = if rest.contains("[policy]") {
        String::new()
    } else {
        allow_all_policy(config)
    };
    let server = if server.is_empty() {
        String::new()
    } else {
        format!("{server}\n")
    };
    // These go last, so line numbers in `rest` stay as a test wrote them.
    format!(
        "[server]\nlisten = \"{mcp}\"\n{server}[stats]\nlisten = \"{stats}\"\n[xdp]\nenabled = false\n\n{rest}\n{auth}{policy}"
    )
}

/// The registry folder of the Dome run on `config`: one per test run.
pub(crate) fn data_dir(config: &Path) -> PathBuf {
    config.with_extension("data")
}

/// A `[policy]` section for tests that are not about policy: a folder of
/// its own with one rule that allows every call.
pub(crate) fn allow_all_policy(config: &Path) -> String {
    let dir = config.with_extension("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("allow-all.toml"),
        "[[rule]]\nid = \"allow-everything\"\neffect = \"allow\"\n",
    )
    .unwrap();
    format!("\n[policy]\ndir = \"{}\"\n", dir.display())
}

/// An `[auth]` section for tests that are not about authentication:
/// anonymous callers allowed, and a registry folder of the test's own.
pub(crate) fn auth_off(config: &Path) -> String {
    format!(
        "\n[auth]\nrequired = false\ndata_dir = \"{}\"\n",
        data_dir(config).display()
    )
}

impl Dome {
    /// Rewrites the config file with the same listeners and `rest`.
    pub(crate) fn rewrite(&self, rest: &str) {
        std::fs::write(
            &self.config,
            config_text(&self.config, self.mcp, self.stats, rest),
        )
        .unwrap();
    }

    /// Stops Dome and starts it again on the same config file.
    pub(crate) fn restart(&mut self) {
        self.proc.kill();
        let log = std::fs::File::create(self.config.with_extension("restart.log")).unwrap();
        self.proc = Proc::spawn(
            "dome",
            Command::new(env!("CARGO_BIN_EXE_dome"))
                .arg("--config")
                .arg(&self.config)
                .env("DOME_LOG", "info")
                .stderr(log),
        );
        wait_port(self.stats, &mut self.proc);
        wait_port(self.mcp, &mut self.proc);
    }

    pub(crate) fn stats_json(&self) -> serde_json::Value {
        let (status, _, body) = http(self.stats, "GET", "/stats", &[], "");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }
}

pub(crate) fn start_dome(name: &str, upstreams_toml: &str) -> Dome {
    start_dome_server(name, "", upstreams_toml)
}

/// As [`start_dome`], with `server` (settings of `[server]` besides its
/// listener, one per line).
pub(crate) fn start_dome_server(name: &str, server: &str, upstreams_toml: &str) -> Dome {
    let mcp = local(free_port());
    let mut stats = local(free_port());
    while stats == mcp {
        stats = local(free_port());
    }
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let config = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}-{seq}.toml", std::process::id()));
    std::fs::write(
        &config,
        config_text_server(&config, mcp, stats, server, upstreams_toml),
    )
    .unwrap();
    // Dome's log goes next to its config (target/tmp/NAME-PID.log).
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    let mut proc = Proc::spawn(
        "dome",
        Command::new(env!("CARGO_BIN_EXE_dome"))
            .arg("--config")
            .arg(&config)
            .env("DOME_LOG", "info")
            .stderr(log),
    );
    wait_port(stats, &mut proc);
    wait_port(mcp, &mut proc);
    Dome {
        proc,
        mcp,
        stats,
        config,
    }
}

/// The demo upstream's binary (`dome-demo-upstream`, of the `dome-demo`
/// crate), built the first time a test asks. Cargo names `CARGO_BIN_EXE_*`
/// only for a test's own package, and the demo is deliberately not part of
/// dome-user: it is found in the target directory this test runs from
/// (`target/PROFILE/deps/TEST` → `target/PROFILE/`), and `cargo build -p
/// dome-demo` in the same profile makes sure it is there and current, so a
/// plain `cargo test -p dome-user` works.
pub(crate) fn demo_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/PROFILE/deps/TEST");
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo
            .args([
                "build",
                "--quiet",
                "-p",
                "dome-demo",
                "--bin",
                "dome-demo-upstream",
            ])
            .arg("--manifest-path")
            .arg(workspace().join("Cargo.toml"));
        // `debug` is the dev profile's directory; any other is its profile's name.
        if profile != "debug" {
            cargo.args(["--profile", &profile]);
        }
        let status = cargo.status().expect("running cargo build -p dome-demo");
        assert!(
            status.success(),
            "cargo build -p dome-demo failed ({status})"
        );
        let bin = dir.join("dome-demo-upstream");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// Starts the demo upstream on a free port.
pub(crate) fn start_demo(extra: &[&str]) -> (Proc, SocketAddr) {
    let addr = local(free_port());
    let mut p = Proc::spawn(
        "dome-demo-upstream",
        Command::new(demo_bin())
            .arg(addr.to_string())
            .args(extra)
            .stderr(Stdio::null()),
    );
    wait_port(addr, &mut p);
    (p, addr)
}

/// Starts the Python SDK upstream on a free port.
pub(crate) fn start_sdk_upstream() -> (Proc, SocketAddr) {
    start_sdk_flavor("one")
}

/// Starts the Python SDK upstream with its content named by `flavor`.
pub(crate) fn start_sdk_flavor(flavor: &str) -> (Proc, SocketAddr) {
    start_py_server("sdk_upstream.py", &[flavor])
}

/// Starts a Python server script from `tests/py` on a free port (its first
/// argument), followed by `args`.
pub(crate) fn start_py_server(script: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let addr = local(free_port());
    let mut p = Proc::spawn(
        script,
        Command::new(python())
            .arg(py_script(script))
            .arg(addr.port().to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(addr, &mut p);
    (p, addr)
}

/// Runs a Python client script; returns its stdout parsed as JSON, or panics
/// with its stderr.
pub(crate) fn run_client(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(py_script(script))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} {args:?} failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script}: output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
