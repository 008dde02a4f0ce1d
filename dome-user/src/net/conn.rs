//! A connection as the listener holds it: its limits per source, per
//! prefix and per agent, which one goes when the listener is full, and its
//! flow's binding in the kernel tier.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
};

use tokio::sync::Notify;

use super::Limits;

/// The connection a request came on (a request extension): the client's
/// address and Dome's port, and the kernel flow binding made for it, which
/// goes when the connection closes.
pub struct Conn {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub binding: std::sync::Mutex<Option<ConnBinding>>,
    /// Set once a request on it passed authentication (or needed none):
    /// from then on it is shed for a newcomer only after every idle one
    /// that has not.
    pub(super) admitted: AtomicBool,
    /// The agent (identity slot + 1; 0: none yet) it is counted against.
    pub(super) agent: AtomicU32,
    /// Requests being answered on it now, and response streams open: a
    /// connection is idle at zero.
    pub(super) busy: AtomicU32,
    /// When it last became idle (`mono_ms`).
    pub(super) idle_since: AtomicU64,
    /// Its number among the listener's connections, and where they are kept.
    pub(super) shed_entry: Option<(u64, Arc<Sheddable>)>,
    /// Notified when it is shed.
    pub(super) shed: Notify,
}

pub(super) fn mono_ms() -> u64 {
    crate::clock::monotonic_ns() / 1_000_000
}

impl Conn {
    /// Marks the connection as having carried an authenticated request
    /// (`agent`: the caller's identity slot; `None` without credentials):
    /// it is shed only after the idle ones that have not. The first
    /// agent's request on it counts it against that agent's share; false
    /// when the agent holds its share already (the request is refused and
    /// the connection stays among the first to be shed). One atomic load
    /// per request once counted.
    pub fn authenticated(&self, agent: Option<u32>) -> bool {
        if let Some(slot) = agent
            && self.agent.load(Ordering::Acquire) == 0
            && let Some((_, set)) = &self.shed_entry
        {
            if !set.agents.admit(slot) {
                return false;
            }
            // Two requests of one HTTP/2 connection may race here: one counts.
            if self
                .agent
                .compare_exchange(0, slot.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                set.agents.release(slot);
            }
        }
        if !self.admitted.load(Ordering::Acquire) {
            self.admitted.store(true, Ordering::Release);
        }
        true
    }

    /// Counts a response stream as open on the connection while the guard
    /// lives: a connection with one is busy, not idle, and is not shed.
    pub(super) fn hold(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    pub(super) fn new(
        peer: SocketAddr,
        local_port: u16,
        shed_entry: Option<(u64, Arc<Sheddable>)>,
    ) -> Conn {
        Conn {
            peer,
            local_port,
            binding: std::sync::Mutex::new(None),
            admitted: AtomicBool::new(false),
            agent: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(mono_ms()),
            shed_entry,
            shed: Notify::new(),
        }
    }
}

/// The listener's open connections, oldest first: those a newcomer may
/// displace at the global limit when idle, and the count of each agent's.
/// Shared by the workers; its lock is taken when a connection opens or
/// closes, and to shed one, never per request.
pub struct Sheddable {
    pub(super) next: AtomicU64,
    pub(super) conns: Mutex<std::collections::BTreeMap<u64, Weak<Conn>>>,
    pub(super) agents: AgentConns,
}

impl Sheddable {
    pub(super) fn add(&self, conn: &Arc<Conn>) {
        if let Some((id, _)) = &conn.shed_entry {
            self.conns
                .lock()
                .expect("sheddable lock")
                .insert(*id, Arc::downgrade(conn));
        }
    }

    pub(super) fn remove(&self, id: u64) {
        self.conns.lock().expect("sheddable lock").remove(&id);
    }

    /// Closes an idle connection: the oldest that has not authenticated,
    /// else the authenticated one idle longest (keep-alive connections an
    /// agent keeps open must not hold slots a newcomer needs). False when
    /// every connection is busy.
    pub(super) fn shed_one(&self) -> bool {
        let mut conns = self.conns.lock().expect("sheddable lock");
        let mut dead = Vec::new();
        let mut victim: Option<(u64, Arc<Conn>)> = None;
        let mut longest: Option<(u64, u64, Arc<Conn>)> = None;
        for (id, weak) in conns.iter() {
            match weak.upgrade() {
                None => dead.push(*id),
                Some(c) if c.busy.load(Ordering::Acquire) != 0 => {}
                Some(c) if !c.admitted.load(Ordering::Acquire) => {
                    victim = Some((*id, c));
                    break;
                }
                Some(c) => {
                    let since = c.idle_since.load(Ordering::Acquire);
                    if longest.as_ref().is_none_or(|(s, _, _)| since < *s) {
                        longest = Some((since, *id, c));
                    }
                }
            }
        }
        for id in dead {
            conns.remove(&id);
        }
        let Some((id, c)) = victim.or(longest.map(|(_, id, c)| (id, c))) else {
            return false;
        };
        conns.remove(&id);
        drop(conns);
        tracing::debug!(peer = %c.peer, authenticated = c.admitted.load(Ordering::Acquire), "shed an idle connection for a new one");
        c.shed.notify_one();
        true
    }
}

/// Open connections counted against each agent (by identity slot),
/// sharded so workers do not wait on one lock.
pub(super) struct AgentConns {
    pub(super) shards: Vec<Mutex<std::collections::HashMap<u32, u32>>>,
    pub(super) per_agent: u32,
}

impl AgentConns {
    pub(super) fn new(per_agent: usize) -> AgentConns {
        AgentConns {
            shards: (0..SOURCE_SHARDS).map(|_| Mutex::default()).collect(),
            per_agent: u32::try_from(per_agent).unwrap_or(u32::MAX).max(1),
        }
    }

