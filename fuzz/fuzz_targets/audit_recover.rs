//! Audit segment recovery (`audit::segment::recover`, what start-up runs
//! on the newest segment): a segment file holding any bytes is recovered
//! without a panic, and every intact record before the damage is kept,
//! byte for byte. The seeds are real segments the audit writer wrote.
//!
//! The first byte: bit 0 set reseals every frame's CRC (walking frames by
//! their length fields) before recovery, so made-up payloads and chain
//! links get past the CRC to the record decoder and the chain check;
//! bit 1 set tells recovery the chain the previous segment left (the
//! first frame's `prev` and sequence), else the segment is the oldest.
#![no_main]

use std::path::PathBuf;

use dome::audit::{
    frame,
    segment::{self, HEADER, Segment},
};
use libfuzzer_sys::fuzz_target;

/// Reseals the CRC of each frame that fits, from the first on.
fn reseal(buf: &mut [u8]) {
    let mut at = HEADER;
    while at + frame::HEADER <= buf.len() {
        let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap()) as usize;
        let next = at + frame::HEADER + frame::padded(len.min(frame::MAX_PAYLOAD));
        if len > frame::MAX_PAYLOAD || next > buf.len() {
            return;
        }
        let (head, rest) = buf[at..].split_at_mut(frame::HEADER);
        let crc = frame::crc_of(head, &rest[..len]);
        head[20..24].copy_from_slice(&crc.to_le_bytes());
        at = next;
    }
}

/// The intact records at the start: where they end, and the chain after
/// them. Read here frame by frame with the checks recovery makes.
fn intact(buf: &[u8], first_seq: u64, expected: Option<(u64, frame::Hash)>) -> usize {
    if segment::parse_header(buf).is_err() {
        return HEADER.min(buf.len());
    }
    let mut at = HEADER;
    let mut chain = expected;
    while let Ok(f) = frame::read(buf, at) {
        let links = match chain {
            None => f.header.seq == first_seq,
            Some((next, head)) => f.header.seq == next && f.header.prev == head,
        };
        if !links || segment::record(f.payload, f.header.schema).is_err() {
            break;
        }
        chain = Some((f.header.seq + 1, f.hash()));
        at = f.next;
    }
    at
}

fn scratch_dir() -> PathBuf {
    // tmpfs where there is one: recovery writes and syncs the file.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("dome-fuzz-audit-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, bytes)) = data.split_first() else {
        return;
    };
    let mut buf = bytes.to_vec();
    if knobs & 1 == 1 {
        reseal(&mut buf);
    }
    let first_seq = segment::parse_header(&buf).map_or(1, |(_, s)| s);
    let expected = (knobs & 2 == 2)
        .then(|| frame::read(&buf, HEADER).ok())
        .flatten()
        .map(|f| (f.header.seq, f.header.prev));
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let seg = Segment {
        first_seq,
        path: segment::path_for(&dir, first_seq),
    };
    std::fs::write(&seg.path, &buf).unwrap();
    let keep = intact(&buf, first_seq, expected);
    let tail = segment::recover(&seg, expected).expect("recovery does no failing I/O here");
    let after = std::fs::read(&seg.path).unwrap();
    let _ = std::fs::remove_file(&seg.path);
    if segment::parse_header(&buf).is_err() {
        // A bad header: the file kept as it is (damage, good frames after
        // it) or started afresh (nothing good in it).
        assert!(
            after == buf || (tail.removed_bytes == buf.len() as u64 && after.len() == HEADER),
            "a bad header was neither kept nor cut cleanly"
        );
        return;
    }
    assert!(after.len() >= keep, "recovery cut into intact records");
    assert_eq!(
        after[..keep],
        buf[..keep],
        "recovery changed intact records"
    );
    assert_eq!(
        tail.len,
        after.len() as u64,
        "the recovered length is the file's"
    );
    if tail.damaged.is_none() {
        assert_eq!(
            after.len(),
            keep,
            "a torn tail was not cut at the last intact record"
        );
    }
});
