//! `bench-floor-proxy LISTEN UPSTREAM_URL`: the floor under any gateway
//! built on Dome's transport stack. It is Dome's serving skeleton — one
//! current-thread runtime per CPU on SO_REUSEPORT listeners
//! (`dome::net::workers`), hyper's auto (HTTP/1 + HTTP/2) server, a
//! per-lane keep-alive pool (`dome::upstream::pool`), mimalloc — with none of Dome's work:
//! no MCP parsing, identity, policy, audit or filtering. It relays the
//! body and the MCP headers and returns the upstream's answer.
//!
//! `bench e2e` runs it beside Dome so the ratio Dome reaches can be read
//! against the ratio the stack itself allows on the same machine.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use dome::upstream::pool::Pool;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

/// Headers a relay of an MCP POST must carry on.
const CARRIED: [&str; 5] = [
    "content-type",
    "accept",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

async fn relay(pool: &Pool, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return status(400);
    };
    let mut out = Request::post(pool.target().clone());
    for name in CARRIED {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v);
        }
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return status(500);
    };
    let Ok(resp) = pool.send(out).await else {
        return status(502);
    };
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
        Err(_) => status(502),
    }
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
    r
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bench-floor-proxy LISTEN UPSTREAM_URL");
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: hyper::Uri = upstream.parse()?;
    let workers = dome::net::workers::configure(0);
    // As Dome's: one set of connections per worker lane.
    let pool = std::sync::Arc::new(Pool::new(
        &upstream,
        dome::net::workers::lanes(),
        64,
        Duration::from_secs(2),
    )?);
    let listeners = dome::net::workers::bind(listen, workers)?;
    dome::net::workers::spawn(listeners, move |listener| {
        let pool = pool.clone();
        async move {
            // Dome's connection settings, with its default limits.
            let builder = std::sync::Arc::new(dome::net::http_builder(
                &dome::net::ServerConfig::default().limits(),
            ));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (pool, builder) = (pool.clone(), builder.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let pool = pool.clone();
                        async move { Ok::<_, Infallible>(relay(&pool, req).await) }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }
    })?;
    // The workers serve until the benchmark kills this process.
    loop {
        std::thread::park();
    }
}
