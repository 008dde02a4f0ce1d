//! The JSON-RPC envelope (`dome_core::envelope::parse`, simd-json on a tape)
//! against serde_json: both read any bytes alike, by the agreement rules
//! of `envelope::differential` (repeated names and over-deep nesting are
//! refused as such, and only then).
#![no_main]

use dome_core::envelope::differential;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the depth limit: shallow limits are reached
    // often, and all stay under serde_json's own 128 levels so it can
    // judge every refusal.
    let Some((&limit, body)) = data.split_first() else {
        return;
    };
    let max_depth = 1 + usize::from(limit % 100);
    differential::check(body, max_depth);
});
