//! Dome's kernel tier: an XDP program that meters every packet bound for
//! Dome's listener ports against the budget of the identity owning its flow,
//! meters unbound flows per source address within a per-prefix aggregate,
//! and drops blocked sources early.
//!
//! Verdict rules, in order:
//! 1. A frame too short for its Ethernet (and one VLAN) header, or carrying
//!    anything but IPv4/IPv6, passes (`pass_other`): it cannot be for Dome.
//! 2. An IPv4/IPv6 header that is truncated or inconsistent (wrong version,
//!    IHL < 5, total length shorter than the header, an IPv6 chain of more
//!    than four extension headers) is dropped (`drop_malformed`): the stack
//!    would discard it anyway and no legitimate client sends one.
//! 3. Non-first fragments carry no ports and pass (`pass_fragment`); the
//!    first fragment has the L4 header and is metered like any packet, so a
//!    datagram whose head was dropped cannot be reassembled.
//! 4. Protocols other than TCP/UDP pass. A TCP/UDP header too short to hold
//!    its ports is dropped as malformed; a header whose destination port is
//!    not a listener port passes (`pass_other`); a listener-bound header that
//!    is otherwise truncated is dropped as malformed.
//! 5. Blocklist (prefix, then flow, then identity) → `drop_blocklist`.
//! 6. A bound flow is charged to its identity's packet and byte buckets
//!    (`pass_bound` / `drop_budget`). After a packet refusal the flow
//!    remembers when the next packet could conform and drops until then
//!    without recharging (until user space changes the identity), so a
//!    flood reports its exhaustion once.
//! 7. An unbound flow is charged to its source address's pre-auth buckets
//!    (`drop_preauth`), then to its prefix's (/24, /64) aggregate buckets
//!    (`drop_preauth_prefix`, the address's charge refunded), and passes
//!    (`pass_unbound`). A flooding host thus exhausts its own budget, not
//!    its neighbours', until the prefix as a whole is over the aggregate.
//!    A passed unbound packet is also counted against its flow
//!    (`DOME_PREBIND`); when user space binds the flow it takes that count
//!    and has `dome_xdp_debit` charge it to the identity, so traffic sent
//!    before authentication is paid for by the identity too.
//!
//! Time is `bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC (the clock user space
//! writes deadlines in) at tick resolution. It costs ~17 ns a packet less
//! than `bpf_ktime_get_ns` on this VM; refills and expiries lag by at most
//! one tick (4 ms at HZ=250), which a burst budget absorbs.
#![no_std]
#![no_main]
// The bpf target declares no compare-and-swap, so core's atomics hide
// `compare_exchange`; the intrinsics lower to BPF_ATOMIC instructions.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::{
    intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg, atomic_xadd, atomic_xsub},
    mem::size_of,
    ptr::{addr_of_mut, read_unaligned, read_volatile},
};

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    },
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key as LpmKey},
    programs::XdpContext,
};
use dome_common::{
    BucketState, Budget, Counters, DebitRequest, EVENT_RING_BYTES, Event, FlowBinding, FlowKey,
    Identity, MAX_BLOCKED_FLOWS, MAX_BLOCKED_PREFIXES, MAX_FLOWS, MAX_PREAUTH_ADDRS,
    MAX_PREAUTH_PREFIXES, MAX_PREBIND_FLOWS, MAX_SLOTS, PORT_WORDS, PROTO_TCP, PROTO_UDP, PreBind,
    XdpConfig, counter, event, port_bit, port_word,
};

#[map]
static DOME_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map]
static DOME_PORTS: Array<u64> = Array::with_max_entries(2 * PORT_WORDS, 0);
#[map]
static DOME_FLOWS: LruHashMap<FlowKey, FlowBinding> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static DOME_IDENTITIES: Array<Identity> = Array::with_max_entries(MAX_SLOTS, 0);
#[map]
static DOME_PREAUTH_ADDRS: LruHashMap<[u32; 4], BucketState> =
    LruHashMap::with_max_entries(MAX_PREAUTH_ADDRS, 0);
