//! The audit trail: every tool call (and prompt, resource and completion
//! request) recorded with who, what, why and what was decided, durably,
//! tamper-evidently and queryably.
//!
//! - `record`, `frame` (in `dome-core`, no I/O): the record and its rkyv
//!   encoding; the on-disk frame: length, CRC, hash chain.
//! - `checkpoint`: signed checkpoints and retirement notes, the frames
//!   that anchor the chain to the node's key and account for retention.
//! - `segment`: segment files, their indexes and start-up recovery.
//! - `trail`: the request path's ring and its tickets.
//! - `writer`: the writer thread behind it: batches, frames, syncs,
//!   checkpoints, retention.
//! - `query`: filtered scans and the checkpoints' export.
//! - `verify`: the chain, the checkpoints and the anchors checked
//!   (re-exported by `query`).
//! - `output`: query results as JSON Lines or an (escaped) table.
//! - `config`: `[audit]`.

pub use dome_core::audit::{frame, record};

pub mod call;
pub mod checkpoint;
pub mod config;
pub mod output;
pub mod query;
pub mod segment;
pub mod trail;
mod verify;
mod writer;

pub use call::Call;
pub use config::AuditConfig;
pub use record::Record;
pub use trail::Trail;

#[cfg(test)]
mod tests;
