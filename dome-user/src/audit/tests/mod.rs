//! The trail end to end on real files: round trips, queries across
//! segments, verification of tampering, recovery of a torn tail.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use super::checkpoint::{NodeKey, Reason};
use super::config::{AuditConfig, Fsync, Settings};
use super::query::{self, Filter};
use super::record::{Decision, Kind, Record};
use super::trail::{self, Trail};
use super::{frame, segment};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dome-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn settings(segment_bytes: u64) -> Settings {
    Settings {
        segment_bytes,
        // Test records are dated 1970; retention has its own test.
        retain_age: None,
        ..AuditConfig::default().settings()
    }
}

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const TOOLS: [&str; 4] = ["echo", "search_orders", "refund", "slow"];

fn record(i: u64, intent: &str) -> Record<'_> {
    Record {
        time_us: 1_000_000_000 + i * 1_000,
        call_id: "c",
        tenant: TENANTS[(i % 3) as usize],
        agent: if i.is_multiple_of(2) {
            "bot-a"
        } else {
            "bot-b"
        },
        user: if i.is_multiple_of(5) { "alice" } else { "" },
        kind: Kind::Tool as u8,
        name: TOOLS[(i % 4) as usize],
        upstream: "demo",
        intent,
        decision: (i % 4) as u8,
        args_digest: [i as u8; 32],
        phase_ns: [1, 2, 3, 4, 5],
        bytes_in: i,
        ..Default::default()
    }
}

/// Writes `n` records through a real trail and closes it.
fn write(d: &std::path::Path, n: u64, segment_bytes: u64) {
    let rt = runtime();
    let t = Trail::open(d, 256, "node-1".into(), settings(segment_bytes)).unwrap();
    rt.block_on(async {
        let mut last = 0;
        for i in 0..n {
            let slot = t.reserve().await.unwrap().unwrap();
            let intent = format!("intent number {i}");
            last = t.commit(slot, &record(i, &intent)).unwrap();
        }
        t.durable(last).await.unwrap();
    });
    t.close();
}

