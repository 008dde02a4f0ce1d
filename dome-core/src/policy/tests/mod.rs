//! Decisions for every matcher and effect, compile errors with file and
//! line, and a property test: the compiled tables agree with the reference
//! interpreter on random policies and requests.

use serde_json::{Value, json};

use super::{
    compile::{Decision, Request, compile},
    lang::{Effect, LogArgs, PolicyFile},
    reference,
};

const POLICY: &str = r#"
[intent_categories]
billing = ["(?i)refund", "(?i)invoice"]

[[rule]]
id = "support-records"
effect = "allow"
[rule.when]
tenant = "acme"
labels = ["support"]
tool = "records"
args = [{ path = "/count", op = "range", min = 1, max = 10 }]
[rule.obligations]
redact = ["email", "card"]
log_args = "digest"

[[rule]]
id = "crm-reads"
effect = "allow"
[rule.when]
tenant = ["acme", "globex"]
tool = "crm.get_*"
user = "*@acme.test"

[[rule]]
id = "refunds-need-intent"
effect = "allow"
[rule.when]
agent = "billing-bot"
tool = "refund"
intent = { required = true, categories = ["billing"] }
args = [
  { path = "/currency", op = "in", values = ["EUR", "USD"] },
  { path = "/note", op = "max_len", max = 20 },
  { path = "/order/id", op = "prefix", value = "ord-" },
  { path = "/amount", op = "type", type = "number" },
  { path = "/override", op = "absent" },
]

[[rule]]
id = "no-big-refunds"
effect = "deny"
reason = "refunds over 1000 need a human"
[rule.when]
tool = "refund"
args = [{ path = "/amount", op = "range", min = 1000 }]

[[rule]]
id = "echo-for-all"
effect = "allow"
[rule.when]
tool = "echo"
args = [{ path = "/message", op = "regex", value = "^[a-z ]*$" }]

[[rule]]
id = "echo-exact"
effect = "allow"
[rule.when]
tool = "echo"
upstream = "demo"
user_present = false
args = [{ path = "/message", op = "eq", value = "ping" }, { path = "/message", op = "present" }]

[[test]]
name = "support reads records"
request = { tenant = "acme", labels = ["support"], tool = "records", args = { count = 3 } }
expect = "allow"
"#;

fn req<'a>(tool: &'a str, args: Option<&'a Value>) -> Request<'a> {
    Request {
        tool,
        args,
        ..Default::default()
    }
}

#[test]
fn every_matcher_and_effect() {
    let p = compile(&[("policy.toml".into(), POLICY.into())]).unwrap();
    let labels = vec!["support".to_string()];
    let a3 = json!({"count": 3});
    let a30 = json!({"count": 30});
    let allow = |d: Decision<'_>| d.effect() == Effect::Allow;

    // tenant + labels + tool + range; obligations of the allowing rule.
    let mut r = Request {
        tenant: Some("acme"),
        labels: &labels,
        ..req("records", Some(&a3))
    };
    match p.decide(&r) {
        Decision::Allow {
            rule, obligations, ..
        } => {
            assert_eq!(&**rule, "support-records");
            assert_eq!(obligations.redact, ["email", "card"]);
            assert_eq!(obligations.log_args, LogArgs::Digest);
        }
        d => panic!("{d:?}"),
    }
    r.args = Some(&a30);
    assert!(!allow(p.decide(&r)), "range");
    r.args = Some(&a3);
    r.labels = &[];
    assert!(!allow(p.decide(&r)), "labels");
    r.labels = &labels;
    r.tenant = Some("globex");
    assert!(!allow(p.decide(&r)), "tenant");

    // Globs on tool and user.
    let mut r = Request {
        tenant: Some("globex"),
        user: Some("ann@acme.test"),
        ..req("crm.get_contact", None)
    };
    assert!(allow(p.decide(&r)));
    r.user = Some("ann@evil.test");
    assert!(!allow(p.decide(&r)), "user glob");
    r.user = Some("ann@acme.test");
    r.tool = "crm.delete";
    assert!(!allow(p.decide(&r)), "tool glob");

    // Intent categories, in, max_len, prefix, type, absent; deny overrides.
    let refund = json!({"currency": "EUR", "note": "late", "order": {"id": "ord-7"}, "amount": 50});
    let mut r = Request {
        agent: Some("billing-bot"),
        intent: Some("Customer asked for a Refund"),
        ..req("refund", Some(&refund))
    };
    assert!(allow(p.decide(&r)));
    r.intent = None;
    assert!(!allow(p.decide(&r)), "intent required");
    r.intent = Some("just browsing");
    assert!(!allow(p.decide(&r)), "intent category");
    r.intent = Some("refund");
    let bads = [
        (
            json!({"currency": "GBP", "note": "x", "order": {"id": "ord-1"}, "amount": 5}),
            "in",
        ),
        (
            json!({"currency": "EUR", "note": "x".repeat(21), "order": {"id": "ord-1"}, "amount": 5}),
            "max_len",
        ),
        (
            json!({"currency": "EUR", "note": "x", "order": {"id": "o-1"}, "amount": 5}),
            "prefix",
        ),
        (
            json!({"currency": "EUR", "note": "x", "order": {"id": "ord-1"}, "amount": "5"}),
            "type",
        ),
        (
            json!({"currency": "EUR", "note": "x", "order": {"id": "ord-1"}, "amount": 5, "override": true}),
            "absent",
        ),
    ];
    for (bad, why) in &bads {
        r.args = Some(bad);
        assert!(!allow(p.decide(&r)), "{why}");
    }
    let big = json!({"currency": "EUR", "note": "x", "order": {"id": "ord-1"}, "amount": 5000});
    r.args = Some(&big);
    assert_eq!(
        p.decide(&r),
        Decision::Deny {
            rule: Some("no-big-refunds"),
            reason: "refunds over 1000 need a human"
        },
        "deny overrides the matching allow"
    );

    // regex, eq + present, upstream, user_present; first allow in file order.
    let ping = json!({"message": "ping"});
    let r = Request {
        upstream: Some("demo"),
        ..req("echo", Some(&ping))
    };
    assert!(matches!(
        p.decide(&r),
        Decision::Allow { rule, .. } if &**rule == "echo-for-all"
    ));
    let shout = json!({"message": "PING"});
    assert!(!allow(p.decide(&req("echo", Some(&shout)))), "regex");
}