#[map]
static DOME_PREAUTH_PREFIXES: LruHashMap<[u32; 4], BucketState> =
    LruHashMap::with_max_entries(MAX_PREAUTH_PREFIXES, 0);
#[map]
static DOME_PREBIND: LruHashMap<FlowKey, PreBind> =
    LruHashMap::with_max_entries(MAX_PREBIND_FLOWS, 0);
#[map]
static DOME_BLOCKED_FLOWS: HashMap<FlowKey, u64> = HashMap::with_max_entries(MAX_BLOCKED_FLOWS, 0);
#[map]
static DOME_BLOCKED_PREFIXES: LpmTrie<[u8; 16], u64> =
    LpmTrie::with_max_entries(MAX_BLOCKED_PREFIXES, 0);
#[map]
static DOME_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static DOME_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers we walk (hop-by-hop, routing, fragment, destination options).
const IPV6_EXT_LIMIT: usize = 4;

#[xdp]
pub fn dome_xdp(ctx: XdpContext) -> u32 {
    match DOME_COUNTERS.get_ptr_mut(0) {
        // SAFETY: a per-CPU value: only this CPU touches it while we run.
        Some(c) => judge(&ctx, unsafe { &mut *c }),
        None => XDP_PASS,
    }
}

/// The benchmark's floor: what `BPF_PROG_TEST_RUN` costs around a program
/// that does nothing.
#[xdp]
pub fn dome_xdp_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; packet data has no
    // alignment guarantee, hence the unaligned read.
    Some(unsafe { read_unaligned((start + off) as *const T) })
}

/// This CPU's counters and event sampler: looked up once per packet.
type Cpu = Counters;

#[inline(always)]
fn count(c: &mut Cpu, idx: usize) {
    c.v[idx] += 1;
}

#[inline(always)]
fn pass(c: &mut Cpu, idx: usize) -> u32 {
    count(c, idx);
    XDP_PASS
}

#[inline(always)]
fn drop(c: &mut Cpu, idx: usize) -> u32 {
    count(c, idx);
    XDP_DROP
}

/// Sampled event: each CPU may send `events_per_sec` events per second, so a
/// flood cannot flood user space. Per-CPU state needs no atomics.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
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

/// GCRA on one theoretical-arrival-time word. The word is shared by every
/// CPU that receives packets of the same identity (or prefix), so it is
/// updated with compare-and-swap: exact under concurrency, no lock, and a
/// refused charge writes nothing. Per-CPU shares would split the burst by
/// the number of CPUs and refuse a legitimate burst that lands on one queue;
/// a spin lock would need BTF-defined maps and serialise the CPUs.
/// `Err(t)`: refused, and no charge of `cost` conforms before time `t`.
#[inline(always)]
fn gcra(tat: *mut u64, now: u64, cost: u64, burst: u64) -> Result<(), u64> {
    // SAFETY: `tat` points into a live, 8-byte aligned map value; an aligned
    // 64-bit load is single-copy atomic (BPF has no relaxed-load instruction
    // before cpu v4), and every write goes through cmpxchg/xadd.
    let mut cur = unsafe { read_volatile(tat) };
    // Bounded retries keep the verifier happy; losing four races in a row
    // means the identity is bursting on every CPU at once, so refusing is right.
    for _ in 0..4 {
        let base = if cur > now { cur } else { now };
        let next = base + cost;
        if next - now > burst {
            return Err(next - burst);
        }
        // SAFETY: as above.
        let (seen, swapped) =
            unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(tat, cur, next) };
        if swapped {
            return Ok(());
        }
        cur = seen;
    }
    Err(now)
}

/// What a frame of `len` bytes costs the byte bucket (at least 1 ns, so a
/// rate always binds).
#[inline(always)]
fn byte_cost(budget: &Budget, len: u64) -> u64 {
    (len.wrapping_mul(budget.byte_ns_per_kib) >> 10) | 1
}

