//! Argument conditions as compiled: tool globs, JSON pointers, and the
//! tests an argument is held to (exactly, or as any reading of it could
//! be: numbers, decimals, percent-decoded paths), with their depth bounds.

use super::*;

/// A glob with `*` wildcards, matched without allocating.
#[derive(Clone, Debug)]
pub struct Glob(pub(super) String);

impl Glob {
    /// Whether the whole of `s` matches (each `*` any run of bytes,
    /// empty included); linear in `s`.
    pub fn matches(&self, s: &str) -> bool {
        glob_match(self.0.as_bytes(), s.as_bytes())
    }
    pub(super) fn is_literal(&self) -> bool {
        !self.0.contains('*')
    }
}

pub(super) fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with one backtrack point: linear time.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Why an argument condition does not compile. `source` reports it as a
/// policy error's reason, at the condition's field.
#[derive(Debug)]
pub(crate) enum ArgError {
    /// `path` is not a JSON pointer.
    NotAPointer(String),
    /// `eq`, `prefix`, `path_prefix` and `regex` compare with `value`.
    NeedsValue(ArgOp),
    EmptyIn,
    PrefixNotString,
    PathPrefixNotAbsolute,
    PathPrefixNotString,
    BadRegex(regex::Error),
    RegexNotString,
    BadRange,
    MaxLenWithoutMax,
    BadType,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArgError::NotAPointer(p) => {
                return write!(f, "`{p}` is not a JSON pointer (it starts with `/`)");
            }
            ArgError::NeedsValue(op) => return write!(f, "`{op:?}` needs `value`"),
            ArgError::EmptyIn => "`in` needs a non-empty `values`",
            ArgError::PrefixNotString => "`prefix` needs a string `value`",
            ArgError::PathPrefixNotAbsolute => {
                "`path_prefix` needs an absolute path `value` (starting with `/`)"
            }
            ArgError::PathPrefixNotString => "`path_prefix` needs a string `value`",
            // The compiler's words are the source.
            ArgError::BadRegex(_) => "bad regex",
            ArgError::RegexNotString => "`regex` needs a string `value`",
            ArgError::BadRange => "`range` needs `min` and/or `max`, min ≤ max",
            ArgError::MaxLenWithoutMax => "`max_len` needs `max`",
            ArgError::BadType => {
                "`type` needs `type` = string, number, integer, boolean, array, object or null"
            }
        })
    }
}

impl std::error::Error for ArgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArgError::BadRegex(e) => Some(e),
            _ => None,
        }
    }
}

/// A JSON pointer split once into its unescaped tokens.
#[derive(Clone, Debug)]
pub struct Pointer(pub(super) Vec<String>);

impl Pointer {
    pub(super) fn parse(p: &str) -> Result<Pointer, ArgError> {
        if p.is_empty() {
            return Ok(Pointer(Vec::new()));
        }
        let Some(rest) = p.strip_prefix('/') else {
            return Err(ArgError::NotAPointer(p.to_string()));
        };
        Ok(Pointer(
            rest.split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ))
    }

