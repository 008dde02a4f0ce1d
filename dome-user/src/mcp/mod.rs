//! MCP over Streamable HTTP: the protocol constants, the gateway that agents
//! talk to, the clients Dome keeps to its upstream servers, and the federated
//! tool catalog.

pub mod catalog;
/// The JSON-RPC envelope, `dome_core`'s.
pub use dome_core::envelope;
pub mod gateway;
pub mod h1;
pub mod input;
pub mod pool;
/// The wire constants, `dome_core`'s.
pub use dome_core::protocol;
pub mod sse;
pub mod upstream;
