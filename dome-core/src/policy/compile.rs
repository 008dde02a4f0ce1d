//! Compiles policy files into tables and evaluates calls against them.
//!
//! The compiler validates everything (unknown keys and bad values with file,
//! line and field; regexes; argument conditions) and indexes rules by tool:
//! a call only looks at the rules naming its tool exactly plus those with a
//! tool glob or no tool condition. Regexes, globs and JSON pointers are
//! prepared once. Evaluation takes no lock and does no I/O, and allocates
//! nothing but the normalised readings of a `path_prefix` argument. Each
//! argument condition is judged by its rule's effect, against the caller
//! (see "Argument conditions fail closed" in `lang`); the walk into an
//! argument's arrays and objects is recursive but stops at
//! [`MAX_ARG_DEPTH`], failing closed. The policy version is the content
//! hash of the sources.

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

use super::lang::{ArgCond, ArgOp, Effect, LogArgs, Obligations, PolicyFile, Rule, TestCase};

/// A call as policy sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    pub tenant: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub labels: &'a [String],
    pub user: Option<&'a str>,
    pub tool: &'a str,
    /// What kind of thing `tool` names: `tool` (also when empty), `prompt`,
    /// `resource` or `completion`.
    pub kind: &'a str,
    pub upstream: Option<&'a str>,
    /// What the upstream calls `tool` (`None`: the same).
    pub upstream_tool: Option<&'a str>,
    pub intent: Option<&'a str>,
    pub args: Option<&'a Value>,
}

/// What policy says of a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision<'p> {
    /// Allowed by `rule` (the first matching allow rule in file order,
    /// which also gives the obligations).
    Allow {
        rule: &'p std::sync::Arc<str>,
        obligations: &'p Obligations,
        /// The rule's redactions of the result, compiled.
        redactor: Option<&'p std::sync::Arc<super::redact::Redactor>>,
    },
    /// Denied by `rule` (`None`: no rule allows it), with the reason an
    /// agent may be shown.
    Deny {
        rule: Option<&'p str>,
        reason: &'p str,
    },
}

impl Decision<'_> {
    pub fn effect(&self) -> Effect {
        match self {
            Decision::Allow { .. } => Effect::Allow,
            Decision::Deny { .. } => Effect::Deny,
        }
    }
}

pub const DEFAULT_DENY: &str = "no policy rule allows this call";

/// A request's kind, `tool` when unset.
pub fn kind_of<'a>(r: &Request<'a>) -> &'a str {
    if r.kind.is_empty() { "tool" } else { r.kind }
}
const DENIED: &str = "denied by policy";

/// A glob with `*` wildcards, matched without allocating.
#[derive(Clone, Debug)]
pub struct Glob(String);

