//! Escalation's decisions: a caller that keeps misbehaving within a window
//! is blocked for a while. What is struck is chosen so that a block never
//! falls on someone else:
//!
//! - an authenticated agent (budget refusals, malformed requests) by its
//!   identity slot, in the kernel tier when XDP is attached (its bound
//!   flows are dropped) and in user space always;
//! - a presented credential that fails, by the identity it claims (an API
//!   key's agent, a token's issuer, agent and subject). A blocked claim has
//!   its failing attempts refused without a strike or a log line each, but
//!   a valid credential of that identity still gets through: knowing an
//!   agent's id is not enough to lock it out;
//! - an anonymous attempt (no credential, or one that names no agent or
//!   trusted issuer here), by its source address. A blocked source has its
//!   anonymous requests refused, in user space only: agents behind the same
//!   address (NAT, corporate egress) that present valid credentials are
//!   served, so the kernel, which cannot tell them apart, is not asked.
//!
//! The tables here are pure, the clock an argument, and bounded whatever an
//! attacker sends. A strike that blocks returns what the shell must do
//! ([`Escalated`]): drop the agent's flows in the kernel, log, and publish
//! the blocks requests check. `dome-user`'s `identity::escalation` applies
//! it, under its one lock, taken only on failure paths.

use std::{collections::HashMap, hash::BuildHasher, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::authn::Failure;

/// `[escalation]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    /// Strikes are counted and blocks made (on by default).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Strikes within `window_s` that trigger a block.
    #[serde(default = "default_strikes")]
    pub max_strikes: u32,
    /// The sliding window strikes are counted over.
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
    Agent {
        /// The agent's id.
        id: String,
        /// Its identity slot (the kernel's key).
        slot: u32,
    },
    /// A source address, for anonymous attempts.
    Source(IpAddr),
    /// The identity a failing credential claims (as [`authn`] names it:
    /// bounded, printable).
    ///
    /// [`authn`]: super::authn
    Claim(String),
}

/// What the tables are keyed by: small and fixed-size, so an attacker's
/// long claims cost nothing to keep. Claims are hashed with a key made at
/// start, so collisions cannot be aimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// An agent, by identity slot.
    Agent(u32),
    /// A source address, canonical (an IPv4-mapped address as IPv4).
    Source(IpAddr),
    /// A claimed identity, hashed.
    Claim(u64),
}

impl Key {
    /// The key `who` is kept under; claims hashed with `hasher` (a key made
    /// at start, so collisions cannot be aimed).
    pub fn of(who: &Subject, hasher: &impl BuildHasher) -> Key {
        match who {
            Subject::Agent { slot, .. } => Key::Agent(*slot),
            Subject::Source(ip) => Key::Source(ip.to_canonical()),
            Subject::Claim(c) => Key::Claim(hasher.hash_one(c)),
        }
    }

    /// The name `GET /blocks` lists and `DELETE /blocks/{name}` takes.
    pub fn name(&self) -> String {
        match self {
            Key::Agent(slot) => format!("identity/{slot}"),
            Key::Source(ip) => format!("prefix/{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
            Key::Claim(d) => format!("claim/{d:016x}"),
        }
    }
}

/// Most subjects with strikes counted at once, and most blocks in force:
/// beyond, expired ones go first. Then strike entries go fewest strikes
/// first, agents' last (see [`Strikes::evict`]), blocks of claims
/// soonest-ending first; so a flood of made-up claims costs memory that
/// stays bounded (about 40 bytes a strike entry) and cannot push out the
/// subject it hides (an arbitrary entry went before: a credential stuffer's
/// count was forgotten as soon as it flooded the table).
pub const MAX_TRACKED: usize = 65_536;
/// Most blocks in force at once (see [`MAX_TRACKED`]).
pub const MAX_BLOCKS: usize = 16_384;

/// Strikes of one subject: a sliding window approximated by two fixed
/// ones (the previous window's count weighted by how much of it still
/// overlaps), so an entry has a fixed size whatever `max_strikes` is.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    /// Start of the current fixed window, ns.
    start: u64,
    current: u32,
    previous: u32,
}

