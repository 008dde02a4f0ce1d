//! Turning an operator's rates into the kernel's GCRA parameters. Pure
//! arithmetic: the kernel does no division, so user space does it here.

use dome_common::Budget;
use serde::{Deserialize, Serialize};

/// Rates and bursts as an operator writes them. A zero rate means "no limit"
/// in that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Sustained packets per second.
    pub packets_per_sec: u64,
    /// Packets that may arrive back to back on top of the sustained rate.
    pub burst_packets: u64,
    /// Sustained bytes per second (whole frames).
    pub bytes_per_sec: u64,
    /// Bytes that may arrive back to back.
    pub burst_bytes: u64,
}

/// The largest frame a byte burst must admit, or nothing would ever pass.
pub const MIN_BURST_BYTES: u64 = 1_514;
const NS: u128 = 1_000_000_000;

impl BudgetSpec {
    /// Checks that the numbers make sense; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.packets_per_sec > NS as u64 {
            return Err(("packets_per_sec", "must be at most 1000000000".into()));
        }
        if self.packets_per_sec > 0 && self.burst_packets == 0 {
            return Err((
                "burst_packets",
                "must be at least 1 when packets_per_sec is set".into(),
            ));
        }
        if self.bytes_per_sec > 0 && self.burst_bytes < MIN_BURST_BYTES {
            return Err((
                "burst_bytes",
                format!(
                    "must be at least {MIN_BURST_BYTES} (one full Ethernet frame) when bytes_per_sec is set"
                ),
            ));
        }
        if self.burst_packets > 1_000_000_000 || self.burst_bytes > 1 << 40 {
            return Err(("burst", "is implausibly large".into()));
        }
        Ok(())
    }

    /// The kernel's precomputed form. Rounds the per-unit cost up so the
    /// enforced rate never exceeds the configured one.
    pub fn to_kernel(&self) -> Budget {
        let mut b = Budget::default();
        if self.packets_per_sec > 0 {
            let interval = NS.div_ceil(self.packets_per_sec as u128);
            b.pkt_interval_ns = interval as u64;
            b.pkt_burst_ns = (interval * self.burst_packets as u128).min(u64::MAX as u128) as u64;
        }
        if self.bytes_per_sec > 0 {
            let per_kib = (NS * 1024).div_ceil(self.bytes_per_sec as u128);
            b.byte_ns_per_kib = per_kib.min(u64::MAX as u128) as u64;
            b.byte_burst_ns =
                ((per_kib * self.burst_bytes as u128) >> 10).min(u64::MAX as u128) as u64;
        }
        b
    }
}

/// `[xdp.preauth_budget]`: the pre-auth budget of one source address, and
/// in `prefix` the aggregate budget of its /24 (IPv4) or /64 (IPv6). Flows
/// not yet bound to an identity pay both: a flooding host spends its own
/// budget and cannot starve its neighbours until the network as a whole
/// reaches the aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreauthSpec {
    pub packets_per_sec: u64,
    pub burst_packets: u64,
    pub bytes_per_sec: u64,
    pub burst_bytes: u64,
    /// The prefix's aggregate; absent: [`PREFIX_FACTOR`] times the per-address budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<BudgetSpec>,
}

/// How many addresses' worth of pre-auth budget a prefix gets by default.
pub const PREFIX_FACTOR: u64 = 4;

impl PreauthSpec {
    /// The budget of one source address.
    pub fn address(&self) -> BudgetSpec {
        BudgetSpec {
            packets_per_sec: self.packets_per_sec,
            burst_packets: self.burst_packets,
            bytes_per_sec: self.bytes_per_sec,
            burst_bytes: self.burst_bytes,
        }
    }

    /// The budget of one source prefix (/24, /64), shared by its addresses.
    pub fn aggregate(&self) -> BudgetSpec {
        self.prefix.unwrap_or_else(|| {
            let a = self.address();
            BudgetSpec {
                packets_per_sec: a.packets_per_sec.saturating_mul(PREFIX_FACTOR),
                burst_packets: a.burst_packets.saturating_mul(PREFIX_FACTOR),
                bytes_per_sec: a.bytes_per_sec.saturating_mul(PREFIX_FACTOR),
                burst_bytes: a.burst_bytes.saturating_mul(PREFIX_FACTOR),
            }
        })
    }

    /// Problems of either budget, as (field relative to the table, why).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err((field, why)) = self.address().validate() {
            out.push((field.to_string(), why));
        }
        if let Err((field, why)) = self.aggregate().validate() {
            let why = if self.prefix.is_none() {
                format!(
                    "{why} ({PREFIX_FACTOR} times the per-address budget: set [xdp.preauth_budget.prefix])"
                )
            } else {
                why
            };
            out.push((format!("prefix.{field}"), why));
        }
        out
    }
}

