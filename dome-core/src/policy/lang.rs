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
    /// The `[[rule]]`s, in file order (the first matching allow rule
    /// gives the obligations).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Named intent categories: an intent is in a category when one of its
    /// patterns matches.
    #[serde(default)]
    pub intent_categories: BTreeMap<String, Vec<String>>,
    /// The `[[test]]` cases `dome policy test` checks the policy against.
    #[serde(default, rename = "test")]
    pub tests: Vec<TestCase>,
}

/// One `[[rule]]`: when it applies and what it says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique across the files; the audit record of each call it decides
    /// names it.
    pub id: String,
    /// Allow or deny the calls it matches.
    pub effect: Effect,
    /// For a deny: what the agent is told.
    #[serde(default)]
    pub reason: Option<String>,
    /// The conditions, all of which must hold (none: every call).
    #[serde(default)]
    pub when: When,
    /// What an allow comes with; a deny rule's are not used.
    #[serde(default)]
    pub obligations: Obligations,
}

/// What a rule does to the calls it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Allowed, unless a deny rule also matches.
    Allow,
    /// Denied, whatever else matches (deny overrides).
    Deny,
}

/// One name or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `"name"`.
    One(String),
    /// `["a", "b"]`: any of them.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The names, one or several alike.
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A rule's conditions (`[rule.when]`): each one stated must hold, each
/// one left out matches anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// The caller's tenant is one of these.
    #[serde(default)]
    pub tenant: Option<OneOrMany>,
    /// The calling agent is one of these (by id).
    #[serde(default)]
    pub agent: Option<OneOrMany>,
    /// The agent has every one of these labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Glob(s) on the end user.
    #[serde(default)]
    pub user: Option<OneOrMany>,
    /// `true`: an end user is known for the call; `false`: none is.
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
    /// The upstream serving the call is one of these (by configured name).
    #[serde(default)]
    pub upstream: Option<OneOrMany>,
    /// Exact names or globs of what is called as its upstream names it
    /// (before Dome's prefix). With `upstream`, a rule names one upstream's
    /// tool whatever public name a clash gives it.
    #[serde(default)]
    pub upstream_tool: Option<OneOrMany>,
    /// What the caller's stated intent must be.
    #[serde(default)]
    pub intent: Option<IntentCond>,
    /// Conditions on the arguments, all of which must hold (judged as the
    /// module comment says: against the caller).
    #[serde(default)]
    pub args: Vec<ArgCond>,
}

/// A rule's intent condition. A call that states no intent matches it
/// only when it sets none of the three.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentCond {
    /// The call must state an intent.
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
    /// A JSON pointer into the arguments (`/file`, `/items/0`; `""` is
    /// the arguments whole).
    pub path: String,
    /// The test made there.
    pub op: ArgOp,
    /// The operand of `eq`, `prefix`, `path_prefix` (an absolute path) and
    /// `regex` (a pattern); a string for all but `eq`.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// The values `in` accepts.
    #[serde(default)]
    pub values: Vec<serde_json::Value>,
    /// `range`'s lower bound, inclusive (absent: none).
    #[serde(default)]
    pub min: Option<f64>,
    /// `range`'s upper bound, inclusive (absent: none); `max_len`'s limit.
    #[serde(default)]
    pub max: Option<f64>,
    /// For `type`: string, number, integer, boolean, array, object, null.
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
}

/// The test an argument condition makes (each judged as the module
/// comment says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgOp {
    /// Equal to `value`.
    Eq,
    /// Equal to one of `values`.
    In,
    /// A string beginning with `value`.
    Prefix,
    /// A file path at or under `value` (an absolute path), compared after
    /// normalising (see the module comment).
    PathPrefix,
    /// A string in which the pattern `value` matches (anywhere, unless
    /// the pattern anchors itself).
    Regex,
    /// A number within `min`..=`max`.
    Range,
    /// At most `max` characters of a string, or items of an array.
    MaxLen,
    /// The path resolves.
    Present,
    /// The path does not resolve.
    Absent,
    /// The value, as it is, is of JSON type `type`.
    Type,
}

/// What an allow comes with (`[rule.obligations]`), from the first allow
/// rule that matches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligations {
    /// A call that states no intent is denied after all.
    #[serde(default)]
    pub require_intent: bool,
    /// Redaction detectors (`email`, `card`, `national_id`, `api_key`,
    /// `jwt`, `private_key`) or `regex:<pattern>`.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Whether the call's audit record keeps its arguments.
    #[serde(default)]
    pub log_args: LogArgs,
    /// A budget for this agent × tool instead of the configured one.
    #[serde(default)]
    pub budget: Option<Rate>,
}

/// How much of a call's arguments its audit record keeps. Every record
/// has the arguments' SHA-256 whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogArgs {
    /// The digest only.
    #[default]
    None,
    /// The digest only, as with `None`: the explicit spelling of it.
    Digest,
    /// The arguments too, redacted and cut at 4 KiB.
    Full,
}

/// A test case: a request and the decision expected (`dome policy test`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What a failure is reported as.
    pub name: String,
    /// The call.
    pub request: TestRequest,
    /// The decision it must get.
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

/// A test case's call (`[test.request]`): what [`TestRequest::as_request`]
/// turns into a [`Request`](super::compile::Request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// The caller's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The calling agent's id.
    #[serde(default)]
    pub agent: Option<String>,
    /// The agent's labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The end user, if one is known.
    #[serde(default)]
    pub user: Option<String>,
    /// What is called, as a caller names it (see [`When::tool`]).
    pub tool: String,
    /// `tool` (default), `prompt`, `resource` or `completion`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The upstream serving it.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The upstream's own name for it (default: `tool`).
    #[serde(default)]
    pub upstream_tool: Option<String>,
    /// The stated intent.
    #[serde(default)]
    pub intent: Option<String>,
    /// The arguments.
    #[serde(default)]
    pub args: Option<serde_json::Value>,
}
