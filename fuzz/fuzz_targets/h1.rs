//! The upstream HTTP/1.1 reader: a response head (`h1::parse_head`, 1xx
//! interim responses skipped as `Conn::read_head` does) and its body
//! through the framing decoder, with the bytes arriving in two pieces.
//! Any bytes: a head and body, or an error; never a panic, never more
//! body than bytes sent.
#![no_main]

use bytes::BytesMut;
use dome::upstream::h1::{MAX_HEAD, Step, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, wire)) = data.split_first() else {
        return;
    };
    let head_only = knobs & 1 == 1;
    // Where the wire is cut: the second piece arrives after the first
    // has been looked at.
    let cut = if wire.is_empty() {
        0
    } else {
        usize::from(knobs >> 1) * wire.len() / 127
    }
    .min(wire.len());
    let mut pieces = [&wire[..cut], &wire[cut..]].into_iter();
    let mut buf = BytesMut::new();
    let mut eof = false;
    let mut fill = |buf: &mut BytesMut, eof: &mut bool| match pieces.next() {
        Some(p) => buf.extend_from_slice(p),
        None => *eof = true,
    };
    let mut head = loop {
        match parse_head(&mut buf, head_only) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
            Ok(Some(h)) if h.status.is_informational() && h.status.as_u16() != 101 => continue,
            Ok(Some(h)) => break h,
            Ok(None) => {
                if buf.len() >= MAX_HEAD || eof {
                    return;
                }
                fill(&mut buf, &mut eof);
            }
        }
    };
    let mut body = 0usize;
    for _ in 0..100_000 {
        match head.body.step(&mut buf, eof) {
            Ok(Step::Data(d)) => {
                body += d.len();
                assert!(body <= wire.len(), "more body than bytes sent");
            }
            Ok(Step::End) => return,
            Ok(Step::More) => {
                assert!(!eof, "the decoder asked for more after the end");
                fill(&mut buf, &mut eof);
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
        }
    }
    panic!("the body decoder made no progress");
});
