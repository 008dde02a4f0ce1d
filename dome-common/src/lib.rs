//! Types shared by Dome's XDP program (`dome-ebpf`) and user space (`dome-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel and user space read
//! the same bytes out of BPF maps. With the `user` feature the types implement
//! `aya::Pod` so user space can put them into maps.
#![no_std]

/// Identity slots the kernel tier can hold budgets for (size of the
/// `DOME_IDENTITIES` array).
pub const MAX_SLOTS: u32 = 65_536;
/// Bound flows the kernel tier tracks (LRU: the least recently used binding
/// goes first; an evicted flow is metered as unbound until bound again).
pub const MAX_FLOWS: u32 = 262_144;
/// Source addresses metered before authentication (LRU: a flood of fresh
/// addresses evicts the least recently seen, and each fresh one still pays
/// its prefix's aggregate).
pub const MAX_PREAUTH_ADDRS: u32 = 262_144;
/// Source prefixes (/24, /64) whose aggregate is metered before authentication (LRU).
pub const MAX_PREAUTH_PREFIXES: u32 = 131_072;
/// Unbound flows whose traffic is counted until they are bound (LRU: an
/// evicted flow's pre-bind traffic is not charged to its identity).
pub const MAX_PREBIND_FLOWS: u32 = 262_144;
/// Blocked flows and blocked prefixes (plain maps: an attacker cannot evict a block).
pub const MAX_BLOCKED_FLOWS: u32 = 65_536;
pub const MAX_BLOCKED_PREFIXES: u32 = 16_384;
/// Bytes of the event ring buffer.
pub const EVENT_RING_BYTES: u32 = 256 * 1024;
/// Words of the listener-port bitmap per L4 protocol (65,536 bits).
pub const PORT_WORDS: u32 = 1024;

/// L4 protocol numbers as they appear in the IP header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Index into `DOME_PORTS` of the word that holds `port`'s bit for `proto`.
#[inline(always)]
pub const fn port_word(proto: u8, port: u16) -> u32 {
    let base = if proto == PROTO_UDP { PORT_WORDS } else { 0 };
    base + (port as u32 >> 6)
}

/// The bit of `port` inside its word.
#[inline(always)]
pub const fn port_bit(port: u16) -> u64 {
    1u64 << (port & 63)
}

/// A deadline that never passes.
pub const FOREVER: u64 = u64::MAX;

/// One direction of one connection as XDP sees it arriving at Dome.
///
/// Addresses are IPv6; IPv4 sources are stored v4-mapped (`::ffff:a.b.c.d`),
/// so one key type covers both families. Address words are in network byte
/// order as read from the packet; ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    // Two fields, not `[u8; 3]`: zeroing an array compiles to a memset call on BPF.
    pub _pad0: u8,
    pub _pad1: u16,
}

/// What a bound flow maps to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBinding {
    pub slot: u32,
    /// The identity's `generation` when `drop_until_ns` was written: a
    /// budget change by user space invalidates the shortcut.
    pub drop_generation: u32,
    /// Set by XDP when the identity refused a packet of this flow: the time
    /// before which no packet can conform, so later packets drop without
    /// charging the buckets again. User space writes 0.
    pub drop_until_ns: u64,
}

/// A GCRA budget in nanoseconds, precomputed by user space so the kernel does
/// no division: a packet costs `pkt_interval_ns`, a frame of `len` bytes
/// costs `len * byte_ns_per_kib / 1024`, and a charge is refused when it
/// would push the theoretical arrival time more than the burst ahead of now.
/// A zero cost means "no limit" in that dimension.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub pkt_interval_ns: u64,
    pub pkt_burst_ns: u64,
    pub byte_ns_per_kib: u64,
    pub byte_burst_ns: u64,
}

/// Theoretical arrival times of a GCRA pair (packets, bytes). Updated by the
/// XDP program with atomic compare-and-swap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    pub pkt_tat: u64,
    pub byte_tat: u64,
}

/// One identity slot: its budget, its block deadline and its bucket state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub budget: Budget,
    /// `bpf_ktime_get_ns` deadline until which every packet of the identity
    /// is dropped; 0 = not blocked.
    pub blocked_until_ns: u64,
    /// Bumped by user space on every change to the slot.
    pub generation: u32,
    pub _pad: u32,
    pub state: BucketState,
}

/// What an unbound flow sent before it was bound (`DOME_PREBIND`): added to
/// by XDP with atomic adds, taken by user space when it binds the flow and
/// charged to the identity then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreBind {
    pub packets: u64,
    /// Whole frames, as the byte buckets count them.
    pub bytes: u64,
}

/// The input of the debit program ([`PROG_DEBIT`]), passed as its "packet"
/// under `BPF_PROG_TEST_RUN`: push identity `slot`'s packet and byte TATs
/// forward by these many nanoseconds (what the traffic would have cost).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebitRequest {
    pub slot: u32,
    pub _pad: u32,
    pub pkt_ns: u64,
    pub byte_ns: u64,
}

/// Global settings of the XDP program (`DOME_CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// Budget per source address for flows not yet bound.
    pub preauth: Budget,
    /// Budget shared by every source address of one prefix (/24, /64) for
    /// flows not yet bound: the aggregate over the per-address buckets.
    pub preauth_prefix: Budget,
    /// Events each CPU may send per second; the rest are counted as suppressed.
    pub events_per_sec: u32,
    /// Non-zero while `DOME_BLOCKED_FLOWS` has entries (skip the lookup otherwise).
    pub has_flow_blocks: u32,
    /// Non-zero while `DOME_BLOCKED_PREFIXES` has entries.
    pub has_prefix_blocks: u32,
    pub _pad: u32,
}

