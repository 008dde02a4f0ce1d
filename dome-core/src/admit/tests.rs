//! Admission as a table, on a virtual clock: each case is a policy, the
//! caller's budgets and a run of calls at given instants; each call's
//! verdict, effects and record fields are checked. No socket, no runtime,
//! no real clock: what the shell sees is all in the returned values.

use std::collections::HashMap;

use super::*;
use crate::policy::compile::compile;

const MS: u64 = 1_000_000;

const POLICY: &str = r#"
[[rule]]
id = "echo-for-all"
effect = "allow"
[rule.when]
kind = "tool"
tool = "echo"

[[rule]]
id = "refunds-with-intent"
effect = "allow"
[rule.when]
tool = "refund"
args = [{ path = "/amount", op = "range", max = 100 }]
[rule.obligations]
require_intent = true
log_args = "full"

[[rule]]
id = "records-redacted"
effect = "allow"
[rule.when]
tool = "records"
[rule.obligations]
redact = ["email"]

[[rule]]
id = "search-one-a-second"
effect = "allow"
[rule.when]
tool = "search"
[rule.obligations]
budget = { calls_per_s = 1.0, burst = 1 }

[[rule]]
id = "no-wipe"
effect = "deny"
reason = "wiping needs a human"
[rule.when]
tool = "wipe"

[[rule]]
id = "briefs"
effect = "allow"
[rule.when]
kind = "prompt"
tool = "brief"
"#;

/// A candidate that allows `echo` no more.
const SHADOW: &str = r#"
[[rule]]
id = "records-only"
effect = "allow"
[rule.when]
tool = "records"
"#;

/// A caller's budgets: (calls per second, burst).
#[derive(Clone, Copy, Default)]
struct Budgets {
    agent: Option<(f64, u32)>,
    tenant: Option<(f64, u32)>,
    /// The configured budget of every tool named `echo` or `search`.
    tool: Option<(f64, u32)>,
}

/// One call of a case.
struct Step {
    at_ms: u64,
    kind: &'static str,
    name: &'static str,
    intent: Option<&'static str>,
    args: Option<&'static str>,
    anonymous: bool,
    expect: Expect,
}

enum Expect {
    Admitted {
        rule: &'static str,
        redacts: bool,
        logged: Option<&'static str>,
    },
    Refused {
        code: i64,
        says: &'static str,
        decision: Decision,
        strike: &'static str,
        retry_ms: Option<u64>,
    },
}

fn call(at_ms: u64, name: &'static str, expect: Expect) -> Step {
    Step {
        at_ms,
        kind: "tool",
        name,
        intent: None,
        args: None,
        anonymous: false,
        expect,
    }
}

fn allowed(rule: &'static str) -> Expect {
    Expect::Admitted {
        rule,
        redacts: false,
        logged: None,
    }
}

fn denied(says: &'static str) -> Expect {
    Expect::Refused {
        code: code::POLICY_DENIED,
        says,
        decision: Decision::Deny,
        strike: "denied by policy",
        retry_ms: None,
    }
}

fn over(says: &'static str, retry_ms: u64) -> Expect {
    Expect::Refused {
        code: code::RATE_LIMITED,
        says,
        decision: Decision::OverBudget,
        strike: "over budget",
        retry_ms: Some(retry_ms),
    }
}

struct Case {
    name: &'static str,
    budgets: Budgets,
    shadow: bool,
    steps: Vec<Step>,
}

fn rate((calls_per_s, burst): (f64, u32)) -> Rate {
    Rate { calls_per_s, burst }
}

