//! Verification of a trail: every frame's CRC, the hash chain across
//! segments, checkpoints signed with the node's key (pinned, or the first
//! one found), anchored heads, and retirements accounted for by their
//! notes. What `dome audit verify` and `GET /audit/verify` report.

use std::path::{Path, PathBuf};

use super::checkpoint::{Checkpoint, Retired};
use super::frame::{self, Bad, Hash};
use super::segment::{self, Segment};

/// The first thing wrong in the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub segment: PathBuf,
    pub offset: u64,
    /// The sequence number the bad record has or should have had.
    pub seq: u64,
    pub why: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record {} ({} at byte {}): {}",
            self.seq,
            self.segment.display(),
            self.offset,
            self.why
        )
    }
}

/// What `verify` is told from outside the trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Public keys checkpoints must be signed with (empty: the key the
    /// first checkpoint names, reported as unpinned).
    pub keys: Vec<[u8; 32]>,
    /// Heads anchored elsewhere: frame `seq` must be there with this hash.
    pub heads: Vec<(u64, Hash)>,
    /// With a pinned key: more frames than this and no checkpoint at all
    /// is a problem (checkpoints were stripped).
    pub max_unsigned: Option<u64>,
}

/// An anchored head that is not `SEQ:HASH` (as given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--expect-head `{0}`: expected SEQ:HASH (a sequence number and 64 hex digits)")]
pub struct BadHead(pub String);

impl Expect {
    /// Parses `SEQ:HASH` (the `covers_seq` and `head` of an exported
    /// checkpoint, or `last_seq` and `head` of `/stats`).
    pub fn parse_head(s: &str) -> Result<(u64, Hash), BadHead> {
        let bad = || BadHead(s.to_string());
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq = seq.trim().parse().map_err(|_| bad())?;
        let hash = hex::decode(hash.trim())
            .ok()
            .and_then(|h| <Hash>::try_from(h).ok())
            .ok_or_else(bad)?;
        Ok((seq, hash))
    }
}

/// The newest checkpoint `verify` saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCheckpoint {
    /// The checkpoint's own frame.
    pub seq: u64,
    pub checkpoint: Checkpoint,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub segments: usize,
    /// Call records (checkpoints and retirement notes are frames too, and
    /// take sequence numbers).
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hex hash of the last frame: anchor it elsewhere to detect a cut at
    /// the end later.
    pub head: Option<String>,
    /// The first frame's `prev` when earlier segments were retired (the
    /// chain is checked from there).
    pub anchored_after_retirement: bool,
    /// The newest segment ends in a partial frame (being written now, or
    /// torn by a crash that start-up recovery will cut).
    pub incomplete_tail: bool,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Hex public key the checkpoints were checked against, and whether it
    /// was given (pinned) rather than taken from the trail itself.
    pub key: Option<String>,
    pub key_pinned: bool,
    pub last_checkpoint: Option<LastCheckpoint>,
    /// Frames after the last checkpoint (or in all, without one): a cut
    /// among them shows only against an external anchor.
    pub unsigned_tail: u64,
    /// Retirement notes found, oldest first: what retention removed.
    pub retired: Vec<Retired>,
    /// Heads given with `Expect::heads` that matched.
    pub heads_matched: Vec<u64>,
    /// Things worth saying that are no problem.
    pub notes: Vec<String>,
    pub problem: Option<Problem>,
}

impl Report {
    /// The report as JSON (the admin API's `/audit/verify`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.problem.is_none(),
            "segments": self.segments,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "incomplete_tail": self.incomplete_tail,
            "checkpoints": self.checkpoints,
            "key": self.key,
            "key_pinned": self.key_pinned,
            "last_checkpoint": self.last_checkpoint.as_ref().map(|c| serde_json::json!({
                "seq": c.seq,
                "covers_seq": c.checkpoint.seq,
                "head": c.checkpoint.head,
                "time": super::record::rfc3339_us(c.checkpoint.time_us),
                "reason": c.checkpoint.reason,
            })),
            "unsigned_tail": self.unsigned_tail,
            "retired": self.retired.iter().map(|r| {
                let (a, b) = r.range();
                serde_json::json!({
                    "first_seq": a,
                    "last_seq": b,
                    "segments": r.segments.len(),
                    "bytes": r.bytes,
                    "reason": r.reason,
                    "time": super::record::rfc3339_us(r.time_us),
                })
            }).collect::<Vec<_>>(),
            "notes": self.notes,
            "problem": self.problem.as_ref().map(|p| p.to_string()),
        })
    }

    /// The retired range the notes account for: frames before this one.
    pub fn retired_before(&self) -> Option<u64> {
        self.retired.iter().map(|r| r.kept_from).max()
    }
}

/// [`verify_with`] nothing expected from outside.
pub fn verify(dir: &Path) -> std::io::Result<Report> {
    verify_with(dir, &Expect::default())
}

