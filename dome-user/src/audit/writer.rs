//! The audit trail's writer thread: it drains the ring in batches,
//! frames and chains the records, appends them to the current segment,
//! syncs as `fsync` says and publishes the durable watermark; it signs
//! checkpoints and retires old segments as retention says.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::checkpoint::{self, Reason, Retired, RetiredSegment};
use super::config::{Fsync, Settings};
use super::frame::{self, Hash};
use super::record::{ArchivedRecord, SCHEMA};
use super::segment::{self, Index, Segment};
use super::trail::*;

pub(super) struct Writer {
    pub(super) trail: Arc<Trail>,
    pub(super) active: Segment,
    pub(super) file: std::fs::File,
    pub(super) len: u64,
    pub(super) created: Instant,
    pub(super) next_seq: u64,
    pub(super) head: Hash,
    pub(super) index: Index,
    /// Frames framed but not yet written.
    pub(super) out: Vec<u8>,
    /// Tickets written since the last sync.
    pub(super) written: Vec<u64>,
    /// Durable tickets above the watermark (pushed out of order).
    pub(super) early: BinaryHeap<Reverse<u64>>,
    pub(super) unsynced_since: Option<Instant>,
    pub(super) last_sync: Instant,
    pub(super) last_retention: Instant,
    /// Frames since the last checkpoint, and when the first of them was
    /// framed (Unix µs).
    pub(super) unsigned: u64,
    pub(super) unsigned_since_us: Option<u64>,
    /// The frame count the last checkpoint promised the next one within.
    pub(super) promised: u64,
}

/// Most bytes framed before they are written out.
const BATCH_BYTES: usize = 1 << 20;

impl Writer {
    pub(super) fn run(&mut self) {
        // Passes in a row that found the ring empty: two mean a whole
        // commit interval went by with nothing to write.
        let mut empty_passes = 0u32;
        loop {
            let settings = self.trail.settings.load_full();
            let mut drained = 0usize;
            // A batch ends where the segment is due to rotate, so segments
            // keep close to their configured size.
            while self.out.len() < BATCH_BYTES
                && self.len + (self.out.len() as u64) < settings.segment_bytes
                && let Some(e) = self.trail.ring.pop()
            {
                self.frame(e, &settings);
                drained += 1;
            }
            if self.trail.key.is_some()
                && checkpoint::due(
                    self.unsigned,
                    self.unsigned_since_us,
                    self.promised.min(settings.checkpoint_records),
                    settings.checkpoint_s,
                    crate::clock::unix_us(),
                )
            {
                self.checkpoint(Reason::Periodic, &settings);
            }
            if drained > 0 {
                self.trail.reserved.fetch_sub(drained, Ordering::AcqRel);
            }
            if !self.out.is_empty() {
                self.write_out();
            }
            let due = match settings.fsync {
                Fsync::Always => self.unsynced_since.is_some(),
                // Group commit: at most one sync per `commit`; a record
                // written after a quiet spell is synced at once.
                Fsync::Batch => {
                    self.unsynced_since.is_some() && self.last_sync.elapsed() >= settings.commit
                }
                Fsync::Off => false,
            };
            if due || (settings.fsync == Fsync::Off && !self.written.is_empty()) {
                self.sync(settings.fsync != Fsync::Off);
            }
            let stopping = self.trail.stop.load(Ordering::SeqCst);
            if stopping && self.trail.ring.is_empty() {
                if self.unsigned > 0 {
                    // A clean shutdown leaves the trail ending signed.
                    self.checkpoint(Reason::Shutdown, &settings);
                }
                if !self.out.is_empty() {
                    self.write_out();
                }
                self.sync(true);
                return;
            }
            if (self.len >= settings.segment_bytes
                || self.created.elapsed() >= settings.segment_age)
                && self.index.records > 0
            {
                self.rotate();
                self.retire(&settings);
            }
            if self.last_retention.elapsed() >= Duration::from_secs(10) {
                self.retire(&settings);
            }
            empty_passes = if drained == 0 { empty_passes + 1 } else { 0 };
            if drained == 0 && self.out.is_empty() {
                // With fsync off, records keep coming and nobody waits for
                // them, the writer drains every `commit` (sparing a wake-up
                // per call); once a whole interval brought nothing, it
                // sleeps until the next push instead of polling an idle
                // ring hundreds of times a second.
                let quiet = settings.fsync == Fsync::Off && empty_passes >= 2;
                // Sleep until the next push (or the commit deadline, or a
                // periodic look at rotation and retention).
                let timeout = match (settings.fsync, self.unsynced_since) {
                    (Fsync::Batch, Some(_)) => {
                        settings.commit.saturating_sub(self.last_sync.elapsed())
                    }
                    (Fsync::Off, _) if !quiet => settings.commit,
                    _ => settings.idle_look,
                };
                // Only a call that waits for its record needs the writer
                // woken: with a commit pending in batch mode it comes back
                // at the deadline anyway.
                let wake_on_push = match settings.fsync {
                    Fsync::Always => true,
                    Fsync::Batch => self.unsynced_since.is_none(),
                    Fsync::Off => quiet,
                };
                if wake_on_push {
                    self.trail.idle.store(true, Ordering::SeqCst);
                }
                if self.trail.ring.is_empty() && !self.trail.stop.load(Ordering::SeqCst) {
                    std::thread::park_timeout(timeout);
                    self.trail.counters.wakeups.fetch_add(1, Ordering::Relaxed);
                }
                self.trail.idle.store(false, Ordering::SeqCst);
            }
        }
    }