/// Counter indices into [`Counters::v`].
pub mod counter {
    /// Packets to a listener port passed on a bound flow within budget.
    pub const PASS_BOUND: usize = 0;
    /// Packets to a listener port passed on an unbound flow within the pre-auth budget.
    pub const PASS_UNBOUND: usize = 1;
    /// Packets not addressed to a listener (other ports, other protocols, non-IP).
    pub const PASS_OTHER: usize = 2;
    /// Non-first IP fragments: no L4 header to judge; passed (see the program's rules).
    pub const PASS_FRAGMENT: usize = 3;
    /// Dropped: a bound identity over its packet or byte budget.
    pub const DROP_BUDGET: usize = 4;
    /// Dropped: an unbound flow's source address over its pre-auth budget.
    pub const DROP_PREAUTH: usize = 5;
    /// Dropped: identity, flow or prefix on the blocklist.
    pub const DROP_BLOCKLIST: usize = 6;
    /// Dropped: IP or L4 header truncated or inconsistent.
    pub const DROP_MALFORMED: usize = 7;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: usize = 8;
    /// Events not written: over the per-CPU sample rate or ring full.
    pub const EVENTS_SUPPRESSED: usize = 9;
    /// Dropped: an unbound flow's source address within its own pre-auth
    /// budget, but its prefix (/24, /64) over the aggregate.
    pub const DROP_PREAUTH_PREFIX: usize = 10;
    pub const COUNT: usize = 11;

    pub const NAMES: [&str; COUNT] = [
        "pass_bound",
        "pass_unbound",
        "pass_other",
        "pass_fragment",
        "drop_budget",
        "drop_preauth",
        "drop_blocklist",
        "drop_malformed",
        "events_sent",
        "events_suppressed",
        "drop_preauth_prefix",
    ];
}

/// Per-CPU counters (`DOME_COUNTERS[0]`); user space sums the CPUs. The
/// event sampler's window lives here too, so a packet does one per-CPU lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub v: [u64; counter::COUNT],
    /// Start of this CPU's one-second event window (`bpf_ktime_get_coarse_ns`).
    pub window_start_ns: u64,
    /// Events this CPU sent in the window.
    pub window_sent: u64,
}

/// Event kinds sent on `DOME_EVENTS`.
pub mod event {
    /// A bound identity ran out of budget (`detail`: 1 packets, 2 bytes).
    pub const BUDGET_EXHAUSTED: u8 = 1;
    /// An unbound source ran out of its pre-auth budget (`detail`: 1 packets,
    /// 2 bytes; plus `DETAIL_AGGREGATE` when it was the prefix's aggregate).
    pub const PREAUTH_EXHAUSTED: u8 = 2;
    /// A blocked packet (`detail`: 1 identity, 2 flow, 3 prefix).
    pub const BLOCKED: u8 = 3;
    /// A malformed packet was dropped.
    pub const MALFORMED: u8 = 4;
    /// First packet of an unbound flow (TCP SYN, QUIC Initial).
    pub const NEW_FLOW: u8 = 5;

    pub const DETAIL_PACKETS: u8 = 1;
    pub const DETAIL_BYTES: u8 = 2;
    pub const DETAIL_IDENTITY: u8 = 1;
    pub const DETAIL_FLOW: u8 = 2;
    pub const DETAIL_PREFIX: u8 = 3;
    /// Flag on `PREAUTH_EXHAUSTED`: the prefix's aggregate refused, not the address.
    pub const DETAIL_AGGREGATE: u8 = 0x10;
}

/// One event from the XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub flow: FlowKey,
    pub slot: u32,
    pub len: u16,
    pub kind: u8,
    pub detail: u8,
}

/// Slot value meaning "no identity" (a flow entry that exists only to be blocked).
pub const NO_SLOT: u32 = u32::MAX;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with no padding the kernel
    // could leak uninitialised (padding is spelled out as `_pad` fields).
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowBinding {}
    unsafe impl aya::Pod for Budget {}
    unsafe impl aya::Pod for BucketState {}
    unsafe impl aya::Pod for Identity {}
    unsafe impl aya::Pod for XdpConfig {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for PreBind {}
    unsafe impl aya::Pod for DebitRequest {}
}

/// Map names as they appear in the ELF object.
pub mod maps {
    pub const CONFIG: &str = "DOME_CONFIG";
    pub const PORTS: &str = "DOME_PORTS";
    pub const FLOWS: &str = "DOME_FLOWS";
    pub const IDENTITIES: &str = "DOME_IDENTITIES";
    pub const PREAUTH_ADDRS: &str = "DOME_PREAUTH_ADDRS";
    pub const PREAUTH_PREFIXES: &str = "DOME_PREAUTH_PREFIXES";
    pub const PREBIND: &str = "DOME_PREBIND";
    pub const BLOCKED_FLOWS: &str = "DOME_BLOCKED_FLOWS";
    pub const BLOCKED_PREFIXES: &str = "DOME_BLOCKED_PREFIXES";
    pub const COUNTERS: &str = "DOME_COUNTERS";
    pub const EVENTS: &str = "DOME_EVENTS";
}

/// Program names in the ELF object.
pub const PROG_XDP: &str = "dome_xdp";
/// A program that only returns XDP_PASS: the benchmark's floor (test-run overhead).
pub const PROG_BASELINE: &str = "dome_xdp_baseline";
/// A program never attached: user space runs it with `BPF_PROG_TEST_RUN` on
/// a [`DebitRequest`] to charge a flow's pre-bind traffic to its identity
/// with the same atomic updates the XDP program uses.
pub const PROG_DEBIT: &str = "dome_xdp_debit";
