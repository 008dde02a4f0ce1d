//! The verdict on a parsed packet (rules 5-7 of the program's, see
//! `main.rs`): the blocklists, a bound flow's identity budget, an unbound
//! flow's pre-auth budgets. Every verdict is counted on this CPU's
//! counters, and the notable ones are sampled into events for user space.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    maps::lpm_trie::Key as LpmKey,
    programs::XdpContext,
};
use core::ptr::addr_of_mut;
use dome_common::{Counters, Event, FlowKey, XdpConfig, counter, event};

use crate::maps::{
    DOME_BLOCKED_FLOWS, DOME_BLOCKED_PREFIXES, DOME_CONFIG, DOME_EVENTS, DOME_FLOWS,
    DOME_IDENTITIES, DOME_PREAUTH_ADDRS, DOME_PREAUTH_PREFIXES, lru_state,
};
use crate::meter::{charge, count_prebind, refund};
use crate::parse::{Packet, parse};

/// The verdict on one packet.
#[inline(always)]
pub(crate) fn judge(ctx: &XdpContext, c: &mut Cpu) -> u32 {
    let packet = match parse(ctx, c) {
        Ok(p) => p,
        Err(verdict) => return verdict,
    };
    let Some(cfg) = DOME_CONFIG.get(0) else {
        return pass(c, counter::PASS_OTHER);
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(verdict) = blocked(c, cfg, &packet, now) {
        return verdict;
    }
    if let Some(verdict) = bound(c, cfg, &packet, now) {
        return verdict;
    }
    unbound(c, cfg, &packet, now)
}

/// Rule 5: a blocked prefix, flow (`None`: not blocked).
#[inline(always)]
fn blocked(c: &mut Cpu, cfg: &XdpConfig, packet: &Packet, now: u64) -> Option<u32> {
    let (flow, len) = (&packet.flow, packet.len);
    if cfg.has_prefix_blocks != 0 {
        // SAFETY: [u32; 4] and [u8; 16] have the same size; any bytes are valid.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(flow.addr) };
        if let Some(until) = DOME_BLOCKED_PREFIXES.get(LpmKey::new(128, bytes))
            && *until > now
        {
            emit(
                c,
                cfg.events_per_sec,
                now,
                event::BLOCKED,
                event::DETAIL_PREFIX,
                flow,
                0,
                len,
            );
            return Some(drop(c, counter::DROP_BLOCKLIST));
        }
    }
    if cfg.has_flow_blocks != 0 {
        // SAFETY: plain hash map, value read once.
        if let Some(until) = unsafe { DOME_BLOCKED_FLOWS.get(flow) }
            && *until > now
        {
            emit(
                c,
                cfg.events_per_sec,
                now,
                event::BLOCKED,
                event::DETAIL_FLOW,
                flow,
                0,
                len,
            );
            return Some(drop(c, counter::DROP_BLOCKLIST));
        }
    }
    None
}

/// Rule 6: a bound flow, charged to its identity (`None`: not bound to an
/// identity, so pre-auth applies).
#[inline(always)]
fn bound(c: &mut Cpu, cfg: &XdpConfig, packet: &Packet, now: u64) -> Option<u32> {
    let (flow, len) = (&packet.flow, packet.len);
    if let Some(binding) = DOME_FLOWS.get_ptr_mut(flow) {
        // SAFETY: LRU values are preallocated; a concurrent eviction at worst
        // yields a stale slot number, which is bounds-checked below.
        let binding = unsafe { &mut *binding };
        let slot = binding.slot;
        if let Some(id) = DOME_IDENTITIES.get_ptr_mut(slot) {
            // SAFETY: array values live as long as the map.
            let id = unsafe { &mut *id };
            if id.blocked_until_ns > now {
                emit(
                    c,
                    cfg.events_per_sec,
                    now,
                    event::BLOCKED,
                    event::DETAIL_IDENTITY,
                    flow,
                    slot,
                    len,
                );
                return Some(drop(c, counter::DROP_BLOCKLIST));
            }
            // A flow whose identity ran out of packets is dropped without
            // charging again until the next packet could conform (unless user
            // space changed the identity since): a flood reports its
            // exhaustion once and costs no atomics.
            if binding.drop_until_ns > now && binding.drop_generation == id.generation {
                return Some(drop(c, counter::DROP_BUDGET));
            }
            if let Err((dimension, retry)) = charge(&id.budget, addr_of_mut!(id.state), now, len) {
                binding.drop_until_ns = retry;
                binding.drop_generation = id.generation;
                emit(
                    c,
                    cfg.events_per_sec,
                    now,
                    event::BUDGET_EXHAUSTED,
                    dimension,
                    flow,
                    slot,
                    len,
                );
                return Some(drop(c, counter::DROP_BUDGET));
            }
            return Some(pass(c, counter::PASS_BOUND));
        }
        // NO_SLOT (a flow that exists only to be blocked) falls through to pre-auth.
    }
    None
}

/// Rule 7: an unbound flow, charged to its source's pre-auth buckets, then
/// its prefix's.
#[inline(always)]
fn unbound(c: &mut Cpu, cfg: &XdpConfig, packet: &Packet, now: u64) -> u32 {
    let (flow, len) = (&packet.flow, packet.len);
    // Pre-auth: the source address's own buckets first, so a flooding host
    // spends its own budget and stops reaching the aggregate; then the
    // prefix's aggregate, which bounds a network's many addresses together.
    let Some(addr_state) = lru_state(&DOME_PREAUTH_ADDRS, &flow.addr) else {
        // The LRU could not give us an entry: fail closed for unbound traffic.
        return drop(c, counter::DROP_PREAUTH);
    };
    if let Err((dimension, _)) = charge(&cfg.preauth, addr_state, now, len) {
        emit(
            c,
            cfg.events_per_sec,
            now,
            event::PREAUTH_EXHAUSTED,
            dimension,
            flow,
            0,
            len,
        );
        return drop(c, counter::DROP_PREAUTH);
    }
    let refused = match lru_state(&DOME_PREAUTH_PREFIXES, &packet.prefix) {
        Some(prefix_state) => charge(&cfg.preauth_prefix, prefix_state, now, len).err(),
        // No aggregate entry to be had: fail closed, as for the address.
        None => Some((0, 0)),
    };
    if let Some((dimension, _)) = refused {
        // A refused packet costs nothing: give the address its charge back.
        refund(&cfg.preauth, addr_state, len);
        emit(
            c,
            cfg.events_per_sec,
            now,
            event::PREAUTH_EXHAUSTED,
            dimension | event::DETAIL_AGGREGATE,
            flow,
            0,
            len,
        );
        return drop(c, counter::DROP_PREAUTH_PREFIX);
    }

    count_prebind(flow, flow.proto, packet.opening, len);
    if packet.opening {
        emit(c, cfg.events_per_sec, now, event::NEW_FLOW, 0, flow, 0, len);
    }
    pass(c, counter::PASS_UNBOUND)
}

/// This CPU's counters and event sampler: looked up once per packet.
pub(crate) type Cpu = Counters;

#[inline(always)]
pub(crate) fn count(c: &mut Cpu, idx: usize) {
    c.v[idx] += 1;
}

#[inline(always)]
pub(crate) fn pass(c: &mut Cpu, idx: usize) -> u32 {
    count(c, idx);
    XDP_PASS
}

#[inline(always)]
pub(crate) fn drop(c: &mut Cpu, idx: usize) -> u32 {
    count(c, idx);
    XDP_DROP
}

/// Sampled event: each CPU may send `events_per_sec` events per second, so a
/// flood cannot flood user space. Per-CPU state needs no atomics.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn emit(
    c: &mut Cpu,
    limit: u32,
    now: u64,
    kind: u8,
    detail: u8,
    flow: &FlowKey,
    slot: u32,
    len: u64,
) {
    if now.wrapping_sub(c.window_start_ns) >= 1_000_000_000 {
        c.window_start_ns = now;
        c.window_sent = 0;
    }
    if c.window_sent >= limit as u64 {
        count(c, counter::EVENTS_SUPPRESSED);
        return;
    }
    match DOME_EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                ts_ns: now,
                flow: *flow,
                slot,
                len: len as u16,
                kind,
                detail,
            });
            entry.submit(0);
            c.window_sent += 1;
            count(c, counter::EVENTS_SENT);
        }
        None => count(c, counter::EVENTS_SUPPRESSED),
    }
}

/// Drops a malformed packet and reports it (sampled); its flow is unknown.
#[inline(always)]
pub(crate) fn malformed(c: &mut Cpu, len: u64) -> u32 {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let none = FlowKey {
        addr: [0; 4],
        src_port: 0,
        dst_port: 0,
        proto: 0,
        _pad0: 0,
        _pad1: 0,
    };
    let limit = DOME_CONFIG.get(0).map_or(0, |cfg| cfg.events_per_sec);
    emit(c, limit, now, event::MALFORMED, 0, &none, 0, len);
    drop(c, counter::DROP_MALFORMED)
}
