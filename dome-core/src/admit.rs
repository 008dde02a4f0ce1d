//! Admission: whether one call may go to its upstream, decided with no I/O
//! and the clock passed in.
//!
//! A call is admitted in two steps, because the catalog lookup between
//! them may reach the network:
//!
//! 1. [`charge`]: the agent's own budget. Every call counts, the ones
//!    policy denies and the ones naming nothing known too: those were
//!    free, so an agent could write denied calls (with their intents) into
//!    the audit trail, and make Dome list every upstream for each unknown
//!    name, as fast as it could send them.
//! 2. [`admit`]: policy (the shadow policy judged beside it), the intent
//!    obligation, then the agent × tool and tenant budgets. The tenant's is
//!    taken only once the call is allowed: one agent's denied calls must
//!    not use up what its tenant's other agents may call.
//!
//! Only [`admit`] makes an [`Admitted`], and the shell's upstream client
//! takes one to send a call on a caller's behalf, so no call reaches an
//! upstream without passing both steps (linkerd2-proxy's `Permitted<T>`).
//! What the shell must do as a result comes back in [`Effects`]; what the
//! call's audit record learns, in [`Noted`] (rustls's output sink).

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};

use crate::{
    audit::record::Decision,
    budget::{Bucket, Rate, RuleBudgets, take_all},
    policy::{
        compile::{Decision as PolicyDecision, Policy, Request},
        lang::{Effect, LogArgs},
        redact::{DETECTORS, Redactor},
    },
    protocol::{INTENT_META, code},
};

/// Who makes the call, as admission sees it: names for policy, buckets
/// for budgets. Borrowed from the shell's authenticated caller.
#[derive(Clone, Copy)]
pub struct Who<'a> {
    /// The agent's id, as a rule's `agent` matches it.
    pub agent: &'a str,
    /// The agent's tenant, as a rule's `tenant` matches it.
    pub tenant: &'a str,
    /// The agent's labels; a rule's `labels` needs every one it lists.
    pub labels: &'a [String],
    /// The end user the agent acts for, when known.
    pub user: Option<&'a str>,
    /// The agent's own budget.
    pub agent_budget: Option<&'a Bucket>,
    /// The agent's configured budgets per tool (a rule's `budget` replaces
    /// the tool's).
    pub tool_budgets: &'a HashMap<String, Bucket>,
    /// The tenant's budget, shared by its agents and taken only once the
    /// call is allowed.
    pub tenant_budget: Option<&'a Bucket>,
}

/// What is known of a call once its name is resolved.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    /// `None`: anonymous, which the shell lets through only when
    /// authentication is off.
    pub who: Option<&'a Who<'a>>,
    /// `tool`, `prompt`, `resource` or `completion`, as policy names kinds.
    pub kind: &'a str,
    /// The public name (a tool, a prompt) or URI.
    pub name: &'a str,
    /// The upstream that serves it.
    pub upstream: &'a str,
    /// What the upstream calls it, when that differs.
    pub original: Option<&'a str>,
    /// The caller's stated intent.
    pub intent: Option<&'a str>,
    /// The arguments as JSON text, as they came.
    pub args_text: Option<&'a str>,
}

/// The configuration a call is judged against: one reload's worth.
#[derive(Clone, Copy)]
pub struct Snapshot<'a> {
    /// The active policy: the one enforced.
    pub policy: &'a Policy,
    /// A candidate policy judged beside the active one, never enforced.
    pub shadow: Option<&'a Policy>,
    /// The buckets of rules' `budget` obligations.
    pub rule_budgets: &'a RuleBudgets,
}

/// Why a call was not forwarded: its JSON-RPC error, and when a call over
/// a budget would pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// The JSON-RPC error code (`protocol::code` names Dome's own).
    pub code: i64,
    /// The error message the caller is shown (the audit record keeps it as
    /// the reason).
    pub message: String,
    /// Over a budget or an agent's share of an upstream: when the call
    /// would pass (`data.retryAfterMs`).
    pub retry_after_ms: Option<u64>,
    /// More for the caller's `error.data` (an object): for an upstream's
    /// failure, which upstream and whether a retry is safe.
    pub data: Option<Value>,
}

impl From<(i64, String)> for Refusal {
    fn from((code, message): (i64, String)) -> Self {
        Refusal {
            code,
            message,
            retry_after_ms: None,
            data: None,
        }
    }
}