#[test]
fn deny_by_default_and_lists_show_what_some_rule_could_allow() {
    let p = compile(&[("policy.toml".into(), POLICY.into())]).unwrap();
    let labels = vec!["support".to_string()];
    // Default deny, with the reason an agent may see.
    assert_eq!(
        p.decide(&req("unknown", None)),
        Decision::Deny {
            rule: None,
            reason: super::compile::DEFAULT_DENY
        }
    );
    // Visibility: only tools some rule could allow this caller.
    let acme = Request {
        tenant: Some("acme"),
        labels: &labels,
        ..req("records", None)
    };
    assert!(p.could_allow(&acme));
    assert!(!p.could_allow(&Request {
        tool: "refund",
        ..acme
    }));
    assert_eq!(p.tests.len(), 1);
    assert_eq!(p.version.len(), 16);
}

#[test]
fn compile_errors_name_file_line_and_field() {
    let bad = "[[rule]]\nid = \"a\"\neffect = \"allow\"\n[rule.when]\ntool = \"x\"\nargs = [{ path = \"/p\", op = \"regex\", value = \"(\" }]\n";
    let e = compile(&[("p.toml".into(), bad.into())]).unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("p.toml", 6), "{e}");
    assert!(e.field.starts_with("rule[0].when.args[0]"), "{e}");
    assert!(e.reason.contains("regex"), "{e}");

    let unknown = "[[rule]]\nid = \"a\"\neffect = \"allow\"\nwhoever = 1\n";
    let e = compile(&[("q.toml".into(), unknown.into())]).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.reason.contains("whoever"), "{e}");

    let twice = "[[rule]]\nid = \"a\"\neffect = \"allow\"\n";
    let e = compile(&[
        ("a.toml".into(), twice.into()),
        ("b.toml".into(), twice.into()),
    ])
    .unwrap_err();
    assert_eq!(e.file, "b.toml", "{e}");

    let no_category = "[[rule]]\nid = \"a\"\neffect = \"allow\"\n[rule.when]\nintent = { categories = [\"nope\"] }\n";
    assert!(compile(&[("c.toml".into(), no_category.into())]).is_err());
    let bad_detector =
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\n[rule.obligations]\nredact = [\"ssn-ish\"]\n";
    assert!(compile(&[("d.toml".into(), bad_detector.into())]).is_err());
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn chance(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const AGENTS: [&str; 3] = ["a1", "a2", "a3"];
const LABELS: [&str; 3] = ["support", "billing", "ops"];
const TOOLS: [&str; 5] = ["echo", "records", "crm.get", "crm.put", "refund"];
const TOOL_PATTERNS: [&str; 7] = ["echo", "records", "crm.*", "*", "re*", "crm.get", "refund"];
const USERS: [&str; 3] = ["ann@acme.test", "bob@globex.test", "eve@evil.test"];
const USER_PATTERNS: [&str; 3] = ["*@acme.test", "bob@*", "*"];

const ARG_CONDS: [&str; 14] = [
    r#"{ path = "/n", op = "range", min = 0, max = 5 }"#,
    r#"{ path = "/n", op = "range", min = 3 }"#,
    r#"{ path = "/s", op = "prefix", value = "ab" }"#,
    r#"{ path = "/s", op = "max_len", max = 3 }"#,
    r#"{ path = "/n", op = "absent" }"#,
    r#"{ path = "/s", op = "in", values = ["abc", "x"] }"#,
    r#"{ path = "/s", op = "regex", value = "^a" }"#,
    r#"{ path = "/n", op = "eq", value = 2 }"#,
    r#"{ path = "/n", op = "in", values = [1, "x", true] }"#,
    r#"{ path = "/n", op = "type", type = "number" }"#,
    r#"{ path = "/p", op = "path_prefix", value = "/etc" }"#,
    r#"{ path = "/p", op = "path_prefix", value = "/srv/a" }"#,
    r#"{ path = "/p", op = "present" }"#,
    r#"{ path = "/s", op = "eq", value = ["abc"] }"#,
];

/// Argument values an attacker would try, by argument.
fn hostile(g: &mut Gen, key: &str) -> Value {
    let deep = |leaf: Value, n: usize| (0..n).fold(leaf, |v, _| json!([v]));
    let pool: Vec<Value> = match key {
        "n" => vec![
            json!(2),
            json!(2.5),
            json!(7),
            json!(-0.5),
            json!("3"),
            json!("2"),
            json!(" 5_000 "),
            json!("5e3"),
            json!([2]),
            json!([9, "1"]),
            json!({"k": 1}),
            json!({"7": 1}),
            json!(true),
            json!(null),
            json!("x"),
            json!([]),
            deep(json!(1), 40),
        ],
        "s" => vec![
            json!("abc"),
            json!("abcd"),
            json!("x"),
            json!("zz"),
            json!(["abc"]),
            json!(["x", "zz"]),
            json!(5),
            json!(null),
            json!({"ab": "q"}),
            json!("ａｂ"),
            deep(json!("x"), 20),
            deep(json!("x"), 40),
        ],
        _ => vec![
            json!("/etc/x"),
            json!("//etc/shadow"),
            json!("/tmp/../etc"),
            json!("/srv/a/b"),
            json!("/srv/a/../b"),
            json!("/srv//a/./b"),
            json!("etc"),
            json!("/srv/%2e%2e/etc"),
            json!("/srv/a/%2e%2e%2fb"),
            json!("/srv/a\\..\\..\\etc"),
            json!("/srv/a/%25252525252e"),
            json!("/srv/a/100%.txt"),
            json!("/srv/a/x\u{0}"),
            json!(["/srv/a"]),
            json!(["/srv/a", "/etc"]),
            json!(5),
        ],
    };
    pool[(g.next() % pool.len() as u64) as usize].clone()
}

fn random_policy(g: &mut Gen) -> String {
    let mut out = String::from("[intent_categories]\nmoney = [\"refund\", \"pay\"]\n");
    for i in 0..(1 + g.next() % 12) {
        let effect = if g.chance(4) { "deny" } else { "allow" };
        out.push_str(&format!(
            "[[rule]]\nid = \"r{i}\"\neffect = \"{effect}\"\n[rule.when]\n"
        ));
        if g.chance(2) {
            out.push_str(&format!("tenant = \"{}\"\n", g.pick(&TENANTS)));
        }
        if g.chance(3) {
            out.push_str(&format!(
                "agent = [\"{}\", \"{}\"]\n",
                g.pick(&AGENTS),
                g.pick(&AGENTS)
            ));
        }
        if g.chance(3) {
            out.push_str(&format!("labels = [\"{}\"]\n", g.pick(&LABELS)));
        }
        if g.chance(4) {
            out.push_str(&format!("user = \"{}\"\n", g.pick(&USER_PATTERNS)));
        }
        if g.chance(5) {
            out.push_str(&format!("user_present = {}\n", g.chance(2)));
        }
        if !g.chance(5) {
            out.push_str(&format!("tool = \"{}\"\n", g.pick(&TOOL_PATTERNS)));
        }
        if g.chance(4) {
            out.push_str(&format!("upstream_tool = \"{}\"\n", g.pick(&TOOL_PATTERNS)));
        }
        if g.chance(4) {
            out.push_str(&format!(
                "kind = [\"{}\"]\n",
                g.pick(&["tool", "prompt", "resource"])
            ));
        }
        if g.chance(4) {
            out.push_str("intent = { categories = [\"money\"] }\n");
        }
        if g.chance(2) {
            let mut args = Vec::new();
            for _ in 0..1 + g.next() % 2 {
                args.push(g.pick(&ARG_CONDS));
            }
            out.push_str(&format!("args = [{}]\n", args.join(", ")));
        }
    }
    out
}

#[test]
fn compiled_tables_agree_with_the_reference_interpreter() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut decisions = [0usize; 2];
    for _ in 0..150 {
        let text = random_policy(&mut g);
        let file: PolicyFile = toml::from_str(&text).unwrap();
        let compiled = compile(&[("random.toml".into(), text.clone())]).unwrap();
        for _ in 0..30 {
            let labels: Vec<String> = LABELS
                .iter()
                .filter(|_| g.chance(2))
                .map(|s| s.to_string())
                .collect();
            let args = match g.next() % 5 {
                0 => None,
                1 => Some(json!({"n": (g.next() % 8) as i64, "s": "abc"})),
                _ => {
                    let mut a = serde_json::Map::new();
                    for k in ["n", "s", "p"] {
                        if !g.chance(3) {
                            a.insert(k.into(), hostile(&mut g, k));
                        }
                    }
                    Some(Value::Object(a))
                }
            };
            let r = Request {
                tenant: (!g.chance(5)).then(|| g.pick(&TENANTS)),
                agent: (!g.chance(5)).then(|| g.pick(&AGENTS)),
                labels: &labels,
                user: (!g.chance(3)).then(|| g.pick(&USERS)),
                tool: g.pick(&TOOLS),
                kind: g.pick(&["", "tool", "prompt", "resource"]),
                upstream: None,
                upstream_tool: (!g.chance(2)).then(|| g.pick(&TOOLS)),
                intent: match g.next() % 3 {
                    0 => None,
                    1 => Some("refund please"),
                    _ => Some("look around"),
                },
                args: args.as_ref(),
            };
            let [got, want] = reference::both(&file, &compiled, &r);
            assert_eq!(got, want, "policy:\n{text}\nrequest: {r:?}");
            decisions[(want.0 == Effect::Allow) as usize] += 1;
        }
    }
    // The generator exercises both outcomes.
    assert!(decisions[0] > 300 && decisions[1] > 300, "{decisions:?}");
}

#[test]
fn argument_paths_are_checked_against_input_schemas() {
    let text = r#"
[[rule]]
id = "typo"
effect = "allow"
[rule.when]
tool = "echo"
args = [{ path = "/mesage", op = "max_len", max = 10 }, { path = "/message", op = "present" }]

[[rule]]
id = "nested"
effect = "allow"
[rule.when]
tool = "order_*"
args = [{ path = "/items/0/sku", op = "present" }, { path = "/items/x", op = "present" }, { path = "/meta/anything", op = "present" }]

[[rule]]
id = "other-kind"
effect = "allow"
[rule.when]
kind = "prompt"
tool = "echo"
args = [{ path = "/nothing", op = "present" }]
"#;
    let p = compile(&[("s.toml".into(), text.into())]).unwrap();
    let echo = json!({"type": "object", "properties": {"message": {"type": "string"}}});
    let w = p.schema_warnings("echo", &echo);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("rule `typo`") && w[0].contains("/mesage"),
        "{w:?}"
    );
    assert!(w[0].contains("message"), "names what the schema has: {w:?}");

    let order = json!({"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}, "additionalProperties": false}},
        "meta": {"type": "object", "additionalProperties": {"type": "string"}}}});
    let w = p.schema_warnings("order_create", &order);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("/items/x") && w[0].contains("indexes an array"),
        "{w:?}"
    );
    // No schema to speak of: nothing to say; a tool no rule names: nothing.
    assert!(p.schema_warnings("echo", &json!({})).is_empty());
    assert!(p.schema_warnings("records", &echo).is_empty());
}

