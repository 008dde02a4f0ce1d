//! `cargo xtask bench audit`: the audit trail's three speeds.
//!
//! - `enqueue_ns`: ns per record to build, encode (rkyv) and push into the
//!   ring on the request path, with the writer draining beside it
//!   (`fsync = "batch"`). Baseline in the same run: serde_json encoding of
//!   the same record into a reused buffer (`serde_json_encode_ns`).
//! - `writer_rps`: records per second the writer frames, chains, appends
//!   and group-commits (`fsync = "batch"`, 2 ms), from the first push to
//!   the last record durable. Baseline: appending the same encoded records
//!   to a file with one write per MiB and one fsync (`raw_append_rps`, no
//!   framing, CRC or chain).
//! - `query_rps`: records per second a query scans (every record decoded
//!   and matched: the filter is on intent text, which no index can skip).
//!   Baseline: the same records as JSON Lines, parsed with serde_json and
//!   matched the same way (`jsonl_scan_rps`).

use std::{hint::black_box, ops::ControlFlow, time::Instant};

use dome::audit::{
    Record, Trail,
    config::{AuditConfig, Fsync},
    query::{self, Filter},
    record::{Decision, Kind},
};

const ROUND: usize = 20_000;
const ROUNDS: usize = 21;
const WARMUP: usize = 5;
const WRITER_RECORDS: usize = 400_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct JsonRecord<'a> {
    time_us: u64,
    call_id: &'a str,
    trace_id: &'a str,
    node: &'a str,
    tenant: &'a str,
    agent: &'a str,
    user: &'a str,
    session: &'a str,
    source: &'a str,
    kind: u8,
    name: &'a str,
    upstream: &'a str,
    intent: &'a str,
    args_digest: [u8; 32],
    args: &'a str,
    decision: u8,
    rule: &'a str,
    policy_version: &'a str,
    status: i32,
    outcome: u8,
    reason: &'a str,
    redactions: [u32; 7],
    phase_ns: [u64; 5],
    bytes_in: u64,
    bytes_out: u64,
}

fn record(i: u64) -> Record<'static> {
    Record {
        time_us: 1_795_000_000_000_000 + i,
        call_id: "9f2c4e1a7b3d5f60",
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        node: "edge-fra-1",
        tenant: "acme",
        agent: "support-bot-17",
        user: "alice@acme.example",
        session: "3f6c1e0a9b8d7c6e5f4a3b2c1d0e9f8a",
        source: "10.1.2.3",
        kind: Kind::Tool as u8,
        name: "search_orders",
        upstream: "orders",
        intent: "look up the refund status of order 4711 for the customer",
        args_digest: [0x5a; 32],
        args: "",
        decision: Decision::Allow as u8,
        rule: "support-orders",
        policy_version: "c0ffee0123456789",
        status: 0,
        outcome: 0,
        reason: "",
        redactions: [2, 1, 0, 0, 0, 0, 0],
        phase_ns: [850, 230, 140, 180_000, 205_000],
        bytes_in: 512 + (i & 63),
        bytes_out: 1480,
    }
}

fn json_of<'a>(r: &Record<'a>) -> JsonRecord<'a> {
    JsonRecord {
        time_us: r.time_us,
        call_id: r.call_id,
        trace_id: r.trace_id,
        node: r.node,
        tenant: r.tenant,
        agent: r.agent,
        user: r.user,
        session: r.session,
        source: r.source,
        kind: r.kind,
        name: r.name,
        upstream: r.upstream,
        intent: r.intent,
        args_digest: r.args_digest,
        args: r.args,
        decision: r.decision,
        rule: r.rule,
        policy_version: r.policy_version,
        status: r.status,
        outcome: r.outcome,
        reason: r.reason,
        redactions: r.redactions,
        phase_ns: r.phase_ns,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
    }
}

fn settings(fsync: Fsync) -> dome::audit::config::Settings {
    AuditConfig {
        fsync,
        commit_ms: 2,
        segment_mb: 64,
        retain_days: 0,
        ..Default::default()
    }
    .settings()
}

