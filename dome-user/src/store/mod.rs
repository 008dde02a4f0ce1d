//! What Dome keeps and fetches for its decisions: the agent registry (redb),
//! the policy versions it activated (redb), and identity providers' keys
//! (JWKS files and URLs). The decisions that read them are `dome_core`'s.

pub mod jwks;
pub mod policy;
pub mod registry;
