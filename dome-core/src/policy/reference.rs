//! A plain interpreter of the policy language, straight from the source
//! rules: no index, no precompiled matchers. It exists to check the
//! compiled tables (a property test runs both on random policies and
//! requests and wants the same decisions). It follows the same
//! fail-closed semantics for arguments (see `lang`), written the long way:
//! it collects every scalar under a path, every reading of a number or a
//! file path, and then judges them.

use std::{cell::RefCell, collections::HashMap};

use regex::Regex;
use serde_json::Value;

use super::compile::{MAX_ARG_DEPTH, MAX_DECODE_ROUNDS, Request};
use super::lang::{ArgCond, ArgOp, Effect, PolicyFile, Rule};

/// Whether `pattern` (compiled as `Regex::new` compiles it, so with the
/// compiler's size limit) matches `s`. Each pattern is compiled once per
/// thread: the reference runs on many policies and requests (the property
/// test, the fuzz target), and building a regex (a DFA, for `.*` over all
/// of Unicode in a glob) costs far more than matching one; compiling on
/// every match held the fuzz target to ~50 executions a second.
fn matches(pattern: &str, s: &str) -> bool {
    thread_local! {
        static COMPILED: RefCell<HashMap<String, Option<Regex>>> = RefCell::default();
    }
    let re = COMPILED.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(re) = c.get(pattern) {
            return re.clone();
        }
        // Policy text from the fuzzer can hold any number of patterns.
        if c.len() >= 4096 {
            c.clear();
        }
        let re = Regex::new(pattern).ok();
        c.insert(pattern.to_string(), re.clone());
        re
    });
    re.is_some_and(|re| re.is_match(s))
}

fn glob(p: &str, s: &str) -> bool {
    // Translate to an anchored regex: the obvious reading of `*`.
    let re = format!(
        "^{}$",
        p.split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*")
    );
    matches(&re, s)
}

fn pointer<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    v.pointer(path)
}

fn rule_matches(file: &PolicyFile, rule: &Rule, r: &Request<'_>) -> bool {
    let w = &rule.when;
    let any = |set: &Option<super::lang::OneOrMany>, v: Option<&str>, globbing: bool| match set {
        None => true,
        Some(s) => v.is_some_and(|v| {
            s.items()
                .iter()
                .any(|x| if globbing { glob(x, v) } else { *x == v })
        }),
    };
    if !any(&w.tenant, r.tenant, false)
        || !any(&w.agent, r.agent, false)
        || !any(&w.upstream, r.upstream, false)
        || !any(&w.tool, Some(r.tool), true)
        || !any(
            &w.upstream_tool,
            Some(r.upstream_tool.unwrap_or(r.tool)),
            true,
        )
        || !any(&w.user, r.user, true)
    {
        return false;
    }
    if let Some(ks) = &w.kind {
        let kind = if r.kind.is_empty() { "tool" } else { r.kind };
        if !ks.items().contains(&kind) {
            return false;
        }
    }
    if !w.labels.iter().all(|l| r.labels.contains(l)) {
        return false;
    }
    if w.user_present.is_some_and(|want| want != r.user.is_some()) {
        return false;
    }
    if let Some(i) = &w.intent {
        match r.intent {
            None => {
                if i.required || i.pattern.is_some() || !i.categories.is_empty() {
                    return false;
                }
            }
            Some(t) => {
                if let Some(p) = &i.pattern
                    && !matches(p, t)
                {
                    return false;
                }
                if !i.categories.is_empty()
                    && !i.categories.iter().any(|c| {
                        file.intent_categories
                            .get(c)
                            .is_some_and(|ps| ps.iter().any(|p| matches(p, t)))
                    })
                {
                    return false;
                }
            }
        }
    }
    let deny = rule.effect == Effect::Deny;
    w.args.iter().all(|a| arg_holds(a, r.args, deny))
}

