//! Dome's decisions, with no I/O: what a caller may do and how much of it.
//! Time comes in as an argument (`now`, in nanoseconds of a monotonic
//! clock the caller reads); files come in as text. The shell that does the
//! I/O is `dome-user`, which re-exports these modules where they always
//! were (`dome::policy::compile`, `dome::identity::budget`).
//!
//! - `policy`: the policy language as written (`lang`), compiled into
//!   tables and evaluated (`compile`), checked by a plain interpreter
//!   (`reference`), and the redaction it asks for (`redact`).
//! - `admit`: whether a call may go to its upstream: the agent's budget,
//!   policy and its obligations, the tool and tenant budgets; only it makes
//!   the `Admitted` the upstream client takes.
//! - `audit`: one audit record and its rkyv encoding (`record`), and the
//!   hash-chained frame that carries it (`frame`).
//! - `budget`: call budgets, GCRA over atomics.
//! - `catalog`: how the federated catalogs name and route what the
//!   upstreams list (prefixes, conflicts, names kept across listings,
//!   cursors).
//! - `diag`: where in a TOML file a problem is.
//! - `envelope`: one JSON-RPC message read on a simd-json tape, its
//!   caller-controlled sizes bounded.
//! - `era`: which era a message speaks, and the stateless era's ladder of
//!   checks (envelope keys, routing headers, version).
//! - `identity`: who is calling: API keys, tokens verified against keys
//!   already fetched, the authentication of a request against the index.
//! - `input`: a call that needs the client's input across the eras: who
//!   can be asked what, `input_required` and its rounds, parked-call tokens.
//! - `protocol`: MCP's versions, error codes, `_meta` keys and headers, and
//!   what each era's answers may carry.
//! - `rules`: what a caller may send: names, URIs in their plain form,
//!   arguments, request ids.
//! - `sse`: Server-Sent Events framing, incremental and bounded.
//! - `subscriptions`: what a `subscriptions/listen` stream carries, and
//!   log messages at the caller's level.
//! - `terminal`: text from callers made safe for an operator's terminal.

// The crate is the decisions' API: each public item says what it is.
#![warn(missing_docs)]

pub mod admit;
pub mod audit;
pub mod budget;
pub mod catalog;
pub mod diag;
pub mod envelope;
pub mod era;
pub mod identity;
pub mod input;
#[cfg(any(test, feature = "testing"))]
pub mod mangle;
pub mod policy;
pub mod protocol;
pub mod rules;
pub mod sse;
pub mod subscriptions;
pub mod terminal;

/// An error and its sources, joined with `: ` (for one log line, a
/// message to a caller, an operator's terminal). Dome's errors say what
/// failed in their `Display` and carry what caused it as their `source`,
/// so this is the whole sentence (as anyhow's `{:#}` prints it).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
