//! SSE framing (`dome_core::sse::SseParser`): the events a stream holds do
//! not depend on how it is cut into chunks, and an event over the limit ends
//! the stream with an error, never a panic or unbounded memory.
#![no_main]

use dome_core::sse::{SseError, SseParser};
use libfuzzer_sys::fuzz_target;

fn events(chunks: &[&[u8]], max_event: usize) -> Result<Vec<String>, SseError> {
    let mut p = SseParser::new(max_event);
    let mut out = Vec::new();
    for c in chunks {
        p.push(c)?;
        while let Some(e) = p.next_event() {
            out.push(e);
        }
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    // Cut points derived from the knob byte: every chunking must give the
    // events the whole stream gives at once.
    let step = 1 + usize::from(knobs % 16);
    let chunks: Vec<&[u8]> = stream.chunks(step).collect();
    let whole = events(&[stream], usize::MAX).expect("no limit");
    let cut = events(&chunks, usize::MAX).expect("no limit");
    assert_eq!(whole, cut, "chunks of {step} read differently");
    // Under a small limit: an error or the same events, each within it.
    let limit = 1 + usize::from(knobs >> 4) * 4;
    if let Ok(small) = events(&chunks, limit) {
        assert!(
            small.iter().all(|e| e.chars().count() <= limit),
            "{small:?}"
        );
        assert_eq!(small, whole);
    }
});
