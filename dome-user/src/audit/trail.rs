//! The request path's side of the trail and the writer thread behind it.
//!
//! A call reserves room in the ring before it runs (so a call that could
//! not be recorded never runs: see `Trail::reserve`), encodes its record
//! into a pooled buffer and pushes it into a bounded lock-free queue
//! (crossbeam's `ArrayQueue`). One writer thread drains the queue in
//! batches, frames and chains the records, appends them to the current
//! segment and syncs per the configured mode; calls that must not be
//! answered before their record is on disk wait on a ticket watermark.
//!
//! Tickets: every pushed record takes the next ticket (an atomic counter);
//! the writer publishes `durable` = every ticket below it is on disk (or,
//! with `fsync = "off"`, written to the OS). Records may be pushed slightly
//! out of ticket order by racing threads, so the writer keeps the few that
//! arrive early in a heap until the gap closes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use rkyv::util::AlignedVec;

use super::checkpoint::{self, NodeKey, Reason, Retired, RetiredSegment};
use super::config::{Fsync, OnFull, Settings};
use super::frame::{self, Hash};
use super::record::{ArchivedRecord, Record, SCHEMA};
use super::segment::{self, Index, Segment};

struct Entry {
    ticket: u64,
    time_us: u64,
    buf: AlignedVec,
}

/// Counters for `/stats`.
#[derive(Default)]
pub struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    /// Records not written because the ring was full and `on_full = "drop"`.
    pub dropped: AtomicU64,
    /// Calls refused because the ring stayed full (`on_full = "fail"`) or
    /// the writer could not make their records durable.
    pub refused: AtomicU64,
    pub write_errors: AtomicU64,
    pub segments_retired: AtomicU64,
    /// Frames (records, checkpoints, notes) in retired segments.
    pub records_retired: AtomicU64,
    pub bytes_retired: AtomicU64,
    /// Signed checkpoints written.
    pub checkpoints: AtomicU64,
    /// Times the writer woke to look at the ring: a few per second when
    /// nothing is written, so an idle Dome costs next to nothing.
    pub wakeups: AtomicU64,
}

pub struct Trail {
    dir: PathBuf,
    node: String,
    ring: ArrayQueue<Entry>,
    pool: ArrayQueue<AlignedVec>,
    /// Reservations outstanding plus records in the ring: never above the
    /// ring's capacity, so a reserved record's push cannot fail.
    // Each on its own cache line: the request path writes the first two,
    // the writer the third, and sharing a line would make every push and
    // every publish fight over it.
    reserved: CachePadded<AtomicUsize>,
    tickets: CachePadded<AtomicU64>,
    durable: CachePadded<AtomicU64>,
    notify: tokio::sync::Notify,
    /// The writer sleeps and wants a wake-up on the next push.
    idle: CachePadded<AtomicBool>,
    /// The writer's thread, to wake it without taking a lock on the
    /// request path.
    writer_thread: std::sync::OnceLock<std::thread::Thread>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: AtomicBool,
    /// The writer cannot write (disk full, I/O error): calls fail closed.
    failing: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
    pub settings: ArcSwap<Settings>,
    pub counters: Counters,
    /// (last sequence written, its hash): the chain's head for `/stats`.
    head: std::sync::Mutex<(u64, Hash)>,
    /// Signs checkpoints (`None`: an unsigned trail, as in unit tests).
    key: Option<Arc<NodeKey>>,
    /// The newest checkpoint and the newest retirement, for `/stats`.
    last_checkpoint: std::sync::Mutex<Option<serde_json::Value>>,
    last_retirement: std::sync::Mutex<Option<serde_json::Value>>,
}

