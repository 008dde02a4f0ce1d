//! The bytes of an exchange: a `tools/call` body written without building
//! a tree, replies read within their limits, a response's parts borrowed
//! from its text, and the first response of an event stream.

use super::*;

/// What a `tools/call` carries to the upstream, as JSON texts.
pub struct CallParts<'a> {
    pub name: &'a str,
    pub arguments: Option<&'a str>,
    /// The caller's `_meta` entries other than the era envelope.
    pub meta: &'a [(String, String)],
    /// Other params (`inputResponses`, `requestState`, …).
    pub extra: &'a [(String, String)],
    /// The caller's capabilities (stateless era), told to a stateless upstream.
    pub client_capabilities: Option<&'a str>,
    /// The identity assertion Dome signed for this call, and its header.
    pub assertion: Option<(&'a header::HeaderName, &'a str)>,
    /// A session-era caller's log level, told to a stateless upstream (a
    /// stateless caller's own is among its `meta`).
    pub log_level: Option<&'a str>,
    /// Whose call it is, for the agent's share of the upstream's slots
    /// (see [`Upstream::request_as`]).
    pub agent: Option<u32>,
}

/// The JSON text of a `tools/call` request, written straight into one
/// buffer: the caller's arguments and `_meta` values are already JSON text.
pub fn call_body(id: u64, call: &CallParts<'_>, stateless_version: Option<&str>) -> String {
    let CallParts {
        name,
        arguments,
        meta,
        extra,
        client_capabilities,
        log_level,
        ..
    } = *call;
    use std::fmt::Write as _;
    // Sized for the whole body, so it is never grown: the fixed parts,
    // Dome's client info and the caller's texts.
    let texts = arguments.map_or(0, str::len)
        + client_capabilities.map_or(0, str::len)
        + meta
            .iter()
            .chain(extra)
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    let mut b = String::with_capacity(256 + client_info_entry().len() + name.len() + texts);
    let _ = write!(
        b,
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":"
    );
    push_json_str(&mut b, name);
    if let Some(a) = arguments {
        b.push_str(",\"arguments\":");
        b.push_str(a);
    }
    for (k, v) in extra {
        b.push(',');
        push_json_str(&mut b, k);
        b.push(':');
        b.push_str(v);
    }
    if meta.is_empty() && stateless_version.is_none() {
        b.push_str("}}");
        return b;
    }
    b.push_str(",\"_meta\":{");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            b.push(',');
        }
        push_json_str(&mut b, k);
        b.push(':');
        b.push_str(v);
    }
    if let Some(v) = stateless_version {
        if !meta.is_empty() {
            b.push(',');
        }
        push_json_str(&mut b, protocol::META_PROTOCOL_VERSION);
        b.push(':');
        push_json_str(&mut b, v);
        b.push(',');
        push_json_str(&mut b, protocol::META_CLIENT_CAPABILITIES);
        b.push(':');
        b.push_str(client_capabilities.unwrap_or("{}"));
        b.push(',');
        b.push_str(client_info_entry());
        if let Some(level) = log_level
            && !meta.iter().any(|(k, _)| k == protocol::META_LOG_LEVEL)
        {
            b.push(',');
            push_json_str(&mut b, protocol::META_LOG_LEVEL);
            b.push(':');
            push_json_str(&mut b, level);
        }
    }
    b.push_str("}}}");
    b
}

/// `"…/clientInfo":{"name":"dome","version":…}`, made once.
pub(super) fn client_info_entry() -> &'static str {
    static ENTRY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENTRY.get_or_init(|| {
        let mut e = String::new();
        push_json_str(&mut e, protocol::META_CLIENT_INFO);
        e.push(':');
        e.push_str(&protocol::implementation().to_string());
        e
    })
}

/// `s` as a JSON string literal, appended to `out` (no intermediate value).
pub(super) fn push_json_str(out: &mut String, s: &str) {
    // Plain names (the common case) need no escaping.
    if s.bytes()
        .all(|c| c >= 0x20 && c != b'"' && c != b'\\' && c < 0x7f)
    {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&Value::String(s.to_string()).to_string());
    }
}

