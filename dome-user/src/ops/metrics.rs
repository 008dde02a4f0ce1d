//! Latency histograms and counters of the request path. Each thread records
//! into its own shard (a mutex only that thread and the stats reader ever
//! take, so the hot path has no shared lock); a snapshot merges the shards.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

// Request phases timed on the path: the audit record's slots and names,
// so `/stats` and the trail agree on them.
use crate::audit::{call::phase, record::PHASES};

/// Method labels are a closed set, so a client cannot grow the label space
/// (and each has a fixed counter slot: no lookup by name per request).
const METHODS: [&str; 10] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "server/discover",
    "notification",
    "batch",
    "delete",
    "invalid",
    "other",
];

fn method_slot(method: &str) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// Keyed by names the catalog bounds (tools, upstreams): a fast hasher,
/// since the keys are not chosen by clients.
type Keyed<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Shard {
    /// Created on first use, so a phase never timed is not reported.
    phases: [Option<Histogram<u64>>; PHASES.len()],
    tools: Keyed<Histogram<u64>>,
    upstreams: Keyed<Histogram<u64>>,
    methods: [u64; METHODS.len()],
    /// Few distinct values: a short list beats hashing.
    rpc_errors: Vec<(i64, u64)>,
    http_status: Vec<(u16, u64)>,
}

fn count<K: PartialEq>(list: &mut Vec<(K, u64)>, key: K, n: u64) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, c)) => *c += n,
        None => list.push((key, n)),
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 h in microseconds, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds")
}

fn record(map_entry: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
    let _ = map_entry.record(us);
}

/// What one request contributes to the metrics.
pub struct RequestRecord<'a> {
    pub method: &'a str,
    pub status: u16,
    pub rpc_error: Option<i64>,
    pub total: Duration,
    pub parse: Option<Duration>,
    pub auth: Option<Duration>,
    pub policy: Option<Duration>,
    /// (upstream, tool, time to the upstream's answer).
    pub upstream: Option<(&'a str, &'a str, Duration)>,
}

fn record_phase(s: &mut Shard, phase: usize, d: Duration) {
    record(s.phases[phase].get_or_insert_with(new_histogram), d);
}

fn record_keyed(map: &mut Keyed<Histogram<u64>>, key: &str, d: Duration) {
    match map.get_mut(key) {
        Some(h) => record(h, d),
        None => {
            let mut h = new_histogram();
            record(&mut h, d);
            map.insert(key.into(), h);
        }
    }
}

/// The registry of every thread's shard.
pub struct Metrics {
    id: usize,
    shards: Mutex<Vec<Arc<Mutex<Shard>>>>,
}

static NEXT_REGISTRY: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard of each registry (one in production).
    static SHARDS: RefCell<Vec<(usize, Arc<Mutex<Shard>>)>> = const { RefCell::new(Vec::new()) };
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics {
            id: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::new(Vec::new()),
        })
    }

    fn with_shard(&self, f: impl FnOnce(&mut Shard)) {
        let shard = SHARDS.with(|cell| {
            let mut mine = cell.borrow_mut();
            if let Some((_, s)) = mine.iter().find(|(id, _)| *id == self.id) {
                return s.clone();
            }
            let s = Arc::new(Mutex::new(Shard::default()));
            self.shards.lock().expect("registry").push(s.clone());
            mine.push((self.id, s.clone()));
            s
        });
        // Only this thread and the stats reader ever take this lock.
        f(&mut shard.lock().expect("shard"));
    }

    /// One request's figures at once (one shard lock on the hot path).
    pub fn request(&self, r: &RequestRecord<'_>) {
        let method = method_slot(r.method);
        self.with_shard(|s| {
            record_phase(s, phase::TOTAL, r.total);
            for (slot, d) in [
                (phase::PARSE, r.parse),
                (phase::AUTH, r.auth),
                (phase::POLICY, r.policy),
            ] {
                if let Some(d) = d {
                    record_phase(s, slot, d);
                }
            }
            if let Some((upstream, tool, d)) = r.upstream {
                record_phase(s, phase::UPSTREAM, d);
                record_keyed(&mut s.upstreams, upstream, d);
                record_keyed(&mut s.tools, tool, d);
            }
            s.count(method, r.status, r.rpc_error);
        });
    }

    /// Everything recorded so far, merged over threads.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Shard::default();
        let shards = self.shards.lock().expect("registry").clone();
        for shard in shards {
            let s = shard.lock().expect("shard");
            for (to, h) in out.phases.iter_mut().zip(&s.phases) {
                if let Some(h) = h {
                    let _ = to.get_or_insert_with(new_histogram).add(h);
                }
            }
            for (k, h) in &s.tools {
                let _ = out
                    .tools
                    .entry(k.clone())
                    .or_insert_with(new_histogram)
                    .add(h);
            }
            for (k, h) in &s.upstreams {
                let _ = out
                    .upstreams
                    .entry(k.clone())
                    .or_insert_with(new_histogram)
                    .add(h);
            }
            for (to, c) in out.methods.iter_mut().zip(s.methods) {
                *to += c;
            }
            for &(k, c) in &s.rpc_errors {
                count(&mut out.rpc_errors, k, c);
            }
            for &(k, c) in &s.http_status {
                count(&mut out.http_status, k, c);
            }
        }
        Snapshot(out)
    }
}

impl Shard {
    fn count(&mut self, method: usize, status: u16, rpc_error: Option<i64>) {
        self.methods[method] += 1;
        count(&mut self.http_status, status, 1);
        if let Some(c) = rpc_error {
            count(&mut self.rpc_errors, c, 1);
        }
    }

