//! The network edge: worker threads with a listening socket each, the
//! listener that holds connections to their limits, the connection as the
//! listener tracks it, and TLS with certificates swapped in place.

use std::convert::Infallible;

mod config;
mod conn;
mod listener;
mod tls;
pub mod workers;

pub use config::ServerConfig;
pub use conn::*;
pub use listener::*;
pub use tls::*;

/// A response body: what the listener sends whatever answers the request.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, Infallible>;
