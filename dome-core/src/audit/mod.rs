//! The audit trail's pure half: what a record holds and how it is encoded
//! (`record`), the fields a call's record is made of as it goes (`call`),
//! and the frame that carries it on disk, checksummed and
//! chained to the one before (`frame`). Writing, reading and verifying
//! segments is `dome-user`'s `audit`.

pub mod call;
pub mod frame;
pub mod record;
