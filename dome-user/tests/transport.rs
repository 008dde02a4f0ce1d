//! The MCP listener's transport: TLS with a real client (curl), HTTP/2 by
//! ALPN, and the limits (header size, header and body timeouts, connections).

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::*;

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;

fn self_signed() -> (PathBuf, PathBuf) {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    write_self_signed(&c, &k);
    (c, k)
}

/// A new key pair and self-signed certificate for localhost into `cert`
/// and `key`.
fn write_self_signed(cert: &Path, key: &Path) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    std::fs::write(cert, made.cert.pem()).unwrap();
    std::fs::write(key, made.signing_key.serialize_pem()).unwrap();
}

/// Whether an MCP `initialize` over HTTPS succeeds trusting only `ca`.
fn handshake_trusting(port: u16, ca: &Path) -> bool {
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--cacert"])
        .arg(ca)
        .args(["-H", "Content-Type: application/json"])
        .args([
            "-H",
            "Accept: application/json, text/event-stream",
            "-d",
            INIT,
        ])
        .arg(format!("https://localhost:{port}/mcp"))
        .status()
        .unwrap()
        .success()
}

/// A certificate renewed over the same files serves new connections
/// without a restart; a renewal that does not load leaves the certificate
/// in use, and the log says why.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-renew-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    write_self_signed(&cert, &key);
    let first = dir.join("first.pem");
    std::fs::copy(&cert, &first).unwrap();
    let (_demo, demo) = start_demo(&[]);
    let dome = start_dome(
        "tls-renew",
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n",
            cert.display(),
            key.display()
        ),
    );
    let port = dome.mcp.port();
    assert!(handshake_trusting(port, &first));

    write_self_signed(&cert, &key);
    let renewed = dir.join("renewed.pem");
    std::fs::copy(&cert, &renewed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !handshake_trusting(port, &renewed) {
        assert!(Instant::now() < deadline, "the renewal was never served");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !handshake_trusting(port, &first),
        "new connections no longer get the first certificate"
    );

    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntorn\n").unwrap();
    let log = dome.config.with_extension("log");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("do not load")
    {
        assert!(
            Instant::now() < deadline,
            "the broken renewal was never reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&cert.display().to_string()),
        "names the file: {text}"
    );
    assert!(
        handshake_trusting(port, &renewed),
        "the certificate in use stays"
    );
}

#[test]
fn tls_serves_mcp_over_http2_and_http1() {
    let (cert, key) = self_signed();
    let (_demo, demo) = start_demo(&[]);
    let dome = start_dome(
        "tls",
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n",
            cert.display(),
            key.display()
        ),
    );
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(&cert)
            .args([
                flag,
                "-w",
                "\n%{http_version}",
                "-H",
                "Content-Type: application/json",
            ])
            .args([
                "-H",
                "Accept: application/json, text/event-stream",
                "-d",
                INIT,
            ])
            .arg(format!("https://localhost:{}/mcp", dome.mcp.port()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, version) = text.rsplit_once('\n').unwrap();
        assert_eq!(version, want);
        assert!(
            body.contains("\"protocolVersion\":\"2025-11-25\""),
            "{body}"
        );
    }
    // Plain HTTP to the TLS port gets nowhere.
    let (status, _, _) = http(dome.mcp, "POST", "/mcp", &[], INIT);
    assert_eq!(status, 0);
}

#[test]
fn a_bad_certificate_path_is_a_config_error_naming_the_file() {
    let config = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("badtls-{}.toml", std::process::id()));
    std::fs::write(&config, "[xdp]\nenabled = false\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dome"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3:") && err.contains("field `tls`") && err.contains("/nonexistent/cert.pem"),
        "{err}"
    );
}

