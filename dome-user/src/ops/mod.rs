//! What an operator reads and drives: the stats listener (`/stats`,
//! `/metrics`, health), the request path's latency histograms and counters,
//! and the admin API.

pub mod admin;
pub mod metrics;
pub mod stats;
