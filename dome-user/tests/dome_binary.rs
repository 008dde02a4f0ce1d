//! The `dome` binary as an operator runs it: config errors, start-up without
//! XDP, `/stats`, and clean shutdown on SIGTERM. Real process, real sockets.

mod common;

use common::free_port;
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{name}-{}.toml", std::process::id()));
    // A registry folder of its own (tests run side by side).
    let text = format!(
        "{text}\n[auth]\ndata_dir = \"{}\"\n",
        path.with_extension("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn dome(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dome"));
    c.args(args).env("DOME_LOG", "info");
    c
}

/// GET `path` with a raw HTTP/1.1 request; returns (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: dome\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

fn wait_for_stats(child: &mut Child, addr: SocketAddr) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = get(addr, "/stats") {
            return serde_json::from_str(&body).expect("stats is JSON");
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("dome exited early ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "no /stats within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(mut child: Child) -> (std::process::ExitStatus, String) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dome did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

#[test]
fn bad_config_exits_nonzero_naming_file_line_and_field() {
    let path = temp_config(
        "bad",
        "[server]\nlisten = \"127.0.0.1:1\"\n\n[xdp]\nmode = \"turbo\"\n",
    );
    let out = dome(&["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:", path.display())), "{err}");
    assert!(err.contains("xdp.mode"), "{err}");
    assert!(err.contains("turbo"), "{err}");

    let out = dome(&["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shipped_config_checks_clean() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/dome.toml");
    let out = dome(&["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_xdp_dome_runs_in_user_space_and_says_so() {
    let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = temp_config(
        "noxdp",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[stats]\nlisten = \"{stats}\"\n[xdp]\ninterface = \"domenope0\"\n",
            free_port()
        ),
    );
    let mut child = dome(&["--config", path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s = wait_for_stats(&mut child, stats);
    assert_eq!(s["xdp"]["status"], "unavailable", "{s}");
    assert_eq!(s["xdp"]["enforcement"], "user space only", "{s}");
    let reason = s["xdp"]["reason"].as_str().unwrap();
    // As root the program loads and the interface is what is missing;
    // otherwise loading itself is refused.
    assert!(
        reason.contains("domenope0") || reason.contains("load"),
        "{reason}"
    );
    let (code, _) = get(stats, "/nope").unwrap();
    assert_eq!(code, 404);
    let (status, err) = terminate(child);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("user-space enforcement only"), "{err}");
}

/// Attaches to loopback (SKB mode: `lo` has no native XDP), counts a real
/// connection attempt, and detaches on SIGTERM. Needs root.
#[cfg(feature = "kernel-tests")]
#[test]
fn attaches_to_loopback_counts_packets_and_detaches_on_sigterm() {
    let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mcp_port = free_port();
    let path = temp_config(
        "lo",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{mcp_port}\"\n[stats]\nlisten = \"{stats}\"\n[xdp]\ninterface = \"lo\"\nmode = \"auto\"\n"
        ),
    );
    let mut child = dome(&["--config", path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s = wait_for_stats(&mut child, stats);
    assert_eq!(s["xdp"]["status"], "attached", "{s}");
    assert_eq!(s["xdp"]["mode"], "skb", "{s}");
    assert_eq!(s["xdp"]["interface"], "lo", "{s}");
    assert!(xdp_on_lo(), "ip link shows no XDP program on lo");

    // Nothing listens on the MCP port yet: the SYN is still metered as an
    // unbound flow (and reported as a new flow) before the stack refuses it.
    let _ = TcpStream::connect_timeout(
        &format!("127.0.0.1:{mcp_port}").parse().unwrap(),
        Duration::from_secs(1),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = get(stats, "/stats").unwrap();
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        if s["xdp"]["counters"]["pass_unbound"].as_u64() >= Some(1)
            && s["xdp"]["events"]["new_flow"].as_u64() >= Some(1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no unbound pass or new-flow event: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (status, err) = terminate(child);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("XDP detached"), "{err}");
    assert!(!xdp_on_lo(), "XDP still attached to lo after exit");
}

#[cfg(feature = "kernel-tests")]
fn xdp_on_lo() -> bool {
    let out = Command::new("ip")
        .args(["link", "show", "lo"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}
