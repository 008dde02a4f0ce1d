//! Who is calling: tenants, agents and their credentials, the end user an
//! agent acts for, call budgets, and the signed assertion that tells the
//! upstream whose request it is.

pub mod apikey;
pub mod assertion;
pub mod authn;
/// Call budgets (GCRA), `dome_core`'s: no I/O, the clock an argument.
pub use dome_core::budget;
pub mod config;
pub mod escalation;
pub mod jwt;
pub mod registry;