/// Charges one packet of `len` bytes. `Err((dimension, t))` when refused:
/// the dimension (`event::DETAIL_PACKETS` / `DETAIL_BYTES`) and, for the
/// packet dimension, the time before which no packet can conform (0 for
/// bytes, where it depends on the next frame's size).
#[inline(always)]
fn charge(budget: &Budget, state: *mut BucketState, now: u64, len: u64) -> Result<(), (u8, u64)> {
    // SAFETY: `state` points into a map value that outlives this call.
    let (pkt, byte) = unsafe {
        (
            addr_of_mut!((*state).pkt_tat),
            addr_of_mut!((*state).byte_tat),
        )
    };
    let pkt_cost = budget.pkt_interval_ns;
    if pkt_cost != 0
        && let Err(retry) = gcra(pkt, now, pkt_cost, budget.pkt_burst_ns)
    {
        return Err((event::DETAIL_PACKETS, retry));
    }
    if budget.byte_ns_per_kib != 0 {
        if gcra(byte, now, byte_cost(budget, len), budget.byte_burst_ns).is_err() {
            if pkt_cost != 0 {
                // Refund so a refused packet costs nothing in either dimension.
                // SAFETY: as above.
                unsafe { atomic_xsub::<u64, u64, { Relaxed }>(pkt, pkt_cost) };
            }
            return Err((event::DETAIL_BYTES, 0));
        }
    }
    Ok(())
}

