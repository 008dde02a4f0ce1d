//! What the rest of Dome asks of the kernel tier, as a trait: hold an
//! identity to its packet budget, bind a connection's flow to the identity,
//! block an identity for a while. `KernelTier` does it in the XDP maps;
//! `MemoryEnforcer` keeps it in memory, so escalation and the gateway can
//! be tested for their kernel effects without root or a NIC.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use super::{BudgetSpec, Flow, KernelTier, XdpError};

/// The kernel tier's enforcement, as the gateway and escalation use it.
pub trait Enforcer: Send + Sync {
    /// Holds identity `slot` to `spec`.
    fn set_budget(&self, slot: u32, spec: &BudgetSpec) -> Result<(), XdpError>;
    /// Meters `flow`'s packets against identity `slot`.
    fn bind_flow(&self, flow: &Flow, slot: u32) -> Result<(), XdpError>;
    /// `flow` is metered as an unknown source again (its connection closed).
    fn unbind_flow(&self, flow: &Flow) -> Result<(), XdpError>;
    /// Drops identity `slot`'s packets for `ttl` (`None`: until lifted).
    fn block_identity(&self, slot: u32, ttl: Option<Duration>) -> Result<(), XdpError>;
    fn unblock_identity(&self, slot: u32) -> Result<(), XdpError>;
}

impl Enforcer for KernelTier {
    fn set_budget(&self, slot: u32, spec: &BudgetSpec) -> Result<(), XdpError> {
        KernelTier::set_budget(self, slot, spec)
    }
    fn bind_flow(&self, flow: &Flow, slot: u32) -> Result<(), XdpError> {
        KernelTier::bind_flow(self, flow, slot)
    }
    fn unbind_flow(&self, flow: &Flow) -> Result<(), XdpError> {
        KernelTier::unbind_flow(self, flow)
    }
    fn block_identity(&self, slot: u32, ttl: Option<Duration>) -> Result<(), XdpError> {
        KernelTier::block_identity(self, slot, ttl)
    }
    fn unblock_identity(&self, slot: u32) -> Result<(), XdpError> {
        KernelTier::unblock_identity(self, slot)
    }
}

/// The kernel tier's effects, kept in memory for tests.
#[derive(Debug, Default)]
pub struct MemoryEnforcer {
    state: Mutex<MemoryState>,
}

/// What a `MemoryEnforcer` was asked to hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryState {
    pub budgets: HashMap<u32, BudgetSpec>,
    pub flows: HashMap<Flow, u32>,
    /// Blocked identities, with the block's time to live.
    pub blocked: HashMap<u32, Option<Duration>>,
}

impl MemoryEnforcer {
    /// A copy of what it holds now.
    pub fn state(&self) -> MemoryState {
        self.state.lock().expect("enforcer lock").clone()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, XdpError> {
        Ok(f(&mut self.state.lock().expect("enforcer lock")))
    }
}

impl Enforcer for MemoryEnforcer {
    fn set_budget(&self, slot: u32, spec: &BudgetSpec) -> Result<(), XdpError> {
        self.with(|s| {
            s.budgets.insert(slot, *spec);
        })
    }
    fn bind_flow(&self, flow: &Flow, slot: u32) -> Result<(), XdpError> {
        self.with(|s| {
            s.flows.insert(*flow, slot);
        })
    }
    fn unbind_flow(&self, flow: &Flow) -> Result<(), XdpError> {
        self.with(|s| {
            s.flows.remove(flow);
        })
    }
    fn block_identity(&self, slot: u32, ttl: Option<Duration>) -> Result<(), XdpError> {
        self.with(|s| {
            s.blocked.insert(slot, ttl);
        })
    }
    fn unblock_identity(&self, slot: u32) -> Result<(), XdpError> {
        self.with(|s| {
            s.blocked.remove(&slot);
        })
    }
}
