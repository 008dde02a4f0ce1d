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
use serde_json::Value;

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
    /// may be `Null`): types and shape stay as they were.
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
            }
            _ => {}
        }
    }

    /// Redacts a `tools/call` result: its text content and structured
    /// content (against the tool's `outputSchema`).
    pub fn result(&self, result: &mut Value, output_schema: &Value) -> Counts {
        let mut counts = Counts::default();
        if let Some(items) = result.get_mut("content").and_then(Value::as_array_mut) {
            for item in items {
                if item["type"] == "text"
                    && let Some(Value::String(t)) = item.get_mut("text")
                    && let Cow::Owned(new) = self.text(t, false, &mut counts)
                {
                    *t = new;
                }
            }
        }
        if let Some(sc) = result.get_mut("structuredContent") {
            self.value(sc, output_schema, &mut counts);
        }
        counts
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
    fn unknown_detectors_and_bad_regexes_are_refused() {
        assert!(Redactor::new(&["ssn".into()]).is_err());
        assert!(Redactor::new(&["regex:(".into()]).is_err());
    }
}
