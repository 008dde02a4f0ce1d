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
//!
//! This file holds the tables and their evaluation (`Policy::decide`);
//! `source` builds them from the files, `args` holds the argument tests.

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

use super::lang::{ArgCond, ArgOp, Effect, LogArgs, Obligations, PolicyFile, Rule, TestCase};

mod args;
mod source;

pub use args::*;
pub use source::*;

/// A call as policy sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// The caller's tenant (`None` for an unauthenticated caller, which a
    /// rule naming tenants never matches).
    pub tenant: Option<&'a str>,
    /// The calling agent's id.
    pub agent: Option<&'a str>,
    /// The agent's labels: a rule's `labels` must all be among them.
    pub labels: &'a [String],
    /// The end user the agent acts for, when known.
    pub user: Option<&'a str>,
    /// What is called, as the caller names it: the tool or prompt name
    /// (with any prefix Dome gave it), or the resource URI.
    pub tool: &'a str,
    /// What kind of thing `tool` names: `tool` (also when empty), `prompt`,
    /// `resource` or `completion`.
    pub kind: &'a str,
    /// The upstream serving it, by its configured name.
    pub upstream: Option<&'a str>,
    /// What the upstream calls `tool` (`None`: the same).
    pub upstream_tool: Option<&'a str>,
    /// The intent the caller stated, if any.
    pub intent: Option<&'a str>,
    /// The call's arguments; `None` when there are none, and when no rule
    /// reads arguments (`Policy::reads_args`), so they were not parsed.
    pub args: Option<&'a Value>,
}

/// What policy says of a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision<'p> {
    /// Allowed by `rule` (the first matching allow rule in file order,
    /// which also gives the obligations).
    Allow {
        /// The allowing rule's id (shared, so a record takes it uncopied).
        rule: &'p std::sync::Arc<str>,
        /// What the allow comes with: intent, redaction, logging, budget.
        obligations: &'p Obligations,
        /// The rule's redactions of the result, compiled.
        redactor: Option<&'p std::sync::Arc<super::redact::Redactor>>,
    },
    /// Denied by `rule` (`None`: no rule allows it), with the reason an
    /// agent may be shown.
    Deny {
        /// The denying rule's id; `None` when no rule allows the call.
        rule: Option<&'p str>,
        /// The rule's `reason` (or [`DEFAULT_DENY`]).
        reason: &'p str,
    },
}

impl Decision<'_> {
    /// Allow or deny, without the rule: what a test case expects, and what
    /// a shadow policy's decision is compared on.
    pub fn effect(&self) -> Effect {
        match self {
            Decision::Allow { .. } => Effect::Allow,
            Decision::Deny { .. } => Effect::Deny,
        }
    }
}

/// The reason a call no rule allows is denied with: it names no rule, so
/// the policy's internals stay with the operator.
pub const DEFAULT_DENY: &str = "no policy rule allows this call";

/// A request's kind, `tool` when unset.
pub fn kind_of<'a>(r: &Request<'a>) -> &'a str {
    if r.kind.is_empty() { "tool" } else { r.kind }
}

const DENIED: &str = "denied by policy";

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
    /// The files' `[[test]]` cases, in file order (`dome policy test`).
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
    /// The source's name (its file name).
    pub file: String,
    /// The line (from 1) of the field, or of the syntax error.
    pub line: usize,
    /// The field's path (`rule[2].when.tool`, `intent_categories.billing`);
    /// empty when the error is in the TOML itself.
    pub field: String,
    /// What is wrong.
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

    /// How many rules the files hold (none: every call is denied, which
    /// the runtime warns about).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// The effective log setting of an allow (for the audit record).
pub fn log_args(d: &Decision<'_>) -> LogArgs {
    match d {
        Decision::Allow { obligations, .. } => obligations.log_args,
        Decision::Deny { .. } => LogArgs::None,
    }
}
