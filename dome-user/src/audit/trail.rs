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

use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use rkyv::util::AlignedVec;

use super::checkpoint::{NodeKey, Reason};
use super::config::{Fsync, OnFull, Settings};
use super::frame::Hash;
use super::record::Record;
use super::segment::{self, Index};

pub(super) struct Entry {
    pub(super) ticket: u64,
    pub(super) time_us: u64,
    pub(super) buf: AlignedVec,
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
    pub(super) dir: PathBuf,
    pub(super) node: String,
    pub(super) ring: ArrayQueue<Entry>,
    pub(super) pool: ArrayQueue<AlignedVec>,
    /// Reservations outstanding plus records in the ring: never above the
    /// ring's capacity, so a reserved record's push cannot fail.
    // Each on its own cache line: the request path writes the first two,
    // the writer the third, and sharing a line would make every push and
    // every publish fight over it.
    pub(super) reserved: CachePadded<AtomicUsize>,
    pub(super) tickets: CachePadded<AtomicU64>,
    pub(super) durable: CachePadded<AtomicU64>,
    pub(super) notify: tokio::sync::Notify,
    /// The writer sleeps and wants a wake-up on the next push.
    pub(super) idle: CachePadded<AtomicBool>,
    /// The writer's thread, to wake it without taking a lock on the
    /// request path.
    pub(super) writer_thread: std::sync::OnceLock<std::thread::Thread>,
    pub(super) writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) stop: AtomicBool,
    /// The writer cannot write (disk full, I/O error): calls fail closed.
    pub(super) failing: AtomicBool,
    pub(super) last_error: std::sync::Mutex<Option<String>>,
    pub settings: ArcSwap<Settings>,
    pub counters: Counters,
    /// (last sequence written, its hash): the chain's head for `/stats`.
    pub(super) head: std::sync::Mutex<(u64, Hash)>,
    /// Signs checkpoints (`None`: an unsigned trail, as in unit tests).
    pub(super) key: Option<Arc<NodeKey>>,
    /// The newest checkpoint and the newest retirement, for `/stats`.
    pub(super) last_checkpoint: std::sync::Mutex<Option<serde_json::Value>>,
    pub(super) last_retirement: std::sync::Mutex<Option<serde_json::Value>>,
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

/// Where [`Trail::open_signed`] starts its writer: the segment it appends
/// to and that segment's file, the next record's sequence number, the
/// chain's head, and the segment's index, length and creation time (unix
/// µs).
struct Resume {
    active: segment::Segment,
    file: std::fs::File,
    next_seq: u64,
    head: Hash,
    index: Index,
    len: u64,
    created_us: u64,
}

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
        let Resume {
            active,
            file,
            next_seq,
            head,
            index,
            len,
            created_us,
        } = Trail::resume(dir, &segments)?;
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

    /// Where the writer goes on in `dir` (its `segments`): a first
    /// segment; the newest one, its torn tail cut; or, when the newest is
    /// damaged with good records after the damage, a new one after it.
    fn resume(dir: &Path, segments: &[segment::Segment]) -> std::io::Result<Resume> {
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
        Ok(Resume {
            active,
            file,
            next_seq,
            head,
            index,
            len,
            created_us,
        })
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

pub(super) use super::writer::Writer;
