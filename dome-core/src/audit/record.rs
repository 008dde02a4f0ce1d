//! One audit record: who called what, why, what was decided and how it
//! ended. Encoded with rkyv so a reader sees the fields in place (no parse);
//! no I/O here.
//!
//! The record borrows every string it names, so building one on the
//! request path copies nothing until it is encoded into a reused buffer.
//! Its schema is versioned by the frame that carries it (`SCHEMA`): a new
//! layout gets a new struct and number, and readers keep the old ones.

use rkyv::with::InlineAsBox;
use rkyv::{Archive, Serialize};
use serde_json::{Value, json};

/// The schema version of [`Record`], written in every frame's header.
pub const SCHEMA: u16 = 1;

/// What the call asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A `tools/call`.
    Tool = 0,
    /// A `prompts/get`.
    Prompt = 1,
    /// A `resources/read`, `resources/subscribe` or `resources/unsubscribe`.
    Resource = 2,
    /// A `completion/complete`.
    Completion = 3,
}

impl Kind {
    /// Every kind, in the order of their byte values.
    pub const ALL: [Kind; 4] = [Kind::Tool, Kind::Prompt, Kind::Resource, Kind::Completion];

    /// The kind as policy, `dome audit query` and the JSON export name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
            Kind::Completion => "completion",
        }
    }

    /// The kind [`Kind::name`] gives `s`, if any (a query's `kind` filter).
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn from_u8(v: u8) -> Kind {
        Kind::ALL.get(v as usize).copied().unwrap_or(Kind::Tool)
    }
}

/// What Dome decided about the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Decision {
    /// Policy allowed it and it went upstream.
    Allow = 0,
    /// Policy denied it.
    Deny = 1,
    /// A budget refused it.
    OverBudget = 2,
    /// It never reached a decision (unknown tool, invalid parameters) or
    /// Dome could not carry it out (the audit trail itself refused it).
    Error = 3,
}

impl Decision {
    /// Every decision, in the order of their byte values.
    pub const ALL: [Decision; 4] = [
        Decision::Allow,
        Decision::Deny,
        Decision::OverBudget,
        Decision::Error,
    ];

    /// The decision as `dome audit query` and the JSON export name it
    /// (`allow`, `deny`, `over_budget`, `error`).
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::OverBudget => "over_budget",
            Decision::Error => "error",
        }
    }

    /// The decision [`Decision::name`] gives `s`, if any (a query's
    /// `decision` filter).
    pub fn from_name(s: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.name() == s)
    }

    /// The decision a record's byte stands for; an unknown byte reads as
    /// [`Decision::Error`].
    pub fn from_u8(v: u8) -> Decision {
        Decision::ALL
            .get(v as usize)
            .copied()
            .unwrap_or(Decision::Error)
    }
}

/// How the call ended, beyond its JSON-RPC status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Answered with a result.
    Ok = 0,
    /// Answered with a result the tool marked `isError`.
    ToolError = 1,
    /// Answered with a JSON-RPC error (`status` holds its code).
    Error = 2,
    /// The client went away before the answer; the upstream call was
    /// cancelled.
    Cancelled = 3,
    /// The call waits for the client's input (a later record resumes it).
    InputRequired = 4,
    /// The answer was not seen by Dome (the record was closed without one).
    Unknown = 5,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::ToolError,
        Outcome::Error,
        Outcome::Cancelled,
        Outcome::InputRequired,
        Outcome::Unknown,
    ];

    /// The outcome as `dome audit query` and the JSON export name it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::InputRequired => "input_required",
            Outcome::Unknown => "unknown",
        }
    }

    fn from_u8(v: u8) -> Outcome {
        Outcome::ALL
            .get(v as usize)
            .copied()
            .unwrap_or(Outcome::Unknown)
    }
}

/// Phases timed per call, in this order in [`Record::phase_ns`].
pub const PHASES: [&str; 5] = ["parse", "auth", "policy", "upstream", "total"];

