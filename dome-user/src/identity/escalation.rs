//! Escalation, applied: a caller that keeps misbehaving within a window is
//! blocked for a while. Whom a strike counts against, when a block falls and
//! on whom, and the bounded tables are `dome_core::identity::escalation`'s
//! (pure, the clock an argument); here they are kept under one lock, taken
//! only on failure paths, and what a block asks for is done: the agent's
//! flows dropped in the kernel tier, a log line, and the blocks requests
//! check published so that check takes no lock. Failed logins are logged at
//! a bounded rate. The settings apply live on reload.

use std::{
    collections::HashMap,
    hash::RandomState,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use dome_core::identity::escalation::{self as decide, Escalated, EscalationState};
pub use dome_core::identity::escalation::{EscalationConfig, Key, Subject};

use crate::kernel::{Enforcer, XdpError};

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
    enforcer: Option<Arc<dyn Enforcer>>,
    state: Mutex<EscalationState>,
    /// What requests that succeed check: agent and source blocks and their
    /// ends (unix s), swapped after each change so the check takes no lock.
    /// Claim blocks are checked only on the failure path, under the lock.
    view: ArcSwap<HashMap<Key, u64>>,
    escalations: AtomicU64,
    /// Claims' hash key, made at start, so collisions cannot be aimed.
    hasher: RandomState,
    log: LogBudget,
}

/// A block in force could not be lifted in the kernel tier (it stays
/// lifted in user space).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LiftError(#[from] XdpError);

impl Escalation {
    pub fn new(config: EscalationConfig, enforcer: Option<Arc<dyn Enforcer>>) -> Self {
        Escalation {
            config: ArcSwap::from_pointee(config),
            enforcer,
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

    /// Counts a strike against `who`; blocks it when it has too many.
    pub fn strike(&self, who: Subject, why: &str, now_ns: u64, now_unix_s: u64) {
        let config = self.config.load();
        if !config.enabled {
            return;
        }
        let key = Key::of(&who, &self.hasher);
        let mut state = self.state.lock().expect("escalation lock");
        if let Some(escalated) = state.strike(key, who, why, &config, now_ns, now_unix_s) {
            self.apply(&mut state, escalated, config.block_s);
        }
    }

    /// Does what a new block asks: drops the agent's flows in the kernel
    /// tier (when attached), counts and logs it, publishes the view.
    fn apply(&self, state: &mut EscalationState, e: Escalated, block_s: u64) {
        let kernel = match (&self.enforcer, e.kernel) {
            (Some(t), Some((slot, ttl))) => t.block_identity(slot, Some(ttl)).is_ok(),
            _ => false,
        };
        if kernel {
            state.kernel_applied(e.key);
        }
        self.escalations.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = state.block(&e.key) {
            tracing::warn!(subject = ?b.subject, reason = b.reason.as_str(), block_s, kernel, "escalation: blocked");
        }
        if e.publish {
            self.view.store(Arc::new(state.view()));
        }
    }

    /// Whether a block is in force against the source (for anonymous
    /// requests only) or the agent (the user-space half of enforcement).
    pub fn blocked(&self, source: Option<IpAddr>, slot: Option<u32>, now_unix_s: u64) -> bool {
        decide::blocked_in(&self.view.load(), source, slot, now_unix_s)
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
        let who = decide::failure_subject(f, source);
        let blocked = match &who {
            Subject::Claim(_) => {
                let key = Key::of(&who, &self.hasher);
                let state = self.state.lock().expect("escalation lock");
                state.in_force(&key, now_unix_s)
            }
            _ => self.blocked(Some(source), None, now_unix_s),
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
            self.strike(who, "authentication failure", now_ns, now_unix_s);
        }
        false
    }

    /// `GET /blocks` of the admin API.
    pub fn blocks_json(&self) -> Value {
        let now = crate::clock::unix_s();
        let mut state = self.state.lock().expect("escalation lock");
        state.expire(now);
        self.view.store(Arc::new(state.view()));
        let list: Vec<Value> = state
            .blocks()
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
               "kernel": self.enforcer.is_some()})
    }

    /// Lifts the block `kind/key` (as `GET /blocks` names it); true when one was in force.
    pub fn lift(&self, kind: &str, key: &str) -> Result<bool, LiftError> {
        let full = format!("{kind}/{key}");
        let lifted = {
            let mut state = self.state.lock().expect("escalation lock");
            let lifted = state.lift(&full);
            if lifted.is_some() {
                self.view.store(Arc::new(state.view()));
            }
            lifted
        };
        let Some((_, b)) = lifted else {
            return Ok(false);
        };
        if let (Some(t), Subject::Agent { slot, .. }) = (&self.enforcer, &b.subject) {
            t.unblock_identity(*slot)?;
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
    use std::time::Duration;

    use dome_core::identity::escalation::MAX_TRACKED;

    use super::*;

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
    fn the_strike_table_stays_bounded_under_a_flood_of_made_up_claims() {
        let e = Escalation::new(EscalationConfig::default(), None);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for i in 0..(MAX_TRACKED + 5_000) {
            let f = failure(Some(&format!("agent a{i}")), true);
            e.failed_login(ip, &f, i as u64, 1000);
        }
        let state = e.state.lock().unwrap();
        assert!(state.tracked() <= MAX_TRACKED, "{}", state.tracked());
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
        assert!(e.lift("prefix", "127.0.0.9/32").unwrap());
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
        assert!(e.lift("identity", "7").unwrap());
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
