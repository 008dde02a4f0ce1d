//! Who is calling: tenants, agents and their credentials, the end user an
//! agent acts for, call budgets, and the signed assertion that tells the
//! upstream whose request it is.

pub mod apikey;
pub mod assertion;
/// Call budgets (GCRA), `dome_core`'s: no I/O, the clock an argument.
pub use dome_core::budget;
/// Authentication of one request, `dome_core`'s: no I/O, the time an
/// argument.
pub use dome_core::identity::authn;
pub mod config;
pub mod escalation;
/// Identity providers' tokens, verified: `dome_core`'s (keys are fetched by
/// `store::jwks`).
pub use dome_core::identity::jwt;
