//! `cargo xtask bench parse`: the request envelope parsed with simd-json's
//! borrowed parser (Dome's path) against serde_json on the same 200 B – 4 KiB
//! `tools/call` messages, producing the same extracted fields. Two serde
//! baselines: a `Value` tree (the straightforward way) and a typed borrowed
//! struct with `RawValue` arguments (the fastest serde way).

use std::{collections::BTreeMap, hint::black_box, time::Instant};

use dome_core::envelope::{self, Parsed};
use serde::Deserialize;
use serde_json::value::RawValue;

/// method, name, arguments (JSON text), `_meta` entries other than the era envelope.
type Extracted = (
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<(String, String)>,
);

fn message(arg_bytes: usize) -> Vec<u8> {
    let text: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(arg_bytes)
        .collect();
    serde_json::json!({
        "jsonrpc": "2.0", "id": 42, "method": "tools/call",
        "params": {
            "name": "demo.echo",
            "arguments": {"message": text, "count": 3, "tags": ["a", "b"], "nested": {"x": 1.5, "y": null}},
            "_meta": {"progressToken": "tok-1",
                      "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}
        }
    })
    .to_string()
    .into_bytes()
}

/// What Dome takes out of an envelope, extracted the serde_json way.
fn serde_value(body: &[u8]) -> Extracted {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let method = v["method"].as_str().map(str::to_string);
    let name = v["params"]["name"].as_str().map(str::to_string);
    let args = v["params"].get("arguments").map(|a| a.to_string());
    let meta = v["params"]["_meta"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.starts_with("io.modelcontextprotocol/"))
                .map(|(k, x)| (k.clone(), x.to_string()))
                .collect()
        })
        .unwrap_or_default();
    (method, name, args, meta)
}

#[derive(Deserialize)]
struct Env<'a> {
    #[serde(borrow)]
    method: Option<&'a str>,
    #[serde(borrow)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<BTreeMap<std::borrow::Cow<'a, str>, &'a RawValue>>,
}

fn serde_raw(body: &[u8]) -> Extracted {
    let e: Env<'_> = serde_json::from_slice(body).unwrap();
    let p = e.params.unwrap();
    let meta = p.meta.map_or_else(Vec::new, |m| {
        m.iter()
            .filter(|(k, _)| !k.starts_with("io.modelcontextprotocol/"))
            .map(|(k, x)| (k.to_string(), x.get().to_string()))
            .collect()
    });
    (
        e.method.map(str::to_string),
        p.name.map(|n| n.into_owned()),
        p.arguments.map(|a| a.get().to_string()),
        meta,
    )
}

fn simd(body: &[u8]) -> Extracted {
    match envelope::parse(body, envelope::DEFAULT_MAX_DEPTH).unwrap() {
        // The method as an owned string like the baselines' (Dome keeps
        // known methods as static strings; copying here only costs simd).
        Parsed::One(e) => (
            e.method.map(|m| m.into_owned()),
            e.name,
            e.arguments,
            e.meta_entries,
        ),
        Parsed::Batch => unreachable!(),
    }
}

/// Median over messages of the median over trials of ns per parse.
fn measure(msgs: &[Vec<u8>], f: fn(&[u8]) -> Extracted) -> f64 {
    const ITERS: usize = 20_000;
    const TRIALS: usize = 5;
    let mut per_msg = Vec::new();
    for m in msgs {
        for _ in 0..1000 {
            black_box(f(black_box(m)));
        }
        let mut trials = Vec::new();
        for _ in 0..TRIALS {
            let t = Instant::now();
            for _ in 0..ITERS {
                black_box(f(black_box(m)));
            }
            trials.push(t.elapsed().as_nanos() as f64 / ITERS as f64);
        }
        per_msg.push(bench::median(&mut trials));
    }
    bench::median(&mut per_msg)
}

fn main() -> anyhow::Result<()> {
    let sizes = [0, 300, 800, 1800, 3800];
    let msgs: Vec<Vec<u8>> = sizes.iter().map(|s| message(*s)).collect();
    let lens: Vec<usize> = msgs.iter().map(Vec::len).collect();
    for m in &msgs {
        let a = simd(m);
        anyhow::ensure!(
            a == serde_value(m) && a == serde_raw(m),
            "the parsers disagree"
        );
    }
    let simd_ns = measure(&msgs, simd);
    let serde_ns = measure(&msgs, serde_value);
    let serde_raw_ns = measure(&msgs, serde_raw);
    bench::report(
        "parse",
        &serde_json::json!({
            "simd_ns": simd_ns,
            "serde_ns": serde_ns,
            "serde_raw_ns": serde_raw_ns,
            "message_bytes": lens,
            "statistic": "median over messages of the median of 5 trials x 20000 parses; same fields extracted",
            "serde_ns_is": "serde_json::Value tree, fields read from it",
            "serde_raw_ns_is": "serde_json typed borrowed struct with RawValue arguments",
        }),
    )?;
    Ok(())
}