    /// The value the pointer names in `v`: object members by name, array
    /// elements by decimal index; `None` where a token names nothing.
    pub fn resolve<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        let mut cur = v;
        for t in &self.0 {
            cur = match cur {
                Value::Object(m) => m.get(t.as_str())?,
                Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

#[derive(Debug)]
pub(super) enum Test {
    /// `eq` (one value) and `in`.
    OneOf(Vec<Value>),
    Prefix(String),
    /// The prefix's normalised segments.
    PathPrefix(Vec<Box<[u8]>>),
    Regex(Regex),
    Range(f64, f64),
    MaxLen(usize),
    Present,
    Absent,
    Type(String),
}

/// How many levels below an argument path a deny condition looks into
/// arrays and objects; what lies deeper cannot be judged, so a deny rule
/// matches it.
pub const MAX_ARG_DEPTH: usize = 32;

/// How many rounds of percent-decoding `path_prefix` follows; a path still
/// encoded after them cannot be judged.
pub const MAX_DECODE_ROUNDS: usize = 4;

/// One string, number, boolean or null under an argument path (an object
/// key counts as a string).
#[derive(Clone, Copy)]
pub(super) enum Scalar<'v> {
    Str(&'v str),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug)]
pub(super) struct CArg {
    pub(super) at: Pointer,
    pub(super) test: Test,
}

impl CArg {
    /// Whether the condition holds for a rule that denies (`deny`) or
    /// allows: see "Argument conditions fail closed" in `lang`.
    pub(super) fn holds(&self, args: Option<&Value>, deny: bool) -> bool {
        let v = args.and_then(|a| self.at.resolve(a));
        match (&self.test, v) {
            (Test::Absent, v) => v.is_none(),
            (_, None) => false,
            (Test::Present, Some(_)) => true,
            (Test::Type(t), Some(v)) => type_is(t, v),
            (Test::MaxLen(m), Some(Value::String(s))) => s.chars().count() <= *m,
            (Test::MaxLen(m), Some(Value::Array(a))) => a.len() <= *m,
            (Test::MaxLen(_), Some(_)) => deny,
            (test, Some(v)) if deny => {
                if let Test::OneOf(xs) = test
                    && xs.iter().any(|x| same(v, x))
                {
                    return true;
                }
                test.could_hold(v, 0)
            }
            (test, Some(v)) => test.holds_strictly(v),
        }
    }
}

impl Test {
    /// For an allow rule: the value is of the type this judges and every
    /// reading of it satisfies it.
    pub(super) fn holds_strictly(&self, v: &Value) -> bool {
        match (self, v) {
            (Test::OneOf(xs), v) => xs.iter().any(|x| same(v, x)),
            (Test::Prefix(p), Value::String(s)) => s.starts_with(p.as_str()),
            (Test::Regex(r), Value::String(s)) => r.is_match(s),
            (Test::PathPrefix(p), Value::String(s)) => path_under(s, p, false),
            (Test::Range(lo, hi), Value::Number(n)) => n
                .as_f64()
                .is_some_and(|f| readings(f).iter().all(|r| *lo <= *r && r <= hi)),
            _ => false,
        }
    }

    /// For a deny rule: some part of `v` (at `depth` below the argument
    /// path) could satisfy this, or cannot be judged by it.
    pub(super) fn could_hold(&self, v: &Value, depth: usize) -> bool {
        let leaf = match v {
            Value::Array(items) => {
                return depth >= MAX_ARG_DEPTH
                    || items.iter().any(|x| self.could_hold(x, depth + 1));
            }
            Value::Object(m) => {
                return depth >= MAX_ARG_DEPTH
                    || m.iter().any(|(k, x)| {
                        self.judge(Scalar::Str(k)) != Some(false) || self.could_hold(x, depth + 1)
                    });
            }
            Value::String(s) => Scalar::Str(s),
            Value::Number(n) => Scalar::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Null => Scalar::Null,
        };
        self.judge(leaf) != Some(false)
    }

    /// Whether one scalar could satisfy this (`None`: cannot be judged).
    pub(super) fn judge(&self, leaf: Scalar<'_>) -> Option<bool> {
        match (self, leaf) {
            (Test::Prefix(p), Scalar::Str(s)) => Some(s.starts_with(p.as_str())),
            (Test::Regex(r), Scalar::Str(s)) => Some(r.is_match(s)),
            (Test::PathPrefix(p), Scalar::Str(s)) => Some(path_under(s, p, true)),
            (Test::Range(lo, hi), leaf) => {
                let f = number_of(leaf)?;
                Some(readings(f).iter().any(|r| *lo <= *r && r <= hi))
            }
            (Test::OneOf(xs), leaf) => {
                let mut unknown = false;
                for x in xs {
                    match equals(leaf, x) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                if unknown { None } else { Some(false) }
            }
            _ => None,
        }
    }
}

/// A scalar as a number: a JSON number, or a string written plainly in
/// decimal (`None`: no single reading).
pub(super) fn number_of(leaf: Scalar<'_>) -> Option<f64> {
    match leaf {
        Scalar::Num(f) if f.is_finite() => Some(f),
        Scalar::Str(s) => plain_decimal(s),
        _ => None,
    }
}

/// Whether a scalar equals one listed value, for a deny rule (`None`:
/// their types cannot be compared).
pub(super) fn equals(leaf: Scalar<'_>, x: &Value) -> Option<bool> {
    match (leaf, x) {
        // Listed arrays and objects are compared whole, not part by part.
        (_, Value::Array(_) | Value::Object(_)) => Some(false),
        (Scalar::Str(s), Value::String(x)) => Some(s == x),
        (leaf @ (Scalar::Num(_) | Scalar::Str(_)), Value::Number(x)) => {
            let (f, x) = (number_of(leaf)?, x.as_f64()?);
            Some(readings(f).contains(&x))
        }
        (Scalar::Bool(b), Value::Bool(x)) => Some(b == *x),
        (Scalar::Null, Value::Null) => Some(true),
        _ => None,
    }
}

/// Equal JSON values, numbers by value (`5` is `5.0`).
pub(super) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The numbers an upstream may read `f` as: itself, truncated or rounded.
pub(super) fn readings(f: f64) -> [f64; 3] {
    [f, f.floor(), f.ceil()]
}

/// `s` as a number when written plainly in decimal: an optional `-`,
/// digits without a leading zero, an optional fraction. Every reader reads
/// that form alike; any other (`5e3`, ` 5_000 `, `0x1388`, `+5`, `05`,
/// non-ASCII digits) has no single reading.
pub fn plain_decimal(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let b = b.strip_prefix(b"-").unwrap_or(b);
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    let ok = digits(int) && (int.len() == 1 || int[0] != b'0') && frac.is_none_or(digits);
    if ok {
        s.parse().ok().filter(|f: &f64| f.is_finite())
    } else {
        None
    }
}

/// An absolute path's segments after lexical normalisation (`//` and `.`
/// dropped, `..` removing the segment before it, never above the root);
/// `None` when it is not absolute or holds a NUL byte.
pub(super) fn path_segments(p: &[u8]) -> Option<Vec<&[u8]>> {
    if p.first() != Some(&b'/') || p.contains(&0) {
        return None;
    }
    let mut out = Vec::new();
    for seg in p.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    Some(out)
}

/// Whether the path `p` is at or under `prefix` (`None`: cannot be judged).
pub(super) fn segments_under(p: &[u8], prefix: &[Box<[u8]>]) -> Option<bool> {
    let segs = path_segments(p)?;
    Some(segs.len() >= prefix.len() && segs.iter().zip(prefix).all(|(a, b)| *a == &**b))
}

/// `s` with its `%XX` escapes decoded, or `None` when it has none.
pub(super) fn percent_decoded(s: &[u8]) -> Option<Vec<u8>> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let (mut i, mut any) = (0, false);
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            any = true;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    any.then_some(out)
}

/// Judges a file path against a `path_prefix` in every reading (as
/// written, each round of percent-decoding, each with `\` read as `/`).
/// For a deny rule (`deny`): whether some reading is under the prefix or
/// cannot be judged; for an allow rule: whether every reading is under it.
pub(super) fn path_under(path: &str, prefix: &[Box<[u8]>], deny: bool) -> bool {
    let mut cur = std::borrow::Cow::Borrowed(path.as_bytes());
    for round in 0..=MAX_DECODE_ROUNDS {
        let slashed = cur.contains(&b'\\').then(|| {
            cur.iter()
                .map(|&b| if b == b'\\' { b'/' } else { b })
                .collect::<Vec<u8>>()
        });
        for reading in std::iter::once(&*cur).chain(slashed.as_deref()) {
            let under = segments_under(reading, prefix);
            if deny && under != Some(false) {
                return true;
            }
            if !deny && under != Some(true) {
                return false;
            }
        }
        match percent_decoded(&cur) {
            None => return !deny,
            // Encoded deeper than we follow: cannot be judged.
            Some(_) if round == MAX_DECODE_ROUNDS => break,
            Some(next) => cur = std::borrow::Cow::Owned(next),
        }
    }
    deny
}

pub(super) fn type_is(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => false,
    }
}
