//! Response redaction: built-in detectors (e-mail addresses, card numbers
//! that pass the Luhn check, national-id-like numbers, API keys and bearer
//! tokens, JWTs, private keys) and custom regexes, applied to a tool
//! result's text content and `structuredContent`. Only string values are
//! rewritten, so the JSON keeps its shape and types; a string whose output
//! schema says `format: email` gets an address-shaped placeholder so it
//! stays valid. Counts per detector come back with the result; the values
//! themselves never leave Dome.
//!
//! A secret can hide from a pattern behind characters a reader does not
//! see or reads as ASCII: zero-width spaces and joiners, soft hyphens,
//! bidirectional controls, variation selectors, combining marks, and
//! compatibility forms (fullwidth `ａｎｎ＠ａｃｍｅ．ｔｅｓｔ`, mathematical
//! letters, circled digits). Text that is not plain ASCII is therefore also
//! matched in a folded form (those invisible characters dropped, every
//! other character in its NFKC form), and what matches there is redacted
//! from the original text, hidden characters included. Homoglyphs of
//! other scripts (a Cyrillic `а` for a Latin `a`) and encoded secrets
//! (base64, hex, split across fields) are not caught.
//!
//! The walks over a result are recursive and stop at
//! [`MAX_REDACT_DEPTH`]: anything nested deeper is withheld whole (replaced
//! by a placeholder) rather than passed on unread.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicU64, Ordering},
};

use regex::Regex;
use serde_json::{Map, Value};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

/// How deep the walks over a message go; deeper values are withheld. The
/// JSON reader refuses messages deeper than 128 levels, so this is a guard
/// for values built otherwise.
pub const MAX_REDACT_DEPTH: usize = 128;

/// What stands in for a value nested deeper than [`MAX_REDACT_DEPTH`].
const TOO_DEEP: &str = "[REDACTED:too deep]";

/// `_meta` keys whose values tie messages together (left alone like ids).
const META_IDS: [&str; 3] = [
    "progressToken",
    "io.modelcontextprotocol/subscriptionId",
    "io.modelcontextprotocol/related-task",
];

/// The built-in detectors, by the names policies use.
pub const DETECTORS: [&str; 6] = [
    "email",
    "card",
    "national_id",
    "api_key",
    "jwt",
    "private_key",
];

/// Values redacted since start, per built-in detector (then custom).
static TOTALS: [AtomicU64; DETECTORS.len() + 1] =
    [const { AtomicU64::new(0) }; DETECTORS.len() + 1];

/// Redactions since start by detector (`/stats`).
pub fn totals() -> Vec<(&'static str, u64)> {
    DETECTORS
        .iter()
        .copied()
        .chain(["custom"])
        .zip(TOTALS.iter().map(|t| t.load(Ordering::Relaxed)))
        .collect()
}

struct Detector {
    /// Index into `DETECTORS`, or `DETECTORS.len()` for a custom regex.
    kind: usize,
    re: Regex,
    /// Card numbers: only digit runs that pass Luhn.
    luhn: bool,
}

/// A compiled set of detectors.
pub struct Redactor {
    detectors: Vec<Detector>,
}

/// Why detector names do not compile into a [`Redactor`].
#[derive(Debug)]
pub enum DetectorError {
    /// A `regex:<pattern>` whose pattern does not compile.
    BadRegex {
        /// The pattern as written.
        pattern: String,
        /// What the regex compiler said.
        source: regex::Error,
    },
    /// Neither a built-in detector nor `regex:<pattern>`.
    Unknown(String),
}

impl std::fmt::Display for DetectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The compiler's words are the source (`error_chain` adds them).
            DetectorError::BadRegex { pattern, .. } => write!(f, "bad regex `{pattern}`"),
            DetectorError::Unknown(name) => write!(f, "unknown detector `{name}`"),
        }
    }
}

impl std::error::Error for DetectorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DetectorError::BadRegex { source, .. } => Some(source),
            DetectorError::Unknown(_) => None,
        }
    }
}

/// What one redaction pass removed, per detector (same order as `DETECTORS`, then custom).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u32; DETECTORS.len() + 1]);

impl Counts {
    /// Everything removed, by all detectors.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }
}

