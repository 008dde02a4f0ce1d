//! Reading the trail: filtered queries (skipping segments whose index rules
//! them out) and the checkpoints' export. Verification is `verify`,
//! re-exported here.

use std::ops::ControlFlow;
use std::path::Path;

use super::checkpoint::{CHECKPOINT, Checkpoint, RETIRED};
use super::frame;
use super::record::{ArchivedRecord, Decision, Kind};
use super::segment::{self, Index};

/// A query the caller got wrong: a filter, time, limit or order that does
/// not read (the admin API answers 400 with it, `dome audit` exits 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("kind `{0}`: expected tool, prompt, resource or completion")]
    Kind(String),
    #[error("decision `{0}`: expected allow, deny, over_budget or error")]
    Decision(String),
    #[error(
        "time `{0}`: expected RFC 3339 (2026-11-25T10:00:00Z), Unix seconds, or an age (30m, 2h, 7d)"
    )]
    Time(String),
    #[error("unknown filter `{0}`")]
    UnknownFilter(String),
    #[error("limit `{0}`: not a number")]
    Limit(String),
    #[error("order `{0}`: expected oldest or newest")]
    Order(String),
}

/// Which records a query wants. Every field set must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub user: Option<String>,
    /// Tool (prompt, resource) name; a trailing `*` matches a prefix.
    pub name: Option<String>,
    pub kind: Option<Kind>,
    pub decision: Option<Decision>,
    pub call_id: Option<String>,
    /// Unix µs, inclusive.
    pub since_us: Option<u64>,
    /// Unix µs, exclusive.
    pub until_us: Option<u64>,
    /// Text the intent contains (ASCII case ignored).
    pub intent: Option<String>,
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    let Some(&first) = n.first() else {
        return true;
    };
    if h.len() < n.len() {
        return false;
    }
    let first = first.to_ascii_lowercase();
    // Only where the first byte matches is the rest compared.
    (0..=h.len() - n.len()).any(|i| {
        h[i].to_ascii_lowercase() == first && h[i + 1..i + n.len()].eq_ignore_ascii_case(&n[1..])
    })
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl Filter {
    /// By time alone, from a frame header (before decoding the record).
    pub fn time_ok(&self, t: u64) -> bool {
        self.since_us.is_none_or(|s| t >= s) && self.until_us.is_none_or(|u| t < u)
    }

    pub fn matches(&self, r: &ArchivedRecord<'_>) -> bool {
        self.time_ok(r.time_us())
            && self.tenant.as_deref().is_none_or(|t| *r.tenant == *t)
            && self.agent.as_deref().is_none_or(|a| *r.agent == *a)
            && self.user.as_deref().is_none_or(|u| *r.user == *u)
            && self
                .name
                .as_deref()
                .is_none_or(|p| name_matches(p, &r.name))
            && self.kind.is_none_or(|k| r.kind() == k)
            && self.decision.is_none_or(|d| r.decision() == d)
            && self.call_id.as_deref().is_none_or(|c| *r.call_id == *c)
            && self
                .intent
                .as_deref()
                .is_none_or(|i| contains_ignore_case(&r.intent, i))
    }

    /// False when the segment's index shows no record in it can match.
    pub fn may_match(&self, ix: &Index) -> bool {
        if ix.count == 0 {
            return false;
        }
        let listed =
            |set: &Option<std::collections::BTreeSet<String>>, want: &Option<String>| match (
                set, want,
            ) {
                (Some(set), Some(w)) => set.contains(w),
                _ => true,
            };
        let names_ok = match (&ix.names, &self.name) {
            (Some(set), Some(p)) => set.iter().any(|n| name_matches(p, n)),
            _ => true,
        };
        self.since_us.is_none_or(|s| ix.max_time_us >= s)
            && self.until_us.is_none_or(|u| ix.min_time_us < u)
            && listed(&ix.tenants, &self.tenant)
            && listed(&ix.agents, &self.agent)
            && listed(&ix.users, &self.user)
            && names_ok
            && self
                .decision
                .is_none_or(|d| ix.decisions & (1 << (d as u8)) != 0)
    }

    /// From `key=value` pairs (the admin API's query string, `dome audit
    /// query`'s flags). Times are RFC 3339 (UTC), Unix seconds, or an age
    /// like `15m`, `2h`, `7d` (meaning that long before `now_us`).
    pub fn set(&mut self, key: &str, value: &str, now_us: u64) -> Result<(), QueryError> {
        let v = Some(value.to_string());
        match key {
            "tenant" => self.tenant = v,
            "agent" => self.agent = v,
            "user" => self.user = v,
            "tool" | "name" => self.name = v,
            "call_id" => self.call_id = v,
            "intent" => self.intent = v,
            "kind" => {
                self.kind = Some(
                    Kind::from_name(value).ok_or_else(|| QueryError::Kind(value.to_string()))?,
                )
            }
            "decision" => {
                self.decision = Some(
                    Decision::from_name(value)
                        .ok_or_else(|| QueryError::Decision(value.to_string()))?,
                )
            }
            "since" => self.since_us = Some(parse_time(value, now_us)?),
            "until" => self.until_us = Some(parse_time(value, now_us)?),
            other => return Err(QueryError::UnknownFilter(other.to_string())),
        }
        Ok(())
    }
}