    fn frame(&mut self, e: Entry, settings: &Settings) {
        let seq = self.next_seq;
        let hash = frame::append(&mut self.out, seq, SCHEMA, e.time_us, &self.head, &e.buf);
        if !e.buf.is_empty() {
            // SAFETY: a non-empty `e.buf` holds exactly one `Record` that
            // `encode` wrote in this process (checking it again would cost
            // the writer a third of its time per record).
            let r = unsafe { rkyv::access_unchecked::<ArchivedRecord<'static>>(&e.buf) };
            self.index.add(seq, &hash, r);
        }
        self.head = hash;
        self.next_seq += 1;
        self.written.push(e.ticket);
        let _ = self.trail.pool.push(e.buf);
        self.count_unsigned();
        // By count, checked per frame: the promise a checkpoint makes is
        // exact, so `verify` can hold the trail to it.
        if self.trail.key.is_some()
            && self.unsigned >= self.promised.min(settings.checkpoint_records)
        {
            self.checkpoint(Reason::Periodic, settings);
        }
    }

    fn count_unsigned(&mut self) {
        self.unsigned += 1;
        if self.unsigned_since_us.is_none() {
            self.unsigned_since_us = Some(crate::clock::unix_us());
        }
    }

    /// Frames a checkpoint or a retirement note (no ticket: no call waits
    /// for it).
    fn frame_other(&mut self, schema: u16, time_us: u64, payload: &[u8]) {
        let seq = self.next_seq;
        let hash = frame::append(&mut self.out, seq, schema, time_us, &self.head, payload);
        self.index.add_frame(seq, &hash);
        self.head = hash;
        self.next_seq += 1;
        self.count_unsigned();
    }

    /// Frames a checkpoint signing the frame before it (nothing without a
    /// key, or before the first frame).
    pub(super) fn checkpoint(&mut self, reason: Reason, s: &Settings) {
        let Some(key) = self.trail.key.clone() else {
            return;
        };
        if self.next_seq <= 1 {
            return;
        }
        let now = crate::clock::unix_us();
        let cp = key.checkpoint(
            &self.trail.node,
            self.next_seq - 1,
            &self.head,
            now,
            reason,
            s.checkpoint_records,
            s.checkpoint_s,
        );
        let at = self.next_seq;
        self.frame_other(checkpoint::CHECKPOINT, now, &cp.to_payload());
        self.unsigned = 0;
        self.unsigned_since_us = None;
        self.promised = s.checkpoint_records;
        self.trail
            .counters
            .checkpoints
            .fetch_add(1, Ordering::Relaxed);
        *self.trail.last_checkpoint.lock().expect("last checkpoint") = Some(serde_json::json!({
            "seq": at,
            "covers_seq": cp.seq,
            "head": cp.head,
            "time": super::record::rfc3339_us(now),
            "reason": reason,
        }));
    }

    /// Writes the framed batch, retrying (and failing calls closed) while
    /// the disk refuses.
    fn write_out(&mut self) {
        loop {
            match self.file.write_all(&self.out) {
                Ok(()) => break,
                Err(e) => self.failed(&e),
            }
            if self.trail.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
            // A partial write may have landed: cut back to the last good
            // frame before trying again.
            let _ = self.file.set_len(self.len);
            let _ = std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.len));
        }
        self.len += self.out.len() as u64;
        self.trail
            .counters
            .bytes
            .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        self.out.clear();
        if self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        self.recovered();
    }

    fn failed(&self, e: &std::io::Error) {
        self.trail
            .counters
            .write_errors
            .fetch_add(1, Ordering::Relaxed);
        if !self.trail.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(dir = %self.trail.dir.display(), error = %e, "the audit writer cannot write; calls fail closed until it can");
        }
        *self.trail.last_error.lock().expect("last error") = Some(e.to_string());
        self.trail.notify.notify_waiters();
    }

    fn recovered(&self) {
        if self.trail.failing.swap(false, Ordering::AcqRel) {
            tracing::info!("the audit writer writes again");
        }
    }

    /// Syncs (when `to_disk`) and publishes the written tickets as durable.
    fn sync(&mut self, to_disk: bool) {
        if to_disk && self.unsynced_since.is_some() {
            loop {
                match self.file.sync_data() {
                    Ok(()) => break,
                    Err(e) => self.failed(&e),
                }
                if self.trail.stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            self.recovered();
            self.last_sync = Instant::now();
            self.trail.counters.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.unsynced_since = None;
        if self.next_seq > 1 {
            *self.trail.head.lock().expect("head") = (self.next_seq - 1, self.head);
        }
        if self.written.is_empty() {
            return;
        }
        let records = self.written.len() as u64;
        let mut mark = self.trail.durable.load(Ordering::Acquire);
        for t in self.written.drain(..) {
            self.early.push(Reverse(t));
        }
        while self.early.peek().is_some_and(|Reverse(t)| *t == mark) {
            self.early.pop();
            mark += 1;
        }
        self.trail.durable.store(mark, Ordering::Release);
        self.trail
            .counters
            .records
            .fetch_add(records, Ordering::Relaxed);
        self.trail.notify.notify_waiters();
    }

    /// Seals the active segment (synced, its index beside it) and starts
    /// the next.
    fn rotate(&mut self) {
        self.sync(true);
        if let Err(e) = self.index.store(&self.active) {
            tracing::warn!(segment = %self.active.path.display(), error = %e, "writing a segment index failed (queries will read the segment)");
        }
        match segment::create(&self.trail.dir, self.next_seq, crate::clock::unix_us()) {
            Ok((seg, f)) => {
                tracing::info!(sealed = %self.active.file_name(), records = self.index.count, next = %seg.file_name(), "audit segment rotated");
                self.active = seg;
                self.file = f;
                self.len = segment::HEADER as u64;
                self.created = Instant::now();
                self.index = Index::new();
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Removes the oldest sealed segments past the retention age or size.
    /// First it writes a note into the chain naming what goes (signed by a
    /// checkpoint right after it) and syncs it: `verify` tells retention
    /// from deletion by it. Then it says so loudly: a warning when size
    /// forced it (records went before their time), counters on `/stats`
    /// and `/metrics`.
    fn retire(&mut self, s: &Settings) {
        self.last_retention = Instant::now();
        if s.retain_age.is_none() && s.retain_bytes.is_none() {
            return;
        }
        let Ok(segments) = segment::list(&self.trail.dir) else {
            return;
        };
        let sizes: Vec<u64> = segments
            .iter()
            .map(|g| std::fs::metadata(&g.path).map_or(0, |m| m.len()))
            .collect();
        let mut total: u64 = sizes.iter().sum();
        let now = crate::clock::unix_us();
        let (mut any_old, mut any_big) = (false, false);
        let mut victims: Vec<RetiredSegment> = Vec::new();
        for (i, (seg, size)) in segments.iter().zip(&sizes).enumerate() {
            // The active segment is never retired, so a later one exists
            // and names where this one ends.
            let Some(next) = segments.get(i + 1) else {
                break;
            };
            if seg.path == self.active.path {
                break;
            }
            let too_old = s.retain_age.is_some_and(|age| {
                // A segment of notes alone has no time range: it goes.
                Index::load(seg).is_some_and(|ix| ix.max_time_us + age.as_micros() as u64 <= now)
            });
            let too_big = s.retain_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            any_old |= too_old;
            any_big |= too_big;
            total -= size;
            victims.push(RetiredSegment {
                file: seg.file_name(),
                first_seq: seg.first_seq,
                last_seq: next.first_seq.saturating_sub(1),
                bytes: *size,
            });
        }
        let Some(last) = victims.last() else {
            return;
        };
        let note = Retired {
            time_us: now,
            reason: match (any_old, any_big) {
                (true, true) => "age and size",
                (true, false) => "age",
                _ => "size",
            }
            .into(),
            kept_from: last.last_seq.saturating_add(1),
            bytes: victims.iter().map(|v| v.bytes).sum(),
            segments: victims,
        };
        self.frame_other(checkpoint::RETIRED, now, &note.to_payload());
        self.checkpoint(Reason::Retirement, s);
        self.write_out();
        self.sync(true);
        if self.trail.failing.load(Ordering::Acquire) || self.unsynced_since.is_some() {
            // The note is not on disk: keep the segments (the next pass
            // retires them, with a note of its own).
            return;
        }
        let (mut segs, mut frames, mut bytes) = (0u64, 0u64, 0u64);
        let mut last_gone = None;
        for v in &note.segments {
            let path = self.trail.dir.join(&v.file);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(segment = %v.file, error = %e, "retiring an audit segment failed");
                break;
            }
            let _ = std::fs::remove_file(path.with_extension("idx"));
            segs += 1;
            frames += v.last_seq.saturating_add(1).saturating_sub(v.first_seq);
            bytes += v.bytes;
            last_gone = Some(v.last_seq);
        }
        let Some(through) = last_gone else {
            return;
        };
        let first = note.segments[0].first_seq;
        let c = &self.trail.counters;
        c.segments_retired.fetch_add(segs, Ordering::Relaxed);
        c.records_retired.fetch_add(frames, Ordering::Relaxed);
        c.bytes_retired.fetch_add(bytes, Ordering::Relaxed);
        if any_big {
            tracing::warn!(
                first_seq = first,
                last_seq = through,
                segments = segs,
                bytes,
                reason = %note.reason,
                retain_mb = s.retain_bytes.map_or(0, |b| b >> 20),
                "audit retention removed records to keep the trail under retain_mb (the trail is full: records go before their retain_days)"
            );
        } else {
            tracing::info!(first_seq = first, last_seq = through, segments = segs, bytes, reason = %note.reason, "audit retention removed records past retain_days");
        }
        *self.trail.last_retirement.lock().expect("last retirement") = Some(serde_json::json!({
            "time": super::record::rfc3339_us(now),
            "first_seq": first,
            "last_seq": through,
            "segments": segs,
            "bytes": bytes,
            "reason": note.reason,
        }));
    }
}
