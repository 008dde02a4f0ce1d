//! Who is calling, decided with no I/O: API keys checked against their
//! hashes in constant time, tokens of tenants' identity providers verified
//! against keys already fetched, and the authentication of one request
//! against the index of agents and tenants, at the time given.

pub mod agent;
pub mod apikey;
pub mod authn;
pub mod escalation;
pub mod jwt;