/// Room for one record in the ring, held while the call runs.
pub struct Slot {
    trail: Arc<Trail>,
    used: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.used {
            self.trail.reserved.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Slot {
    pub fn trail(&self) -> &Arc<Trail> {
        &self.trail
    }
}

/// Why a call cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl Trail {
    /// Opens an unsigned trail (no checkpoints): for tests of the rest.
    pub fn open(
        dir: &Path,
        ring: usize,
        node: String,
        settings: Settings,
    ) -> std::io::Result<Arc<Trail>> {
        Trail::open_signed(dir, ring, node, settings, None)
    }

    /// Opens the trail in `dir`: recovers the newest segment (cutting a
    /// torn tail) and starts the writer. With `key`, the writer signs
    /// checkpoints (see `checkpoint`), first over what it recovered.
    pub fn open_signed(
        dir: &Path,
        ring: usize,
        node: String,
        settings: Settings,
        key: Option<Arc<NodeKey>>,
    ) -> std::io::Result<Arc<Trail>> {
        std::fs::create_dir_all(dir)?;
        let segments = segment::list(dir)?;
        let (active, file, next_seq, head, index, len, created_us) = match segments.last() {
            None => {
                let now = crate::clock::unix_us();
                let (seg, f) = segment::create(dir, 1, now)?;
                (
                    seg,
                    f,
                    1,
                    [0; 32],
                    Index::new(),
                    segment::HEADER as u64,
                    now,
                )
            }
            Some(last) => {
                let expected = match segments.len() {
                    n if n >= 2 => segment::chain_end(&segments[n - 2])?,
                    _ => None,
                };
                let tail = segment::recover(last, expected)?;
                if let Some(why) = &tail.damaged {
                    tracing::error!(
                        segment = %last.path.display(),
                        damage = %why,
                        next_seq = tail.next_seq,
                        "the newest audit segment is damaged (good records follow the damage, so this is no torn write): it is left as it is for `dome audit verify`; the trail goes on in a new segment"
                    );
                    let now = crate::clock::unix_us();
                    let (seg, f) = segment::create(dir, tail.next_seq, now)?;
                    (
                        seg,
                        f,
                        tail.next_seq,
                        tail.head,
                        Index::new(),
                        segment::HEADER as u64,
                        now,
                    )
                } else {
                    if tail.removed_bytes > 0 {
                        tracing::warn!(
                            segment = %last.path.display(),
                            removed_bytes = tail.removed_bytes,
                            why = tail.removed_why.as_deref().unwrap_or("-"),
                            kept_through = tail.next_seq.saturating_sub(1),
                            "audit recovery cut a torn tail from the newest segment"
                        );
                    } else {
                        tracing::info!(
                            segment = %last.path.display(),
                            next_seq = tail.next_seq,
                            "audit trail recovered cleanly"
                        );
                    }
                    let f = segment::open_append(last, tail.len)?;
                    (
                        last.clone(),
                        f,
                        tail.next_seq,
                        tail.head,
                        tail.index,
                        tail.len,
                        tail.created_us,
                    )
                }
            }
        };
        let ring = ring.max(16);
        let trail = Arc::new(Trail {
            dir: dir.to_path_buf(),
            node,
            ring: ArrayQueue::new(ring),
            // As many buffers as the ring can hold records: a burst's
            // buffers come back for the next one instead of being freed
            // (a fresh buffer, freed on the writer's thread, costs several
            // times the whole enqueue). It holds no more than a full ring.
            pool: ArrayQueue::new(ring),
            reserved: CachePadded::new(AtomicUsize::new(0)),
            tickets: CachePadded::new(AtomicU64::new(0)),
            durable: CachePadded::new(AtomicU64::new(0)),
            notify: tokio::sync::Notify::new(),
            idle: CachePadded::new(AtomicBool::new(false)),
            writer_thread: std::sync::OnceLock::new(),
            writer: std::sync::Mutex::new(None),
            stop: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(None),
            settings: ArcSwap::from_pointee(settings),
            counters: Counters::default(),
            head: std::sync::Mutex::new((next_seq.saturating_sub(1), head)),
            key,
            last_checkpoint: std::sync::Mutex::new(None),
            last_retirement: std::sync::Mutex::new(None),
        });
        let mut w = Writer {
            trail: trail.clone(),
            active,
            file,
            len,
            created: Instant::now()
                .checked_sub(Duration::from_micros(
                    crate::clock::unix_us().saturating_sub(created_us),
                ))
                .unwrap_or_else(Instant::now),
            next_seq,
            head,
            index,
            out: Vec::with_capacity(1 << 20),
            written: Vec::new(),
            early: BinaryHeap::new(),
            unsynced_since: None,
            last_sync: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            last_retention: Instant::now()
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or_else(Instant::now),
            unsigned: 0,
            unsigned_since_us: None,
            promised: u64::MAX,
        };
        if next_seq > 1 {
            // Sign what recovery found (a crash leaves the newest records
            // unsigned), promising the interval configured now (the last
            // checkpoint may have promised another): written on the
            // writer's first pass.
            let s = w.trail.settings.load_full();
            w.checkpoint(Reason::Start, &s);
        }
        let handle = std::thread::Builder::new()
            .name("dome-audit".into())
            .spawn(move || w.run())?;
        let _ = trail.writer_thread.set(handle.thread().clone());
        *trail.writer.lock().expect("writer handle") = Some(handle);
        Ok(trail)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    pub fn queued(&self) -> usize {
        self.ring.len()
    }

    /// Reserves room for one record. When the ring is full: with
    /// `on_full = "fail"` it waits up to `full_wait` and then refuses;
    /// with `"drop"` it returns `None` at once and counts the drop (the
    /// call runs unrecorded).
    pub async fn reserve(self: &Arc<Self>) -> Result<Option<Slot>, Unavailable> {
        if self.failing.load(Ordering::Acquire) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable(self.failure()));
        }
        if self.try_reserve() {
            return Ok(Some(Slot {
                trail: self.clone(),
                used: false,
            }));
        }
        let s = self.settings.load();
        if s.on_full == OnFull::Drop {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let deadline = Instant::now() + s.full_wait;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if self.try_reserve() {
                return Ok(Some(Slot {
                    trail: self.clone(),
                    used: false,
                }));
            }
        }
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        Err(Unavailable(
            "the audit trail is not keeping up; the call was not run".into(),
        ))
    }

