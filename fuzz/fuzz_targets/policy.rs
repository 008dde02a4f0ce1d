//! The policy compiler (`policy::compile`, indexed tables and precompiled
//! matchers) against the reference interpreter (`policy::reference`, the
//! rules read straight): the same decision and deciding rule for every
//! policy and request. The first byte picks how the rest is read:
//! even, as choices that build a policy from every condition and operator
//! and requests with arbitrary arguments; odd, as policy text (anything
//! may be written: a compile error, never a panic).
#![no_main]

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use dome::policy::{
    compile::{Policy, Request, compile},
    lang::PolicyFile,
    reference,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Choices taken off the input (zeros once it runs out).
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
    fn pick<'s>(&mut self, xs: &[&'s str]) -> &'s str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, n: u8) -> bool {
        self.byte() % n == 0
    }
}

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const AGENTS: [&str; 3] = ["a1", "a2", "a3"];
const LABELS: [&str; 3] = ["support", "billing", "ops"];
const TOOLS: [&str; 6] = ["echo", "records", "crm.get", "crm.put", "refund", "re"];
const TOOL_PATTERNS: [&str; 8] = [
    "echo", "records", "crm.*", "*", "re*", "crm.get", "refund", "*.put",
];
const USERS: [&str; 4] = ["ann@acme.test", "bob@globex.test", "eve@evil.test", ""];
const USER_PATTERNS: [&str; 4] = ["*@acme.test", "bob@*", "*", "ann@acme.test"];
const UPSTREAMS: [&str; 2] = ["demo", "bank"];
const PATHS: [&str; 6] = ["/n", "/s", "/o/k", "/a/0", "", "/a~1b"];
const STRINGS: [&str; 7] = ["ab", "abc", "x", "", "é", "a\"b", "0"];
const INTENTS: [&str; 4] = ["refund please", "look around", "PAY now", ""];

fn scalar(c: &mut Choices<'_>) -> Value {
    match c.below(8) {
        0 => Value::Null,
        1 => json!(c.chance(2)),
        2 => json!(i64::from(c.byte() as i8)),
        3 => json!(f64::from(c.byte() as i8) / 4.0),
        4 => json!(u64::MAX - u64::from(c.byte())),
        _ => json!(c.pick(&STRINGS)),
    }
}

fn value(c: &mut Choices<'_>, depth: usize) -> Value {
    if depth == 0 {
        return scalar(c);
    }
    match c.below(6) {
        0 => Value::Array((0..c.below(4)).map(|_| value(c, depth - 1)).collect()),
        1 => {
            let mut o = serde_json::Map::new();
            for _ in 0..c.below(4) {
                let k = c.pick(&["n", "s", "o", "a", "k", "a/b", "0"]);
                o.insert(k.to_string(), value(c, depth - 1));
            }
            Value::Object(o)
        }
        _ => scalar(c),
    }
}

/// A TOML inline value for `v` (serde_json's text is TOML for scalars
/// and arrays of them; objects are written as inline tables).
fn toml_value(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Object(o) => format!(
            "{{ {} }}",
            o.iter()
                .map(|(k, v)| Some(format!("{} = {}", json!(k), toml_value(v)?)))
                .collect::<Option<Vec<_>>>()?
                .join(", ")
        ),
        Value::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(toml_value)
                .collect::<Option<Vec<_>>>()?
                .join(", ")
        ),
        // TOML integers are i64.
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => return None,
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64()?;
            if f.fract() == 0.0 {
                format!("{f:.1}")
            } else {
                format!("{f}")
            }
        }
        v => v.to_string(),
    })
}

fn arg(c: &mut Choices<'_>) -> String {
    let path = json!(c.pick(&PATHS));
    let op = c.pick(&[
        "eq", "in", "prefix", "regex", "range", "max_len", "present", "absent", "type",
    ]);
    let mut out = format!("{{ path = {path}, op = \"{op}\"");
    let v = |c: &mut Choices<'_>| toml_value(&value(c, 1)).unwrap_or_else(|| "1".into());
    match op {
        "eq" => out.push_str(&format!(", value = {}", v(c))),
        "in" => {
            let vs: Vec<String> = (0..1 + c.below(3)).map(|_| v(c)).collect();
            out.push_str(&format!(", values = [{}]", vs.join(", ")));
        }
        "prefix" => out.push_str(&format!(", value = {}", json!(c.pick(&STRINGS)))),
        "regex" => out.push_str(&format!(
            ", value = {}",
            json!(c.pick(&["^a", "b$", "^[a-z]*$", "x|é", "(?i)AB", ""]))
        )),
        "range" | "max_len" => {
            if c.chance(2) {
                out.push_str(&format!(", min = {}", f64::from(c.byte() as i8) / 2.0));
            }
            if !c.chance(3) {
                out.push_str(&format!(", max = {}", f64::from(c.byte() as i8) / 2.0));
            }
        }
        "type" => out.push_str(&format!(
            ", type = \"{}\"",
            c.pick(&[
                "string", "number", "integer", "boolean", "array", "object", "null"
            ])
        )),
        _ => {}
    }
    out.push_str(" }");
    out
}

