//! SSE framing as the upstream client uses it: `dome_core::sse`'s parser,
//! with what it holds charged to the budget of every call's buffered
//! upstream answers (`[mcp] max_buffered_response_bytes`).

pub use dome_core::sse::{DEFAULT_MAX_EVENT, SseError, event};

/// An upstream answer's event parser: what it holds is charged (a chunk
/// over the budget is refused like an event over the limit).
pub type SseParser = dome_core::sse::SseParser<super::Charge>;

impl dome_core::sse::Meter for super::Charge {
    fn grow(&mut self, n: usize) -> bool {
        super::Charge::grow(self, n)
    }
    fn held(&self) -> usize {
        super::Charge::held(self)
    }
    fn shrink(&mut self, n: usize) {
        super::Charge::shrink(self, n)
    }
}