/// Drops a malformed packet and reports it (sampled); its flow is unknown.
#[inline(always)]
fn malformed(c: &mut Cpu, len: u64) -> u32 {
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

#[inline(always)]
fn listening(proto: u8, port: u16) -> bool {
    match DOME_PORTS.get(port_word(proto, port)) {
        Some(w) => *w & port_bit(port) != 0,
        None => false,
    }
}

/// The v4-mapped IPv6 prefix word `::ffff:`.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const V4_PREFIX_MASK: u32 = u32::from_ne_bytes([0xff, 0xff, 0xff, 0]);

#[inline(always)]
fn judge(ctx: &XdpContext, c: &mut Cpu) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;

    let Some(mut ethertype) = load::<u16>(ctx, 12) else {
        return pass(c, counter::PASS_OTHER);
    };
    ethertype = u16::from_be(ethertype);
    let mut off = 14usize;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = load::<u16>(ctx, 16) else {
            return pass(c, counter::PASS_OTHER);
        };
        ethertype = u16::from_be(inner);
        off = 18;
    }

    let addr: [u32; 4];
    let prefix: [u32; 4];
    let proto: u8;
    if ethertype == ETH_P_IP {
        let Some(hdr) = load::<[u8; 20]>(ctx, off) else {
            return malformed(c, len);
        };
        let ihl = (hdr[0] & 0x0f) as usize;
        let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
        if hdr[0] >> 4 != 4 || ihl < 5 || total < ihl * 4 {
            return malformed(c, len);
        }
        if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff != 0 {
            return pass(c, counter::PASS_FRAGMENT);
        }
        proto = hdr[9];
        let saddr = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        addr = [0, 0, V4_MAPPED, saddr];
        prefix = [0, 0, V4_MAPPED, saddr & V4_PREFIX_MASK];
        off += ihl * 4;
    } else if ethertype == ETH_P_IPV6 {
        let Some(hdr) = load::<[u32; 10]>(ctx, off) else {
            return malformed(c, len);
        };
        let first = hdr[0].to_ne_bytes();
        if first[0] >> 4 != 6 {
            return malformed(c, len);
        }
        let mut next = hdr[1].to_ne_bytes()[2];
        addr = [hdr[2], hdr[3], hdr[4], hdr[5]];
        prefix = [hdr[2], hdr[3], 0, 0];
        off += 40;
        let mut walked = 0;
        while walked < IPV6_EXT_LIMIT {
            match next {
                0 | 43 | 60 => {
                    let Some(ext) = load::<[u8; 2]>(ctx, off) else {
                        return malformed(c, len);
                    };
                    next = ext[0];
                    off += (ext[1] as usize + 1) * 8;
                }
                44 => {
                    let Some(frag) = load::<[u8; 4]>(ctx, off) else {
                        return malformed(c, len);
                    };
                    if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                        return pass(c, counter::PASS_FRAGMENT);
                    }
                    next = frag[0];
                    off += 8;
                }
                _ => break,
            }
            walked += 1;
        }
        if matches!(next, 0 | 43 | 44 | 60) {
            return malformed(c, len);
        }
        proto = next;
    } else {
        return pass(c, counter::PASS_OTHER);
    }

    if proto != PROTO_TCP && proto != PROTO_UDP {
        return pass(c, counter::PASS_OTHER);
    }
    let Some(ports) = load::<[u8; 4]>(ctx, off) else {
        return malformed(c, len);
    };
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    if !listening(proto, dst_port) {
        return pass(c, counter::PASS_OTHER);
    }
    // Built in one literal: `FlowKey::default()` plus field stores compiles
    // to a byte-at-a-time memset call on BPF.
    let flow = FlowKey {
        addr,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port,
        proto,
        _pad0: 0,
        _pad1: 0,
    };

    // Whether this is the first packet of a flow (TCP SYN, QUIC Initial).
    let opening = if proto == PROTO_TCP {
        let Some(doff_flags) = load::<[u8; 2]>(ctx, off + 12) else {
            return malformed(c, len);
        };
        if doff_flags[0] >> 4 < 5 || load::<[u8; 20]>(ctx, off).is_none() {
            return malformed(c, len);
        }
        doff_flags[1] & 0x12 == 0x02
    } else {
        if load::<[u8; 8]>(ctx, off).is_none() {
            return malformed(c, len);
        }
        match load::<u8>(ctx, off + 8) {
            Some(b) => b & 0xf0 == 0xc0,
            None => false,
        }
    };

    let Some(cfg) = DOME_CONFIG.get(0) else {
        return pass(c, counter::PASS_OTHER);
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

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
                &flow,
                0,
                len,
            );
            return drop(c, counter::DROP_BLOCKLIST);
        }
    }
    if cfg.has_flow_blocks != 0 {
        // SAFETY: plain hash map, value read once.
        if let Some(until) = unsafe { DOME_BLOCKED_FLOWS.get(&flow) }
            && *until > now
        {
            emit(
                c,
                cfg.events_per_sec,
                now,
                event::BLOCKED,
                event::DETAIL_FLOW,
                &flow,
                0,
                len,
            );
            return drop(c, counter::DROP_BLOCKLIST);
        }
    }

    if let Some(binding) = DOME_FLOWS.get_ptr_mut(&flow) {
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
                    &flow,
                    slot,
                    len,
                );
                return drop(c, counter::DROP_BLOCKLIST);
            }
            // A flow whose identity ran out of packets is dropped without
            // charging again until the next packet could conform (unless user
            // space changed the identity since): a flood reports its
            // exhaustion once and costs no atomics.
            if binding.drop_until_ns > now && binding.drop_generation == id.generation {
                return drop(c, counter::DROP_BUDGET);
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
                    &flow,
                    slot,
                    len,
                );
                return drop(c, counter::DROP_BUDGET);
            }
            return pass(c, counter::PASS_BOUND);
        }
        // NO_SLOT (a flow that exists only to be blocked) falls through to pre-auth.
    }

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
            &flow,
            0,
            len,
        );
        return drop(c, counter::DROP_PREAUTH);
    }
    let refused = match lru_state(&DOME_PREAUTH_PREFIXES, &prefix) {
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
            &flow,
            0,
            len,
        );
        return drop(c, counter::DROP_PREAUTH_PREFIX);
    }

    count_prebind(&flow, proto, opening, len);
    if opening {
        emit(
            c,
            cfg.events_per_sec,
            now,
            event::NEW_FLOW,
            0,
            &flow,
            0,
            len,
        );
    }
    pass(c, counter::PASS_UNBOUND)
}

/// The bucket state under `key`, created full if absent. `BPF_NOEXIST` so
/// two CPUs seeing a new key at once do not reset each other's charge.
#[inline(always)]
fn lru_state(map: &LruHashMap<[u32; 4], BucketState>, key: &[u32; 4]) -> Option<*mut BucketState> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = map.insert(key, &BucketState::default(), BPF_NOEXIST as u64);
    map.get_ptr_mut(key)
}