/// Checks every segment header, frame CRC, sequence number, chain link,
/// record encoding and checkpoint signature, in order; stops at the first
/// problem. Then: a start of the trail that no retirement note accounts
/// for, more unsigned frames after the last checkpoint than it promised,
/// and any externally anchored head that is missing or differs.
pub fn verify_with(dir: &Path, expect: &Expect) -> std::io::Result<Report> {
    let segments = segment::list(dir)?;
    let mut report = Report {
        segments: segments.len(),
        key: expect.keys.first().map(hex::encode),
        key_pinned: !expect.keys.is_empty(),
        ..Default::default()
    };
    let mut walk = Walk {
        expected: None,
        expect,
        seen_heads: Vec::new(),
    };
    for (i, seg) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        if let Err(p) = verify_segment(seg, newest, &mut walk, &mut report)? {
            report.problem = Some(p);
            return Ok(report);
        }
    }
    if let Some((next, head)) = walk.expected {
        report.last_seq = Some(next - 1);
        report.head = Some(hex::encode(head));
    }
    report.problem = after_walk(&segments, &walk, &mut report);
    Ok(report)
}

struct Walk<'e> {
    /// (next sequence, hash of the last frame).
    expected: Option<(u64, Hash)>,
    expect: &'e Expect,
    /// (seq, hash) of frames an anchor names, as found.
    seen_heads: Vec<(u64, Hash)>,
}

/// The checks that need the whole trail read.
fn after_walk(segments: &[Segment], walk: &Walk<'_>, report: &mut Report) -> Option<Problem> {
    let oldest = segments.first()?;
    let whole = |why: String, seq: u64| {
        Some(Problem {
            segment: oldest.path.clone(),
            offset: 0,
            seq,
            why,
        })
    };
    // Retirement: a trail that does not start at 1 must have a note saying
    // retention removed what is missing.
    if let Some(first) = report.first_seq
        && first > 1
    {
        match report.retired_before() {
            None => {
                return whole(
                    format!(
                        "records 1..={} are missing and no retirement note accounts for them: they were deleted, not retired by retention",
                        first - 1
                    ),
                    1,
                );
            }
            Some(kept_from) if kept_from < first => {
                return whole(
                    format!(
                        "retention retired records before {kept_from}, but records {kept_from}..={} are missing too: they were deleted, not retired",
                        first - 1
                    ),
                    kept_from,
                );
            }
            Some(_) => {}
        }
    }
    // Truncation: anchored heads must be in the trail as anchored.
    for &(seq, hash) in &walk.expect.heads {
        match walk.seen_heads.iter().find(|(s, _)| *s == seq) {
            Some((_, h)) if *h == hash => report.heads_matched.push(seq),
            Some((_, h)) => {
                return whole(
                    format!(
                        "record {seq} has hash {}, but the anchored head says {}: the trail was rewritten",
                        hex::encode(h),
                        hex::encode(hash)
                    ),
                    seq,
                );
            }
            None if report.last_seq.is_none_or(|l| seq > l) => {
                return whole(
                    format!(
                        "the trail ends at {}, but record {seq} was anchored: records after {} were cut off",
                        report.last_seq.unwrap_or(0),
                        report.last_seq.unwrap_or(0)
                    ),
                    report.last_seq.unwrap_or(0) + 1,
                );
            }
            None => report.notes.push(format!(
                "anchored record {seq} was retired; it cannot be checked"
            )),
        }
    }
    // Checkpoints: the last one promised the next within its count.
    match &report.last_checkpoint {
        Some(last) if report.unsigned_tail > last.checkpoint.every_records => {
            return whole(
                format!(
                    "{} frames follow the last checkpoint (record {}), which promised the next within {}: later checkpoints were removed, so records after {} were cut or rewritten",
                    report.unsigned_tail, last.seq, last.checkpoint.every_records, last.seq
                ),
                last.seq + 1,
            );
        }
        None if report.key_pinned
            && walk
                .expect
                .max_unsigned
                .is_some_and(|m| report.unsigned_tail > m) =>
        {
            return whole(
                format!(
                    "{} frames and no checkpoint signed by the node key: the checkpoints were stripped",
                    report.unsigned_tail
                ),
                report.first_seq.unwrap_or(1),
            );
        }
        _ => {}
    }
    None
}

fn verify_segment(
    seg: &Segment,
    newest: bool,
    walk: &mut Walk<'_>,
    report: &mut Report,
) -> std::io::Result<Result<(), Problem>> {
    let buf = segment::read_aligned(&seg.path)?;
    if let Err(p) = check_start(seg, &buf, walk.expected) {
        return Ok(Err(p));
    }
    let mut at = segment::HEADER;
    while at < buf.len() {
        let want_seq = walk.expected.map_or(seg.first_seq, |(n, _)| n);
        let f = match frame::read(&buf, at) {
            Ok(f) => f,
            Err(Bad::Short) if newest => {
                report.incomplete_tail = true;
                return Ok(Ok(()));
            }
            Err(bad) => return Ok(Err(problem(seg, at, want_seq, bad.to_string()))),
        };
        if let Err(p) = check_link(seg, at, &f, walk.expected, report) {
            return Ok(Err(p));
        }
        let seq = f.header.seq;
        let checked = match segment::content(f.payload, f.header.schema) {
            Err(why) => Err(crate::error_chain(&why)),
            Ok(segment::Content::Record(_)) => {
                report.records += 1;
                report.unsigned_tail += 1;
                Ok(())
            }
            Ok(segment::Content::Retired(note)) => {
                report.retired.push(note);
                report.unsigned_tail += 1;
                Ok(())
            }
            Ok(segment::Content::Checkpoint(cp)) => {
                check_checkpoint(cp, seq, &f.header.prev, walk, report)
            }
        };
        if let Err(why) = checked {
            return Ok(Err(problem(seg, at, seq, why)));
        }
        let hash = f.hash();
        if walk.expect.heads.iter().any(|(s, _)| *s == seq) {
            walk.seen_heads.push((seq, hash));
        }
        walk.expected = Some((seq + 1, hash));
        at = f.next;
    }
    Ok(Ok(()))
}