fn builtin(name: &str) -> Option<(&'static str, bool)> {
    Some(match name {
        "email" => (r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b", false),
        // 13-19 digits, optionally grouped by spaces or dashes.
        "card" => (r"\b\d(?:[ -]?\d){12,18}\b", true),
        // US SSN-like and similar grouped national numbers.
        "national_id" => (r"\b\d{3}-\d{2}-\d{4}\b", false),
        "api_key" => (
            r"(?i)\b(?:sk|pk|rk|dome|ghp|gho|xox[abp])[_-][A-Za-z0-9_-]{16,}\b|(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
            false,
        ),
        "jwt" => (
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",
            false,
        ),
        "private_key" => (
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
            false,
        ),
        _ => return None,
    })
}

/// What stands in for a value a detector of `kind` found.
fn placeholder(kind: usize, email_shaped: bool) -> String {
    match kind {
        0 if email_shaped => "redacted@redacted.invalid".to_string(),
        k if k < DETECTORS.len() => format!("[REDACTED:{}]", DETECTORS[k]),
        _ => "[REDACTED]".to_string(),
    }
}

/// Unicode's default-ignorable code points: rendered as nothing, so they
/// can split a secret without a reader noticing.
fn ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// Text folded for matching (invisible characters and combining marks
/// dropped, the rest in NFKC form, character by character), with where
/// each of its bytes came from in the original.
struct Folded {
    text: String,
    /// For each byte of `text`: where its original character starts.
    from: Vec<u32>,
}

impl Folded {
    /// The folded form of `s`, or `None` when folding changes nothing.
    fn of(s: &str) -> Option<Folded> {
        let mut f = Folded {
            text: String::with_capacity(s.len()),
            from: Vec::with_capacity(s.len()),
        };
        let mut changed = false;
        for (i, c) in s.char_indices() {
            let span = (i, i + c.len_utf8());
            let before = f.text.len();
            let Ok(start) = u32::try_from(i) else { break };
            if c.is_ascii() {
                f.text.push(c);
            } else if !ignorable(c) && !is_combining_mark(c) {
                for d in std::iter::once(c).nfkc() {
                    if !ignorable(d) && !is_combining_mark(d) {
                        f.text.push(d);
                    }
                }
            }
            changed |= f.text[before..] != s[span.0..span.1];
            f.from.resize(f.text.len(), start);
        }
        changed.then_some(f)
    }

    /// The byte range in `original` (the text folded) of the folded range
    /// `start..end` (not empty), whole characters.
    fn source(&self, original: &str, start: usize, end: usize) -> (usize, usize) {
        let last = self.from[end - 1] as usize;
        let width = original[last..].chars().next().map_or(0, char::len_utf8);
        (self.from[start] as usize, last + width)
    }
}

fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0;
    let mut n = 0;
    for (i, c) in digits.bytes().rev().filter(u8::is_ascii_digit).enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        n += 1;
    }
    (13..=19).contains(&n) && sum % 10 == 0
}

impl Redactor {
    /// Compiles detector names (`email`, …, or `regex:<pattern>`).
    pub fn new(names: &[String]) -> Result<Redactor, DetectorError> {
        let mut detectors = Vec::new();
        for n in names {
            if let Some(p) = n.strip_prefix("regex:") {
                detectors.push(Detector {
                    kind: DETECTORS.len(),
                    re: Regex::new(p).map_err(|source| DetectorError::BadRegex {
                        pattern: p.to_string(),
                        source,
                    })?,
                    luhn: false,
                });
                continue;
            }
            let (p, luhn) = builtin(n).ok_or_else(|| DetectorError::Unknown(n.clone()))?;
            detectors.push(Detector {
                kind: DETECTORS.iter().position(|d| d == n).expect("a built-in"),
                re: Regex::new(p).expect("built-in patterns compile"),
                luhn,
            });
        }
        // Longest secrets first, so a JWT is not half-eaten as something else.
        detectors.sort_by_key(|d| match d.kind {
            5 => 0,
            4 => 1,
            3 => 2,
            _ => 3,
        });
        Ok(Redactor { detectors })
    }

