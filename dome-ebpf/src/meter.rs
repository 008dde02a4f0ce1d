//! Budgets: GCRA on theoretical-arrival-time words shared by every CPU,
//! charged and refunded with atomics, and the pre-bind count a flow's
//! identity pays once it is bound.

use core::{
    intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg, atomic_xadd, atomic_xsub},
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::bindings::BPF_NOEXIST;
use dome_common::{BucketState, Budget, FlowKey, PROTO_TCP, PreBind, event};

use crate::maps::DOME_PREBIND;

/// GCRA on one theoretical-arrival-time word. The word is shared by every
/// CPU that receives packets of the same identity (or prefix), so it is
/// updated with compare-and-swap: exact under concurrency, no lock, and a
/// refused charge writes nothing. Per-CPU shares would split the burst by
/// the number of CPUs and refuse a legitimate burst that lands on one queue;
/// a spin lock would need BTF-defined maps and serialise the CPUs.
/// `Err(t)`: refused, and no charge of `cost` conforms before time `t`.
#[inline(always)]
pub(crate) fn gcra(tat: *mut u64, now: u64, cost: u64, burst: u64) -> Result<(), u64> {
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
pub(crate) fn byte_cost(budget: &Budget, len: u64) -> u64 {
    (len.wrapping_mul(budget.byte_ns_per_kib) >> 10) | 1
}

/// Charges one packet of `len` bytes. `Err((dimension, t))` when refused:
/// the dimension (`event::DETAIL_PACKETS` / `DETAIL_BYTES`) and, for the
/// packet dimension, the time before which no packet can conform (0 for
/// bytes, where it depends on the next frame's size).
#[inline(always)]
pub(crate) fn charge(
    budget: &Budget,
    state: *mut BucketState,
    now: u64,
    len: u64,
) -> Result<(), (u8, u64)> {
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

/// Counts a passed unbound packet against its flow, so the identity the flow
/// is later bound to can be charged for it. A TCP SYN starts the count
/// afresh (a new connection on a reused 4-tuple owes nothing for the old
/// one); another packet adds to a count that exists; other packets of flows
/// with no count (the tail of a connection after it was unbound, a flow
/// older than the program) are not tracked. Only passed packets count: the
/// identity pays for what reached Dome.
#[inline(always)]
pub(crate) fn count_prebind(flow: &FlowKey, proto: u8, opening: bool, len: u64) {
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
pub(crate) fn refund(budget: &Budget, state: *mut BucketState, len: u64) {
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
pub(crate) fn debit_word(tat: *mut u64, now: u64, cost: u64) {
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
