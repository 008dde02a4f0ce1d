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
    fn validation_names_the_field() {
        assert_eq!(spec(10, 0, 0, 0).validate().unwrap_err().0, "burst_packets");
        assert_eq!(spec(0, 0, 10, 100).validate().unwrap_err().0, "burst_bytes");
        assert!(spec(10, 1, 10, 2000).validate().is_ok());
    }
}