/// Strike counting over a sliding window: pure, the clock an argument,
/// bounded in memory.
#[derive(Default)]
pub struct Strikes {
    seen: HashMap<Key, Count>,
    /// When expired entries were last swept out (a sweep is a pass over the
    /// whole table, so it is not made for every new subject).
    swept_ns: u64,
}

impl Strikes {
    /// Records a strike at `now_ns`; true when it makes `max` within `window_ns`.
    pub fn record(&mut self, who: Key, now_ns: u64, max: u32, window_ns: u64) -> bool {
        let window_ns = window_ns.max(1);
        if self.seen.len() >= MAX_TRACKED && !self.seen.contains_key(&who) {
            if now_ns.saturating_sub(self.swept_ns) >= window_ns / 4 {
                self.swept_ns = now_ns;
                self.seen
                    .retain(|_, c| now_ns.saturating_sub(c.start) < 2 * window_ns);
            }
            if self.seen.len() >= MAX_TRACKED {
                self.evict();
            }
        }
        let c = self.seen.entry(who).or_insert(Count {
            start: now_ns,
            ..Count::default()
        });
        let elapsed = now_ns.saturating_sub(c.start);
        if elapsed >= 2 * window_ns {
            *c = Count {
                start: now_ns,
                ..Count::default()
            };
        } else if elapsed >= window_ns {
            *c = Count {
                start: c.start + window_ns,
                current: 0,
                previous: c.current,
            };
        }
        c.current = c.current.saturating_add(1);
        let overlap = window_ns - now_ns.saturating_sub(c.start).min(window_ns);
        let weighted = c.current as u128 * window_ns as u128 + c.previous as u128 * overlap as u128;
        if weighted >= max.max(1) as u128 * window_ns as u128 {
            self.seen.remove(&who);
            return true;
        }
        false
    }

    /// Frees an eighth of the table (one pass for many insertions: a
    /// pass per insertion would make a flood quadratic): the entries with
    /// the fewest strikes, agents' only if nothing else is left (agents are
    /// as many as registered; claims and sources are the attacker's choice).
    /// To push out a subject with `n` strikes, a flood must hold seven
    /// eighths of the table at more than `n` strikes each.
    fn evict(&mut self) {
        let mut weights: Vec<(bool, u64, Key)> = self
            .seen
            .iter()
            .map(|(k, c)| {
                let agent = matches!(k, Key::Agent(_));
                (agent, c.current as u64 + c.previous as u64, *k)
            })
            .collect();
        let n = (MAX_TRACKED / 8).clamp(1, weights.len());
        weights.select_nth_unstable_by_key(n - 1, |(agent, w, _)| (*agent, *w));
        for (_, _, k) in &weights[..n] {
            self.seen.remove(k);
        }
    }

    /// Subjects with strikes counted.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// No subject has strikes counted.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A block in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Who is blocked.
    pub subject: Subject,
    /// The strike that crossed the limit.
    pub reason: String,
    /// When it ends.
    pub until_unix_s: u64,
    /// The kernel tier drops the subject's flows too (set by the shell once
    /// it did: [`EscalationState::kernel_applied`]).
    pub kernel: bool,
}

/// What a strike that crossed the limit asks of the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalated {
    /// The block put in force.
    pub key: Key,
    /// Drop this identity slot's flows in the kernel for this long: only an
    /// agent's, since a source's packets cannot be told apart from its
    /// neighbours' behind a NAT.
    pub kernel: Option<(u32, Duration)>,
    /// The blocks requests check changed (a claim's are checked on the
    /// failure path only, so its block changes nothing there).
    pub publish: bool,
}

/// Strikes and blocks: escalation's state, pure and bounded.
#[derive(Default)]
pub struct EscalationState {
    strikes: Strikes,
    blocks: HashMap<Key, Block>,
}

impl EscalationState {
    /// Counts a strike against `who` (kept under `key`) at `now_ns`; when it
    /// makes `max_strikes` within the window, blocks it until `block_s`
    /// from `now_unix_s` and says what the shell must do.
    pub fn strike(
        &mut self,
        key: Key,
        who: Subject,
        why: &str,
        config: &EscalationConfig,
        now_ns: u64,
        now_unix_s: u64,
    ) -> Option<Escalated> {
        if !config.enabled {
            return None;
        }
        let window_ns = config.window_s.saturating_mul(1_000_000_000);
        if !self
            .strikes
            .record(key, now_ns, config.max_strikes, window_ns)
        {
            return None;
        }
        let kernel = match who {
            Subject::Agent { slot, .. } => Some((slot, Duration::from_secs(config.block_s))),
            _ => None,
        };
        self.make_room(now_unix_s);
        self.blocks.insert(
            key,
            Block {
                subject: who,
                reason: why.to_string(),
                until_unix_s: now_unix_s.saturating_add(config.block_s),
                kernel: false,
            },
        );
        Some(Escalated {
            key,
            kernel,
            publish: !matches!(key, Key::Claim(_)),
        })
    }

