//! The JSON-RPC envelope of one request, parsed with simd-json into a tape
//! (its flat, borrowed form: no tree, no per-node allocation) on per-thread
//! scratch buffers, so the parse allocates nothing once a thread has seen a
//! message of the size. Only what routing and the protocol rules need is
//! taken out; a `tools/call`'s arguments are carried to the upstream as
//! JSON text, never as an owned tree.

use std::{borrow::Cow, cell::RefCell};

use serde_json::Value as Json;
use simd_json::{
    Buffers,
    prelude::{ValueAsScalar, ValueIntoString, Writable},
    tape::{Tape, Value as TapeValue},
};

use super::protocol;

/// What `params._meta` says about the stateless era's envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Meta {
    /// No `_meta` at all.
    #[default]
    Absent,
    /// `_meta` is there but not an object.
    NotObject,
    Object {
        /// The protocol-version key: `Some(Some(v))` a string, `Some(None)` another type.
        version: Option<Option<Cow<'static, str>>>,
        has_capabilities: bool,
    },
}

/// One parsed message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Envelope {
    /// `jsonrpc` is exactly "2.0".
    pub jsonrpc_ok: bool,
    pub id: Option<Json>,
    pub method: Option<Cow<'static, str>>,
    /// Has `result` or `error` (a response from the client).
    pub is_response: bool,
    /// `params.name` (tools/call, prompts/get) or `params.uri` (resources/read).
    pub name: Option<String>,
    pub cursor: Option<String>,
    /// `params.protocolVersion` (initialize).
    pub init_version: Option<String>,
    pub meta: Meta,
    /// `params.requestId` (notifications/cancelled).
    pub request_id: Option<Json>,
    /// `params.arguments` as JSON text.
    pub arguments: Option<String>,
    /// `tools/call` params other than `name`, `arguments` and `_meta`
    /// (`inputResponses`, `requestState`, …) as (key, JSON text): passed on.
    pub extra_params: Vec<(String, String)>,
    /// The whole `params` as JSON text, for methods other than `tools/call`
    /// (rare, small; `tools/call` never pays for it).
    pub params: Option<String>,
    /// The caller's `io.modelcontextprotocol/clientCapabilities` as JSON text
    /// (a stateless-era upstream is told what the caller can answer).
    pub client_capabilities: Option<String>,
    /// `params._meta` entries other than the era envelope's, as (key, JSON text).
    pub meta_entries: Vec<(String, String)>,
}

/// Why a body is not one JSON-RPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON (-32700).
    Parse(String),
    /// JSON, but not an object (a batch is an array: see `Parsed::Batch`).
    NotObject,
}

/// The outcome of parsing a body.
pub enum Parsed {
    One(Box<Envelope>),
    /// A JSON array: a batch, handled on the slow path.
    Batch,
}

struct Scratch {
    buf: Vec<u8>,
    buffers: Buffers,
    /// Kept empty between parses (its nodes borrow the message).
    tape: Tape<'static>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buf: Vec::new(),
        buffers: Buffers::default(),
        tape: Tape(Vec::new()),
    });
}

/// A method or version: static when Dome knows it, so the common
/// envelope copies no name.
fn known(x: TapeValue<'_, '_>) -> Option<Cow<'static, str>> {
    let s = x.into_string()?;
    Some(protocol::interned(s).map_or_else(|| Cow::Owned(s.to_string()), Cow::Borrowed))
}

fn to_json(v: TapeValue<'_, '_>) -> Json {
    if let Some(s) = v.as_str() {
        return Json::String(s.to_string());
    }
    if let Some(n) = v.as_u64() {
        return Json::from(n);
    }
    if let Some(n) = v.as_i64() {
        return Json::from(n);
    }
    if v.as_null().is_some() {
        return Json::Null;
    }
    // Ids are strings or integers; anything else is carried as text.
    serde_json::from_str(&v.encode()).unwrap_or(Json::Null)
}

/// Parses `body` (which is not modified: the parser works on a copy in the
/// thread's scratch buffer).
pub fn parse(body: &[u8]) -> Result<Parsed, EnvelopeError> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let Scratch { buf, buffers, tape } = &mut *s;
        buf.clear();
        buf.extend_from_slice(body);
        let mut t = std::mem::replace(tape, Tape(Vec::new())).reset();
        let out = match simd_json::fill_tape(buf, buffers, &mut t) {
            Ok(()) => envelope(t.as_value()),
            Err(e) => Err(EnvelopeError::Parse(e.to_string())),
        };
        *tape = t.reset();
        out
    })
}

