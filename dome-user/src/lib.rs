//! Dome in user space: configuration, the MCP gateway, the kernel tier's
//! handle, and the stats endpoint. The `dome` binary (`main.rs`) wires these together.

pub mod clock;
pub mod config;
pub mod demo;
pub mod mcp;
pub mod runtime;
pub mod stats;
pub mod transport;
pub mod xdp;