/// Redaction detectors counted per call, in this order in
/// [`Record::redactions`] (the policy's built-in detectors, then custom).
pub const REDACTIONS: usize = crate::policy::redact::DETECTORS.len() + 1;

/// Schema 1. Empty strings stand for "not known" (anonymous caller, no
/// session, no intent …).
#[derive(Archive, Serialize, Debug, Clone, Default, PartialEq)]
pub struct Record<'a> {
    /// Unix time of the call's arrival, in microseconds.
    pub time_us: u64,
    /// The call id (the `jti` of the identity assertion when one was sent).
    #[rkyv(with = InlineAsBox)]
    pub call_id: &'a str,
    /// W3C trace id from the caller's `traceparent`, when it sent one.
    #[rkyv(with = InlineAsBox)]
    pub trace_id: &'a str,
    /// The Dome node that served the call.
    #[rkyv(with = InlineAsBox)]
    pub node: &'a str,
    /// The caller's tenant.
    #[rkyv(with = InlineAsBox)]
    pub tenant: &'a str,
    /// The calling agent's id.
    #[rkyv(with = InlineAsBox)]
    pub agent: &'a str,
    /// The end user the agent acted for.
    #[rkyv(with = InlineAsBox)]
    pub user: &'a str,
    /// The MCP session (`Mcp-Session-Id`) the call came in; empty outside a
    /// session.
    #[rkyv(with = InlineAsBox)]
    pub session: &'a str,
    /// The client's address.
    #[rkyv(with = InlineAsBox)]
    pub source: &'a str,
    /// [`Kind`] as a byte.
    pub kind: u8,
    /// The tool or prompt name, or the resource URI, as the caller named it.
    #[rkyv(with = InlineAsBox)]
    pub name: &'a str,
    /// The upstream the call went to, by its configured name.
    #[rkyv(with = InlineAsBox)]
    pub upstream: &'a str,
    /// The caller's stated intent (`params._meta["dome/intent"]`, else the
    /// `Dome-Intent` header).
    #[rkyv(with = InlineAsBox)]
    pub intent: &'a str,
    /// SHA-256 of the arguments' JSON text as received (zero: none).
    pub args_digest: [u8; 32],
    /// The arguments, redacted, where policy says to log them.
    #[rkyv(with = InlineAsBox)]
    pub args: &'a str,
    /// [`Decision`] as a byte.
    pub decision: u8,
    /// The policy rule that decided (empty: the default deny).
    #[rkyv(with = InlineAsBox)]
    pub rule: &'a str,
    /// The version (content hash) of the policy in force when the call was
    /// judged.
    #[rkyv(with = InlineAsBox)]
    pub policy_version: &'a str,
    /// The JSON-RPC error code of the answer (0: a result).
    pub status: i32,
    /// [`Outcome`] as a byte.
    pub outcome: u8,
    /// Why the call was refused or failed, as the caller was told.
    #[rkyv(with = InlineAsBox)]
    pub reason: &'a str,
    /// Values redacted from the result, per detector ([`REDACTIONS`]).
    pub redactions: [u32; REDACTIONS],
    /// Nanoseconds per phase ([`PHASES`]); 0 when the phase did not run.
    pub phase_ns: [u64; 5],
    /// Size of the request body the call came in, in bytes.
    pub bytes_in: u64,
    /// Size of the answer in bytes: the response body, or for a streamed
    /// answer the JSON text of its messages (0: not known).
    pub bytes_out: u64,
}

