//! The policy language as written: TOML files of rules (and test cases).
//!
//! ```toml
//! [[rule]]
//! id = "support-reads-records"
//! effect = "allow"                      # or "deny" (with a reason)
//! [rule.when]
//! tenant = "demo"                       # one name or a list
//! agent = ["demo-agent"]
//! labels = ["support"]                  # the agent has every one of these
//! user = "*@acme.test"                  # glob on the end user; `user_present = true`
//! tool = "records"                      # exact name or glob (`crm.*`)
//! upstream = "demo"
//! upstream_tool = "records"             # the upstream's own name (before any prefix)
//! intent = { required = true, pattern = "(?i)refund", categories = ["billing"] }
//! args = [{ path = "/count", op = "range", min = 1, max = 10 },
//!         { path = "/file", op = "path_prefix", value = "/srv/reports" }]
//! [rule.obligations]
//! require_intent = true
//! redact = ["email", "card"]
//! log_args = "digest"                   # full | digest | none
//! budget = { calls_per_s = 1.0, burst = 5 }
//!
//! [intent_categories]
//! billing = ["(?i)refund", "(?i)invoice"]
//! ```
//!
//! A rule matches when every condition it states holds; a condition it
//! does not state matches anything. Deny overrides: a call is allowed only
//! when some allow rule matches and no deny rule does; with no matching
//! rule it is denied (default deny).
//!
//! # Argument conditions fail closed
//!
//! An agent chooses the JSON type of every argument, and upstreams are
//! lenient readers: an SDK turns `"5000"` or `" 5_000 "` into 5000, takes
//! the first item of `["rm -rf /"]`, and opens `//etc/./shadow` as
//! `/etc/shadow`. A condition that only looked at the value as typed would
//! let all of these past a deny rule. So a condition is judged by the
//! effect of its rule, always against the caller:
//!
//! - In a **deny** rule the condition holds when the value *could* violate
//!   it: when any string, number, boolean or null anywhere under the path
//!   (in arrays and objects, object keys included, up to 32 levels below
//!   the path) satisfies it, under any reading of it, or when any of them
//!   cannot be judged by it (a string under `range`, a number under
//!   `regex`, nesting deeper than 32 levels).
//! - In an **allow** rule the condition holds only when the value itself
//!   is of the type the condition judges and every reading of it
//!   satisfies it: `range` takes a JSON number, `prefix`, `regex` and
//!   `path_prefix` a string, `eq` and `in` an equal value. An array or
//!   object where a string or number is expected does not match.
//!
//! The readings of a number are itself and the integers on either side
//! (an upstream may truncate or round 1000.5 to 1001). A string is read as
//! a number only when written plainly in decimal (`-12.50`: an optional
//! `-`, no leading zero, no exponent, sign `+`, spaces, `_`, hex or
//! non-ASCII digits), and then only by deny rules: `"5000"` is 5000 to a
//! deny rule, while `"5e3"`, `" 5_000 "` and `"0x1388"` cannot be judged,
//! so a deny rule with a `range` on them matches. An allow rule's `range`
//! never accepts a string. Coercing every form lenient SDKs accept would
//! mean tracking each SDK's quirks (Python's `int()` takes `" 5_000 "` and
//! Arabic-Indic digits, JavaScript's `parseInt` reads `"5e3"` as 5); judging
//! only the plain form and refusing the rest cannot be outguessed. An `eq`
//! or `in` in a deny rule compares strings with strings, numbers (and plain
//! decimal strings) with numbers by their readings, booleans with booleans
//! and null with null; a part of another type cannot be judged.
//!
//! Consequently a deny rule with a string condition also denies a number,
//! boolean or null at its path; narrow it with a `type` condition (which is
//! judged on the value exactly as it is) when that is not wanted. `present`,
//! `absent`, `type` and `max_len` (characters of a string, items of an
//! array) judge the value as it is; `max_len` on any other type cannot be
//! judged. A path that does not resolve holds only for `absent`.
//!
//! # File paths: `path_prefix`
//!
//! `{ path = "/file", op = "path_prefix", value = "/etc" }` holds for
//! `/etc` and everything under it, compared by whole segments (`/etcetera`
//! is not under `/etc`), after the path is normalised lexically: repeated
//! `/` collapse, `.` segments go, `..` removes the segment before it (never
//! above the root). Its readings are the string as written, each round of
//! percent-decoding (`%2e%2e`, `%252e`) and each of these with `\` read
//! as `/`. A path that is not absolute (`etc/shadow`, `~/x`, `C:\x`,
//! `file:///etc`), holds a NUL byte, or is still percent-encoded after four
//! rounds cannot be judged: a deny rule on it matches, an allow rule does
//! not. The value must be an absolute path. The comparison is lexical and
//! case-sensitive: it cannot see symbolic links, so an upstream serving
//! files must not follow links out of what it may serve.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::budget::Rate;

