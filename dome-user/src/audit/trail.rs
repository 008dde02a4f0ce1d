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
    /// Opens the trail in `dir`: recovers the newest segment (cutting a
    /// torn tail) and starts the writer.
    pub fn open(
        dir: &Path,
        ring: usize,
        node: String,
        settings: Settings,
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
        };
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
                self.frame(e);
                drained += 1;
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
                if !self.out.is_empty() {
                    self.write_out();
                }
                self.sync(true);
                return;
            }
            if (self.len >= settings.segment_bytes
                || self.created.elapsed() >= settings.segment_age)
                && self.index.count > 0
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

    fn frame(&mut self, e: Entry) {
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
        *self.trail.head.lock().expect("head") = (self.next_seq - 1, self.head);
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
        for (seg, size) in segments.iter().zip(&sizes) {
            if seg.path == self.active.path {
                break;
            }
            let too_old = s.retain_age.is_some_and(|age| {
                Index::load(seg).is_some_and(|ix| ix.max_time_us + age.as_micros() as u64 <= now)
            });
            let too_big = s.retain_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            if std::fs::remove_file(&seg.path).is_ok() {
                let _ = std::fs::remove_file(seg.index_path());
                total -= size;
                self.trail
                    .counters
                    .segments_retired
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(segment = %seg.file_name(), too_old, too_big, "audit segment retired");
            }
        }
    }
}
