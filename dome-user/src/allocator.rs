//! How the process's allocator (mimalloc, set in the binaries) gives memory
//! back.
//!
//! mimalloc returns freed pages to the OS only once they have been free for
//! `purge_delay` (1,000 ms in v3) and some later allocation notices it. After
//! a burst, say the calls that pile up while an upstream restarts, a quiet
//! Dome kept the burst's pages. Measured (release build, 500 concurrent
//! streamed `slow` calls, four bursts, RSS 3 s after each): 59, 80, 80 and
//! 60 MB with the default; 51, 51, 50 and 53 MB with 100 ms; 44, 45, 44 and
//! 44 MB with 0. The 10-minute soak's RSS stepped up by 20 MB at its
//! upstream restart and stayed there. Purging sooner costs madvise calls:
//! `bench e2e` with 0 against the default in the same rounds measured 38.9
//! against 37.2 µs of Dome's CPU per call and the same added p50 (141 µs),
//! within the machine's noise. 100 ms keeps most of the gain for a tenth
//! of the calls 0 makes.

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_e`, the same
/// in v2 and v3; libmimalloc-sys names only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Dome's purge delay, ms.
pub const PURGE_DELAY_MS: i64 = 100;

/// Sets the purge delay, unless the operator set `MIMALLOC_PURGE_DELAY`.
pub fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets a process-wide option that mimalloc reads atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_the_option_set() {
        super::return_freed_memory_promptly();
        // SAFETY: reads an option.
        let got = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(got as i64, super::PURGE_DELAY_MS);
        }
    }
}
