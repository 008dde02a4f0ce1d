//! Policy: which calls are allowed, for whom, with which arguments and
//! intent, and with which obligations. `lang` is the language as written,
//! `compile` turns it into tables and evaluates calls, `reference` is a
//! plain interpreter that checks the tables.
//!
//! Not yet wired into the gateway (see the issue notes): the decide phase,
//! `tools/list` filtering, redaction and the version lifecycle come next.

pub mod compile;
pub mod lang;
pub mod reference;

#[cfg(test)]
mod tests;
