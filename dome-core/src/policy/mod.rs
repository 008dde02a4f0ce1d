//! Policy: which calls are allowed, for whom, with which arguments and
//! intent, and with which obligations. `lang` is the language as written,
//! `compile` turns it into tables and evaluates calls, `reference` is a
//! plain interpreter that checks the tables, `redact` is what an allowing
//! rule asks to be taken out of an answer. Reading policy folders and
//! keeping versions is the shell's (`dome::policy`).

pub mod compile;
pub mod lang;
pub mod redact;
pub mod reference;

#[cfg(test)]
mod tests;