#[test]
fn limits_are_enforced() {
    let (_demo, demo) = start_demo(&[]);
    // Limits need their own [server] section, so this test writes its config whole.
    let mcp = local(free_port());
    let mut stats = local(free_port());
    while stats == mcp {
        stats = local(free_port());
    }
    let config = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("limits-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{mcp}\"\nmax_connections = 1\nworkers = 1\nmax_header_bytes = 8192\nheader_timeout_ms = 400\nbody_timeout_ms = 400\n\
             [stats]\nlisten = \"{stats}\"\n[xdp]\nenabled = false\n[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n{}{}",
            auth_off(&config),
            allow_all_policy(&config)
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(
        "dome",
        Command::new(env!("CARGO_BIN_EXE_dome"))
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::null()),
    );
    wait_port(stats, &mut proc);
    wait_port(mcp, &mut proc);
    // wait_port's probe connections may still hold the single slot briefly.
    std::thread::sleep(Duration::from_millis(600));

    let ok = http(
        mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
        ],
        INIT,
    );
    assert_eq!(ok.0, 200);

    heads_and_bodies_are_held_to_their_limits(mcp);
    a_second_connection_waits_for_the_only_slot(mcp);
}

/// `max_header_bytes`, `body_timeout_ms` and `header_timeout_ms`.
fn heads_and_bodies_are_held_to_their_limits(mcp: std::net::SocketAddr) {
    // A head over max_header_bytes.
    // A head over max_header_bytes is refused: 431, or (when the server's
    // close with our bytes still unread resets the connection before its
    // answer is read) no answer at all — never a served request.
    let big = "x".repeat(20_000);
    let (status, _, _) = http(mcp, "POST", "/mcp", &[("X-Big", &big)], INIT);
    assert!(
        status == 431 || status == 0,
        "oversized head answered {status}"
    );
    // Just under the limit is served.
    let fits = "x".repeat(4_000);
    let (status, _, _) = http(
        mcp,
        "POST",
        "/mcp",
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
            ("X-Fits", &fits),
        ],
        INIT,
    );
    assert_eq!(status, 200);

    // A body that never finishes arriving: 408 after body_timeout_ms.
    let mut s = TcpStream::connect(mcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\"").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    drop(s);

    // Headers that never finish: the connection is closed after header_timeout_ms.
    let mut s = TcpStream::connect(mcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /mcp HTTP/1.1\r\nHost: d\r\n").unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow client was not cut off"
    );
    drop(s);
}

/// `max_connections = 1`: a second connection waits while the first is
/// busy, and is served once it closes.
fn a_second_connection_waits_for_the_only_slot(mcp: std::net::SocketAddr) {
    // One connection at a time: a second waits while the first is busy (a
    // call in flight; an idle one would be shed to make room).
    let mut holder = TcpStream::connect(mcp).unwrap();
    let slow = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow","arguments":{"steps":2,"delay_ms":400},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    write!(
        holder,
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: slow\r\n\
         Content-Length: {}\r\n\r\n{slow}",
        slow.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut second = TcpStream::connect(mcp).unwrap();
    second
        // Well inside the holder's 400 ms header timeout, which frees its slot.
        .set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{INIT}",
        INIT.len()
    );
    second.write_all(req.as_bytes()).unwrap();
    let mut got = [0u8; 64];
    assert!(
        second.read(&mut got).is_err(),
        "served beyond max_connections"
    );
    drop(holder);
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut resp = String::new();
    let _ = second.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// One HTTP/1.1 request on a kept-alive connection; its status, once the
/// whole answer (by Content-Length or chunks) is read.
fn exchange(s: &mut TcpStream, body: &str) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let head = head.to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let done = match length {
            Some(n) => rest.len() >= n,
            None => rest.ends_with("0\r\n\r\n"),
        };
        if done {
            return head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// A connection from a chosen loopback address.
fn connect_from(src: &str, to: std::net::SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(2))
        .unwrap();
    sock.into()
}

