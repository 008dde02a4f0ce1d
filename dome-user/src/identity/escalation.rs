//! Escalation: a caller that keeps misbehaving (authentication failures,
//! budget refusals, malformed requests) within a window is blocked for a
//! while — in the kernel tier when XDP is attached (its packets are dropped
//! before they reach Dome's sockets), and in user space always (so the
//! block holds without XDP too). Strikes are counted only on failure paths,
//! so the lock here is never taken by a request that succeeds.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::xdp::{KernelTier, Prefix};

/// `[escalation]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Strikes within `window_s` that trigger a block.
    #[serde(default = "default_strikes")]
    pub max_strikes: u32,
    #[serde(default = "default_window")]
    pub window_s: u64,
    /// How long a block lasts.
    #[serde(default = "default_block")]
    pub block_s: u64,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            enabled: true,
            max_strikes: default_strikes(),
            window_s: default_window(),
            block_s: default_block(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_strikes() -> u32 {
    20
}
fn default_window() -> u64 {
    60
}
fn default_block() -> u64 {
    300
}

/// Who misbehaved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An authenticated agent, by id and kernel slot.
    Agent { id: String, slot: u32 },
    /// A source address (before or without authentication).
    Source(IpAddr),
}

impl Subject {
    fn key(&self) -> String {
        match self {
            Subject::Agent { slot, .. } => format!("identity/{slot}"),
            Subject::Source(ip) => format!("prefix/{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
        }
    }
}

/// Strike counting over a sliding window: pure, the clock an argument.
#[derive(Default)]
pub struct Strikes {
    seen: HashMap<Subject, VecDeque<u64>>,
}

impl Strikes {
    /// Records a strike at `now_ns`; true when it makes `max` within `window_ns`.
    pub fn record(&mut self, who: &Subject, now_ns: u64, max: u32, window_ns: u64) -> bool {
        let q = self.seen.entry(who.clone()).or_default();
        while q
            .front()
            .is_some_and(|t| now_ns.saturating_sub(*t) >= window_ns)
        {
            q.pop_front();
        }
        q.push_back(now_ns);
        if q.len() >= max as usize {
            q.clear();
            return true;
        }
        // Bound memory under a flood of distinct sources.
        if self.seen.len() > 100_000 {
            self.seen.retain(|_, q| !q.is_empty());
        }
        false
    }
}

struct Block {
    subject: Subject,
    reason: String,
    until_unix_s: u64,
    kernel: bool,
}

pub struct Escalation {
    config: EscalationConfig,
    tier: Option<Arc<KernelTier>>,
    strikes: Mutex<Strikes>,
    blocks: Mutex<HashMap<String, Block>>,
    /// What every request checks: block keys and their ends (unix s),
    /// swapped after each change so the check takes no lock.
    view: arc_swap::ArcSwap<HashMap<String, u64>>,
    escalations: AtomicU64,
}

impl Escalation {
    pub fn new(config: EscalationConfig, tier: Option<Arc<KernelTier>>) -> Self {
        Escalation {
            config,
            tier,
            strikes: Mutex::default(),
            blocks: Mutex::default(),
            view: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            escalations: AtomicU64::new(0),
        }
    }

    /// Counts a strike against `who`; blocks it when it has too many.
    pub fn strike(&self, who: Subject, why: &str, now_ns: u64, now_unix_s: u64) {
        if !self.config.enabled {
            return;
        }
        let crossed = self.strikes.lock().expect("strikes lock").record(
            &who,
            now_ns,
            self.config.max_strikes,
            self.config.window_s.saturating_mul(1_000_000_000),
        );
        if crossed {
            self.block(who, why, now_unix_s);
        }
    }

    fn block(&self, who: Subject, why: &str, now_unix_s: u64) {
        let ttl = Duration::from_secs(self.config.block_s);
        let kernel = match (&self.tier, &who) {
            (Some(t), Subject::Agent { slot, .. }) => t.block_identity(*slot, Some(ttl)).is_ok(),
            (Some(t), Subject::Source(ip)) => t
                .block_prefix(
                    &Prefix {
                        addr: *ip,
                        len: if ip.is_ipv4() { 32 } else { 128 },
                    },
                    Some(ttl),
                )
                .is_ok(),
            (None, _) => false,
        };
        self.escalations.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(subject = ?who, reason = why, block_s = self.config.block_s, kernel, "escalation: blocked");
        let mut blocks = self.blocks.lock().expect("blocks lock");
        blocks.retain(|_, b| now_unix_s < b.until_unix_s);
        blocks.insert(
            who.key(),
            Block {
                subject: who,
                reason: why.to_string(),
                until_unix_s: now_unix_s + self.config.block_s,
                kernel,
            },
        );
        self.publish(&blocks);
    }