fn all(d: &std::path::Path, f: &Filter) -> Vec<(u64, serde_json::Value)> {
    let mut out = Vec::new();
    query::scan(d, f, false, |seq, r| {
        out.push((seq, r.to_json(seq)));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

/// The single-threaded runtime the trail's waits run on in these tests.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_record_round_trips() {
    let r = Record {
        time_us: 1_795_737_073_123_456,
        call_id: "0123456789abcdef",
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
        node: "edge-1",
        tenant: "acme",
        agent: "bot",
        user: "alice@acme",
        session: "s1",
        source: "127.0.0.1",
        kind: Kind::Resource as u8,
        name: "file:///a",
        upstream: "demo",
        intent: "refund order 42",
        args_digest: [7; 32],
        args: r#"{"order":42,"email":"[redacted:email]"}"#,
        decision: Decision::OverBudget as u8,
        rule: "refunds",
        policy_version: "abc123",
        status: -32004,
        outcome: 2,
        reason: "over the agent call budget",
        redactions: [1, 2, 0, 0, 0, 0, 3],
        phase_ns: [10, 20, 30, 40, 100],
        bytes_in: 512,
        bytes_out: 1024,
    };
    let buf = trail::encode(&r, Default::default());
    let a = segment::record(&buf, super::record::SCHEMA).unwrap();
    assert_eq!(&*a.call_id, r.call_id);
    assert_eq!(&*a.user, r.user);
    assert_eq!(&*a.args, r.args);
    assert_eq!(a.kind(), Kind::Resource);
    assert_eq!(a.decision(), Decision::OverBudget);
    assert_eq!(a.status.to_native(), -32004);
    assert_eq!(a.args_digest, [7; 32]);
    assert_eq!(a.phase_ns[4].to_native(), 100);
    let j = a.to_json(9);
    assert_eq!(j["time"], "2026-11-26T23:51:13.123456Z");
    assert_eq!(j["decision"], "over_budget");
    assert_eq!(j["outcome"], "error");
    assert_eq!(j["args"]["order"], 42);
    assert_eq!(j["redactions"]["email"], 1);
    assert_eq!(j["redactions"]["card"], 2);
    assert_eq!(j["redactions"]["custom"], 3);
    assert_eq!(j["phase_ns"]["total"], 100);
    assert_eq!(j["kind"], "resource");
    // An unknown schema is named, not misread.
    assert!(
        segment::record(&buf, 99)
            .err()
            .unwrap()
            .to_string()
            .contains("schema 99")
    );
    // Garbage does not decode (and does not panic).
    assert!(segment::record(&[0xff; 64], 1).is_err());
}

#[test]
fn queries_return_exactly_the_matching_records_across_segments() {
    let d = dir("query");
    write(&d, 600, 16 << 10);
    let segs = segment::list(&d).unwrap();
    assert!(segs.len() >= 5, "{} segments", segs.len());
    // Sealed segments carry their index.
    assert!(segment::Index::load(&segs[0]).is_some());

    let every = all(&d, &Filter::default());
    assert_eq!(every.len(), 600);
    let seqs: Vec<u64> = every.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=600).collect::<Vec<_>>());

    let want = |f: &Filter, pred: &dyn Fn(u64) -> bool| {
        let got: Vec<u64> = all(&d, f).iter().map(|(s, _)| s - 1).collect();
        let expected: Vec<u64> = (0..600).filter(|&i| pred(i)).collect();
        assert_eq!(got, expected, "{f:?}");
    };
    let mut f = Filter {
        tenant: Some("globex".into()),
        ..Default::default()
    };
    want(&f, &|i| i % 3 == 1);
    f.decision = Some(Decision::Deny);
    want(&f, &|i| i % 3 == 1 && i % 4 == 1);
    let f = Filter {
        user: Some("alice".into()),
        agent: Some("bot-a".into()),
        ..Default::default()
    };
    want(&f, &|i| i % 10 == 0);
    let f = Filter {
        name: Some("search_*".into()),
        ..Default::default()
    };
    want(&f, &|i| i % 4 == 1);
    let f = Filter {
        intent: Some("NUMBER 12".into()),
        ..Default::default()
    };
    want(&f, &|i| i.to_string().starts_with("12"));
    let f = Filter {
        since_us: Some(1_000_000_000 + 100 * 1_000),
        until_us: Some(1_000_000_000 + 200 * 1_000),
        ..Default::default()
    };
    want(&f, &|i| (100..200).contains(&i));

    // A time range skips segments by their index.
    let mut read = 0;
    let stats = query::scan(&d, &f, false, |_, _| {
        read += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(read, 100);
    assert!(stats.segments_skipped > 0, "{stats:?}");
    // A tenant nobody has skips every sealed segment.
    let stats = query::scan(
        &d,
        &Filter {
            tenant: Some("nobody".into()),
            ..Default::default()
        },
        false,
        |_, _| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(stats.matched, 0);
    assert_eq!(stats.segments_skipped, segs.len() - 1, "{stats:?}");

    // Newest first, limited.
    let mut newest = Vec::new();
    query::scan(&d, &Filter::default(), true, |seq, _| {
        newest.push(seq);
        if newest.len() == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(newest, vec![600, 599, 598]);

    // The trail verifies and names its head.
    let report = query::verify(&d).unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.records, 600);
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(600)));
    assert!(!report.incomplete_tail);

    // Reopening continues the sequence and the chain.
    write(&d, 10, 16 << 10);
    let report = query::verify(&d).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.last_seq, Some(610));
    let _ = std::fs::remove_dir_all(&d);
}

/// Byte offsets of the frames in a segment.
fn frames(path: &std::path::Path) -> Vec<(usize, usize)> {
    let buf = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = segment::HEADER;
    while at < buf.len() {
        let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap()) as usize;
        let next = at + super::frame::HEADER + super::frame::padded(len);
        out.push((at, next));
        at = next;
    }
    out
}

