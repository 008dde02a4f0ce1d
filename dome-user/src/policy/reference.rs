//! A plain interpreter of the policy language, straight from the source
//! rules: no index, no precompiled matchers. It exists to check the
//! compiled tables (a property test runs both on random policies and
//! requests and wants the same decisions).

use regex::Regex;
use serde_json::Value;

use super::compile::Request;
use super::lang::{ArgOp, Effect, PolicyFile, Rule};

fn glob(p: &str, s: &str) -> bool {
    // Translate to an anchored regex: the obvious reading of `*`.
    let re = format!(
        "^{}$",
        p.split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*")
    );
    Regex::new(&re).is_ok_and(|r| r.is_match(s))
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
                    && !Regex::new(p).is_ok_and(|re| re.is_match(t))
                {
                    return false;
                }
                if !i.categories.is_empty()
                    && !i.categories.iter().any(|c| {
                        file.intent_categories.get(c).is_some_and(|ps| {
                            ps.iter()
                                .any(|p| Regex::new(p).is_ok_and(|re| re.is_match(t)))
                        })
                    })
                {
                    return false;
                }
            }
        }
    }
    w.args.iter().all(|a| {
        let v = r.args.and_then(|x| pointer(x, &a.path));
        match (a.op, v) {
            (ArgOp::Absent, v) => v.is_none(),
            (_, None) => false,
            (ArgOp::Present, _) => true,
            (ArgOp::Eq, Some(v)) => Some(v) == a.value.as_ref(),
            (ArgOp::In, Some(v)) => a.values.contains(v),
            (ArgOp::Prefix, Some(Value::String(s))) => a
                .value
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|p| s.starts_with(p)),
            (ArgOp::Regex, Some(Value::String(s))) => a
                .value
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|p| Regex::new(p).is_ok_and(|re| re.is_match(s))),
            (ArgOp::Range, Some(Value::Number(n))) => n
                .as_f64()
                .is_some_and(|f| a.min.is_none_or(|m| m <= f) && a.max.is_none_or(|m| f <= m)),
            (ArgOp::MaxLen, Some(Value::String(s))) => {
                a.max.is_some_and(|m| s.chars().count() as f64 <= m)
            }
            (ArgOp::MaxLen, Some(Value::Array(x))) => a.max.is_some_and(|m| x.len() as f64 <= m),
            (ArgOp::Type, Some(v)) => match a.ty.as_deref() {
                Some("string") => v.is_string(),
                Some("number") => v.is_number(),
                Some("integer") => v.is_i64() || v.is_u64(),
                Some("boolean") => v.is_boolean(),
                Some("array") => v.is_array(),
                Some("object") => v.is_object(),
                Some("null") => v.is_null(),
                _ => false,
            },
            _ => false,
        }
    })
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
