//! The maps the program shares with user space. Their names are the ones
//! `dome_common::maps` gives user space: a `#[map]` takes its name from its
//! static, so each static here is named as its constant there.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dome_common::{
    BucketState, Counters, EVENT_RING_BYTES, FlowBinding, FlowKey, Identity, MAX_BLOCKED_FLOWS,
    MAX_BLOCKED_PREFIXES, MAX_FLOWS, MAX_PREAUTH_ADDRS, MAX_PREAUTH_PREFIXES, MAX_PREBIND_FLOWS,
    MAX_SLOTS, PORT_WORDS, PreBind, XdpConfig, port_bit, port_word,
};

#[map]
pub(crate) static DOME_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map]
pub(crate) static DOME_PORTS: Array<u64> = Array::with_max_entries(2 * PORT_WORDS, 0);
#[map]
pub(crate) static DOME_FLOWS: LruHashMap<FlowKey, FlowBinding> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
pub(crate) static DOME_IDENTITIES: Array<Identity> = Array::with_max_entries(MAX_SLOTS, 0);
#[map]
pub(crate) static DOME_PREAUTH_ADDRS: LruHashMap<[u32; 4], BucketState> =
    LruHashMap::with_max_entries(MAX_PREAUTH_ADDRS, 0);
#[map]
pub(crate) static DOME_PREAUTH_PREFIXES: LruHashMap<[u32; 4], BucketState> =
    LruHashMap::with_max_entries(MAX_PREAUTH_PREFIXES, 0);
#[map]
pub(crate) static DOME_PREBIND: LruHashMap<FlowKey, PreBind> =
    LruHashMap::with_max_entries(MAX_PREBIND_FLOWS, 0);
#[map]
pub(crate) static DOME_BLOCKED_FLOWS: HashMap<FlowKey, u64> =
    HashMap::with_max_entries(MAX_BLOCKED_FLOWS, 0);
#[map]
pub(crate) static DOME_BLOCKED_PREFIXES: LpmTrie<[u8; 16], u64> =
    LpmTrie::with_max_entries(MAX_BLOCKED_PREFIXES, 0);
#[map]
pub(crate) static DOME_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static DOME_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

#[inline(always)]
pub(crate) fn listening(proto: u8, port: u16) -> bool {
    match DOME_PORTS.get(port_word(proto, port)) {
        Some(w) => *w & port_bit(port) != 0,
        None => false,
    }
}

/// The bucket state under `key`, created full if absent. `BPF_NOEXIST` so
/// two CPUs seeing a new key at once do not reset each other's charge.
#[inline(always)]
pub(crate) fn lru_state(
    map: &LruHashMap<[u32; 4], BucketState>,
    key: &[u32; 4],
) -> Option<*mut BucketState> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = map.insert(key, &BucketState::default(), BPF_NOEXIST as u64);
    map.get_ptr_mut(key)
}