/// Unix µs from RFC 3339, Unix seconds or an age before `now_us`.
pub fn parse_time(s: &str, now_us: u64) -> Result<u64, QueryError> {
    // An age older than the epoch is the epoch; a number too large for µs
    // is no time at all (checked: it would wrap, or panic in a debug build).
    let age = |n: &str, unit: u64| -> Option<u64> {
        let back = n.parse::<u64>().ok()?.checked_mul(unit * 1_000_000)?;
        Some(now_us.saturating_sub(back))
    };
    let parsed = if let Some(n) = s.strip_suffix('s') {
        age(n, 1)
    } else if let Some(n) = s.strip_suffix('m') {
        age(n, 60)
    } else if let Some(n) = s.strip_suffix('h') {
        age(n, 3600)
    } else if let Some(n) = s.strip_suffix('d') {
        age(n, 86_400)
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().ok().and_then(|n| n.checked_mul(1_000_000))
    } else {
        super::record::parse_rfc3339(s).and_then(|n| n.checked_mul(1_000_000))
    };
    parsed.ok_or_else(|| QueryError::Time(s.to_string()))
}

/// What a scan did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    pub segments_read: usize,
    pub segments_skipped: usize,
    pub records_scanned: u64,
    pub matched: u64,
    /// Frames that did not read (a torn or damaged tail; `verify` says more).
    pub unreadable: u64,
}

/// Calls `each` with every matching record, oldest first (or newest first
/// with `newest_first`), until it breaks.
pub fn scan(
    dir: &Path,
    filter: &Filter,
    newest_first: bool,
    mut each: impl FnMut(u64, &ArchivedRecord<'_>) -> ControlFlow<()>,
) -> std::io::Result<Scanned> {
    let mut segments = segment::list(dir)?;
    if newest_first {
        segments.reverse();
    }
    let mut out = Scanned::default();
    let mut hits: Vec<(u64, usize)> = Vec::new();
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    for seg in &segments {
        if let Some(ix) = Index::load(seg)
            && !filter.may_match(&ix)
        {
            out.segments_skipped += 1;
            continue;
        }
        match segment::read_aligned_into(&seg.path, &mut buf) {
            Ok(()) => {}
            // Retired while we listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        out.segments_read += 1;
        let mut at = segment::HEADER;
        hits.clear();
        while at < buf.len() {
            let f = match frame::read(&buf, at) {
                Ok(f) => f,
                Err(_) => {
                    // Damage (or a record being written): read on from the
                    // next good frame, if any.
                    out.unreadable += 1;
                    match segment::next_frame(&buf, at + frame::ALIGN) {
                        Some(next) => {
                            at = next;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            at = f.next;
            if matches!(f.header.schema, CHECKPOINT | RETIRED) {
                // Not a call: checkpoints and retirement notes.
                continue;
            }
            out.records_scanned += 1;
            if !filter.time_ok(f.header.time_us) {
                continue;
            }
            let Ok(r) = segment::record(f.payload, f.header.schema) else {
                out.unreadable += 1;
                continue;
            };
            if filter.matches(r) {
                if newest_first {
                    hits.push((
                        f.header.seq,
                        at - frame::padded(f.payload.len()) - frame::HEADER,
                    ));
                    continue;
                }
                out.matched += 1;
                if each(f.header.seq, r).is_break() {
                    return Ok(out);
                }
            }
        }
        for &(seq, off) in hits.iter().rev() {
            let Ok(f) = frame::read(&buf, off) else {
                continue;
            };
            let Ok(r) = segment::record(f.payload, f.header.schema) else {
                continue;
            };
            out.matched += 1;
            if each(seq, r).is_break() {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

pub use super::verify::*;

/// Every checkpoint in the trail, oldest first, with its own frame's
/// sequence number (for export: anchor them elsewhere). Damaged frames
/// are skipped (`verify` names them).
pub fn checkpoints(
    dir: &Path,
    mut each: impl FnMut(u64, Checkpoint) -> ControlFlow<()>,
) -> std::io::Result<usize> {
    let mut n = 0;
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    for seg in segment::list(dir)? {
        match segment::read_aligned_into(&seg.path, &mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let mut at = segment::HEADER;
        while at < buf.len() {
            let Ok(f) = frame::read(&buf, at) else {
                match segment::next_frame(&buf, at + frame::ALIGN) {
                    Some(next) => {
                        at = next;
                        continue;
                    }
                    None => break,
                }
            };
            at = f.next;
            if f.header.schema == CHECKPOINT
                && let Ok(cp) = Checkpoint::from_payload(f.payload)
            {
                n += 1;
                if each(f.header.seq, cp).is_break() {
                    return Ok(n);
                }
            }
        }
    }
    Ok(n)
}

/// A checkpoint as exported: its fields, its own frame's sequence number
/// and a readable time.
pub fn checkpoint_json(seq: u64, cp: &Checkpoint) -> serde_json::Value {
    serde_json::json!({
        "seq": seq,
        "covers_seq": cp.seq,
        "head": cp.head,
        "time": super::record::rfc3339_us(cp.time_us),
        "time_us": cp.time_us,
        "reason": cp.reason,
        "node": cp.node,
        "every_records": cp.every_records,
        "every_s": cp.every_s,
        "key": cp.key,
        "sig": cp.sig,
    })
}
