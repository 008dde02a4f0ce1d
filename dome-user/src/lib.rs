//! Dome in user space: the shell around `dome-core` that does the I/O.
//! The `dome` binary (`main.rs`) parses its command line and hands each
//! subcommand to `cli`; `runtime` wires the rest:
//!
//! - `net`: worker threads, the listener and its connection limits, TLS;
//! - `gateway`: the MCP endpoint agents talk to, phase by phase;
//! - `upstream`: the client to upstream MCP servers (pool, HTTP/1.1, SSE);
//! - `identity`: key generation, the signed assertion, escalation applied;
//! - `policy`: policy folders read; `store`: what Dome keeps and fetches
//!   (registry, policy versions, JWKS);
//! - `audit`: the durable trail, its queries and verification;
//! - `kernel`: the XDP tier's handle (`Enforcer`);
//! - `ops`: stats, metrics, the admin API;
//! - `config`, `clock`, `allocator`.

pub mod allocator;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod identity;
pub mod kernel;
pub mod net;
pub mod ops;
pub mod policy;
pub mod runtime;
pub mod store;
pub use dome_core::terminal;
pub mod upstream;

// Where it always was; it is pure, so `dome_core`'s (which reports its
// errors' causes with it too).
pub use dome_core::error_chain;
