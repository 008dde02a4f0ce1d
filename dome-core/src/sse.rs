//! Incremental Server-Sent Events framing: splits a byte stream into events
//! as they arrive, so a relay can forward each one without buffering the
//! whole response. What the parser holds can be charged to a budget the
//! shell keeps (a [`Meter`]); the framing itself does no I/O.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// Where the bytes a parser holds are charged. Dome's shell charges them to
/// the budget of every call's buffered upstream answers; a meter that
/// refuses makes the parser refuse the chunk.
pub trait Meter {
    /// Charges `n` bytes more; false (nothing charged) over the budget.
    fn grow(&mut self, n: usize) -> bool;
    /// Bytes charged.
    fn held(&self) -> usize;
    /// Gives back `n` of the bytes charged.
    fn shrink(&mut self, n: usize);
}

/// No budget: every chunk is taken (tests, fuzzing, tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct Unmetered;

impl Meter for Unmetered {
    fn grow(&mut self, _: usize) -> bool {
        true
    }
    fn held(&self) -> usize {
        0
    }
    fn shrink(&mut self, _: usize) {}
}

/// Why a chunk was refused; the stream ends there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseError {
    /// The meter refused the chunk: Dome holds as much buffered upstream
    /// answer as it may.
    OverBudget,
    /// An event, complete or still arriving, is over the limit.
    EventTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::OverBudget => f.write_str(
                "an answer Dome cannot hold now (its buffered upstream answers are at \
                 [mcp] max_buffered_response_bytes)",
            ),
            SseError::EventTooLong { limit } => {
                write!(f, "an event over {limit} bytes (the limit)")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// Accumulates bytes and yields complete events' `data` payloads.
pub struct SseParser<M: Meter = Unmetered> {
    buf: BytesMut,
    /// Where the search for the end of the pending event resumes: bytes
    /// before it hold no event end, so each byte is looked at about once
    /// however the event is cut into chunks.
    scanned: usize,
    /// The most an event may take (an upstream that never ends one must
    /// not take all of Dome's memory).
    max_event: usize,
    /// The last event ended with a CR that was the last byte: an LF that
    /// comes next is that line end's second half, not an empty line.
    skip_lf: bool,
    /// Where what is held is charged.
    meter: M,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_EVENT)
    }
}

/// Events of this size pass by default.
pub const DEFAULT_MAX_EVENT: usize = 16 << 20;

impl SseParser {
    /// A parser that refuses an event longer than `max_event` bytes.
    pub fn new(max_event: usize) -> SseParser {
        SseParser::metered(max_event, Unmetered)
    }
}

impl<M: Meter> SseParser<M> {
    /// A parser that refuses an event longer than `max_event` bytes, and a
    /// chunk `meter` refuses.
    pub fn metered(max_event: usize, meter: M) -> SseParser<M> {
        SseParser {
            buf: BytesMut::new(),
            scanned: 0,
            max_event,
            skip_lf: false,
            meter,
        }
    }

    /// Adds a chunk of the stream; refuses it when an event in what is
    /// held, complete or still arriving, is over the limit (memory stays
    /// within the limit and one chunk).
    #[must_use = "an event over the limit ends the stream"]
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SseError> {
        let chunk = match chunk.split_first() {
            Some((b'\n', rest)) if self.skip_lf => rest,
            _ => chunk,
        };
        if !chunk.is_empty() {
            self.skip_lf = false;
        }
        if !self.meter.grow(chunk.len()) {
            self.release();
            return Err(SseError::OverBudget);
        }
        self.buf.extend_from_slice(chunk);
        // Only a buffer over the limit can hold an event over it.
        if self.buf.len() > self.max_event && self.longest_event() > self.max_event {
            self.release();
            return Err(SseError::EventTooLong {
                limit: self.max_event,
            });
        }
        Ok(())
    }

