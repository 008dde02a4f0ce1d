//! One call's record in the making, as the gateway learns its fields
//! phase by phase. It holds the call's room in the ring from the start, so
//! a call that runs always gets its record: `finish` commits it and waits
//! until it is durable (when the mode says so); a call abandoned on the
//! way (client gone, a task ending early) is committed when dropped.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::record::{Decision, Kind, Outcome, PHASES, REDACTIONS, Record};
use super::trail::{Slot, Trail, Unavailable};
use crate::identity::authn::Caller;

/// Indexes into [`Call::phase_ns`].
pub mod phase {
    pub const PARSE: usize = 0;
    pub const AUTH: usize = 1;
    pub const POLICY: usize = 2;
    pub const UPSTREAM: usize = 3;
    pub const TOTAL: usize = 4;
}

const _: () = assert!(PHASES.len() == 5);

pub struct Call {
    /// `None`: the ring was full and `on_full = "drop"`; nothing is written.
    slot: Option<Slot>,
    pub arrived: Instant,
    pub time_us: u64,
    pub kind: Kind,
    /// Shared with the catalog and the upstream (not copied per call).
    pub name: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub caller: Option<Caller>,
    pub session: Option<String>,
    pub source: Option<IpAddr>,
    pub trace_id: Option<String>,
    /// The call id (the assertion's `jti`): random, written as 16 hex digits.
    pub call_id: u64,
    pub intent: Option<String>,
    pub args_digest: [u8; 32],
    pub args: Option<String>,
    pub decision: Decision,
    /// Shared with the policy (not copied per call).
    pub rule: Option<Arc<str>>,
    /// The policy in force when the call was judged (its version goes in
    /// the record; held, not copied).
    pub policy: Option<Arc<crate::policy::compile::Policy>>,
    pub status: Option<i32>,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub redactions: [u32; REDACTIONS],
    pub phase_ns: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The JSON-RPC id of the request (to answer it when its record
    /// cannot be made durable).
    pub rpc_id: Option<serde_json::Value>,
}

impl Call {
    /// A new record for a call that arrived at `arrived` (Unix µs `time_us`)
    /// holding `slot`.
    pub fn new(slot: Option<Slot>, kind: Kind, arrived: Instant, time_us: u64) -> Call {
        Call {
            slot,
            arrived,
            time_us,
            kind,
            name: None,
            upstream: None,
            caller: None,
            session: None,
            source: None,
            trace_id: None,
            call_id: rand::random(),
            intent: None,
            args_digest: [0; 32],
            args: None,
            decision: Decision::Error,
            rule: None,
            policy: None,
            status: None,
            outcome: None,
            reason: None,
            redactions: [0; REDACTIONS],
            phase_ns: [0; 5],
            bytes_in: 0,
            bytes_out: 0,
            rpc_id: None,
        }
    }

    /// The call id as the assertion and the record write it.
    pub fn call_id_hex(&self) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((self.call_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }

    /// SHA-256 of the arguments' JSON text as received.
    pub fn digest_args(&mut self, text: &str) {
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        self.args_digest.copy_from_slice(d.as_ref());
    }

    /// The call ended with JSON-RPC error `code` and the message the
    /// caller was shown.
    pub fn failed(&mut self, code: i64, message: &str) {
        self.status = Some(code as i32);
        self.outcome = Some(Outcome::Error);
        self.reason = Some(capped(message, MAX_REASON_BYTES).to_string());
    }

    pub fn add_redactions(&mut self, counts: &crate::policy::redact::Counts) {
        for (a, b) in self.redactions.iter_mut().zip(counts.0.iter()) {
            *a += b;
        }
    }

    /// Encodes and queues the record; returns the trail and ticket to wait
    /// on (`None` when the record was dropped for a full ring).
    pub fn commit(mut self) -> Option<(Arc<Trail>, u64)> {
        self.commit_now()
    }

    fn commit_now(&mut self) -> Option<(Arc<Trail>, u64)> {
        let slot = self.slot.take()?;
        let trail = slot.trail().clone();
        if self.phase_ns[phase::TOTAL] == 0 {
            self.phase_ns[phase::TOTAL] = self.arrived.elapsed().as_nanos() as u64;
        }
        let mut source = [0u8; 48];
        let source_len = self.source.map_or(0, |ip| ip_text(ip, &mut source));
        let outcome = self.outcome.unwrap_or(Outcome::Unknown);
        let call_id = self.call_id_hex();
        let (tenant, agent, user) = match &self.caller {
            Some(c) => (
                c.agent.tenant.as_str(),
                c.agent.id.as_str(),
                c.user.as_deref().unwrap_or(""),
            ),
            None => ("", "", ""),
        };
        let record = Record {
            time_us: self.time_us,
            call_id: std::str::from_utf8(&call_id).unwrap_or(""),
            trace_id: self.trace_id.as_deref().unwrap_or(""),
            node: trail.node(),
            tenant,
            agent,
            user,
            session: self.session.as_deref().unwrap_or(""),
            source: std::str::from_utf8(&source[..source_len]).unwrap_or(""),
            kind: self.kind as u8,
            name: self.name.as_deref().unwrap_or(""),
            upstream: self.upstream.as_deref().unwrap_or(""),
            intent: self.intent.as_deref().unwrap_or(""),
            args_digest: self.args_digest,
            args: self.args.as_deref().unwrap_or(""),
            decision: self.decision as u8,
            rule: self.rule.as_deref().unwrap_or(""),
            policy_version: self.policy.as_ref().map_or("", |p| p.version.as_str()),
            status: self.status.unwrap_or(0),
            outcome: outcome as u8,
            reason: self.reason.as_deref().unwrap_or(""),
            redactions: self.redactions,
            phase_ns: self.phase_ns,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        };
        let ticket = trail.commit(slot, &record)?;
        Some((trail, ticket))
    }

    /// Commits the record and waits until it is durable per the mode: the
    /// caller may be answered only after this returns `Ok`.
    pub async fn finish(self) -> Result<(), Unavailable> {
        match self.commit() {
            Some((trail, ticket)) => trail.durable(ticket).await,
            None => Ok(()),
        }
    }
}

/// `ip` as text into `out`; its length. IPv4 (nearly every caller) without
/// the formatting machinery, which cost more than the rest of the record.
fn ip_text(ip: IpAddr, out: &mut [u8; 48]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    out[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    out[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                out[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut cur = std::io::Cursor::new(&mut out[..]);
            let _ = write!(cur, "{ip}");
            cur.position() as usize
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Abandoned on the way: written as far as it got, without waiting.
        // With no outcome yet, its request's future was dropped before the
        // answer, which the server does when the client goes away (such
        // calls were recorded `unknown`).
        if self.slot.is_some() && self.outcome.is_none() {
            self.outcome = Some(Outcome::Cancelled);
            self.reason
                .get_or_insert_with(|| "the client went away before the answer".into());
        }
        let _ = self.commit_now();
    }
}

/// The most of a refusal's or failure's message a record keeps: it may
/// carry what an upstream sent (its error, its whole answer to
/// `initialize`), which no one bounds but Dome.
pub const MAX_REASON_BYTES: usize = 1024;

pub use dome_core::audit::record::capped;

#[cfg(test)]
mod tests {
    use super::ip_text;

    #[test]
    fn addresses_as_text() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.200.9.90",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let mut out = [0u8; 48];
            let n = ip_text(ip.parse().unwrap(), &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), ip);
        }
    }
}
