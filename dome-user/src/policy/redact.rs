//! Response redaction: built-in detectors (e-mail addresses, card numbers
//! that pass the Luhn check, national-id-like numbers, API keys and bearer
//! tokens, JWTs, private keys) and custom regexes, applied to a tool
//! result's text content and `structuredContent`. Only string values are
//! rewritten, so the JSON keeps its shape and types; a string whose output
//! schema says `format: email` gets an address-shaped placeholder so it
//! stays valid. Counts per detector come back with the result; the values
//! themselves never leave Dome.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicU64, Ordering},
};

use regex::Regex;
use serde_json::{Map, Value};

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

/// What one redaction pass removed, per detector (same order as `DETECTORS`, then custom).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u32; DETECTORS.len() + 1]);

impl Counts {
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
    pub fn new(names: &[String]) -> Result<Redactor, String> {
        let mut detectors = Vec::new();
        for n in names {
            if let Some(p) = n.strip_prefix("regex:") {
                detectors.push(Detector {
                    kind: DETECTORS.len(),
                    re: Regex::new(p).map_err(|e| format!("bad regex `{p}`: {e}"))?,
                    luhn: false,
                });
                continue;
            }
            let (p, luhn) = builtin(n).ok_or_else(|| format!("unknown detector `{n}`"))?;
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
        let mut out: Cow<'t, str> = Cow::Borrowed(text);
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
                match d.kind {
                    0 if email_shaped => "redacted@redacted.invalid".to_string(),
                    k if k < DETECTORS.len() => format!("[REDACTED:{}]", DETECTORS[k]),
                    _ => "[REDACTED]".to_string(),
                }
            });
            if n > 0 {
                counts.0[d.kind] += n;
                TOTALS[d.kind].fetch_add(u64::from(n), Ordering::Relaxed);
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
        match v {
            Value::String(s) => {
                let email = schema["format"] == "email";
                if let Cow::Owned(new) = self.text(s, email, counts) {
                    *s = new;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.value(item, &schema["items"], counts);
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    self.value(item, &schema["properties"][k.as_str()], counts);
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
    /// `structuredContent` is redacted against the tool's `outputSchema`.
    /// Protocol fields (`_meta`, `type`, `mimeType`, cursors, an
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
                        "_meta" | "nextCursor" | "resultType" | "cacheScope" | "ttlMs"
                        | "isError" | "requestState" => {}
                        _ => self.payload(v, &mut counts),
                    }
                }
            }
            other => self.payload(other, &mut counts),
        }
        counts
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
            self.payload(data, &mut counts);
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
                    if !matches!(k.as_str(), "_meta" | "progressToken" | "requestId") {
                        self.payload(v, &mut counts);
                    }
                }
            }
            other => self.payload(other, &mut counts),
        }
        counts
    }

    /// Every string in `v` but protocol fields and base64 payloads.
    fn payload(&self, v: &mut Value, counts: &mut Counts) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(new) = self.text(s, false, counts) {
                    *s = new;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.payload(item, counts);
                }
            }
            Value::Object(map) => {
                let media = matches!(
                    map.get("type").and_then(Value::as_str),
                    Some("image" | "audio")
                );
                for (k, item) in map.iter_mut() {
                    match k.as_str() {
                        "_meta" | "type" | "mimeType" | "blob" => {}
                        "data" if media => {}
                        _ => self.payload(item, counts),
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
        let changes = |k: &str| {
            !keep(k)
                && self.detectors.iter().any(|d| {
                    d.re.is_match(k) && (!d.luhn || d.re.find_iter(k).any(|m| luhn_ok(m.as_str())))
                })
        };
        if !map.keys().any(|k| changes(k)) {
            return;
        }
        let old = std::mem::take(map);
        let mut renamed = Vec::new();
        for (k, v) in old {
            if changes(&k) {
                renamed.push((self.text(&k, false, counts).into_owned(), v));
            } else {
                map.insert(k, v);
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
mod tests {
    use super::*;
    use serde_json::json;

    fn all() -> Redactor {
        Redactor::new(&DETECTORS.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn each_detector_finds_its_kind_and_nothing_else() {
        let r = all();
        let mut c = Counts::default();
        let text = "mail ann@acme.test, card 4111 1111 1111 1111, not a card 4111 1111 1111 1112, \
                    ssn 123-45-6789, key sk_live_abcdefghijklmnopqrst, \
                    jwt eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl, \
                    -----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY----- order 12345";
        let out = r.text(text, false, &mut c);
        for secret in [
            "ann@acme.test",
            "4111 1111 1111 1111",
            "123-45-6789",
            "sk_live_",
            "eyJhbGci",
            "MIIB",
        ] {
            assert!(!out.contains(secret), "{secret} left in: {out}");
        }
        assert!(
            out.contains("4111 1111 1111 1112"),
            "a non-Luhn number stays: {out}"
        );
        assert!(out.contains("order 12345"));
        assert_eq!(c.0, [1, 1, 1, 1, 1, 1, 0], "{out}");
    }

    #[test]
    fn structured_content_keeps_its_shape_and_schema() {
        let r = Redactor::new(&["email".into(), "card".into(), "regex:ACCT-\\d+".into()]).unwrap();
        let mut result = json!({
            "content": [{"type": "text", "text": "[{\"email\":\"bob@x.test\"}]"}, {"type": "image", "data": "bob@x.test"}],
            "structuredContent": {"rows": [{"email": "bob@x.test", "card": "5555555555554444", "n": 7, "note": "ACCT-991"}]},
        });
        let schema = json!({"type": "object", "properties": {"rows": {"type": "array", "items": {
            "type": "object", "properties": {"email": {"type": "string", "format": "email"}, "card": {"type": "string"}}}}}});
        let c = r.result(&mut result, &schema);
        let row = &result["structuredContent"]["rows"][0];
        assert_eq!(row["email"], "redacted@redacted.invalid");
        assert_eq!(row["card"], "[REDACTED:card]");
        assert_eq!(row["n"], 7);
        assert_eq!(row["note"], "[REDACTED]");
        assert!(
            !result["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("bob@")
        );
        assert_eq!(
            result["content"][1]["data"], "bob@x.test",
            "only text content is text"
        );
        assert_eq!(c.total(), 4);
    }

    #[test]
    fn every_kind_of_result_loses_its_data_but_not_its_protocol_fields() {
        let r = Redactor::new(&["email".into(), "card".into(), "jwt".into()]).unwrap();
        let mut result = json!({
            "content": [
                {"type": "resource", "resource": {"uri": "u://a", "mimeType": "text/plain",
                                                  "text": "to a@x.test", "blob": "4111111111111111"}},
                {"type": "resource_link", "uri": "u://b", "name": "b@x.test", "description": "for b@x.test"},
                {"type": "audio", "mimeType": "audio/wav", "data": "4111111111111111"},
                {"type": "text", "text": "c@x.test", "_meta": {"k": "d@x.test"}}
            ],
            "messages": [{"role": "user", "content": {"type": "text", "text": "hi e@x.test"}}],
            "completion": {"values": ["f@x.test", "other"], "total": 2},
            "nextCursor": "g@x.test",
            "requestState": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl",
            "_meta": {"trace": "h@x.test"}
        });
        let c = r.result(&mut result, &Value::Null);
        let text = result.to_string();
        for gone in ["a@x", "b@x", "c@x", "e@x", "f@x"] {
            assert!(!text.contains(gone), "{gone} left in {text}");
        }
        for kept in ["d@x", "g@x", "h@x", "u://a", "audio/wav"] {
            assert!(text.contains(kept), "{kept} was touched: {text}");
        }
        assert_eq!(result["content"][0]["resource"]["blob"], "4111111111111111");
        assert_eq!(result["content"][2]["data"], "4111111111111111");
        assert_eq!(result["completion"]["values"][1], "other");
        assert!(
            result["requestState"].as_str().unwrap().starts_with("eyJ"),
            "an opaque token the upstream needs back"
        );
        assert_eq!(c.0[0], 6, "{text}");
    }

    #[test]
    fn keys_are_data_unless_the_schema_names_them() {
        let r = Redactor::new(&["email".into()]).unwrap();
        let mut sc = json!({"byUser": {"a@x.test": 1, "b@x.test": 2, "[REDACTED:email]": 3},
                            "c@x.test": {"format": "kept"}});
        let schema = json!({"properties": {"c@x.test": {"type": "object"}}});
        let mut c = Counts::default();
        r.value(&mut sc, &schema, &mut c);
        let by = sc["byUser"].as_object().unwrap();
        let mut values: Vec<i64> = by.values().filter_map(Value::as_i64).collect();
        values.sort();
        assert_eq!(values, [1, 2, 3], "no value lost: {sc}");
        assert!(!sc["byUser"].to_string().contains("@x.test"), "{sc}");
        assert!(
            by.contains_key("[REDACTED:email] 2") && by.contains_key("[REDACTED:email] 3"),
            "{sc}"
        );
        assert_eq!(sc["c@x.test"]["format"], "kept", "a named property stays");
        assert_eq!(c.0[0], 2);
    }

    #[test]
    fn errors_and_messages_on_the_way_are_redacted() {
        let r = Redactor::new(&["email".into()]).unwrap();
        let mut error =
            json!({"code": -32000, "message": "no a@x.test", "data": {"who": ["b@x.test"]}});
        assert_eq!(r.error(&mut error).0[0], 2);
        assert_eq!(error["message"], "no [REDACTED:email]");
        assert_eq!(error["data"]["who"][0], "[REDACTED:email]");
        assert_eq!(error["code"], -32000);
        let mut params = json!({"progressToken": "c@x.test", "progress": 1, "message": "for d@x.test",
                                "_meta": {"x": "e@x.test"}});
        assert_eq!(r.params(&mut params).0[0], 1);
        assert_eq!(
            params["progressToken"], "c@x.test",
            "ties it to its request"
        );
        assert_eq!(params["message"], "for [REDACTED:email]");
        assert_eq!(params["_meta"]["x"], "e@x.test");
    }

    #[test]
    fn unknown_detectors_and_bad_regexes_are_refused() {
        assert!(Redactor::new(&["ssn".into()]).is_err());
        assert!(Redactor::new(&["regex:(".into()]).is_err());
    }
}
