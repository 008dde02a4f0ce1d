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
    tape::{Node, Tape, Value as TapeValue},
};

use crate::protocol;

/// What `params._meta` says about the stateless era's envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Meta {
    /// No `_meta` at all.
    #[default]
    Absent,
    /// `_meta` is there but not an object.
    NotObject,
    /// `_meta` is an object; what the era's envelope requires of it.
    Object {
        /// The protocol-version key: `Some(Some(v))` a string, `Some(None)` another type.
        version: Option<Option<Cow<'static, str>>>,
        /// The client-capabilities key is there (its value, as text, is
        /// [`Envelope::client_capabilities`]).
        has_capabilities: bool,
    },
}

/// One parsed message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Envelope {
    /// `jsonrpc` is exactly "2.0".
    pub jsonrpc_ok: bool,
    /// `id`, whatever its type (none for a notification).
    pub id: Option<Json>,
    /// `method`: borrowed from a static when Dome knows the name, so the
    /// common message copies none.
    pub method: Option<Cow<'static, str>>,
    /// Has `result` or `error` (a response from the client).
    pub is_response: bool,
    /// `params.name` (tools/call, prompts/get) or `params.uri` (resources/read).
    pub name: Option<String>,
    /// `params.cursor` (the `*/list` methods' pagination).
    pub cursor: Option<String>,
    /// `params.protocolVersion` (initialize).
    pub init_version: Option<String>,
    /// What `params._meta` holds of the stateless era's envelope.
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
    /// `params._meta` entries other than the era envelope's and Dome's
    /// own, as (key, JSON text): what the upstream is passed.
    pub meta_entries: Vec<(String, String)>,
    /// `params._meta` entries in Dome's namespace (`dome/…`, such as the
    /// intent): Dome reads them and never passes them on, so an upstream
    /// can trust what it finds there to come from Dome.
    pub dome_meta: Vec<(String, String)>,
}

/// Why a body is not one JSON-RPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON (-32700).
    Parse(String),
    /// JSON, but not an object (a batch is an array: see `Parsed::Batch`).
    NotObject,
    /// An object names this member twice (-32600). JSON leaves what that
    /// means to the reader: this parser reads the first, serde_json and
    /// most upstreams the last, so a check made on one reading (the
    /// `Mcp-Name` header's) would not hold for what is served.
    Repeated(String),
    /// Containers nest deeper than the limit (-32600). Checked on the
    /// tape before anything recursive (simd-json's writer, serde_json's
    /// drop, policy's walks) sees the message: 15,000 levels in 30 KB
    /// overflowed the stack and took the whole process down.
    TooDeep(usize),
}

/// `[mcp] max_json_depth`'s default: far deeper than any real tool
/// argument, far shallower than what any recursive walk can take.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// The outcome of parsing a body.
pub enum Parsed {
    /// A JSON object: one message, read.
    One(Box<Envelope>),
    /// A JSON array: a batch, handled on the slow path.
    Batch,
}

struct Scratch {
    buf: Vec<u8>,
    buffers: Buffers,
    /// Kept empty between parses (its nodes borrow the message).
    tape: Tape<'static>,
    /// For `check_tape`: where the names of an object with many
    /// members sit on the tape.
    keys: Vec<usize>,
    /// For `check_tape`: where each open container ends.
    ends: Vec<usize>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buf: Vec::new(),
        // No depth limit of simd-json's own (its default refuses past
        // 1,024 levels as a parse error): `check_tape` refuses past the
        // configured limit, as `TooDeep`.
        buffers: Buffers::with_max_depth(0, usize::MAX),
        tape: Tape(Vec::new()),
        keys: Vec::new(),
        ends: Vec::new(),
    });
}

/// Whether JSON `text` nests objects and arrays deeper than `max`: one
/// pass over the bytes, brackets inside strings skipped, no recursion and
/// no allocation. For what Dome relays without parsing it into a tree (an
/// upstream's result), which its callers' parsers would then have to take.
pub fn nests_deeper(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
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
/// thread's scratch buffer), refusing containers nested deeper than
/// `max_depth`.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Parsed, EnvelopeError> {
    // simd-json takes a NUL right after a number for the end of the
    // number (`{"id":9\0}`); no JSON text holds one anywhere.
    if memchr::memchr(0, body).is_some() {
        return Err(EnvelopeError::Parse("a NUL byte is not JSON".into()));
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let Scratch {
            buf,
            buffers,
            tape,
            keys,
            ends,
        } = &mut *s;
        buf.clear();
        buf.extend_from_slice(body);
        let mut t = std::mem::replace(tape, Tape(Vec::new())).reset();
        let out = match simd_json::fill_tape(buf, buffers, &mut t) {
            Ok(()) => match check_tape(&t.0, keys, ends, max_depth) {
                Err(e) => Err(e),
                // simd-json reads a number of 20 digits or more on past
                // letters that follow it (`2.22…2params`, anywhere in the
                // message): a body with such a long number is confirmed
                // with serde_json before it is called JSON (rare, so the
                // common message pays only the scan for it).
                Ok(())
                    if has_long_number(body)
                        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() =>
                {
                    Err(EnvelopeError::Parse("not JSON".into()))
                }
                Ok(()) => envelope(t.as_value()),
            },
            Err(e) => Err(EnvelopeError::Parse(e.to_string())),
        };
        *tape = t.reset();
        out
    })
}

