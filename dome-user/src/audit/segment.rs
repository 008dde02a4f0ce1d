//! Segment files: a 64-byte header, then frames (see `frame`). Named by the
//! sequence number of their first frame, so listing the folder gives the
//! order. A sealed segment has a small JSON index beside it (`.idx`: its
//! time range, sequence range and the names it holds) that lets a query
//! skip it without reading it.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use serde::{Deserialize, Serialize};

use super::frame::{self, Hash};
use super::record::ArchivedRecord;

pub const MAGIC: [u8; 8] = *b"DOMEAUDT";
pub const FORMAT: u32 = 1;
pub const HEADER: usize = 64;

/// Names an index keeps per field before it gives up listing them (and a
/// query can no longer skip the segment by that field).
const INDEX_NAMES: usize = 1024;

/// A segment file in the folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
}

impl Segment {
    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension("idx")
    }

    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

pub fn path_for(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The folder's segments, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "seg")
            && let Some(first_seq) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(Segment { first_seq, path });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

pub fn header(created_us: u64, first_seq: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&created_us.to_le_bytes());
    h[24..32].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// Why a segment's header or a frame's payload does not read: what
/// recovery and `verify` report of it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the segment header is cut short")]
    HeaderCut,
    #[error("not an audit segment (bad magic)")]
    BadMagic,
    #[error("unknown segment format {0}")]
    Format(u32),
    #[error("unknown record schema {0}")]
    Schema(u16),
    /// rkyv's check failed. Its words are in the text rather than the
    /// source: rancor's error lists itself again as its own source.
    #[error("the record does not decode: {0}")]
    Record(rkyv::rancor::Error),
    /// A checkpoint or a retirement note that does not decode.
    #[error(transparent)]
    Note(#[from] super::checkpoint::CheckpointError),
}

/// (created µs, first sequence number) from a segment header.
pub fn parse_header(b: &[u8]) -> Result<(u64, u64), DecodeError> {
    if b.len() < HEADER {
        return Err(DecodeError::HeaderCut);
    }
    if b[..8] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let format = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(DecodeError::Format(format));
    }
    Ok((
        u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
    ))
}

/// A whole segment file in a 16-byte aligned buffer, so its payloads can
/// be read in place.
pub fn read_aligned(path: &Path) -> std::io::Result<AlignedVec> {
    let mut buf = AlignedVec::<16>::new();
    read_aligned_into(path, &mut buf)?;
    Ok(buf)
}

/// [`read_aligned`] into a buffer kept across segments (a query reads many:
/// this spares a fresh allocation, its page faults and its zeroing each).
pub fn read_aligned_into(path: &Path, buf: &mut AlignedVec) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len() as usize;
    // Only growth is zero-filled; what is there is read over.
    buf.resize(len, 0);
    let mut read = 0;
    while read < len {
        match f.read(&mut buf[read..])? {
            0 => break,
            n => read += n,
        }
    }
    buf.resize(read, 0);
    Ok(())
}

/// The record in a frame's payload, checked (a reader never trusts bytes
/// on disk to be well formed, CRC or not).
pub fn record(payload: &[u8], schema: u16) -> Result<&ArchivedRecord<'static>, DecodeError> {
    if schema != super::record::SCHEMA {
        return Err(DecodeError::Schema(schema));
    }
    rkyv::access::<ArchivedRecord<'static>, rkyv::rancor::Error>(payload)
        .map_err(DecodeError::Record)
}

/// What a good frame carries.
pub enum Content<'b> {
    Record(&'b ArchivedRecord<'static>),
    Checkpoint(super::checkpoint::Checkpoint),
    Retired(super::checkpoint::Retired),
}

/// A frame's payload by its schema, checked.
pub fn content(payload: &[u8], schema: u16) -> Result<Content<'_>, DecodeError> {
    use super::checkpoint::{CHECKPOINT, Checkpoint, RETIRED, Retired};
    Ok(match schema {
        CHECKPOINT => Content::Checkpoint(Checkpoint::from_payload(payload)?),
        RETIRED => Content::Retired(Retired::from_payload(payload)?),
        _ => Content::Record(record(payload, schema)?),
    })
}

/// What a segment holds, for skipping it in queries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Frames: records, checkpoints and retirement notes.
    pub count: u64,
    /// Call records among them (the time range and names are theirs).
    #[serde(default)]
    pub records: u64,
    pub min_time_us: u64,
    pub max_time_us: u64,
    /// Hex SHA-256 of the last frame (the chain's link to the next segment).
    pub last_hash: String,
    /// The names present, or `None` when there were too many to list.
    pub tenants: Option<BTreeSet<String>>,
    pub agents: Option<BTreeSet<String>>,
    pub users: Option<BTreeSet<String>>,
    pub names: Option<BTreeSet<String>>,
    /// Bit `d` set: some record has decision `d`.
    pub decisions: u8,
}