impl Refusal {
    /// The JSON-RPC error answering request `id`.
    pub fn to_rpc(&self, id: &Value) -> Value {
        let mut v = json!({"jsonrpc": "2.0", "id": id, "error": {"code": self.code, "message": self.message}});
        let mut data = match &self.data {
            Some(Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(ms) = self.retry_after_ms {
            data.insert("retryAfterMs".into(), ms.into());
        }
        if !data.is_empty() {
            v["error"]["data"] = Value::Object(data);
        }
        v
    }

    /// The HTTP status it is answered with: 200 in the session era (the
    /// JSON-RPC error says it all), the mapped status in the stateless era.
    pub fn status(&self, stateless: bool) -> http::StatusCode {
        if stateless {
            crate::protocol::stateless_status(self.code)
        } else {
            http::StatusCode::OK
        }
    }
}

/// What the shell must do because of a decision.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// A strike against the caller, for escalation, with its reason.
    pub strike: Option<&'static str>,
    /// The shadow policy was consulted: its effect beside the active one's.
    pub shadow: Option<Shadowed>,
}

/// The active and the shadow policy's effect on one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shadowed {
    /// The active policy's effect (a budget may still refuse an allowed
    /// call).
    pub active: Effect,
    /// The shadow policy's effect: what would have happened under it (the
    /// shell counts and logs a disagreement).
    pub shadow: Effect,
}

/// What the call's audit record learns from admission.
#[derive(Debug, Default, PartialEq)]
pub struct Noted {
    /// `Allow`, `Deny` or `OverBudget` once admission decided; `None` while
    /// it has not (a charged call not yet judged).
    pub decision: Option<Decision>,
    /// The rule that allowed or denied it.
    pub rule: Option<Arc<str>>,
    /// The arguments as logged (`log_args = "full"`), redacted and capped.
    pub args: Option<String>,
}

/// The agent's own budget is taken: the call may be looked up and judged.
/// Made only by [`charge`], spent by [`admit`].
#[must_use = "a charged call is admitted or refused"]
pub struct Charged(());

/// A call that passed policy and every budget. Made only by [`admit`];
/// the upstream client takes one to send a call on a caller's behalf.
#[must_use = "an admitted call is forwarded"]
#[derive(Debug)]
pub struct Admitted {
    redactor: Option<Arc<Redactor>>,
}

impl Admitted {
    /// The redaction the allowing rule asks of the answer.
    pub fn redactor(&self) -> Option<&Arc<Redactor>> {
        self.redactor.as_ref()
    }
}

/// The most of a call's arguments `log_args = "full"` keeps in its record
/// (they were kept whole: a body of `max_body_bytes` in every record let
/// one agent write the trail at its own pace).
pub const MAX_LOGGED_ARGS_BYTES: usize = 4096;

/// Step 1: takes one call from the agent's own budget (anonymous callers
/// have none).
pub fn charge(
    who: Option<&Who<'_>>,
    now_ns: u64,
    effects: &mut Effects,
    noted: &mut Noted,
) -> Result<Charged, Refusal> {
    if let Some(w) = who {
        take(&[("agent", w.agent_budget)], now_ns, effects, noted)?;
    }
    Ok(Charged(()))
}