    /// Room for one record if the ring has it now (no waiting, no
    /// counting): for callers that handle a full ring themselves.
    pub fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        self.try_reserve().then(|| Slot {
            trail: self.clone(),
            used: false,
        })
    }

    fn try_reserve(&self) -> bool {
        // One atomic add on the common path; backed out when over.
        if self.reserved.fetch_add(1, Ordering::AcqRel) < self.ring.capacity() {
            return true;
        }
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Encodes `record` and queues it for the writer. Returns its ticket
    /// (see [`Trail::durable`]). Allocates only when the buffer pool is
    /// empty (at start, or after a burst).
    pub fn commit(&self, mut slot: Slot, record: &Record<'_>) -> Option<u64> {
        let buf = self
            .pool
            .pop()
            .unwrap_or_else(|| AlignedVec::with_capacity(1024));
        let buf = encode(record, buf);
        if buf.is_empty() {
            // Not encodable (logged by `encode`): nothing to write, nothing
            // to wait for; the slot goes back when `slot` drops.
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        slot.used = true;
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel);
        let entry = Entry {
            ticket,
            time_us: record.time_us,
            buf,
        };
        if self.ring.push(entry).is_err() {
            // Cannot happen while reservations bound the ring; if it does,
            // the record is lost loudly rather than silently.
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("the audit ring overflowed a reservation; a record was dropped");
        }
        if self.idle.load(Ordering::SeqCst)
            && let Some(t) = self.writer_thread.get()
        {
            t.unpark();
        }
        Some(ticket)
    }

    /// Waits until the record with `ticket` is durable per the mode
    /// (returns at once with `fsync = "off"`). An error means the writer
    /// could not make it so in time: the call must fail closed.
    pub async fn durable(&self, ticket: u64) -> Result<(), Unavailable> {
        let s = self.settings.load();
        if s.fsync == Fsync::Off {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + s.durable_timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.durable.load(Ordering::Acquire) > ticket {
                return Ok(());
            }
            if self.failing.load(Ordering::Acquire) {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Unavailable(self.failure()));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Unavailable(
                    "the call's audit record did not reach the disk in time".into(),
                ));
            }
        }
    }

    fn failure(&self) -> String {
        let e = self.last_error.lock().expect("last error").clone();
        format!(
            "the audit trail cannot write ({}); calls are refused until it can",
            e.unwrap_or_else(|| "unknown error".into())
        )
    }

    /// The public half of the checkpoint key (hex), when the trail signs.
    pub fn public_key(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.public_hex())
    }

    /// (last sequence number written, hex hash of that frame).
    pub fn head(&self) -> (u64, String) {
        let (seq, h) = *self.head.lock().expect("head");
        (seq, hex::encode(h))
    }

    pub fn failing(&self) -> Option<String> {
        self.failing.load(Ordering::Acquire).then(|| self.failure())
    }

    /// What `/stats` shows of the trail.
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = self.settings.load();
        let (seq, head) = self.head();
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "fsync": s.fsync,
            "on_full": s.on_full,
            "records": load(&c.records),
            "bytes": load(&c.bytes),
            "syncs": load(&c.syncs),
            "dropped": load(&c.dropped),
            "refused": load(&c.refused),
            "write_errors": load(&c.write_errors),
            "segments_retired": load(&c.segments_retired),
            "retention": {
                "segments_retired": load(&c.segments_retired),
                "records_retired": load(&c.records_retired),
                "bytes_retired": load(&c.bytes_retired),
                "retain_mb": s.retain_bytes.map(|b| b >> 20),
                "retain_days": s.retain_age.map(|a| a.as_secs() / 86_400),
                "last": self.last_retirement.lock().expect("last retirement").clone(),
            },
            "checkpoints": {
                "written": load(&c.checkpoints),
                "key": self.public_key(),
                "key_fingerprint": self.key.as_ref().map(|k| k.fingerprint()),
                "every_s": s.checkpoint_s,
                "every_records": s.checkpoint_records,
                "last": self.last_checkpoint.lock().expect("last checkpoint").clone(),
            },
            "writer_wakeups": load(&c.wakeups),
            "queued": self.queued(),
            "ring": self.capacity(),
            "last_seq": seq,
            "head": head,
            "failing": self.failing(),
        })
    }

    /// Drains the ring, syncs and stops the writer (at shutdown).
    pub fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.writer.lock().expect("writer handle").take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// Encodes `record` into `buf` (cleared first).