pub(super) fn stateless_meta(version: &str) -> Value {
    json!({
        protocol::META_PROTOCOL_VERSION: version,
        protocol::META_CLIENT_CAPABILITIES: {},
        protocol::META_CLIENT_INFO: protocol::implementation(),
    })
}

pub(super) fn finish(
    name: &str,
    reply: Reply,
    id: u64,
    status: StatusCode,
) -> Result<(Reply, u64), UpstreamError> {
    match (&reply, status) {
        (_, s) if s.is_success() => Ok((reply, id)),
        // JSON-RPC errors come with 4xx in the stateless era: still a reply.
        (Reply::Raw(b), _) if ResponseParts::of(b).is_some() => Ok((reply, id)),
        (Reply::Json(v), _) if v.get("error").is_some() || v.get("result").is_some() => {
            Ok((reply, id))
        }
        (_, s) => Err(UpstreamError::Status(name.into(), s.as_u16())),
    }
}

pub(super) async fn read_reply(
    up: &Upstream,
    resp: Response<crate::upstream::pool::Body>,
    held: Held<'_>,
) -> Result<Reply, UpstreamError> {
    let name = up.name();
    match read_reply_raw(up, resp, held).await? {
        Reply::Raw(body) if body.is_empty() => Ok(Reply::Json(Value::Null)),
        Reply::Raw(body) => serde_json::from_slice(&body)
            .map(Reply::Json)
            .map_err(|e| UpstreamError::Invalid(name.into(), format!("not JSON: {e}"))),
        other => Ok(other),
    }
}

/// The reply in `resp`: a stream as it is (what the request held is let
/// go), else its whole body, read by the exchange's deadline (an upstream
/// sending its body slowly keeps neither the slot nor the call past it:
/// the connection is dropped and the caller told it timed out).
pub(super) async fn read_reply_raw(
    up: &Upstream,
    resp: Response<crate::upstream::pool::Body>,
    held: Held<'_>,
) -> Result<Reply, UpstreamError> {
    let name = up.name();
    let max = up.config.max_response_bytes;
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if is_sse {
        // A stream may last as long as its upstream keeps it going, but
        // not go quiet for longer than its idle timeout.
        let mut resp = resp;
        resp.body_mut().idle_timeout(up.config.stream_idle());
        return Ok(Reply::Stream(resp));
    }
    let too_big = || {
        UpstreamError::Invalid(
            name.into(),
            format!("a response over {max} bytes (max_response_bytes)"),
        )
    };
    // Refused before reading when the length says so; else counted as it
    // comes (dropping the body closes the connection).
    if resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return Err(too_big());
    }
    // Charged against every call's buffered answers: the length it declares
    // at once, else each piece as it comes. Over the budget, the answer is
    // dropped (and its connection with it).
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let mut charge = Charge::default();
    if let Some(n) = declared
        && !charge.grow(n)
    {
        return Err(UpstreamError::Overloaded(name.into()));
    }
    let mut body = resp.into_body();
    let mut buf = bytes::BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| UpstreamError::Broken(name.into(), e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(too_big());
            }
            if declared.is_none() && !charge.grow(data.len()) {
                return Err(UpstreamError::Overloaded(name.into()));
            }
            if buf.is_empty() && data.len() == declared.unwrap_or(usize::MAX) {
                // The whole answer in one piece (the usual case): no copy.
                return Ok(Some(data));
            }
            buf.extend_from_slice(&data);
        }
        Ok(None)
    };
    let whole = tokio::time::timeout_at(held.deadline, read)
        .await
        .map_err(|_| UpstreamError::Timeout {
            upstream: name.into(),
            sent: true,
        })??;
    drop(held);
    let body = whole.unwrap_or_else(|| buf.freeze());
    // The charge lasts as long as the bytes do.
    Ok(Reply::Raw(Bytes::from_owner(Charged {
        bytes: body,
        _charge: charge,
    })))
}

