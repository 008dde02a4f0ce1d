//! The kernel tier: loads Dome's XDP program, attaches it, and gives the rest
//! of Dome a typed handle on its maps (bind flows, set budgets, block, read
//! counters, receive events).

pub mod budget;
mod config;
pub mod craft;
pub mod enforcer;
mod events;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key as LpmKey,
    },
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode},
};
use dome_common::{
    Counters, DebitRequest, FlowBinding, FlowKey, Identity, MAX_SLOTS, PORT_WORDS, PROTO_TCP,
    PROTO_UDP, PreBind, XdpConfig, counter, maps, port_bit, port_word,
};
use serde::Serialize;

pub use budget::{BudgetSpec, PreauthSpec};
pub use config::XdpSection;
pub use enforcer::{Enforcer, MemoryEnforcer};
pub use events::{EventKind, EventStats, KernelEvent, drain as drain_events, spawn_event_reader};

use crate::clock::monotonic_ns;

/// The compiled XDP object, built by `build.rs` from `dome-ebpf`.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dome-ebpf"));

/// How Dome wants the program attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSetting {
    /// Native (driver) mode, falling back to SKB (generic) mode.
    Auto,
    Native,
    Skb,
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Skb,
}

/// An L4 protocol Dome listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn number(self) -> u8 {
        match self {
            L4::Tcp => PROTO_TCP,
            L4::Udp => PROTO_UDP,
        }
    }
}