/// Counts a passed unbound packet against its flow, so the identity the flow
/// is later bound to can be charged for it. A TCP SYN starts the count
/// afresh (a new connection on a reused 4-tuple owes nothing for the old
/// one); another packet adds to a count that exists; other packets of flows
/// with no count (the tail of a connection after it was unbound, a flow
/// older than the program) are not tracked. Only passed packets count: the
/// identity pays for what reached Dome.
#[inline(always)]
fn count_prebind(flow: &FlowKey, proto: u8, opening: bool, len: u64) {
    let first = PreBind {
        packets: 1,
        bytes: len,
    };
    if opening && proto == PROTO_TCP {
        let _ = DOME_PREBIND.insert(flow, &first, 0);
        return;
    }
    match DOME_PREBIND.get_ptr_mut(flow) {
        Some(p) => {
            // SAFETY: LRU values are preallocated and 8-byte aligned; several
            // CPUs may count the same flow, hence the atomic adds.
            unsafe {
                atomic_xadd::<u64, u64, { Relaxed }>(addr_of_mut!((*p).packets), 1);
                atomic_xadd::<u64, u64, { Relaxed }>(addr_of_mut!((*p).bytes), len);
            }
        }
        None if opening => {
            let _ = DOME_PREBIND.insert(flow, &first, BPF_NOEXIST as u64);
        }
        None => {}
    }
}

/// Takes back a charge `charge` made (the refund of a packet a later
/// bucket refused). The words may have moved on meanwhile; subtracting the
/// same cost undoes exactly this packet's share.
#[inline(always)]
fn refund(budget: &Budget, state: *mut BucketState, len: u64) {
    // SAFETY: `state` points into a map value that outlives this call.
    unsafe {
        if budget.pkt_interval_ns != 0 {
            atomic_xsub::<u64, u64, { Relaxed }>(
                addr_of_mut!((*state).pkt_tat),
                budget.pkt_interval_ns,
            );
        }
        if budget.byte_ns_per_kib != 0 {
            atomic_xsub::<u64, u64, { Relaxed }>(
                addr_of_mut!((*state).byte_tat),
                byte_cost(budget, len),
            );
        }
    }
}

/// Charges `cost` to a TAT word unconditionally: traffic already passed
/// cannot be refused, only paid for, so the identity may go into debt (its
/// next packets drop until time catches up). Same compare-and-swap as
/// [`gcra`]; after four lost races an atomic add still books the charge.
#[inline(always)]
fn debit_word(tat: *mut u64, now: u64, cost: u64) {
    if cost == 0 {
        return;
    }
    // SAFETY: as in `gcra`.
    let mut cur = unsafe { read_volatile(tat) };
    for _ in 0..4 {
        let base = if cur > now { cur } else { now };
        let next = base.saturating_add(cost);
        // SAFETY: as above.
        let (seen, swapped) =
            unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(tat, cur, next) };
        if swapped {
            return;
        }
        cur = seen;
    }
    // SAFETY: as above.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(tat, cost) };
}

/// Charges a bound flow's pre-bind traffic to its identity. Never attached:
/// user space runs it with `BPF_PROG_TEST_RUN`, the "packet" being a
/// [`DebitRequest`], right after it bound the flow. User space works out the
/// costs (they need 128-bit products, which BPF lacks). It runs in the kernel
/// because the identity's TAT words are updated by XDP on every CPU with
/// compare-and-swap; a user-space map update rewrites the whole value and
/// would lose the charges made between its read and its write.
/// `XDP_PASS` when charged, `XDP_ABORTED` for a malformed request.
#[xdp]
pub fn dome_xdp_debit(ctx: XdpContext) -> u32 {
    let Some(req) = load::<DebitRequest>(&ctx, 0) else {
        return XDP_ABORTED;
    };
    let Some(id) = DOME_IDENTITIES.get_ptr_mut(req.slot) else {
        return XDP_ABORTED;
    };
    // SAFETY: array values live as long as the map.
    let id = unsafe { &mut *id };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    debit_word(addr_of_mut!(id.state.pkt_tat), now, req.pkt_ns);
    debit_word(addr_of_mut!(id.state.byte_tat), now, req.byte_ns);
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
