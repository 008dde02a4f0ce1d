//! `[server]`: where agents reach Dome, and the listener's limits.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[server]`: where agents reach Dome.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The MCP listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Connections served at once. At the limit, an idle connection is
    /// closed to admit a new one (the oldest that has not authenticated,
    /// else the one idle longest); with none, new ones wait in the listen
    /// backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections from one source address; more are closed at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Connections from one /24 (IPv4) or /64 (IPv6) together.
    #[serde(default = "default_max_connections_per_prefix")]
    pub max_connections_per_prefix: usize,
    /// Connections one agent's requests may come on; its requests on one
    /// more are refused (429), other agents' are not.
    #[serde(default = "default_max_connections_per_agent")]
    pub max_connections_per_agent: usize,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Time to receive a request's headers, and the longest a kept-alive
    /// connection may sit idle, milliseconds.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Time to receive a request's body, milliseconds.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// HTTP/2 streams per connection.
    #[serde(default = "default_streams")]
    pub max_concurrent_streams: u32,
    /// Worker threads, each with its own runtime, listener socket
    /// (SO_REUSEPORT) and upstream connections; 0 means one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// On SIGTERM or SIGINT, how long open connections get to finish the
    /// requests they are on before Dome exits, milliseconds.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_connections_per_prefix: default_max_connections_per_prefix(),
            max_connections_per_agent: default_max_connections_per_agent(),
            max_header_bytes: default_max_header_bytes(),
            header_timeout_ms: default_header_timeout(),
            body_timeout_ms: default_body_timeout(),
            max_concurrent_streams: default_streams(),
            workers: 0,
            shutdown_grace_ms: default_shutdown_grace(),
        }
    }
}

impl ServerConfig {
    pub fn limits(&self) -> super::Limits {
        super::Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_connections_per_prefix: self.max_connections_per_prefix,
            max_connections_per_agent: self.max_connections_per_agent,
            max_header_bytes: self.max_header_bytes,
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms),
            max_concurrent_streams: self.max_concurrent_streams,
        }
    }
}

fn default_max_connections() -> usize {
    10_000
}
// A NAT or corporate egress puts many agents behind one address, so the
// per-address share is generous; it still keeps one address from holding
// more than a tenth of the slots, and one network more than a quarter.
fn default_max_connections_per_ip() -> usize {
    1_000
}
fn default_max_connections_per_prefix() -> usize {
    2_500
}
// An agent needs few connections (HTTP/2 multiplexes; HTTP/1.1 clients
// pool a handful); a tenth of the slots leaves room for bursty runtimes
// that share one agent id and keeps one agent from holding them all.
fn default_max_connections_per_agent() -> usize {
    1_000
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_header_timeout() -> u64 {
    30_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_streams() -> u32 {
    100
}
fn default_shutdown_grace() -> u64 {
    10_000
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("literal")
}
