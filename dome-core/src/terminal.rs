//! Text from callers made safe for an operator's terminal.
//!
//! Intents, user names, tool names, call ids and JWT subjects are chosen by
//! agents. Printed raw, a newline forges a row of a table, an ANSI escape
//! (`ESC [2K`, a cursor move) erases or rewrites what is on the screen, and
//! a bidi override (U+202E) or another format character reorders or hides
//! text. Every human-readable output of the `dome` binary passes caller
//! text through here; JSON output stays JSON (the same values, with these
//! characters written as `\u` escapes, see [`json`]).
//!
//! Escaped: C0 controls, DEL, C1 controls, the line and paragraph
//! separators, and every format character (Unicode category Cf: bidi
//! embeddings, overrides and isolates, zero-width characters, the BOM,
//! tag characters …). A backslash is doubled, so an escape can never be
//! mistaken for one a caller typed.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Unicode general category Cf (format characters), Unicode 16.
const FORMAT: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` must not reach a terminal as it is.
pub fn is_unsafe(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7F..=0x9F).contains(&u)
        || u == 0x2028
        || u == 0x2029
        || (u >= 0xAD
            && FORMAT
                .binary_search_by(|&(lo, hi)| {
                    if hi < u {
                        std::cmp::Ordering::Less
                    } else if lo > u {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok())
}

fn escape_with(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let bad = |c: char| c == '\\' || (is_unsafe(c) && !(keep_newlines && c == '\n'));
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            out.push(c);
            continue;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// `s` for one line of a terminal: every unsafe character (newlines too)
/// and the backslash written as an escape (`\n`, `\x1b`, `\u{202e}`, `\\`).
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, false)
}

/// As [`escape`], but newlines stay: for messages that span lines on
/// purpose (a config error with its context), which may quote caller or
/// file text.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_with(s, true)
}

/// JSON text (as serde_json writes it, compact or pretty) with the
/// characters it leaves raw (DEL, C1, separators, format characters)
/// written as `\uXXXX` escapes. The JSON means the same; a terminal shows
/// it harmlessly. serde_json already escapes C0 controls in strings, and
/// these characters can only occur inside strings, where a `\u` escape is
/// valid.
pub fn json(text: &str) -> Cow<'_, str> {
    // JSON's whitespace between tokens (pretty printing) stays; inside
    // strings serde_json has escaped it already.
    let bad = |c: char| is_unsafe(c) && !matches!(c, '\n' | '\r' | '\t');
    if !text.chars().any(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 12);
    let mut units = [0u16; 2];
    for c in text.chars() {
        if bad(c) {
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A log writer that keeps each event on one line: tracing's formatter
/// escapes ESC and C1 in field values but writes newlines, carriage
/// returns and format characters (U+202E …) from `%`-formatted values and
/// messages as they are, so text from a caller or an upstream could forge
/// or reorder log lines on an operator's terminal. The formatter hands
/// each event to one `write` call; every unsafe character but the event's
/// final newline and ESC (the formatter's own colours; it escapes ESC in
/// values itself) is written as an escape.
pub struct LogWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Ok(text) = std::str::from_utf8(buf) else {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        };
        let (body, end) = match text.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (text, ""),
        };
        let bad = |c: char| is_unsafe(c) && c != '\x1b' && c != '\t';
        if !body.chars().any(bad) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = String::with_capacity(buf.len() + 16);
        for c in body.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if bad(c) && (c as u32) < 0x80 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if bad(c) => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push_str(end);
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_escapes_and_reordering_characters_are_written_as_escapes() {
        assert_eq!(escape("plain text, ünïcode ok"), "plain text, ünïcode ok");
        assert_eq!(
            escape("a\nb\r\tc\x1b[2Kd\x7f\u{85}\u{9b}"),
            "a\\nb\\r\\tc\\x1b[2Kd\\x7f\\u{85}\\u{9b}"
        );
        assert_eq!(
            escape("pay \u{202e}gnp.exe\u{2066}x\u{200b}\u{feff}\u{e0041}\u{2028}"),
            "pay \\u{202e}gnp.exe\\u{2066}x\\u{200b}\\u{feff}\\u{e0041}\\u{2028}"
        );
        // A typed backslash cannot pass for an escape.
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_eq!(escape_lines("line 1\nline\x1b 2"), "line 1\nline\\x1b 2");
    }

    #[test]
    fn json_keeps_its_meaning_with_unsafe_characters_escaped() {
        let v = serde_json::json!({"intent": "x\u{202e}y\u{7f}z\u{9b}\u{e0041}\n"});
        let text = v.to_string();
        let safe = json(&text);
        assert!(safe.chars().all(|c| !is_unsafe(c)), "{safe}");
        assert!(safe.contains("\\u202e") && safe.contains("\\udb40\\udc41"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
        // Pretty printed: the layout stays, the strings are escaped.
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let safe = json(&pretty);
        assert_eq!(safe.lines().count(), 3, "{safe}");
        assert!(!safe.contains('\u{202e}'));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }

    #[test]
    fn every_format_character_range_is_sorted_for_the_search() {
        assert!(FORMAT.windows(2).all(|w| w[0].1 < w[1].0));
        for &(lo, hi) in FORMAT {
            assert!(lo <= hi);
            for u in [lo, hi] {
                assert!(is_unsafe(char::from_u32(u).unwrap()), "{u:x}");
            }
        }
        assert!(!is_unsafe('a') && !is_unsafe('é') && !is_unsafe('\u{2070}'));
    }

    #[test]
    fn a_log_event_stays_one_line_whatever_its_fields_hold() {
        use std::io::Write as _;
        let mut w = LogWriter(Vec::new());
        let event = "\x1b[2mINFO\x1b[0m tool=evil\nINFO forged line\r\u{202e}x\n";
        w.write_all(event.as_bytes()).unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert_eq!(
            out,
            "\x1b[2mINFO\x1b[0m tool=evil\\nINFO forged line\\r\\u{202e}x\n"
        );
        assert_eq!(out.lines().count(), 1);
        let mut w = LogWriter(Vec::new());
        w.write_all(b"plain line\n").unwrap();
        assert_eq!(w.0, b"plain line\n");
    }

    #[test]
    fn a_log_line_through_tracing_cannot_forge_a_second_one() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let make = {
            let sink = sink.clone();
            move || LogWriter(sink.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(make)
            .with_ansi(false)
            .finish();
        let caller = "x\n2026-01-01T00:00:00Z  INFO dome: all calls verified\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(name = %caller, "a call");
            tracing::info!("{caller}");
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(!out.contains('\u{202e}'), "{out}");
    }
}
