//! Escalation: a caller that keeps misbehaving within a window is blocked
//! for a while. What is struck is chosen so that a block never falls on
//! someone else:
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
//! Strikes are counted only on failure paths, so the lock here is never
//! taken by a request that succeeds; the table of strikes and the table of
//! blocks are bounded, whatever an attacker sends. Failed logins are logged
//! at a bounded rate. The settings apply live on reload.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::kernel::Enforcer;

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
    Agent(u32),
    Source(IpAddr),
    Claim(u64),
}

impl Key {
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
const MAX_TRACKED: usize = 65_536;
const MAX_BLOCKS: usize = 16_384;

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

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

struct Block {
    subject: Subject,
    reason: String,
    until_unix_s: u64,
    kernel: bool,
}

#[derive(Default)]
struct State {
    strikes: Strikes,
    blocks: HashMap<Key, Block>,
}

/// At most `PER_S` failed logins a second are logged; the next line logged
/// says how many were left out.
struct LogBudget {
    /// The second the count is for.
    second: AtomicU64,
    count: AtomicU64,
    left_out: AtomicU64,
}

const LOGGED_PER_S: u64 = 10;

impl LogBudget {
    /// `Some(left out since the last line)` when this one may be logged.
    fn take(&self, now_unix_s: u64) -> Option<u64> {
        if self.second.swap(now_unix_s, Ordering::AcqRel) != now_unix_s {
            self.count.store(0, Ordering::Release);
        }
        if self.count.fetch_add(1, Ordering::AcqRel) < LOGGED_PER_S {
            Some(self.left_out.swap(0, Ordering::AcqRel))
        } else {
            self.left_out.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

pub struct Escalation {
    config: ArcSwap<EscalationConfig>,
    tier: Option<Arc<dyn Enforcer>>,
    state: Mutex<State>,
    /// What requests that succeed check: agent and source blocks and their
    /// ends (unix s), swapped after each change so the check takes no lock.
    /// Claim blocks are checked only on the failure path, under the lock.
    view: ArcSwap<HashMap<Key, u64>>,
    escalations: AtomicU64,
    hasher: RandomState,
    log: LogBudget,
}

impl Escalation {
    pub fn new(config: EscalationConfig, tier: Option<Arc<dyn Enforcer>>) -> Self {
        Escalation {
            config: ArcSwap::from_pointee(config),
            tier,
            state: Mutex::default(),
            view: ArcSwap::from_pointee(HashMap::new()),
            escalations: AtomicU64::new(0),
            hasher: RandomState::new(),
            log: LogBudget {
                second: AtomicU64::new(0),
                count: AtomicU64::new(0),
                left_out: AtomicU64::new(0),
            },
        }
    }

    /// Applies changed settings (a reload): strikes from now on count
    /// toward the new limits; blocks in force keep their end.
    pub fn set_config(&self, config: EscalationConfig) {
        if **self.config.load() != config {
            tracing::info!(?config, "escalation settings applied");
            self.config.store(Arc::new(config));
        }
    }

    pub fn config(&self) -> Arc<EscalationConfig> {
        self.config.load_full()
    }

    fn key(&self, who: &Subject) -> Key {
        match who {
            Subject::Agent { slot, .. } => Key::Agent(*slot),
            Subject::Source(ip) => Key::Source(ip.to_canonical()),
            Subject::Claim(c) => Key::Claim(self.hasher.hash_one(c)),
        }
    }

    /// Counts a strike against `who`; blocks it when it has too many.
    pub fn strike(&self, who: Subject, why: &str, now_ns: u64, now_unix_s: u64) {
        let config = self.config.load();
        if !config.enabled {
            return;
        }
        let key = self.key(&who);
        let mut state = self.state.lock().expect("escalation lock");
        let crossed = state.strikes.record(
            key,
            now_ns,
            config.max_strikes,
            config.window_s.saturating_mul(1_000_000_000),
        );
        if crossed {
            self.block(&mut state, key, who, why, &config, now_unix_s);
        }
    }

    fn block(
        &self,
        state: &mut State,
        key: Key,
        who: Subject,
        why: &str,
        config: &EscalationConfig,
        now_unix_s: u64,
    ) {
        let ttl = Duration::from_secs(config.block_s);
        // Only an agent's own flows are dropped in the kernel: a source's
        // packets cannot be told apart from its neighbours' behind a NAT.
        let kernel = match (&self.tier, &who) {
            (Some(t), Subject::Agent { slot, .. }) => t.block_identity(*slot, Some(ttl)).is_ok(),
            _ => false,
        };
        self.escalations.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(subject = ?who, reason = why, block_s = config.block_s, kernel, "escalation: blocked");
        let blocks = &mut state.blocks;
        if blocks.len() >= MAX_BLOCKS {
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
        let visible = !matches!(key, Key::Claim(_));
        blocks.insert(
            key,
            Block {
                subject: who,
                reason: why.to_string(),
                until_unix_s: now_unix_s + config.block_s,
                kernel,
            },
        );
        if visible {
            self.publish(blocks);
        }
    }

    fn publish(&self, blocks: &HashMap<Key, Block>) {
        self.view.store(Arc::new(
            blocks
                .iter()
                .filter(|(k, _)| !matches!(k, Key::Claim(_)))
                .map(|(k, b)| (*k, b.until_unix_s))
                .collect(),
        ));
    }

    /// Whether a block is in force against the source (for anonymous
    /// requests only) or the agent (the user-space half of enforcement).
    pub fn blocked(&self, source: Option<IpAddr>, slot: Option<u32>, now_unix_s: u64) -> bool {
        let view = self.view.load();
        if view.is_empty() {
            return false;
        }
        let live = |k: Key| view.get(&k).is_some_and(|until| now_unix_s < *until);
        source.is_some_and(|ip| live(Key::Source(ip.to_canonical())))
            || slot.is_some_and(|s| live(Key::Agent(s)))
    }

    /// A request that failed to authenticate, from `source`: logs it (at
    /// a bounded rate, with the reason and the identity claimed, never the
    /// secret) and, when the failure counts, strikes the identity its
    /// credential claimed, or its source when it claimed none known here.
    /// True when a block is in force against that claim (or, for an
    /// anonymous attempt, the source): the answer is then "blocked".
    pub fn failed_login(
        &self,
        source: IpAddr,
        f: &super::authn::Failure,
        now_ns: u64,
        now_unix_s: u64,
    ) -> bool {
        // A claim naming no one known here is an anonymous attempt.
        let claim = f.claim.as_deref().filter(|_| f.claim_known);
        let blocked = match claim {
            Some(c) => {
                let key = self.key(&Subject::Claim(c.to_string()));
                let state = self.state.lock().expect("escalation lock");
                state
                    .blocks
                    .get(&key)
                    .is_some_and(|b| now_unix_s < b.until_unix_s)
            }
            None => self.blocked(Some(source), None, now_unix_s),
        };
        if let Some(left_out) = self.log.take(now_unix_s) {
            tracing::warn!(
                %source,
                claim = f.claim.as_deref().unwrap_or("-"),
                reason = %f.message,
                status = f.status.as_u16(),
                blocked,
                not_logged_before = left_out,
                "authentication failed"
            );
        }
        if blocked {
            return true;
        }
        if f.bad_credential {
            let who = match claim {
                Some(c) => Subject::Claim(c.to_string()),
                None => Subject::Source(source),
            };
            self.strike(who, "authentication failure", now_ns, now_unix_s);
        }
        false
    }

    /// `GET /blocks` of the admin API.
    pub fn blocks_json(&self) -> Value {
        let now = crate::clock::unix_s();
        let mut state = self.state.lock().expect("escalation lock");
        state.blocks.retain(|_, b| now < b.until_unix_s);
        self.publish(&state.blocks);
        let list: Vec<Value> = state
            .blocks
            .iter()
            .map(|(k, b)| {
                let who = match &b.subject {
                    Subject::Agent { id, slot } => json!({"agent": id, "slot": slot}),
                    Subject::Source(ip) => json!({"source": ip.to_string()}),
                    Subject::Claim(c) => json!({"claim": c}),
                };
                json!({"key": k.name(), "subject": who, "reason": b.reason,
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
            let mut state = self.state.lock().expect("escalation lock");
            let Some(k) = state.blocks.keys().find(|k| k.name() == full).copied() else {
                return Ok(false);
            };
            let b = state.blocks.remove(&k);
            self.publish(&state.blocks);
            b
        };
        let Some(b) = b else {
            return Ok(false);
        };
        if let (Some(t), Subject::Agent { slot, .. }) = (&self.tier, &b.subject) {
            t.unblock_identity(*slot).map_err(|e| e.to_string())?;
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

    /// A failed login claiming `claim` (`None`: anonymous) that counts.
    fn failure(claim: Option<&str>, strike: bool) -> crate::identity::authn::Failure {
        crate::identity::authn::Failure {
            status: hyper::StatusCode::UNAUTHORIZED,
            error: Some("invalid_token"),
            message: "invalid API key".into(),
            bad_credential: strike,
            scope: None,
            refresh_issuer: None,
            claim: claim.map(str::to_string),
            claim_known: claim.is_some(),
            api_key: true,
        }
    }

    #[test]
    fn strikes_within_the_window_cross_and_old_ones_expire() {
        let mut s = Strikes::default();
        let who = Key::Source("10.0.0.9".parse().unwrap());
        assert!(!s.record(who, 0, 3, 10 * S));
        assert!(!s.record(who, 5 * S, 3, 10 * S));
        // The first strike has left the window by now: two in it.
        assert!(!s.record(who, 12 * S, 3, 10 * S));
        assert!(s.record(who, 12 * S, 3, 10 * S));
        // Counting starts again after a block.
        assert!(!s.record(who, 12 * S, 3, 10 * S));
        // Strikes long ago count for nothing.
        assert!(!s.record(who, 100 * S, 3, 10 * S));
        assert!(!s.record(who, 100 * S, 3, 10 * S));
        assert!(s.record(who, 100 * S, 3, 10 * S));
    }

    #[test]
    fn the_strike_table_stays_bounded_under_a_flood_of_made_up_claims() {
        let e = Escalation::new(EscalationConfig::default(), None);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for i in 0..(MAX_TRACKED + 5_000) {
            let f = failure(Some(&format!("agent a{i}")), true);
            e.failed_login(ip, &f, i as u64, 1000);
        }
        let state = e.state.lock().unwrap();
        assert!(
            state.strikes.len() <= MAX_TRACKED,
            "{}",
            state.strikes.len()
        );
    }

    /// Found by probing: a full table dropped an arbitrary entry for each
    /// new subject, so a flood of made-up claims made Dome forget the
    /// strikes of the subject it hid (here an agent one strike from a block).
    #[test]
    fn a_flood_of_new_subjects_does_not_push_out_a_subject_near_its_block() {
        let mut s = Strikes::default();
        let window = 60 * S;
        let agent = Key::Agent(7);
        let stuffer = Key::Source("10.0.0.9".parse().unwrap());
        for _ in 0..4 {
            assert!(!s.record(agent, 0, 5, window));
            assert!(!s.record(stuffer, 0, 5, window));
        }
        for i in 0..(3 * MAX_TRACKED as u64) {
            assert!(!s.record(Key::Claim(i), 1 + i, 5, window));
            assert!(s.len() <= MAX_TRACKED);
        }
        assert!(s.record(agent, 2 * S, 5, window), "the agent was forgotten");
        assert!(
            s.record(stuffer, 2 * S, 5, window),
            "the source was forgotten"
        );
    }

    fn small() -> EscalationConfig {
        EscalationConfig {
            enabled: true,
            max_strikes: 2,
            window_s: 60,
            block_s: 300,
        }
    }

    #[test]
    fn a_block_holds_in_user_space_until_lifted() {
        let e = Escalation::new(small(), None);
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

    #[test]
    fn a_blocked_agent_is_dropped_in_the_kernel_and_a_blocked_source_never_is() {
        let kernel = Arc::new(crate::kernel::MemoryEnforcer::default());
        let e = Escalation::new(small(), Some(kernel.clone()));
        let agent = Subject::Agent {
            id: "bot".into(),
            slot: 7,
        };
        e.strike(agent.clone(), "over budget", 0, 1000);
        assert!(
            kernel.state().blocked.is_empty(),
            "one strike blocks no one"
        );
        e.strike(agent, "over budget", 1, 1000);
        assert!(e.blocked(None, Some(7), 1001));
        assert_eq!(
            kernel.state().blocked,
            HashMap::from([(7, Some(Duration::from_secs(300)))]),
            "the agent's flows are dropped for block_s"
        );
        // A source shares its address with others behind a NAT: blocked in
        // user space only.
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        e.strike(Subject::Source(ip), "malformed request", 2, 1000);
        e.strike(Subject::Source(ip), "malformed request", 3, 1000);
        assert!(e.blocked(Some(ip), None, 1001));
        assert_eq!(kernel.state().blocked.len(), 1);
        // Lifted through the admin API: gone from the kernel too.
        assert_eq!(e.lift("identity", "7"), Ok(true));
        assert!(kernel.state().blocked.is_empty());
    }

    #[test]
    fn failing_credentials_block_their_claim_and_never_their_source() {
        let e = Escalation::new(small(), None);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!e.failed_login(ip, &failure(Some("agent a"), true), 0, 1000));
        assert!(!e.failed_login(ip, &failure(Some("agent a"), true), 1, 1000));
        // The claim's next failure is refused as blocked...
        assert!(e.failed_login(ip, &failure(Some("agent a"), true), 2, 1001));
        // ...but the source is not blocked, nor is another claim.
        assert!(!e.blocked(Some(ip), None, 1001));
        assert!(!e.failed_login(ip, &failure(Some("agent b"), true), 3, 1001));
        // Anonymous attempts count against the source.
        assert!(!e.failed_login(ip, &failure(None, true), 4, 1001));
        assert!(!e.failed_login(ip, &failure(None, true), 5, 1001));
        assert!(e.blocked(Some(ip), None, 1002));
        assert!(e.failed_login(ip, &failure(None, false), 6, 1002));
        // A key naming an agent unknown here claims no one: anonymous.
        let mut unknown = failure(Some("unknown agent nobody"), true);
        unknown.claim_known = false;
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(!e.failed_login(other, &unknown, 7, 1002));
        assert!(!e.failed_login(other, &unknown, 8, 1002));
        assert!(e.blocked(Some(other), None, 1002));
    }

    #[test]
    fn new_settings_apply_to_the_next_strike() {
        let e = Escalation::new(EscalationConfig::default(), None);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        e.strike(Subject::Source(ip), "x", 0, 1000);
        assert!(!e.blocked(Some(ip), None, 1000));
        e.set_config(small());
        e.strike(Subject::Source(ip), "x", 1, 1000);
        assert!(e.blocked(Some(ip), None, 1000));
    }

    #[test]
    fn at_most_ten_failed_logins_a_second_are_logged() {
        let e = Escalation::new(EscalationConfig::default(), None);
        let logged = (0..100).filter(|_| e.log.take(7).is_some()).count();
        assert_eq!(logged, LOGGED_PER_S as usize);
        assert_eq!(
            e.log.take(8),
            Some(90),
            "the next second says how many were left out"
        );
    }
}
