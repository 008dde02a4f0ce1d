//! One call's record in the making: the fields the gateway learns phase by
//! phase, and the [`Record`] they become. No I/O: holding the call's room
//! in the ring, committing and waiting until the record is durable are the
//! shell's (`dome-user`'s `audit::Call`, which holds these fields).

use std::{net::IpAddr, sync::Arc};

use super::record::{Decision, Kind, Outcome, PHASES, REDACTIONS, Record, capped};
use crate::{identity::authn::Caller, policy::compile::Policy, policy::redact::Counts};

/// Indexes into [`CallFields::phase_ns`].
pub mod phase {
    /// Reading and parsing the request.
    pub const PARSE: usize = 0;
    /// Authentication.
    pub const AUTH: usize = 1;
    /// Admission: policy and budgets.
    pub const POLICY: usize = 2;
    /// The upstream's answer.
    pub const UPSTREAM: usize = 3;
    /// The whole call.
    pub const TOTAL: usize = 4;
}

const _: () = assert!(PHASES.len() == 5);

/// The most of a refusal's or failure's message a record keeps: it may
/// carry what an upstream sent (its error, its whole answer to
/// `initialize`), which no one bounds but Dome.
pub const MAX_REASON_BYTES: usize = 1024;

/// What a call's record will say, as far as it is known.
pub struct CallFields {
    /// Unix time of the call's arrival, µs.
    pub time_us: u64,
    /// What was called.
    pub kind: Kind,
    /// The tool, prompt or resource named (shared with the catalog).
    pub name: Option<Arc<str>>,
    /// The upstream that owns it (shared with the catalog).
    pub upstream: Option<Arc<str>>,
    /// Who called.
    pub caller: Option<Caller>,
    /// The session, in the session era.
    pub session: Option<String>,
    /// The address the request came from.
    pub source: Option<IpAddr>,
    /// The W3C trace id the request carried.
    pub trace_id: Option<String>,
    /// The call id (the assertion's `jti`), written as 16 hex digits.
    pub call_id: u64,
    /// The intent the caller gave.
    pub intent: Option<String>,
    /// SHA-256 of the arguments' JSON text as received.
    pub args_digest: [u8; 32],
    /// The arguments as logged (redacted, capped).
    pub args: Option<String>,
    /// Admission's decision.
    pub decision: Decision,
    /// The rule that decided (shared with the policy).
    pub rule: Option<Arc<str>>,
    /// The policy in force when the call was judged (its version goes in
    /// the record; held, not copied).
    pub policy: Option<Arc<Policy>>,
    /// The JSON-RPC error code the call ended with, if any.
    pub status: Option<i32>,
    /// How the call ended.
    pub outcome: Option<Outcome>,
    /// Why it was refused or failed (capped).
    pub reason: Option<String>,
    /// What redaction removed from the answer, by detector.
    pub redactions: [u32; REDACTIONS],
    /// Time spent per phase, ns (see [`phase`]).
    pub phase_ns: [u64; 5],
    /// Bytes of the request.
    pub bytes_in: u64,
    /// Bytes of the answer.
    pub bytes_out: u64,
    /// The JSON-RPC id of the request (to answer it when its record cannot
    /// be made durable).
    pub rpc_id: Option<serde_json::Value>,
}

/// Room for the text a [`Record`] borrows that the fields hold as numbers.
pub struct Scratch {
    call_id: [u8; 16],
    source: [u8; 48],
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            call_id: [0; 16],
            source: [0; 48],
        }
    }
}

impl CallFields {
    /// A call of `kind` that arrived at Unix µs `time_us`, with the random
    /// `call_id` the shell drew for it.
    pub fn new(kind: Kind, time_us: u64, call_id: u64) -> CallFields {
        CallFields {
            time_us,
            kind,
            name: None,
            upstream: None,
            caller: None,
            session: None,
            source: None,
            trace_id: None,
            call_id,
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

    /// Adds what redaction removed from (part of) the answer.
    pub fn add_redactions(&mut self, counts: &Counts) {
        for (a, b) in self.redactions.iter_mut().zip(counts.0.iter()) {
            *a += b;
        }
    }

    /// The call was abandoned on the way: with no outcome yet, its
    /// request's future was dropped before the answer, which the server
    /// does when the client goes away (such calls were recorded `unknown`).
    pub fn abandoned(&mut self) {
        if self.outcome.is_none() {
            self.outcome = Some(Outcome::Cancelled);
            self.reason
                .get_or_insert_with(|| "the client went away before the answer".into());
        }
    }

    /// The record these fields make on `node`, its numbers written as text
    /// into `scratch`.
    pub fn record<'a>(&'a self, node: &'a str, scratch: &'a mut Scratch) -> Record<'a> {
        scratch.call_id = self.call_id_hex();
        let source_len = self.source.map_or(0, |ip| ip_text(ip, &mut scratch.source));
        let scratch: &'a Scratch = scratch;
        let (tenant, agent, user) = match &self.caller {
            Some(c) => (
                c.agent.tenant.as_str(),
                c.agent.id.as_str(),
                c.user.as_deref().unwrap_or(""),
            ),
            None => ("", "", ""),
        };
        Record {
            time_us: self.time_us,
            call_id: std::str::from_utf8(&scratch.call_id).unwrap_or(""),
            trace_id: self.trace_id.as_deref().unwrap_or(""),
            node,
            tenant,
            agent,
            user,
            session: self.session.as_deref().unwrap_or(""),
            source: std::str::from_utf8(&scratch.source[..source_len]).unwrap_or(""),
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
            outcome: self.outcome.unwrap_or(Outcome::Unknown) as u8,
            reason: self.reason.as_deref().unwrap_or(""),
            redactions: self.redactions,
            phase_ns: self.phase_ns,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// What a call learns on its way is what its record says; what it never
    /// learned is empty, and an abandoned call says so.
    #[test]
    fn the_fields_learned_are_the_record_made() {
        let mut f = CallFields::new(Kind::Tool, 1_700_000_000_000_000, 0x0123_4567_89ab_cdef);
        f.name = Some("echo".into());
        f.source = Some("10.0.0.7".parse().unwrap());
        f.decision = Decision::Allow;
        f.phase_ns[phase::POLICY] = 150;
        f.failed(-32603, &"x".repeat(5000));
        let mut scratch = Scratch::default();
        let r = f.record("node-1", &mut scratch);
        assert_eq!(
            (r.call_id, r.source, r.name, r.node, r.agent, r.upstream),
            ("0123456789abcdef", "10.0.0.7", "echo", "node-1", "", "")
        );
        assert_eq!((r.decision, r.status), (Decision::Allow as u8, -32603));
        assert_eq!(r.outcome, Outcome::Error as u8);
        assert_eq!(r.reason.len(), MAX_REASON_BYTES, "the reason is capped");
        assert_eq!(r.phase_ns[phase::POLICY], 150);

        let mut gone = CallFields::new(Kind::Tool, 0, 1);
        gone.abandoned();
        let r = gone.record("n", &mut scratch);
        assert_eq!(r.outcome, Outcome::Cancelled as u8);
        assert_eq!(r.reason, "the client went away before the answer");
        let mut answered = CallFields::new(Kind::Tool, 0, 1);
        answered.outcome = Some(Outcome::Ok);
        answered.abandoned();
        assert_eq!(
            (answered.outcome, answered.reason),
            (Some(Outcome::Ok), None)
        );
    }
}