    /// Drops what is held and gives its charge back (the stream ends).
    fn release(&mut self) {
        self.buf.clear();
        self.scanned = 0;
        let held = self.meter.held();
        self.meter.shrink(held);
    }

    /// The length of the longest event held, the one still arriving too.
    fn longest_event(&self) -> usize {
        let (mut at, mut longest) = (0, 0);
        loop {
            match find_event_end(&self.buf[at..], 0) {
                Ok((end, len)) => {
                    longest = longest.max(end);
                    at += end + len;
                }
                Err(_) => return longest.max(self.buf.len() - at),
            }
        }
    }

    /// The next complete event's data (data lines joined with `\n`), if any.
    /// Events without data (comments, keep-alives) are skipped.
    pub fn next_event(&mut self) -> Option<String> {
        loop {
            let (end, len) = match find_event_end(&self.buf, self.scanned) {
                Ok(found) => found,
                Err(resume) => {
                    self.scanned = resume;
                    return None;
                }
            };
            let raw = self.buf.split_to(end + len);
            self.meter.shrink(raw.len());
            self.scanned = 0;
            self.skip_lf = self.buf.is_empty() && raw.ends_with(b"\r");
            let text = String::from_utf8_lossy(&raw[..end]);
            let mut data = Vec::new();
            // A line ends at CRLF, LF or CR; the empty pieces a CRLF
            // leaves are no `data:` lines.
            for line in text.split(['\n', '\r']) {
                if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                }
            }
            if !data.is_empty() {
                return Some(data.join("\n"));
            }
        }
    }
}

/// Where the first event of `b` ends (a line end followed by an empty
/// line), as (length of the event, length of the two line ends), looking
/// from `from` on; or, when none is there yet, where to look next time.
fn find_event_end(b: &[u8], from: usize) -> Result<(usize, usize), usize> {
    let mut i = from;
    while let Some(at) = memchr::memchr2(b'\n', b'\r', &b[i..]) {
        let at = i + at;
        // The line end's length: a CR last may be half of a CRLF, and
        // only the next byte tells whether an empty line follows.
        let first = match (b[at], b.get(at + 1)) {
            (b'\r', Some(b'\n')) => 2,
            (b'\r', None) => return Err(at),
            _ => 1,
        };
        match (b.get(at + first), b.get(at + first + 1)) {
            // An empty line: the event is whole. (A CR last is one too;
            // an LF after it is skipped when it comes.)
            (Some(b'\r'), Some(b'\n')) => return Ok((at, first + 2)),
            (Some(b'\r' | b'\n'), _) => return Ok((at, first + 1)),
            (Some(_), _) => i = at + first,
            (None, _) => return Err(at),
        }
    }
    Err(b.len())
}