fn run(case: &Case) {
    let policy = compile(&[("p.toml".into(), POLICY.into())]).expect("policy compiles");
    let shadow = compile(&[("s.toml".into(), SHADOW.into())]).expect("shadow compiles");
    let rule_budgets = RuleBudgets::default();
    let snapshot = Snapshot {
        policy: &policy,
        shadow: case.shadow.then_some(&shadow),
        rule_budgets: &rule_budgets,
    };
    let b = case.budgets;
    let agent_budget = b.agent.map(|r| Bucket::new(rate(r)));
    let tenant_budget = b.tenant.map(|r| Bucket::new(rate(r)));
    let mut tool_budgets = HashMap::new();
    if let Some(r) = b.tool {
        for t in ["echo", "search"] {
            tool_budgets.insert(t.to_string(), Bucket::new(rate(r)));
        }
    }
    let labels = vec!["support".to_string()];
    let who = Who {
        agent: "bot",
        tenant: "acme",
        labels: &labels,
        user: None,
        agent_budget: agent_budget.as_ref(),
        tool_budgets: &tool_budgets,
        tenant_budget: tenant_budget.as_ref(),
    };
    for (i, s) in case.steps.iter().enumerate() {
        let at = format!("{}: call {i} ({} at {} ms)", case.name, s.name, s.at_ms);
        let now = 1_000_000 * MS + s.at_ms * MS;
        let who = (!s.anonymous).then_some(&who);
        let mut effects = Effects::default();
        let mut noted = Noted::default();
        let verdict = charge(who, now, &mut effects, &mut noted).and_then(|charged| {
            let facts = Facts {
                who,
                kind: s.kind,
                name: s.name,
                upstream: "demo",
                original: None,
                intent: s.intent,
                args_text: s.args,
            };
            admit(charged, &facts, &snapshot, now, &mut effects, &mut noted)
        });
        match (&s.expect, verdict) {
            (
                Expect::Admitted {
                    rule,
                    redacts,
                    logged,
                },
                Ok(admitted),
            ) => {
                assert_eq!(noted.decision, Some(Decision::Allow), "{at}");
                assert_eq!(noted.rule.as_deref(), Some(*rule), "{at}");
                assert_eq!(admitted.redactor().is_some(), *redacts, "{at}");
                assert_eq!(noted.args.as_deref(), *logged, "{at}");
                assert_eq!(effects.strike, None, "{at}");
            }
            (
                Expect::Refused {
                    code,
                    says,
                    decision,
                    strike,
                    retry_ms,
                },
                Err(r),
            ) => {
                assert_eq!(r.code, *code, "{at}: {r:?}");
                assert!(r.message.contains(says), "{at}: {r:?}");
                assert_eq!(r.retry_after_ms, *retry_ms, "{at}");
                assert_eq!(noted.decision, Some(*decision), "{at}");
                assert_eq!(effects.strike, Some(*strike), "{at}");
                assert_eq!(noted.args, None, "{at}: a refused call logs no arguments");
            }
            (Expect::Admitted { .. }, Err(r)) => panic!("{at}: refused: {r:?}"),
            (Expect::Refused { .. }, Ok(_)) => panic!("{at}: admitted"),
        }
        if case.shadow && effects.strike != Some("over budget") {
            let shadowed = effects.shadow.expect("the shadow policy is consulted");
            let expect_shadow = if s.name == "records" {
                Effect::Allow
            } else {
                Effect::Deny
            };
            assert_eq!(shadowed.shadow, expect_shadow, "{at}");
        } else {
            assert_eq!(effects.shadow, None, "{at}");
        }
    }
}