    /// Redacts `text`; `email_shaped` keeps an e-mail placeholder valid as
    /// an address (for `format: email` fields).
    pub fn text<'t>(&self, text: &'t str, email_shaped: bool, counts: &mut Counts) -> Cow<'t, str> {
        let mut found = Counts::default();
        let out = self.redact_str(text, email_shaped, &mut found);
        for (k, n) in found.0.iter().enumerate().filter(|(_, n)| **n > 0) {
            counts.0[k] += n;
            TOTALS[k].fetch_add(u64::from(*n), Ordering::Relaxed);
        }
        out
    }

    /// [`Redactor::text`] without the running totals: first in the folded
    /// form of text that is not plain ASCII, then as written (for custom
    /// patterns that name non-ASCII characters themselves).
    fn redact_str<'t>(
        &self,
        text: &'t str,
        email_shaped: bool,
        counts: &mut Counts,
    ) -> Cow<'t, str> {
        let mut out: Cow<'t, str> = Cow::Borrowed(text);
        if !text.is_ascii()
            && let Some(folded) = Folded::of(text)
        {
            // Original spans by start (end, detector); they never overlap:
            // an earlier detector's match wins.
            let mut spans: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
            for d in &self.detectors {
                for m in d.re.find_iter(&folded.text) {
                    if m.is_empty() || d.luhn && !luhn_ok(m.as_str()) {
                        continue;
                    }
                    let (s, e) = folded.source(text, m.start(), m.end());
                    // Spans are disjoint, so the last one starting before
                    // `e` is the only one that can overlap.
                    if spans
                        .range(..e)
                        .next_back()
                        .is_none_or(|(_, (b, _))| *b <= s)
                    {
                        spans.insert(s, (e, d.kind));
                    }
                }
            }
            if !spans.is_empty() {
                let mut new = String::with_capacity(text.len());
                let mut at = 0;
                for (s, (e, kind)) in spans {
                    new.push_str(&text[at..s]);
                    new.push_str(&placeholder(kind, email_shaped));
                    counts.0[kind] += 1;
                    at = e;
                }
                new.push_str(&text[at..]);
                out = Cow::Owned(new);
            }
        }
        for d in &self.detectors {
            if !d.re.is_match(&out) {
                continue;
            }
            let mut n = 0u32;
            let replaced = d.re.replace_all(&out, |c: &regex::Captures<'_>| {
                let m = &c[0];
                if d.luhn && !luhn_ok(m) {
                    return m.to_string();
                }
                n += 1;
                placeholder(d.kind, email_shaped)
            });
            if n > 0 {
                counts.0[d.kind] += n;
                out = Cow::Owned(replaced.into_owned());
            }
        }
        out
    }

    /// Redacts every string in `v`, guided by its JSON schema (`schema`
    /// may be `Null`): types and shape stay as they were. Object keys are
    /// data too (records keyed by e-mail address); a key the schema names
    /// as a property is left alone.
    pub fn value(&self, v: &mut Value, schema: &Value, counts: &mut Counts) {
        self.value_at(v, schema, counts, 0);
    }

    fn value_at(&self, v: &mut Value, schema: &Value, counts: &mut Counts, depth: usize) {
        match v {
            Value::String(s) => {
                let email = schema["format"] == "email";
                if let Cow::Owned(new) = self.text(s, email, counts) {
                    *s = new;
                }
            }
            Value::Array(_) | Value::Object(_) if depth >= MAX_REDACT_DEPTH => {
                *v = Value::String(TOO_DEEP.into());
            }
            Value::Array(items) => {
                for item in items {
                    self.value_at(item, &schema["items"], counts, depth + 1);
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    self.value_at(item, &schema["properties"][k.as_str()], counts, depth + 1);
                }
                self.keys(map, |k| schema["properties"].get(k).is_some(), counts);
            }
            _ => {}
        }
    }

    /// Redacts a JSON-RPC result of any kind (`tools/call`,
    /// `resources/read`, `prompts/get`, `completion/complete`, an
    /// `input_required` round): every string the upstream sent as data,
    /// wherever it sits — text content, embedded resources, resource
    /// links, prompt messages, completion values, object keys.
    /// `structuredContent` is redacted against the tool's `outputSchema`,
    /// `_meta` (the result's and its parts') like any data but the ids in
    /// it. Protocol fields (`type`, `mimeType`, cursors, an
    /// `input_required` round's opaque `requestState`) and base64
    /// payloads (`blob`, image and audio `data`) are left alone: a
    /// detector could only corrupt them.
    pub fn result(&self, result: &mut Value, output_schema: &Value) -> Counts {
        let mut counts = Counts::default();
        match result {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match k.as_str() {
                        "structuredContent" => self.value(v, output_schema, &mut counts),
                        "_meta" => self.meta(v, &mut counts, 1),
                        "nextCursor" | "resultType" | "cacheScope" | "ttlMs" | "isError"
                        | "requestState" => {}
                        _ => self.payload(v, &mut counts, 1),
                    }
                }
            }
            other => self.payload(other, &mut counts, 0),
        }
        counts
    }

    /// Redacts a `_meta` object: every value but the ids that tie
    /// messages together. Its keys are names, not data.
    fn meta(&self, meta: &mut Value, counts: &mut Counts, depth: usize) {
        match meta {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if !META_IDS.contains(&k.as_str()) {
                        self.payload(v, counts, depth + 1);
                    }
                }
            }
            other => self.payload(other, counts, depth),
        }
    }

    /// Redacts a JSON-RPC error from an upstream: its message and data.
    pub fn error(&self, error: &mut Value) -> Counts {
        let mut counts = Counts::default();
        if let Some(Value::String(m)) = error.get_mut("message")
            && let Cow::Owned(new) = self.text(m, false, &mut counts)
        {
            *m = new;
        }
        if let Some(data) = error.get_mut("data") {
            self.payload(data, &mut counts, 1);
        }
        counts
    }

    /// Redacts the params of a message an upstream sends during a call
    /// (progress and log notifications, requests to the client): all but
    /// the ids that tie it to its request.
    pub fn params(&self, params: &mut Value) -> Counts {
        let mut counts = Counts::default();
        match params {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match k.as_str() {
                        "progressToken" | "requestId" => {}
                        "_meta" => self.meta(v, &mut counts, 1),
                        _ => self.payload(v, &mut counts, 1),
                    }
                }
            }
            other => self.payload(other, &mut counts, 0),
        }
        counts
    }

    /// Every string in `v` (at `depth` in its message) but protocol fields
    /// and base64 payloads.
    fn payload(&self, v: &mut Value, counts: &mut Counts, depth: usize) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(new) = self.text(s, false, counts) {
                    *s = new;
                }
            }
            Value::Array(_) | Value::Object(_) if depth >= MAX_REDACT_DEPTH => {
                *v = Value::String(TOO_DEEP.into());
            }
            Value::Array(items) => {
                for item in items {
                    self.payload(item, counts, depth + 1);
                }
            }
            Value::Object(map) => {
                let media = matches!(
                    map.get("type").and_then(Value::as_str),
                    Some("image" | "audio")
                );
                for (k, item) in map.iter_mut() {
                    match k.as_str() {
                        "type" | "mimeType" | "blob" => {}
                        "data" if media => {}
                        "_meta" => self.meta(item, counts, depth + 1),
                        _ => self.payload(item, counts, depth + 1),
                    }
                }
                self.keys(map, |k| k == "_meta", counts);
            }
            _ => {}
        }
    }

    /// Redacts the keys of `map` but those `keep` names. A redacted key
    /// that meets another gets a number (`[REDACTED:email] 2`), so no
    /// value is lost.
    fn keys(&self, map: &mut Map<String, Value>, keep: impl Fn(&str) -> bool, counts: &mut Counts) {
        let mut found = Counts::default();
        let new_names: Vec<(String, String)> = map
            .keys()
            .filter(|k| !keep(k))
            .filter_map(|k| match self.redact_str(k, false, &mut found) {
                Cow::Owned(new) => Some((k.clone(), new)),
                Cow::Borrowed(_) => None,
            })
            .collect();
        if new_names.is_empty() {
            return;
        }
        for (k, n) in found.0.iter().enumerate().filter(|(_, n)| **n > 0) {
            counts.0[k] += n;
            TOTALS[k].fetch_add(u64::from(*n), Ordering::Relaxed);
        }
        // Same order as the keys were listed in: keep the others' order.
        let mut new_names = new_names.into_iter().peekable();
        let mut renamed = Vec::new();
        for (k, v) in std::mem::take(map) {
            match new_names.next_if(|(old, _)| *old == k) {
                Some((_, new)) => renamed.push((new, v)),
                None => {
                    map.insert(k, v);
                }
            }
        }
        for (k, v) in renamed {
            let mut key = k.clone();
            let mut n = 1;
            while map.contains_key(&key) {
                n += 1;
                key = format!("{k} {n}");
            }
            map.insert(key, v);
        }
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.detectors.iter().map(|d| d.re.as_str()))
            .finish()
    }
}

impl PartialEq for Redactor {
    fn eq(&self, other: &Self) -> bool {
        self.detectors.len() == other.detectors.len()
            && self
                .detectors
                .iter()
                .zip(&other.detectors)
                .all(|(a, b)| a.kind == b.kind && a.re.as_str() == b.re.as_str())
    }
}

#[cfg(test)]
mod tests;
