//! Dome's decisions, with no I/O: what a caller may do and how much of it.
//! Time comes in as an argument (`now`, in nanoseconds of a monotonic
//! clock the caller reads); files come in as text. The shell that does the
//! I/O is `dome-user`, which re-exports these modules where they always
//! were (`dome::policy::compile`, `dome::identity::budget`).
//!
//! - `policy`: the policy language as written (`lang`), compiled into
//!   tables and evaluated (`compile`), checked by a plain interpreter
//!   (`reference`), and the redaction it asks for (`redact`).
//! - `budget`: call budgets, GCRA over atomics.
//! - `diag`: where in a TOML file a problem is.
//! - `envelope`: one JSON-RPC message read on a simd-json tape, its
//!   caller-controlled sizes bounded.
//! - `protocol`: MCP's versions, error codes, `_meta` keys and headers, and
//!   what each era's answers may carry.
//! - `terminal`: text from callers made safe for an operator's terminal.

// The crate is the decisions' API: each public item says what it is.
#![warn(missing_docs)]

pub mod budget;
pub mod diag;
pub mod envelope;
#[cfg(any(test, feature = "testing"))]
pub mod mangle;
pub mod policy;
pub mod protocol;
pub mod terminal;