/// One SSE event carrying `data`.
pub fn event(data: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(p: &mut SseParser, b: &[u8]) {
        p.push(b).unwrap();
    }

    #[test]
    fn splits_events_across_chunks() {
        let mut p = SseParser::default();
        push(&mut p, b"event: message\ndata: {\"a\"");
        assert_eq!(p.next_event(), None);
        push(&mut p, b":1}\n\n: keepalive\n\ndata: x\r\n\r\n");
        assert_eq!(p.next_event().as_deref(), Some("{\"a\":1}"));
        assert_eq!(p.next_event().as_deref(), Some("x"));
        assert_eq!(p.next_event(), None);
    }

    /// CRLF, LF and CR end lines, mixed as a server likes (the SSE
    /// grammar); a CR at the end of a chunk waits for the next byte.
    #[test]
    fn every_line_end_the_grammar_allows() {
        for (stream, want) in [
            (
                &b"data: a\n\r\ndata: b\r\rdata: c\r\n\ndata: d\n\n"[..],
                &["a", "b", "c", "d"][..],
            ),
            (b"data: one\rdata: two\r\r", &["one\ntwo"]),
            (b"id: 1\ndata:\n\ndata: z\n\n", &["", "z"]),
        ] {
            // Whole, and cut after every byte.
            for cut in [stream.len(), 1] {
                let mut p = SseParser::default();
                let mut got = Vec::new();
                for chunk in stream.chunks(cut) {
                    push(&mut p, chunk);
                    while let Some(e) = p.next_event() {
                        got.push(e);
                    }
                }
                assert_eq!(
                    got,
                    want,
                    "{:?} in chunks of {cut}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
        // A lone CR at a chunk's end is not yet an empty line.
        let mut p = SseParser::default();
        push(&mut p, b"data: x\r");
        assert_eq!(p.next_event(), None);
        push(&mut p, b"\n");
        assert_eq!(p.next_event(), None, "CRLF is one line end");
        push(&mut p, b"\r\n");
        assert_eq!(p.next_event().as_deref(), Some("x"));
    }

    /// An event cut into many small chunks is looked at about once per
    /// byte, not once per chunk.
    #[test]
    fn a_long_event_in_small_chunks_is_scanned_once() {
        let mut p = SseParser::default();
        push(&mut p, b"data: ");
        let piece = [b'x'; 64];
        for _ in 0..16 * 1024 {
            push(&mut p, &piece);
            assert_eq!(p.next_event(), None);
            assert_eq!(
                p.scanned,
                p.buf.len(),
                "the search resumes where it stopped"
            );
        }
        push(&mut p, b"\n\n");
        assert_eq!(p.next_event().map(|e| e.len()), Some(1 << 20));
    }

    #[test]
    fn an_event_over_the_limit_ends_the_stream() {
        let mut p = SseParser::new(1000);
        push(&mut p, &[b'a'; 600]);
        assert_eq!(p.next_event(), None);
        let err = p.push(&[b'a'; 600]).unwrap_err();
        assert_eq!(err, SseError::EventTooLong { limit: 1000 });
        assert!(err.to_string().contains("over 1000 bytes"), "{err}");
        // Whole in one chunk, between two small ones: refused all the same.
        let mut p = SseParser::new(1000);
        let big = [&b"data: x\n\ndata: "[..], &[b'b'; 1200], b"\n\ndata: y\n\n"].concat();
        assert!(p.push(&big).is_err());
        // Many events that together pass the limit are fine.
        let mut p = SseParser::new(1000);
        for _ in 0..100 {
            push(&mut p, &[b"data: ", &[b'b'; 500][..], b"\n\n"].concat());
            assert_eq!(p.next_event().map(|e| e.len()), Some(500));
        }
    }

    /// A meter with room for `cap` bytes, that checks what is given back.
    struct Budget {
        cap: usize,
        held: usize,
    }

    impl Meter for Budget {
        fn grow(&mut self, n: usize) -> bool {
            if self.held + n > self.cap {
                return false;
            }
            self.held += n;
            true
        }
        fn held(&self) -> usize {
            self.held
        }
        fn shrink(&mut self, n: usize) {
            assert!(n <= self.held, "gave back more than was charged");
            self.held -= n;
        }
    }

    /// What a parser holds is charged while held, given back as events are
    /// taken, and all given back when a chunk is refused.
    #[test]
    fn what_is_held_is_charged_and_given_back() {
        let mut p = SseParser::metered(1000, Budget { cap: 100, held: 0 });
        p.push(b"data: a\n\ndata: b").unwrap();
        assert_eq!(p.meter.held, 16);
        assert_eq!(p.next_event().as_deref(), Some("a"));
        assert_eq!(p.meter.held, 7, "the event taken is given back");
        assert_eq!(p.push(&[b'x'; 94]), Err(SseError::OverBudget));
        assert_eq!(p.meter.held, 0, "a refusal gives everything back");
        assert_eq!(p.next_event(), None, "and drops what was held");
        p.push(b"data: c\n\n").unwrap();
        assert_eq!(p.next_event().as_deref(), Some("c"));
        assert_eq!(p.meter.held, 0);
    }
}