/// Policy and its obligations.
fn policy_cases() -> Vec<Case> {
    vec![
        Case {
            name: "deny unless a rule allows, and a deny rule's reason",
            budgets: Budgets::default(),
            shadow: false,
            steps: vec![
                call(0, "echo", allowed("echo-for-all")),
                call(0, "unknown", denied("no policy rule allows this call")),
                call(0, "wipe", denied("wiping needs a human")),
            ],
        },
        Case {
            name: "an anonymous caller is judged too, with no budgets",
            budgets: Budgets {
                agent: Some((1.0, 1)),
                ..Default::default()
            },
            shadow: false,
            steps: vec![
                Step {
                    anonymous: true,
                    ..call(0, "echo", allowed("echo-for-all"))
                },
                Step {
                    anonymous: true,
                    ..call(0, "echo", allowed("echo-for-all"))
                },
                Step {
                    anonymous: true,
                    ..call(0, "wipe", denied("wiping needs a human"))
                },
            ],
        },
        Case {
            name: "an intent the rule requires, arguments logged redacted, arguments judged",
            budgets: Budgets::default(),
            shadow: false,
            steps: vec![
                Step {
                    args: Some(r#"{"amount": 5, "email": "a@b.example"}"#),
                    ..call(0, "refund", denied("needs a stated intent"))
                },
                Step {
                    intent: Some("refund a broken order"),
                    args: Some(r#"{"amount": 5, "email": "a@b.example"}"#),
                    ..call(
                        0,
                        "refund",
                        Expect::Admitted {
                            rule: "refunds-with-intent",
                            redacts: false,
                            logged: Some(r#"{"amount":5,"email":"[REDACTED:email]"}"#),
                        },
                    )
                },
                Step {
                    intent: Some("refund a broken order"),
                    args: Some(r#"{"amount": 500}"#),
                    ..call(0, "refund", denied("no policy rule allows this call"))
                },
            ],
        },
        Case {
            name: "arguments too deep to judge fail closed",
            budgets: Budgets::default(),
            shadow: false,
            steps: vec![Step {
                intent: Some("refund"),
                args: Some(Box::leak(
                    format!("{}{}", "[".repeat(200), "]".repeat(200)).into_boxed_str(),
                )),
                ..call(0, "refund", denied("too deeply nested to judge"))
            }],
        },
        Case {
            name: "a redacting rule's redactor rides the admission",
            budgets: Budgets::default(),
            shadow: false,
            steps: vec![call(
                0,
                "records",
                Expect::Admitted {
                    rule: "records-redacted",
                    redacts: true,
                    logged: None,
                },
            )],
        },
    ]
}

/// Budgets: the agent's, the tool's, the tenant's and a rule's, and the
/// shadow policy beside them.
fn budget_cases() -> Vec<Case> {
    vec![
        Case {
            name: "the agent's budget refills with time, and denied calls count",
            budgets: Budgets {
                agent: Some((2.0, 2)),
                ..Default::default()
            },
            shadow: false,
            steps: vec![
                call(0, "echo", allowed("echo-for-all")),
                call(0, "wipe", denied("wiping needs a human")),
                call(0, "echo", over("over the agent call budget", 500)),
                call(499, "echo", over("over the agent call budget", 1)),
                call(500, "echo", allowed("echo-for-all")),
                call(1_500, "echo", allowed("echo-for-all")),
                call(1_500, "echo", allowed("echo-for-all")),
            ],
        },
        Case {
            name: "a tenant's refusal gives back what the agent's budget took",
            budgets: Budgets {
                agent: Some((1.0, 2)),
                tenant: Some((1.0, 1)),
                ..Default::default()
            },
            shadow: false,
            steps: vec![
                call(0, "echo", allowed("echo-for-all")),
                call(0, "echo", over("over the tenant call budget", 1000)),
                // Had the agent's token been kept, this would be over the
                // agent's budget, not the tenant's.
                call(0, "echo", over("over the tenant call budget", 1000)),
                call(1_000, "echo", allowed("echo-for-all")),
            ],
        },
        Case {
            name: "the tenant's budget is not spent on denied calls",
            budgets: Budgets {
                tenant: Some((1.0, 1)),
                ..Default::default()
            },
            shadow: false,
            steps: vec![
                call(0, "wipe", denied("wiping needs a human")),
                call(0, "echo", allowed("echo-for-all")),
            ],
        },
        Case {
            name: "a rule's budget replaces the tool's configured one",
            budgets: Budgets {
                tool: Some((100.0, 100)),
                ..Default::default()
            },
            shadow: false,
            steps: vec![
                call(0, "search", allowed("search-one-a-second")),
                call(0, "search", over("over the agent x tool call budget", 1000)),
                call(0, "echo", allowed("echo-for-all")),
                call(0, "echo", allowed("echo-for-all")),
                call(1_000, "search", allowed("search-one-a-second")),
            ],
        },
        Case {
            name: "the tool's configured budget",
            budgets: Budgets {
                tool: Some((1.0, 1)),
                ..Default::default()
            },
            shadow: false,
            steps: vec![
                call(0, "echo", allowed("echo-for-all")),
                call(0, "echo", over("over the agent x tool call budget", 1000)),
            ],
        },
        Case {
            name: "prompts are not held to tool budgets",
            budgets: Budgets {
                tool: Some((1.0, 1)),
                ..Default::default()
            },
            shadow: false,
            steps: vec![
                Step {
                    kind: "prompt",
                    ..call(0, "echo", denied("no policy rule allows this call"))
                },
                Step {
                    kind: "prompt",
                    ..call(0, "brief", allowed("briefs"))
                },
                Step {
                    kind: "prompt",
                    ..call(0, "brief", allowed("briefs"))
                },
            ],
        },
        Case {
            name: "the shadow policy is judged beside the active one, never enforced",
            budgets: Budgets::default(),
            shadow: true,
            steps: vec![
                call(0, "echo", allowed("echo-for-all")),
                call(
                    0,
                    "records",
                    Expect::Admitted {
                        rule: "records-redacted",
                        redacts: true,
                        logged: None,
                    },
                ),
                call(0, "wipe", denied("wiping needs a human")),
            ],
        },
    ]
}

#[test]
fn admission_judges_policy_obligations_and_budgets_on_a_virtual_clock() {
    for case in policy_cases().iter().chain(&budget_cases()) {
        run(case);
    }
}

/// Found reading the code: the arguments were read only when the active
/// policy looks at them, so a shadow policy with argument rules was judged
/// on none, failed closed on every call and reported disagreements that
/// were not there.
#[test]
fn a_shadow_policy_with_argument_rules_sees_the_arguments() {
    let active = compile(&[("p.toml".into(), POLICY_WITHOUT_ARGS.into())]).unwrap();
    let shadow = compile(&[("s.toml".into(), SHADOW_WITH_ARGS.into())]).unwrap();
    assert!(!active.reads_args && shadow.reads_args);
    let rule_budgets = RuleBudgets::default();
    let snapshot = Snapshot {
        policy: &active,
        shadow: Some(&shadow),
        rule_budgets: &rule_budgets,
    };
    let judge = |args: &str| {
        let facts = Facts {
            who: None,
            kind: "tool",
            name: "echo",
            upstream: "demo",
            original: None,
            intent: None,
            args_text: Some(args),
        };
        let (mut effects, mut noted) = (Effects::default(), Noted::default());
        let charged = charge(None, 0, &mut effects, &mut noted).unwrap();
        let admitted = admit(charged, &facts, &snapshot, 0, &mut effects, &mut noted);
        (
            admitted.is_ok(),
            effects.shadow.expect("the shadow is consulted"),
        )
    };
    let agree = Shadowed {
        active: Effect::Allow,
        shadow: Effect::Allow,
    };
    assert_eq!(judge(r#"{"n": 1}"#), (true, agree));
    assert_eq!(
        judge(r#"{"n": 9}"#),
        (
            true,
            Shadowed {
                active: Effect::Allow,
                shadow: Effect::Deny,
            }
        )
    );
    // Too deep for the shadow to read: the call, which the active policy
    // judges without its arguments, still goes; the shadow fails closed.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        judge(&deep),
        (
            true,
            Shadowed {
                active: Effect::Allow,
                shadow: Effect::Deny,
            }
        )
    );
}

const POLICY_WITHOUT_ARGS: &str = r#"
[[rule]]
id = "echo"
effect = "allow"
[rule.when]
tool = "echo"
"#;

const SHADOW_WITH_ARGS: &str = r#"
[[rule]]
id = "small-echo"
effect = "allow"
[rule.when]
tool = "echo"
args = [{ path = "/n", op = "range", max = 5 }]
"#;

#[test]
fn logged_arguments_are_capped_and_still_json() {
    let big = format!(r#"{{"note": "{}"}}"#, "x".repeat(10_000));
    let logged = logged_args(&big, None);
    assert!(
        logged.len() < MAX_LOGGED_ARGS_BYTES + 200,
        "{}",
        logged.len()
    );
    let v: Value = serde_json::from_str(&logged).expect("still JSON");
    assert_eq!(v["dome/truncated"]["bytes"], big.len() - 1);
}

#[test]
fn a_refusal_answers_each_era_with_its_status() {
    let r = Refusal {
        code: code::RATE_LIMITED,
        message: "over".into(),
        retry_after_ms: Some(7),
        data: None,
    };
    assert_eq!(r.status(false), http::StatusCode::OK);
    let rpc = r.to_rpc(&json!(3));
    assert_eq!(rpc["id"], 3);
    assert_eq!(rpc["error"]["data"]["retryAfterMs"], 7);
    let bad = Refusal::from((code::INVALID_PARAMS, "no".to_string()));
    assert_eq!(bad.status(true), http::StatusCode::BAD_REQUEST);
    assert_eq!(bad.status(false), http::StatusCode::OK);
}