fn policy(c: &mut Choices<'_>) -> String {
    let mut out = String::new();
    for i in 0..1 + c.below(10) {
        let effect = if c.chance(3) { "deny" } else { "allow" };
        out.push_str(&format!(
            "[[rule]]\nid = \"r{i}\"\neffect = \"{effect}\"\n[rule.when]\n"
        ));
        let one_or_many = |c: &mut Choices<'_>, xs: &[&str]| {
            if c.chance(2) {
                json!(c.pick(xs)).to_string()
            } else {
                json!([c.pick(xs), c.pick(xs)]).to_string()
            }
        };
        if c.chance(2) {
            out.push_str(&format!("tenant = {}\n", one_or_many(c, &TENANTS)));
        }
        if c.chance(3) {
            out.push_str(&format!("agent = {}\n", one_or_many(c, &AGENTS)));
        }
        if c.chance(3) {
            out.push_str(&format!("labels = [\"{}\"]\n", c.pick(&LABELS)));
        }
        if c.chance(4) {
            out.push_str(&format!("user = {}\n", one_or_many(c, &USER_PATTERNS)));
        }
        if c.chance(5) {
            out.push_str(&format!("user_present = {}\n", c.chance(2)));
        }
        if !c.chance(5) {
            out.push_str(&format!("tool = {}\n", one_or_many(c, &TOOL_PATTERNS)));
        }
        if c.chance(4) {
            out.push_str(&format!("upstream = {}\n", one_or_many(c, &UPSTREAMS)));
        }
        if c.chance(4) {
            out.push_str(&format!(
                "upstream_tool = {}\n",
                one_or_many(c, &TOOL_PATTERNS)
            ));
        }
        if c.chance(4) {
            out.push_str(&format!(
                "kind = {}\n",
                one_or_many(c, &["tool", "prompt", "resource", "completion"])
            ));
        }
        if c.chance(4) {
            out.push_str(match c.below(4) {
                0 => "intent = { categories = [\"money\"] }\n",
                1 => "intent = { required = true }\n",
                2 => "intent = { pattern = \"^look\" }\n",
                _ => "intent = { required = true, pattern = \"(?i)refund\", categories = [\"money\"] }\n",
            });
        }
        if c.chance(2) {
            let args: Vec<String> = (0..1 + c.below(3)).map(|_| arg(c)).collect();
            out.push_str(&format!("args = [{}]\n", args.join(", ")));
        }
    }
    // The category is written only when a rule names it: unused, it
    // decides nothing, and compiling its regexes on every run took a good
    // part of the target's time.
    if out.contains("categories = ") {
        out.insert_str(
            0,
            "[intent_categories]\nmoney = [\"refund\", \"(?i)pay\"]\n",
        );
    }
    out
}

fn agree(file: &PolicyFile, text: &str, policy: &Policy, r: &Request<'_>) {
    let [got, want] = reference::both(file, policy, r);
    assert_eq!(got, want, "policy:\n{text}\nrequest: {r:?}");
}

/// A policy text compiled and read for the reference (`None`: refused).
type Compiled = Option<(Policy, PolicyFile)>;

thread_local! {
    /// Policies already compiled, by their text. A mutation often leaves
    /// the bytes that pick the policy alone and changes only the requests
    /// (or bytes nothing reads); compiling (TOML, regexes) costs far more
    /// than deciding, so a policy is compiled once and every request is
    /// still judged by both sides. `compile` is deterministic: reuse
    /// checks nothing less.
    static COMPILED: RefCell<HashMap<String, Rc<Compiled>>> = RefCell::default();
}

/// `text` compiled and read (from the cache when seen before). Text the
/// generator wrote must be TOML a `PolicyFile` reads; any text compiles
/// or is refused with a reason.
fn compiled(text: &str, generated: bool) -> Rc<Compiled> {
    if let Some(c) = COMPILED.with(|m| m.borrow().get(text).cloned()) {
        return c;
    }
    let file = toml::from_str::<PolicyFile>(text);
    if generated && let Err(e) = &file {
        panic!("{e}\n{text}");
    }
    let c = Rc::new(match compile(&[("fuzz.toml".into(), text.to_string())]) {
        Ok(p) => Some((p, file.expect("compiled, so it parses"))),
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal without a reason");
            None
        }
    });
    COMPILED.with(|m| {
        let mut m = m.borrow_mut();
        // Bounded: a long run sees any number of policies.
        if m.len() >= 1024 {
            m.clear();
        }
        m.insert(text.to_string(), c.clone());
    });
    c
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let c = compiled(text, false);
        let Some((compiled, file)) = c.as_ref() else {
            return;
        };
        let args = json!({"n": 3, "s": "abc", "o": {"k": [1, "x"]}});
        for tool in TOOLS {
            let r = Request {
                tenant: Some("acme"),
                agent: Some("a1"),
                tool,
                args: Some(&args),
                ..Default::default()
            };
            agree(file, text, compiled, &r);
        }
        return;
    }
    let mut c = Choices(rest);
    let text = policy(&mut c);
    // Refused as a whole (an argument path no tool can have, say): a
    // refusal is an answer, but it must say why.
    let policy = compiled(&text, true);
    let Some((compiled, file)) = policy.as_ref() else {
        return;
    };
    for _ in 0..4 {
        let labels: Vec<String> = LABELS
            .iter()
            .filter(|_| c.chance(2))
            .map(|s| s.to_string())
            .collect();
        let args = (!c.chance(4)).then(|| value(&mut c, 3));
        let r = Request {
            tenant: (!c.chance(5)).then(|| c.pick(&TENANTS)),
            agent: (!c.chance(5)).then(|| c.pick(&AGENTS)),
            labels: &labels,
            user: (!c.chance(3)).then(|| c.pick(&USERS)),
            tool: c.pick(&TOOLS),
            kind: c.pick(&["", "tool", "prompt", "resource", "completion"]),
            upstream: (!c.chance(3)).then(|| c.pick(&UPSTREAMS)),
            upstream_tool: (!c.chance(2)).then(|| c.pick(&TOOLS)),
            intent: (!c.chance(3)).then(|| c.pick(&INTENTS)),
            args: args.as_ref(),
        };
        agree(file, &text, compiled, &r);
    }
});
