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

    // One connection at a time: a second waits until the first closes.
    let holder = TcpStream::connect(mcp).unwrap();
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
