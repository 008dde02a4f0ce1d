//! Dome in user space: configuration, the MCP gateway, the kernel tier's
//! handle, and the stats endpoint. The `dome` binary (`main.rs`) parses its
//! command line and hands each subcommand to `cli`.

pub mod allocator;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod identity;
pub mod ops;
pub mod policy;
pub mod runtime;
pub mod store;
pub mod upstream;
pub use dome_core::terminal;
pub mod kernel;
pub mod net;

/// An error and its sources, joined with `: ` (for one log line).
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