    fn phases(&self) -> impl Iterator<Item = (&'static str, &Histogram<u64>)> {
        PHASES
            .iter()
            .zip(&self.phases)
            .filter_map(|(name, h)| Some((*name, h.as_ref()?)))
    }

    /// Methods seen at least once.
    fn methods(&self) -> impl Iterator<Item = (&'static str, u64)> {
        METHODS
            .iter()
            .zip(self.methods)
            .filter(|(_, c)| *c > 0)
            .map(|(m, c)| (*m, c))
    }
}

/// Merged metrics.
pub struct Snapshot(Shard);

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5),
        "p90_us": h.value_at_quantile(0.9),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

const QUANTILES: [(f64, &str); 5] = [
    (0.5, "0.5"),
    (0.9, "0.9"),
    (0.99, "0.99"),
    (0.999, "0.999"),
    (1.0, "1"),
];

impl Snapshot {
    pub fn to_json(&self) -> Value {
        let s = &self.0;
        let map =
            |m: &mut dyn Iterator<Item = (String, Value)>| Value::Object(m.collect::<Map<_, _>>());
        json!({
            "latency": {
                "phase": map(&mut s.phases().map(|(k, h)| (k.to_string(), summary(h)))),
                "tool": map(&mut s.tools.iter().map(|(k, h)| (k.to_string(), summary(h)))),
                "upstream": map(&mut s.upstreams.iter().map(|(k, h)| (k.to_string(), summary(h)))),
            },
            "requests": {
                "by_method": map(&mut s.methods().map(|(k, c)| (k.to_string(), c.into()))),
                "by_http_status": map(&mut s.http_status.iter().map(|(k, c)| (k.to_string(), (*c).into()))),
                "by_jsonrpc_error": map(&mut s.rpc_errors.iter().map(|(k, c)| (k.to_string(), (*c).into()))),
            },
        })
    }

    /// Prometheus text exposition (summaries in seconds, counters).
    pub fn to_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = &self.0;
        let mut hist = |name: &str, label: &str, entries: Vec<(&str, &Histogram<u64>)>| {
            if entries.is_empty() {
                return;
            }
            let _ = writeln!(out, "# TYPE {name} summary");
            for (k, h) in entries {
                for (q, qs) in QUANTILES {
                    let v = h.value_at_quantile(q) as f64 / 1e6;
                    let _ = writeln!(out, "{name}{{{label}=\"{k}\",quantile=\"{qs}\"}} {v}");
                }
                let _ = writeln!(out, "{name}_count{{{label}=\"{k}\"}} {}", h.len());
            }
        };
        hist("dome_phase_latency_seconds", "phase", s.phases().collect());
        hist(
            "dome_tool_latency_seconds",
            "tool",
            s.tools.iter().map(|(k, h)| (&**k, h)).collect(),
        );
        hist(
            "dome_upstream_latency_seconds",
            "upstream",
            s.upstreams.iter().map(|(k, h)| (&**k, h)).collect(),
        );
        let _ = writeln!(out, "# TYPE dome_requests_total counter");
        for (k, c) in s.methods() {
            let _ = writeln!(out, "dome_requests_total{{method=\"{k}\"}} {c}");
        }
        let _ = writeln!(out, "# TYPE dome_http_responses_total counter");
        for (k, c) in &s.http_status {
            let _ = writeln!(out, "dome_http_responses_total{{status=\"{k}\"}} {c}");
        }
        let _ = writeln!(out, "# TYPE dome_jsonrpc_errors_total counter");
        for (k, c) in &s.rpc_errors {
            let _ = writeln!(out, "dome_jsonrpc_errors_total{{code=\"{k}\"}} {c}");
        }
    }
}

/// Single-figure recording, for the tests (the request path records a
/// whole request at once with `Metrics::request`).
#[cfg(test)]
impl Metrics {
    fn phase(&self, phase: usize, d: Duration) {
        self.with_shard(|s| record_phase(s, phase, d));
    }

    fn tool(&self, tool: &str, d: Duration) {
        self.with_shard(|s| record_keyed(&mut s.tools, tool, d));
    }

    /// One answered request: its method (bounded: unknown methods count as
    /// `other`), HTTP status and JSON-RPC error code if any.
    fn answered(&self, method: &str, status: u16, rpc_error: Option<i64>) {
        let method = method_slot(method);
        self.with_shard(|s| s.count(method, status, rpc_error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_from_several_threads_merge() {
        let m = Metrics::new();
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for j in 0..100u64 {
                        m.phase(phase::TOTAL, Duration::from_micros(100 * (i + 1) + j));
                        m.tool("echo", Duration::from_micros(50));
                    }
                    m.answered("tools/call", 200, None);
                    m.answered("weird/method", 400, Some(-32602));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let v = m.snapshot().to_json();
        assert_eq!(v["latency"]["phase"]["total"]["count"], 400);
        assert_eq!(v["latency"]["tool"]["echo"]["count"], 400);
        assert_eq!(v["requests"]["by_method"]["tools/call"], 4);
        assert_eq!(
            v["requests"]["by_method"]["other"], 4,
            "unknown methods do not grow the label set"
        );
        assert_eq!(v["requests"]["by_jsonrpc_error"]["-32602"], 4);
        let max = v["latency"]["phase"]["total"]["max_us"].as_u64().unwrap();
        assert!((499..=500).contains(&max), "{max}");
        let mut text = String::new();
        m.snapshot().to_prometheus(&mut text);
        assert!(
            text.contains("dome_phase_latency_seconds_count{phase=\"total\"} 400"),
            "{text}"
        );
        assert!(text.contains("dome_jsonrpc_errors_total{code=\"-32602\"} 4"));
    }
}
