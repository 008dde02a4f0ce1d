//! `bench-e2e train DOME DIR`: the workload `cargo xtask` runs an
//! instrumented Dome build on before it builds Dome with profile-guided
//! optimisation. It is shaped like production traffic, not only like the
//! benchmark's call, so the optimised build is not tuned to one request:
//! both protocol eras, calls with and without authentication, sessions
//! opened and ended, lists, pings, clients' mistakes, and the audit trail
//! both with and without `fsync`. Each Dome is stopped with SIGTERM so it
//! exits cleanly and writes its profile into DIR. `bench-e2e check DOME`
//! runs the same workload on an optimised build, asserting every answer.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use dome::identity::apikey;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};

use super::{
    DomeSpec, Kill, Sender, connect, fixed_rate, max_throughput, post, runtime, start_dome,
    start_upstream,
};

/// Session-era and stateless rounds of [`mixed`] on each Dome.
const MIXED_ROUNDS: usize = 100;
const SESSION_VERSION: &str = "2025-11-25";
const STATELESS_VERSION: &str = "2026-07-28";

/// With `dir`, the instrumented `bin` writes its profiles there (and must);
/// without, the workload checks an optimised build answers as it should.
pub(crate) fn run(root: &Path, bin: &Path, dir: Option<&Path>) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    // Both eras and more than `echo`: the full demo upstream, on rmcp.
    let (_up, upstream) = start_upstream(root, false)?;
    let rt = runtime()?;
    let (key, hash) = apikey::generate("bench-agent");
    // The load generator's tasks need it for their whole life.
    let key: &'static str = Box::leak(key.into_boxed_str());
    let hash = apikey::to_hex(&hash);
    let spec = |fsync, name, key_hash| DomeSpec {
        bin,
        fsync,
        name,
        key_hash,
        profile_dir: dir,
    };

    // The benchmark's configuration: no authentication, records written
    // but answers not held for the disk.
    let (dome, addr) = start_dome(root, upstream, &spec("off", "train-open", None))?;
    rt.block_on(async {
        max_throughput(addr, &[], None).await?;
        fixed_rate(&[addr], 2_000.0).await?;
        mixed(addr, None).await
    })
    .context("training Dome without authentication")?;
    stop(dome)?;

    // Production's defaults: every call authenticated by API key, every
    // answer held until its record is on disk.
    let (dome, addr) = start_dome(root, upstream, &spec("batch", "train-auth", Some(&hash)))?;
    rt.block_on(async {
        max_throughput(addr, &[], Some(key)).await?;
        mixed(addr, Some(key)).await
    })
    .context("training Dome with API keys")?;
    stop(dome)?;

    let Some(dir) = dir else {
        println!("check: {} answered the whole workload", bin.display());
        return Ok(());
    };
    let profiles = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        // LLVM's (PGO) or BOLT's instrumentation.
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "profraw" || x == "fdata")
        })
        .count();
    ensure!(
        profiles >= 2,
        "the instrumented Dome wrote {profiles} profiles into {}, expected one per run",
        dir.display()
    );
    println!("training: {profiles} profiles in {}", dir.display());
    Ok(())
}

/// SIGTERM, then waits for a clean exit (which writes the profile).
fn stop(mut dome: Kill) -> anyhow::Result<()> {
    let pid = dome.0.id() as libc::pid_t;
    // SAFETY: kill has no memory preconditions; pid is our own live child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = dome.0.try_wait()? {
            ensure!(status.success(), "Dome exited with {status} on SIGTERM");
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "Dome did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One exchange: status, session id if any, body.
async fn exchange(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Option<String>, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, session, body))
}