/// Whether `body` has a run of 17 or more digits and points (a number
/// long enough for simd-json's slow path).
fn has_long_number(body: &[u8]) -> bool {
    let mut run = 0;
    for &b in body {
        if b.is_ascii_digit() || b == b'.' {
            run += 1;
            if run >= 17 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Refuses a message nested deeper than `max_depth`, or one where some
/// object repeats a member name (the first found). One pass over the tape
/// (no recursion, however deep the nesting): the ends of the open
/// containers are kept on a stack bounded by `max_depth`; at each object
/// its members' names are visited by hopping over their values, and
/// compared in pairs when they are few, sorted when they are many (no
/// quadratic cost).
fn check_tape(
    nodes: &[Node<'_>],
    keys: &mut Vec<usize>,
    ends: &mut Vec<usize>,
    max_depth: usize,
) -> Result<(), EnvelopeError> {
    // How many nodes the value at `j` spans.
    let span = |j: usize| match nodes.get(j) {
        Some(Node::Object { count, .. } | Node::Array { count, .. }) => 1 + count,
        _ => 1,
    };
    let name = |j: usize| match nodes.get(j) {
        Some(Node::String(s)) => *s,
        _ => "",
    };
    ends.clear();
    for (i, node) in nodes.iter().enumerate() {
        while ends.last().is_some_and(|&end| end <= i) {
            ends.pop();
        }
        let len = match *node {
            Node::Object { len, count } | Node::Array { len, count } => {
                if ends.len() >= max_depth {
                    return Err(EnvelopeError::TooDeep(max_depth));
                }
                ends.push(i + 1 + count);
                if matches!(node, Node::Array { .. }) {
                    continue;
                }
                len
            }
            _ => continue,
        };
        if len < 2 {
            continue;
        }
        let mut j = i + 1;
        if len <= 8 {
            let mut seen = [""; 8];
            for m in 0..len {
                let k = name(j);
                if seen[..m].contains(&k) {
                    return Err(EnvelopeError::Repeated(k.to_string()));
                }
                seen[m] = k;
                j += 1 + span(j + 1);
            }
        } else {
            keys.clear();
            for _ in 0..len {
                keys.push(j);
                j += 1 + span(j + 1);
            }
            keys.sort_unstable_by_key(|&k| name(k));
            if let Some(w) = keys.windows(2).find(|w| name(w[0]) == name(w[1])) {
                return Err(EnvelopeError::Repeated(name(w[0]).to_string()));
            }
        }
    }
    Ok(())
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
                for (k, x) in o.iter() {
                    if protocol::META_ERA_KEYS.contains(&k) {
                        continue;
                    }
                    let entry = (k.to_string(), x.encode());
                    if k.starts_with(protocol::META_DOME_PREFIX) {
                        e.dome_meta.push(entry);
                    } else {
                        e.meta_entries.push(entry);
                    }
                }
            }
        }
    }
    Ok(Parsed::One(Box::new(e)))
}

/// The envelope read against serde_json, the reference reader: the
/// oracle of the fixed-seed test below and of `cargo xtask fuzz envelope`
/// (public, behind the `fuzzing` feature, only for that fuzz target).
#[cfg(any(test, feature = "fuzzing"))]
pub mod differential {
    /// Equal as JSON values: the same structure, members, strings and
    /// numbers. Numbers are compared exactly (both readers round a decimal
    /// to the nearest float, serde_json with its `float_roundtrip`), with
    /// one exception: `-0` is an integer to simd-json (0, written back as
    /// `0`) and the float -0.0 to serde_json, the same number either way.
    pub fn same(a: Option<&Json>, b: Option<&Json>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(Json::Number(x)), Some(Json::Number(y))) => {
                let zero = |n: &serde_json::Number| n.as_f64() == Some(0.0);
                x == y
                    || (x.is_f64() && y.is_f64() && x.as_f64() == y.as_f64())
                    || (zero(x) && zero(y))
            }
            (Some(Json::Array(x)), Some(Json::Array(y))) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(Some(x), Some(y)))
            }
            (Some(Json::Object(x)), Some(Json::Object(y))) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| same(Some(v), Some(w))))
            }
            (a, b) => a == b,
        }
    }

    use serde_json::Value as Json;

    use super::{EnvelopeError, Parsed, parse, protocol};

    /// How the two readers agreed on one input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Agreement {
        /// Both read the same message (or the same batch, or the same
        /// non-object).
        Same,
        /// Neither reads it as JSON.
        Refused,
        /// The envelope refuses a repeated member name serde_json also sees.
        Repeated,
        /// Nested deeper than the limit: the envelope refuses it, serde_json
        /// reads it that deep (or is past its own limit of 128 levels).
        TooDeep,
    }

    /// Parses `input` with both readers and panics, naming the input, when
    /// they disagree: a message both read must give the same `jsonrpc`,
    /// `method`, response-ness, `id`, name, cursor, arguments and params;
    /// text serde_json refuses must be refused as a parse error; a repeated
    /// name or a depth past `max_depth` must be refused as such and only then.
    pub fn check(input: &[u8], max_depth: usize) -> Agreement {
        let text = input.escape_ascii().to_string();
        let reference = serde_json::from_slice::<Json>(input);
        let got = parse(input, max_depth);
        // serde_json gives up at 128 levels: past that it cannot judge
        // anything but the depth.
        if let Err(e) = &reference
            && e.to_string().starts_with("recursion limit exceeded")
        {
            assert!(
                max_depth >= 127 || got.is_err(),
                "a message over the depth limit was read: {text}"
            );
            return Agreement::TooDeep;
        }
        let unique = serde_json::from_slice::<Unique>(input).is_ok();
        let depth = reference.as_ref().map_or(0, depth_of);
        match (reference, got) {
            (Err(_), Err(EnvelopeError::Parse(_))) => Agreement::Refused,
            (Ok(_), Err(EnvelopeError::Repeated(name))) => {
                assert!(!unique, "`{name}` is not repeated in {text}");
                Agreement::Repeated
            }
            (Ok(_), Err(EnvelopeError::TooDeep(limit))) => {
                assert_eq!(limit, max_depth, "{text}");
                assert!(depth > max_depth, "{depth} levels is not too deep: {text}");
                Agreement::TooDeep
            }
            (Ok(_), _) if !unique => panic!("a repeated name went unnoticed in {text}"),
            (Ok(_), _) if depth > max_depth => {
                panic!("{depth} levels went past the limit of {max_depth}: {text}")
            }
            (Ok(Json::Array(_)), Ok(Parsed::Batch)) => Agreement::Same,
            (Ok(v), Err(EnvelopeError::NotObject)) if !v.is_object() && !v.is_array() => {
                Agreement::Same
            }
            (Ok(Json::Object(o)), Ok(Parsed::One(e))) => {
                let str_at = |v: Option<&Json>| v.and_then(Json::as_str).map(str::to_string);
                assert_eq!(
                    e.jsonrpc_ok,
                    o.get("jsonrpc") == Some(&Json::from("2.0")),
                    "{text}"
                );
                assert_eq!(
                    e.method.as_deref().map(str::to_string),
                    str_at(o.get("method")),
                    "{text}"
                );
                assert_eq!(
                    e.is_response,
                    o.contains_key("result") || o.contains_key("error"),
                    "{text}"
                );
                assert!(same(e.id.as_ref(), o.get("id")), "id: {text}");
                let params = o.get("params");
                let key = e
                    .method
                    .as_deref()
                    .and_then(protocol::name_key)
                    .unwrap_or("name");
                assert_eq!(e.name, str_at(params.and_then(|p| p.get(key))), "{text}");
                assert_eq!(
                    e.cursor,
                    str_at(params.and_then(|p| p.get("cursor"))),
                    "{text}"
                );
                assert_eq!(
                    e.init_version,
                    str_at(params.and_then(|p| p.get("protocolVersion"))),
                    "{text}"
                );
                assert!(
                    same(
                        e.request_id.as_ref(),
                        params.and_then(|p| p.get("requestId"))
                    ),
                    "requestId: {text}"
                );
                for (k, x) in &e.extra_params {
                    let x: Json = serde_json::from_str(x).unwrap();
                    assert!(same(Some(&x), params.and_then(|p| p.get(k))), "{k}: {text}");
                }
                let args = e
                    .arguments
                    .as_deref()
                    .map(|a| serde_json::from_str::<Json>(a).unwrap());
                assert!(
                    same(args.as_ref(), params.and_then(|p| p.get("arguments"))),
                    "arguments: {text}"
                );
                if let Some(p) = &e.params {
                    let p: Json = serde_json::from_str(p).unwrap();
                    assert!(same(Some(&p), params), "params: {text}");
                }
                Agreement::Same
            }
            (reference, got) => panic!(
                "serde_json and the envelope disagree on {text}: {:?} / {}",
                reference.map(|v| v.to_string()),
                match got {
                    Ok(Parsed::One(_)) => "an object".to_string(),
                    Ok(Parsed::Batch) => "a batch".to_string(),
                    Err(e) => format!("{e:?}"),
                }
            ),
        }
    }

    /// How deeply containers nest (a scalar: 0). Recursive, on a value
    /// serde_json read, which is at most 128 levels deep.
    fn depth_of(v: &Json) -> usize {
        match v {
            Json::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
            Json::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// serde_json's reading, refusing a repeated member name (the reference
    /// for the envelope's own check).
    struct Unique;

    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Unique)
        }
    }

    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
            while a.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = a.next_key::<String>()? {
                if !seen.insert(k) {
                    return Err(serde::de::Error::custom("a repeated name"));
                }
                a.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
}

#[cfg(test)]
mod tests;
