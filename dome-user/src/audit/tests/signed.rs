//! The signed trail: checkpoints over the chain, rewrites and cuts caught
//! against the node's key and anchored heads, restarts, retention told
//! from deletion.

use super::*;

fn signed(segment_bytes: u64, every: u64) -> Settings {
    Settings {
        checkpoint_records: every,
        ..settings(segment_bytes)
    }
}

/// Writes `n` records through a trail signed with `key`, then closes it
/// (cleanly: a shutdown checkpoint ends it).
fn write_signed(d: &std::path::Path, n: u64, s: Settings, key: &std::sync::Arc<NodeKey>) {
    let rt = runtime();
    let t = Trail::open_signed(d, 256, "node-1".into(), s, Some(key.clone())).unwrap();
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

/// What an attacker with write access to the folder does: rewrites every
/// frame of every segment, `edit` changing payloads (same length or not),
/// with CRCs and the hash chain recomputed so every link holds. Frames
/// `drop_from` and later are cut off.
fn rechain(
    d: &std::path::Path,
    mut edit: impl FnMut(u64, u16, &mut Vec<u8>),
    drop_from: Option<u64>,
) {
    let mut prev: Option<crate::audit::frame::Hash> = None;
    for seg in segment::list(d).unwrap() {
        let buf = segment::read_aligned(&seg.path).unwrap();
        let mut out = buf[..segment::HEADER].to_vec();
        let mut at = segment::HEADER;
        while let Ok(f) = crate::audit::frame::read(&buf, at) {
            at = f.next;
            if drop_from.is_some_and(|x| f.header.seq >= x) {
                break;
            }
            let mut payload = f.payload.to_vec();
            edit(f.header.seq, f.header.schema, &mut payload);
            let p = prev.unwrap_or(f.header.prev);
            prev = Some(crate::audit::frame::append(
                &mut out,
                f.header.seq,
                f.header.schema,
                f.header.time_us,
                &p,
                &payload,
            ));
        }
        std::fs::write(&seg.path, &out).unwrap();
    }
}

fn replace(payload: &mut [u8], from: &[u8], to: &[u8]) {
    let pos = payload
        .windows(from.len())
        .position(|w| w == from)
        .expect("present");
    payload[pos..pos + to.len()].copy_from_slice(to);
}

#[test]
fn a_record_rewritten_with_its_crc_and_chain_recomputed_fails_at_the_next_checkpoint() {
    let key = std::sync::Arc::new(NodeKey::generate());
    // Without checkpoints (as before them), the forgery passes: every CRC
    // and link holds.
    let d = dir("forge-unsigned");
    write(&d, 40, 64 << 20);
    rechain(
        &d,
        |seq, _, p| {
            if seq == 5 {
                replace(p, b"intent number 4", b"INTENT NUMBER 4")
            }
        },
        None,
    );
    assert_eq!(query::verify(&d).unwrap().problem, None);
    let _ = std::fs::remove_dir_all(&d);

    // Signed: checkpoints every 10 frames (at 11, 22, 33), then at
    // shutdown (42, over records 34..=41).
    let d = dir("forge-signed");
    write_signed(&d, 38, signed(64 << 20, 10), &key);
    let pristine = segment::list(&d).unwrap()[0].path.clone();
    let pristine = std::fs::read(pristine).unwrap();
    let expect = query::Expect {
        keys: vec![key.public()],
        ..Default::default()
    };
    let report = query::verify_with(&d, &expect).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.records, 38);
    assert_eq!(report.checkpoints, 4, "{report:?}");
    assert_eq!(report.unsigned_tail, 0, "ends with the shutdown checkpoint");
    assert_eq!(
        report.last_checkpoint.as_ref().unwrap().checkpoint.reason,
        Reason::Shutdown
    );
    // Record 5 rewritten, the chain recomputed: checkpoint 11 signed
    // another head.
    rechain(
        &d,
        |seq, _, p| {
            if seq == 5 {
                replace(p, b"intent number 4", b"INTENT NUMBER 4")
            }
        },
        None,
    );
    let p = query::verify_with(&d, &expect)
        .unwrap()
        .problem
        .expect("caught");
    assert_eq!(p.seq, 11, "{p}");
    assert!(p.why.contains("rewritten"), "{p}");
    // The forger also writes the new head into the checkpoint: its
    // signature no longer verifies.
    let seg = segment::list(&d).unwrap().remove(0);
    let spans = frames(&seg.path);
    let buf = std::fs::read(&seg.path).unwrap();
    let new_head = crate::audit::frame::read(&buf, spans[9].0).unwrap().hash();
    let old_cp = crate::audit::frame::read(&pristine, spans[10].0).unwrap();
    let old_head = hex::encode(old_cp.header.prev);
    rechain(
        &d,
        |seq, schema, p| {
            if seq == 11 {
                assert_eq!(schema, crate::audit::checkpoint::CHECKPOINT);
                replace(p, old_head.as_bytes(), hex::encode(new_head).as_bytes());
            }
        },
        None,
    );
    let p = query::verify_with(&d, &expect)
        .unwrap()
        .problem
        .expect("caught");
    assert_eq!(p.seq, 11, "{p}");
    assert!(p.why.contains("signature does not verify"), "{p}");
    // Re-signing with a key of their own fails against the pinned key, and
    // even unpinned the key changes midway.
    std::fs::write(&seg.path, &pristine).unwrap();
    let report = query::verify(&d).unwrap();
    assert_eq!(report.problem, None);
    assert!(!report.key_pinned);
    assert_eq!(report.key, Some(key.public_hex()));
    let other = NodeKey::generate();
    let p = query::verify_with(
        &d,
        &query::Expect {
            keys: vec![other.public()],
            ..Default::default()
        },
    )
    .unwrap()
    .problem
    .expect("caught");
    assert!(p.why.contains("not by the expected key"), "{p}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_cut_after_the_last_checkpoint_shows_against_an_anchored_head_and_a_longer_one_by_itself() {
    let key = std::sync::Arc::new(NodeKey::generate());
    let d = dir("cut");
    write_signed(&d, 40, signed(64 << 20, 10), &key);
    let whole = query::verify(&d).unwrap();
    assert_eq!(whole.problem, None);
    let (last, head) = (whole.last_seq.unwrap(), whole.head.clone().unwrap());
    let anchored = query::Expect {
        keys: vec![key.public()],
        heads: vec![query::Expect::parse_head(&format!("{last}:{head}")).unwrap()],
        ..Default::default()
    };
    let report = query::verify_with(&d, &anchored).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.heads_matched, vec![last]);

    // The newest records cut back to checkpoint 33: a valid, shorter
    // trail, which only the anchored head shows to be cut.
    let seg = segment::list(&d).unwrap().remove(0);
    let spans = frames(&seg.path);
    let b = std::fs::read(&seg.path).unwrap();
    std::fs::write(&seg.path, &b[..spans[32].1]).unwrap();
    let report = query::verify_with(
        &d,
        &query::Expect {
            keys: vec![key.public()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.last_seq, Some(33));
    let p = query::verify_with(&d, &anchored)
        .unwrap()
        .problem
        .expect("caught");
    assert!(p.why.contains("cut off"), "{p}");

    // Cut back further and rewritten without checkpoints: more unsigned
    // frames follow checkpoint 22 than it promised.
    std::fs::write(&seg.path, &b).unwrap();
    rechain(&d, |_, _, _| {}, Some(23));
    let seg_bytes = std::fs::read(&seg.path).unwrap();
    let mut forged = seg_bytes.clone();
    let mut prev = crate::audit::frame::read(&seg_bytes, spans[21].0)
        .unwrap()
        .hash();
    for i in 0..15u64 {
        let intent = format!("forged {i}");
        let r = trail::encode(&record(100 + i, &intent), rkyv::util::AlignedVec::new());
        prev = crate::audit::frame::append(
            &mut forged,
            23 + i,
            crate::audit::record::SCHEMA,
            0,
            &prev,
            &r,
        );
    }
    std::fs::write(&seg.path, &forged).unwrap();
    let p = query::verify(&d).unwrap().problem.expect("caught");
    assert!(p.why.contains("promised the next within 10"), "{p}");
    // A mistyped anchor is refused, not ignored.
    assert!(query::Expect::parse_head("12:nothex").is_err());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_restart_signs_what_recovery_found_and_a_stripped_trail_fails_against_the_key() {
    let key = std::sync::Arc::new(NodeKey::generate());
    let d = dir("restart-signed");
    // A crash leaves 5 records unsigned …
    write(&d, 5, 64 << 20);
    assert_eq!(query::verify(&d).unwrap().checkpoints, 0);
    // … the next start signs them first.
    write_signed(&d, 3, signed(64 << 20, 10), &key);
    let report = query::verify(&d).unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.checkpoints, 2, "start and shutdown");
    // Every checkpoint stripped and the chain recomputed: against the
    // node's key, too many frames with none.
    let seg = segment::list(&d).unwrap().remove(0);
    let b = std::fs::read(&seg.path).unwrap();
    let mut out = b[..segment::HEADER].to_vec();
    let mut at = segment::HEADER;
    let mut prev = [0; 32];
    let mut seq = 1;
    while let Ok(f) = crate::audit::frame::read(&b, at) {
        at = f.next;
        if f.header.schema == crate::audit::checkpoint::CHECKPOINT {
            continue;
        }
        prev = crate::audit::frame::append(&mut out, seq, f.header.schema, 0, &prev, f.payload);
        seq += 1;
    }
    std::fs::write(&seg.path, &out).unwrap();
    let expect = query::Expect {
        keys: vec![key.public()],
        max_unsigned: Some(5),
        ..Default::default()
    };
    let p = query::verify_with(&d, &expect)
        .unwrap()
        .problem
        .expect("caught");
    assert!(p.why.contains("no checkpoint"), "{p}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn segments_deleted_by_hand_are_told_from_segments_retired() {
    let d = dir("deleted");
    write(&d, 300, 8 << 10);
    let segs = segment::list(&d).unwrap();
    std::fs::remove_file(&segs[0].path).unwrap();
    let report = query::verify(&d).unwrap();
    let p = report.problem.expect("caught");
    assert!(p.why.contains("deleted, not retired"), "{p}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_checkpoint_comes_checkpoint_s_after_the_first_unsigned_record_and_not_while_idle() {
    use std::sync::atomic::Ordering::Relaxed;
    let key = std::sync::Arc::new(NodeKey::generate());
    let d = dir("checkpoint-time");
    let s = Settings {
        checkpoint_s: 1,
        ..signed(64 << 20, 1000)
    };
    let rt = runtime();
    let t = Trail::open_signed(&d, 64, "n".into(), s, Some(key.clone())).unwrap();
    rt.block_on(async {
        for i in 0..3 {
            let slot = t.reserve().await.unwrap().unwrap();
            let ticket = t.commit(slot, &record(i, "x")).unwrap();
            t.durable(ticket).await.unwrap();
        }
        assert_eq!(t.counters.checkpoints.load(Relaxed), 0);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(t.counters.checkpoints.load(Relaxed), 1);
        // Nothing new: no checkpoint over the same head again.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(t.counters.checkpoints.load(Relaxed), 1);
    });
    assert_eq!(t.to_json()["checkpoints"]["last"]["covers_seq"], 3);
    t.close();
    let report = query::verify_with(
        &d,
        &query::Expect {
            keys: vec![key.public()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!((report.checkpoints, report.unsigned_tail), (1, 0));
    let _ = std::fs::remove_dir_all(&d);
}

/// A real segment, as the writer writes it, for the seeds of the fuzz
/// target `audit_recover` (`fuzz/seeds.py` runs this into the folder
/// `DOME_FUZZ_SEEDS` names). Not a check, so ignored by `cargo test`.
#[test]
#[ignore = "writes fuzz seeds; run by fuzz/seeds.py"]
fn writes_the_fuzz_seeds() {
    let out = std::env::var_os("DOME_FUZZ_SEEDS").expect("DOME_FUZZ_SEEDS names a folder");
    write(std::path::Path::new(&out), 6, 64 << 20);
}

#[test]
fn a_frame_numbered_u64_max_is_recovered_without_overflow() {
    // Found by the fuzz target `audit_recover`: a CRC-valid frame whose
    // sequence is u64::MAX made recovery add one past the end.
    let d = dir("seq-max");
    std::fs::create_dir_all(&d).unwrap();
    let mut buf = segment::header(1, u64::MAX).to_vec();
    frame::append(&mut buf, u64::MAX, 1, 1, &[0; 32], b"not a record");
    let seg = segment::Segment {
        first_seq: u64::MAX,
        path: segment::path_for(&d, u64::MAX),
    };
    std::fs::write(&seg.path, &buf).unwrap();
    let tail = segment::recover(&seg, None).unwrap();
    assert!(
        tail.removed_why.is_some() || tail.next_seq == u64::MAX,
        "{:?}",
        tail.removed_why
    );
    let _ = std::fs::remove_dir_all(&d);
}