/// One exchange that must answer `want`; its body.
async fn expect(
    s: &mut Sender,
    req: Request<Full<Bytes>>,
    want: StatusCode,
    what: &str,
) -> anyhow::Result<Bytes> {
    let (status, _, body) = exchange(s, req).await?;
    ensure!(
        status == want,
        "{what}: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// The `_meta` every stateless-era request carries.
fn meta() -> serde_json::Value {
    serde_json::json!({"io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
                       "io.modelcontextprotocol/clientCapabilities": {}})
}

/// Everything else a client does, each round on a new connection.
async fn mixed(addr: SocketAddr, key: Option<&str>) -> anyhow::Result<()> {
    for round in 0..MIXED_ROUNDS {
        let mut s = connect(addr).await?;
        session_era(&mut s, addr, key, round).await?;
        stateless_era(&mut s, addr, key, round).await?;
        // Rare, as in production: Dome blocks a source after 20 strikes a minute.
        if round.is_multiple_of(25) {
            mistakes(&mut s, addr, key).await?;
        }
    }
    Ok(())
}

async fn session_era(
    s: &mut Sender,
    addr: SocketAddr,
    key: Option<&str>,
    round: usize,
) -> anyhow::Result<()> {
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": SESSION_VERSION, "capabilities": {},
                   "clientInfo": {"name": "dome-pgo-training", "version": "1"}}});
    let (status, session, body) = exchange(s, post(addr, key, &[], init.to_string())).await?;
    ensure!(
        status == StatusCode::OK,
        "initialize: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let sid = session.context("initialize: no Mcp-Session-Id")?;
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", SESSION_VERSION),
    ];
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    expect(
        s,
        post(addr, key, &h, note),
        StatusCode::ACCEPTED,
        "initialized",
    )
    .await?;
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let body = expect(s, post(addr, key, &h, list), StatusCode::OK, "tools/list").await?;
    ensure!(
        body.windows(6).any(|w| w == b"\"echo\""),
        "tools/list lacks echo"
    );
    for i in 0..10 {
        let call = serde_json::json!({"jsonrpc": "2.0", "id": 2 + i, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "m".repeat(50 * (1 + i + round % 7))}}});
        expect(
            s,
            post(addr, key, &h, call.to_string()),
            StatusCode::OK,
            "tools/call",
        )
        .await?;
    }
    if round.is_multiple_of(4) {
        // Records with e-mail addresses and card-like numbers.
        let call = r#"{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"records","arguments":{}}}"#;
        expect(
            s,
            post(addr, key, &h, call),
            StatusCode::OK,
            "tools/call records",
        )
        .await?;
    }
    let ping = r#"{"jsonrpc":"2.0","id":21,"method":"ping"}"#;
    expect(s, post(addr, key, &h, ping), StatusCode::OK, "ping").await?;
    let mut end = Request::delete("/mcp")
        .header("host", addr.to_string())
        .header("mcp-session-id", sid.as_str())
        .header("mcp-protocol-version", SESSION_VERSION);
    if let Some(k) = key {
        end = end.header("authorization", format!("Bearer {k}"));
    }
    let (status, ..) = exchange(s, end.body(Full::new(Bytes::new()))?).await?;
    ensure!(status.is_success(), "DELETE: HTTP {status}");
    Ok(())
}

async fn stateless_era(
    s: &mut Sender,
    addr: SocketAddr,
    key: Option<&str>,
    round: usize,
) -> anyhow::Result<()> {
    let h = |method, name| {
        [
            ("mcp-protocol-version", STATELESS_VERSION),
            ("mcp-method", method),
            ("mcp-name", name),
        ]
    };
    let discover = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
                                       "params": {"_meta": meta()}});
    let hd = &h("server/discover", "")[..2];
    let req = post(addr, key, hd, discover.to_string());
    expect(s, req, StatusCode::OK, "server/discover").await?;
    let list = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                                   "params": {"_meta": meta()}});
    let hl = &h("tools/list", "")[..2];
    expect(
        s,
        post(addr, key, hl, list.to_string()),
        StatusCode::OK,
        "tools/list",
    )
    .await?;
    for i in 0..10 {
        let call = serde_json::json!({"jsonrpc": "2.0", "id": 3 + i, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "s".repeat(40 * (1 + i + round % 5))},
                       "_meta": meta()}});
        let hc = h("tools/call", "echo");
        expect(
            s,
            post(addr, key, &hc, call.to_string()),
            StatusCode::OK,
            "tools/call",
        )
        .await?;
    }
    Ok(())
}

/// Clients' mistakes: each gets its error, never a 5xx.
async fn mistakes(s: &mut Sender, addr: SocketAddr, key: Option<&str>) -> anyhow::Result<()> {
    let stateless = [
        ("mcp-protocol-version", STATELESS_VERSION),
        ("mcp-method", "tools/call"),
        ("mcp-name", "no-such-tool"),
    ];
    let unknown = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "no-such-tool", "arguments": {}, "_meta": meta()}});
    let bad: [(&[(&str, &str)], String); 4] = [
        (&stateless, unknown.to_string()),
        (
            &stateless[..1],
            r#"{"jsonrpc":"2.0","id":1,"method":"#.into(),
        ),
        (&stateless[..1], r#"{"jsonrpc":"2.0","id":1}"#.into()),
        (&stateless[..1], "[]".into()),
    ];
    for (headers, body) in bad {
        let (status, ..) = exchange(s, post(addr, key, headers, body)).await?;
        ensure!(
            status.as_u16() < 500,
            "a client's mistake got HTTP {status}"
        );
    }
    Ok(())
}
