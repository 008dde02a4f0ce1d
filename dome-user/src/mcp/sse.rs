//! Incremental Server-Sent Events framing: splits a byte stream into events
//! as they arrive, so a relay can forward each one without buffering the
//! whole response.

use bytes::{Bytes, BytesMut};

/// Accumulates bytes and yields complete events' `data` payloads.
#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event's data (data lines joined with `\n`), if any.
    /// Events without data (comments, keep-alives) are skipped.
    pub fn next_event(&mut self) -> Option<String> {
        loop {
            let end = find_event_end(&self.buf)?;
            let raw = self.buf.split_to(end.0 + end.1);
            let text = String::from_utf8_lossy(&raw[..end.0]);
            let mut data = Vec::new();
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
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

/// (length of the event, length of its terminator).
fn find_event_end(b: &[u8]) -> Option<(usize, usize)> {
    for i in 0..b.len() {
        if b[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if b[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

/// One SSE event carrying `data`.
pub fn event(data: &str) -> Bytes {
    Bytes::from(format!("event: message\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut p = SseParser::default();
        p.push(b"event: message\ndata: {\"a\"");
        assert_eq!(p.next_event(), None);
        p.push(b":1}\n\n: keepalive\n\ndata: x\r\n\r\n");
        assert_eq!(p.next_event().as_deref(), Some("{\"a\":1}"));
        assert_eq!(p.next_event().as_deref(), Some("x"));
        assert_eq!(p.next_event(), None);
    }
}