/// Checks the decisions on `cases` of a policy that allows tool `t` with
/// one rule and denies it with another when `cond` holds (`deny_rule`),
/// or only allows it when `cond` holds; the reference interpreter too.
fn assert_effects(cond: &str, deny_rule: bool, cases: &[(Value, Effect)]) {
    let text = if deny_rule {
        format!(
            "[[rule]]\nid = \"all\"\neffect = \"allow\"\n[rule.when]\ntool = \"t\"\n\
             [[rule]]\nid = \"no\"\neffect = \"deny\"\n[rule.when]\ntool = \"t\"\nargs = [{cond}]\n"
        )
    } else {
        format!(
            "[[rule]]\nid = \"ok\"\neffect = \"allow\"\n[rule.when]\ntool = \"t\"\nargs = [{cond}]\n"
        )
    };
    let p = compile(&[("p.toml".into(), text.clone())]).unwrap();
    let file: PolicyFile = toml::from_str(&text).unwrap();
    for (args, want) in cases {
        let r = req("t", Some(args));
        assert_eq!(
            p.decide(&r).effect(),
            *want,
            "{} rule {cond} on {args}",
            if deny_rule { "deny" } else { "allow" }
        );
        assert_eq!(
            reference::decide(&file, &r).0,
            *want,
            "reference: {} rule {cond} on {args}",
            if deny_rule { "deny" } else { "allow" }
        );
    }
}

mod args;