fn note(set: &mut Option<BTreeSet<String>>, v: &str) {
    if let Some(s) = set {
        if s.contains(v) {
            return;
        }
        if s.len() >= INDEX_NAMES {
            *set = None;
        } else {
            s.insert(v.to_string());
        }
    }
}

impl Index {
    pub fn new() -> Index {
        Index {
            min_time_us: u64::MAX,
            tenants: Some(BTreeSet::new()),
            agents: Some(BTreeSet::new()),
            users: Some(BTreeSet::new()),
            names: Some(BTreeSet::new()),
            ..Default::default()
        }
    }

    /// A frame that is no call record (a checkpoint, a retirement note):
    /// it extends the chain, not the time range or the names.
    pub fn add_frame(&mut self, seq: u64, hash: &Hash) {
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.count += 1;
        self.last_seq = seq;
        self.last_hash = hex::encode(hash);
    }

    pub fn add(&mut self, seq: u64, hash: &Hash, r: &ArchivedRecord<'_>) {
        self.add_frame(seq, hash);
        self.records += 1;
        let t = r.time_us();
        self.min_time_us = self.min_time_us.min(t);
        self.max_time_us = self.max_time_us.max(t);
        note(&mut self.tenants, &r.tenant);
        note(&mut self.agents, &r.agent);
        note(&mut self.users, &r.user);
        note(&mut self.names, &r.name);
        self.decisions |= 1 << (r.decision & 7);
    }