/// Whether Dome closed the connection (without a byte) within `wait`.
fn closed_by_dome(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Dome with the `[server]` settings given (beside its listener), the demo
/// upstream and anonymous callers allowed; its process and MCP address.
fn dome_with_server(name: &str, server: &str) -> (Proc, Proc, std::net::SocketAddr) {
    let (demo_proc, demo) = start_demo(&[]);
    let mcp = local(free_port());
    let mut stats = local(free_port());
    while stats == mcp {
        stats = local(free_port());
    }
    let config = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{mcp}\"\n{server}\n\
             [stats]\nlisten = \"{stats}\"\n[xdp]\nenabled = false\n[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n{}{}",
            auth_off(&config),
            allow_all_policy(&config)
        ),
    )
    .unwrap();
    let mut proc = Proc::spawn(
        "dome",
        Command::new(env!("CARGO_BIN_EXE_dome"))
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::null()),
    );
    wait_port(stats, &mut proc);
    wait_port(mcp, &mut proc);
    // wait_port's probe connections may still be counted briefly.
    std::thread::sleep(Duration::from_millis(300));
    (demo_proc, proc, mcp)
}

/// Connections that never send a request (or never finish one) cannot
/// hold every slot: at `max_connections`, the oldest idle connection that
/// has not authenticated is closed for a new client, which is served at
/// once rather than after the idle ones' header timeout; an authenticated
/// connection is kept.
#[test]
fn idle_connections_at_the_limit_make_room_for_a_new_client() {
    let (_demo, _dome, mcp) = dome_with_server(
        "shed",
        "max_connections = 4\nworkers = 1\nheader_timeout_ms = 20000\n",
    );
    let mut served = TcpStream::connect(mcp).unwrap();
    assert_eq!(exchange(&mut served, INIT), 200);
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(mcp).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s
        })
        .collect();
    // A half-open request holds a slot the same way.
    idle[1]
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: d\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    let mut newcomer = TcpStream::connect(mcp).unwrap();
    assert_eq!(exchange(&mut newcomer, INIT), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the new client waited {:?}",
        started.elapsed()
    );
    assert!(
        closed_by_dome(&mut idle[0], Duration::from_secs(1)),
        "the oldest idle connection was not the one closed"
    );
    // The authenticated connection is still served.
    assert_eq!(exchange(&mut served, INIT), 200);
    // And so is the next newcomer, in place of the next idle one.
    let mut another = TcpStream::connect(mcp).unwrap();
    assert_eq!(exchange(&mut another, INIT), 200);
    assert!(closed_by_dome(&mut idle[1], Duration::from_secs(1)));
}

/// One address cannot take more than `max_connections_per_ip`, nor one
/// /24 more than `max_connections_per_prefix`: the connection beyond is
/// closed at once, while other addresses still connect and are served.
#[test]
fn one_address_or_network_cannot_hold_more_than_its_share_of_connections() {
    let (_demo, _dome, mcp) = dome_with_server(
        "per-source",
        "max_connections = 100\nmax_connections_per_ip = 3\nmax_connections_per_prefix = 5\nworkers = 2\n",
    );
    let held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", mcp)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut beyond = connect_from("127.0.0.1", mcp);
    assert!(
        closed_by_dome(&mut beyond, Duration::from_secs(2)),
        "a fourth connection from one address was kept"
    );
    // Another address of the same /24 is served.
    let mut other = connect_from("127.0.0.2", mcp);
    assert_eq!(exchange(&mut other, INIT), 200);
    // Five in the /24 now (three, this one and one more); a sixth from yet
    // another address of it is closed.
    let _fifth = connect_from("127.0.0.3", mcp);
    std::thread::sleep(Duration::from_millis(100));
    let mut sixth = connect_from("127.0.0.4", mcp);
    assert!(
        closed_by_dome(&mut sixth, Duration::from_secs(2)),
        "a sixth connection from one /24 was kept"
    );
    // Another network is not held to this one's count.
    let mut elsewhere = connect_from("127.0.1.1", mcp);
    assert_eq!(exchange(&mut elsewhere, INIT), 200);
    // Closing connections gives their address its share back.
    drop(held);
    drop(other);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect_from("127.0.0.1", mcp);
    assert_eq!(exchange(&mut again, INIT), 200);
}