pub fn encode(record: &Record<'_>, mut buf: AlignedVec) -> AlignedVec {
    buf.clear();
    match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(record, buf) {
        Ok(b) => b,
        // Writing into a growable buffer does not fail; keep the type honest.
        Err(e) => {
            tracing::error!(error = %e, "encoding an audit record failed");
            AlignedVec::new()
        }
    }
}

struct Writer {
    trail: Arc<Trail>,
    active: Segment,
    file: std::fs::File,
    len: u64,
    created: Instant,
    next_seq: u64,
    head: Hash,
    index: Index,
    /// Frames framed but not yet written.
    out: Vec<u8>,
    /// Tickets written since the last sync.
    written: Vec<u64>,
    /// Durable tickets above the watermark (pushed out of order).
    early: BinaryHeap<Reverse<u64>>,
    unsynced_since: Option<Instant>,
    last_sync: Instant,
    last_retention: Instant,
    /// Frames since the last checkpoint, and when the first of them was
    /// framed (Unix µs).
    unsigned: u64,
    unsigned_since_us: Option<u64>,
    /// The frame count the last checkpoint promised the next one within.
    promised: u64,
}

/// Most bytes framed before they are written out.
const BATCH_BYTES: usize = 1 << 20;

impl Writer {
    fn run(&mut self) {
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
    fn checkpoint(&mut self, reason: Reason, s: &Settings) {
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