/// What every stateless-era result carries.
pub const RESULT_TYPE: &str = "\"resultType\":\"complete\"";

/// What a stateless-era cacheable result (lists, reads) carries besides:
/// private and stale at once, since Dome's view is per caller.
pub const CACHEABLE: &str = "\"resultType\":\"complete\",\"ttlMs\":0,\"cacheScope\":\"private\"";

/// A JSON-RPC response seen without building a tree: its `result` or
/// `error` as raw JSON text borrowed from the body.
#[derive(serde::Deserialize)]
pub struct ResponseParts<'a> {
    #[serde(borrow, default)]
    pub result: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a serde_json::value::RawValue>,
}

impl<'a> ResponseParts<'a> {
    pub fn of(body: &'a [u8]) -> Option<Self> {
        let p: ResponseParts<'a> = serde_json::from_slice(body).ok()?;
        (p.result.is_some() || p.error.is_some()).then_some(p)
    }

    /// The error's code, if this is an error response.
    pub fn error_code(&self) -> Option<i64> {
        #[derive(serde::Deserialize)]
        struct Code {
            code: i64,
        }
        serde_json::from_str::<Code>(self.error?.get())
            .ok()
            .map(|c| c.code)
    }

    /// The response re-addressed to `id`, as JSON text. `fields` (JSON
    /// members, e.g. `"resultType":"complete"`) are added to a result object:
    /// what a stateless-era caller needs from a session-era upstream's answer.
    /// The text is one buffer, handed on as the response body uncopied.
    pub fn readdressed(&self, id: &Value, fields: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + fields.len() + self.result.or(self.error).map_or(0, |r| r.get().len()),
        );
        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        // Writing a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, id);
        match (self.result, self.error) {
            (Some(r), _) => {
                out.extend_from_slice(b",\"result\":");
                let raw = r.get().trim_start();
                match raw.strip_prefix('{') {
                    Some(rest) if !fields.is_empty() => {
                        out.push(b'{');
                        out.extend_from_slice(fields.as_bytes());
                        if !rest.trim_start().starts_with('}') {
                            out.push(b',');
                        }
                        out.extend_from_slice(rest.as_bytes());
                    }
                    _ => out.extend_from_slice(raw.as_bytes()),
                }
            }
            (None, Some(e)) => {
                out.extend_from_slice(b",\"error\":");
                out.extend_from_slice(e.get().as_bytes());
            }
            (None, None) => out.extend_from_slice(b",\"result\":{}"),
        }
        out.push(b'}');
        out
    }
}

/// Why a streamed answer broke off: it went quiet past its idle timeout
/// (a timeout, like any other), or its connection failed.
pub fn stream_error(name: &str, e: &std::io::Error) -> UpstreamError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        UpstreamError::Timeout {
            upstream: name.into(),
            sent: true,
        }
    } else {
        UpstreamError::Broken(name.into(), e.to_string())
    }
}

/// Reads an SSE reply to its JSON-RPC response, dropping notifications.
pub async fn first_response(
    up: &Upstream,
    resp: Response<crate::upstream::pool::Body>,
) -> Result<Value, UpstreamError> {
    let name = up.name();
    let mut body = resp.into_body();
    let mut parser = up.sse_parser();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| stream_error(name, &e))?;
        if let Some(data) = frame.data_ref() {
            parser
                .push(data)
                .map_err(|e| UpstreamError::Invalid(name.into(), e.to_string()))?;
            while let Some(ev) = parser.next_event() {
                if let Ok(v) = serde_json::from_str::<Value>(&ev)
                    && (v.get("result").is_some() || v.get("error").is_some())
                {
                    return Ok(v);
                }
            }
        }
    }
    Err(UpstreamError::Invalid(
        name.into(),
        "the stream ended without a response".into(),
    ))
}