    pub(super) fn shard(&self, slot: u32) -> &Mutex<std::collections::HashMap<u32, u32>> {
        &self.shards[slot as usize % SOURCE_SHARDS]
    }

    /// Counts one more connection of `slot`'s, unless it holds its share.
    pub(super) fn admit(&self, slot: u32) -> bool {
        let mut m = self.shard(slot).lock().expect("agents lock");
        let n = m.entry(slot).or_default();
        if *n >= self.per_agent {
            return false;
        }
        *n += 1;
        true
    }

    pub(super) fn release(&self, slot: u32) {
        let mut m = self.shard(slot).lock().expect("agents lock");
        if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(slot) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Open connections per source address and per /24 or /64, sharded by
/// prefix (an address is in its prefix's shard) so workers accepting from
/// different networks do not wait on one lock.
pub(super) struct Sources {
    pub(super) shards: Vec<Mutex<std::collections::HashMap<SourceKey, u32>>>,
    pub(super) per_ip: u32,
    pub(super) per_prefix: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum SourceKey {
    Addr(std::net::IpAddr),
    Prefix(std::net::IpAddr),
}

pub(super) const SOURCE_SHARDS: usize = 16;

/// The /24 (IPv4) or /64 (IPv6) an address is in.
pub(super) fn prefix_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(
            (u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000).into(),
        ),
    }
}

impl Sources {
    pub(super) fn new(limits: &Limits) -> Sources {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).max(1);
        Sources {
            shards: (0..SOURCE_SHARDS).map(|_| Mutex::default()).collect(),
            per_ip: clamp(limits.max_connections_per_ip),
            per_prefix: clamp(limits.max_connections_per_prefix),
        }
    }

    pub(super) fn shard(
        &self,
        prefix: std::net::IpAddr,
    ) -> &Mutex<std::collections::HashMap<SourceKey, u32>> {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::default().hash_one(prefix);
        &self.shards[h as usize % SOURCE_SHARDS]
    }

    /// Counts a connection from `ip`, or why not: its address or its
    /// prefix is at its limit.
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
    ) -> Result<SourceGuard, &'static str> {
        let ip = ip.to_canonical();
        let prefix = prefix_of(ip);
        let mut m = self.shard(prefix).lock().expect("sources lock");
        let at_ip = m.get(&SourceKey::Addr(ip)).copied().unwrap_or(0);
        let at_prefix = m.get(&SourceKey::Prefix(prefix)).copied().unwrap_or(0);
        if at_ip >= self.per_ip {
            return Err("max_connections_per_ip");
        }
        if at_prefix >= self.per_prefix {
            return Err("max_connections_per_prefix");
        }
        *m.entry(SourceKey::Addr(ip)).or_default() += 1;
        *m.entry(SourceKey::Prefix(prefix)).or_default() += 1;
        Ok(SourceGuard {
            sources: self.clone(),
            ip,
        })
    }
}

/// A connection counted against its source while it lives.
pub(super) struct SourceGuard {
    pub(super) sources: Arc<Sources>,
    pub(super) ip: std::net::IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let prefix = prefix_of(self.ip);
        let mut m = self.sources.shard(prefix).lock().expect("sources lock");
        for k in [SourceKey::Addr(self.ip), SourceKey::Prefix(prefix)] {
            if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(k) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

/// Counts a request as being answered on its connection while it lives.
pub(super) struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(mono_ms(), Ordering::Release);
        }
    }
}

/// A flow bound to an identity slot in the kernel tier.
pub struct ConnBinding {
    pub tier: Arc<dyn crate::kernel::Enforcer>,
    pub flow: crate::kernel::Flow,
    pub slot: u32,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let agent = *self.agent.get_mut();
        if agent != 0
            && let Some((_, set)) = &self.shed_entry
        {
            set.agents.release(agent - 1);
        }
        if let Some(b) = self.binding.get_mut().ok().and_then(Option::take)
            && let Err(e) = b.tier.unbind_flow(&b.flow)
        {
            tracing::debug!(error = %e, "unbinding a closed connection's flow failed");
        }
    }
}