#[test]
fn verify_catches_a_flipped_byte_a_removed_frame_and_a_reordered_frame() {
    let d = dir("verify");
    write(&d, 40, 64 << 20);
    let seg = segment::list(&d).unwrap().remove(0);
    let pristine = std::fs::read(&seg.path).unwrap();
    let spans = frames(&seg.path);
    assert_eq!(spans.len(), 40);
    assert_eq!(query::verify(&d).unwrap().problem, None);

    // A flipped byte in record 11's payload.
    let mut b = pristine.clone();
    b[spans[10].0 + 80] ^= 0x20;
    std::fs::write(&seg.path, &b).unwrap();
    let p = query::verify(&d).unwrap().problem.expect("caught");
    assert_eq!(p.seq, 11, "{p}");
    assert!(p.why.contains("CRC"), "{p}");
    assert_eq!(p.offset, spans[10].0 as u64);

    // Record 20 removed.
    let mut b = pristine[..spans[19].0].to_vec();
    b.extend_from_slice(&pristine[spans[19].1..]);
    std::fs::write(&seg.path, &b).unwrap();
    let p = query::verify(&d).unwrap().problem.expect("caught");
    assert_eq!(p.seq, 20, "{p}");
    assert!(p.why.contains("found record 21"), "{p}");

    // Records 30 and 31 swapped.
    let (a, b2) = (spans[29], spans[30]);
    let mut b = pristine[..a.0].to_vec();
    b.extend_from_slice(&pristine[b2.0..b2.1]);
    b.extend_from_slice(&pristine[a.0..a.1]);
    b.extend_from_slice(&pristine[b2.1..]);
    std::fs::write(&seg.path, &b).unwrap();
    let p = query::verify(&d).unwrap().problem.expect("caught");
    assert_eq!(p.seq, 30, "{p}");

    // A forger who renumbers and re-CRCs a changed record still breaks
    // the chain at the record after it.
    let mut b = pristine.clone();
    let at = spans[4].0;
    let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
    let payload_at = at + super::frame::HEADER;
    // Change a byte of the intent text and recompute the CRC the way the
    // writer does.
    let pos = b[payload_at..payload_at + len]
        .windows(6)
        .position(|w| w == b"number")
        .unwrap();
    b[payload_at + pos] = b'N';
    let mut h = crc32fast::Hasher::new();
    h.update(&b[at..at + 20]);
    h.update(&b[at + 24..at + 64]);
    h.update(&b[payload_at..payload_at + len]);
    let crc = h.finalize();
    b[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg.path, &b).unwrap();
    let p = query::verify(&d).unwrap().problem.expect("caught");
    assert_eq!(p.seq, 6, "{p}");
    assert!(p.why.contains("chain"), "{p}");

    // A missing middle segment is named too.
    std::fs::write(&seg.path, &pristine).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    let d = dir("verify-missing");
    write(&d, 300, 8 << 10);
    let segs = segment::list(&d).unwrap();
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1].path).unwrap();
    let p = query::verify(&d).unwrap().problem.expect("caught");
    assert!(p.why.contains("missing"), "{p}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn recovery_cuts_a_torn_tail_and_keeps_every_whole_record() {
    let d = dir("recover");
    write(&d, 25, 64 << 20);
    let seg = segment::list(&d).unwrap().remove(0);
    let whole = std::fs::read(&seg.path).unwrap();
    // A crash mid-write: half of a 26th frame.
    let spans = frames(&seg.path);
    let (a, b) = spans[24];
    let mut torn = whole.clone();
    torn.extend_from_slice(&whole[a..a + (b - a) / 2]);
    std::fs::write(&seg.path, &torn).unwrap();
    assert!(query::verify(&d).unwrap().incomplete_tail);

    // Start-up recovery cuts it; the trail continues at 26.
    write(&d, 5, 64 << 20);
    let report = query::verify(&d).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.last_seq, Some(30));
    assert!(!report.incomplete_tail);

    // Garbage after the last frame (a torn header) is cut as well.
    let seg = segment::list(&d).unwrap().remove(0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&seg.path)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xAB; 37]).unwrap();
    drop(f);
    let tail = segment::recover(&seg, None).unwrap();
    assert_eq!(tail.removed_bytes, 37);
    assert_eq!(tail.next_seq, 31);
    assert_eq!(query::verify(&d).unwrap().problem, None);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn durable_waits_for_the_sync_and_off_does_not() {
    let rt = runtime();
    for mode in [Fsync::Always, Fsync::Batch, Fsync::Off] {
        let d = dir(&format!("durable-{mode:?}"));
        let s = Settings {
            fsync: mode,
            commit: Duration::from_millis(300),
            ..settings(64 << 20)
        };
        let t = Trail::open(&d, 64, "n".into(), s).unwrap();
        rt.block_on(async {
            let slot = t.reserve().await.unwrap().unwrap();
            let ticket = t.commit(slot, &record(0, "x")).unwrap();
            let start = std::time::Instant::now();
            t.durable(ticket).await.unwrap();
            if mode != Fsync::Off {
                // On disk before `durable` returns: a fresh reader finds it.
                assert_eq!(all(&d, &Filter::default()).len(), 1, "{mode:?}");
                assert!(t.counters.syncs.load(std::sync::atomic::Ordering::Relaxed) >= 1);
            }
            if mode == Fsync::Batch {
                // After a quiet spell a record is synced at once; the next
                // one, right behind it, waits for the commit interval
                // (at most one sync per interval).
                assert!(start.elapsed() < Duration::from_millis(150), "{mode:?}");
                let slot = t.reserve().await.unwrap().unwrap();
                let ticket = t.commit(slot, &record(1, "y")).unwrap();
                let start = std::time::Instant::now();
                t.durable(ticket).await.unwrap();
                assert!(start.elapsed() >= Duration::from_millis(150), "{mode:?}");
                assert_eq!(all(&d, &Filter::default()).len(), 2);
            }
        });
        t.close();
        let n = if mode == Fsync::Batch { 2 } else { 1 };
        assert_eq!(all(&d, &Filter::default()).len(), n, "{mode:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn an_idle_writer_sleeps_until_the_next_record() {
    // With fsync off the writer drains every `commit` while records come
    // (no wake-up per call); once they stop, it must sleep until the next
    // push rather than poll an empty ring 500 times a second.
    use std::sync::atomic::Ordering::Relaxed;
    let rt = runtime();
    let d = dir("idle");
    let s = Settings {
        fsync: Fsync::Off,
        commit: Duration::from_millis(2),
        // Far longer than the test: a record written in time was woken for.
        idle_look: Duration::from_secs(60),
        ..settings(64 << 20)
    };
    let t = Trail::open(&d, 64, "n".into(), s).unwrap();
    rt.block_on(async {
        for n in 1..=3u64 {
            let slot = t.reserve().await.unwrap().unwrap();
            t.commit(slot, &record(n, "x")).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while t.counters.records.load(Relaxed) < n && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(t.counters.records.load(Relaxed), n, "record {n} written");
            // A couple of passes to see nothing more comes, then asleep.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let before = t.counters.wakeups.load(Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let woke = t.counters.wakeups.load(Relaxed) - before;
            assert!(woke <= 2, "an idle writer woke {woke} times in 300 ms");
        }
    });
    t.close();
    assert_eq!(all(&d, &Filter::default()).len(), 3);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_full_ring_fails_closed_or_counts_its_drops() {
    let rt = runtime();
    let d = dir("full");
    let t = Trail::open(&d, 16, "n".into(), settings(64 << 20)).unwrap();
    rt.block_on(async {
        // Calls in flight hold their room in the ring.
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(t.reserve().await.unwrap().unwrap());
        }
        let refused = t.reserve().await.err().expect("refused");
        assert!(refused.0.contains("not keeping up"), "{refused:?}");
        assert_eq!(
            t.counters
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Room comes back when a call ends (recorded or not).
        held.pop();
        held.push(t.reserve().await.unwrap().expect("room again"));
        let mut s = (**t.settings.load()).clone();
        s.on_full = super::config::OnFull::Drop;
        t.settings.store(std::sync::Arc::new(s));
        assert!(t.reserve().await.unwrap().is_none());
        assert_eq!(
            t.counters
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    });
    t.close();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn retention_retires_the_oldest_sealed_segments() {
    let d = dir("retire");
    // Records from 1970: far past any retention age.
    let rt = runtime();
    let s = Settings {
        retain_age: Some(Duration::from_secs(86_400)),
        ..settings(8 << 10)
    };
    let t = Trail::open(&d, 256, "n".into(), s).unwrap();
    rt.block_on(async {
        let mut last = 0;
        for i in 0..300 {
            let slot = t.reserve().await.unwrap().unwrap();
            last = t.commit(slot, &record(i, "old")).unwrap();
        }
        t.durable(last).await.unwrap();
        // The writer looks at retention every 10 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while segment::list(&d).unwrap().len() > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let left = segment::list(&d).unwrap();
    assert_eq!(left.len(), 1, "the active segment stays: {left:?}");
    assert!(
        t.counters
            .segments_retired
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    t.close();
    // What is left still verifies, anchored after the retired part.
    let report = query::verify(&d).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn segments_rotate_by_age_and_retire_by_total_size() {
    let rt = runtime();
    let d = dir("age-size");
    let s = Settings {
        segment_age: Duration::from_millis(100),
        retain_bytes: Some(6 << 10),
        ..settings(64 << 20)
    };
    let t = Trail::open(&d, 256, "n".into(), s).unwrap();
    rt.block_on(async {
        for burst in 0..6u64 {
            let mut last = 0;
            for i in 0..5 {
                let slot = t.reserve().await.unwrap().unwrap();
                last = t.commit(slot, &record(burst * 5 + i, "aging")).unwrap();
            }
            t.durable(last).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    t.close();
    // Rotated by age (30 small records, far under the size limit) …
    let retired = t
        .counters
        .segments_retired
        .load(std::sync::atomic::Ordering::Relaxed);
    let left = segment::list(&d).unwrap();
    assert!(
        left.len() + retired as usize >= 4,
        "{left:?}, {retired} retired"
    );
    // … and the oldest retired to keep the trail under 6 KiB (the active
    // segment is never retired).
    assert!(retired >= 1, "{left:?}");
    let sealed: u64 = left[..left.len() - 1]
        .iter()
        .map(|g| std::fs::metadata(&g.path).unwrap().len())
        .sum();
    assert!(sealed <= 6 << 10, "{sealed} bytes sealed");
    let report = query::verify(&d).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert!(report.anchored_after_retirement);
    // Each retirement wrote a note into the chain (a frame of its own)
    // naming what it removed; the newest accounts for the missing start.
    assert!(!report.retired.is_empty(), "{report:?}");
    assert_eq!(report.retired_before(), report.first_seq, "{report:?}");
    let gone: u64 = report
        .retired
        .iter()
        .flat_map(|n| &n.segments)
        .map(|g| g.last_seq + 1 - g.first_seq)
        .sum();
    assert_eq!(gone, report.first_seq.unwrap() - 1);
    assert_eq!(
        report.last_seq,
        Some(30 + report.retired.len() as u64),
        "30 records and the notes"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn call_ids_are_sixteen_hex_digits() {
    let mut c = super::Call::new(None, Kind::Tool, std::time::Instant::now(), 0);
    for id in [0u64, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
        c.call_id = id;
        assert_eq!(
            std::str::from_utf8(&c.call_id_hex()).unwrap(),
            format!("{id:016x}")
        );
    }
}

#[test]
fn damage_inside_the_newest_segment_is_kept_not_cut() {
    let d = dir("damage");
    write(&d, 20, 64 << 20);
    let seg = segment::list(&d).unwrap().remove(0);
    let spans = frames(&seg.path);
    let mut b = std::fs::read(&seg.path).unwrap();
    // A flipped byte in record 8: good records follow, so no torn write.
    b[spans[7].0 + 100] ^= 0x01;
    std::fs::write(&seg.path, &b).unwrap();

    write(&d, 5, 64 << 20);
    // The damaged segment is untouched; the trail went on in a new one.
    assert_eq!(std::fs::read(&seg.path).unwrap(), b);
    let segs = segment::list(&d).unwrap();
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert_eq!(segs[1].first_seq, 21);
    // Verify names the damage …
    let p = query::verify(&d).unwrap().problem.expect("named");
    assert_eq!(p.seq, 8, "{p}");
    // … and a query reads around it: 24 of 25 records.
    let got = all(&d, &Filter::default());
    assert_eq!(got.len(), 24);
    assert!(got.iter().all(|(s, _)| *s != 8));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn query_times_parse_and_out_of_range_ones_are_refused() {
    let now = 2_000_000_000 * 1_000_000;
    assert_eq!(query::parse_time("90s", now), Ok(now - 90_000_000));
    assert_eq!(query::parse_time("2h", now), Ok(now - 7_200_000_000));
    assert_eq!(
        query::parse_time("1700000000", now),
        Ok(1_700_000_000_000_000)
    );
    assert_eq!(
        query::parse_time("2026-11-25T10:00:00Z", now),
        Ok(1_795_600_800_000_000)
    );
    // Older than the epoch: the epoch.
    assert_eq!(query::parse_time("60000d", now), Ok(0));
    // Too large for µs: refused, not wrapped (nor a panic).
    for s in [
        "5000000000000h",
        "18446744073709551615",
        "99999999999d",
        "x",
    ] {
        let e = query::parse_time(s, now).unwrap_err();
        assert!(e.to_string().contains(s), "{e}");
    }
}

mod signed;
