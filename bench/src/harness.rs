//! What the end-to-end benchmarks and the soak share: child processes
//! killed when dropped, free ports, and HTTP/1.1 client connections with
//! Dome's MCP POST.

use std::{
    net::{SocketAddr, TcpListener},
    process::Child,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A child process, killed (and reaped) when dropped.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A POST to Dome's MCP endpoint: JSON in, JSON or SSE accepted, the
/// agent's key when Dome requires one, then `headers`.
pub fn post(
    addr: SocketAddr,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut r = Request::post("/mcp")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(k) = key {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r.body(Full::new(body.into())).expect("valid request")
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 keep-alive connection (its driver runs as a task).
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
