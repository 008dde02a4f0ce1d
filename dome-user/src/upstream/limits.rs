//! What an upstream's calls may hold: its slots and each agent's share of
//! them, and the answers buffered at once across every upstream (charged
//! against `[mcp] max_buffered_response_bytes`).

use super::*;

/// Bytes of upstream answers held buffered over all calls, and the most
/// there may be (`[mcp] max_buffered_response_bytes`): one atomic each,
/// so charging takes no lock. Every upstream answer read whole, and every
/// event still arriving in an event stream's parser, is charged here.
pub struct Buffered {
    pub(super) held: std::sync::atomic::AtomicUsize,
    pub(super) limit: std::sync::atomic::AtomicUsize,
    /// Answers dropped at the limit, since start.
    pub(super) refused: AtomicU64,
}

pub static BUFFERED: Buffered = Buffered {
    held: std::sync::atomic::AtomicUsize::new(0),
    limit: std::sync::atomic::AtomicUsize::new(256 << 20),
    refused: AtomicU64::new(0),
};

impl Buffered {
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// What `/stats` shows: bytes held now, the limit, answers refused.
    pub fn to_json(&self) -> Value {
        json!({
            "bytes": self.held.load(Ordering::Relaxed),
            "limit": self.limit.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
        })
    }

    /// Takes `n` bytes more, unless that would pass the limit.
    pub(super) fn take(&self, n: usize) -> bool {
        let before = self.held.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.limit.load(Ordering::Relaxed) {
            self.held.fetch_sub(n, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(super) fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes charged to [`BUFFERED`] while this lives.
#[derive(Default)]
pub struct Charge(usize);

impl Charge {
    /// Charges `n` bytes more; false (nothing charged) over the budget.
    pub fn grow(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if !BUFFERED.take(n) {
            return false;
        }
        self.0 += n;
        true
    }

    /// Bytes charged.
    pub fn held(&self) -> usize {
        self.0
    }

    /// Gives back `n` of the bytes charged.
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.0);
        BUFFERED.give(n);
        self.0 -= n;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.0 > 0 {
            BUFFERED.give(self.0);
        }
    }
}

/// An answer's bytes with their charge: given back when the last
/// reference to them goes.
pub(super) struct Charged {
    pub(super) bytes: Bytes,
    pub(super) _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The key a caller without credentials is counted under in an upstream's
/// per-agent shares (identity slots are far below it).
pub const ANONYMOUS_AGENT: u32 = u32::MAX;

/// Requests each agent has waiting on one upstream, sharded by identity
/// slot so calls of different agents do not wait on one lock.
pub(super) struct AgentShares {
    pub(super) shards: Box<[std::sync::Mutex<std::collections::HashMap<u32, u32>>]>,
    pub(super) share: u32,
}

pub(super) const SHARE_SHARDS: usize = 16;

impl AgentShares {
    pub(super) fn new(share: usize) -> Self {
        AgentShares {
            shards: (0..SHARE_SHARDS).map(|_| Default::default()).collect(),
            share: u32::try_from(share).unwrap_or(u32::MAX).max(1),
        }
    }

    pub(super) fn shard(
        &self,
        agent: u32,
    ) -> &std::sync::Mutex<std::collections::HashMap<u32, u32>> {
        &self.shards[agent as usize % SHARE_SHARDS]
    }

    /// One more of `agent`'s requests, unless it holds its share.
    pub(super) fn take(&self, agent: u32) -> Option<Share<'_>> {
        let mut m = self.shard(agent).lock().expect("shares lock");
        let n = m.entry(agent).or_default();
        if *n >= self.share {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self,
            agent,
        })
    }
}

/// One request counted against its agent's share while it lives.
pub(super) struct Share<'a> {
    pub(super) shares: &'a AgentShares,
    pub(super) agent: u32,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut m = self.shares.shard(self.agent).lock().expect("shares lock");
        if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(self.agent) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// What a request holds while its answer is awaited: a slot of the
/// upstream's, its agent's share, and the deadline of the whole exchange.
pub(super) struct Held<'a> {
    pub(super) _slot: tokio::sync::SemaphorePermit<'a>,
    pub(super) _share: Option<Share<'a>>,
    pub(super) deadline: tokio::time::Instant,
}