    fn publish(&self, blocks: &HashMap<String, Block>) {
        self.view.store(std::sync::Arc::new(
            blocks
                .iter()
                .map(|(k, b)| (k.clone(), b.until_unix_s))
                .collect(),
        ));
    }

    /// Whether a block is in force against the source or the agent (the
    /// user-space half of enforcement).
    pub fn blocked(&self, source: Option<IpAddr>, slot: Option<u32>, now_unix_s: u64) -> bool {
        let view = self.view.load();
        if view.is_empty() {
            return false;
        }
        let live = |k: String| view.get(&k).is_some_and(|until| now_unix_s < *until);
        source.is_some_and(|ip| live(Subject::Source(ip).key()))
            || slot.is_some_and(|s| live(format!("identity/{s}")))
    }

    /// `GET /blocks` of the admin API.
    pub fn blocks_json(&self) -> Value {
        let now = crate::clock::unix_s();
        let mut blocks = self.blocks.lock().expect("blocks lock");
        blocks.retain(|_, b| now < b.until_unix_s);
        self.publish(&blocks);
        let list: Vec<Value> = blocks
            .iter()
            .map(|(k, b)| {
                let who = match &b.subject {
                    Subject::Agent { id, slot } => json!({"agent": id, "slot": slot}),
                    Subject::Source(ip) => json!({"source": ip.to_string()}),
                };
                json!({"key": k, "subject": who, "reason": b.reason,
                       "until_unix_s": b.until_unix_s, "kernel": b.kernel})
            })
            .collect();
        json!({"blocks": list, "escalations": self.escalations.load(Ordering::Relaxed),
               "kernel": self.tier.is_some()})
    }

    /// Lifts the block `kind/key` (as `GET /blocks` names it); true when one was in force.
    pub fn lift(&self, kind: &str, key: &str) -> Result<bool, String> {
        let full = format!("{kind}/{key}");
        let b = {
            let mut blocks = self.blocks.lock().expect("blocks lock");
            let b = blocks.remove(&full);
            self.publish(&blocks);
            b
        };
        let Some(b) = b else {
            return Ok(false);
        };
        if let Some(t) = &self.tier {
            let r = match &b.subject {
                Subject::Agent { slot, .. } => t.unblock_identity(*slot),
                Subject::Source(ip) => t.unblock_prefix(&Prefix {
                    addr: *ip,
                    len: if ip.is_ipv4() { 32 } else { 128 },
                }),
            };
            r.map_err(|e| e.to_string())?;
        }
        tracing::info!(block = %full, "block lifted by the admin API");
        Ok(true)
    }

    pub fn escalations(&self) -> u64 {
        self.escalations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn strikes_within_the_window_cross_and_old_ones_expire() {
        let mut s = Strikes::default();
        let who = Subject::Source("10.0.0.9".parse().unwrap());
        assert!(!s.record(&who, 0, 3, 10 * S));
        assert!(!s.record(&who, 5 * S, 3, 10 * S));
        // The first strike has left the window by now: two in it.
        assert!(!s.record(&who, 11 * S, 3, 10 * S));
        assert!(s.record(&who, 12 * S, 3, 10 * S));
        // Counting starts again after a block.
        assert!(!s.record(&who, 12 * S, 3, 10 * S));
    }

    #[test]
    fn a_block_holds_in_user_space_until_lifted() {
        let e = Escalation::new(
            EscalationConfig {
                enabled: true,
                max_strikes: 2,
                window_s: 60,
                block_s: 300,
            },
            None,
        );
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        e.strike(Subject::Source(ip), "bad credential", 0, 1000);
        assert!(!e.blocked(Some(ip), None, 1000));
        e.strike(Subject::Source(ip), "bad credential", 1, 1000);
        assert!(e.blocked(Some(ip), None, 1001));
        assert!(!e.blocked(Some(ip), None, 1300), "expired");
        assert_eq!(e.escalations(), 1);
        assert_eq!(e.lift("prefix", "127.0.0.9/32"), Ok(true));
        assert!(!e.blocked(Some(ip), None, 1001));
    }
}
