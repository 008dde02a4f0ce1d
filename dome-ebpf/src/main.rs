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

// Split by concern, as Katran splits its headers: `parse` (headers to a
// flow), `verdict` (the rules on a flow, counters and events), `meter`
// (GCRA budgets), `maps` (what user space shares).
mod maps;
mod meter;
mod parse;
mod verdict;

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use dome_common::DebitRequest;

use maps::{DOME_COUNTERS, DOME_IDENTITIES};
use meter::debit_word;
use parse::load;
use verdict::judge;

#[xdp]
pub(crate) fn dome_xdp(ctx: XdpContext) -> u32 {
    match DOME_COUNTERS.get_ptr_mut(0) {
        // SAFETY: a per-CPU value: only this CPU touches it while we run.
        Some(c) => judge(&ctx, unsafe { &mut *c }),
        None => XDP_PASS,
    }
}

/// The benchmark's floor: what `BPF_PROG_TEST_RUN` costs around a program
/// that does nothing.
#[xdp]
pub(crate) fn dome_xdp_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
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
pub(crate) fn dome_xdp_debit(ctx: XdpContext) -> u32 {
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
