//! `[xdp]`: the kernel tier, as the operator sets it.

use serde::{Deserialize, Serialize};

use super::{BudgetSpec, ModeSetting, PreauthSpec};

/// `[xdp]`: the kernel tier.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    /// Off: user-space enforcement only.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The interface agents' traffic arrives on.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// `auto` (native, else SKB), `native` or `skb`.
    #[serde(default = "default_mode")]
    pub mode: ModeSetting,
    /// TCP ports XDP meters; default: the port of `server.listen`.
    #[serde(default)]
    pub tcp_ports: Option<Vec<u16>>,
    /// UDP ports XDP meters (QUIC listeners).
    #[serde(default)]
    pub udp_ports: Vec<u16>,
    /// Kernel events each CPU may send per second (the rest are counted).
    #[serde(default = "default_events")]
    pub events_per_sec: u32,
    /// Budget of an identity's bound flows, unless its own says otherwise.
    #[serde(default = "default_identity_budget")]
    pub default_budget: BudgetSpec,
    /// Budget per source address for flows not yet authenticated, and
    /// (`prefix`) the aggregate of its /24 or /64.
    #[serde(default = "default_preauth_budget")]
    pub preauth_budget: PreauthSpec,
}

impl Default for XdpSection {
    fn default() -> Self {
        XdpSection {
            enabled: true,
            interface: default_interface(),
            mode: default_mode(),
            tcp_ports: None,
            udp_ports: Vec::new(),
            events_per_sec: default_events(),
            default_budget: default_identity_budget(),
            preauth_budget: default_preauth_budget(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_interface() -> String {
    "lo".into()
}
fn default_mode() -> ModeSetting {
    ModeSetting::Auto
}
fn default_events() -> u32 {
    1000
}
fn default_identity_budget() -> BudgetSpec {
    BudgetSpec {
        packets_per_sec: 20_000,
        burst_packets: 2_000,
        bytes_per_sec: 50_000_000,
        burst_bytes: 5_000_000,
    }
}
fn default_preauth_budget() -> PreauthSpec {
    PreauthSpec {
        packets_per_sec: 5_000,
        burst_packets: 1_000,
        bytes_per_sec: 10_000_000,
        burst_bytes: 2_000_000,
        prefix: None,
    }
}
