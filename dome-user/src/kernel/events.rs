//! Events from the XDP program's ring buffer: decoded, counted by kind, and
//! logged at debug level. The program samples them per CPU, so a flood
//! arrives here as a bounded trickle plus a `events_suppressed` count.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use dome_common::{Event, PROTO_TCP, event};
use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::mpsc};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    BudgetExhausted,
    PreauthExhausted,
    Blocked,
    Malformed,
    NewFlow,
    Unknown,
}

impl EventKind {
    const ALL: [EventKind; 6] = [
        EventKind::BudgetExhausted,
        EventKind::PreauthExhausted,
        EventKind::Blocked,
        EventKind::Malformed,
        EventKind::NewFlow,
        EventKind::Unknown,
    ];
    fn from_raw(k: u8) -> Self {
        match k {
            event::BUDGET_EXHAUSTED => EventKind::BudgetExhausted,
            event::PREAUTH_EXHAUSTED => EventKind::PreauthExhausted,
            event::BLOCKED => EventKind::Blocked,
            event::MALFORMED => EventKind::Malformed,
            event::NEW_FLOW => EventKind::NewFlow,
            _ => EventKind::Unknown,
        }
    }
    fn name(self) -> &'static str {
        match self {
            EventKind::BudgetExhausted => "budget_exhausted",
            EventKind::PreauthExhausted => "preauth_exhausted",
            EventKind::Blocked => "blocked",
            EventKind::Malformed => "malformed",
            EventKind::NewFlow => "new_flow",
            EventKind::Unknown => "unknown",
        }
    }
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelEvent {
    pub kind: EventKind,
    /// Kind-specific: packets (1) or bytes (2) for budgets, plus 0x10 when a
    /// prefix's pre-auth aggregate refused; identity (1), flow (2) or
    /// prefix (3) for blocks.
    pub detail: u8,
    pub ts_ns: u64,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp: bool,
    pub slot: u32,
    pub len: u16,
}

impl KernelEvent {
    /// Decodes one ring-buffer record; `None` when it is not an `Event`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Event>() {
            return None;
        }
        // SAFETY: length checked; Event is plain repr(C) data valid for any bytes.
        let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let mut b = [0u8; 16];
        for (i, w) in e.flow.addr.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(b);
        let src = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_unspecified() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            None => IpAddr::V6(v6),
        };
        Some(KernelEvent {
            kind: EventKind::from_raw(e.kind),
            detail: e.detail,
            ts_ns: e.ts_ns,
            src,
            src_port: e.flow.src_port,
            dst_port: e.flow.dst_port,
            tcp: e.flow.proto == PROTO_TCP,
            slot: e.slot,
            len: e.len,
        })
    }
}

/// Events received, by kind.
#[derive(Default)]
pub struct EventStats {
    by_kind: [AtomicU64; 6],
}

impl EventStats {
    pub fn record(&self, k: EventKind) {
        let i = EventKind::ALL.iter().position(|x| *x == k).unwrap_or(5);
        self.by_kind[i].fetch_add(1, Ordering::Relaxed);
    }
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, c) in EventKind::ALL.iter().zip(self.by_kind.iter()) {
            m.insert(k.name().into(), c.load(Ordering::Relaxed).into());
        }
        serde_json::Value::Object(m)
    }
}

/// Reads everything currently in the ring (no waiting).
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<KernelEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(e) = KernelEvent::decode(&item) {
            out.push(e);
        }
    }
    out
}

/// Reads the ring as it fills: counts each event, logs it at debug level and
/// hands it to `sink` when one is given (dropping it if the sink is full:
/// events are advisory, counters are the record).
pub fn spawn_event_reader(
    ring: RingBuf<MapData>,
    stats: std::sync::Arc<EventStats>,
    sink: Option<mpsc::Sender<KernelEvent>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // SAFETY: the ring owns its map fd and the AsyncFd owns the ring, so the
    // fd stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "XDP event ring is unreadable; no more kernel events");
                    return;
                }
            };
            for e in drain(guard.get_inner_mut()) {
                stats.record(e.kind);
                tracing::debug!(kind = ?e.kind, detail = e.detail, src = %e.src, src_port = e.src_port, dst_port = e.dst_port, slot = e.slot, "xdp event");
                if let Some(s) = &sink {
                    let _ = s.try_send(e);
                }
            }
            guard.clear_ready();
        }
    }))
}