/// What `packets` frames totalling `bytes` cost a budget, in nanoseconds of
/// each bucket (packets, bytes): what the kernel would have charged them
/// frame by frame (each frame's byte cost is rounded up by 1 ns, so
/// `packets` ns are added). Zero in an unlimited dimension. Used to debit a
/// flow's pre-bind traffic; saturates rather than wraps.
pub fn debit_cost(budget: &Budget, packets: u64, bytes: u64) -> (u64, u64) {
    let sat = |v: u128| v.min(u64::MAX as u128) as u64;
    let pkt = sat(packets as u128 * budget.pkt_interval_ns as u128);
    let byte = if budget.byte_ns_per_kib == 0 {
        0
    } else {
        sat(((bytes as u128 * budget.byte_ns_per_kib as u128) >> 10) + packets as u128)
    };
    (pkt, byte)
}

/// What the kernel's GCRA decides for one packet, computed the same way in
/// user space: used to test the arithmetic without a kernel, and by the
/// kernel tests to predict verdicts.
pub fn conforms(tat: u64, now: u64, cost: u64, burst: u64) -> Option<u64> {
    if cost == 0 {
        return Some(tat);
    }
    let next = tat.max(now) + cost;
    (next - now <= burst).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pps: u64, bp: u64, bps: u64, bb: u64) -> BudgetSpec {
        BudgetSpec {
            packets_per_sec: pps,
            burst_packets: bp,
            bytes_per_sec: bps,
            burst_bytes: bb,
        }
    }

    #[test]
    fn zero_rates_are_unlimited() {
        assert_eq!(spec(0, 0, 0, 0).to_kernel(), Budget::default());
    }

    #[test]
    fn burst_admits_exactly_burst_packets_then_refills_at_rate() {
        let b = spec(100, 5, 0, 0).to_kernel();
        assert_eq!(b.pkt_interval_ns, 10_000_000);
        let now = 1_000_000_000u64;
        let mut tat = 0;
        for _ in 0..5 {
            tat = conforms(tat, now, b.pkt_interval_ns, b.pkt_burst_ns).expect("within burst");
        }
        assert!(conforms(tat, now, b.pkt_interval_ns, b.pkt_burst_ns).is_none());
        // One interval later exactly one more packet fits.
        let later = now + b.pkt_interval_ns;
        tat = conforms(tat, later, b.pkt_interval_ns, b.pkt_burst_ns).expect("refilled");
        assert!(conforms(tat, later, b.pkt_interval_ns, b.pkt_burst_ns).is_none());
    }

    #[test]
    fn byte_budget_counts_frame_sizes() {
        // 1 MB/s, 3000-byte burst: two 1400-byte frames fit, a third does not.
        let b = spec(0, 0, 1_000_000, 3_000).to_kernel();
        let cost = (1400 * b.byte_ns_per_kib) >> 10 | 1;
        let now = 5_000_000_000u64;
        let t = conforms(0, now, cost, b.byte_burst_ns).unwrap();
        let t = conforms(t, now, cost, b.byte_burst_ns).unwrap();
        assert!(conforms(t, now, cost, b.byte_burst_ns).is_none());
    }

    #[test]
    fn debit_cost_is_what_the_frames_would_have_cost_one_by_one() {
        let b = spec(100, 5, 1_000_000, 3_000).to_kernel();
        let frames = [54u64, 1454, 600];
        let one_by_one: u64 = frames
            .iter()
            .map(|len| (len * b.byte_ns_per_kib) >> 10 | 1)
            .sum();
        let (pkt, byte) = debit_cost(&b, 3, frames.iter().sum());
        assert_eq!(pkt, 3 * b.pkt_interval_ns);
        // Equal up to the sub-nanosecond remainders of each frame.
        assert!(byte.abs_diff(one_by_one) <= 3, "{byte} vs {one_by_one}");
        assert_eq!(debit_cost(&Budget::default(), 3, 2108), (0, 0));
        // 1 B/s: a huge but exact debt; absurd inputs saturate.
        let slow = spec(0, 0, 1, 2_000).to_kernel();
        assert_eq!(debit_cost(&slow, 1, 1000).1, 1_000_000_000_001);
        assert_eq!(debit_cost(&slow, u64::MAX, u64::MAX).1, u64::MAX);
    }

    #[test]
    fn preauth_prefix_defaults_to_four_addresses_worth() {
        let p = PreauthSpec {
            packets_per_sec: 10,
            burst_packets: 5,
            bytes_per_sec: 0,
            burst_bytes: 0,
            prefix: None,
        };
        assert_eq!(p.address(), spec(10, 5, 0, 0));
        assert_eq!(p.aggregate(), spec(40, 20, 0, 0));
        let explicit = PreauthSpec {
            prefix: Some(spec(100, 7, 0, 0)),
            ..p
        };
        assert_eq!(explicit.aggregate(), spec(100, 7, 0, 0));
        let bad = PreauthSpec {
            prefix: Some(spec(100, 0, 0, 0)),
            ..p
        };
        assert_eq!(bad.problems()[0].0, "prefix.burst_packets");
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(spec(10, 0, 0, 0).validate().unwrap_err().0, "burst_packets");
        assert_eq!(spec(0, 0, 10, 100).validate().unwrap_err().0, "burst_bytes");
        assert!(spec(10, 1, 10, 2000).validate().is_ok());
    }
}