/// A scalar found under an argument path.
#[derive(Debug)]
enum Leaf {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// Every scalar in `v`, object keys included, into `out`; false when `v`
/// nests deeper than the limit below the argument path.
fn leaves(v: &Value, depth: usize, out: &mut Vec<Leaf>) -> bool {
    match v {
        Value::Array(items) => {
            depth < MAX_ARG_DEPTH && items.iter().all(|x| leaves(x, depth + 1, out))
        }
        Value::Object(m) => {
            if depth >= MAX_ARG_DEPTH {
                return false;
            }
            for (k, x) in m {
                out.push(Leaf::Str(k.clone()));
                if !leaves(x, depth + 1, out) {
                    return false;
                }
            }
            true
        }
        Value::String(s) => {
            out.push(Leaf::Str(s.clone()));
            true
        }
        Value::Number(n) => {
            out.push(Leaf::Num(n.as_f64().unwrap_or(f64::NAN)));
            true
        }
        Value::Bool(b) => {
            out.push(Leaf::Bool(*b));
            true
        }
        Value::Null => {
            out.push(Leaf::Null);
            true
        }
    }
}

/// A string written plainly in decimal, as a number.
fn plain_number(s: &str) -> Option<f64> {
    static PLAIN: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$").expect("a valid regex")
    });
    PLAIN
        .is_match(s)
        .then(|| s.parse::<f64>().ok())
        .flatten()
        .filter(|f| f.is_finite())
}

fn leaf_number(l: &Leaf) -> Option<f64> {
    match l {
        Leaf::Num(f) if f.is_finite() => Some(*f),
        Leaf::Str(s) => plain_number(s),
        _ => None,
    }
}

/// The number itself and, when it has a fraction, the integers either side.
fn number_readings(f: f64) -> Vec<f64> {
    if f.fract() == 0.0 {
        vec![f]
    } else {
        vec![f, f.floor(), f.floor() + 1.0]
    }
}

fn num_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y || a == b,
        _ => a == b,
    }
}