/// A connection as XDP keys it: the client's address and port, Dome's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub proto: L4,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Flow {
    pub fn key(&self) -> FlowKey {
        FlowKey {
            addr: addr_words(self.src),
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto.number(),
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// Address words as the XDP program stores them: IPv6 bytes (IPv4 mapped to
/// `::ffff:a.b.c.d`), read as native-endian words.
pub fn addr_words(ip: IpAddr) -> [u32; 4] {
    let b = addr_bytes(ip);
    std::array::from_fn(|i| {
        u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A source prefix to block: an IPv4 or IPv6 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    fn key(&self) -> LpmKey<[u8; 16]> {
        let bits = match self.addr {
            IpAddr::V4(_) => 96 + self.len.min(32) as u32,
            IpAddr::V6(_) => self.len.min(128) as u32,
        };
        let mut bytes = addr_bytes(self.addr);
        // Zero the host bits so equal networks give equal keys.
        for (i, b) in bytes.iter_mut().enumerate() {
            let keep = bits.saturating_sub(8 * i as u32).min(8);
            *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
        LpmKey::new(bits, bytes)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`{l}` is not a prefix length (0..={max})"))?
        };
        Ok(Prefix { addr, len })
    }
}

/// Settings the program runs with (from `[xdp]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramSettings {
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// Pre-auth budget of one source address.
    pub preauth: BudgetSpec,
    /// Pre-auth budget shared by a source prefix (/24, /64): the aggregate.
    pub preauth_prefix: BudgetSpec,
    pub events_per_sec: u32,
}

/// What the kernel tier did at start-up, for logs and `/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum XdpStatus {
    Attached { interface: String, mode: AttachMode },
    Disabled,
    Unavailable { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP program: {0}")]
    Load(String),
    #[error("attaching XDP to `{interface}`: {reason}")]
    Attach { interface: String, reason: String },
    // The cause and its own causes (aya keeps the errno as a syscall
    // error's source) are in the text and not also a `source`, so
    // `error_chain` says each once.
    #[error("XDP map {map}: {}", crate::error_chain(error))]
    Map { map: &'static str, error: MapError },
    #[error("identity slot {0} is out of range (0..{MAX_SLOTS})")]
    Slot(u32),
    #[error("test run: {}", crate::error_chain(.0))]
    TestRun(ProgramError),
    #[error("charging identity slot {slot} for its flow's pre-bind traffic: verdict {verdict}")]
    Debit { slot: u32, verdict: u32 },
}

impl From<ProgramError> for XdpError {
    fn from(e: ProgramError) -> Self {
        XdpError::TestRun(e)
    }
}

/// Whether a map operation failed only because the key is not there: aya
/// reports a lookup's miss as `KeyNotFound` but a delete's as the syscall's
/// ENOENT.
fn absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> XdpError {
    move |error| XdpError::Map { map, error }
}

struct Blocks {
    config: Array<MapData, XdpConfig>,
    cfg: XdpConfig,
    flows: HashMap<MapData, FlowKey, u64>,
    prefixes: LpmTrie<MapData, [u8; 16], u64>,
    n_flows: usize,
    n_prefixes: usize,
}

impl Blocks {
    fn publish(&mut self) -> Result<(), XdpError> {
        self.cfg.has_flow_blocks = (self.n_flows > 0) as u32;
        self.cfg.has_prefix_blocks = (self.n_prefixes > 0) as u32;
        self.config
            .set(0, self.cfg, 0)
            .map_err(map_err(maps::CONFIG))
    }
}

/// The loaded program and its maps. Cheap to share (`Arc`); every method
/// takes `&self`. Each map sits behind its own short mutex: these are
/// control-plane operations (once per connection or per block), never per
/// request, and aya's map writes want `&mut`.
pub struct KernelTier {
    /// Write-locked to attach or detach; read-locked for test runs, which
    /// may run concurrently on several CPUs.
    ebpf: RwLock<Ebpf>,
    /// The port bitmap map and the words last written to it.
    ports: Mutex<(Array<MapData, u64>, Vec<u64>)>,
    flows: Mutex<HashMap<MapData, FlowKey, FlowBinding>>,
    /// What unbound flows sent (`DOME_PREBIND`), taken at bind time.
    prebind: Mutex<HashMap<MapData, FlowKey, PreBind>>,
    identities: Mutex<Array<MapData, Identity>>,
    blocks: Mutex<Blocks>,
    counters: PerCpuArray<MapData, Counters>,
    events: Mutex<Option<RingBuf<MapData>>>,
    attached: Mutex<Option<(String, AttachMode)>>,
}

impl KernelTier {
    /// Loads the program into the kernel (verifier included) and writes its
    /// settings; nothing is attached yet.
    pub fn load(settings: &ProgramSettings) -> Result<Arc<Self>, XdpError> {
        let mut ebpf = EbpfLoader::new()
            .load(PROGRAM_OBJECT)
            .map_err(|e| XdpError::Load(format!("{e:#}")))?;
        for name in [
            dome_common::PROG_XDP,
            dome_common::PROG_BASELINE,
            dome_common::PROG_DEBIT,
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| XdpError::Load(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
            prog.load()
                .map_err(|e| XdpError::Load(verifier_message(e)))?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| XdpError::Load(format!("map {name} missing from the object")))
        };
        let config =
            Array::try_from(take(&mut ebpf, maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
        let ports: Array<MapData, u64> =
            Array::try_from(take(&mut ebpf, maps::PORTS)?).map_err(map_err(maps::PORTS))?;
        let flows =
            HashMap::try_from(take(&mut ebpf, maps::FLOWS)?).map_err(map_err(maps::FLOWS))?;
        let prebind =
            HashMap::try_from(take(&mut ebpf, maps::PREBIND)?).map_err(map_err(maps::PREBIND))?;
        let identities = Array::try_from(take(&mut ebpf, maps::IDENTITIES)?)
            .map_err(map_err(maps::IDENTITIES))?;
        let block_flows = HashMap::try_from(take(&mut ebpf, maps::BLOCKED_FLOWS)?)
            .map_err(map_err(maps::BLOCKED_FLOWS))?;
        let block_prefixes = LpmTrie::try_from(take(&mut ebpf, maps::BLOCKED_PREFIXES)?)
            .map_err(map_err(maps::BLOCKED_PREFIXES))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
            .map_err(map_err(maps::COUNTERS))?;
        let events =
            RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?).map_err(map_err(maps::EVENTS))?;

        let mut blocks = Blocks {
            config,
            cfg: XdpConfig {
                preauth: settings.preauth.to_kernel(),
                preauth_prefix: settings.preauth_prefix.to_kernel(),
                events_per_sec: settings.events_per_sec,
                ..Default::default()
            },
            flows: block_flows,
            prefixes: block_prefixes,
            n_flows: 0,
            n_prefixes: 0,
        };
        blocks.publish()?;
        let tier = KernelTier {
            ebpf: RwLock::new(ebpf),
            ports: Mutex::new((ports, vec![0; 2 * PORT_WORDS as usize])),
            flows: Mutex::new(flows),
            prebind: Mutex::new(prebind),
            identities: Mutex::new(identities),
            blocks: Mutex::new(blocks),
            counters,
            events: Mutex::new(Some(events)),
            attached: Mutex::new(None),
        };
        tier.write_ports(settings)?;
        Ok(Arc::new(tier))
    }

    /// Applies new settings to the running program (a config reload):
    /// listener ports, the pre-auth budgets and the event rate.
    pub fn apply_settings(&self, settings: &ProgramSettings) -> Result<(), XdpError> {
        self.write_ports(settings)?;
        let mut b = self.blocks.lock().expect("blocks lock");
        b.cfg.preauth = settings.preauth.to_kernel();
        b.cfg.preauth_prefix = settings.preauth_prefix.to_kernel();
        b.cfg.events_per_sec = settings.events_per_sec;
        b.publish()
    }

    /// Writes the listener-port bitmap, touching only words that change.
    fn write_ports(&self, settings: &ProgramSettings) -> Result<(), XdpError> {
        let mut words = vec![0u64; 2 * PORT_WORDS as usize];
        for (proto, list) in [
            (PROTO_TCP, &settings.tcp_ports),
            (PROTO_UDP, &settings.udp_ports),
        ] {
            for &p in list {
                words[port_word(proto, p) as usize] |= port_bit(p);
            }
        }
        let mut guard = self.ports.lock().expect("ports lock");
        let (map, current) = &mut *guard;
        for (i, (w, old)) in words.iter().zip(current.iter_mut()).enumerate() {
            if w != old {
                map.set(i as u32, *w, 0).map_err(map_err(maps::PORTS))?;
                *old = *w;
            }
        }
        Ok(())
    }

    /// Attaches to `interface`. `Auto` tries native mode first and falls back
    /// to SKB mode with one log line saying so.
    pub fn attach(&self, interface: &str, mode: ModeSetting) -> Result<AttachMode, XdpError> {
        let mut ebpf = self.ebpf.write().expect("ebpf lock");
        let prog: &mut Xdp = ebpf
            .program_mut(dome_common::PROG_XDP)
            .expect("checked at load")
            .try_into()
            .expect("checked at load");
        let attach_err = |e: ProgramError| XdpError::Attach {
            interface: interface.to_string(),
            reason: crate::error_chain(&e),
        };
        let got = match mode {
            ModeSetting::Native => prog
                .attach(interface, XdpMode::Driver)
                .map(|_| AttachMode::Native),
            ModeSetting::Skb => prog
                .attach(interface, XdpMode::Skb)
                .map(|_| AttachMode::Skb),
            ModeSetting::Auto => match prog.attach(interface, XdpMode::Driver) {
                Ok(_) => Ok(AttachMode::Native),
                Err(native) => {
                    tracing::info!(
                        interface,
                        reason = %crate::error_chain(&native),
                        "native XDP not available; attaching in SKB (generic) mode"
                    );
                    prog.attach(interface, XdpMode::Skb)
                        .map(|_| AttachMode::Skb)
                }
            },
        }
        .map_err(attach_err)?;
        *self.attached.lock().expect("attached lock") = Some((interface.to_string(), got));
        Ok(got)
    }

    /// Where the program is attached, if it is.
    pub fn attachment(&self) -> Option<(String, AttachMode)> {
        self.attached.lock().expect("attached lock").clone()
    }

    /// Detaches from every interface. Also happens when the tier is dropped
    /// (and, the links being file descriptors, when the process dies).
    pub fn detach(&self) {
        let mut ebpf = self.ebpf.write().expect("ebpf lock");
        if let Some(p) = ebpf.program_mut(dome_common::PROG_XDP)
            && let Ok(prog) = <&mut Xdp>::try_from(p)
        {
            // Unloading drops every link; load again so the tier stays usable
            // for test runs.
            let _ = prog.unload();
            let _ = prog.load();
        }
        *self.attached.lock().expect("attached lock") = None;
    }

    /// Binds a flow to an identity slot: from now on its packets are charged
    /// to that identity's budget, and what it sent before (while unbound,
    /// metered only by the pre-auth budgets) is charged to the identity now.
    ///
    /// Order matters under concurrency. The binding goes in first, so every
    /// packet XDP judges after it is charged to the identity directly; only
    /// then is the flow's pre-bind count taken, and no packet adds to it any
    /// more except one a CPU was judging at that very instant (it looked the
    /// binding up before it existed): at most one packet per CPU escapes.
    /// The charge is made in the kernel by `dome_xdp_debit`, with the same
    /// compare-and-swap as XDP's own charges, since XDP may be charging the
    /// identity on other CPUs meanwhile. It is made here rather than on the
    /// flow's first bound packet because a client that opens a connection per
    /// request may send nothing more after its request: the connection
    /// closes, and is unbound, before another packet arrives.
    pub fn bind_flow(&self, flow: &Flow, slot: u32) -> Result<(), XdpError> {
        if slot >= MAX_SLOTS {
            return Err(XdpError::Slot(slot));
        }
        let key = flow.key();
        self.flows
            .lock()
            .expect("flows lock")
            .insert(
                key,
                FlowBinding {
                    slot,
                    drop_generation: 0,
                    drop_until_ns: 0,
                },
                0,
            )
            .map_err(map_err(maps::FLOWS))?;
        // The flow is bound now: report a failed charge rather than return
        // an error, which would leave the caller believing it unbound (and
        // so never unbinding it when the connection closes).
        if let Err(e) = self
            .take_prebind(&key)
            .and_then(|owed| self.debit(slot, owed))
        {
            tracing::warn!(slot, error = %e, "charging a flow's pre-bind traffic to its identity failed; the flow is bound");
        }
        Ok(())
    }

    /// Takes (reads and removes) what a flow sent while unbound.
    fn take_prebind(&self, key: &FlowKey) -> Result<PreBind, XdpError> {
        let mut map = self.prebind.lock().expect("prebind lock");
        let owed = match map.get(key, 0) {
            Ok(p) => p,
            Err(e) if absent(&e) => return Ok(PreBind::default()),
            Err(e) => return Err(map_err(maps::PREBIND)(e)),
        };
        match map.remove(key) {
            Ok(()) => Ok(owed),
            Err(e) if absent(&e) => Ok(owed),
            Err(e) => Err(map_err(maps::PREBIND)(e)),
        }
    }

    /// Charges `owed` to identity `slot` in the kernel (see [`Self::bind_flow`]).
    fn debit(&self, slot: u32, owed: PreBind) -> Result<(), XdpError> {
        if owed.packets == 0 && owed.bytes == 0 {
            return Ok(());
        }
        let budget = self.identity(slot)?.budget;
        let (pkt_ns, byte_ns) = budget::debit_cost(&budget, owed.packets, owed.bytes);
        if pkt_ns == 0 && byte_ns == 0 {
            return Ok(());
        }
        let req = DebitRequest {
            slot,
            _pad: 0,
            pkt_ns,
            byte_ns,
        };
        // SAFETY: DebitRequest is repr(C) plain data without implicit padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&req as *const DebitRequest).cast::<u8>(),
                size_of::<DebitRequest>(),
            )
        };
        // Test runs need at least an Ethernet header's worth of data.
        let mut frame = [0u8; 32];
        frame[..bytes.len()].copy_from_slice(bytes);
        let (verdict, _) = self.test_run_repeat(dome_common::PROG_DEBIT, &frame, 1)?;
        if verdict != XDP_PASS {
            return Err(XdpError::Debit { slot, verdict });
        }
        Ok(())
    }

    /// Removes a flow's binding (the connection ended). Unbinding an unknown
    /// flow is not an error: the LRU may have evicted it. A pre-bind count
    /// left by a packet in flight at bind time goes too, so a later
    /// connection on the same 4-tuple does not inherit it.
    pub fn unbind_flow(&self, flow: &Flow) -> Result<(), XdpError> {
        let key = flow.key();
        match self.prebind.lock().expect("prebind lock").remove(&key) {
            Ok(()) => {}
            Err(e) if absent(&e) => {}
            Err(e) => return Err(map_err(maps::PREBIND)(e)),
        }
        match self.flows.lock().expect("flows lock").remove(&key) {
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(e) => Err(map_err(maps::FLOWS)(e)),
        }
    }

    /// What a flow has sent while unbound and not yet been charged for
    /// (zero once it is bound): for tests and diagnostics.
    pub fn prebind_use(&self, flow: &Flow) -> (u64, u64) {
        self.prebind
            .lock()
            .expect("prebind lock")
            .get(&flow.key(), 0)
            .map_or((0, 0), |p| (p.packets, p.bytes))
    }

    /// The slot a flow is bound to, if any.
    pub fn flow_slot(&self, flow: &Flow) -> Option<u32> {
        self.flows
            .lock()
            .expect("flows lock")
            .get(&flow.key(), 0)
            .ok()
            .map(|b| b.slot)
    }

    /// Sets an identity's packet and byte budget. The bucket state is kept,
    /// so changing a budget does not hand out a fresh burst.
    pub fn set_budget(&self, slot: u32, spec: &BudgetSpec) -> Result<(), XdpError> {
        self.update_identity(slot, |id| id.budget = spec.to_kernel())
    }

    /// Gives a slot to a new identity: its budget, with full buckets and no block.
    pub fn reset_identity(&self, slot: u32, spec: &BudgetSpec) -> Result<(), XdpError> {
        self.update_identity(slot, |id| {
            *id = Identity {
                budget: spec.to_kernel(),
                ..Default::default()
            }
        })
    }

    /// Blocks every packet of an identity until `ttl` has passed (`None`: until unblocked).
    pub fn block_identity(&self, slot: u32, ttl: Option<Duration>) -> Result<(), XdpError> {
        let until = deadline(ttl);
        self.update_identity(slot, |id| id.blocked_until_ns = until)
    }

    pub fn unblock_identity(&self, slot: u32) -> Result<(), XdpError> {
        self.update_identity(slot, |id| id.blocked_until_ns = 0)
    }

    /// The kernel's view of an identity slot (budget, block, bucket state).
    pub fn identity(&self, slot: u32) -> Result<Identity, XdpError> {
        if slot >= MAX_SLOTS {
            return Err(XdpError::Slot(slot));
        }
        self.identities
            .lock()
            .expect("identities lock")
            .get(&slot, 0)
            .map_err(map_err(maps::IDENTITIES))
    }

    fn update_identity(&self, slot: u32, f: impl FnOnce(&mut Identity)) -> Result<(), XdpError> {
        if slot >= MAX_SLOTS {
            return Err(XdpError::Slot(slot));
        }
        let mut ids = self.identities.lock().expect("identities lock");
        // Read-modify-write: the kernel may move the bucket words in between,
        // which at worst forgets a few packets' charge. Acceptable for a
        // control-plane change.
        let mut id = ids.get(&slot, 0).map_err(map_err(maps::IDENTITIES))?;
        let generation = id.generation.wrapping_add(1);
        f(&mut id);
        // Invalidates the drop shortcut XDP caches in the identity's flows.
        id.generation = generation;
        ids.set(slot, id, 0).map_err(map_err(maps::IDENTITIES))
    }

    /// Blocks one flow (bound or not) until `ttl` has passed.
    pub fn block_flow(&self, flow: &Flow, ttl: Option<Duration>) -> Result<(), XdpError> {
        let mut b = self.blocks.lock().expect("blocks lock");
        let key = flow.key();
        let existed = b.flows.get(&key, 0).is_ok();
        b.flows
            .insert(key, deadline(ttl), 0)
            .map_err(map_err(maps::BLOCKED_FLOWS))?;
        if !existed {
            b.n_flows += 1;
        }
        b.publish()
    }

    pub fn unblock_flow(&self, flow: &Flow) -> Result<(), XdpError> {
        let mut b = self.blocks.lock().expect("blocks lock");
        match b.flows.remove(&flow.key()) {
            Ok(()) => b.n_flows = b.n_flows.saturating_sub(1),
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => return Err(map_err(maps::BLOCKED_FLOWS)(e)),
        }
        b.publish()
    }

    /// Blocks a source prefix (any length; the longest match wins) until `ttl` has passed.
    pub fn block_prefix(&self, prefix: &Prefix, ttl: Option<Duration>) -> Result<(), XdpError> {
        let mut b = self.blocks.lock().expect("blocks lock");
        let key = prefix.key();
        let existed = exact_prefix(&b.prefixes, &key);
        b.prefixes
            .insert(&key, deadline(ttl), 0)
            .map_err(map_err(maps::BLOCKED_PREFIXES))?;
        if !existed {
            b.n_prefixes += 1;
        }
        b.publish()
    }

    pub fn unblock_prefix(&self, prefix: &Prefix) -> Result<(), XdpError> {
        let mut b = self.blocks.lock().expect("blocks lock");
        match b.prefixes.remove(&prefix.key()) {
            Ok(()) => b.n_prefixes = b.n_prefixes.saturating_sub(1),
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => return Err(map_err(maps::BLOCKED_PREFIXES)(e)),
        }
        b.publish()
    }

    /// Removes expired flow and prefix blocks (an expired entry already
    /// passes; this keeps the maps small and lets XDP skip empty ones).
    /// Returns how many entries went.
    pub fn sweep_expired(&self) -> Result<usize, XdpError> {
        let now = monotonic_ns();
        let mut b = self.blocks.lock().expect("blocks lock");
        let flows: Vec<FlowKey> = b
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, until)| *until <= now)
            .map(|(k, _)| k)
            .collect();
        let prefixes: Vec<LpmKey<[u8; 16]>> = b
            .prefixes
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, until)| *until <= now)
            .map(|(k, _)| k)
            .collect();
        for k in &flows {
            if b.flows.remove(k).is_ok() {
                b.n_flows = b.n_flows.saturating_sub(1);
            }
        }
        for k in &prefixes {
            if b.prefixes.remove(k).is_ok() {
                b.n_prefixes = b.n_prefixes.saturating_sub(1);
            }
        }
        if !flows.is_empty() || !prefixes.is_empty() {
            b.publish()?;
        }
        Ok(flows.len() + prefixes.len())
    }

    /// Counters summed over every CPU, by name.
    pub fn counters(&self) -> Result<CounterSnapshot, XdpError> {
        let per_cpu = self.counters.get(&0, 0).map_err(map_err(maps::COUNTERS))?;
        let mut sum = [0u64; counter::COUNT];
        for c in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(c.v.iter()) {
                *s += v;
            }
        }
        Ok(CounterSnapshot(sum))
    }

    /// Takes the event ring (once): the reader drains it.
    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.events.lock().expect("events lock").take()
    }

    /// Runs the program once on `packet` with `BPF_PROG_TEST_RUN` and returns
    /// its verdict (`XDP_PASS` = 2, `XDP_DROP` = 1).
    pub fn test_run(&self, packet: &[u8]) -> Result<u32, XdpError> {
        Ok(self.test_run_repeat(dome_common::PROG_XDP, packet, 1)?.0)
    }

    /// Runs program `name` `repeat` times on `packet`: (verdict, kernel-timed
    /// duration of one run).
    pub fn test_run_repeat(
        &self,
        name: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), XdpError> {
        let ebpf = self.ebpf.read().expect("ebpf lock");
        let prog: &Xdp = ebpf
            .program(name)
            .ok_or_else(|| XdpError::Load(format!("no program {name}")))?
            .try_into()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat;
        let r = prog.test_run(opts)?;
        Ok((r.return_value, r.duration))
    }
}