/// Step 2: judges the call against policy (and the shadow policy), checks
/// the rule's obligations, and takes the agent × tool (tools only) and
/// tenant budgets. Refused here, the call gives back what `charge` took:
/// it is refused for this tool or tenant, not for all.
pub fn admit(
    charged: Charged,
    facts: &Facts<'_>,
    snapshot: &Snapshot<'_>,
    now_ns: u64,
    effects: &mut Effects,
    noted: &mut Noted,
) -> Result<Admitted, Refusal> {
    let Charged(()) = charged;
    let policy = snapshot.policy;
    let deny = |reason: &str, noted: &mut Noted, effects: &mut Effects| {
        noted.decision = Some(Decision::Deny);
        effects.strike = Some("denied by policy");
        Refusal {
            code: code::POLICY_DENIED,
            message: format!("denied: {reason}"),
            retry_after_ms: None,
            data: None,
        }
    };
    // Read when either policy looks at arguments: a shadow policy with
    // argument rules judged none would fail closed on every call and
    // report disagreements that are not there.
    let shadow_reads = snapshot.shadow.is_some_and(|s| s.reads_args);
    let args: Option<Value> = match facts.args_text {
        Some(a) if policy.reads_args || shadow_reads => match serde_json::from_str(a) {
            Ok(v) => Some(v),
            // Arguments policy cannot read are never judged as absent
            // ones (serde_json stops at 128 levels, which a raised
            // `max_json_depth` lets through). The shadow alone is never
            // enforced: it judges them absent, and fails closed there.
            Err(_) if policy.reads_args => {
                return Err(deny(
                    "the arguments are too deeply nested to judge",
                    noted,
                    effects,
                ));
            }
            Err(_) => None,
        },
        _ => None,
    };
    let who = facts.who;
    let req = Request {
        tenant: who.map(|w| w.tenant),
        agent: who.map(|w| w.agent),
        labels: who.map_or(&[], |w| w.labels),
        user: who.and_then(|w| w.user),
        tool: facts.name,
        kind: facts.kind,
        upstream: Some(facts.upstream),
        upstream_tool: facts.original,
        intent: facts.intent,
        args: args.as_ref(),
    };
    let decision = policy.decide(&req);
    if let Some(shadow) = snapshot.shadow {
        effects.shadow = Some(Shadowed {
            active: decision.effect(),
            shadow: shadow.decide(&req).effect(),
        });
    }
    let (obligations, redactor) = match decision {
        PolicyDecision::Allow {
            obligations,
            redactor,
            rule,
        } => {
            noted.rule = Some(rule.clone());
            (obligations, redactor)
        }
        PolicyDecision::Deny { rule, reason } => {
            noted.rule = rule.map(Arc::from);
            return Err(deny(reason, noted, effects));
        }
    };
    if obligations.require_intent && facts.intent.is_none() {
        return Err(deny(
            &format!("this call needs a stated intent (params._meta[\"{INTENT_META}\"])"),
            noted,
            effects,
        ));
    }
    noted.decision = Some(Decision::Allow);
    if obligations.log_args == LogArgs::Full
        && let Some(text) = facts.args_text
    {
        noted.args = Some(logged_args(text, redactor.map(|r| &**r)));
    }
    if let Some(w) = who {
        let rule_bucket = match obligations.budget {
            Some(rate) if facts.kind == "tool" => {
                Some(snapshot.rule_budgets.bucket(w.agent, facts.name, rate))
            }
            _ => None,
        };
        let tool = match (&rule_bucket, facts.kind) {
            (Some(b), _) => Some(&**b),
            (None, "tool") => w.tool_budgets.get(facts.name),
            _ => None,
        };
        let levels = [("agent x tool", tool), ("tenant", w.tenant_budget)];
        if let Err(r) = take(&levels, now_ns, effects, noted) {
            if let Some(b) = w.agent_budget {
                b.give_back();
            }
            return Err(r);
        }
    }
    Ok(Admitted {
        redactor: redactor.cloned(),
    })
}

/// Takes one call from each bucket there is in `levels` (named for the
/// refusal), all or none. No allocation on this path.
fn take(
    levels: &[(&str, Option<&Bucket>)],
    now_ns: u64,
    effects: &mut Effects,
    noted: &mut Noted,
) -> Result<(), Refusal> {
    let mut buckets: [&Bucket; 2] = [&UNLIMITED; 2];
    let mut names = [""; 2];
    let mut n = 0;
    for &(label, bucket) in levels {
        if let Some(bucket) = bucket {
            buckets[n] = bucket;
            names[n] = label;
            n += 1;
        }
    }
    let Err((i, refusal)) = take_all(&buckets[..n], now_ns) else {
        return Ok(());
    };
    let retry_ms = refusal.retry_after_ns.div_ceil(1_000_000);
    noted.decision = Some(Decision::OverBudget);
    effects.strike = Some("over budget");
    Err(Refusal {
        code: code::RATE_LIMITED,
        message: format!("over the {} call budget; retry in {retry_ms} ms", names[i]),
        retry_after_ms: Some(retry_ms),
        data: None,
    })
}

/// A bucket that never refuses, to fill unused budget levels.
static UNLIMITED: std::sync::LazyLock<Bucket> = std::sync::LazyLock::new(|| {
    Bucket::new(Rate {
        calls_per_s: f64::MAX,
        burst: u32::MAX,
    })
});

/// Arguments as the audit record logs them: with the rule's redactions,
/// or every built-in detector when the rule has none (values a policy did
/// not think of stay out of the trail too), capped at
/// [`MAX_LOGGED_ARGS_BYTES`].
pub fn logged_args(text: &str, redactor: Option<&Redactor>) -> String {
    static ALL: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(|| {
        let names: Vec<String> = DETECTORS.iter().map(|d| d.to_string()).collect();
        Redactor::new(&names).expect("built-in detectors compile")
    });
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        return String::new();
    };
    let mut counts = Default::default();
    redactor
        .unwrap_or(&ALL)
        .value(&mut v, &Value::Null, &mut counts);
    let full = v.to_string();
    if full.len() <= MAX_LOGGED_ARGS_BYTES {
        return full;
    }
    // Still JSON, and still a start an operator can read; the digest in
    // the record identifies the whole.
    let head = crate::audit::record::capped(&full, MAX_LOGGED_ARGS_BYTES);
    json!({"dome/truncated": {"bytes": full.len(), "head": head}}).to_string()
}
#[cfg(test)]
mod tests;