impl ArchivedRecord<'_> {
    /// The record's [`Kind`]; an unknown byte reads as [`Kind::Tool`].
    pub fn kind(&self) -> Kind {
        Kind::from_u8(self.kind)
    }

    /// The record's [`Decision`]; an unknown byte reads as
    /// [`Decision::Error`].
    pub fn decision(&self) -> Decision {
        Decision::from_u8(self.decision)
    }

    /// The record's [`Outcome`]; an unknown byte reads as
    /// [`Outcome::Unknown`].
    pub fn outcome(&self) -> Outcome {
        Outcome::from_u8(self.outcome)
    }

    /// Unix time of the call's arrival, in microseconds.
    pub fn time_us(&self) -> u64 {
        self.time_us.to_native()
    }

    /// The record as JSON, for `dome audit query/export` and the admin API.
    pub fn to_json(&self, seq: u64) -> Value {
        let redactions: serde_json::Map<String, Value> = crate::policy::redact::DETECTORS
            .iter()
            .copied()
            .chain(["custom"])
            .zip(self.redactions.iter())
            .filter(|(_, n)| n.to_native() > 0)
            .map(|(d, n)| (d.to_string(), n.to_native().into()))
            .collect();
        let phases: serde_json::Map<String, Value> = PHASES
            .iter()
            .zip(self.phase_ns.iter())
            .filter(|(_, n)| n.to_native() > 0)
            .map(|(p, n)| (p.to_string(), n.to_native().into()))
            .collect();
        let opt = |s: &str| {
            if s.is_empty() {
                Value::Null
            } else {
                Value::String(s.to_string())
            }
        };
        let digest = if self.args_digest == [0; 32] {
            Value::Null
        } else {
            hex::encode(self.args_digest).into()
        };
        json!({
            "seq": seq,
            "time": rfc3339_us(self.time_us()),
            "call_id": opt(&self.call_id),
            "trace_id": opt(&self.trace_id),
            "node": opt(&self.node),
            "tenant": opt(&self.tenant),
            "agent": opt(&self.agent),
            "user": opt(&self.user),
            "session": opt(&self.session),
            "source": opt(&self.source),
            "kind": self.kind().name(),
            "name": &*self.name,
            "upstream": opt(&self.upstream),
            "intent": opt(&self.intent),
            "args_sha256": digest,
            "args": if self.args.is_empty() { Value::Null } else {
                serde_json::from_str(&self.args).unwrap_or_else(|_| Value::String(self.args.to_string()))
            },
            "decision": self.decision().name(),
            "rule": opt(&self.rule),
            "policy_version": opt(&self.policy_version),
            "status": self.status.to_native(),
            "outcome": self.outcome().name(),
            "reason": opt(&self.reason),
            "redactions": redactions,
            "phase_ns": phases,
            "bytes_in": self.bytes_in.to_native(),
            "bytes_out": self.bytes_out.to_native(),
        })
    }
}

/// `2026-11-25T23:51:13.123456Z` from Unix microseconds.
pub fn rfc3339_us(us: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// Unix seconds from `YYYY-MM-DD[THH:MM[:SS[.frac]]][Z]` (UTC; a space may
/// stand for the `T`).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    use time::macros::format_description as fd;
    let s = s.trim_end_matches('Z').replacen(' ', "T", 1);
    let at = if s.contains('T') {
        let full: &[time::format_description::BorrowedFormatItem<'_>] =
            fd!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
        let minutes: &[time::format_description::BorrowedFormatItem<'_>] =
            fd!("[year]-[month]-[day]T[hour]:[minute]");
        time::PrimitiveDateTime::parse(&s, full)
            .or_else(|_| time::PrimitiveDateTime::parse(&s, minutes))
            .ok()?
    } else {
        time::Date::parse(&s, fd!("[year]-[month]-[day]"))
            .ok()?
            .midnight()
    };
    u64::try_from(at.assume_utc().unix_timestamp()).ok()
}

/// `s` cut to at most `max` bytes, at a character boundary (caller-given
/// text is stored capped).
pub fn capped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_round_trip() {
        assert_eq!(rfc3339_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_us(1_795_737_073_123_456),
            "2026-11-26T23:51:13.123456Z"
        );
        assert_eq!(parse_rfc3339("2026-11-26T23:51:13Z"), Some(1_795_737_073));
        assert_eq!(parse_rfc3339("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_rfc3339("2024-13-01"), None);
        for s in [0u64, 951_782_400, 1_709_164_800, 4_102_444_799] {
            let text = rfc3339_us(s * 1_000_000);
            assert_eq!(parse_rfc3339(&text[..19]), Some(s), "{text}");
        }
    }
}