fn main() -> anyhow::Result<()> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-audit");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;

    // Request path: build, encode, enqueue.
    let trail = Trail::open(
        &root.join("enqueue"),
        65_536,
        "n".into(),
        settings(Fsync::Batch),
    )?;
    let mut enqueue = Vec::new();
    for round in 0..ROUNDS + WARMUP {
        let t = Instant::now();
        let mut last = 0;
        for i in 0..ROUND {
            let slot = loop {
                if let Some(s) = trail.try_slot() {
                    break s;
                }
                std::hint::spin_loop();
            };
            last = trail.commit(slot, black_box(&record(i as u64))).unwrap();
        }
        let ns = t.elapsed().as_nanos() as f64 / ROUND as f64;
        // Between rounds (untimed): let the writer catch up.
        rt.block_on(trail.durable(last))
            .map_err(|u| anyhow::anyhow!(u.0))?;
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("enqueue round {round}: {ns:.1} ns");
        }
        // The first rounds warm the buffer pool and the caches.
        if round >= WARMUP {
            enqueue.push(ns);
        }
    }
    trail.close();
    let enqueue_ns = bench::median(&mut enqueue);

    // Encoding alone, rkyv and serde_json, into reused buffers.
    let mut rkyv_ns = Vec::new();
    let mut serde_ns = Vec::new();
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    let mut jbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut rkyv_len = 0;
    let mut json_len = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for i in 0..ROUND {
            buf = dome::audit::trail::encode(black_box(&record(i as u64)), buf);
            rkyv_len = buf.len();
        }
        rkyv_ns.push(t.elapsed().as_nanos() as f64 / ROUND as f64);
        let t = Instant::now();
        for i in 0..ROUND {
            jbuf.clear();
            serde_json::to_writer(&mut jbuf, black_box(&json_of(&record(i as u64))))?;
            json_len = jbuf.len();
        }
        serde_ns.push(t.elapsed().as_nanos() as f64 / ROUND as f64);
    }
    // The argument digest the request path also computes (SHA-256 of
    // ~500 bytes of arguments).
    let args = "{\"order\":4711,\"fields\":[\"status\",\"refund\",\"items\"],\"note\":\""
        .to_string()
        + &"x".repeat(420)
        + "\"}";
    let mut digest_ns = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..ROUND {
            black_box(ring::digest::digest(
                &ring::digest::SHA256,
                black_box(args.as_bytes()),
            ));
        }
        digest_ns.push(t.elapsed().as_nanos() as f64 / ROUND as f64);
    }

    // Writer throughput, fsync = batch, median of 3 runs.
    let mut writer = Vec::new();
    let mut raw = Vec::new();
    for run in 0..3 {
        let dir = root.join(format!("writer-{run}"));
        let trail = Trail::open(&dir, 65_536, "n".into(), settings(Fsync::Batch))?;
        let t = Instant::now();
        let mut last = 0;
        for i in 0..WRITER_RECORDS {
            let slot = loop {
                if let Some(s) = trail.try_slot() {
                    break s;
                }
                std::thread::yield_now();
            };
            last = trail.commit(slot, &record(i as u64)).unwrap();
        }
        rt.block_on(trail.durable(last))
            .map_err(|u| anyhow::anyhow!(u.0))?;
        writer.push(WRITER_RECORDS as f64 / t.elapsed().as_secs_f64());
        trail.close();

        // Baseline: the same encoded records appended raw.
        let path = root.join(format!("raw-{run}.bin"));
        let t = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut b = rkyv::util::AlignedVec::<16>::new();
        for i in 0..WRITER_RECORDS {
            b = dome::audit::trail::encode(&record(i as u64), b);
            out.extend_from_slice(&b);
            if out.len() >= 1 << 20 {
                std::io::Write::write_all(&mut f, &out)?;
                out.clear();
            }
        }
        std::io::Write::write_all(&mut f, &out)?;
        f.sync_data()?;
        raw.push(WRITER_RECORDS as f64 / t.elapsed().as_secs_f64());
    }

    // Query scan over what the writer wrote; baseline: JSON Lines.
    let qdir = root.join("writer-0");
    let filter = Filter {
        intent: Some("order 9999".into()),
        ..Default::default()
    };
    let mut query_rps = Vec::new();
    let mut scanned = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let s = query::scan(&qdir, &filter, false, |_, _| ControlFlow::Continue(()))?;
        query_rps.push(s.records_scanned as f64 / t.elapsed().as_secs_f64());
        scanned = s.records_scanned;
    }
    let mut lines = String::new();
    for i in 0..WRITER_RECORDS {
        lines.push_str(&serde_json::to_string(&json_of(&record(i as u64)))?);
        lines.push('\n');
    }
    let mut jsonl_rps = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0u64;
        let mut hits = 0u64;
        for l in lines.lines() {
            let r: JsonRecord = serde_json::from_str(l)?;
            n += 1;
            if r.intent.contains("order 9999") {
                hits += 1;
            }
        }
        black_box(hits);
        jsonl_rps.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&root);

    let enqueue_ns = (enqueue_ns * 10.0).round() / 10.0;
    let writer_rps = bench::median(&mut writer).round();
    let query_rps = bench::median(&mut query_rps).round();
    let jsonl_scan_rps = bench::median(&mut jsonl_rps).round();
    bench::report(
        "audit",
        &serde_json::json!({
            "enqueue_ns": enqueue_ns,
            "writer_rps": writer_rps,
            "query_rps": query_rps,
            "rkyv_encode_ns": (bench::median(&mut rkyv_ns) * 10.0).round() / 10.0,
            "serde_json_encode_ns": (bench::median(&mut serde_ns) * 10.0).round() / 10.0,
            "args_digest_ns": (bench::median(&mut digest_ns) * 10.0).round() / 10.0,
            "raw_append_rps": bench::median(&mut raw).round(),
            "jsonl_scan_rps": jsonl_scan_rps,
            "query_vs_jsonl": (query_rps / jsonl_scan_rps * 100.0).round() / 100.0,
            "record_bytes_rkyv": rkyv_len,
            "record_bytes_json": json_len,
            "records_scanned": scanned,
            "targets": {"enqueue_ns": "<= 200", "writer_rps": ">= 300000", "query_rps": ">= 2000000"},
            "notes": "medians; enqueue with the writer draining beside it (fsync = batch, 2 ms); writer from first push to last record durable; query decodes and matches every record",
        }),
    )?;
    Ok(())
}