/// One policy file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// What this version changes (kept with it in the version history).
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Named intent categories: an intent is in a category when one of its
    /// patterns matches.
    #[serde(default)]
    pub intent_categories: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "test")]
    pub tests: Vec<TestCase>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub effect: Effect,
    /// For a deny: what the agent is told.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub when: When,
    #[serde(default)]
    pub obligations: Obligations,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

/// One name or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub tenant: Option<OneOrMany>,
    #[serde(default)]
    pub agent: Option<OneOrMany>,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Glob(s) on the end user.
    #[serde(default)]
    pub user: Option<OneOrMany>,
    #[serde(default)]
    pub user_present: Option<bool>,
    /// What is called: `tool`, `prompt`, `resource` or `completion`
    /// (absent: any kind).
    #[serde(default)]
    pub kind: Option<OneOrMany>,
    /// Exact names or globs (`*` any run of characters) of what is called:
    /// the tool or prompt name, or the resource URI.
    #[serde(default)]
    pub tool: Option<OneOrMany>,
    #[serde(default)]
    pub upstream: Option<OneOrMany>,
    /// Exact names or globs of what is called as its upstream names it
    /// (before Dome's prefix). With `upstream`, a rule names one upstream's
    /// tool whatever public name a clash gives it.
    #[serde(default)]
    pub upstream_tool: Option<OneOrMany>,
    #[serde(default)]
    pub intent: Option<IntentCond>,
    #[serde(default)]
    pub args: Vec<ArgCond>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentCond {
    #[serde(default)]
    pub required: bool,
    /// A regex the intent must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The intent must be in one of these categories.
    #[serde(default)]
    pub categories: Vec<String>,
}

/// A condition on the call's arguments at a JSON pointer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCond {
    pub path: String,
    pub op: ArgOp,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    #[serde(default)]
    pub values: Vec<serde_json::Value>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// For `type`: string, number, integer, boolean, array, object, null.
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgOp {
    Eq,
    In,
    Prefix,
    /// A file path at or under `value` (an absolute path), compared after
    /// normalising (see the module comment).
    PathPrefix,
    Regex,
    Range,
    MaxLen,
    Present,
    Absent,
    Type,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligations {
    #[serde(default)]
    pub require_intent: bool,
    /// Redaction detectors (`email`, `card`, `national_id`, `api_key`,
    /// `jwt`, `private_key`) or `regex:<pattern>`.
    #[serde(default)]
    pub redact: Vec<String>,
    #[serde(default)]
    pub log_args: LogArgs,
    /// A budget for this agent × tool instead of the configured one.
    #[serde(default)]
    pub budget: Option<Rate>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogArgs {
    #[default]
    None,
    Digest,
    Full,
}

/// A test case: a request and the decision expected (`dome policy test`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub request: TestRequest,
    pub expect: Effect,
}

impl TestRequest {
    /// The call this test request describes, as policy sees calls.
    pub fn as_request(&self) -> super::compile::Request<'_> {
        super::compile::Request {
            tenant: self.tenant.as_deref(),
            agent: self.agent.as_deref(),
            labels: &self.labels,
            user: self.user.as_deref(),
            tool: &self.tool,
            kind: self.kind.as_deref().unwrap_or("tool"),
            upstream: self.upstream.as_deref(),
            upstream_tool: self.upstream_tool.as_deref(),
            intent: self.intent.as_deref(),
            args: self.args.as_ref(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    pub tool: String,
    /// `tool` (default), `prompt`, `resource` or `completion`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    /// The upstream's own name for it (default: `tool`).
    #[serde(default)]
    pub upstream_tool: Option<String>,
    #[serde(default)]
    pub intent: Option<String>,
    #[serde(default)]
    pub args: Option<serde_json::Value>,
}