/// A file path's readings: as written, after each round of
/// percent-decoding, each also with `\` as `/`; `None` stands for "still
/// encoded after the last round".
fn path_readings(p: &str) -> Vec<Option<Vec<u8>>> {
    let mut rounds = vec![p.as_bytes().to_vec()];
    let mut encoded = false;
    loop {
        let last = rounds.last().expect("one at least");
        let mut next = Vec::new();
        let mut k = 0;
        while k < last.len() {
            let hex = last
                .get(k + 1..k + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (last[k], hex) {
                (b'%', Some(b)) => {
                    next.push(b);
                    k += 3;
                }
                (c, _) => {
                    next.push(c);
                    k += 1;
                }
            }
        }
        if next == *last {
            break;
        }
        if rounds.len() > MAX_DECODE_ROUNDS {
            encoded = true;
            break;
        }
        rounds.push(next);
    }
    let mut out: Vec<Option<Vec<u8>>> = Vec::new();
    for r in rounds {
        let slashed: Vec<u8> = r
            .iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect();
        out.push(Some(r));
        out.push(Some(slashed));
    }
    if encoded {
        out.push(None);
    }
    out
}

/// A path normalised lexically, `None` unless absolute and NUL-free.
fn normalise(p: &[u8]) -> Option<Vec<Vec<u8>>> {
    if !p.starts_with(b"/") || p.contains(&0) {
        return None;
    }
    let mut segs: Vec<Vec<u8>> = Vec::new();
    for s in p.split(|&b| b == b'/') {
        if s == b".." {
            segs.pop();
        } else if !s.is_empty() && s != b"." {
            segs.push(s.to_vec());
        }
    }
    Some(segs)
}

/// Whether `p` is under the absolute `prefix` in one reading.
fn path_judge(reading: &Option<Vec<u8>>, prefix: &str) -> Option<bool> {
    let path = normalise(reading.as_ref()?)?;
    let prefix = normalise(prefix.as_bytes())?;
    Some(path.starts_with(&prefix))
}

/// Whether one scalar could satisfy the condition, for a deny rule.
fn leaf_judge(a: &ArgCond, l: &Leaf) -> Option<bool> {
    let text = a.value.as_ref().and_then(Value::as_str);
    match (a.op, l) {
        (ArgOp::Prefix, Leaf::Str(s)) => text.map(|p| s.starts_with(p)),
        (ArgOp::Regex, Leaf::Str(s)) => text.map(|p| matches(p, s)),
        (ArgOp::PathPrefix, Leaf::Str(s)) => {
            let prefix = text?;
            let judged: Vec<Option<bool>> = path_readings(s)
                .iter()
                .map(|r| path_judge(r, prefix))
                .collect();
            Some(judged.iter().any(|j| *j != Some(false)))
        }
        (ArgOp::Range, l) => leaf_number(l).map(|f| {
            number_readings(f)
                .iter()
                .any(|r| a.min.is_none_or(|m| m <= *r) && a.max.is_none_or(|m| *r <= m))
        }),
        (ArgOp::Eq | ArgOp::In, l) => {
            let listed: Vec<&Value> = if a.op == ArgOp::Eq {
                a.value.iter().collect()
            } else {
                a.values.iter().collect()
            };
            let each: Vec<Option<bool>> = listed
                .iter()
                .map(|x| match (l, x) {
                    (_, Value::Array(_) | Value::Object(_)) => Some(false),
                    (Leaf::Str(s), Value::String(x)) => Some(s == x),
                    (Leaf::Num(_) | Leaf::Str(_), Value::Number(x)) => {
                        let x = x.as_f64()?;
                        leaf_number(l).map(|f| number_readings(f).contains(&x))
                    }
                    (Leaf::Bool(b), Value::Bool(x)) => Some(b == x),
                    (Leaf::Null, Value::Null) => Some(true),
                    _ => None,
                })
                .collect();
            if each.contains(&Some(true)) {
                Some(true)
            } else if each.contains(&None) {
                None
            } else {
                Some(false)
            }
        }
        _ => None,
    }
}

/// One argument condition, for a rule that denies (`deny`) or allows.
fn arg_holds(a: &ArgCond, args: Option<&Value>, deny: bool) -> bool {
    let Some(v) = args.and_then(|x| pointer(x, &a.path)) else {
        return a.op == ArgOp::Absent;
    };
    let text = a.value.as_ref().and_then(Value::as_str);
    match a.op {
        ArgOp::Absent => false,
        ArgOp::Present => true,
        ArgOp::Type => match a.ty.as_deref() {
            Some("string") => v.is_string(),
            Some("number") => v.is_number(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("boolean") => v.is_boolean(),
            Some("array") => v.is_array(),
            Some("object") => v.is_object(),
            Some("null") => v.is_null(),
            _ => false,
        },
        ArgOp::MaxLen => match v {
            Value::String(s) => a.max.is_some_and(|m| s.chars().count() as f64 <= m),
            Value::Array(x) => a.max.is_some_and(|m| x.len() as f64 <= m),
            _ => deny,
        },
        _ if deny => {
            let listed = match a.op {
                ArgOp::Eq => a.value.iter().collect::<Vec<_>>(),
                ArgOp::In => a.values.iter().collect(),
                _ => Vec::new(),
            };
            if listed.iter().any(|x| num_eq(v, x)) {
                return true;
            }
            let mut found = Vec::new();
            !leaves(v, 0, &mut found) || found.iter().any(|l| leaf_judge(a, l) != Some(false))
        }
        ArgOp::Eq => a.value.as_ref().is_some_and(|x| num_eq(v, x)),
        ArgOp::In => a.values.iter().any(|x| num_eq(v, x)),
        ArgOp::Prefix => v.as_str().zip(text).is_some_and(|(s, p)| s.starts_with(p)),
        ArgOp::Regex => v.as_str().zip(text).is_some_and(|(s, p)| matches(p, s)),
        ArgOp::PathPrefix => v.as_str().zip(text).is_some_and(|(s, p)| {
            path_readings(s)
                .iter()
                .all(|r| path_judge(r, p) == Some(true))
        }),
        ArgOp::Range => {
            v.is_number()
                && v.as_f64().is_some_and(|f| {
                    number_readings(f)
                        .iter()
                        .all(|r| a.min.is_none_or(|m| m <= *r) && a.max.is_none_or(|m| *r <= m))
                })
        }
    }
}

/// What the compiled `policy` decides for `r`, and what the rules read
/// straight decide: (effect, deciding rule id) each, to be equal.
pub fn both(
    file: &PolicyFile,
    policy: &super::compile::Policy,
    r: &Request<'_>,
) -> [(Effect, Option<String>); 2] {
    let got = policy.decide(r);
    let rule = match got {
        super::compile::Decision::Allow { rule, .. } => Some(rule.to_string()),
        super::compile::Decision::Deny { rule, .. } => rule.map(str::to_string),
    };
    [(got.effect(), rule), decide(file, r)]
}

/// The decision's effect and deciding rule id (`None`: default deny).
pub fn decide(file: &PolicyFile, r: &Request<'_>) -> (Effect, Option<String>) {
    let mut allow = None;
    for rule in &file.rules {
        if !rule_matches(file, rule, r) {
            continue;
        }
        match rule.effect {
            Effect::Deny => return (Effect::Deny, Some(rule.id.clone())),
            Effect::Allow => {
                if allow.is_none() {
                    allow = Some(rule.id.clone());
                }
            }
        }
    }
    match allow {
        Some(id) => (Effect::Allow, Some(id)),
        None => (Effect::Deny, None),
    }
}
