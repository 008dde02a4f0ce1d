//! `--misbehave`: tools that break the transport the way a hostile or
//! broken upstream would. Raw HTTP, in front of rmcp: holding back a head,
//! dripping a body under a `Content-Length` or leaving an SSE event half
//! written is not something a conforming SDK can be asked to do.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::{Response, StatusCode, body::Frame, header};
use serde_json::{Value, json};

use crate::{Body, names};

/// The answer to `body` if it calls a misbehaving tool.
pub(crate) async fn answer(body: &[u8]) -> Option<Response<Body>> {
    let msg: Value = serde_json::from_slice(body).ok()?;
    if msg["method"] != "tools/call" {
        return None;
    }
    let name = msg["params"]["name"].as_str()?;
    if !matches!(name, "stall" | "drip" | "drip_sse") {
        return None;
    }
    let id = msg.get("id")?.clone();
    let args = &msg["params"]["arguments"];
    // A stateless caller's result says it is complete, as rmcp's would.
    let stateless = msg["params"]["_meta"][names::META_PROTOCOL_VERSION].is_string();
    let complete = move |text: String| {
        let mut result = json!({"content": [{"type": "text", "text": text}], "isError": false});
        if stateless {
            result["resultType"] = "complete".into();
        }
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    };
    Some(match name {
        "stall" => {
            let ms = args["ms"].as_u64().unwrap_or(1000).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            crate::json_response(StatusCode::OK, complete("stalled".into()))
        }
        "drip" => {
            let bytes = args["bytes"].as_u64().unwrap_or(1000).min(64 << 20) as usize;
            let piece = args["piece"].as_u64().unwrap_or(1).max(1) as usize;
            let interval = Duration::from_millis(args["interval_ms"].as_u64().unwrap_or(1000));
            // A text of about `bytes`, in a whole JSON-RPC answer.
            let whole = Bytes::from(complete("x".repeat(bytes.saturating_sub(100))).to_string());
            let len = whole.len();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let mut at = 0;
                while at < whole.len() {
                    let end = (at + piece).min(whole.len());
                    if tx
                        .send(Ok(Frame::data(whole.slice(at..end))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    at = end;
                    tokio::time::sleep(interval).await;
                }
            });
            let mut resp = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json");
            if args["chunked"] != true {
                resp = resp.header(header::CONTENT_LENGTH, len);
            }
            resp.body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
                .expect("static parts")
        }
        _ => {
            let ms = args["ms"].as_u64().unwrap_or(60_000).min(600_000);
            // Optionally the start of an event of this many bytes, finished
            // only after the silence.
            let partial = args["event_bytes"].as_u64().unwrap_or(0).min(64 << 20) as usize;
            let token = msg["params"]["_meta"]["progressToken"].clone();
            let result = complete("late".into());
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let n = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {
                    "progressToken": token, "progress": 1, "total": 2}});
                if tx.send(Ok(Frame::data(sse(&n)))).await.is_err() {
                    return;
                }
                if partial > 0 {
                    let start = format!("data: {}", "x".repeat(partial));
                    if tx.send(Ok(Frame::data(Bytes::from(start)))).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if partial > 0 {
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"\n\n")))).await;
                }
                let _ = tx.send(Ok(Frame::data(sse(&result)))).await;
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
                .expect("static parts")
        }
    })
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {v}\n\n"))
}