    /// At most [`MAX_BLOCKS`]: expired ones go first, then the claim block
    /// that ends soonest (claims are the attacker's choice; agents and
    /// sources are not pushed out by them).
    fn make_room(&mut self, now_unix_s: u64) {
        let blocks = &mut self.blocks;
        if blocks.len() < MAX_BLOCKS {
            return;
        }
        blocks.retain(|_, b| now_unix_s < b.until_unix_s);
        if blocks.len() >= MAX_BLOCKS
            && let Some(k) = blocks
                .iter()
                .filter(|(k, _)| matches!(k, Key::Claim(_)))
                .min_by_key(|(_, b)| b.until_unix_s)
                .map(|(k, _)| *k)
        {
            blocks.remove(&k);
        }
    }

    /// The shell dropped the block's subject in the kernel.
    pub fn kernel_applied(&mut self, key: Key) {
        if let Some(b) = self.blocks.get_mut(&key) {
            b.kernel = true;
        }
    }

    /// The block kept under `key`.
    pub fn block(&self, key: &Key) -> Option<&Block> {
        self.blocks.get(key)
    }

    /// Whether a block is in force under `key` at `now_unix_s`.
    pub fn in_force(&self, key: &Key, now_unix_s: u64) -> bool {
        self.blocks
            .get(key)
            .is_some_and(|b| now_unix_s < b.until_unix_s)
    }

    /// What requests that succeed check: agent and source blocks and their
    /// ends (claims are checked on the failure path, here).
    pub fn view(&self) -> HashMap<Key, u64> {
        self.blocks
            .iter()
            .filter(|(k, _)| !matches!(k, Key::Claim(_)))
            .map(|(k, b)| (*k, b.until_unix_s))
            .collect()
    }

    /// Forgets the blocks that ended by `now_unix_s`.
    pub fn expire(&mut self, now_unix_s: u64) {
        self.blocks.retain(|_, b| now_unix_s < b.until_unix_s);
    }

    /// The blocks kept, in no order.
    pub fn blocks(&self) -> impl Iterator<Item = (&Key, &Block)> {
        self.blocks.iter()
    }

    /// Lifts the block named `name` (as [`Key::name`] gives it): the block,
    /// when one was kept. The shell lifts it in the kernel if it was there.
    pub fn lift(&mut self, name: &str) -> Option<(Key, Block)> {
        let k = self.blocks.keys().find(|k| k.name() == name).copied()?;
        self.blocks.remove(&k).map(|b| (k, b))
    }

    /// Subjects with strikes counted.
    pub fn tracked(&self) -> usize {
        self.strikes.len()
    }
}

/// Whether `view` (see [`EscalationState::view`]) holds a block in force at
/// `now_unix_s` against the source (for anonymous requests only) or the
/// agent's slot.
pub fn blocked_in(
    view: &HashMap<Key, u64>,
    source: Option<IpAddr>,
    slot: Option<u32>,
    now_unix_s: u64,
) -> bool {
    if view.is_empty() {
        return false;
    }
    let live = |k: Key| view.get(&k).is_some_and(|until| now_unix_s < *until);
    source.is_some_and(|ip| live(Key::Source(ip.to_canonical())))
        || slot.is_some_and(|s| live(Key::Agent(s)))
}

/// Whom a failed login from `source` is held against: the identity its
/// credential claimed when that names one known here, else (an anonymous
/// attempt) its source.
pub fn failure_subject(f: &Failure, source: IpAddr) -> Subject {
    match f.claim.as_deref().filter(|_| f.claim_known) {
        Some(c) => Subject::Claim(c.to_string()),
        None => Subject::Source(source),
    }
}

#[cfg(test)]
mod tests;