fn envelope(v: TapeValue<'_, '_>) -> Result<Parsed, EnvelopeError> {
    if v.is_array() {
        return Ok(Parsed::Batch);
    }
    if !v.is_object() {
        return Err(EnvelopeError::NotObject);
    }
    let str_of = |x: TapeValue<'_, '_>| x.into_string().map(str::to_string);
    let mut e = Envelope {
        jsonrpc_ok: v.get("jsonrpc").and_then(ValueIntoString::into_string) == Some("2.0"),
        id: v.get("id").map(to_json),
        method: v.get("method").and_then(known),
        is_response: v.get("result").is_some() || v.get("error").is_some(),
        ..Default::default()
    };
    if let Some(params) = v.get("params") {
        let key = e
            .method
            .as_deref()
            .and_then(protocol::name_key)
            .unwrap_or("name");
        e.name = params.get(key).and_then(str_of);
        e.cursor = params.get("cursor").and_then(str_of);
        e.init_version = params.get("protocolVersion").and_then(str_of);
        e.arguments = params.get("arguments").map(|a| a.encode());
        e.request_id = params.get("requestId").map(to_json);
        if e.method.as_deref() != Some("tools/call") {
            e.params = Some(params.encode());
        } else if let Some(p) = params.as_object() {
            e.extra_params = p
                .iter()
                .filter(|(k, _)| !matches!(*k, "name" | "arguments" | "_meta"))
                .map(|(k, x)| (k.to_string(), x.encode()))
                .collect();
        }
        match params.get("_meta").map(|m| m.as_object()) {
            None => {}
            Some(None) => e.meta = Meta::NotObject,
            Some(Some(o)) => {
                let caps = o.get(protocol::META_CLIENT_CAPABILITIES);
                e.meta = Meta::Object {
                    version: o.get(protocol::META_PROTOCOL_VERSION).map(known),
                    has_capabilities: caps.is_some(),
                };
                e.client_capabilities = caps.map(|c| c.encode());
                e.meta_entries = o
                    .iter()
                    .filter(|(k, _)| !k.starts_with("io.modelcontextprotocol/"))
                    .map(|(k, x)| (k.to_string(), x.encode()))
                    .collect();
            }
        }
    }
    Ok(Parsed::One(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Envelope {
        match parse(s.as_bytes()).unwrap() {
            Parsed::One(e) => *e,
            Parsed::Batch => panic!("batch"),
        }
    }

    #[test]
    fn a_tools_call_envelope() {
        let e = one(
            r#"{"jsonrpc":"2.0","id":"a\"b","method":"tools/call","params":{"name":"echo",
               "arguments":{"message":"h\u00e9","n":[1,2.5,{"x":null}]},
               "_meta":{"progressToken":7,"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities":{}}}}"#,
        );
        assert!(e.jsonrpc_ok);
        assert_eq!(e.id, Some(Json::String("a\"b".into())));
        assert_eq!(e.method.as_deref(), Some("tools/call"));
        assert_eq!(e.name.as_deref(), Some("echo"));
        let args: Json = serde_json::from_str(e.arguments.as_deref().unwrap()).unwrap();
        assert_eq!(
            args,
            serde_json::json!({"message": "hé", "n": [1, 2.5, {"x": null}]})
        );
        assert_eq!(
            e.meta_entries,
            vec![("progressToken".to_string(), "7".to_string())]
        );
        assert_eq!(
            e.meta,
            Meta::Object {
                version: Some(Some("2026-07-28".into())),
                has_capabilities: true
            }
        );
    }

    #[test]
    fn responses_notifications_batches_and_garbage() {
        let r = one(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert!(r.is_response && r.method.is_none());
        let n = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(n.id.is_none());
        assert!(matches!(parse(b"[1,2]"), Ok(Parsed::Batch)));
        assert!(matches!(parse(b"{nope"), Err(EnvelopeError::Parse(_))));
        assert!(matches!(parse(b"42"), Err(EnvelopeError::NotObject)));
        let bad = one(r#"{"jsonrpc":"1.0","id":1,"method":"ping","params":{"_meta":5}}"#);
        assert!(!bad.jsonrpc_ok);
        assert_eq!(bad.meta, Meta::NotObject);
        let uri = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#,
        );
        assert_eq!(uri.name.as_deref(), Some("file:///x"));
    }
}
