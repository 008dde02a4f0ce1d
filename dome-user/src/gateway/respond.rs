//! Answers: JSON and SSE responses, an upstream's answer re-addressed to
//! the caller's id and fitted to its era, JSON-RPC errors, and the HTTP
//! status each era gives a refusal.

use super::*;

/// The JSON-RPC error code a response answers with, carried beside it for
/// `/stats` and the call's record (read back in `handle`).
#[derive(Clone, Copy)]
pub(super) struct RpcErrorCode(pub(super) i64);

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = json_body(status, Bytes::from(v.to_string()));
    if let Some(c) = v["error"]["code"].as_i64() {
        r.extensions_mut().insert(RpcErrorCode(c));
    }
    r
}

/// A JSON response (built directly: no builder, no header parsing).
pub(super) fn json_body(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON body already written as text.
pub(super) fn raw_json_response(
    status: StatusCode,
    text: impl Into<Bytes>,
    rpc_error: Option<i64>,
) -> Response<Body> {
    let mut r = json_body(status, text.into());
    if let Some(c) = rpc_error {
        r.extensions_mut().insert(RpcErrorCode(c));
    }
    r
}

/// (HTTP status, the answer's JSON text, its JSON-RPC error code if any).
pub(super) type Readdressed = (StatusCode, Vec<u8>, Option<i64>);

/// An upstream's `tools/call` answer re-addressed to the caller's `id`,
/// without building a tree of it: (HTTP status, JSON text, error code).
pub(super) fn readdress(
    era: CallerEra,
    upstream: &Upstream,
    id: &Value,
    reply: Reply,
    method: &str,
) -> Result<Readdressed, (i64, String)> {
    // A stateless upstream's answer to a session-era caller loses what
    // that era lacks: read as a tree for it (the other paths stay text).
    let refit = era != CallerEra::Stateless && upstream.speaks_stateless();
    let bytes = match reply {
        Reply::Json(mut v) => {
            if refit {
                protocol::fit_to_session_era(&mut v);
            }
            Bytes::from(v.to_string())
        }
        Reply::Raw(b) if refit => {
            let mut v: Value = serde_json::from_slice(&b).map_err(|e| {
                (
                    code::UPSTREAM_UNAVAILABLE,
                    format!(
                        "upstream `{}` sent an answer that cannot be read ({e}): withheld",
                        upstream.name()
                    ),
                )
            })?;
            if protocol::fit_to_session_era(&mut v) {
                Bytes::from(v.to_string())
            } else {
                b
            }
        }
        Reply::Raw(b) => b,
        Reply::Stream(_) => unreachable!("streams are relayed"),
    };
    // Relayed as text: a result nested 100,000 deep reached the caller,
    // whose parser it could take down.
    if envelope::nests_deeper(&bytes, envelope::DEFAULT_MAX_DEPTH) {
        return Err((
            code::UPSTREAM_UNAVAILABLE,
            format!(
                "upstream `{}` answered with JSON nested deeper than {} levels",
                upstream.name(),
                envelope::DEFAULT_MAX_DEPTH
            ),
        ));
    }
    let Some(parts) = crate::upstream::ResponseParts::of(&bytes) else {
        return Err((
            code::UPSTREAM_UNAVAILABLE,
            format!(
                "upstream `{}` sent something that is not a JSON-RPC response",
                upstream.name()
            ),
        ));
    };
    let fields = if era == CallerEra::Stateless && !upstream.speaks_stateless() {
        if method == "resources/read" {
            crate::upstream::CACHEABLE
        } else {
            crate::upstream::RESULT_TYPE
        }
    } else {
        ""
    };
    let code = parts.error_code();
    let status = match code {
        Some(c) if era == CallerEra::Stateless => stateless_status(c),
        _ => StatusCode::OK,
    };
    Ok((status, parts.readdressed(id, fields), code))
}

/// An SSE response fed by `rx`, one event per frame, sent as it comes.
pub(super) fn sse_response(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .expect("static parts")
}

/// As [`sse_response`], the stream counted against its agent while its
/// body lives (the client closing it, or Dome ending it, lets it go).
pub(super) fn held_sse_response(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
    slot: StreamSlot,
) -> Response<Body> {
    sse_response(rx).map(|b| {
        b.map_frame(move |f| {
            let _held = &slot;
            f
        })
        .boxed()
    })
}

/// 429 for a stream beyond its agent's share.
pub(super) fn too_many_streams(id: &Value, cap: usize) -> Response<Body> {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &rpc_error(
            id,
            code::RATE_LIMITED,
            format!(
                "this agent has {cap} streams open ([mcp] max_streams_per_agent); close one first"
            ),
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

pub(super) fn session_not_found(id: &Value) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &rpc_error(id, code::SESSION_NOT_FOUND, "unknown or ended session"),
    )
}

pub(super) fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()).boxed())
        .expect("static parts")
}

pub(super) fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// `text` as an RFC 6750 `error_description`: printable ASCII without `"`
/// and `\\` (anything else becomes `?`).
pub(super) fn challenge_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}

/// HTTP status for a JSON-RPC error in the stateless era: those the
/// 2026-07-28 transport names (400, and 404 for an unknown method), 503
/// when the trail cannot take the record, else 200.
///
/// A policy denial (-32005) and an over-budget or busy refusal (-32004)
/// are 200, as in the session era: 200 is the one status at which every
/// client tested shows the JSON-RPC error with its `data` (`retryAfterMs`).
/// With 403 and 429, the TypeScript SDK v2 throws `SdkHttpError` with the
/// raw body, the v1 SDK and the Python SDK 1.x the HTTP error alone, and
/// the Inspector CLI reports 403 as `auth_required`. 401 and 403 stay
/// with what HTTP authentication means.
pub(super) use dome_core::protocol::stateless_status;

pub(super) use dome_core::admit::Refusal;

/// An upstream's failure of a call, as the caller hears it.
pub(super) fn upstream_refusal(e: &crate::upstream::UpstreamError) -> Refusal {
    Refusal {
        code: e.code(),
        message: e.to_string(),
        // An agent over its share retries once one of its calls is answered.
        retry_after_ms: (e.code() == code::RATE_LIMITED).then_some(1000),
        data: Some(e.data()),
    }
}

/// A refusal as the response to request `id` in `era`.
pub(super) fn refused(r: &Refusal, id: &Value, era: CallerEra) -> Response<Body> {
    json_response(r.status(era == CallerEra::Stateless), &r.to_rpc(id))
}
