//! Dome in user space: configuration, the kernel tier's handle, and the
//! stats endpoint. The `dome` binary (`main.rs`) wires these together.

pub mod clock;
pub mod config;
pub mod runtime;
pub mod stats;
pub mod xdp;
