//! From policy files to tables: every file parsed and validated (file,
//! line and field in each error), rules compiled and indexed by tool, and
//! the version hashed from the sources.

use super::*;

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

pub(super) type ErrAt = Box<dyn Fn(&str, String) -> PolicyError>;

pub(super) fn at_fn(name: &str, text: &str, fields: &[(String, std::ops::Range<usize>)]) -> ErrAt {
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

pub(super) fn compile_rule(
    rule: &Rule,
    categories: &[(String, Vec<Regex>)],
) -> Result<CRule, (String, String)> {
    let w = &rule.when;
    let names = |v: &Option<crate::policy::lang::OneOrMany>| {
        v.as_ref().map(|o| {
            o.items()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    let intent = w
        .intent
        .as_ref()
        .map(|i| compile_intent(i, categories))
        .transpose()?;
    let mut args = Vec::new();
    for (k, a) in w.args.iter().enumerate() {
        args.push(
            compile_arg(a).map_err(|why| (format!(".when.args[{k}]"), crate::error_chain(&why)))?,
        );
    }
    check_obligations(&rule.obligations)?;
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
                crate::policy::redact::Redactor::new(&rule.obligations.redact)
                    .map_err(|e| (".obligations.redact".to_string(), crate::error_chain(&e)))?,
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

/// A rule's intent condition, its categories named by index.
fn compile_intent(
    i: &crate::policy::lang::IntentCond,
    categories: &[(String, Vec<Regex>)],
) -> Result<CIntent, (String, String)> {
    Ok(CIntent {
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
    })
}

/// A rule's obligations are ones Dome can carry out: known detectors or
/// regexes that compile, and a budget that admits something.
fn check_obligations(o: &crate::policy::lang::Obligations) -> Result<(), (String, String)> {
    for r in &o.redact {
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
    if let Some(b) = &o.budget
        && !(b.calls_per_s > 0.0 && b.burst >= 1)
    {
        return Err((
            ".obligations.budget".into(),
            "calls_per_s must be above 0 and burst at least 1".into(),
        ));
    }
    Ok(())
}

pub(super) fn compile_arg(a: &ArgCond) -> Result<CArg, ArgError> {
    let at = Pointer::parse(&a.path)?;
    let need_value = || a.value.clone().ok_or(ArgError::NeedsValue(a.op));
    let test = match a.op {
        ArgOp::Eq => Test::OneOf(vec![need_value()?]),
        ArgOp::In => {
            if a.values.is_empty() {
                return Err(ArgError::EmptyIn);
            }
            Test::OneOf(a.values.clone())
        }
        ArgOp::Prefix => match need_value()? {
            Value::String(s) => Test::Prefix(s),
            _ => return Err(ArgError::PrefixNotString),
        },
        ArgOp::PathPrefix => match need_value()? {
            Value::String(s) => Test::PathPrefix(
                path_segments(s.as_bytes())
                    .ok_or(ArgError::PathPrefixNotAbsolute)?
                    .into_iter()
                    .map(Box::from)
                    .collect(),
            ),
            _ => return Err(ArgError::PathPrefixNotString),
        },
        ArgOp::Regex => match need_value()? {
            Value::String(s) => Test::Regex(Regex::new(&s).map_err(ArgError::BadRegex)?),
            _ => return Err(ArgError::RegexNotString),
        },
        ArgOp::Range => {
            let (lo, hi) = (
                a.min.unwrap_or(f64::NEG_INFINITY),
                a.max.unwrap_or(f64::INFINITY),
            );
            if a.min.is_none() && a.max.is_none() || lo > hi {
                return Err(ArgError::BadRange);
            }
            Test::Range(lo, hi)
        }
        ArgOp::MaxLen => match a.max {
            Some(m) if m >= 0.0 => Test::MaxLen(m as usize),
            _ => return Err(ArgError::MaxLenWithoutMax),
        },
        ArgOp::Present => Test::Present,
        ArgOp::Absent => Test::Absent,
        ArgOp::Type => match a.ty.as_deref() {
            Some(
                t @ ("string" | "number" | "integer" | "boolean" | "array" | "object" | "null"),
            ) => Test::Type(t.to_string()),
            _ => return Err(ArgError::BadType),
        },
    };
    Ok(CArg { at, test })
}