/// `XDP_PASS`, the debit program's "charged".
const XDP_PASS: u32 = 2;

fn exact_prefix(map: &LpmTrie<MapData, [u8; 16], u64>, key: &LpmKey<[u8; 16]>) -> bool {
    map.keys()
        .filter_map(Result::ok)
        .any(|k| k.prefix_len() == key.prefix_len() && k.data() == key.data())
}

fn deadline(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => dome_common::FOREVER,
        Some(t) => monotonic_ns().saturating_add(t.as_nanos().min(u64::MAX as u128) as u64),
    }
}

/// Counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot(pub [u64; counter::COUNT]);

impl CounterSnapshot {
    pub fn get(&self, idx: usize) -> u64 {
        self.0[idx]
    }
    /// Everything that passed on a listener port.
    pub fn passed(&self) -> u64 {
        self.0[counter::PASS_BOUND] + self.0[counter::PASS_UNBOUND]
    }
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (name, v) in counter::NAMES.iter().zip(self.0.iter()) {
            m.insert((*name).to_string(), (*v).into());
        }
        m.insert("passed".into(), self.passed().into());
        serde_json::Value::Object(m)
    }
}

fn verifier_message(e: ProgramError) -> String {
    match &e {
        ProgramError::LoadError { verifier_log, .. } => {
            // The tail of the verifier log says why; the whole log can be huge.
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            format!(
                "{}\n{}",
                crate::error_chain(&e),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
        _ => crate::error_chain(&e),
    }
}

#[cfg(test)]
mod tests;