    pub fn load(seg: &Segment) -> Option<Index> {
        let text = std::fs::read_to_string(seg.index_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Written beside the sealed segment, via a temporary file so a reader
    /// never sees half of it.
    pub fn store(&self, seg: &Segment) -> std::io::Result<()> {
        let tmp = seg.path.with_extension("idx.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, seg.index_path())
    }
}

/// The first frame at or after `from` (at a 16-byte boundary) that reads
/// whole with a good CRC: past damage, where reading can pick up again.
pub fn next_frame(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from.div_ceil(frame::ALIGN) * frame::ALIGN;
    while at + frame::HEADER <= buf.len() {
        if buf[at..at + 4] == frame::MAGIC && frame::read(buf, at).is_ok() {
            return Some(at);
        }
        at += frame::ALIGN;
    }
    None
}

/// The last good frame at or after `from`: (its sequence number + 1, its
/// hash), or `None` when nothing good follows (a torn tail).
fn last_good_after(buf: &[u8], from: usize) -> Option<(u64, Hash)> {
    let mut found = None;
    let mut at = from;
    while let Some(start) = next_frame(buf, at) {
        let f = frame::read(buf, start).ok()?;
        found = Some((f.header.seq.saturating_add(1), f.hash()));
        at = f.next;
    }
    found
}

/// What start-up recovery found at the end of the newest segment.
#[derive(Debug, Default)]
pub struct Tail {
    /// The sequence number the next frame gets.
    pub next_seq: u64,
    /// The last good frame's hash (the next frame's `prev`).
    pub head: Hash,
    /// Bytes cut from the end (a torn write), and why the first of them
    /// did not read as a frame.
    pub removed_bytes: u64,
    pub removed_why: Option<String>,
    /// The newest segment's index, rebuilt.
    pub index: Index,
    /// The newest segment's size after recovery.
    pub len: u64,
    /// Damage that is not a torn write (good records follow it): the
    /// segment is left as it is, for `verify` to name, and the trail goes
    /// on in a new segment after the last good record.
    pub damaged: Option<String>,
    pub created_us: u64,
}

/// Scans the newest segment, keeps every frame that reads and links, and
/// truncates what follows (a write a crash cut short). `expected` is the
/// chain as the previous segment left it.
pub fn recover(seg: &Segment, expected: Option<(u64, Hash)>) -> std::io::Result<Tail> {
    let buf = read_aligned(&seg.path)?;
    let mut tail = Tail {
        next_seq: seg.first_seq,
        index: Index::new(),
        ..Default::default()
    };
    if let Some((next, head)) = expected {
        tail.next_seq = next;
        tail.head = head;
    }
    let good_header = parse_header(&buf);
    let mut at = HEADER;
    match good_header {
        Ok((created, _)) => tail.created_us = created,
        Err(why) => {
            if let Some((next, head)) = last_good_after(&buf, HEADER) {
                tail.damaged = Some(format!("segment header: {}", crate::error_chain(&why)));
                tail.next_seq = tail.next_seq.max(next);
                tail.head = head;
                tail.len = buf.len() as u64;
                return Ok(tail);
            }
            // A header torn at creation: nothing after it was written.
            let mut f = std::fs::OpenOptions::new().write(true).open(&seg.path)?;
            f.set_len(0)?;
            f.write_all(&header(crate::clock::unix_us(), seg.first_seq))?;
            f.sync_all()?;
            tail.removed_bytes = buf.len() as u64;
            tail.removed_why = Some(crate::error_chain(&why));
            tail.len = HEADER as u64;
            tail.created_us = crate::clock::unix_us();
            return Ok(tail);
        }
    }
    let mut first = true;
    while at < buf.len() {
        let f = match frame::read(&buf, at) {
            Ok(f) => f,
            Err(bad) => {
                tail.removed_why = Some(bad.to_string());
                break;
            }
        };
        let links = if first && expected.is_none() {
            // The oldest segment left (earlier ones retired): its first
            // frame anchors the chain.
            f.header.seq == seg.first_seq
        } else {
            f.header.seq == tail.next_seq && f.header.prev == tail.head
        };
        if !links {
            tail.removed_why = Some(format!(
                "frame {} does not follow the chain (expected sequence {})",
                f.header.seq, tail.next_seq
            ));
            break;
        }
        let hash = f.hash();
        match content(f.payload, f.header.schema) {
            Ok(Content::Record(r)) => tail.index.add(f.header.seq, &hash, r),
            Ok(_) => tail.index.add_frame(f.header.seq, &hash),
            Err(_) => {
                tail.removed_why = Some(format!("frame {} does not decode", f.header.seq));
                break;
            }
        }
        tail.head = hash;
        // A made-up sequence of u64::MAX must not overflow (found by
        // fuzzing `recover`; it panicked in a debug build).
        tail.next_seq = f.header.seq.saturating_add(1);
        at = f.next;
        first = false;
    }
    if at < buf.len()
        && let Some((next, head)) = last_good_after(&buf, at + frame::ALIGN)
    {
        // Good records after the bad spot: damage, not a torn write. Cutting
        // would destroy them (and the evidence).
        tail.damaged = Some(format!(
            "at byte {at}: {}",
            tail.removed_why.take().unwrap_or_default()
        ));
        tail.next_seq = tail.next_seq.max(next);
        tail.head = head;
        tail.len = buf.len() as u64;
        return Ok(tail);
    }
    if at < buf.len() {
        tail.removed_bytes = (buf.len() - at) as u64;
        let f = std::fs::OpenOptions::new().write(true).open(&seg.path)?;
        f.set_len(at as u64)?;
        f.sync_all()?;
    } else {
        tail.removed_why = None;
    }
    tail.len = at as u64;
    Ok(tail)
}

/// The chain as a sealed segment left it: (next sequence, last hash), from
/// its index or, without one, by reading it.
pub fn chain_end(seg: &Segment) -> std::io::Result<Option<(u64, Hash)>> {
    if let Some(ix) = Index::load(seg)
        && let Ok(h) = hex::decode(&ix.last_hash)
        && let Ok(h) = <Hash>::try_from(h.as_slice())
        && ix.count > 0
    {
        return Ok(Some((ix.last_seq.saturating_add(1), h)));
    }
    let buf = read_aligned(&seg.path)?;
    let mut at = HEADER;
    let mut end = None;
    while let Ok(f) = frame::read(&buf, at) {
        end = Some((f.header.seq.saturating_add(1), f.hash()));
        at = f.next;
    }
    Ok(end)
}

/// Opens `seg` for appending at `len`.
pub fn open_append(seg: &Segment, len: u64) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new().write(true).open(&seg.path)?;
    f.seek(SeekFrom::Start(len))?;
    Ok(f)
}

/// Creates a new segment starting at `first_seq` (its header on disk
/// before any frame).
pub fn create(
    dir: &Path,
    first_seq: u64,
    created_us: u64,
) -> std::io::Result<(Segment, std::fs::File)> {
    let seg = Segment {
        first_seq,
        path: path_for(dir, first_seq),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&seg.path)?;
    f.write_all(&header(created_us, first_seq))?;
    f.sync_all()?;
    // The new name must survive a crash too.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((seg, f))
}