/// A problem found at `offset` of `seg`, at record `seq`.
fn problem(seg: &Segment, offset: usize, seq: u64, why: String) -> Problem {
    Problem {
        segment: seg.path.clone(),
        offset: offset as u64,
        seq,
        why,
    }
}

/// The segment's header names the record its file name says it starts
/// at, and that is the record after the previous segment's last.
fn check_start(seg: &Segment, buf: &[u8], expected: Option<(u64, Hash)>) -> Result<(), Problem> {
    match segment::parse_header(buf) {
        Ok((_, first)) if first == seg.first_seq => {}
        Ok((_, first)) => {
            return Err(problem(
                seg,
                0,
                seg.first_seq,
                format!(
                    "the segment header says it starts at {first}, its name says {}",
                    seg.first_seq
                ),
            ));
        }
        Err(why) => return Err(problem(seg, 0, seg.first_seq, crate::error_chain(&why))),
    }
    if let Some((next, _)) = expected
        && seg.first_seq != next
    {
        return Err(problem(
            seg,
            0,
            next,
            format!(
                "records {next}..{} are missing (the segment starts at {})",
                seg.first_seq - 1,
                seg.first_seq
            ),
        ));
    }
    Ok(())
}

/// The frame at `at` is the record expected there, chained to the one
/// before; the first one read anchors the walk (record 1 names none
/// before it).
fn check_link(
    seg: &Segment,
    at: usize,
    f: &frame::Frame<'_>,
    expected: Option<(u64, Hash)>,
    report: &mut Report,
) -> Result<(), Problem> {
    match expected {
        None => {
            if f.header.seq != seg.first_seq {
                return Err(problem(
                    seg,
                    at,
                    seg.first_seq,
                    format!(
                        "the first record is {}, expected {}",
                        f.header.seq, seg.first_seq
                    ),
                ));
            }
            report.first_seq = Some(f.header.seq);
            report.anchored_after_retirement = f.header.prev != [0; 32];
            if f.header.seq == 1 && f.header.prev != [0; 32] {
                return Err(problem(
                    seg,
                    at,
                    1,
                    "the first record names a record before it".into(),
                ));
            }
        }
        Some((next, prev)) => {
            if f.header.seq != next {
                return Err(problem(
                    seg,
                    at,
                    next,
                    format!(
                        "found record {} where record {next} belongs (removed or reordered)",
                        f.header.seq
                    ),
                ));
            }
            if f.header.prev != prev {
                return Err(problem(
                    seg,
                    at,
                    next,
                    "the hash chain breaks here (the record before it was changed, removed or reordered)".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Checkpoint frame `seq` signs the chain's head where it stands (`prev`,
/// its own frame's link), with the node's key: the first checkpoint's, or
/// one the caller pinned.
fn check_checkpoint(
    cp: Checkpoint,
    seq: u64,
    prev: &Hash,
    walk: &Walk<'_>,
    report: &mut Report,
) -> Result<(), String> {
    if cp.seq + 1 != seq || cp.head != hex::encode(prev) {
        return Err(format!(
            "checkpoint {seq} signs record {} with head {}, but the chain has {} there: the records before it were rewritten",
            cp.seq,
            cp.head,
            hex::encode(prev)
        ));
    }
    let key = match (&report.key, cp.public_key()) {
        (Some(k), _) => hex::decode(k)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok()),
        (None, Some(k)) => {
            report.key = Some(hex::encode(k));
            Some(k)
        }
        (None, None) => None,
    };
    let checked = match key {
        Some(k) if walk.expect.keys.len() > 1 => walk
            .expect
            .keys
            .iter()
            .find(|k| cp.public_key().as_ref() == Some(*k))
            .map_or_else(|| cp.verify(&k), |k| cp.verify(k)),
        Some(k) => cp.verify(&k),
        None => Err(super::checkpoint::CheckpointError::NoValidKey),
    };
    if let Err(why) = checked {
        return Err(format!(
            "checkpoint {seq} (over record {}): {}",
            cp.seq,
            crate::error_chain(&why)
        ));
    }
    report.checkpoints += 1;
    report.unsigned_tail = 0;
    report.last_checkpoint = Some(LastCheckpoint {
        seq,
        checkpoint: cp,
    });
    Ok(())
}
