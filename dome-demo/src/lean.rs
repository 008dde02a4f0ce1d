//! `--lean`: the benchmark's upstream, with no SDK. It answers the
//! stateless era's `server/discover`, `tools/list` and `tools/call echo`
//! (what `bench e2e` measures and Dome asks before it) with plain JSON, as
//! the hand-written demo upstream did; nothing else.
//!
//! Why not rmcp: it costs twice the CPU per call, and on this 2-core machine
//! the load generator, Dome and the upstream share the cores, so the
//! upstream's CPU is taken from Dome and the benchmark would measure the
//! upstream. `BENCH_E2E_QUICK=1 bench-e2e` (plain release build, machine
//! shared with another build), hand-written then rmcp, two runs each,
//! alternating, 2026-12-07:
//!
//! | | hand-written | rmcp 3.11.0 |
//! | --- | --- | --- |
//! | upstream CPU per call, direct | 17.0, 15.9 µs | 32.2, 31.3 µs |
//! | direct, requests/s | 32,206, 36,580 | 22,190, 20,696 |
//! | through Dome, requests/s | 19,710, 20,879 | 12,184, 13,681 |
//! | the TCP relay baseline, requests/s | 29,968, 27,278 | 20,225, 16,881 |
//!
//! Per stateless request rmcp reads the body into its typed model, writes
//! the message back out as JSON to check the `Mcp-*` headers against it
//! (`validate_standard_headers` in
//! `transport/streamable_http_server/tower.rs`), and serves it as a service
//! of its own over a one-shot transport, with tasks spawned for it
//! (`serve_negotiated_request_directly`, `serve_directly_with_ct`).
//!
//! Everything but the benchmark's throughput runs on rmcp, the PGO
//! training included (`bench-e2e train`).

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{Body, names};

pub(crate) async fn serve(
    listener: TcpListener,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req| async move { Ok::<_, Infallible>(handle(req).await) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn respond(status: StatusCode, body: Option<Value>) -> Response<Body> {
    let mut resp = Response::builder().status(status);
    let body = match body {
        Some(v) => {
            resp = resp.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    resp.body(Full::new(body).boxed()).expect("static parts")
}

async fn handle(req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/mcp" {
        return respond(StatusCode::NOT_FOUND, None);
    }
    if req.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, None);
    }
    let Ok(body) = req.into_body().collect().await else {
        return respond(StatusCode::BAD_REQUEST, None);
    };
    let Ok(msg) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        let e = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}});
        return respond(StatusCode::BAD_REQUEST, Some(e));
    };
    let Some(id) = msg.get("id").cloned() else {
        // Notifications and responses are acknowledged.
        return respond(StatusCode::ACCEPTED, None);
    };
    let ok = |mut result: Value| {
        result["resultType"] = "complete".into();
        respond(
            StatusCode::OK,
            Some(json!({"jsonrpc": "2.0", "id": id, "result": result})),
        )
    };
    let echo = json!({
        "name": "echo",
        "description": "Returns the message it is given.",
        "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
        "outputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    });
    match msg["method"].as_str().unwrap_or_default() {
        "server/discover" => ok(json!({
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {"listChanged": false}},
            "ttlMs": 0,
            "cacheScope": "public",
            "_meta": {"io.modelcontextprotocol/serverInfo":
                {"name": names::SERVER_NAME, "version": env!("CARGO_PKG_VERSION")}},
        })),
        "tools/list" => ok(json!({"tools": [echo], "ttlMs": 0, "cacheScope": "public"})),
        "tools/call" if msg["params"]["name"] != "echo" => {
            let e = json!({"jsonrpc": "2.0", "id": id, "error":
                {"code": -32602, "message": format!("unknown tool: {}", msg["params"]["name"])}});
            respond(StatusCode::OK, Some(e))
        }
        "tools/call" => {
            let text = msg["params"]["arguments"]["message"]
                .as_str()
                .unwrap_or_default();
            ok(json!({
                "content": [{"type": "text", "text": text}],
                "structuredContent": {"message": text},
                "isError": false,
            }))
        }
        other => {
            let e = json!({"jsonrpc": "2.0", "id": id, "error":
                {"code": -32601, "message": format!("method not found: {other}")}});
            respond(StatusCode::NOT_FOUND, Some(e))
        }
    }
}
