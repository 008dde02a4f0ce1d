//! Which allocator Dome runs on, and why: mimalloc v2 (set in the binaries).
//!
//! The live heap was not what grew. A diagnostic build that counted every
//! allocation showed Dome's live heap flat through a 5-minute soak (15.0 to
//! 15.5 MB at every quiet moment, before and after the upstream's restart)
//! while its RSS under mimalloc v3 went from 63 to 75 MB (medians of the
//! first and last minute). v3 (the crate's default) keeps pages in which a
//! few long-lived blocks sit among a burst's freed ones; every pile-up (the
//! calls queued while an upstream restarts, a reload's pause) raised the
//! high-water mark for good.
//! Measured with `bench-soak --seconds 300`, RSS growth after warm-up: v3
//! 8.8% and 19.4% in two runs (17.2% over 10 minutes), v3 with
//! `purge_delay=0` and `page_full_retain=0` 46%; v2 1.3% (-5.9% and -0.8%
//! in two 10-minute runs), its RSS back at the same floor after every peak.
//!
//! Speed is the same: `bench e2e` (quick, 5 rounds) with v2 against v3 in
//! the same rounds, medians with the rounds' range: 23,773 (14,821 to
//! 27,198) against 23,675 (13,185 to 29,918) calls/s, 37.7 against 37.6
//! µs of Dome's CPU per call, added p50 115 (96 to 139) against 155 (69 to
//! 182) µs. v2 purges freed pages after 10 ms (v3: 1,000), so Dome no
//! longer sets `purge_delay`; `MIMALLOC_*` variables still apply.

/// The mimalloc major version the binaries link: the `v2` feature of the
/// `mimalloc` crate, without which they would silently return to v3.
pub const MIMALLOC_MAJOR: u32 = 2;

#[cfg(test)]
mod tests {
    #[test]
    fn the_binaries_link_the_mimalloc_whose_memory_was_measured() {
        // mi_version: major, then two digits each of minor and patch
        // (20302 for 2.3.2).
        assert_eq!(mimalloc::MiMalloc.version() / 10_000, super::MIMALLOC_MAJOR);
    }
}