impl Glob {
    pub fn matches(&self, s: &str) -> bool {
        glob_match(self.0.as_bytes(), s.as_bytes())
    }
    fn is_literal(&self) -> bool {
        !self.0.contains('*')
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
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

/// A JSON pointer split once into its unescaped tokens.
#[derive(Clone, Debug)]
pub struct Pointer(Vec<String>);

impl Pointer {
    fn parse(p: &str) -> Result<Pointer, String> {
        if p.is_empty() {
            return Ok(Pointer(Vec::new()));
        }
        let Some(rest) = p.strip_prefix('/') else {
            return Err(format!("`{p}` is not a JSON pointer (it starts with `/`)"));
        };
        Ok(Pointer(
            rest.split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ))
    }

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
enum Test {
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
enum Scalar<'v> {
    Str(&'v str),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug)]
struct CArg {
    at: Pointer,
    test: Test,
}

impl CArg {
    /// Whether the condition holds for a rule that denies (`deny`) or
    /// allows: see "Argument conditions fail closed" in `lang`.
    fn holds(&self, args: Option<&Value>, deny: bool) -> bool {
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
    fn holds_strictly(&self, v: &Value) -> bool {
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
    fn could_hold(&self, v: &Value, depth: usize) -> bool {
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
    fn judge(&self, leaf: Scalar<'_>) -> Option<bool> {
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
fn number_of(leaf: Scalar<'_>) -> Option<f64> {
    match leaf {
        Scalar::Num(f) if f.is_finite() => Some(f),
        Scalar::Str(s) => plain_decimal(s),
        _ => None,
    }
}

/// Whether a scalar equals one listed value, for a deny rule (`None`:
/// their types cannot be compared).
fn equals(leaf: Scalar<'_>, x: &Value) -> Option<bool> {
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
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The numbers an upstream may read `f` as: itself, truncated or rounded.
fn readings(f: f64) -> [f64; 3] {
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
fn path_segments(p: &[u8]) -> Option<Vec<&[u8]>> {
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
fn segments_under(p: &[u8], prefix: &[Box<[u8]>]) -> Option<bool> {
    let segs = path_segments(p)?;
    Some(segs.len() >= prefix.len() && segs.iter().zip(prefix).all(|(a, b)| *a == &**b))
}

/// `s` with its `%XX` escapes decoded, or `None` when it has none.
fn percent_decoded(s: &[u8]) -> Option<Vec<u8>> {
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
fn path_under(path: &str, prefix: &[Box<[u8]>], deny: bool) -> bool {
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

fn type_is(t: &str, v: &Value) -> bool {
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

#[derive(Debug)]
struct CIntent {
    required: bool,
    pattern: Option<Regex>,
    /// Indexes into `Policy::categories`.
    categories: Vec<usize>,
}

#[derive(Debug)]
struct CRule {
    /// Shared with the audit records of the calls it decides (not copied).
    id: std::sync::Arc<str>,
    effect: Effect,
    reason: String,
    tenants: Option<Vec<String>>,
    agents: Option<Vec<String>>,
    labels: Vec<String>,
    users: Option<Vec<Glob>>,
    user_present: Option<bool>,
    tools: Option<Vec<Glob>>,
    kinds: Option<Vec<String>>,
    upstreams: Option<Vec<String>>,
    upstream_tools: Option<Vec<Glob>>,
    intent: Option<CIntent>,
    args: Vec<CArg>,
    obligations: Obligations,
    redactor: Option<std::sync::Arc<super::redact::Redactor>>,
}

/// Why `schema` cannot hold a value at `tokens` (a JSON pointer's parts),
/// or `None` when it can or does not say. Only what the schema states
/// counts: `properties` without `additionalProperties` allowing more,
/// `items` of arrays.
fn schema_gap(schema: &Value, tokens: &[String]) -> Option<String> {
    let (t, rest) = tokens.split_first()?;
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        if let Some(sub) = props.get(t.as_str()) {
            return schema_gap(sub, rest);
        }
        return match schema.get("additionalProperties") {
            Some(Value::Bool(false)) => Some(format!("`{t}` is not one of its properties")),
            Some(extra @ Value::Object(_)) => schema_gap(extra, rest),
            // Open to more: a typo is likely but not certain.
            _ if schema.get("type") == Some(&Value::String("object".into())) => Some(format!(
                "`{t}` is not among its properties ({})",
                props
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => None,
        };
    }
    if let Some(items) = schema.get("items") {
        return match t.parse::<usize>() {
            Ok(_) => schema_gap(items, rest),
            Err(_) => Some(format!("`{t}` indexes an array")),
        };
    }
    None
}

/// A compiled policy set.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<CRule>,
    /// Rules naming a tool exactly, by tool.
    by_tool: HashMap<String, Vec<u32>>,
    /// Rules with a tool glob or no tool condition.
    any_tool: Vec<u32>,
    categories: Vec<(String, Vec<Regex>)>,
    pub tests: Vec<TestCase>,
    /// Content hash of the sources.
    pub version: String,
    /// Some rule looks at arguments (else a call's arguments need no parse).
    pub reads_args: bool,
    /// The files' `message`s, joined.
    pub message: String,
}

/// A compile error: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if !self.field.is_empty() {
            write!(f, "field `{}`: ", self.field)?;
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for PolicyError {}

impl CRule {
    fn matches(&self, p: &Policy, r: &Request<'_>) -> bool {
        let one_of = |set: &Option<Vec<String>>, v: Option<&str>| match set {
            None => true,
            Some(s) => v.is_some_and(|v| s.iter().any(|x| x == v)),
        };
        if !one_of(&self.tenants, r.tenant) || !one_of(&self.agents, r.agent) {
            return false;
        }
        if !one_of(&self.upstreams, r.upstream) {
            return false;
        }
        if !self.labels.iter().all(|l| r.labels.contains(l)) {
            return false;
        }
        if let Some(want) = self.user_present
            && want != r.user.is_some()
        {
            return false;
        }
        if let Some(us) = &self.users
            && !r.user.is_some_and(|u| us.iter().any(|g| g.matches(u)))
        {
            return false;
        }
        if let Some(ks) = &self.kinds
            && !ks.iter().any(|k| k == kind_of(r))
        {
            return false;
        }
        if let Some(ts) = &self.tools
            && !ts.iter().any(|g| g.matches(r.tool))
        {
            return false;
        }
        if let Some(ts) = &self.upstream_tools
            && !ts
                .iter()
                .any(|g| g.matches(r.upstream_tool.unwrap_or(r.tool)))
        {
            return false;
        }
        if let Some(i) = &self.intent {
            match r.intent {
                None if i.required || i.pattern.is_some() || !i.categories.is_empty() => {
                    return false;
                }
                None => {}
                Some(text) => {
                    if let Some(re) = &i.pattern
                        && !re.is_match(text)
                    {
                        return false;
                    }
                    if !i.categories.is_empty()
                        && !i
                            .categories
                            .iter()
                            .any(|c| p.categories[*c].1.iter().any(|re| re.is_match(text)))
                    {
                        return false;
                    }
                }
            }
        }
        let deny = self.effect == Effect::Deny;
        self.args.iter().all(|a| a.holds(r.args, deny))
    }
}

impl Policy {
    /// Argument conditions of rules that apply to `tool` (by name or glob)
    /// at paths its published `inputSchema` cannot hold: one line each,
    /// naming the rule, the path and why. Upstreams publish schemas at run
    /// time, so these are warnings, not compile errors.
    pub fn schema_warnings(&self, tool: &str, input_schema: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rules {
            let names_tool = r
                .tools
                .as_ref()
                .is_some_and(|t| t.iter().any(|g| g.matches(tool)));
            let kind_ok = r
                .kinds
                .as_ref()
                .is_none_or(|k| k.iter().any(|k| k == "tool"));
            if !names_tool || !kind_ok {
                continue;
            }
            for a in &r.args {
                if let Some(why) = schema_gap(input_schema, &a.at.0) {
                    out.push(format!(
                        "rule `{}`: argument path /{} of tool `{tool}`: {why}",
                        r.id,
                        a.at.0.join("/")
                    ));
                }
            }
        }
        out
    }

    /// Decides a call. Deny overrides; default deny.
    pub fn decide<'p>(&'p self, r: &Request<'_>) -> Decision<'p> {
        let exact: &[u32] = self.by_tool.get(r.tool).map_or(&[], Vec::as_slice);
        // Both lists are in rule order; walk them merged so "first" means
        // first in the files.
        let (mut i, mut j) = (0, 0);
        let mut allow: Option<&CRule> = None;
        loop {
            let next = match (exact.get(i), self.any_tool.get(j)) {
                (Some(a), Some(b)) if a < b => {
                    i += 1;
                    *a
                }
                (Some(_), Some(b)) => {
                    j += 1;
                    *b
                }
                (Some(a), None) => {
                    i += 1;
                    *a
                }
                (None, Some(b)) => {
                    j += 1;
                    *b
                }
                (None, None) => break,
            };
            let rule = &self.rules[next as usize];
            if !rule.matches(self, r) {
                continue;
            }
            match rule.effect {
                Effect::Deny => {
                    return Decision::Deny {
                        rule: Some(&rule.id),
                        reason: &rule.reason,
                    };
                }
                Effect::Allow => {
                    if allow.is_none() {
                        allow = Some(rule);
                    }
                }
            }
        }
        match allow {
            Some(rule) => Decision::Allow {
                rule: &rule.id,
                obligations: &rule.obligations,
                redactor: rule.redactor.as_ref(),
            },
            None => Decision::Deny {
                rule: None,
                reason: DEFAULT_DENY,
            },
        }
    }

    /// Whether some rule could allow `tool` for this caller, whatever the
    /// arguments and intent (`tools/list` shows only those).
    pub fn could_allow(&self, r: &Request<'_>) -> bool {
        let exact: &[u32] = self.by_tool.get(r.tool).map_or(&[], Vec::as_slice);
        exact.iter().chain(&self.any_tool).any(|&i| {
            let rule = &self.rules[i as usize];
            if rule.effect != Effect::Allow {
                return false;
            }
            // Identity and tool only: the call-time conditions may hold.
            let loose = Request {
                intent: r.intent,
                args: None,
                ..*r
            };
            let one_of = |set: &Option<Vec<String>>, v: Option<&str>| match set {
                None => true,
                Some(s) => v.is_some_and(|v| s.iter().any(|x| x == v)),
            };
            one_of(&rule.tenants, loose.tenant)
                && one_of(&rule.agents, loose.agent)
                && one_of(&rule.upstreams, loose.upstream)
                && rule.labels.iter().all(|l| loose.labels.contains(l))
                && rule
                    .kinds
                    .as_ref()
                    .is_none_or(|ks| ks.iter().any(|k| k == kind_of(&loose)))
                && rule
                    .tools
                    .as_ref()
                    .is_none_or(|ts| ts.iter().any(|g| g.matches(loose.tool)))
                && rule.upstream_tools.as_ref().is_none_or(|ts| {
                    ts.iter()
                        .any(|g| g.matches(loose.upstream_tool.unwrap_or(loose.tool)))
                })
                && rule
                    .users
                    .as_ref()
                    .is_none_or(|us| loose.user.is_some_and(|u| us.iter().any(|g| g.matches(u))))
        })
    }

    /// The exact tool names rules that can apply to tools give, with
    /// each rule's id: a name no upstream lists is worth a warning (a rule
    /// written for a tool a clash renamed would silently not apply).
    pub fn named_tools(&self) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = self
            .by_tool
            .iter()
            .flat_map(|(tool, rules)| {
                rules.iter().filter_map(move |&i| {
                    let rule = &self.rules[i as usize];
                    let for_tools = rule
                        .kinds
                        .as_ref()
                        .is_none_or(|ks| ks.iter().any(|k| k == "tool"));
                    for_tools.then_some((&*rule.id, tool.as_str()))
                })
            })
            .collect();
        out.sort_unstable();
        out
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// FNV-1a over the sources, in order, with their names.
pub fn version(sources: &[(String, String)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in sources {
        for b in name.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Parses and compiles policy sources (file name, text), in order.
pub fn compile(sources: &[(String, String)]) -> Result<Policy, PolicyError> {
    let mut files = Vec::new();
    for (name, text) in sources {
        let at = |offset: usize, field: String, reason: String| {
            let (line, _) = crate::diag::line_col(text, offset);
            PolicyError {
                file: name.clone(),
                line,
                field,
                reason,
            }
        };
        // Parsed once, as in `config::parse`.
        let doc = toml_edit::ImDocument::parse(text.clone()).map_err(|e| {
            at(
                e.span().map_or(0, |s| s.start),
                String::new(),
                e.message().trim().to_string(),
            )
        })?;
        let fields = crate::diag::field_spans(&doc);
        let file: PolicyFile = toml_edit::de::from_document(doc).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let field = crate::diag::innermost(&fields, &span).unwrap_or_default();
            at(span.start, field, e.message().trim().to_string())
        })?;
        files.push((file, at_fn(name, text, &fields)));
    }
    // Categories are shared across files.
    let mut categories: Vec<(String, Vec<Regex>)> = Vec::new();
    for (file, err) in &files {
        for (name, patterns) in &file.intent_categories {
            if categories.iter().any(|(n, _)| n == name) {
                return Err(err(
                    &format!("intent_categories.{name}"),
                    "defined twice".into(),
                ));
            }
            let mut res = Vec::new();
            for p in patterns {
                res.push(Regex::new(p).map_err(|e| {
                    err(
                        &format!("intent_categories.{name}"),
                        format!("bad regex: {e}"),
                    )
                })?);
            }
            categories.push((name.clone(), res));
        }
    }
    let mut policy = Policy {
        version: version(sources),
        ..Default::default()
    };
    let mut ids = std::collections::HashSet::new();
    for (file, err) in &files {
        for (i, rule) in file.rules.iter().enumerate() {
            let field = |f: &str| format!("rule[{i}]{f}");
            if rule.id.is_empty() || !ids.insert(rule.id.clone()) {
                return Err(err(
                    &field(".id"),
                    "must be set and unique across the files".into(),
                ));
            }
            let c = compile_rule(rule, &categories).map_err(|(f, why)| err(&field(&f), why))?;
            policy.reads_args |= !c.args.is_empty();
            let n = policy.rules.len() as u32;
            match &c.tools {
                Some(ts) if ts.iter().all(Glob::is_literal) => {
                    for t in ts {
                        policy.by_tool.entry(t.0.clone()).or_default().push(n);
                    }
                }
                _ => policy.any_tool.push(n),
            }
            policy.rules.push(c);
        }
        policy.tests.extend(file.tests.iter().cloned());
        if let Some(m) = &file.message {
            if !policy.message.is_empty() {
                policy.message.push_str("; ");
            }
            policy.message.push_str(m);
        }
    }
    policy.categories = categories;
    Ok(policy)
}

type ErrAt = Box<dyn Fn(&str, String) -> PolicyError>;

fn at_fn(name: &str, text: &str, fields: &[(String, std::ops::Range<usize>)]) -> ErrAt {
    let (name, text, fields) = (name.to_string(), text.to_string(), fields.to_vec());
    Box::new(move |field: &str, reason: String| {
        let offset = crate::diag::locate(&fields, field);
        let (line, _) = crate::diag::line_col(&text, offset);
        PolicyError {
            file: name.clone(),
            line,
            field: field.to_string(),
            reason,
        }
    })
}

fn compile_rule(
    rule: &Rule,
    categories: &[(String, Vec<Regex>)],
) -> Result<CRule, (String, String)> {
    let w = &rule.when;
    let names = |v: &Option<super::lang::OneOrMany>| {
        v.as_ref().map(|o| {
            o.items()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    let intent = match &w.intent {
        None => None,
        Some(i) => Some(CIntent {
            required: i.required,
            pattern: match &i.pattern {
                Some(p) => Some(
                    Regex::new(p)
                        .map_err(|e| (".when.intent.pattern".into(), format!("bad regex: {e}")))?,
                ),
                None => None,
            },
            categories: i
                .categories
                .iter()
                .map(|c| {
                    categories.iter().position(|(n, _)| n == c).ok_or_else(|| {
                        (
                            ".when.intent.categories".to_string(),
                            format!("no intent category `{c}`"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        }),
    };
    let mut args = Vec::new();
    for (k, a) in w.args.iter().enumerate() {
        args.push(compile_arg(a).map_err(|why| (format!(".when.args[{k}]"), why))?);
    }
    for r in &rule.obligations.redact {
        let known = [
            "email",
            "card",
            "national_id",
            "api_key",
            "jwt",
            "private_key",
        ];
        match r.strip_prefix("regex:") {
            Some(p) => {
                Regex::new(p)
                    .map_err(|e| (".obligations.redact".to_string(), format!("bad regex: {e}")))?;
            }
            None if known.contains(&r.as_str()) => {}
            None => {
                return Err((
                    ".obligations.redact".into(),
                    format!(
                        "unknown detector `{r}`; known: {}, or regex:<pattern>",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(b) = &rule.obligations.budget
        && !(b.calls_per_s > 0.0 && b.burst >= 1)
    {
        return Err((
            ".obligations.budget".into(),
            "calls_per_s must be above 0 and burst at least 1".into(),
        ));
    }
    Ok(CRule {
        id: rule.id.as_str().into(),
        effect: rule.effect,
        reason: match (rule.effect, &rule.reason) {
            (Effect::Deny, Some(r)) => r.clone(),
            _ => DENIED.to_string(),
        },
        tenants: names(&w.tenant),
        agents: names(&w.agent),
        labels: w.labels.clone(),
        users: names(&w.user).map(|v| v.into_iter().map(Glob).collect()),
        user_present: w.user_present,
        tools: names(&w.tool).map(|v| v.into_iter().map(Glob).collect()),
        kinds: match names(&w.kind) {
            Some(ks) => {
                if let Some(bad) = ks
                    .iter()
                    .find(|k| !["tool", "prompt", "resource", "completion"].contains(&k.as_str()))
                {
                    return Err((
                        ".when.kind".into(),
                        format!("`{bad}` is not a kind: tool, prompt, resource or completion"),
                    ));
                }
                Some(ks)
            }
            None => None,
        },
        upstreams: names(&w.upstream),
        upstream_tools: names(&w.upstream_tool).map(|v| v.into_iter().map(Glob).collect()),
        intent,
        args,
        redactor: if rule.obligations.redact.is_empty() {
            None
        } else {
            Some(std::sync::Arc::new(
                super::redact::Redactor::new(&rule.obligations.redact)
                    .map_err(|e| (".obligations.redact".to_string(), e))?,
            ))
        },
        obligations: Obligations {
            require_intent: rule.obligations.require_intent,
            redact: rule.obligations.redact.clone(),
            log_args: rule.obligations.log_args,
            budget: rule.obligations.budget,
        },
    })
}

fn compile_arg(a: &ArgCond) -> Result<CArg, String> {
    let at = Pointer::parse(&a.path)?;
    let need_value = || {
        a.value
            .clone()
            .ok_or_else(|| format!("`{:?}` needs `value`", a.op))
    };
    let test = match a.op {
        ArgOp::Eq => Test::OneOf(vec![need_value()?]),
        ArgOp::In => {
            if a.values.is_empty() {
                return Err("`in` needs a non-empty `values`".into());
            }
            Test::OneOf(a.values.clone())
        }
        ArgOp::Prefix => match need_value()? {
            Value::String(s) => Test::Prefix(s),
            _ => return Err("`prefix` needs a string `value`".into()),
        },
        ArgOp::PathPrefix => match need_value()? {
            Value::String(s) => Test::PathPrefix(
                path_segments(s.as_bytes())
                    .ok_or("`path_prefix` needs an absolute path `value` (starting with `/`)")?
                    .into_iter()
                    .map(Box::from)
                    .collect(),
            ),
            _ => return Err("`path_prefix` needs a string `value`".into()),
        },
        ArgOp::Regex => match need_value()? {
            Value::String(s) => Test::Regex(Regex::new(&s).map_err(|e| format!("bad regex: {e}"))?),
            _ => return Err("`regex` needs a string `value`".into()),
        },
        ArgOp::Range => {
            let (lo, hi) = (
                a.min.unwrap_or(f64::NEG_INFINITY),
                a.max.unwrap_or(f64::INFINITY),
            );
            if a.min.is_none() && a.max.is_none() || lo > hi {
                return Err("`range` needs `min` and/or `max`, min ≤ max".into());
            }
            Test::Range(lo, hi)
        }
        ArgOp::MaxLen => match a.max {
            Some(m) if m >= 0.0 => Test::MaxLen(m as usize),
            _ => return Err("`max_len` needs `max`".into()),
        },
        ArgOp::Present => Test::Present,
        ArgOp::Absent => Test::Absent,
        ArgOp::Type => {
            match a.ty.as_deref() {
                Some(
                    t @ ("string" | "number" | "integer" | "boolean" | "array" | "object" | "null"),
                ) => Test::Type(t.to_string()),
                _ => return Err(
                    "`type` needs `type` = string, number, integer, boolean, array, object or null"
                        .into(),
                ),
            }
        }
    };
    Ok(CArg { at, test })
}

/// The effective log setting of an allow (for the audit record).
pub fn log_args(d: &Decision<'_>) -> LogArgs {
    match d {
        Decision::Allow { obligations, .. } => obligations.log_args,
        Decision::Deny { .. } => LogArgs::None,
    }
}
