//! `cargo xtask bench policy`: the same 500-rule policy expressed for Dome
//! and for the `cedar-policy` crate, the same 10,000 requests, decided side
//! by side in one run (the decisions are checked to agree). Also redaction
//! throughput on tool results with and without matches.

use std::{hint::black_box, str::FromStr, time::Instant};

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet};
use dome::policy::{
    compile::{Request, compile},
    redact::Redactor,
};
use serde_json::{Value, json};

const RULES: usize = 500;
const REQUESTS: usize = 10_000;
const TENANTS: usize = 20;
const AGENTS: usize = 200;
const TOOLS: usize = 100;
const ROUNDS: usize = 7;

struct Req {
    agent: usize,
    tool: String,
    args: Value,
}

/// A small deterministic generator, so both engines get the same requests.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    bench::median(&mut v)
}

fn main() -> anyhow::Result<()> {
    // The policy, both ways.
    let mut dome_src = String::new();
    let mut cedar_src = String::new();
    for i in 0..RULES {
        let deny = i % 10 == 9;
        let tenant = format!("t{}", i % TENANTS);
        let tool = format!("tool{}", i % TOOLS);
        let label = (i % 2 == 0).then(|| format!("l{}", i % 5));
        let max = (i % 3 == 0).then_some(i % 50);
        dome_src.push_str(&format!(
            "[[rule]]\nid = \"r{i}\"\neffect = \"{}\"\n[rule.when]\ntenant = \"{tenant}\"\ntool = \"{tool}\"\n",
            if deny { "deny" } else { "allow" }
        ));
        let mut conds = Vec::new();
        if let Some(l) = &label {
            dome_src.push_str(&format!("labels = [\"{l}\"]\n"));
            conds.push(format!("principal.labels.contains(\"{l}\")"));
        }
        if let Some(m) = max {
            dome_src.push_str(&format!(
                "args = [{{ path = \"/count\", op = \"range\", min = 0, max = {m} }}]\n"
            ));
            conds.push(format!(
                "context.args.count >= 0 && context.args.count <= {m}"
            ));
        }
        cedar_src.push_str(&format!(
            "@id(\"r{i}\")\n{}(principal in Tenant::\"{tenant}\", action == Action::\"call\", resource == Tool::\"{tool}\"){};\n",
            if deny { "forbid" } else { "permit" },
            if conds.is_empty() {
                String::new()
            } else {
                format!(" when {{ {} }}", conds.join(" && "))
            }
        ));
    }
    let dome_policy =
        compile(&[("bench.toml".into(), dome_src)]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cedar_policy = PolicySet::from_str(&cedar_src).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Agents: each under one tenant, with a few labels.
    let mut g = Gen(0x2545_f491_4f6c_dd1d);
    let agents: Vec<(String, String, Vec<String>)> = (0..AGENTS)
        .map(|a| {
            let labels = (0..5)
                .filter(|_| g.below(3) == 0)
                .map(|l| format!("l{l}"))
                .collect();
            (format!("a{a}"), format!("t{}", a % TENANTS), labels)
        })
        .collect();
    let entities_json: Vec<Value> = agents
        .iter()
        .map(|(id, tenant, labels)| {
            json!({"uid": {"type": "Agent", "id": id}, "attrs": {"labels": labels},
                   "parents": [{"type": "Tenant", "id": tenant}]})
        })
        .chain((0..TENANTS).map(|t| json!({"uid": {"type": "Tenant", "id": format!("t{t}")}, "attrs": {}, "parents": []})))
        .chain((0..TOOLS).map(|t| json!({"uid": {"type": "Tool", "id": format!("tool{t}")}, "attrs": {}, "parents": []})))
        .collect();
    let entities = Entities::from_json_value(Value::Array(entities_json), None)?;
    let action = EntityUid::from_str(r#"Action::"call""#)?;

    // The requests, prepared for both engines before timing.
    let reqs: Vec<Req> = (0..REQUESTS)
        .map(|_| Req {
            agent: g.below(AGENTS),
            tool: format!("tool{}", g.below(TOOLS)),
            args: json!({"count": g.below(60)}),
        })
        .collect();
    let cedar_reqs: Vec<cedar_policy::Request> = reqs
        .iter()
        .map(|r| {
            cedar_policy::Request::new(
                EntityUid::from_str(&format!("Agent::\"{}\"", agents[r.agent].0)).unwrap(),
                action.clone(),
                EntityUid::from_str(&format!("Tool::\"{}\"", r.tool)).unwrap(),
                Context::from_json_value(json!({"args": r.args}), None).unwrap(),
                None,
            )
            .unwrap()
        })
        .collect();
    fn dome_req<'a>(agents: &'a [(String, String, Vec<String>)], r: &'a Req) -> Request<'a> {
        let (id, tenant, labels) = &agents[r.agent];
        Request {
            tenant: Some(tenant.as_str()),
            agent: Some(id.as_str()),
            labels: labels.as_slice(),
            user: None,
            tool: &r.tool,
            kind: "tool",
            upstream: None,
            upstream_tool: None,
            intent: None,
            args: Some(&r.args),
        }
    }

    // The same decisions, or the comparison means nothing.
    let authorizer = Authorizer::new();
    let mut allowed = 0;
    for (r, c) in reqs.iter().zip(&cedar_reqs) {
        let d =
            dome_policy.decide(&dome_req(&agents, r)).effect() == dome::policy::lang::Effect::Allow;
        let e = authorizer
            .is_authorized(c, &cedar_policy, &entities)
            .decision()
            == cedar_policy::Decision::Allow;
        anyhow::ensure!(
            d == e,
            "the engines disagree on {} / {}",
            agents[r.agent].0,
            r.tool
        );
        allowed += d as usize;
    }

    let mut dome_rounds = Vec::new();
    let mut cedar_rounds = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for r in &reqs {
            black_box(dome_policy.decide(black_box(&dome_req(&agents, r))));
        }
        dome_rounds.push(t.elapsed().as_nanos() as f64 / REQUESTS as f64);
        let t = Instant::now();
        for c in &cedar_reqs {
            black_box(authorizer.is_authorized(black_box(c), &cedar_policy, &entities));
        }
        cedar_rounds.push(t.elapsed().as_nanos() as f64 / REQUESTS as f64);
    }
    let dome_ns = median(dome_rounds);
    let cedar_ns = median(cedar_rounds);

    // Redaction throughput: a tool result with matches, and one without.
    let redactor = Redactor::new(&[
        "email".into(),
        "card".into(),
        "jwt".into(),
        "api_key".into(),
    ])?;
    let with: String = (0..800)
        .map(|i| format!("{{\"id\":{i},\"name\":\"Customer {i}\",\"email\":\"c{i}@example.com\",\"card\":\"4111 1111 1111 1111\"}},"))
        .collect();
    let without: String = (0..800)
        .map(|i| format!("{{\"id\":{i},\"name\":\"Customer {i}\",\"note\":\"nothing to see here at all, move along\"}},"))
        .collect();
    let mb_s = |text: &str| {
        let rounds: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let mut c = dome::policy::redact::Counts::default();
                let t = Instant::now();
                for _ in 0..20 {
                    black_box(redactor.text(black_box(text), false, &mut c));
                }
                (20 * text.len()) as f64 / t.elapsed().as_secs_f64() / 1e6
            })
            .collect();
        median(rounds)
    };
    let redact_with = mb_s(&with);
    let redact_without = mb_s(&without);

    bench::report(
        "policy",
        &json!({
            "dome_ns": dome_ns,
            "cedar_ns": cedar_ns,
            "cedar_vs_dome": cedar_ns / dome_ns,
            "rules": RULES,
            "requests": REQUESTS,
            "allowed": allowed,
            "decisions_agree": true,
            "redact_mb_s_with_matches": redact_with,
            "redact_mb_s_without_matches": redact_without,
            "targets": {"dome_ns": 150, "cedar_vs_dome": 20},
            "statistic": format!("median over {ROUNDS} rounds of ns per decision; redaction: median MB/s over {ROUNDS} rounds of a ~64 KiB result"),
        }),
    )?;
    Ok(())
}
