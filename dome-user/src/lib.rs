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

// Where it always was; it is pure, so `dome_core`'s (which reports its
// errors' causes with it too).
pub use dome_core::error_chain;
